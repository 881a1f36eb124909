"""A PortAudio input (``sounddevice``) as a source: the production microphone.

Unlike a file, a sound card can vanish (USB unplugged, driver error) or go silent without an
error, and a monitor that stops hearing must notice and recover by itself; so this source has
a liveness supervisor that reopens the device, found again by its stable id, with backoff.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from edge_asd.audio.devices import (
    AudioDeviceError,
    InputDevice,
    describe_inputs,
    import_sounddevice,
    list_inputs,
    refresh_portaudio,
    resolve_device,
)
from edge_asd.audio.ring import CaptureRing
from edge_asd.audio.sources.base import AudioSource
from edge_asd.core.constants import OFFLINE, ONLINE

logger = logging.getLogger(__name__)


class SoundDeviceSource(AudioSource):
    """A PortAudio input opened at its native rate with every channel a stream.

    The callback only copies into the preallocated ring (and counts input overflows there).
    A supervisor thread watches liveness: when PortAudio ends the stream
    (``finished_callback``: device unplugged, driver error) or no block arrived for
    ``stall_s``, the source goes ``offline``, closes the stream and reopens it with
    exponential backoff (``backoff_s`` doubling up to ``backoff_max_s``), re-resolving the
    device by its stable id so a re-plugged USB mic is found under its new index. A reopen
    marks a gap in the ring, so no window straddles the outage.

    PortAudio only sees a re-plugged device after re-initialising, which would kill every
    other open stream, so the device list is refreshed only while no stream is open.
    """

    _open_streams: set[int] = set()  # ids of sources with an open stream (process-wide)

    def __init__(
        self,
        device: str | int,
        channels: int | None = None,
        sample_rate: int | None = None,
        latency: str | float = "high",
        blocksize: int = 0,
        stall_s: float = 5.0,
        backoff_s: float = 1.0,
        backoff_max_s: float = 60.0,
        check_interval_s: float = 0.5,
    ) -> None:
        super().__init__()
        self._sd = import_sounddevice()
        devices = list_inputs(self._sd)
        self.device: InputDevice = resolve_device(device, devices)
        if channels is not None and (channels < 1 or channels > self.device.channels):
            raise AudioDeviceError(
                f"input device {self.device.name!r} has {self.device.channels} channel(s), "
                f"{channels} requested. {describe_inputs(devices)}"
            )
        self.channels = int(channels or self.device.channels)
        self.sample_rate = int(sample_rate or round(self.device.default_samplerate))
        self.name = self.device.stable_id
        self.latency = latency
        self.blocksize = int(blocksize)
        self.stall_s = float(stall_s)
        self.backoff_s = float(backoff_s)
        self.backoff_max_s = float(backoff_max_s)
        self.check_interval_s = float(check_interval_s)
        self._stream: Any = None
        self._ended = False
        self._opened_at = 0.0
        self.last_error: str | None = None

    # The two PortAudio callbacks: nothing but a copy and a flag.
    def _callback(self, indata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
        self._ring.write(indata, status.input_overflow)  # type: ignore[union-attr]

    def _finished(self) -> None:
        self._ended = True

    def _open(self) -> None:
        sd = self._sd
        stream = sd.InputStream(
            device=self.device.index,
            channels=self.channels,
            samplerate=self.sample_rate,
            dtype="float32",
            latency=self.latency,
            blocksize=self.blocksize,
            callback=self._callback,
            finished_callback=self._finished,
        )
        self._ended = False
        stream.start()
        SoundDeviceSource._open_streams.add(id(self))
        self._stream = stream
        self._opened_at = time.monotonic()
        self.status = ONLINE

    def _close_stream(self) -> None:
        stream, self._stream = self._stream, None
        SoundDeviceSource._open_streams.discard(id(self))
        if stream is None:
            return
        try:
            stream.abort(ignore_errors=True)
            stream.close(ignore_errors=True)
        except Exception as err:  # a vanished device may refuse even to close
            logger.debug("closing stream of %s: %s", self.name, err)

    def start(self, ring: CaptureRing) -> None:
        self._attach(ring, "device")
        try:
            self._open()
        except Exception as err:
            raise AudioDeviceError(
                f"cannot open input device {self.device.name!r} ({self.name}) at {self.sample_rate} Hz "
                f"with {self.channels} channel(s): {err}"
            ) from err
        self._start_thread(self._supervise, f"liveness-{self.name}")

    def stop(self, timeout: float = 2.0) -> None:
        self._join_thread(timeout)
        self._close_stream()
        self.status = OFFLINE

    def alive(self) -> bool:
        """Is the open stream delivering? (finished, inactive or stalled count as dead)."""
        stream = self._stream
        if stream is None or self._ended or not stream.active:
            return False
        last = self._ring.last_write_monotonic if self._ring else None
        now = time.monotonic()
        reference = max(last or 0.0, self._opened_at)
        return now - reference < self.stall_s

    def _supervise(self) -> None:
        backoff = self.backoff_s
        next_try = 0.0
        while not self._stop.wait(self.check_interval_s):
            if self._stream is not None:
                if self.alive():
                    continue
                logger.warning("input %s stopped delivering audio: reopening", self.name)
                self._close_stream()
                self.status = OFFLINE
                backoff = self.backoff_s
                next_try = time.monotonic() + backoff
                continue
            if time.monotonic() < next_try:
                continue
            try:
                if not SoundDeviceSource._open_streams:
                    refresh_portaudio()
                self.device = resolve_device(self.name, list_inputs(self._sd))
                self._ring.mark_gap()  # type: ignore[union-attr]
                self._open()
                self.restarts += 1
                self.last_error = None
                logger.warning("input %s is back (index %d)", self.name, self.device.index)
                backoff = self.backoff_s
            except Exception as err:
                self.last_error = str(err)
                backoff = min(backoff * 2.0, self.backoff_max_s)
                next_try = time.monotonic() + backoff
                logger.info("input %s still unavailable (%s); next try in %.0f s", self.name, err, backoff)
