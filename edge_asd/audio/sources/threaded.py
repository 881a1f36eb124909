"""The common engine of the sources that are not a sound card: a Python thread feeding the ring.

A file and the synthetic generator differ only in where the next block comes from; pacing
(real time, or as fast as the consumer keeps up without overwriting anything), the end of
the audio and error reporting are the same, so they live here once.
"""

from __future__ import annotations

import abc
import logging
import time

import numpy as np

from edge_asd.audio.ring import CaptureRing
from edge_asd.audio.sources.base import FINISHED, AudioSource
from edge_asd.core.constants import OFFLINE, ONLINE

logger = logging.getLogger(__name__)


class ThreadedSource(AudioSource):
    """A source whose blocks come from a Python thread, paced to real time or not.

    Not real-time (``realtime=False``) means as fast as the consumer keeps up: the thread
    waits while the ring has no room for the next block, so nothing is ever overwritten.
    Subclasses implement ``_next_block`` (and ``_close`` if they hold a resource).
    """

    def __init__(self, realtime: bool, block_frames: int) -> None:
        super().__init__()
        self.realtime = realtime
        self.block_frames = int(block_frames)
        self.error: BaseException | None = None

    def start(self, ring: CaptureRing) -> None:
        self._attach(ring, "source")
        self.status = ONLINE
        self._start_thread(self._run, f"source-{self.name}")

    def stop(self, timeout: float = 2.0) -> None:
        self._join_thread(timeout)
        if self.status != FINISHED:
            self.status = OFFLINE

    def _run(self) -> None:
        ring = self._ring
        assert ring is not None
        t0 = time.monotonic()
        sent = 0
        try:
            while not self._stop.is_set():
                block = self._next_block(self.block_frames)
                if block is None:
                    self.status = FINISHED
                    return
                if not self.realtime:
                    while ring.written + block.shape[0] - ring.consumed > ring.capacity:
                        if self._stop.wait(0.002):
                            return
                ring.write(block)
                sent += block.shape[0]
                if self.realtime:
                    delay = t0 + sent / self.sample_rate - time.monotonic()
                    if delay > 0 and self._stop.wait(delay):
                        return
        except Exception as err:  # surfaced through .error and the offline status
            logger.exception("source %s failed", self.name)
            self.error = err
            self.status = OFFLINE
        finally:
            self._close()

    @abc.abstractmethod
    def _next_block(self, frames: int) -> np.ndarray | None:
        """The next ``(<= frames, channels)`` float32 block, or None at the end."""

    def _close(self) -> None:
        """Release resources when the thread ends."""
