"""Capture = source + ring + a worker that resamples into one StreamBuffer per channel.

The worker is the only consumer of the ring. Every ``poll_s`` it takes what arrived, feeds
one streaming resampler for all channels (native rate -> 16 kHz) and appends each channel to
its ``StreamBuffer``. A capture used alone (``record``, ``enrol``) has a worker thread of its
own; the daemon's captures share one (``CaptureWorker``). Gaps travel along: an overflow or
restart recorded in the ring, or samples the worker lost because it fell a whole ring behind,
become a gap interval in the 16 kHz buffers, widened by the resampler's filter span (the
filter smears a splice over that many output samples). The counters here feed the stats
message.
"""

from __future__ import annotations

import logging
import math
import threading
import time

from edge_asd.audio.ring import CaptureRing
from edge_asd.audio.sources import AudioSource
from edge_asd.audio.stream_buffer import StreamBuffer
from edge_asd.core.constants import SAMPLE_RATE
from edge_asd.core.resample import StreamingResampler

logger = logging.getLogger(__name__)


RING_S = 5.0
"""Seconds of native-rate audio between the device callback and this worker. The worker empties
it every ``poll_s`` (``POLL_S``, 100 ms), so 5 s is fifty polls of slack for a worker held up by a busy
machine; longer only costs memory: 20 s held 31 MiB more at 32 streams of 16 kHz, and 94 MiB at
48 kHz, for no sample saved (docs/performance.md)."""

POLL_S = 0.1
"""How often the worker looks for new audio when the ring had none. One device block's worth
(a file source's blocks are 0.1 s): at 50 ms half the wake-ups found nothing, and the capture
workers took 8.1 % (of 200 %) at 80 streams against 5.5 % at 100 ms
(``bench/listen_scale.py --poll-s``, docs/performance.md). Audio reaches the stream buffers at
most 100 ms after the device delivered it: an event can open up to 50 ms later than with
50 ms polls, against a 1 s hop; no score changes. A source that is not paced to real time (a
file replayed as fast as it is consumed, as ``enrol`` does) is polled every ``FAST_POLL_S``
instead: the worker can take at most a ring (``RING_S``) per poll, so the poll bounds such a
replay's speed (5 s per 10 ms: 500x real time)."""

FAST_POLL_S = 0.01
"""The poll of a source that is not paced to real time (``POLL_S``)."""


