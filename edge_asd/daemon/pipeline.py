"""The listen loop: due windows of every stream -> one batch -> engine -> decisions -> comms.

One thread runs it. Each tick it asks every enabled stream for its due window (see
``Stream.due_window``), checks the microphone level of each (a silent, dead or clipping
microphone is a stream fault, never a machine anomaly), puts the scorable windows through
the engine in one batch, turns the outputs into one score per stream (``engines.scorer``),
feeds the per-stream decision state machines and publishes what changed. Nothing here blocks
on the network: the communicator queues (and, for events, spools to disk).

A stream is never unmonitored while it says ``online``: a missing, failed or stalled input
is ``fault`` (``offline`` for a file that ended) with the reason in ``status/message``, a
window spanning an audio gap is counted and makes the stream ``fault`` until windows are
whole again, and an open event ends (with ``end_reason``) as soon as its stream stops being
scored. The loop itself is what the systemd watchdog watches: every pass pings, whatever the
streams' state, so unplugged or silent microphones never get the service killed.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable

import numpy as np

from edge_asd import __version__
from edge_asd.comms.base import Communicator
from edge_asd.core.constants import DISABLED, FAULT, OFFLINE, ONLINE, SAMPLE_RATE, WINDOW_SAMPLES
from edge_asd.core.errors import UserError
from edge_asd.daemon.refits import Refits
from edge_asd.daemon.site import EVENT_ID, FeedbackResult, WindowRow, features_many
from edge_asd.daemon.streams import EnabledStates, Stream
from edge_asd.evidence import EvidenceStore
from edge_asd.levels import LevelReport
from edge_asd.sdnotify import SystemdIntegration, format_status
from engines.runtime.base import Inference, PendingInference, Runtime
from engines.scorer import RowScore, Scorer

logger = logging.getLogger(__name__)

Features = tuple[np.ndarray, np.ndarray]
"""A window's condition indicators and spectral profile (``SiteMonitor.features``)."""

REFIT_STOP_WAIT_S = 8.0
"""How long a stop waits for the enrolment refit still running: well inside the unit's
``TimeoutStopSec=20`` with the outbox flush (5 s) after it; a fit cut short loses only its
result (its save is atomic)."""

FAULT_TEXT = {
    "silent": "microphone silent (muted or unplugged?)",
    "dead": "microphone dead (digital zero, constant or NaN samples)",
    "clipping": "microphone clipping (reduce the input gain)",
}


GAP_TEXT = "audio gap (input overflow or restart): windows over it are not scored"

STALL_S = 10.0
"""A real-time input that delivered nothing for this long (and at least three hops) is a
stream fault: a source that hangs without an error must not leave a stream ``online``."""

STATUS_LINE_EVERY_S = 5.0
"""How often the ``systemctl status`` line is refreshed (also while nothing is scored)."""

DELIVERY_ZERO = {"outbox_depth": 0, "oldest_undelivered_s": None, "memory_queue": 0, "refused": 0, "dead_letter": 0}
"""``stats()["delivery"]`` of a communicator that keeps no delivery figures."""

# ``end_reason`` of an event the daemon ends because its stream stopped being scored.
END_DISABLED = "stream disabled"
END_OFFLINE = "stream offline"
END_FAULT = "stream fault"
END_STOPPING = "daemon stopping"
END_OF_INPUT = "end of input"


def fault_message(report: LevelReport) -> str:
    """What an operator reads on ``<stream>/status/message`` for a level fault."""
    text = FAULT_TEXT.get(report.state, f"microphone level {report.state}")
    if np.isfinite(report.rms_dbfs):
        text += f": RMS {report.rms_dbfs:.0f} dBFS, peak {report.peak_dbfs:.1f} dBFS"
    return text


def _explained(event: dict) -> str:
    """``: <explanation summary>`` for the log line of a new event, or nothing."""
    summary = (event.get("explanation") or {}).get("summary")
    return f": {summary}" if summary else ""


