"""The log-mel front end (the paper's "Sgram"), built from ops every TensorRT 10.x parses.

The reference is torchaudio's ``MelSpectrogram(sample_rate=16000, n_fft=2048, hop_length=512,
n_mels=128, power=2, pad_mode="constant", norm="slaney", mel_scale="slaney")`` followed by
``10*log10(x + eps)``. We do not use torchaudio or ``torch.stft`` in the exported graph because
JetPack 6's TensorRT 10.3 cannot parse ONNX ``STFT``/``DFT``. Instead the DFT is a ``Conv1d``
whose frozen weights are the Hann-windowed cosine and sine rows, followed by square, add, a
MatMul with the slaney filterbank, a clamp and a log: ops every TensorRT version supports.

Float16 safety: with a full-scale sine the power at n_fft=2048 reaches 262144, far past
float16's 65504. The DFT basis is therefore scaled by ``BASIS_SCALE = 1/16`` (a power of two, so
exact), which keeps the worst case (full-scale DC) at 4096; the scale is undone in dB by adding
``20*log10(16)``, so the output equals torchaudio's values. The exported graphs keep the front end
in float32 anyway; the scaling is a second line of defence for weakly typed FP16 builds.

A second lowering through ``torch.stft`` computes the same numbers faster on a CPU; it is used
for training and for the ONNX Runtime graph (``STFT`` op). Both are tested equal.
"""

from __future__ import annotations

import math
import warnings
from typing import Literal

import numpy as np
import torch
from torch import nn

from edge_asd.core.constants import SAMPLE_RATE

# The parameters, the Hann window and the slaney filterbank have one source, shared with the
# device's numpy front end (edge_asd.core.logmel); this module adds the torch lowerings.
from edge_asd.core.logmel import (
    BASIS_SCALE,
    EPS,
    HOP,
    N_BINS,
    N_FFT,
    N_MELS,
    SCALE_DB,
    hann_window,
    mel_filterbank,
)

_TEN_OVER_LN10 = 10.0 / math.log(10.0)

Lowering = Literal["conv", "stft"]


def dft_basis(n_fft: int = N_FFT, scale: float = BASIS_SCALE) -> np.ndarray:
    """Windowed DFT rows as Conv1d weights ``(2*(n_fft//2+1), 1, n_fft)``: cosines, then sines."""
    n = np.arange(n_fft, dtype=np.float64)
    k = np.arange(n_fft // 2 + 1, dtype=np.float64)
    angle = 2.0 * math.pi * np.outer(k, n) / n_fft
    window = hann_window(n_fft)
    real = np.cos(angle) * window * scale
    imag = -np.sin(angle) * window * scale
    return np.concatenate([real, imag], axis=0)[:, None, :].astype(np.float32)


class LogMel(nn.Module):
    """Raw audio ``(B, 160000)`` float32 in [-1, 1] -> log-mel ``(B, 128, 313)`` in dB.

    ``lowering`` selects how the STFT is computed ("conv" for TensorRT, "stft" for CPUs); it
    may be changed on a live module (the export does so). The buffers are not trainable and
    are not saved in checkpoints (they are constants derived from the parameters above).
    """

    def __init__(self, lowering: Lowering = "conv") -> None:
        super().__init__()
        self.lowering: Lowering = lowering
        self.register_buffer("basis", torch.from_numpy(dft_basis()), persistent=False)
        self.register_buffer("window", torch.from_numpy(hann_window().astype(np.float32)), persistent=False)
        # (n_mels, n_bins) so that mel = fb @ power with power (B, n_bins, T).
        self.register_buffer("fb", torch.from_numpy(mel_filterbank().T.copy()), persistent=False)

    def power(self, audio: torch.Tensor) -> torch.Tensor:
        """Scaled power spectrogram ``(B, 1025, 313)`` (times ``BASIS_SCALE**2``)."""
        if self.lowering == "stft":
            # return_complex=False is what the ONNX exporter lowers to the STFT op.
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="stft with return_complex=False")
                spec = self._stft(audio)
            return spec[..., 0] * spec[..., 0] + spec[..., 1] * spec[..., 1]
        if self.lowering != "conv":
            raise ValueError(f"unknown front-end lowering {self.lowering!r}: use 'conv' or 'stft'")
        padded = nn.functional.pad(audio.unsqueeze(1), (N_FFT // 2, N_FFT // 2))
        out = nn.functional.conv1d(padded, self.basis.to(audio.dtype), stride=HOP)
        real, imag = out[:, :N_BINS], out[:, N_BINS:]
        return real * real + imag * imag

    def _stft(self, audio: torch.Tensor) -> torch.Tensor:
        return torch.stft(
            audio,
            n_fft=N_FFT,
            hop_length=HOP,
            win_length=N_FFT,
            window=self.window.to(audio.dtype) * BASIS_SCALE,
            center=True,
            pad_mode="constant",
            normalized=False,
            onesided=True,
            return_complex=False,
        )

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        mel = torch.matmul(self.fb.to(audio.dtype), self.power(audio))
        # clamp(x, eps) instead of x + eps: identical wherever x >> eps and exportable as
        # Clip; the floor never drops below the dtype's smallest normal (float16 safety).
        floor = max(EPS * BASIS_SCALE**2, torch.finfo(mel.dtype).tiny)
        return torch.log(torch.clamp(mel, min=floor)) * _TEN_OVER_LN10 + SCALE_DB


__all__ = [
    "BASIS_SCALE", "EPS", "HOP", "N_BINS", "N_FFT", "N_MELS", "SAMPLE_RATE", "SCALE_DB",
    "LogMel", "Lowering", "dft_basis", "hann_window", "mel_filterbank",
]  # fmt: skip
