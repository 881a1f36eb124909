"""Where audio comes from: a sound device, a WAV file, or the synthetic machine generator.

All sources share one small interface (``AudioSource``): they know their native sample rate
and channel count, and once started they push float32 ``(frames, channels)`` blocks into a
``CaptureRing`` from their own thread (PortAudio's callback thread, or a reader thread).
Tests and demos inject a ``FileSource`` or ``SyntheticSource`` where production uses a
``SoundDeviceSource``, so everything downstream of the ring runs the same code either way.

Source specs on the command line / in the config: ``file:PATH``, ``synth[:TYPE[:ID]]``,
anything else is a device (index, stable id, or name substring).
"""

from __future__ import annotations

import abc
import logging
import struct
import threading
import time
from pathlib import Path
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
from edge_asd.core.errors import UserError

logger = logging.getLogger(__name__)

ONLINE, OFFLINE, FINISHED = "online", "offline", "finished"


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


# --------------------------------------------------------------------------- thread-based
class _ThreadSource(AudioSource):
    """A source whose blocks come from a Python thread, paced to real time or not.

    Not real-time (``realtime=False``) means as fast as the consumer keeps up: the thread
    waits while the ring has no room for the next block, so nothing is ever overwritten.
    """

    def __init__(self, realtime: bool, block_frames: int) -> None:
        super().__init__()
        self.realtime = realtime
        self.block_frames = int(block_frames)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None

    def start(self, ring: CaptureRing) -> None:
        if ring.channels != self.channels:
            raise ValueError(f"ring has {ring.channels} channels, source {self.name} has {self.channels}")
        self._ring = ring
        self._stop.clear()
        self.status = ONLINE
        self._thread = threading.Thread(target=self._run, name=f"source-{self.name}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
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


def check_wav_complete(path: Path) -> None:
    """Raise ``AudioSourceError`` if a RIFF/WAVE file is shorter than its header says.

    libsndfile quietly plays a truncated WAV (a copy interrupted half-way) as a shorter one;
    for a replayed recording that silently changes what is being tested, so we refuse it.
    """
    try:
        size = path.stat().st_size
        with path.open("rb") as fh:
            head = fh.read(12)
            if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
                return  # not a plain RIFF WAV (RF64, FLAC, ...): leave it to libsndfile
            pos = 12
            while pos + 8 <= size:
                fh.seek(pos)
                kind, length = struct.unpack("<4sI", fh.read(8))
                if kind == b"data":
                    if length not in (0, 0xFFFFFFFF) and pos + 8 + length > size:
                        raise AudioSourceError(
                            f"WAV file {path} is truncated: its header announces {length} bytes of audio "
                            f"but only {size - pos - 8} are present. Copy or record the file again"
                        )
                    return
                pos += 8 + length + (length & 1)
    except OSError as err:
        raise AudioSourceError(f"cannot read WAV file {path}: {err}") from err
    raise AudioSourceError(f"WAV file {path} has no audio data chunk: it is corrupt, record it again")


class FileSource(_ThreadSource):
    """Replays a sound file, at real-time pace (a stand-in microphone) or as fast as possible.

    ``loop`` restarts at the end; the splice is the file's own content, not a capture fault,
    so it is not marked as a gap (a looped 10 s clip would otherwise never give a window).
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
        self.sample_rate = int(self._sf.samplerate)
        self.channels = int(self._sf.channels)
        self.name = f"file:{self.path.name}"
        self.loop = loop
        super().__init__(realtime, max(1, int(block_s * self.sample_rate)))

    def _next_block(self, frames: int) -> np.ndarray | None:
        try:
            block = self._sf.read(frames, dtype="float32", always_2d=True)
            if block.shape[0] == 0 and self.loop:
                self._sf.seek(0)
                block = self._sf.read(frames, dtype="float32", always_2d=True)
        except RuntimeError as err:
            raise AudioSourceError(f"reading {self.path} failed: {err}") from err
        return block if block.shape[0] else None

    def stop(self, timeout: float = 2.0) -> None:
        super().stop(timeout)
        self._sf.close()


class SyntheticSource(_ThreadSource):
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
        sample_rate: int = 16000,
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


# ------------------------------------------------------------------------------ PortAudio
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
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
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
        if ring.channels != self.channels:
            raise ValueError(f"ring has {ring.channels} channels, device {self.name} has {self.channels}")
        self._ring = ring
        try:
            self._open()
        except Exception as err:
            raise AudioDeviceError(
                f"cannot open input device {self.device.name!r} ({self.name}) at {self.sample_rate} Hz "
                f"with {self.channels} channel(s): {err}"
            ) from err
        self._stop.clear()
        self._thread = threading.Thread(target=self._supervise, name=f"liveness-{self.name}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
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


def open_source(spec: str, *, realtime: bool = True, loop: bool = False, channels: int | None = None,
                synth_seconds: float | None = None, **device_kwargs: Any) -> AudioSource:
    """Build a source from a spec: ``file:PATH``, ``synth[:TYPE[:ID]]`` or a device."""
    text = str(spec).strip()
    if text.startswith("file:"):
        return FileSource(text[5:], realtime=realtime, loop=loop)
    if text == "synth" or text.startswith("synth:"):
        parts = text.split(":")
        machine_type = parts[1] if len(parts) > 1 and parts[1] else "fan"
        machine_id = parts[2] if len(parts) > 2 and parts[2] else "0"
        return SyntheticSource(machine_type, machine_id, channels=channels or 1, realtime=realtime,
                               duration_s=synth_seconds)
    return SoundDeviceSource(text, channels=channels, **device_kwargs)
