"""The model's log-mel front end in numpy, per window and streaming (the CPU path, no torch).

Why it exists: on a CPU the exported graph spent two thirds of its time in onnxruntime's STFT,
recomputing all 313 frames of every 10 s window although consecutive windows of a stream share
90 % of their audio. Here each stream keeps the log-mel frames it already has and computes only
the new ones; ``model_cpu_logmel.onnx`` (the backbone and head, with the log-mel as an input)
does the rest. The numbers are those of the in-graph front end (``trainer.frontend.LogMel``,
torchaudio's ``MelSpectrogram(n_fft=2048, hop_length=512, n_mels=128, center=True,
pad_mode="constant", norm="slaney", mel_scale="slaney")`` then ``10*log10(max(mel, eps))``):
the tests hold them within 0.01 dB on every shared clip and on synthetic streams.

The parameters and the two numpy-built constants (periodic Hann window, slaney filterbank) live
here, the one source both sides use: the trainer's torch front end imports them.

The frame grid (docs/architecture.md, "Streaming log-mel"):

* Frame ``j`` of a window starting at absolute sample ``s`` (the stream's own 16 kHz clock)
  covers samples ``[s + 512 j - 1024, s + 512 j + 1024)``: the centred STFT pads 1024 zeros on
  each side. Frames 0, 1, 311 and 312 reach into that padding (*edge frames*): they depend on
  where the window starts and are computed for every window. The 309 others (*interior
  frames*) depend only on the audio, so they are keyed by their absolute start sample.
* The hop stays what the config says: windows end on the stream's hop grid, so ``--hop 1``
  still means 16000 samples and the 1 s indicator blocks (level checks, condition indicators)
  keep their own cache. The *model's* window is moved back onto the frame grid instead
  (``grid_start``: its start rounded down to a multiple of 512 samples, at most 511 samples,
  32 ms, earlier; ``Stream.model_window`` live, ``edge_asd.site.features.extract`` offline,
  the same windows on both paths). Then every window shares its frame grid with the one
  before: at a 1 s hop a window computes 31 or 32 new interior frames + 4 edge frames, about
  35 of its 313 (``LogMelStream(on_grid=True)``).
* A caller that does not move its windows (``on_grid=False``) still reuses a cached frame when
  its start lands on a later window's frame grid: with a 1 s hop a window moves 16000 = 31.25
  x 512 samples, its grid lines up with the window 4 hops earlier (4 phases of 128 samples),
  and a window computes 125 interior frames + 4 edge frames = 129 of its 313.
* The cache keeps only frames some future window can use: start >= that window's start, on
  its frame grid, and inside it (``_keep_mask``). At a 1 s hop that is about 282 frames of
  128 float32 on the grid (about 140 KiB per stream), 4 x 184 frames without it.
* It is dropped (``reset``) on a gap, on a capture restart (both arrive as gaps: the pipeline's
  stream resets it), when the clock goes backwards, and whenever the new window's audio
  differs from the previous window's on the samples they share (a sparse probe of exact
  equality): frames are reused only from audio that is provably the same.

numpy on the device side, and scipy's FFT where scipy is installed (``real_fft``: an optional
accelerator, the same numbers); float32 FFT where the library has one, float64 otherwise.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from edge_asd.core.constants import SAMPLE_RATE, WINDOW_SAMPLES

logger = logging.getLogger(__name__)

N_FFT = 2048
"""FFT length and window length of the front end (128 ms at 16 kHz)."""
HOP = 512
"""STFT hop in samples (32 ms)."""
N_MELS = 128
"""Mel bands: the model's Sgram height."""
N_BINS = N_FFT // 2 + 1
PAD = N_FFT // 2
"""Zeros the centred STFT adds on each side of a window."""
EPS = 2.220446049250313e-16
"""Floor of the mel power before the log (``sys.float_info.epsilon``, as in the public code)."""
BASIS_SCALE = 1.0 / 16.0
"""Scale of the exported DFT basis (float16 safety of the TensorRT graph); undone in dB."""
SCALE_DB = -20.0 * math.log10(BASIS_SCALE)
FRAMES = 1 + WINDOW_SAMPLES // HOP
"""Log-mel frames of one window: 313."""