class Capture:
    """Glue of one source to its per-channel 16 kHz ``StreamBuffer``s.

    ``channels``: which source channels become streams (default: all), in that order.
    ``ring_s``: capture ring length at the native rate (``RING_S``). ``buffer_s``: history kept
    per stream.
    """

    def __init__(
        self,
        source: AudioSource,
        *,
        channels: list[int] | None = None,
        target_rate: int = SAMPLE_RATE,
        ring_s: float = RING_S,
        buffer_s: float = 12.0,
        poll_s: float = POLL_S,
    ) -> None:
        self.source = source
        self.channels = list(range(source.channels)) if channels is None else [int(c) for c in channels]
        for c in self.channels:
            if not 0 <= c < source.channels:
                raise ValueError(f"channel {c} out of range for {source.name} ({source.channels} channels)")
        self.target_rate = int(target_rate)
        self.ring = CaptureRing(max(1, int(math.ceil(ring_s * source.sample_rate))), source.channels)
        self.resampler = StreamingResampler(source.sample_rate, self.target_rate, len(self.channels))
        capacity = int(math.ceil(buffer_s * self.target_rate))
        self.streams = [StreamBuffer(capacity, self.target_rate) for _ in self.channels]
        self.poll_s = float(poll_s)
        self._cursor = 0
        self._skipped = 0  # ring samples never given to the resampler (overrun)
        self.lost_samples = 0
        self.overruns = 0
        self.gaps = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._worker: CaptureWorker | None = None  # the shared worker that moves this capture's audio
        self._started = False
        self.finished = threading.Event()
        """Set when the source finished and everything it delivered was processed."""
        self.error: BaseException | None = None
        self.hold_index: int | None = None
        """Backpressure for non-real-time sources: when set, the worker keeps every stream's
        samples from this index on (it waits instead of pushing them out of the buffer).
        ``record`` sets it to the start of the next clip so a fast file replay loses nothing."""

    # -- lifecycle -------------------------------------------------------------------------
    def start(self, *, worker: bool = True) -> None:
        """Start the source and, unless a ``CaptureWorker`` moves this capture's audio
        (``worker=False``), a worker thread of its own. The source's errors (e.g. no device)
        raise here."""
        if self._started:
            raise RuntimeError(f"capture {self.source.name} is already started")
        if worker and self._worker is not None:
            raise RuntimeError(f"capture {self.source.name} is moved by a CaptureWorker: start that")
        self.source.start(self.ring)
        self._started = True
        if worker:
            self._thread = threading.Thread(target=self._run, name=f"capture-{self.source.name}", daemon=True)
            self._thread.start()

    @property
    def started(self) -> bool:
        return self._started

    def stop(self, timeout: float = 2.0) -> None:
        self.source.stop(timeout)
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def __enter__(self) -> Capture:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- state -----------------------------------------------------------------------------
    @property
    def status(self) -> str:
        """``online`` | ``offline`` | ``finished`` (from the source)."""
        return self.source.status

    @property
    def last_block_monotonic(self) -> float | None:
        return self.ring.last_write_monotonic

    @property
    def stall_reference_monotonic(self) -> float | None:
        """Since when a silent input counts as stalled: the last block, or the source's latest
        (re)open if later (after a re-plug the last block dates from before the outage, and a
        reopened device may take a moment before its first block). None before anything."""
        times = [t for t in (self.ring.last_write_monotonic, self.source.opened_monotonic) if t is not None]
        return max(times) if times else None

    def stats(self) -> dict:
        last = self.ring.last_write_monotonic
        return {
            "status": self.status,
            "source": self.source.name,
            "sample_rate": self.source.sample_rate,
            "channels": len(self.channels),
            "samples": self.ring.written,
            "overflows": self.ring.overflows,
            "gaps": self.gaps,
            "overruns": self.overruns,
            "lost_samples": self.lost_samples,
            "restarts": self.source.restarts,
            "gapped_windows": sum(s.gapped_windows for s in self.streams),
            "last_block_age_s": None if last is None else round(time.monotonic() - last, 3),
        }

    # -- worker ----------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set() and not self.done:
            if not self.pump():
                self._stop.wait(self.idle_wait_s())

    @property
    def done(self) -> bool:
        """Nothing more to move: the source finished and all it delivered is in the streams
        (``finished``), or the work failed (``error``)."""
        return self.error is not None or self.finished.is_set()

    def pump(self) -> bool:
        """One turn of the worker: move what is new into the stream buffers; True if there
        was something (a fast source may have more already). Sets ``finished`` once a finite
        source is done and ``error`` if the work fails, after which it does nothing."""
        if self.done:
            return False
        try:
            if self.process_available():
                return True
            if self.source.finished and self._cursor >= self.ring.written:
                self._flush()
                self.finished.set()
        except Exception as err:
            logger.exception("capture worker of %s failed", self.source.name)
            self.error = err
            if self.source.finished and self._cursor >= self.ring.written:
                self.finished.set()
        return False

    @property
    def realtime(self) -> bool:
        """Whether the source is paced to real time (a device, a paced file replay)."""
        return bool(getattr(self.source, "realtime", True))

    def idle_wait_s(self) -> float:
        """How long the worker sleeps when the ring had nothing new: ``poll_s``, and at most
        ``FAST_POLL_S`` for a source not paced to real time (the poll bounds its speed)."""
        return self.poll_s if self.realtime else min(self.poll_s, FAST_POLL_S)

    def process_available(self, max_frames: int | None = None) -> bool:
        """Move everything new from the ring into the stream buffers; False if nothing was new.

        Called by the worker thread; public so a test can drive a capture without threads.
        """
        cursor = self._cursor
        if self.hold_index is not None:
            room_out = self.hold_index + self.streams[0].capacity - self.streams[0].end_index
            room_in = (room_out - 2) * self.resampler.down // self.resampler.up - self.resampler.taps
            if room_in <= 0:
                return False
            max_frames = room_in if max_frames is None else min(max_frames, room_in)
        rr = self.ring.read(cursor, max_frames)
        if rr.lost:
            self.overruns += 1
            self.lost_samples += rr.lost
            self._skipped += rr.lost
            logger.warning("capture %s: worker fell behind, %d samples lost", self.source.name, rr.lost)
            self._mark_input_gap(self.resampler.consumed, self.resampler.consumed)
        if rr.data.shape[0] == 0:
            self._cursor = rr.start
            return bool(rr.lost)
        gaps = [(s, e) for s, e in self.ring.gaps.intervals(since=rr.start) if rr.start <= s < rr.end]
        all_channels = self.channels == list(range(rr.data.shape[1]))
        y = self.resampler.process(rr.data if all_channels else rr.data[:, self.channels])
        # Gaps first: a reader must never see the samples of a gap before the gap itself.
        for s, e in gaps:
            self._mark_input_gap(s - self._skipped, e - self._skipped)
        for i, stream in enumerate(self.streams):
            stream.append(y[:, i])
        self._cursor = rr.end
        return True

    def _flush(self) -> None:
        """A finite source ended: let the resampler's held-back tail into the streams."""
        y = self.resampler.flush()
        for i, stream in enumerate(self.streams):
            stream.append(y[:, i])

    def _mark_input_gap(self, start: int, end: int) -> None:
        """Mark resampler-input span ``[start, end)`` (a splice if empty) in every stream."""
        self.gaps += 1
        span = self.resampler.half_span_out
        lo = int(math.floor(self.resampler.input_to_output(start))) - span
        hi = int(math.ceil(self.resampler.input_to_output(end))) + span
        for stream in self.streams:
            stream.mark_gap(max(0, lo), hi)


