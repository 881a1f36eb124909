"""From per-window anomaly scores to anomaly *events*, one state machine per stream.

A single window over the threshold is not an alarm: the threshold is set for a false-alarm
rate per window (say 0.1 %), and with a 1 s hop that is one false window every ~17 minutes
per microphone. So an event opens only after ``patience`` consecutive windows above the
threshold (openWakeWord's patience), closes only after ``max_quiet`` windows below
``off_ratio * threshold`` (hysteresis, so a score hovering at the threshold does not flap),
and a ``cooldown_s`` after an end suppresses a new event (wyoming's refractory period). The
first ``warmup_windows`` windows after start are ignored: the first windows after a restart
often hold the device's start-up transient. The tunables and their defaults are the config's
``DecisionConfig`` (``streams[].decision``); this module has none of its own.

Times: ``start_time``/``end_time`` are audio time (seconds of stream audio since the stream
started; immune to NTP jumps and to the pipeline being late), ``start_wall``/``end_wall``
are epoch seconds for humans. Transitions come out Frigate style as
``("new" | "update" | "end", before | None, after)`` with event dicts.
"""

from __future__ import annotations

import logging
import random
import string
from dataclasses import asdict, dataclass, field, replace

from edge_asd.config import DecisionConfig
from edge_asd.core.constants import WINDOW_SECONDS

logger = logging.getLogger(__name__)

Transition = tuple[str, "dict | None", dict]


@dataclass
class AnomalyEvent:
    """One anomaly event; ``to_dict()`` is the payload's ``before``/``after`` object."""

    id: str
    stream: str
    classes: list[str]
    start_time: float
    end_time: float | None
    start_wall: float
    end_wall: float | None
    peak_score: float
    mean_score: float
    threshold: float
    windows: int
    model: dict
    window_s: float
    hop_s: float
    active: bool = True
    evidence: str | None = None
    score_kind: str = "bundle"
    """``fused`` (the stream's site score) or ``bundle`` (the bundle's score, before enrolment)."""
    components: dict | None = None
    """Every score component of the peak window (raw and surprise), for a fused score."""
    explanation: dict | None = None
    """Which condition indicators of the peak window moved, in words and numbers."""
    score_sum: float = field(default=0.0, repr=False)

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("score_sum")
        d["classes"] = list(self.classes)
        d["model"] = dict(self.model)
        return d


def _detail_fields(detail: dict) -> dict:
    """The event fields a window's detail sets (unknown keys are not event fields)."""
    return {k: detail[k] for k in ("score_kind", "components", "explanation") if k in detail}


def _event_id(start_wall: float, rng: random.Random) -> str:
    suffix = "".join(rng.choice(string.ascii_lowercase + string.digits) for _ in range(6))
    return f"{start_wall:.6f}-{suffix}"


