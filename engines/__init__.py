"""Inference engines: ONNX export (needs torch, for the workstation), TensorRT engine builds
(on the Jetson) and runtimes behind one interface (TensorRT + pycuda, ONNX Runtime, torch).

Importing ``engines`` or ``engines.runtime`` needs neither torch nor a GPU.
"""