class CaptureWorker:
    """One thread that moves the audio of many captures (the daemon's inputs).

    Why one: with a thread per capture, each woke ``1 / poll_s`` times a second, and at 96
    inputs those 960 wake-ups a second cost the capture threads 6.3 % (of 200 %) on the 2-core
    development VM, about 66 us of CPU per wake-up for a block's few microseconds of copying:
    most of it went to waking up (kernel scheduling, the hand-over of the GIL). With one
    worker: 8.2-11.4 % -> 2.1-4.0 % at 96 streams, measured side by side in a slower hour
    (``bench/compare_revisions.sh``, docs/performance.md, "Issue 13, fifth pass"). One thread wakes
    ``1 / poll_s`` times a second and serves every input in turn; the work per block is the
    same. A capture whose work fails stops alone (its ``error``, a fault of its streams); the
    others go on. Every wait is the shortest ``idle_wait_s`` of the inputs, and the worker
    turns again at once while a source that is not paced to real time still delivers.
    """

    def __init__(self, captures: list[Capture], *, name: str = "capture-worker") -> None:
        self.captures = list(captures)
        self.name = name
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start every capture's source (the first that fails raises, the ones before it keep
        running: ``stop`` stops them), then the thread. A worker runs once, and only captures
        that nothing else moves: two threads on one ring would tear its audio apart."""
        if self._thread is not None or self._stop.is_set():
            raise RuntimeError("a CaptureWorker starts once: make a new one")
        for capture in self.captures:
            if capture._thread is not None or capture._worker not in (None, self):
                raise RuntimeError(f"capture {capture.source.name} is already moved by another thread")
        for capture in self.captures:
            capture._worker = self
            if not capture.started:
                capture.start(worker=False)
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        """Stop the sources and the thread; a source that fails to stop is logged, never
        keeps the others running."""
        for capture in self.captures:
            try:
                capture.stop(timeout)
            except Exception:
                logger.exception("stopping capture %s failed", capture.source.name)
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def run_once(self) -> bool:
        """One turn over the captures; True if a source not paced to real time delivered
        (turn again at once). Public so that a test can drive the worker without its thread."""
        again = False
        for capture in self.captures:
            if capture.pump() and not capture.realtime:
                again = True
        return again

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                live = [c for c in self.captures if not c.done]
                if not live:
                    return
                if not self.run_once():
                    self._stop.wait(min(c.idle_wait_s() for c in live))
        except BaseException as err:  # each capture's own failure is caught in pump(): this is the loop's
            logger.exception("the capture worker failed: no input is read any more")
            for capture in self.captures:  # every stream becomes a fault, none stays `online` unheard
                if not capture.done:
                    capture.error = err
