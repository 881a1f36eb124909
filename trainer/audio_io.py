"""Reading and writing the 16 kHz mono clips that every part of edge-asd works on.

numpy + soundfile only: this module runs on the Jetson (no torch, no scipy). It turns any
readable sound file into the one format the model knows (float32 mono in [-1, 1] at 16 kHz),
so that a 48 kHz two-channel recording from a field recorder trains and scores like a DCASE
clip. Problems the user can fix (a corrupt, empty or NaN-filled file) become ``AudioFileError``
naming the path instead of a soundfile traceback.
"""

from __future__ import annotations

import logging
import math
from functools import lru_cache
from pathlib import Path

import numpy as np
import soundfile as sf

from trainer.errors import UserError

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16000
"""The model's sample rate: every clip is resampled to it on load."""

WINDOW_SAMPLES = 160000
"""One model input: 10 s at 16 kHz (the TgramNet LayerNorm(313) fixes this length)."""

# Windowed-sinc resampler design. 24 zero crossings each side and a Kaiser beta of 9 give a
# stop band below about -85 dB, far under int16 noise; the pass band ends at 94 % of the lower
# Nyquist so a 7.5 kHz component of a 48 kHz file survives while its aliases do not.
_ZERO_CROSSINGS = 24
_KAISER_BETA = 9.0
_ROLLOFF = 0.94
_MAX_PHASES = 16384
_CHUNK = 4096


class AudioFileError(UserError):
    """A sound file that cannot be used: unreadable, corrupt, empty or holding NaN/inf."""


def read_audio(path: str | Path, target_sr: int = SAMPLE_RATE) -> np.ndarray:
    """Load ``path`` as float32 mono in [-1, 1] at ``target_sr``.

    Multichannel files keep channel 0 only (MIMII's convention: the first microphone), with a
    warning, because averaging channels of a microphone array would comb-filter the sound.
    Other sample rates are resampled with a windowed-sinc polyphase filter.
    """
    path = Path(path)
    if not path.is_file():
        raise AudioFileError(f"audio file {path} does not exist (or is not a file): check the path")
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, OSError, ValueError, TypeError) as err:
        raise AudioFileError(
            f"cannot read audio file {path}: {err}. Replace or delete the file "
            "(it must be a WAV/FLAC/OGG sound file)"
        ) from err
    if data.shape[0] == 0:
        raise AudioFileError(f"audio file {path} holds no samples: delete it or record it again")
    if data.shape[1] > 1:
        logger.warning("%s has %d channels: using channel 0 only", path, data.shape[1])
    audio = np.ascontiguousarray(data[:, 0], dtype=np.float32)
    if not np.all(np.isfinite(audio)):
        raise AudioFileError(f"audio file {path} contains NaN or infinite samples: replace the file")
    if sr != target_sr:
        logger.debug("resampling %s from %d Hz to %d Hz", path, sr, target_sr)
        audio = resample(audio, int(sr), int(target_sr))
    # Float WAVs may exceed full scale; the model was trained on int16-range audio.
    np.clip(audio, -1.0, 1.0, out=audio)
    return audio


def fit_length(x: np.ndarray, n: int = WINDOW_SAMPLES) -> np.ndarray:
    """Crop ``x`` to its first ``n`` samples or zero-pad it at the end to exactly ``n``.

    The model's input length is fixed; DCASE clips run 10-11 s and the original code keeps the
    first 10 s, so cropping keeps the start.
    """
    x = np.asarray(x, dtype=np.float32)
    if x.shape[-1] >= n:
        return np.ascontiguousarray(x[..., :n])
    pad = [(0, 0)] * (x.ndim - 1) + [(0, n - x.shape[-1])]
    return np.pad(x, pad)


def write_wav(path: str | Path, audio: np.ndarray, sr: int = SAMPLE_RATE) -> Path:
    """Write mono float audio as 16-bit PCM WAV (the DCASE format), clipping to [-1, 1].

    Parent folders are created. Clipping first avoids int16 wrap-around, which would turn a
    loud sample into a full-scale click of the opposite sign.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    audio = np.clip(np.asarray(audio, dtype=np.float32), -1.0, 1.0)
    sf.write(str(path), audio, int(sr), subtype="PCM_16", format="WAV")
    return path


def resample(x: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """Resample a 1-D signal by the rational factor ``target_sr / orig_sr``.

    Polyphase windowed-sinc: every output sample is a Kaiser-windowed sinc interpolation of the
    input at its exact (rational) position; the ``L`` distinct fractional offsets are tabulated
    once, so the cost is ``len(out) * taps``. The cutoff sits below the lower of the two Nyquist
    frequencies so that downsampling does not alias. Each phase is normalised to unit DC gain.
    """
    x = np.asarray(x, dtype=np.float32)
    if orig_sr <= 0 or target_sr <= 0:
        raise ValueError(f"sample rates must be positive, got {orig_sr} -> {target_sr}")
    if orig_sr == target_sr or x.size == 0:
        return x.copy()
    g = math.gcd(orig_sr, target_sr)
    up, down = target_sr // g, orig_sr // g
    table, half = _polyphase_table(up, down)
    n_out = int(math.ceil(x.size * up / down))
    n = np.arange(n_out, dtype=np.int64)
    pos = n * down  # position in units of 1/up input samples
    base = pos // up
    phase = pos % up
    taps = table.shape[1]
    # Zero-pad so every tap index is valid: input sample i sits at xp[i + taps].
    xp = np.concatenate([np.zeros(taps, np.float32), x, np.zeros(taps, np.float32)])
    start = base - half + 1 + taps
    offsets = np.arange(taps, dtype=np.int64)
    y = np.empty(n_out, dtype=np.float32)
    # Chunks bound the (chunk, taps) gathers to a few MB whatever the file length.
    for lo in range(0, n_out, _CHUNK):
        hi = min(lo + _CHUNK, n_out)
        frames = xp[start[lo:hi, None] + offsets[None, :]]
        y[lo:hi] = np.einsum("ij,ij->i", frames, table[phase[lo:hi]], optimize=False)
    return y


@lru_cache(maxsize=16)
def _polyphase_table(up: int, down: int) -> tuple[np.ndarray, int]:
    """Kernel values for each of the ``up`` fractional offsets, shape (up, 2*half).

    Row ``p`` holds the weights of input samples ``base-half+1 .. base+half`` for an output
    whose exact input position is ``base + p/up``.
    """
    if up > _MAX_PHASES:
        raise ValueError(f"resampling ratio {up}/{down} needs too many phases ({up} > {_MAX_PHASES})")
    # Cutoff in cycles per input sample.
    fc = 0.5 * min(1.0, up / down) * _ROLLOFF
    half = int(math.ceil(_ZERO_CROSSINGS / (2.0 * fc)))
    frac = np.arange(up, dtype=np.float64)[:, None] / up
    k = np.arange(-half + 1, half + 1, dtype=np.float64)[None, :]
    t = frac - k  # distance from each input sample to the output position (input samples)
    kernel = 2.0 * fc * np.sinc(2.0 * fc * t)
    window = np.i0(_KAISER_BETA * np.sqrt(np.clip(1.0 - (t / half) ** 2, 0.0, 1.0))) / np.i0(_KAISER_BETA)
    kernel *= window
    kernel /= kernel.sum(axis=1, keepdims=True)
    return kernel.astype(np.float32), half


__all__ = [
    "SAMPLE_RATE",
    "WINDOW_SAMPLES",
    "AudioFileError",
    "fit_length",
    "read_audio",
    "resample",
    "write_wav",
]
