"""A PortAudio input (``sounddevice``) as a source: the production microphone.

Unlike a file, a sound card can vanish (USB unplugged, driver error), be missing when the
service starts (a USB interface that enumerates late, one unplugged for maintenance) or go
silent without an error, and a monitor that stops hearing must notice and recover by itself;
so this source has a liveness supervisor that (re)opens the device, found again by its stable
id, with backoff. In the daemon (``wait_for_device``) a device that cannot be opened is never
fatal: the source stays ``offline`` with the reason in ``last_error`` until it can.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from typing import Any

import numpy as np

from edge_asd.audio.devices import (
    AudioDeviceError,
    InputDevice,
    default_input_index,
    describe_inputs,
    import_sounddevice,
    is_default_spec,
    list_inputs,
    refresh_portaudio,
    resolve_device,
)
from edge_asd.audio.ring import CaptureRing
from edge_asd.audio.sources.base import AudioSource
from edge_asd.core.constants import MAX_AUDIO_RATE, MIN_AUDIO_RATE, OFFLINE, ONLINE

logger = logging.getLogger(__name__)

DEFAULT_DEVICE_RATE = 48000
"""Capture rate of a device that is missing at start and has no ``samplerate:`` set: the
ring and resampler must be sized before the device can be asked, and 48 kHz is what USB
audio interfaces support. A device that cannot do it says so in the stream's fault."""

BACKOFF_MAX_S = 30.0
"""Longest wait between two attempts to reopen a missing device: a re-plugged microphone is
heard again within half a minute, and a device that stays away costs one attempt per 30 s."""

RESCAN_ESCALATE_S = 600.0
"""How long a device may stay away while PortAudio's device list cannot be re-scanned (other
inputs are open) before the stream's fault says that only a service restart finds it again: a
re-plugged device is invisible to a stale list, so retrying alone would wait forever."""

RESCAN_HINT = (
    "; PortAudio cannot re-scan the devices while other inputs are open: "
    "restart the service (systemctl restart edge-asd) to look for it again"
)

JACK_CLOSE_SETTLE_S = 0.6
"""Least pause between stopping and closing a stream on JACK (``JACK_CLOSE_SETTLE_PERIODS``
periods, if longer). Stopping disconnects the stream's ports; at the cycle after, the server
recomputes latencies and notifies every client, whose JACK library handles that in a thread
of its own by walking the client's port list; closing unregisters the ports, erasing them
from that same list without a lock (jack2 1.9.21). PortAudio's close waits for that very
cycle, so without a pause the erase and the walk start together, and when they meet the
process dies of SIGSEGV (docs/reliability.md, ``bench/jack_close_race.py``). 0.6 s is past
the 0.5 s a late client may hold the server's graph switch without real-time scheduling. It
makes the crash improbable, not impossible; it costs that pause at shutdown or reopen, on
JACK only."""

JACK_CLOSE_SETTLE_PERIODS = 4
"""The pause in JACK periods (the callback's block size), for servers run with long periods."""

_PORTAUDIO_LOCK = threading.RLock()
"""Held around every re-scan, device query, open and close of a PortAudio stream, process-wide:
a re-scan terminates and re-initialises PortAudio, which would kill a stream another source's
supervisor opened a moment before (or query a half-initialised library)."""


def check_device_rate(rate: float, where: str) -> int:
    """A capture rate within what audio hardware does (a bogus driver report must not size a
    resampling filter of millions of taps)."""
    if not MIN_AUDIO_RATE <= rate <= MAX_AUDIO_RATE:
        raise AudioDeviceError(
            f"{where}: sample rate {rate:g} Hz is outside what audio hardware records "
            f"({MIN_AUDIO_RATE}-{MAX_AUDIO_RATE} Hz): set the source's `samplerate:` to one the device supports"
        )
    return int(round(rate))