def grid_start(start: int) -> int:
    """Where the model's window starting at ``start`` begins once moved onto the frame grid:
    ``start`` rounded down to a multiple of the STFT hop (see the module doc)."""
    return int(start) - int(start) % HOP


def n_frames(window_samples: int = WINDOW_SAMPLES) -> int:
    """Frames of a centred STFT over ``window_samples`` samples."""
    return 1 + int(window_samples) // HOP


def front_end_parameters() -> dict[str, object]:
    """The front end as ``model.json`` records it (``frontend``); a bundle whose values differ
    was made for another front end, and its log-mel-input graph must not be fed from here."""
    return {
        "kind": "log-mel",
        "sample_rate": SAMPLE_RATE,
        "n_fft": N_FFT,
        "win_length": N_FFT,
        "hop_length": HOP,
        "n_mels": N_MELS,
        "window": "hann (periodic)",
        "center": True,
        "pad_mode": "constant",
        "mel_scale": "slaney",
        "mel_norm": "slaney",
        "f_min": 0.0,
        "f_max": SAMPLE_RATE / 2,
        "power": 2.0,
        "db": "10*log10(max(mel, eps))",
        "eps": EPS,
        "basis_scale": BASIS_SCALE,
    }


def parameters_match(recorded: dict) -> list[str]:
    """The keys of a bundle's ``frontend`` block that differ from this front end (empty: equal)."""
    ours = front_end_parameters()
    return sorted(k for k, v in ours.items() if recorded.get(k) != v)


def _hz_to_mel_slaney(hz: np.ndarray) -> np.ndarray:
    """Slaney's mel scale: linear below 1 kHz, logarithmic above (as librosa with htk=False)."""
    hz = np.asarray(hz, dtype=np.float64)
    f_sp = 200.0 / 3.0
    mels = hz / f_sp
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = math.log(6.4) / 27.0
    log_region = hz >= min_log_hz
    return np.where(log_region, min_log_mel + np.log(np.maximum(hz, 1e-12) / min_log_hz) / logstep, mels)


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
    """Periodic Hann window (``torch.hann_window(n, periodic=True)``), float64."""
    k = np.arange(n, dtype=np.float64)
    return 0.5 - 0.5 * np.cos(2.0 * math.pi * k / n)


RealFFT = Callable[..., np.ndarray]


def real_fft() -> tuple[RealFFT, str]:
    """``scipy.fft.rfft`` where scipy is installed, else ``numpy.fft.rfft``, and which one.

    Why: scipy's pocketfft vectorises a stack of frames with SIMD, numpy's transforms one row
    at a time; for a hop's 129 frames of 2048 samples scipy took 0.49 ms and numpy 2.0 ms on
    the 2-core development VM (the front end's largest cost, docs/performance.md). Both give
    the same spectrum to float32 rounding, so scipy is an accelerator (the ``onnx`` extra
    installs it) and never a requirement.
    """
    try:
        from scipy import fft as scipy_fft
    except ImportError:
        return np.fft.rfft, "numpy"
    return scipy_fft.rfft, "scipy"


def _fft_dtype(rfft: RealFFT) -> type[np.floating]:
    """float32 where the FFT computes in single precision (scipy; numpy >= 2), else float64."""
    probe = rfft(np.zeros(8, dtype=np.float32))
    return np.float32 if probe.dtype == np.complex64 else np.float64