class Pipeline:
    """Schedules, scores and decides for a set of streams; ``run`` until stopped or finished."""

    def __init__(
        self,
        streams: list[Stream],
        runtime: Runtime,
        scorer: Scorer,
        comms: Communicator,
        evidence: EvidenceStore | None,
        *,
        hop_s: float,
        stats_interval_s: float,
        systemd: SystemdIntegration | None = None,
        realtime: bool = True,
        clock: Callable[[], float] = time.time,
        enabled_store: EnabledStates | None = None,
        stall_s: float | None = None,
    ) -> None:
        self.streams = streams
        self.by_name = {s.name: s for s in streams}
        self.runtime = runtime
        self.scorer = scorer
        self.comms = comms
        self.evidence = evidence
        self.hop_s = float(hop_s)
        self.stats_interval_s = float(stats_interval_s)
        self.systemd = systemd
        self.realtime = realtime
        self.clock = clock
        self.stop_event = threading.Event()
        self.exit_code = 0
        """What ``listen`` exits with once ``run`` returns: 1 when every input failed."""
        self.started_wall = clock()
        self.started_mono = time.monotonic()
        self.ready_sent = False
        self.first_scored = False
        self.enabled_store = enabled_store
        self.stall_s = float(stall_s) if stall_s is not None else max(STALL_S, 3.0 * self.hop_s)
        self._last_tick_mono: float | None = None
        self._loop_started_mono: float | None = None
        self._last_status_line = 0.0
        self.batches = 0
        self._infer_ms: deque[float] = deque(maxlen=256)
        self._tick_ms: deque[float] = deque(maxlen=256)
        self.busy_s = 0.0  # time spent in ticks that scored windows
        self.engine_s = 0.0  # of which copying the due windows, handing them to the model (front end included) or waiting for it
        # The same split in this thread's CPU time (time.thread_time): waiting costs none, so the
        # difference is the CPU the daemon's own work takes, whatever the other threads do.
        # All three grow once per tick, at its end, so a stats() read from another thread (the
        # metrics scrape) never sees own_cpu_s go down.
        self.busy_cpu_s = 0.0
        self.model_cpu_s = 0.0  # the due windows' copy, the front end and the hand-over (the whole run without parallel runs)
        self.window_cpu_s = 0.0  # of which the due windows' copy out of the stream buffers
        self.own_cpu_s = 0.0
        self._tick_model_cpu_s = 0.0
        self._last_stats = time.monotonic()
        self._captures = {id(s.capture): s.capture for s in streams}
        self.comms.on_enabled = self._on_enabled
        self.comms.on_stream_command = self._on_stream_command
        self._commands: queue.SimpleQueue[tuple[str, str, dict]] = queue.SimpleQueue()
        self._site_published: dict[str, dict] = {}
        # Enrolment refits (feedback "normal", the end of a live re-enrolment) take seconds: off
        # this thread while monitoring live, inline on a replay so that it is repeatable.
        self.refits = Refits(inline=not realtime)
        for stream in streams:
            if stream.site is not None:
                stream.site.refits = self.refits
        # Hold a fast file source from the start, not from the first tick: a file read ahead
        # of the first tick would overrun the ring and lose its first windows.
        self._apply_backpressure()

    # -- control ---------------------------------------------------------------------------
    def stop(self) -> None:
        self.stop_event.set()

    def _on_enabled(self, stream: str, on: bool) -> None:
        """MQTT ``<stream>/enabled/set`` (called from the network thread: only flip a flag, and
        keep the operator's choice for the next start); unknown streams are ignored."""
        target = self.by_name.get(stream)
        if target is None:
            logger.warning("ignored enabled/set for unknown stream %r", stream)
            return
        target.enabled = bool(on)
        if self.enabled_store is not None:
            self.enabled_store.save(stream, bool(on), list(self.by_name))

    def _on_stream_command(self, stream: str, name: str, payload: dict) -> None:
        """MQTT ``<stream>/feedback/set`` or ``enrol/set`` (network thread): queued for the loop."""
        self._commands.put((stream, name, dict(payload)))

    def run_commands(self) -> None:
        """Carry out the queued operator commands, in the pipeline thread (between ticks), and
        announce the refits that finished since the last tick."""
        self.refits.announce()
        while True:
            try:
                stream_name, name, payload = self._commands.get_nowait()
            except queue.Empty:
                return
            stream = self.by_name.get(stream_name)
            if stream is None or stream.site is None:
                why = f"{name} ignored: no stream {stream_name} here, or site learning is off (site.enabled)"
                logger.warning("%s", why)
                if stream is not None and name == "feedback":
                    self.comms.publish_feedback_result(stream_name, FeedbackResult(
                        str(payload.get("event")), str(payload.get("label")), False, why).to_dict())
                continue
            try:
                if name == "feedback":
                    self._feedback(stream, payload)
                elif name == "enrol":
                    self._enrol(stream, payload)
            except Exception as err:  # an operator's message must never stop monitoring
                logger.exception("%s command for %s failed", name, stream_name)
                if name == "feedback":
                    self.comms.publish_feedback_result(stream_name, FeedbackResult(
                        str(payload.get("event")), str(payload.get("label")), False, f"failed: {err}").to_dict())

    def _feedback(self, stream: Stream, payload: dict) -> None:
        assert stream.site is not None
        event, label, by = payload.get("event"), payload.get("label"), str(payload.get("by") or "mqtt")
        if not isinstance(event, str) or not EVENT_ID.fullmatch(event) or label not in ("normal", "anomaly"):
            logger.warning("ignored feedback for %s: need {\"event\": ID, \"label\": \"normal\"|\"anomaly\"}, got %.200r",
                           stream.name, payload)  # fmt: skip
            self.comms.publish_feedback_result(stream.name, FeedbackResult(
                str(event), str(label), False, "feedback needs an event id and a label normal or anomaly").to_dict())
            return
        evidence = self.evidence.wav_path(stream.name, event) if self.evidence is not None else None
        site = stream.site

        def refit() -> Callable[[], None]:  # on the refit worker
            try:
                result = site.feedback(event, label, None if evidence is None else str(evidence), by)
            except Exception as err:  # the operator gets an answer whatever happened
                logger.exception("feedback %s on event %s of %s failed", label, event, stream.name)
                result = FeedbackResult(event, label, False, f"failed: {err}")
            return lambda: self._feedback_done(stream, label, by, result)

        if not self.refits.submit(refit, f"feedback {label} on event {event} of {stream.name}"):
            self.comms.publish_feedback_result(stream.name, FeedbackResult(
                event, label, False, "too many feedback commands waiting: try again in a minute").to_dict())

    def _feedback_done(self, stream: Stream, label: str, by: str, result: FeedbackResult) -> None:
        """Announce a feedback refit's result (pipeline thread)."""
        event = result.event
        if not result.ok:
            logger.warning("feedback %s on event %s of %s by %s: nothing changed (%s)",
                           label, event, stream.name, by, result.message)  # fmt: skip
        self.comms.publish_feedback_result(stream.name, result.to_dict())
        if result.ok and label == "normal" and result.threshold is not None:
            stream.last_threshold = result.threshold
        self._publish_site_state(stream, force=result.ok)

    def _enrol(self, stream: Stream, payload: dict) -> None:
        assert stream.site is not None
        try:
            message = stream.site.start_live_enrolment(float(payload.get("minutes", 10.0)))
        except (UserError, TypeError, ValueError) as err:
            logger.warning("ignored enrol command for %s: %s", stream.name, err)
            self.comms.publish_enrolment(stream.name, {"state": "failed", "message": str(err), "progress": 0.0})
            return
        logger.info("stream %s: %s", stream.name, message)
        self._publish_site_state(stream, force=True)

    def _publish_site_state(self, stream: Stream, force: bool = False) -> None:
        """Publish a stream's enrolment state when it changed (progress in steps of 5 %)."""
        if stream.site is None:
            return
        state = stream.site.attributes()
        key = {**state, "progress": round(float(state.get("progress", 0.0)) * 20) / 20}
        if not force and self._site_published.get(stream.name) == key:
            return
        self._site_published[stream.name] = key
        self.comms.publish_enrolment(stream.name, {"state": state["state"], "message": state.get("message", ""),
                                                   "progress": state.get("progress", 1.0 if state["state"] == "ok" else 0.0)})  # fmt: skip
        self.comms.publish_attributes(stream.name, stream.site.threshold, {"enrolment": state})

    @property
    def finished(self) -> bool:
        """True when every source is finite and done and no window is left to score."""
        for capture in self._captures.values():
            if not capture.finished.is_set():
                return False
        return all(s.buffer.end_index < s.next_end for s in self.streams)

    # -- loop ------------------------------------------------------------------------------
    @property
    def poll_s(self) -> float:
        """The wait after a tick that scored nothing: a quarter hop, at most 100 ms, with live
        sources (a window waits at most that long once due); 5 ms for a replay as fast as it goes."""
        return min(0.1, self.hop_s / 4) if self.realtime else 0.005

    @property
    def inputs_failed(self) -> bool:
        """An input's capture failed (``Capture.error``; a device source's own retries do not
        count) and no input can deliver anything more (each failed, or finished with its
        windows scored): nothing will be heard again until the daemon starts over."""
        captures = list(self._captures.values())
        if not captures or not any(c.error is not None for c in captures) or not all(c.done for c in captures):
            return False
        return all(s.buffer.end_index < s.next_end for s in self.streams if s.capture.error is None)

    def run(self) -> None:
        """Tick until ``stop()`` or until finite sources are exhausted; then end open events.

        When every input's capture has failed the loop ends with ``exit_code`` 1: the streams
        have been ``fault`` since, and a restart (systemd's ``Restart=on-failure``) is the only
        way to hear them again, where a loop that kept turning would keep the watchdog happy."""
        poll = self.poll_s
        reason = END_STOPPING
        try:
            while not self.stop_event.is_set():
                scored = self.tick()
                if self.finished:
                    logger.info("all sources finished")
                    reason = END_OF_INPUT
                    break
                if self.inputs_failed and not self.stop_event.is_set():
                    self._update_capture_status(time.monotonic(), 0.0)  # each stream says why, once more
                    logger.error("every audio input failed (see above): stopping so that the service restarts")
                    reason, self.exit_code = END_FAULT, 1
                    break
                if scored == 0:
                    self.stop_event.wait(poll)
        finally:
            self.close_events(reason)
            # A refit in progress writes its enrolment atomically; let it finish and say so.
            self.refits.close(timeout_s=REFIT_STOP_WAIT_S)
            self.refits.announce()

    def tick(self) -> int:
        """One pass over the streams; returns the number of windows scored.

        Every pass is proof of life for the systemd watchdog and the first one sends READY:
        the loop turning is what matters, not whether any stream had a window to score."""
        t0, c0 = time.monotonic(), time.thread_time()
        self._tick_model_cpu_s = 0.0
        if self._loop_started_mono is None:
            self._loop_started_mono = t0
        dt = 0.0 if self._last_tick_mono is None else t0 - self._last_tick_mono
        self._last_tick_mono = t0
        self.run_commands()
        self._update_capture_status(t0, dt)
        batch: list[tuple[Stream, np.ndarray, int]] = []
        # The due windows first, as the model's work: each is one copy out of the stream's
        # buffer, made for the model (its 10 s on the frame grid); the hop's window is a view
        # of it, of which the level check and the indicators read only the newest second when
        # the hop is whole seconds. Kept apart too (``window_cpu_s``), so that the overhead can
        # also be given with this copy as the daemon's own work, as before issue 13's sixth
        # pass (bench/listen_scale.py). A tick whose windows are all gapped or faulted counts
        # none of it; one that scores some counts the copies of all its due windows.
        t_due, c_due = time.monotonic(), time.thread_time()
        dues = [stream.due_window() if stream.enabled else None for stream in self.streams]
        window_cpu = time.thread_time() - c_due
        self._tick_model_cpu_s += window_cpu
        due_s = time.monotonic() - t_due
        for stream, due in zip(self.streams, dues):
            if not stream.enabled:
                self._set_status(stream, DISABLED, "disabled by command")
                self._end_event(stream, END_DISABLED)
                stream.idle()
                continue
            if due is None:
                continue
            audio, end_index, has_gap = due
            stream.last_window_end_s = end_index / SAMPLE_RATE
            if has_gap:  # not heard whole: unmonitored for now, and said so
                stream.counters.gapped += 1
                self._set_status(stream, FAULT, GAP_TEXT)
                self._decide(stream, end_index, None, audio, fault=True, end_reason=END_FAULT)
                continue
            report = stream.levels.check(stream.name, audio, end_index)
            stream.level = report.to_dict()
            if not report.scorable:
                stream.counters.faults += 1
                self._set_status(stream, FAULT, fault_message(report))
                self._decide(stream, end_index, None, audio, fault=True, end_reason=END_FAULT)
                continue
            batch.append((stream, audio, end_index))  # `online` once it is scored (a broken engine is a fault)
        self._apply_backpressure()
        if batch:
            self._score(batch)  # takes each scored window's model window (Stream.model_window)
        for stream, due in zip(self.streams, dues):
            if due is not None:  # scored, or not (a gap, a level fault, switched off): its copy goes
                stream.drop_model_window()
        self._notify_systemd()
        elapsed = time.monotonic() - t0
        self._tick_ms.append(elapsed * 1000.0)
        if batch:
            self.busy_s += elapsed
            self.engine_s += due_s
            self.window_cpu_s += window_cpu
            busy_cpu = time.thread_time() - c0
            self.busy_cpu_s += busy_cpu
            self.model_cpu_s += self._tick_model_cpu_s
            self.own_cpu_s += max(busy_cpu - self._tick_model_cpu_s, 0.0)
        if time.monotonic() - self._last_stats >= self.stats_interval_s:
            self.publish_stats()
        return len(batch)

    def _notify_systemd(self) -> None:
        """READY after the first pass, a watchdog ping after every pass, the status line now and then."""
        now = time.monotonic()
        if not self.ready_sent:
            self.ready_sent = True
            self._last_status_line = now
            if self.systemd is not None:
                self.systemd.ready(self.status_line())
            logger.info("monitoring loop running: ready (%d stream(s))", len(self.streams))
        elif self.systemd is not None and now - self._last_status_line >= STATUS_LINE_EVERY_S:
            self._last_status_line = now
            self.systemd.status(self.status_line())
        if self.systemd is not None:
            self.systemd.progress()

    def _submit(self, batch: list[tuple[Stream, np.ndarray, int]]) -> list[tuple[int, PendingInference]]:
        """Hand ``batch`` to the engine chunk by chunk (``max_batch`` windows): each chunk's
        log-mel is computed (each stream only the frames it lacks) just before it is handed
        over, so with parallel runs the engine works while the next chunk is prepared. The
        model scores each window moved onto the log-mel frame grid (``Stream.model_window``)."""
        step = self.runtime.max_batch
        with_logmel = getattr(self.runtime, "accepts_logmel", False)
        pending = []
        for lo in range(0, len(batch), step):
            part = [(s, *s.model_window(a, end)) for s, a, end in batch[lo : lo + step]]
            audio = np.stack([a for _, a, _ in part]).astype(np.float32, copy=False)
            logmel = None
            if with_logmel:
                logmel = np.stack([s.logmel.window(a, start, s.hop_samples) for s, a, start in part])
            pending.append((lo, self.runtime.submit(audio, logmel)))
        return pending

    def _score(self, batch: list[tuple[Stream, np.ndarray, int]]) -> None:
        """Score ``batch``: all chunks go to the engine first; the indicator features are computed
        and each chunk's windows are scored as its result comes back, while the engine (with
        parallel runs) works on the chunks after it. On a small CPU the daemon's own work so
        hides behind the engine's instead of adding to it."""
        t0, c0 = time.monotonic(), time.thread_time()
        pending = self._submit(batch)
        self._tick_model_cpu_s += time.thread_time() - c0
        # What this thread spends on the model: the front end and handing chunks over (the whole
        # run where the runtime has no parallel runs), then waiting for results. The rest of the
        # tick, the daemon's own work, is the overhead in stats(), whether or not the engine
        # was running meanwhile.
        model_s = time.monotonic() - t0
        features: list[Features | None] = [None] * len(batch)
        sited = [(k, s.site, a, end) for k, (s, a, end) in enumerate(batch) if s.site is not None]
        for (k, *_), pair in zip(sited, features_many([(site, a, end) for _, site, a, end in sited])):
            features[k] = pair  # the tick's windows together (per-call overhead shared)
        engine_done = t0
        for lo, chunk in pending:
            waited = time.monotonic()
            out = chunk.result()
            engine_done = time.monotonic()
            model_s += engine_done - waited
            self._score_part(batch[lo : lo + len(out)], out, features[lo : lo + len(out)])
        self._infer_ms.append((engine_done - t0) * 1000.0)  # from the first hand-over to the last result
        self.engine_s += model_s
        self.batches += 1
        if not self.first_scored:
            self.first_scored = True
            logger.info("first windows scored")

    def _score_part(
        self, batch: list[tuple[Stream, np.ndarray, int]], out: Inference, features: list[Features | None]
    ) -> None:
        """Score, decide and publish the windows of one chunk from its engine outputs."""
        # The bundle's score only for the streams that use it (not enrolled): an enrolled stream's
        # knn against the bundle's references would be computed for nothing on every hop.
        fallback = [i for i, (s, _, _) in enumerate(batch) if s.class_indices and not (s.site and s.site.enrolled)]
        bundle_rows = dict(zip(fallback, self._bundle_rows(out, batch, fallback)))
        finite = np.isfinite(out.scores).all(axis=1) & np.isfinite(out.embedding).all(axis=1)
        for i, (stream, window, end_index) in enumerate(batch):
            if not finite[i]:  # a broken engine must not look like a quiet machine
                stream.counters.faults += 1
                self._set_status(stream, FAULT, "the model gave non-finite output (NaN or Inf): check the engine")
                self._decide(stream, end_index, None, window, fault=True, end_reason=END_FAULT)
                continue
            if stream.capture.status == ONLINE and stream.capture.error is None:
                self._set_status(stream, ONLINE, "")
            score, threshold, detail = self._window_score(stream, window, end_index, out, i, bundle_rows, features[i])
            stream.counters.windows += 1
            stream.last_scored_mono = time.monotonic()
            stream.last_score = score
            stream.last_threshold = threshold
            self.comms.publish_score(stream.name, score, threshold)
            self._decide(stream, end_index, score, window, threshold=threshold, detail=detail)
            self._publish_site_state(stream)

    def _bundle_rows(
        self, out: Inference, batch: list[tuple[Stream, np.ndarray, int]], which: list[int],
        rows: list[int] | None = None,
    ) -> list[RowScore]:
        """The bundle's score of ``batch[which]`` (``rows``: their rows of ``out``, default ``which``)."""
        if not which:
            return []
        return self.scorer.score_rows(out.select(rows or which), [batch[j][0].class_indices for j in which])

    def _window_score(
        self, stream: Stream, window: np.ndarray, end_index: int, out: Inference, i: int,
        bundle_rows: dict[int, RowScore],
        features: Features | None = None,
    ) -> tuple[float, float, dict | None]:
        """(score, threshold, detail) of one window: the fused site score of an enrolled
        stream, else the bundle's score. ``detail`` is only built for a window over its
        threshold (it may open or raise an event). ``features``: the window's indicators and
        profile when already computed (``_score``)."""
        site = stream.site
        if site is not None:
            indicators, profile = features if features is not None else site.features(window, end_index)
            ce = float(out.scores[i, stream.class_indices].min()) if stream.class_indices else None
            row = WindowRow(end_index, indicators, profile, np.asarray(out.embedding[i], np.float32), ce)
            try:
                fused = site.score(row)
            except ValueError as err:  # an enrolment that does not fit this stream any more
                site.disable(f"stream {stream.name}: its enrolment cannot score this stream ({err}): re-enrol it")
                fused = None
            if fused is not None:
                # The enrolment's threshold: `streams[].threshold` is for the bundle's score.
                detail = site.detail(fused, row) if fused.fused > fused.threshold else None
                return fused.fused, fused.threshold, detail
        bundle_row = bundle_rows.get(i)
        if bundle_row is None and stream.class_indices:  # its enrolment was just disabled
            bundle_row = self._bundle_rows(out, [(stream, window, end_index)], [0], rows=[i])[0]
        if bundle_row is None:  # not enrolled and no classes: build_daemon refuses such a stream
            raise RuntimeError(f"stream {stream.name} has neither an enrolment nor bundle classes")
        threshold = stream.threshold_override if stream.threshold_override is not None else bundle_row.threshold
        return bundle_row.score, threshold, {"score_kind": "bundle"}

    def _decide(
        self,
        stream: Stream,
        end_index: int,
        score: float | None,
        window: np.ndarray,
        *,
        threshold: float | None = None,
        fault: bool = False,
        detail: dict | None = None,
        end_reason: str | None = None,
    ) -> None:
        """Feed one window to the stream's decisions; ``end_reason`` goes into an ``end`` it causes
        (a fault window that ends an event: the event ended because the stream went deaf)."""
        threshold = stream.last_threshold if threshold is None else threshold
        if threshold is None:
            threshold = float("inf")
        transitions = stream.decisions.update(
            end_index / SAMPLE_RATE, self.clock(), score, threshold, fault=fault, detail=detail
        )
        self._publish_transitions(stream, transitions, window, end_reason=end_reason)

    def _publish_transitions(
        self, stream: Stream, transitions: list, window: np.ndarray | None, end_reason: str | None = None
    ) -> None:
        """Evidence first, then the event into the durable outbox, and only then the retained
        ``anomaly`` state: a crash between the two leaves an event that the next start closes,
        never an ``ON`` without its event. An ``end`` the daemon forced carries ``end_reason``."""
        for kind, before, after in transitions:
            if kind == "end" and end_reason is not None:
                after = {**after, "end_reason": end_reason}
            if kind == "new":
                stream.counters.events += 1
                if self.evidence is not None and window is not None:
                    normal = stream.site.normal_bands() if stream.site is not None else None
                    try:
                        files = self.evidence.save(stream.name, after["id"], window, normal_bands=normal)
                        stream.decisions.set_evidence(str(files.wav))
                        after = {**after, "evidence": str(files.wav)}
                        if files.png is not None:
                            after["evidence_png"] = str(files.png)
                    except OSError as err:  # a full disk must not cost the alert
                        logger.error("could not save evidence for event %s: %s", after["id"], err)
                if stream.site is not None:
                    stream.site.event_opened(after["id"], int(round(after["start_time"] * SAMPLE_RATE)))
                self.comms.publish_event(kind, before, after)
                self.comms.publish_anomaly(stream.name, True)
                logger.warning(
                    "anomaly on %s: event %s at %.1f s (score %.3f, threshold %.3f)%s",
                    stream.name, after["id"], after["start_time"], after["peak_score"], after["threshold"],
                    _explained(after),
                )  # fmt: skip
                continue
            self.comms.publish_event(kind, before, after)
            if kind == "end":
                if stream.site is not None:
                    stream.site.event_ended(after["id"])
                self.comms.publish_anomaly(stream.name, False)
                logger.warning("anomaly on %s ended: event %s at %.1f s", stream.name, after["id"], after["end_time"])

    def close_events(self, reason: str = END_STOPPING) -> None:
        """End every open event (shutdown or end of input) so subscribers see its end."""
        for stream in self.streams:
            self._end_event(stream, reason)

    def _end_event(self, stream: Stream, reason: str) -> None:
        """End the stream's open event now (it is not scored any more), with ``reason``."""
        if stream.decisions.active:
            end_s = stream.last_window_end_s or 0.0
            logger.warning("stream %s: ending its open event (%s)", stream.name, reason)
            self._publish_transitions(stream, stream.decisions.close(end_s, self.clock()), None, end_reason=reason)

    # -- status and stats ------------------------------------------------------------------
    def _set_status(self, stream: Stream, status: str, message: str) -> None:
        if stream.published_status != (status, message):
            stream.published_status = (status, message)
            self.comms.publish_status(stream.name, status, message)
            if status in (FAULT, OFFLINE):
                logger.warning("stream %s is %s: %s", stream.name, status, message)

    def _update_capture_status(self, now: float, dt: float) -> None:
        """Streams whose input gives no audio: ``fault`` (or ``offline``) with the reason, their
        open event ended, the time counted. They come back by themselves: a device source
        retries in the background and the next whole window sets ``online`` again."""
        for stream in self.streams:
            if not stream.enabled:
                continue
            problem = self._input_problem(stream, now)
            if problem is None:
                continue
            status, message = problem
            stream.counters.unavailable_s += dt
            self._set_status(stream, status, message)
            self._end_event(stream, END_OFFLINE if status == OFFLINE else END_FAULT)

    def _input_problem(self, stream: Stream, now: float) -> tuple[str, str] | None:
        """``(status, message)`` when the stream's input delivers nothing, else None."""
        capture = stream.capture
        source = capture.source
        if capture.error is not None:
            return FAULT, f"capture of audio input {source.name} failed: {capture.error}"
        if capture.status == OFFLINE:
            error = getattr(source, "last_error", None) or getattr(source, "error", None)
            text = f"audio input {source.name} unavailable" + (f": {error}" if error else "")
            if getattr(source, "wait_for_device", False):
                text += "; retrying"
            return FAULT, text
        if capture.finished.is_set() and stream.buffer.end_index < stream.next_end:
            if all(c.finished.is_set() for c in self._captures.values()):
                return None  # the whole run ends now; no need to say so per stream
            return OFFLINE, f"audio input {source.name} ended"
        if self.realtime and capture.status == ONLINE:
            last = capture.stall_reference_monotonic  # last block, or a (re)open since
            reference = last if last is not None else self._loop_started_mono
            if reference is not None and now - reference > self.stall_s:
                return FAULT, f"no audio from input {source.name} for {self.stall_s:.0f} s (stalled)"
        return None

    def _apply_backpressure(self) -> None:
        """For sources that are not real time, hold the oldest sample a stream still needs."""
        if self.realtime:
            return
        for capture in self._captures.values():
            holds = [s.hold_index() for s in self.streams if s.capture is capture]
            capture.hold_index = min(holds) if holds else None

    def status_line(self) -> str:
        return format_status(
            {s.name: s.last_score for s in self.streams},
            thresholds={s.name: s.last_threshold for s in self.streams if s.last_threshold is not None},
            anomalous={s.name: s.decisions.active for s in self.streams},
            faults={s.name: s.published_status[1] for s in self.streams
                    if s.published_status and s.published_status[0] in (FAULT, OFFLINE)},  # fmt: skip
        )

    def stats(self) -> dict:
        infer = list(self._infer_ms)
        ticks = list(self._tick_ms)
        now = time.monotonic()
        streams = {}
        for s in self.streams:
            cap = s.capture.stats()
            scored_at = s.last_scored_mono if s.last_scored_mono is not None else self._loop_started_mono
            streams[s.name] = {
                "status": s.published_status[0] if s.published_status else cap["status"],
                "message": s.published_status[1] if s.published_status else "",
                "enabled": s.enabled,
                "windows": s.counters.windows,
                "skipped": s.counters.skipped,
                "gapped": s.counters.gapped,
                "faults": s.counters.faults,
                "events": s.counters.events,
                "anomaly": s.decisions.active,
                "score": s.last_score,
                "threshold": s.last_threshold,
                "overflows": cap["overflows"],
                "gaps": cap["gaps"],
                "restarts": cap["restarts"],
                "last_window_s": s.last_window_end_s,
                # how long the stream has gone unscored (disabled, input missing, faults, gaps)
                "unscored_s": None if scored_at is None else round(now - scored_at, 1),
                "unavailable_s": round(s.counters.unavailable_s, 1),
                "queue_s": round(max(0, s.buffer.end_index - s.next_end + s.hop_samples) / SAMPLE_RATE, 3),
                "dbfs": s.level.get("rms_dbfs"),
                "peak_dbfs": s.level.get("peak_dbfs"),
            }
        return {
            "service": {
                "version": __version__,
                "uptime_s": round(time.monotonic() - self.started_mono, 1),
                "last_updated": self.clock(),
            },
            "detector": {
                "backend": self.runtime.name,
                "engine": self.runtime.describe(),
                "batches": self.batches,
                "inference_ms": round(float(np.mean(infer)), 2) if infer else None,
                "inference_ms_max": round(float(np.max(infer)), 2) if infer else None,
                "tick_ms": round(float(np.mean(ticks)), 2) if ticks else None,
                # share of the scoring ticks spent outside the model (levels, indicators, scores,
                # decisions, comms; the model: copying the windows out, the front end, the engine)
                "overhead_percent": round(100.0 * (1.0 - self.engine_s / self.busy_s), 1) if self.busy_s else None,
                # CPU seconds this thread spent on that work (not the model), for a share of the CPU
                "own_cpu_s": round(self.own_cpu_s, 3),
                # CPU seconds of the model's part spent copying the windows out of the stream buffers
                "window_cpu_s": round(self.window_cpu_s, 3),
            },
            "window_s": WINDOW_SAMPLES / SAMPLE_RATE,
            "hop_s": self.hop_s,
            "streams": streams,
            "delivery": self._delivery_stats(),
        }

    def _delivery_stats(self) -> dict:
        """The communicator's event delivery figures (outbox depth, oldest undelivered, ...)."""
        get = getattr(self.comms, "delivery_stats", None)
        if get is None:
            return dict(DELIVERY_ZERO)
        try:
            return {**DELIVERY_ZERO, **dict(get())}
        except Exception:  # stats must never stop monitoring
            logger.debug("delivery_stats failed", exc_info=True)
            return dict(DELIVERY_ZERO)

    def publish_stats(self) -> None:
        self._last_stats = time.monotonic()
        self.comms.publish_stats(self.stats())
