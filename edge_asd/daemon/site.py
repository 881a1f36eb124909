"""Site learning inside ``listen``: one stream's enrolment, features, feedback and live re-enrolment.

Every scored window of a stream gets its condition indicators and spectral profile here,
computed from 1 s blocks that are cached across hops (with a 1 s hop, nine of a window's ten
blocks were already seen by the previous window), so the indicators cost a fraction of a
millisecond per hop. An enrolled stream (``<state_dir>/enrolment/<stream>/``, made by
``edge-asd enrol`` for the running bundle) is scored by the fused site score against its own
normal; a stream that is not enrolled, or whose enrolment was made with another bundle, falls
back to the bundle's training-time score and says so in its status message.

The features of an event's windows are kept (``edge_asd.site.store``) so that an operator's
feedback can use them later: ``normal`` adds them to the stream's references and re-derives the
threshold, ``anomaly`` keeps the evidence as a labelled example. A live re-enrolment collects
the features of the next N minutes of scored windows and swaps the new enrolment in when done;
the stream keeps being monitored with the old one meanwhile. Features, scores and events run
in the pipeline thread (MQTT commands reach it through the pipeline's command queue); the
refits (feedback ``normal``, the end of a live re-enrolment) run on the pipeline's refit
worker (``edge_asd.daemon.refits``) and swap the new enrolment in with one assignment.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge_asd.core import indicators as ind
from edge_asd.core import spectra
from edge_asd.core.constants import WINDOW_SAMPLES
from edge_asd.core.errors import UserError
from edge_asd.core.site.enrolment import Enrolment, EnrolmentError, SiteScore, WindowSet, false_alarm_rate_for
from edge_asd.core.site.holdout import WindowRef
from edge_asd.daemon.refits import Refits
from edge_asd.site.enrol import enrol_features, keep_feedback
from edge_asd.site.features import WindowFeatures
from edge_asd.site.storage import (
    EnrolmentStatus,
    enrolment_status,
    load_stream_enrolment,
    save_stream_enrolment,
    stored_enrolment,
)
from edge_asd.site.store import event_path, load_event_windows, record_label, save_event_windows
from engines.bundle import Bundle

logger = logging.getLogger(__name__)

RECENT_WINDOWS = 16
"""Feature rows kept per stream before an event opens: the event's opening run (patience
windows) is among them when it opens."""

MAX_EVENT_WINDOWS = 600
"""Feature rows kept for one event (10 min at a 1 s hop); a longer event keeps its first ones."""

MAX_EVENT_FILES = 200
"""Stored event windows kept per stream for feedback (the oldest go first; a few MB at most)."""

EVENT_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")
"""What an event id may look like (``decisions`` makes ``<epoch>-<6 characters>``); anything
else in a feedback command is refused before it reaches a file name."""

STACK_BLOCKS = 32
"""Blocks stacked into one ``block_stats_many`` call by ``features_many`` (2 MB of samples)."""

MIN_LIVE_ENROL_MINUTES = 1.0
MAX_LIVE_ENROL_MINUTES = 120.0


@dataclass
class WindowRow:
    """The features of one scored window."""

    end_index: int
    indicators: np.ndarray
    profile: np.ndarray
    embedding: np.ndarray
    ce: float | None


@dataclass
class FeedbackResult:
    """What ``<stream>/feedback/result`` says back to the operator."""

    event: str
    label: str
    ok: bool
    message: str
    threshold: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"event": self.event, "label": self.label, "ok": self.ok, "message": self.message,
                "threshold": self.threshold}  # fmt: skip


@dataclass
class LiveEnrolment:
    """A re-enrolment from the stream's own live windows, in progress."""

    minutes: float
    windows_wanted: int
    started_wall: float
    rows: list[WindowRow] = field(default_factory=list)

    @property
    def progress(self) -> float:
        return min(1.0, len(self.rows) / max(1, self.windows_wanted))