@dataclass(frozen=True)
class _SparseFilterbank:
    """The filterbank's non-zero weights grouped by band: each FFT bin feeds at most two
    triangles, so ``power @ fb`` is ~2 k multiply-adds per frame instead of 131 k (and no BLAS
    thread pool competing with onnxruntime's)."""

    bins: np.ndarray  # (nnz,) FFT bin of each weight, grouped by band
    weights: np.ndarray  # (nnz,) float32
    band_starts: np.ndarray  # (n_mels,) offset of each band's first weight

    @staticmethod
    def of(fb: np.ndarray) -> _SparseFilterbank | None:
        """None when some band has no weight (reduceat cannot express an empty band)."""
        bands, bins = np.nonzero(fb.T)  # row-major over bands: grouped by band, bins ascending
        counts = np.bincount(bands, minlength=fb.shape[1])
        if np.any(counts == 0):
            return None
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.intp)
        return _SparseFilterbank(bins.astype(np.intp), fb[bins, bands].astype(np.float32), starts)

    def apply(self, power: np.ndarray) -> np.ndarray:
        """``(K, n_bins)`` -> ``(K, n_mels)``, equal to ``power @ fb`` up to float32 rounding."""
        return np.add.reduceat(power[:, self.bins] * self.weights, self.band_starts, axis=1)


