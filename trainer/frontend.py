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

N_FFT = 2048
HOP = 512
N_MELS = 128
N_BINS = N_FFT // 2 + 1
EPS = 2.220446049250313e-16  # sys.float_info.epsilon, as in the public code
BASIS_SCALE = 1.0 / 16.0
# Adding this in dB undoes the basis scale on the power (power scales with BASIS_SCALE**2).
SCALE_DB = -20.0 * math.log10(BASIS_SCALE)
_TEN_OVER_LN10 = 10.0 / math.log(10.0)

Lowering = Literal["conv", "stft"]


def _hz_to_mel_slaney(hz: np.ndarray) -> np.ndarray:
    """Slaney's mel scale: linear below 1 kHz, logarithmic above (as librosa with htk=False)."""
    hz = np.asarray(hz, dtype=np.float64)
    f_sp = 200.0 / 3.0
    mels = hz / f_sp
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = math.log(6.4) / 27.0
    log_region = hz >= min_log_hz
    mels = np.where(log_region, min_log_mel + np.log(np.maximum(hz, 1e-12) / min_log_hz) / logstep, mels)
    return mels


def _mel_to_hz_slaney(mels: np.ndarray) -> np.ndarray:
    mels = np.asarray(mels, dtype=np.float64)
    f_sp = 200.0 / 3.0
    hz = f_sp * mels
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = math.log(6.4) / 27.0
    return np.where(mels >= min_log_mel, min_log_hz * np.exp(logstep * (mels - min_log_mel)), hz)


def mel_filterbank(
    sample_rate: int = SAMPLE_RATE, n_fft: int = N_FFT, n_mels: int = N_MELS, f_min: float = 0.0, f_max: float | None = None
) -> np.ndarray:
    """Slaney-scale, area-normalised triangular filterbank, shape ``(n_fft//2+1, n_mels)``.

    Written out here (rather than taken from torchaudio or librosa) so the device and the
    export need neither; the tests compare it with librosa to 1e-6.
    """
    f_max = sample_rate / 2 if f_max is None else f_max
    fft_freqs = np.linspace(0.0, sample_rate / 2, n_fft // 2 + 1)
    mel_points = np.linspace(_hz_to_mel_slaney(np.array(f_min)), _hz_to_mel_slaney(np.array(f_max)), n_mels + 2)
    hz_points = _mel_to_hz_slaney(mel_points)
    widths = np.diff(hz_points)
    ramps = hz_points[:, None] - fft_freqs[None, :]
    weights = np.zeros((n_mels, fft_freqs.size))
    for i in range(n_mels):
        lower = -ramps[i] / widths[i]
        upper = ramps[i + 2] / widths[i + 1]
        weights[i] = np.maximum(0.0, np.minimum(lower, upper))
    enorm = 2.0 / (hz_points[2 : n_mels + 2] - hz_points[:n_mels])
    weights *= enorm[:, None]
    return weights.T.astype(np.float32)


def hann_window(n: int = N_FFT) -> np.ndarray:
    """Periodic Hann window (``torch.hann_window(n, periodic=True)``)."""
    k = np.arange(n, dtype=np.float64)
    return 0.5 - 0.5 * np.cos(2.0 * math.pi * k / n)


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