class StreamSite:
    """Site-learning state of one stream (see the module docstring)."""

    def __init__(
        self,
        stream: str,
        *,
        state_dir: str | Path,
        bundle: Bundle,
        bundle_sha: str,
        class_names: list[str],
        hop_s: float,
        false_alarms_per_day: float,
    ) -> None:
        self.stream = stream
        self.state_dir = Path(state_dir)
        self.bundle = bundle
        self.bundle_sha = bundle_sha
        self.class_names = list(class_names)
        self.hop_s = float(hop_s)
        self.false_alarms_per_day = float(false_alarms_per_day)
        self.enrolment: Enrolment | None = None
        self.status: EnrolmentStatus = enrolment_status(self.state_dir, stream, bundle_sha)
        self._blocks: dict[int, ind.BlockStats] = {}
        self._recent: deque[WindowRow] = deque(maxlen=RECENT_WINDOWS)
        self._event_id: str | None = None
        self._event_rows: list[WindowRow] = []
        self.live: LiveEnrolment | None = None
        self.fitting = False
        """A live re-enrolment's windows are all in and its fit is running."""
        self.refits = Refits(inline=True)
        """Where refits run; ``listen`` gives every stream the pipeline's worker."""
        self._generation = 0
        """Bumped by ``disable``: a feedback refit swaps its result in only if none happened."""
        self.load()

    # -- enrolment ----------------------------------------------------------------------------
    def load(self) -> None:
        """(Re)load the stored enrolment; a missing or stale one leaves the bundle's score.

        Built in locals and swapped in at the end: a refit worker may call this while the
        pipeline thread scores, which must never see a half-loaded state."""
        status = enrolment_status(self.state_dir, self.stream, self.bundle_sha)
        enrolment = None
        if status.ok:
            try:
                enrolment = load_stream_enrolment(self.state_dir, self.stream, self.bundle_sha)
            except EnrolmentError as err:
                status = EnrolmentStatus("stale", str(err), status.path)
        if enrolment is not None:
            enrolled_classes = list(enrolment.meta.get("classes") or [])
            if ("ce" in enrolment.components or self.class_names) and enrolled_classes != self.class_names:
                enrolment = None
                status = EnrolmentStatus(
                    "stale",
                    f"stream {self.stream} was enrolled with classes {enrolled_classes or 'none'} but now has "
                    f"{self.class_names or 'none'}: re-enrol it (the model's own score depends on the classes)",
                    status.path,
                )
        self.enrolment, self.status = enrolment, status
        if enrolment is not None:
            logger.info("stream %s: scored against its enrolment (%d windows, threshold %.3f)",
                        self.stream, enrolment.n_windows, enrolment.threshold)  # fmt: skip
        elif status.state == "stale":
            logger.warning("%s; until then the bundle's score is used", status.message)
        else:
            logger.info("%s; until then the bundle's score is used", status.message)

    def disable(self, message: str) -> None:
        """Stop using an enrolment that cannot score this stream; the bundle's score takes over."""
        logger.error("%s", message)
        self._generation += 1  # a refit built on the disabled enrolment must not bring it back
        self.enrolment = None
        self.status = EnrolmentStatus("stale", message, self.status.path)

    @property
    def enrolled(self) -> bool:
        return self.enrolment is not None

    @property
    def threshold(self) -> float | None:
        enrolment = self.enrolment
        return None if enrolment is None else float(enrolment.threshold)

    def attributes(self) -> dict[str, Any]:
        """The ``enrolment`` block of ``<stream>/attributes``."""
        enrolling = self.live is not None or self.fitting
        state = "enrolling" if enrolling else ("ok" if self.enrolled else self.status.state)
        message = "fitting the new enrolment" if self.fitting else self.status.message
        out: dict[str, Any] = {"state": state, "message": message}
        enrolment = self.enrolment
        if enrolment is not None:
            meta = enrolment.meta
            out.update(created=enrolment.created, windows=enrolment.n_windows,
                       minutes=meta.get("minutes"), components=list(enrolment.components))  # fmt: skip
        live = self.live
        if live is not None or self.fitting:
            out["progress"] = 1.0 if live is None else round(live.progress, 3)
        return out

    # -- features -----------------------------------------------------------------------------
    def features(self, window: np.ndarray, end_index: int) -> tuple[np.ndarray, np.ndarray]:
        """Indicators and spectral profile of the window ending at ``end_index``
        (``features_many`` of this one window: the pipeline computes a tick's windows together)."""
        return features_many([(self, window, end_index)])[0]

    def _block_plan(self, window: np.ndarray, end_index: int) -> list[ind.BlockStats | tuple[int | None, np.ndarray]]:
        """The window's ten blocks: the cached statistics of a block already seen, else
        ``(cache key, block audio)`` to analyse (key None: not to be cached).

        Blocks are numbered on the stream's own sample clock; when the window starts on a
        block boundary (a hop of whole seconds) each block's statistics are computed once and
        reused by the next nine windows, else all ten are computed from the window. Cached
        blocks older than the window are dropped here.
        """
        start = end_index - WINDOW_SAMPLES
        n = ind.BLOCK_SAMPLES
        blocks = [window[i * n : (i + 1) * n] for i in range(ind.BLOCKS_PER_WINDOW)]
        if start % n:
            return [(None, b) for b in blocks]
        first = start // n
        for key in [k for k in self._blocks if k < first]:
            del self._blocks[key]
        cached = [self._blocks.get(first + i) for i in range(len(blocks))]
        return [(first + i, b) if stats is None else stats for i, (stats, b) in enumerate(zip(cached, blocks))]

    def score(self, row: WindowRow) -> SiteScore | None:
        """The fused site score of a window (None when the stream is not enrolled)."""
        self._recent.append(row)
        if self._event_id is not None and len(self._event_rows) < MAX_EVENT_WINDOWS:
            self._event_rows.append(row)
        if self.live is not None:
            self._collect(row)
        enrolment = self.enrolment  # read once: a refit may swap in a new one meanwhile
        if enrolment is None:
            return None
        ce = None if row.ce is None or "ce" not in enrolment.components else np.array([row.ce])
        scores = enrolment.score(row.indicators[None, :], row.embedding[None, :], ce, profiles=row.profile[None, :])
        return scores.row(0)

    def detail(self, site: SiteScore, row: WindowRow) -> dict[str, Any]:
        """What an event carries about its peak window: components and the explanation."""
        enrolment = self.enrolment
        out: dict[str, Any] = {"score_kind": "fused", "components": site.to_dict()["components"]}
        if enrolment is not None:  # None only if it was disabled since the window was scored
            out["explanation"] = enrolment.explain(row.indicators).to_dict()
        return out

    def normal_bands(self) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """(centre Hz, normal low dB, normal high dB) of the third-octave bands, for the evidence
        plot: the enrolled median +/- 2 robust sigmas of each ``band_*`` indicator."""
        enrolment = self.enrolment
        if enrolment is None:
            return None
        names = list(enrolment.indicator_names)
        band_names = [n for n in ind.INDICATOR_NAMES if n.startswith("band_")]
        pairs = [(hz, names.index(n)) for hz, n in zip(ind.BAND_NOMINAL_HZ, band_names) if n in names]
        centres = np.array([hz for hz, _ in pairs], dtype=np.float64)
        idx = [i for _, i in pairs]
        model = enrolment.indicator_model
        med, scale = model.median[idx], model.scale[idx]
        return centres, med - 2 * scale, med + 2 * scale

    # -- events -------------------------------------------------------------------------------
    def event_opened(self, event_id: str, start_index: int) -> None:
        """Start keeping the event's windows, from the first window of its opening run."""
        self._event_id = event_id
        self._event_rows = [r for r in self._recent if r.end_index >= start_index]

    def event_ended(self, event_id: str) -> None:
        """Store the event's windows for later feedback."""
        if self._event_id != event_id:
            return
        rows, self._event_id, self._event_rows = self._event_rows, None, []
        if not rows:
            return
        try:
            save_event_windows(
                self.state_dir, self.stream, event_id, np.stack([r.indicators for r in rows]),
                np.stack([r.embedding for r in rows]), _ce_column(rows),
                profiles=np.stack([r.profile for r in rows]),
            )  # fmt: skip
        except (OSError, ValueError) as err:  # a full disk must not stop monitoring
            logger.error("could not keep the windows of event %s for feedback: %s", event_id, err)
            return
        self._prune_event_files()

    def _prune_event_files(self) -> None:
        """Keep the newest ``MAX_EVENT_FILES`` stored events of this stream."""
        folder = event_path(self.state_dir, self.stream, "x").parent
        try:
            files = sorted(folder.glob("*.npz"), key=lambda p: p.stat().st_mtime)
            for old in files[:-MAX_EVENT_FILES]:
                old.unlink(missing_ok=True)
        except OSError as err:
            logger.warning("could not prune stored event windows in %s: %s", folder, err)

    # -- feedback -----------------------------------------------------------------------------
    def feedback(self, event_id: str, label: str, evidence: str | None, by: str) -> FeedbackResult:
        """Apply an operator's label to an event (``normal`` or ``anomaly``)."""
        if not EVENT_ID.fullmatch(event_id):
            return FeedbackResult(event_id[:128], label, False, "not an event id of this node")
        if label == "anomaly":
            if evidence is None or not _is_file(evidence):
                return FeedbackResult(event_id, label, False, f"no evidence recording of event {event_id} to keep")
            try:
                path = record_label(self.state_dir, self.stream, event_id, label, evidence)
            except (UserError, OSError) as err:
                return FeedbackResult(event_id, label, False, str(err))
            logger.warning("stream %s: event %s confirmed as an anomaly by %s (kept as %s)",
                           self.stream, event_id, by, path)  # fmt: skip
            return FeedbackResult(event_id, label, True, f"kept as a labelled anomaly: {path}", self.threshold)
        base, generation = self.enrolment, self._generation
        if base is None:
            return FeedbackResult(event_id, label, False,
                                  f"stream {self.stream} is not enrolled: enrol it before teaching it what is normal")  # fmt: skip
        learnt = list(base.meta.get("feedback_events") or [])
        if event_id in learnt:  # QoS 1 may deliver twice; an operator may click twice
            return FeedbackResult(event_id, label, True, "already learnt as normal", self.threshold)
        windows = self._event_windows(event_id)
        if windows is None:
            return FeedbackResult(event_id, label, False, f"no stored windows for event {event_id} on {self.stream}")
        old = base.threshold
        try:
            updated = base.add_normal(windows.indicators, windows.embeddings, windows.ce,
                                      profiles=windows.profiles)  # fmt: skip
            updated.meta["feedback_events"] = [*learnt, event_id][-MAX_EVENT_FILES:]
            save_stream_enrolment(updated, self.state_dir, self.stream)
        except (UserError, OSError, ValueError) as err:
            return FeedbackResult(event_id, label, False, f"could not learn event {event_id} as normal: {err}")
        if generation != self._generation:  # disabled while fitting: stay on the bundle's score
            return FeedbackResult(event_id, label, False, f"stream {self.stream}'s enrolment was disabled meanwhile "
                                  f"({self.status.message}): re-enrol it; the feedback was saved with it")  # fmt: skip
        self.enrolment = updated
        still = updated.score(windows.indicators, windows.embeddings, windows.ce, profiles=windows.profiles)
        note = ""
        if still.anomalous.any():
            drivers = sorted({still.row(i).driver for i in np.flatnonzero(still.anomalous)})
            note = (f"; {int(still.anomalous.sum())} of its windows still score over the threshold through "
                    f"{', '.join(drivers)} (the model's own score cannot be taught: enrol without classes "
                    "to rely on the site components)") if "ce" in drivers else ""  # fmt: skip
        with contextlib.suppress(OSError):
            event_path(self.state_dir, self.stream, event_id).unlink(missing_ok=True)
        if evidence and _is_file(evidence):
            try:
                record_label(self.state_dir, self.stream, event_id, "normal", evidence)
            except (UserError, OSError) as err:
                logger.warning("could not keep the evidence of event %s as a normal example: %s", event_id, err)
        logger.warning("stream %s: event %s learnt as normal (by %s): %d windows added, threshold %.3f -> %.3f",
                       self.stream, event_id, by, len(windows), old, updated.threshold)  # fmt: skip
        return FeedbackResult(event_id, label, True, f"learnt {len(windows)} windows as normal{note}",
                              float(updated.threshold))  # fmt: skip

    def _event_windows(self, event_id: str) -> WindowSet | None:
        """The stored windows of an event, or those of the event still open."""
        rows = list(self._event_rows)  # a copy: the pipeline thread appends to it while a refit reads
        if event_id == self._event_id and rows:
            return WindowSet(np.stack([r.indicators for r in rows]), np.stack([r.embedding for r in rows]),
                             _ce_column(rows), profiles=np.stack([r.profile for r in rows]))  # fmt: skip
        try:
            return load_event_windows(self.state_dir, self.stream, event_id)
        except OSError as err:
            logger.warning("windows of event %s unreadable: %s", event_id, err)
            return None

    # -- live re-enrolment ---------------------------------------------------------------------
    def start_live_enrolment(self, minutes: float) -> str:
        if not MIN_LIVE_ENROL_MINUTES <= minutes <= MAX_LIVE_ENROL_MINUTES:
            raise UserError(
                f"re-enrolment of {self.stream}: {minutes} minutes is outside "
                f"{MIN_LIVE_ENROL_MINUTES:g}-{MAX_LIVE_ENROL_MINUTES:g}"
            )
        wanted = max(1, int(round(minutes * 60.0 / self.hop_s)))
        self.live = LiveEnrolment(float(minutes), wanted, time.time())
        logger.warning("stream %s: re-enrolling from the next %.1f minutes of live audio", self.stream, minutes)
        return f"enrolling from the next {minutes:g} minutes"

    def _collect(self, row: WindowRow) -> None:
        live = self.live
        assert live is not None
        live.rows.append(row)
        if len(live.rows) < live.windows_wanted:
            return
        self.live = None
        self.fitting = True
        if not self.refits.submit(lambda: self._fit_live(live), f"live re-enrolment of {self.stream}"):
            self.fitting = False
            self.status = EnrolmentStatus("failed", f"re-enrolment of {self.stream} could not start: "
                                          "too many refits waiting; try again", self.status.path)  # fmt: skip

    def _fit_live(self, live: LiveEnrolment) -> None:
        """Fit, save and swap in the enrolment of a finished live re-enrolment (refit worker)."""
        try:
            self._fit_live_rows(live)
        finally:
            self.fitting = False

    def _fit_live_rows(self, live: LiveEnrolment) -> None:
        segment = f"live-{time.strftime('%Y%m%dT%H%M%S', time.localtime(live.started_wall))}"
        rows = live.rows
        feats = WindowFeatures(
            refs=[WindowRef(segment, int(r.end_index - WINDOW_SAMPLES)) for r in rows],
            indicators=np.stack([r.indicators for r in rows]),
            embeddings=np.stack([r.embedding for r in rows]),
            ce=_ce_column(rows),
            samples=int(rows[-1].end_index - rows[0].end_index + WINDOW_SAMPLES),
            profiles=np.stack([r.profile for r in rows]),
        )
        try:
            enrolment = enrol_features(
                feats, self.bundle, stream=self.stream,
                false_alarm_rate=false_alarm_rate_for(self.false_alarms_per_day, self.hop_s),
                source={"kind": "live", "minutes": live.minutes}, class_names=self.class_names, hop_s=self.hop_s,
            )  # fmt: skip
            enrolment = keep_feedback(enrolment, self._previous_enrolment())  # taught stays taught
            save_stream_enrolment(enrolment, self.state_dir, self.stream)
        except (UserError, OSError, ValueError) as err:
            self.status = EnrolmentStatus("failed", f"re-enrolment of {self.stream} failed: {err}", self.status.path)
            logger.error("%s", self.status.message)
            return
        self.load()


    def _previous_enrolment(self) -> Enrolment | None:
        """The enrolment a re-enrolment replaces: the one in use, else the stored one for this
        bundle (disabled or stale for its classes, it still holds what operators taught)."""
        if self.enrolment is not None:
            return self.enrolment
        return stored_enrolment(self.state_dir, self.stream, self.bundle_sha)