class SoundDeviceSource(AudioSource):
    """A PortAudio input opened at its native rate with every channel a stream.

    The callback only copies into the preallocated ring (and counts input overflows there).
    A supervisor thread watches liveness: when PortAudio ends the stream
    (``finished_callback``: device unplugged, driver error) or no block arrived for
    ``stall_s``, the source goes ``offline``, closes the stream and reopens it with
    exponential backoff (``backoff_s`` doubling up to ``backoff_max_s``), re-resolving the
    device by its stable id so a re-plugged USB mic is found under its new index. A reopen
    marks a gap in the ring, so no window straddles the outage.

    ``device`` None (or empty) is PortAudio's default input. ``wait_for_device``: a device
    that is missing or cannot be opened at start is not an error; the source starts
    ``offline`` (sized from ``channels``/``sample_rate``, else ``min_channels`` and
    ``DEFAULT_DEVICE_RATE``) and the supervisor keeps trying. Without it (``record``,
    ``calibrate``: someone is watching) a missing device raises ``AudioDeviceError``.

    PortAudio only sees a re-plugged device after re-initialising, which would kill every
    other open stream, so the device list is refreshed only while no stream is open (and all
    of it under one process-wide lock). A device that stays away for ``rescan_escalate_s``
    while others are open logs an error and its fault says a service restart is needed.
    """

    _open_streams: set[int] = set()  # ids of sources with an open stream (process-wide)

    def __init__(
        self,
        device: str | int | None,
        channels: int | None = None,
        sample_rate: int | None = None,
        latency: str | float = "high",
        blocksize: int = 0,
        stall_s: float = 5.0,
        backoff_s: float = 1.0,
        backoff_max_s: float = BACKOFF_MAX_S,
        check_interval_s: float = 0.5,
        *,
        wait_for_device: bool = False,
        min_channels: int = 1,
    ) -> None:
        super().__init__()
        self._sd = import_sounddevice()
        self.wait_for_device = bool(wait_for_device)
        self.latency = latency
        self.blocksize = int(blocksize)
        self.stall_s = float(stall_s)
        self.backoff_s = float(backoff_s)
        self.backoff_max_s = float(backoff_max_s)
        self.check_interval_s = float(check_interval_s)
        self.rescan_escalate_s = RESCAN_ESCALATE_S
        self._stream: Any = None
        self._ended = False
        self._block_frames = 0  # frames of the last callback: the period on JACK
        self.last_error: str | None = None
        self._lookup: str | int | None = device  # what the supervisor resolves (the stable id once found)
        self._rescanned = True  # did the last reopen attempt re-scan PortAudio's device list?
        self._stale_since: float | None = None  # first failed attempt in a row that could not re-scan
        self._escalated = False
        found: InputDevice | None = None
        devices: list[InputDevice] = []
        try:
            with _PORTAUDIO_LOCK:
                devices = list_inputs(self._sd)
                found = resolve_device(device, devices, default_input_index(self._sd))
        except AudioDeviceError as err:
            if not self.wait_for_device:
                raise
            self.last_error = str(err).split(". available inputs:")[0]
            logger.warning("input %s is not there (%s): its streams start in fault and it is retried",
                           _spec_text(device), self.last_error)  # fmt: skip
        self.device: InputDevice | None = found
        if found is not None:
            if channels is not None and (channels < 1 or channels > found.channels):
                raise AudioDeviceError(
                    f"input device {found.name!r} has {found.channels} channel(s), "
                    f"{channels} requested. {describe_inputs(devices)}"
                )
            self.channels = int(channels or found.channels)
            native = sample_rate or found.default_samplerate
            self.sample_rate = check_device_rate(native, f"input device {found.name!r}")
            self.name = found.stable_id
            self._lookup = found.stable_id
        else:
            self.channels = int(channels or max(1, min_channels))
            self.sample_rate = check_device_rate(sample_rate or DEFAULT_DEVICE_RATE, f"input device {_spec_text(device)}")
            self.name = _spec_text(device)

    # The two PortAudio callbacks: nothing but a copy and a flag.
    def _callback(self, indata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
        self._ring.write(indata, status.input_overflow)  # type: ignore[union-attr]
        self._block_frames = frames  # with blocksize 0: the host's period (JACK's)

    def _finished(self) -> None:
        self._ended = True

    def _open(self) -> None:
        with _PORTAUDIO_LOCK:
            self._open_locked()

    def _open_locked(self) -> None:
        dev = self.device
        if dev is None:
            raise AudioDeviceError(self.last_error or f"input device {self.name} not found")
        if dev.channels < self.channels:
            raise AudioDeviceError(
                f"input device {dev.name!r} has {dev.channels} channel(s), {self.channels} needed by the streams"
            )
        sd = self._sd
        try:
            stream = sd.InputStream(
                device=dev.index,
                channels=self.channels,
                samplerate=self.sample_rate,
                dtype="float32",
                latency=self.latency,
                blocksize=self.blocksize,
                callback=self._callback,
                finished_callback=self._finished,
            )
        except Exception as err:
            hint = ""
            if round(dev.default_samplerate) != self.sample_rate:
                hint = (f" (opened at {self.sample_rate} Hz; its default is {dev.default_samplerate:g} Hz: "
                        "set the source's `samplerate:` to a rate it supports)")  # fmt: skip
            raise AudioDeviceError(f"{err}{hint}") from err
        self._ended = False
        self._block_frames = 0  # this stream's period, once its first callback says
        try:
            stream.start()
        except BaseException:
            # sounddevice streams have no finaliser: an unclosed one keeps the card busy and
            # leaks one PortAudio stream per retry (a failed start may have connected ports)
            _close_quietly(stream, self.name, self._close_pause())
            raise
        SoundDeviceSource._open_streams.add(id(self))
        self._stream = stream
        self.opened_monotonic = time.monotonic()
        self.last_error = None  # before the status: whoever sees `online` sees no stale error
        self.status = ONLINE

    def _close_stream(self) -> None:
        with _PORTAUDIO_LOCK:
            stream, self._stream = self._stream, None
            SoundDeviceSource._open_streams.discard(id(self))
            if stream is not None:
                _close_quietly(stream, self.name, self._close_pause())

    def _close_pause(self) -> float:
        """Seconds to wait between stopping and closing this source's stream: on JACK,
        ``JACK_CLOSE_SETTLE_S`` or ``JACK_CLOSE_SETTLE_PERIODS`` periods, whichever is
        longer; elsewhere none."""
        if self.device is None or not self.device.hostapi.startswith("JACK"):
            return 0.0
        return max(JACK_CLOSE_SETTLE_S, JACK_CLOSE_SETTLE_PERIODS * self._block_frames / self.sample_rate)

    def start(self, ring: CaptureRing) -> None:
        self._attach(ring, "device")
        first_try = 0.0
        try:
            self._open()
        except Exception as err:
            what = self.device.name if self.device is not None else self.name
            message = (f"cannot open input device {what!r} ({self.name}) at {self.sample_rate} Hz "
                       f"with {self.channels} channel(s): {err}")  # fmt: skip
            if not self.wait_for_device:
                raise AudioDeviceError(message) from err
            self.last_error = str(err)
            self.status = OFFLINE
            first_try = time.monotonic() + self.backoff_s
            logger.warning("%s; retrying in the background", message)
        self._start_thread(lambda: self._supervise(first_try), f"liveness-{self.name}")

    def stop(self, timeout: float = 2.0) -> None:
        self._join_thread(timeout)
        self._close_stream()
        self.status = OFFLINE

    def alive(self) -> bool:
        """Is the open stream delivering? (finished, inactive or stalled count as dead)."""
        stream = self._stream
        if stream is None or self._ended:
            return False
        try:
            active = stream.active
        except Exception as err:  # PortAudioError from a broken device: as good as dead
            logger.warning("input %s: PortAudio cannot tell whether the stream runs (%s)", self.name, err)
            return False
        if not active:
            return False
        last = self._ring.last_write_monotonic if self._ring else None
        now = time.monotonic()
        reference = max(last or 0.0, self.opened_monotonic or 0.0)
        return now - reference < self.stall_s

    def _supervise(self, next_try: float = 0.0) -> None:
        """The liveness loop. It must outlive anything PortAudio throws at it (``stream.active``
        raises on a broken device): a dead supervisor would leave the source ``online`` and the
        device never reopened, so a failed check counts as a dead stream and is backed off."""
        backoff = self.backoff_s
        while not self._stop.wait(self.check_interval_s):
            try:
                next_try, backoff = self._check(next_try, backoff)
            except Exception as err:
                logger.exception("liveness check of input %s failed: treating the input as dead", self.name)
                with contextlib.suppress(Exception):
                    self._close_stream()
                self.status = OFFLINE
                self.last_error = f"the input failed ({err})"
                backoff = min(backoff * 2.0, self.backoff_max_s)
                next_try = time.monotonic() + backoff

    def _check(self, next_try: float, backoff: float) -> tuple[float, float]:
        """One pass of the liveness loop; returns the next ``(next_try, backoff)``."""
        if self._stream is not None:
            if self.alive():
                return next_try, backoff
            logger.warning("input %s stopped delivering audio: reopening", self.name)
            self._close_stream()
            self.status = OFFLINE
            self.last_error = "the input stopped delivering audio (unplugged, or a driver error)"
            return time.monotonic() + self.backoff_s, self.backoff_s
        now = time.monotonic()
        if now < next_try:
            return next_try, backoff
        try:
            self._reopen()
        except Exception as err:
            backoff = min(backoff * 2.0, self.backoff_max_s)
            self.last_error = str(err).split(". available inputs:")[0] + self._stale_list_hint(now)
            logger.info("input %s still unavailable (%s); next try in %.0f s", self.name, self.last_error, backoff)
            return time.monotonic() + backoff, backoff
        self.restarts += 1
        self.last_error = None
        self._stale_since, self._escalated = None, False
        return next_try, self.backoff_s

    def _stale_list_hint(self, now: float) -> str:
        """After a failed attempt: the restart hint once the device has been away for
        ``rescan_escalate_s`` with PortAudio's device list never re-scanned (other inputs open)."""
        if self._rescanned:
            self._stale_since, self._escalated = None, False
            return ""
        if self._stale_since is None:
            self._stale_since = now
        if now - self._stale_since < self.rescan_escalate_s:
            return ""
        if not self._escalated:
            self._escalated = True
            logger.error("input %s has been unavailable for %.0f min while other inputs kept PortAudio from "
                         "re-scanning its devices: restart the service (systemctl restart edge-asd) to find it "
                         "again", self.name, (now - self._stale_since) / 60.0)  # fmt: skip
        return RESCAN_HINT

    def _reopen(self) -> None:
        """Find the device again (new index after a re-plug) and open it; raises if it cannot."""
        with _PORTAUDIO_LOCK:
            self._rescanned = not SoundDeviceSource._open_streams
            if self._rescanned:
                refresh_portaudio()
            found = resolve_device(self._lookup, list_inputs(self._sd), default_input_index(self._sd))
            self.device = found
            self._lookup = found.stable_id
            ring = self._ring
            assert ring is not None
            if ring.written:  # a splice after audio; a device first found late starts the stream clean
                ring.mark_gap()
            self._open_locked()
        logger.warning("input %s is back (%s, index %d)", self.name, found.name, found.index)


def _close_quietly(stream: Any, name: str, settle_s: float = 0.0) -> None:
    """Abort and close a PortAudio stream, whatever state it is in (a vanished device may
    refuse even to close; there is nothing left to do about it then). ``settle_s``: a pause
    between the two (``SoundDeviceSource._close_pause``)."""
    try:
        stream.abort(ignore_errors=True)
    except Exception as err:
        logger.debug("aborting stream of %s: %s", name, err)
    if settle_s > 0:
        time.sleep(settle_s)
    try:
        stream.close(ignore_errors=True)
    except Exception as err:
        logger.debug("closing stream of %s: %s", name, err)


def _spec_text(spec: str | int | None) -> str:
    """How a device spec reads in messages and as the source's name while it is missing."""
    return "the default input" if is_default_spec(spec) else f"device:{spec}"