class DecisionEngine:
    """The state machine of one stream.

    Feed it every scored window with ``update(audio_end_time_s, wall_time, score,
    threshold)``; windows that could not be scored because the stream is faulted (dead,
    silent or clipping microphone, see ``edge_asd.levels``) go in with ``fault=True`` and
    ``score=None``. A fault never opens an event and resets a pending patience run; an
    active event counts fault windows as quiet, so a microphone that dies mid-event ends the
    event after ``max_quiet`` windows instead of holding the alarm on forever.

    ``start_time`` is the audio time at the end of the first window of the opening run
    (when the anomaly was first heard), ``end_time`` the end of the last window at or above
    ``off_ratio * threshold`` (when it was last heard); the cooldown runs from the window
    that closed the event. An event opens with ``windows = patience``; every later scored
    window while it is open (quiet ones included) adds to ``windows`` and ``mean_score``.

    ``config`` is the stream's validated ``streams[].decision`` (the config's defaults when
    None); ``hop_s`` is the daemon's hop, used to date an event held back by the cooldown.
    """

    def __init__(
        self,
        stream: str,
        classes: list[str],
        config: DecisionConfig | None = None,
        *,
        hop_s: float,
        model: dict | None = None,
        window_s: float = WINDOW_SECONDS,
        rng: random.Random | None = None,
    ) -> None:
        self.stream = stream
        self.classes = list(classes)
        self.config = config or DecisionConfig()
        self.model = dict(model or {"name": None, "sha": None})
        self.window_s = float(window_s)
        self.hop_s = float(hop_s)
        self._rng = rng or random.SystemRandom()
        self.windows_seen = 0
        self.fault_windows = 0
        self._run = 0
        self._run_start: tuple[float, float] | None = None
        self._run_scores: list[float] = []
        self._run_details: list[dict | None] = []
        self._quiet = 0
        self._since_update = 0
        self._last_end_time: float | None = None
        self._last_audible: tuple[float, float] | None = None
        self.event: AnomalyEvent | None = None

    @property
    def active(self) -> bool:
        """Is an event open (the stream's anomaly binary sensor is ON)?"""
        return self.event is not None

    def in_cooldown(self, audio_time_s: float) -> bool:
        return self._last_end_time is not None and audio_time_s - self._last_end_time < self.config.cooldown_s

    def update(
        self,
        audio_end_time_s: float,
        wall_time: float,
        score: float | None,
        threshold: float,
        fault: bool = False,
        detail: dict | None = None,
    ) -> list[Transition]:
        """Advance by one window; returns the transitions it caused (often none).

        ``detail`` describes the window (``score_kind``, ``components``, ``explanation``); the
        event keeps the detail of its peak window.
        """
        cfg = self.config
        if fault or score is None:
            self.fault_windows += 1
            self._reset_run()
            if self.event is not None:
                return self._quiet_window(audio_end_time_s, wall_time)
            return []
        score = float(score)
        self.windows_seen += 1
        if self.windows_seen <= cfg.warmup_windows:
            return []
        if self.event is not None:
            return self._active_window(audio_end_time_s, wall_time, score, threshold, detail)
        if score > threshold:
            if self._run == 0:
                self._run_start = (audio_end_time_s, wall_time)
                self._run_scores = []
            self._run += 1
            self._run_scores.append(score)
            self._run_details.append(detail)
            if len(self._run_scores) > cfg.patience:
                self._run_scores.pop(0)
                self._run_details.pop(0)
            if self._run >= cfg.patience and not self.in_cooldown(audio_end_time_s):
                return self._open(audio_end_time_s, wall_time, threshold)
        else:
            self._reset_run()
        return []

    def close(self, audio_end_time_s: float, wall_time: float) -> list[Transition]:
        """End an open event now (shutdown, stream removed); no-op when idle."""
        if self.event is None:
            return []
        return self._end(audio_end_time_s, wall_time)

    def set_evidence(self, path: str | None) -> None:
        """Attach the evidence path to the open event (shows up in the next update/end)."""
        if self.event is not None:
            self.event.evidence = path

    # -- internals -------------------------------------------------------------------------
    def _reset_run(self) -> None:
        self._run = 0
        self._run_start = None
        self._run_scores = []
        self._run_details = []

    def _open(self, audio_end_time_s: float, wall_time: float, threshold: float) -> list[Transition]:
        cfg = self.config
        scores = self._run_scores[-cfg.patience :]
        details = self._run_details[-cfg.patience :]
        peak_detail = details[scores.index(max(scores))] or {}
        start_time, start_wall = self._run_start or (audio_end_time_s, wall_time)
        if self._run > cfg.patience:
            # Held back by the cooldown: the event starts with the windows that open it now.
            start_time = audio_end_time_s - (cfg.patience - 1) * self.hop_s
            start_wall = wall_time - (cfg.patience - 1) * self.hop_s
        self.event = AnomalyEvent(
            id=_event_id(start_wall, self._rng),
            stream=self.stream,
            classes=list(self.classes),
            start_time=float(start_time),
            end_time=None,
            start_wall=float(start_wall),
            end_wall=None,
            peak_score=max(scores),
            mean_score=sum(scores) / len(scores),
            threshold=float(threshold),
            windows=len(scores),
            model=dict(self.model),
            window_s=self.window_s,
            hop_s=self.hop_s,
            score_sum=sum(scores),
            **_detail_fields(peak_detail),
        )
        self._reset_run()
        self._quiet = 0
        self._since_update = 0
        self._last_audible = (audio_end_time_s, wall_time)
        logger.info("stream %s: anomaly event %s opened (score %.3f > %.3f)",
                    self.stream, self.event.id, self.event.peak_score, threshold)
        return [("new", None, self.event.to_dict())]

    def _active_window(
        self, t: float, wall: float, score: float, threshold: float, detail: dict | None
    ) -> list[Transition]:
        ev = self.event
        assert ev is not None
        before = ev.to_dict()
        ev.windows += 1
        ev.score_sum += score
        ev.mean_score = ev.score_sum / ev.windows
        ev.threshold = float(threshold)
        peak_rose = score > ev.peak_score
        if peak_rose:
            ev.peak_score = score
            for key, value in _detail_fields(detail or {}).items():
                setattr(ev, key, value)
        if score >= self.config.off_ratio * threshold:
            self._quiet = 0
            self._last_audible = (t, wall)
        else:
            self._quiet += 1
            if self._quiet >= self.config.max_quiet:
                return self._end(t, wall)
        self._since_update += 1
        if peak_rose or self._since_update >= self.config.update_every:
            self._since_update = 0
            return [("update", before, ev.to_dict())]
        return []

    def _quiet_window(self, t: float, wall: float) -> list[Transition]:
        self._quiet += 1
        if self._quiet >= self.config.max_quiet:
            return self._end(t, wall)
        return []

    def _end(self, t: float, wall: float) -> list[Transition]:
        ev = self.event
        assert ev is not None
        before = ev.to_dict()
        end_time, end_wall = self._last_audible or (t, wall)
        ended = replace(ev, active=False, end_time=float(end_time), end_wall=float(end_wall))
        self.event = None
        self._quiet = 0
        self._last_end_time = t
        logger.info("stream %s: anomaly event %s ended after %d windows (peak %.3f)",
                    self.stream, ev.id, ev.windows, ev.peak_score)
        return [("end", before, ended.to_dict())]
