"""Reading and writing the 16 kHz mono clips that every part of edge-asd works on.

numpy + soundfile only: this module runs on the Jetson (no torch, no scipy). It turns any
readable sound file into the one format the model knows (float32 mono in [-1, 1] at 16 kHz),
so that a 48 kHz two-channel recording from a field recorder trains and scores like a DCASE
clip. Problems the user can fix (a corrupt, empty or NaN-filled file) become ``AudioFileError``
naming the path instead of a soundfile traceback.
"""

from __future__ import annotations

import logging
import struct
from pathlib import Path

import numpy as np
import soundfile as sf

from edge_asd.core.constants import MAX_AUDIO_RATE, MIN_AUDIO_RATE, SAMPLE_RATE, WINDOW_SAMPLES
from edge_asd.core.errors import UserError
from edge_asd.core.resample import StreamingResampler

logger = logging.getLogger(__name__)


class AudioFileError(UserError):
    """A sound file that cannot be used: unreadable, corrupt, empty or holding NaN/inf."""


def wav_truncation(path: Path) -> str | None:
    """What is wrong with a RIFF/WAVE file shorter than its header says, or None.

    libsndfile quietly reads a truncated WAV (a copy interrupted half-way) as a shorter one;
    scoring or replaying it would silently test something else, so callers refuse it. Files
    that are not plain RIFF WAV (RF64, FLAC, ...) are left to libsndfile. ``OSError`` passes.
    """
    size = path.stat().st_size
    with path.open("rb") as fh:
        head = fh.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None
        pos = 12
        while pos + 8 <= size:
            fh.seek(pos)
            kind, length = struct.unpack("<4sI", fh.read(8))
            if kind == b"data":
                if length not in (0, 0xFFFFFFFF) and pos + 8 + length > size:
                    return (f"WAV file {path} is truncated: its header announces {length} bytes of audio "
                            f"but only {size - pos - 8} are present. Copy or record the file again")  # fmt: skip
                return None
            pos += 8 + length + (length & 1)
    return f"WAV file {path} has no audio data chunk: it is corrupt, record it again"


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
        problem = wav_truncation(path)
    except OSError as err:
        raise AudioFileError(f"cannot read audio file {path}: {err}") from err
    if problem is not None:
        raise AudioFileError(problem)
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, OSError, ValueError, TypeError) as err:
        raise AudioFileError(
            f"cannot read audio file {path}: {err}. Replace or delete the file "
            "(it must be a WAV/FLAC/OGG sound file)"
        ) from err
    if not MIN_AUDIO_RATE <= sr <= MAX_AUDIO_RATE:
        raise AudioFileError(
            f"audio file {path} has a sample rate of {sr} Hz, outside what audio hardware records "
            f"({MIN_AUDIO_RATE}-{MAX_AUDIO_RATE} Hz): the header is probably corrupt; re-record or convert it"
        )
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
    """Resample a whole 1-D signal by ``target_sr / orig_sr`` with the streaming resampler.

    The same filter as the live path (``edge_asd.core.resample``), run once over the clip and
    flushed, so a 48 kHz file scored with ``edge-asd score`` gives the samples that
    ``listen --source file:`` gives. The output has ``ceil(len(x) * target / orig)`` samples.
    """
    x = np.asarray(x, dtype=np.float32)
    if orig_sr <= 0 or target_sr <= 0:
        raise ValueError(f"sample rates must be positive, got {orig_sr} -> {target_sr}")
    if orig_sr == target_sr or x.size == 0:
        return x.copy()
    rs = StreamingResampler(int(orig_sr), int(target_sr), channels=1)
    return np.concatenate([rs.process(x), rs.flush()[:, 0]]).astype(np.float32, copy=False)


__all__ = [
    "SAMPLE_RATE",
    "WINDOW_SAMPLES",
    "AudioFileError",
    "fit_length",
    "read_audio",
    "resample",
    "wav_truncation",
    "write_wav",
]
