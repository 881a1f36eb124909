"""The torch modules that ``torch.onnx.export`` traces: ``audio -> (scores, embedding)``, and
``(audio, logmel) -> (scores, embedding)`` for the CPU graph fed by the streaming front end.

For fp16 the backbone is a ``.half()`` copy fed ``audio.half()`` and ``logmel.half()``, and its
embedding is cast back with ``.float()``; the front end and the ArcFace head are the float32
originals. The exporter then writes ``Cast`` nodes exactly at those two boundaries, which is
how a strongly typed TensorRT network learns which layers run in float16.
"""

from __future__ import annotations

import copy
import logging
from typing import Any, Literal

from engines.errors import ExportError

logger = logging.getLogger(__name__)

Precision = Literal["fp16", "fp32"]


def build_export_module(model: Any, precision: Precision, lowering: str) -> Any:
    """The module that is traced, with the requested backbone precision and front-end lowering.

    The model is deep-copied so the caller's model (its lowering, its dtype) is left untouched.
    """
    import torch
    from torch import nn

    if precision not in ("fp16", "fp32"):
        raise ExportError(f"precision must be fp16 or fp32, got {precision!r}")
    fp32 = copy.deepcopy(model).float().eval()
    fp32.frontend.lowering = lowering
    half = copy.deepcopy(fp32).half().eval() if precision == "fp16" else None

    class ExportGraph(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fp32 = fp32
            self.body16 = half

        def forward(self, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            logmel = self.fp32.frontend(audio)
            if self.body16 is not None:
                embedding = self.body16.backbone(audio.half(), logmel.half()).float()
            else:
                embedding = self.fp32.backbone(audio, logmel)
            scores = self.fp32.scores_from_cosine(self.fp32.head_cosine(embedding))
            return scores, embedding

    return ExportGraph().eval()


def build_logmel_input_module(model: Any) -> Any:
    """``(audio, logmel) -> (scores, embedding)`` in float32: the network without its front end.

    The log-mel comes from the device's streaming numpy front end (``edge_asd.core.logmel``),
    which keeps the frames a stream already has; the raw audio still goes in for the Tgram
    branch, which needs the whole window. Deep-copied like ``build_export_module``.
    """
    import torch
    from torch import nn

    fp32 = copy.deepcopy(model).float().eval()

    class LogMelInputGraph(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fp32 = fp32

        def forward(self, audio: torch.Tensor, logmel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            embedding = self.fp32.backbone(audio, logmel)
            scores = self.fp32.scores_from_cosine(self.fp32.head_cosine(embedding))
            return scores, embedding

    return LogMelInputGraph().eval()


__all__ = ["Precision", "build_export_module", "build_logmel_input_module"]
