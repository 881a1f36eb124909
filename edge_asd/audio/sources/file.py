"""A sound file replayed as if it were a microphone (``file:PATH``).

Replaying a recording is how a site's audio is tested, calibrated and benchmarked without the
machine running, so a file must reach the pipeline exactly as recorded: a truncated WAV or an
impossible sample rate is refused with a message instead of being played as something else.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from edge_asd.audio.sources.base import AudioSourceError
from edge_asd.audio.sources.threaded import ThreadedSource
from edge_asd.core.audio_io import wav_truncation
from edge_asd.core.constants import MAX_AUDIO_RATE, MIN_AUDIO_RATE

logger = logging.getLogger(__name__)

READ_BLOCKS = 10
"""Blocks read from the file at once (1 s at the default 0.1 s block): fewer, larger reads."""


def check_wav_complete(path: Path) -> None:
    """Raise ``AudioSourceError`` if a RIFF/WAVE file is shorter than its header says
    (``edge_asd.core.audio_io.wav_truncation``: the one check, also in ``read_audio``)."""
    try:
        problem = wav_truncation(path)
    except OSError as err:
        raise AudioSourceError(f"cannot read WAV file {path}: {err}") from err
    if problem is not None:
        raise AudioSourceError(problem)


class FileSource(ThreadedSource):
    """Replays a sound file, at real-time pace (a stand-in microphone) or as fast as possible.

    ``loop`` restarts at the end; the splice is the file's own content, not a capture fault,
    so it is not marked as a gap (a looped 10 s clip would otherwise never give a window).
    The sample rate must lie in the range ``edge-asd score`` accepts for a file
    (``MIN_AUDIO_RATE``..``MAX_AUDIO_RATE``), so both paths refuse the same corrupt headers.
    """

    def __init__(self, path: str | Path, realtime: bool = True, loop: bool = False, block_s: float = 0.1) -> None:
        import soundfile as sf

        self.path = Path(path)
        if not self.path.is_file():
            raise AudioSourceError(f"audio file {self.path} does not exist: check the path after file:")
        check_wav_complete(self.path)
        try:
            self._sf = sf.SoundFile(str(self.path))
        except (sf.LibsndfileError, RuntimeError, OSError) as err:
            raise AudioSourceError(f"cannot open audio file {self.path}: {err}. Is it a WAV/FLAC file?") from err
        if self._sf.frames == 0:
            self._sf.close()
            raise AudioSourceError(f"audio file {self.path} holds no samples")
        if not MIN_AUDIO_RATE <= self._sf.samplerate <= MAX_AUDIO_RATE:
            rate = self._sf.samplerate
            self._sf.close()
            raise AudioSourceError(
                f"audio file {self.path} has a sample rate of {rate} Hz, outside what audio hardware records "
                f"({MIN_AUDIO_RATE}-{MAX_AUDIO_RATE} Hz): the header is probably corrupt; re-record or convert it"
            )
        self.sample_rate = int(self._sf.samplerate)
        self.channels = int(self._sf.channels)
        self.name = f"file:{self.path.name}"
        self.loop = loop
        self._chunk = np.zeros((0, self.channels), np.float32)
        self._pos = 0
        super().__init__(realtime, max(1, int(block_s * self.sample_rate)))

    def _next_block(self, frames: int) -> np.ndarray | None:
        """The next block, served from a chunk of ``READ_BLOCKS`` blocks read at once: each
        libsndfile read through soundfile costs a few cffi calls (tell, seek, read), which at
        ten blocks a second per stream was most of a replayed stream's capture CPU."""
        if self._pos >= self._chunk.shape[0]:
            self._chunk = self._read(frames * READ_BLOCKS)
            self._pos = 0
            if self._chunk.shape[0] == 0:
                return None
        block = self._chunk[self._pos : self._pos + frames]
        self._pos += block.shape[0]
        return block

    def _read(self, frames: int) -> np.ndarray:
        try:
            chunk = self._sf.read(frames, dtype="float32", always_2d=True)
            if chunk.shape[0] == 0 and self.loop:
                self._sf.seek(0)
                chunk = self._sf.read(frames, dtype="float32", always_2d=True)
        except RuntimeError as err:
            raise AudioSourceError(f"reading {self.path} failed: {err}") from err
        return chunk

    def stop(self, timeout: float = 2.0) -> None:
        super().stop(timeout)
        self._sf.close()
