"""Endless synthetic machine sound as a source (``synth[:TYPE[:ID]]``).

The demo, ``record`` without hardware and the tests need a live input that sounds like a
machine and can be told to fail on cue; the generator itself is ``edge_asd.core.synth`` (the
same one the trainer's synthetic data set uses), this module only paces it into the ring.
"""

from __future__ import annotations

import logging

import numpy as np

from edge_asd.audio.sources.base import AudioSourceError
from edge_asd.audio.sources.threaded import ThreadedSource
from edge_asd.core.constants import SAMPLE_RATE

logger = logging.getLogger(__name__)


class SyntheticSource(ThreadedSource):
    """Endless synthetic machine sound (``edge_asd.core.synth.MachineSoundStream``), one per channel.

    Channel ``c`` uses seed ``seed + c`` so channels differ like separate machines would.
    ``duration_s`` makes it finite (for ``record`` and tests). ``generators[c]`` is the
    channel's ``MachineSoundStream`` (a demo calls its ``schedule_anomaly``). ``machine_id``
    is an int or a DCASE-style ``id_00``.
    """

    def __init__(
        self,
        machine_type: str = "fan",
        machine_id: int | str = 0,
        seed: int = 0,
        channels: int = 1,
        sample_rate: int = SAMPLE_RATE,
        realtime: bool = True,
        duration_s: float | None = None,
        block_s: float = 0.1,
    ) -> None:
        from edge_asd.core.synth import MachineSoundStream

        self.sample_rate = int(sample_rate)
        self.channels = int(channels)
        digits = "".join(ch for ch in str(machine_id) if ch.isdigit())
        if not digits:
            raise AudioSourceError(f"synthetic machine id {machine_id!r} must be a number like 0 or id_00")
        self.name = f"synth:{machine_type}:{int(digits)}"
        self.generators = [
            MachineSoundStream(machine_type, int(digits), seed + c, sr=self.sample_rate) for c in range(self.channels)
        ]
        self._remaining = None if duration_s is None else int(round(duration_s * self.sample_rate))
        super().__init__(realtime, max(1, int(block_s * self.sample_rate)))

    def _next_block(self, frames: int) -> np.ndarray | None:
        if self._remaining is not None:
            if self._remaining <= 0:
                return None
            frames = min(frames, self._remaining)
            self._remaining -= frames
        block = np.empty((frames, self.channels), dtype=np.float32)
        for c, stream in enumerate(self.generators):
            block[:, c] = stream.read(frames)
        return block