def features_many(items: list[tuple[StreamSite, np.ndarray, int]]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Indicators and spectral profiles of several streams' windows ``(site, window, end_index)``
    at once, each row equal to that window computed alone.

    Why together: per window the work is a 1 s block's statistics, then ten blocks combined
    into the indicators and the profile, and at one window at a time most of that was numpy's
    per-call overhead on small arrays. The pipeline scores every due stream in one tick, so the
    new blocks of all of them go through one ``block_stats_many`` and the windows through one
    ``combine_many`` and one ``profile_many`` (``docs/performance.md``).
    """
    plans = [site._block_plan(window, end_index) for site, window, end_index in items]
    todo = [(i, j) for i, plan in enumerate(plans) for j, entry in enumerate(plan) if isinstance(entry, tuple)]
    # In slices: a first tick, a gap or a hop off whole seconds needs all ten blocks of every
    # stream, and one stack of them all would be a 60 MB temporary at 96 streams.
    for lo in range(0, len(todo), STACK_BLOCKS):
        part = todo[lo : lo + STACK_BLOCKS]
        computed = ind.block_stats_many(np.stack([plans[i][j][1] for i, j in part]))  # type: ignore[index]
        for (i, j), stats in zip(part, computed):
            key = plans[i][j][0]  # type: ignore[index]
            if key is not None:
                items[i][0]._blocks[key] = stats
            plans[i][j] = stats
    windows: list[list[ind.BlockStats]] = plans  # type: ignore[assignment]  # every entry resolved above
    # Copies, not rows of the batch's arrays: a row kept for an event or a live re-enrolment
    # (thousands of them) would keep the whole tick's arrays alive with it.
    return [(a.copy(), p.copy()) for a, p in zip(ind.combine_many(windows), spectra.profile_many(windows))]


def _is_file(path: str | Path) -> bool:
    try:
        return Path(path).is_file()
    except OSError:  # a name too long for the file system is not a file
        return False


def _ce_column(rows: list[WindowRow]) -> np.ndarray | None:
    if any(r.ce is None for r in rows):
        return None
    return np.array([float(r.ce) for r in rows])  # type: ignore[arg-type]


__all__ = ["FeedbackResult", "StreamSite", "WindowRow"]