class LogMelFrontEnd:
    """Stateless: frames of 2048 samples -> log-mel rows; whole windows -> ``(B, 128, 313)``.

    Holds the Hann window and the filterbank once; one instance serves every stream.
    """

    def __init__(self, window_samples: int = WINDOW_SAMPLES) -> None:
        self.window_samples = int(window_samples)
        self.frames = n_frames(self.window_samples)
        self._rfft, self.fft_library = real_fft()
        self.dtype = _fft_dtype(self._rfft)
        self._window = hann_window().astype(self.dtype)
        self._fb = mel_filterbank()  # (1025, 128) float32
        self._sparse = _SparseFilterbank.of(self._fb)
        starts = HOP * np.arange(self.frames) - PAD
        self.interior = (starts >= 0) & (starts + N_FFT <= self.window_samples)
        """Frames that lie wholly inside the window (the others touch the centred padding)."""
        self.edge_index = np.flatnonzero(~self.interior)
        self.interior_index = np.flatnonzero(self.interior)
        self.rel_starts = starts
        """Start of every frame relative to the window's first sample (may be negative)."""

    def frame_rows(self, frames: np.ndarray) -> np.ndarray:
        """``(K, 2048)`` audio frames -> ``(K, 128)`` float32 log-mel rows in dB."""
        if frames.shape[0] == 0:
            return np.empty((0, N_MELS), dtype=np.float32)
        spec = self._rfft(frames.astype(self.dtype, copy=False) * self._window, axis=1)
        power = (spec.real * spec.real + spec.imag * spec.imag).astype(np.float32, copy=False)
        mel = self._sparse.apply(power) if self._sparse is not None else power @ self._fb
        np.maximum(mel, np.float32(EPS), out=mel)
        np.log10(mel, out=mel)
        mel *= np.float32(10.0)
        return mel

    def interior_frames(self, audio: np.ndarray, index: np.ndarray) -> np.ndarray:
        """The audio of interior frames ``index`` of one window, ``(len(index), 2048)`` (a copy)."""
        view = np.lib.stride_tricks.sliding_window_view(audio, N_FFT)[::HOP]
        return view[(self.rel_starts[index] // HOP)]

    def edge_frames(self, audio: np.ndarray) -> np.ndarray:
        """The audio of the edge frames of one window, zero outside it, ``(n_edges, 2048)``."""
        out = np.zeros((self.edge_index.size, N_FFT), dtype=audio.dtype)
        for row, j in enumerate(self.edge_index):
            start = int(self.rel_starts[j])
            lo, hi = max(start, 0), min(start + N_FFT, self.window_samples)
            out[row, lo - start : hi - start] = audio[lo:hi]
        return out

    def window(self, audio: np.ndarray) -> np.ndarray:
        """Log-mel of whole windows: ``(N,)`` -> ``(128, 313)``, ``(B, N)`` -> ``(B, 128, 313)``.

        No cache: the stateless fallback (a caller that gives a runtime audio only) and the
        reference the streaming path is tested against.
        """
        audio = np.asarray(audio, dtype=np.float32)
        single = audio.ndim == 1
        batch = audio[None] if single else audio
        if batch.ndim != 2 or batch.shape[1] != self.window_samples:
            raise ValueError(f"log-mel input must be (batch, {self.window_samples}) samples, got {audio.shape}")
        out = np.empty((batch.shape[0], N_MELS, self.frames), dtype=np.float32)
        padded = np.zeros(self.window_samples + 2 * PAD, dtype=np.float32)
        for i, row in enumerate(batch):  # one window at a time: its frames stay in the CPU cache
            padded[PAD : PAD + self.window_samples] = row
            frames = np.lib.stride_tricks.sliding_window_view(padded, N_FFT)[::HOP]
            out[i] = self.frame_rows(frames).T
        return out[0] if single else out


_DEFAULT: LogMelFrontEnd | None = None


def default_front_end() -> LogMelFrontEnd:
    """The shared front end of 10 s windows (built on first use)."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = LogMelFrontEnd()
    return _DEFAULT


def logmel(audio: np.ndarray) -> np.ndarray:
    """Log-mel in dB of 10 s windows, ``(B, 160000)`` -> ``(B, 128, 313)`` float32 (no cache)."""
    return default_front_end().window(audio)


@dataclass
class StreamStats:
    """Frames computed and reused so far, and how often the cache was dropped (and why last)."""

    windows: int = 0
    computed: int = 0
    reused: int = 0
    resets: int = 0
    last_reset: str = ""


_PROBE_STRIDE = 997  # samples between two contiguity probes (prime: never in step with the frame grid)


class LogMelStream:
    """One stream's streaming log-mel: frames keyed by absolute start sample, reused across windows.

    ``window(audio, start)`` returns the same ``(128, 313)`` as ``LogMelFrontEnd.window(audio)``
    for the window whose first sample is ``start`` on the stream's clock. ``hop_samples`` (the
    stream's hop) bounds the cache to frames a later window of that grid can use; without it
    every interior frame at or after the next possible window is kept. ``on_grid``: the caller
    moves every window onto the frame grid (``grid_start``), so the cache keeps the frames of
    the grid-moved later windows (about 35 new frames per 1 s hop instead of 129).
    """

    def __init__(
        self, hop_samples: int | None = None, front_end: LogMelFrontEnd | None = None, *, on_grid: bool = False
    ) -> None:
        self.front_end = front_end or default_front_end()
        self.hop_samples = None if hop_samples is None else int(hop_samples)
        self.on_grid = on_grid
        self.stats = StreamStats()
        self._starts = np.empty(0, dtype=np.int64)  # sorted absolute frame starts
        self._rows = np.empty((0, N_MELS), dtype=np.float32)
        self._last_start: int | None = None
        self._probe_at = np.empty(0, dtype=np.int64)
        self._probe_val = np.empty(0, dtype=np.float32)

    @property
    def cached_frames(self) -> int:
        return int(self._starts.size)

    @property
    def nbytes(self) -> int:
        return int(self._rows.nbytes + self._starts.nbytes + self._probe_at.nbytes + self._probe_val.nbytes)

    def reset(self, reason: str = "reset") -> None:
        """Drop every cached frame (a gap, a restart, audio that is not contiguous)."""
        if self._last_start is not None or self._starts.size:
            self.stats.resets += 1
            self.stats.last_reset = reason
            logger.debug("log-mel cache dropped: %s", reason)
        self._starts = np.empty(0, dtype=np.int64)
        self._rows = np.empty((0, N_MELS), dtype=np.float32)
        self._last_start = None
        self._probe_at = np.empty(0, dtype=np.int64)
        self._probe_val = np.empty(0, dtype=np.float32)

    def window(self, audio: np.ndarray, start: int, hop_samples: int | None = None) -> np.ndarray:
        """Log-mel ``(128, 313)`` float32 of the window ``audio`` whose first sample is ``start``."""
        fe = self.front_end
        audio = np.asarray(audio, dtype=np.float32)
        if audio.shape != (fe.window_samples,):
            raise ValueError(f"log-mel window must be ({fe.window_samples},) samples, got {audio.shape}")
        start = int(start)
        if hop_samples is not None:
            self.hop_samples = int(hop_samples)
        self._check_contiguous(audio, start)
        abs_starts = fe.rel_starts + start
        rows = np.empty((fe.frames, N_MELS), dtype=np.float32)
        interior = fe.interior_index
        wanted = abs_starts[interior]
        pos = np.searchsorted(self._starts, wanted)
        pos_clipped = np.minimum(pos, max(self._starts.size - 1, 0))
        hit = (pos < self._starts.size) & (self._starts[pos_clipped] == wanted) if self._starts.size else np.zeros(
            wanted.size, dtype=bool
        )
        rows[interior[hit]] = self._rows[pos_clipped[hit]]
        missing = interior[~hit]
        todo = np.concatenate([fe.interior_frames(audio, missing), fe.edge_frames(audio)])
        computed = fe.frame_rows(todo)
        rows[missing] = computed[: missing.size]
        rows[fe.edge_index] = computed[missing.size :]
        self.stats.windows += 1
        self.stats.computed += int(todo.shape[0])
        self.stats.reused += int(hit.sum())
        self._update_cache(start, abs_starts[missing], computed[: missing.size])
        self._remember_probes(audio, start)
        return np.ascontiguousarray(rows.T)

    # -- cache bookkeeping -----------------------------------------------------------------
    def _check_contiguous(self, audio: np.ndarray, start: int) -> None:
        if self._last_start is None:
            return
        if start < self._last_start:
            self.reset(f"clock went back from sample {self._last_start} to {start}")
            return
        rel = self._probe_at - start
        inside = (rel >= 0) & (rel < audio.size)
        if inside.any() and not np.array_equal(audio[rel[inside]], self._probe_val[inside]):
            self.reset(f"audio at samples shared with the previous window differs (window at {start})")

    def _remember_probes(self, audio: np.ndarray, start: int) -> None:
        first = self.hop_samples if self.hop_samples is not None else 1
        rel = np.arange(min(first, audio.size), audio.size, _PROBE_STRIDE, dtype=np.int64)
        self._probe_at = rel + start
        self._probe_val = audio[rel].copy()
        self._last_start = start

    def _update_cache(self, start: int, new_starts: np.ndarray, new_rows: np.ndarray) -> None:
        starts = np.concatenate([self._starts, new_starts])
        rows = np.concatenate([self._rows, new_rows]) if new_rows.size else self._rows
        keep = self._keep_mask(starts, start)
        starts, rows = starts[keep], rows[keep]
        order = np.argsort(starts, kind="stable")
        self._starts = starts[order]
        self._rows = np.ascontiguousarray(rows[order])

    def _keep_mask(self, starts: np.ndarray, start: int) -> np.ndarray:
        """Frames an interior frame of a later window on the hop grid can be (see module doc)."""
        fe = self.front_end
        span = fe.window_samples - N_FFT  # an interior frame starts within [s, s + span]
        hop = self.hop_samples
        if hop is None or hop <= 0:
            return starts >= start + 1
        keep = np.zeros(starts.size, dtype=bool)
        for m in range(1, span // hop + 1):
            s = grid_start(start + m * hop) if self.on_grid else start + m * hop
            keep |= (starts >= s) & (starts <= s + span) & ((starts - s + PAD) % HOP == 0)
        return keep


__all__ = [
    "BASIS_SCALE",
    "EPS",
    "FRAMES",
    "HOP",
    "N_BINS",
    "N_FFT",
    "N_MELS",
    "PAD",
    "SCALE_DB",
    "LogMelFrontEnd",
    "LogMelStream",
    "StreamStats",
    "default_front_end",
    "front_end_parameters",
    "grid_start",
    "hann_window",
    "logmel",
    "mel_filterbank",
    "n_frames",
    "parameters_match",
]
