"""The interface every audio source implements, and the error a misconfigured one raises.

Everything downstream of the capture ring (resampler, stream buffers, pipeline) only sees
``AudioSource``: that is what lets tests and demos replay a file or synthesise a machine
where production opens a microphone, and still run the same code after the ring.
"""

from __future__ import annotations

import abc
import logging
import threading
import time
from collections.abc import Callable

from edge_asd.audio.ring import CaptureRing
from edge_asd.core.constants import OFFLINE
from edge_asd.core.errors import UserError

logger = logging.getLogger(__name__)

FINISHED = "finished"
"""Source-only state (not published on MQTT): a file source reached its end and will never
deliver again. The published states (``online``/``offline``) come from ``edge_asd.core.constants``."""


class AudioSourceError(UserError):
    """A source that cannot be used as configured (bad WAV, bad spec)."""


class AudioSource(abc.ABC):
    """Produces multichannel float32 blocks into a ``CaptureRing``.

    Subclasses set ``sample_rate``, ``channels`` and ``name`` in ``__init__`` (before
    ``start``) so the ring and resampler can be sized; ``status`` is ``online`` while audio
    flows, ``offline`` while a device is gone or being reopened, ``finished`` when a file
    source has no more audio.
    """

    sample_rate: int
    channels: int
    name: str

    def __init__(self) -> None:
        self.status = OFFLINE
        self.restarts = 0
        self._ring: CaptureRing | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.opened_monotonic: float | None = None
        """When the source was started or last (re)opened (``time.monotonic``): a stall is
        measured from the later of this and the last block, so a device just reopened after an
        outage is not reported stalled because its last block dates from before the unplug."""

    @property
    def finished(self) -> bool:
        """True once the source will never deliver audio again (end of a non-looping file)."""
        return self.status == FINISHED

    @abc.abstractmethod
    def start(self, ring: CaptureRing) -> None:
        """Begin delivering blocks into ``ring`` (returns immediately)."""

    @abc.abstractmethod
    def stop(self, timeout: float = 2.0) -> None:
        """Stop delivering and release the device/file; idempotent."""

    # Every source runs one thread of its own (a reader, or a device's liveness supervisor)
    # that waits on ``_stop``; these two helpers are its whole life cycle.

    def _attach(self, ring: CaptureRing, what: str) -> None:
        """Remember the ring to write to; its channel count must be the source's."""
        if ring.channels != self.channels:
            raise ValueError(f"ring has {ring.channels} channels, {what} {self.name} has {self.channels}")
        self._ring = ring
        self.opened_monotonic = time.monotonic()

    def _start_thread(self, target: Callable[[], None], name: str) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=target, name=name, daemon=True)
        self._thread.start()

    def _join_thread(self, timeout: float) -> None:
        """Ask the thread to end and wait up to ``timeout`` seconds for it."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
