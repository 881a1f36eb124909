"""``edge-asd export``: a trained run -> a self-contained, verified bundle (workstation only, torch).

Three graphs are written because the targets disagree on what they can run fast:

* ``model.onnx`` for TensorRT 10.3 (JetPack 6): the front end's STFT is a Conv1d with a
  windowed DFT basis (TensorRT 10.3 cannot parse ONNX ``STFT``). With ``--precision fp16`` the
  precision is *in the graph* (TensorRT 11 removed the FP16 builder flag; strongly typed
  networks take types from the ONNX): the front end (DFT conv, power, mel, log) and the ArcFace
  head stay float32, the backbone runs float16 between explicit ``Cast`` nodes.
* ``model_cpu.onnx`` for onnxruntime on a CPU: float32 with the front end lowered to ONNX
  ``STFT`` (opset >= 17), which onnxruntime runs several times faster than a 2050-channel conv.
* ``model_cpu_logmel.onnx``, the same float32 network without its front end: inputs ``audio``
  (for the Tgram branch) and ``logmel`` [batch, 128, 313], which the device computes with its
  streaming numpy front end (``edge_asd.core.logmel``), reusing the frames a stream already
  has instead of recomputing 313 FFTs per window. The TensorRT graph stays self-contained.

The work is split by responsibility:

* ``graph``: the torch module that is traced (precision and front-end lowering);
* ``onnx_file``: one ONNX file: export, graph rewrites, checks, simplification;
* ``run_info``: what the bundle carries over from the run (thresholds, training figures,
  front-end parameters);
* ``writer``: ``export_run``, the bundle assembled in a staging folder, with reference
  embeddings and thresholds that always belong to the exported weights.
"""

from engines.export.graph import Precision, build_export_module, build_logmel_input_module
from engines.export.onnx_file import (
    DEFAULT_OPSET,
    INPUT_NAME,
    LOGMEL_LOWERING,
    MAX_TRT_OPSET,
    MIN_STFT_OPSET,
    OUTPUT_NAMES,
    export_onnx,
)
from engines.export.run_info import frontend_parameters, read_thresholds, training_figures
from engines.export.writer import ProgressFn, export_run

__all__ = [
    "DEFAULT_OPSET",
    "INPUT_NAME",
    "LOGMEL_LOWERING",
    "MAX_TRT_OPSET",
    "MIN_STFT_OPSET",
    "OUTPUT_NAMES",
    "Precision",
    "ProgressFn",
    "build_export_module",
    "build_logmel_input_module",
    "export_onnx",
    "export_run",
    "frontend_parameters",
    "read_thresholds",
    "training_figures",
]
