"""Training side of edge-asd: the TASTgram-MFN model, its losses, data, training and evaluation.

Modules that need torch (``frontend``, ``model``, ``losses``, ``train``, ...) import it at
module level; the numpy-only modules (``audio_io``, ``synth``, ``scoring``, ``metrics``) do
not, so the device side may use them on a Jetson without PyTorch. This ``__init__`` must
stay import-free.
"""
