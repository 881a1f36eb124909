"""A stream's enrolled normal: everything needed to score its windows, and to re-fit it.

Why one object: the daemon, ``enrol``, ``evaluate-site`` and feedback all need the same
numbers (indicator statistics, the spectral profiles, the embedding bank, each component's
normal distribution, the threshold) and the same rule for deriving them, and an operator needs to know where they came
from (bundle, audio, hold-out rule). numpy only; ``save``/``load`` write JSON + ``.npz`` (never
pickle), atomically, with a format version.

How it is fitted (``fit_enrolment``):

1. every enrolment window gets an *out-of-fold* score per component, by the cross-fitting of
   ``edge_asd.core.site.holdout`` (references never overlap the window scored);
2. each component's out-of-fold scores fix its normal distribution (``normalise``): a score
   becomes a surprise ``-log10 P_normal(S >= s)`` in [0, 50];
3. the fused score is the **maximum surprise** over the components (Tippett's min-p rule): a
   component that knows nothing about this machine stays near its normal surprise and cannot
   pull an informative one down, which any mean (of ranks, of z-scores) would do;
4. the threshold on the fused score is ``edge_asd.core.thresholds.threshold_for`` on the
   out-of-fold fused scores at ``false_alarm_rate`` per window, but never below the Bonferroni
   bound ``log10(m / false_alarm_rate)`` for ``m`` components: each surprise is calibrated, so
   ``P(max >= t) <= m 10^-t`` under any dependence between them. The floor matters because a
   gamma fitted to a maximum of surprises has too light a tail: on simulated null data with three
   components the fit alone put the 1-per-day threshold 0.7 decades low (5x the false alarms);
5. the scoring state (indicator statistics, spectrum bank, envelope range, embedding bank) is
   then fitted on *all* enrolment windows.

The ``spectrum`` and ``envelope`` components exist when the windows' spectral profiles
(``edge_asd.core.spectra``) are given; every argument that carries them is a keyword with a
None default, so callers that have none keep working (with the other components only).

Feedback (``add_normal``): the windows an operator marked normal become exemplars: references
of every component except ``ce`` (for every fold), never held-out windows, so they lower what
they resemble without entering the data the threshold is fitted on; steps 1-4 are then redone,
which re-derives the threshold.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np

from edge_asd.core.atomic import atomic_write_bytes, atomic_write_text
from edge_asd.core.errors import UserError
from edge_asd.core.indicators import INDICATOR_NAMES
from edge_asd.core.scoring import DEFAULT_KNN_K, l2_normalise
from edge_asd.core.site.components import (
    CE,
    COMPONENTS,
    ENVELOPE,
    INDICATORS,
    KNN,
    PROFILE_COMPONENTS,
    SPECTRUM,
    EnvelopeModel,
    IndicatorModel,
    SpectrumBank,
    fit_envelope_model,
    fit_indicator_model,
    knn_component,
    spectrum_component,
)
from edge_asd.core.site.explain import Explanation, explain_vector, indicator_meta
from edge_asd.core.site.holdout import HOLDOUT_RULE, WindowRef, assign_folds, cross_fit_plan
from edge_asd.core.site.normalise import SurpriseFit, fit_surprise
from edge_asd.core.spectra import ENVELOPE_SLICE, N_ENVELOPE, POWER_SLICE, PROFILE_SIZE
from edge_asd.core.thresholds import threshold_for

logger = logging.getLogger(__name__)

FORMAT = "edge-asd-enrolment"
FORMAT_VERSION = 2
"""2: spectral profiles and the ``spectrum`` and ``envelope`` components (1 had neither)."""
ENROLMENT_JSON = "enrolment.json"
NPZ_PREFIX = "enrolment-"
"""Arrays live in ``enrolment-<sha256[:16]>.npz``, named in the JSON: writing the new arrays
under a new name and then replacing the JSON swaps a whole enrolment atomically (a crash in
between leaves the previous one intact)."""

DEFAULT_FALSE_ALARMS_PER_DAY = 1.0
"""Windows over the threshold per day of normal operation (``calibrate``'s default too)."""

SCALE_FLOOR_BY_UNIT: dict[str, float] = {"dBFS": 0.5, "dB": 0.3, "Hz": 10.0, "": 0.01}
"""Smallest robust scale per unit. Enrolment windows overlap by 90 % and come from one stretch
of time, so their spread underestimates how much a healthy machine drifts between days; the
threshold sits some five scales out, so a floor says which change is too small to alarm on:
about 2.5 dB of an absolute level in dBFS (a microphone's day-to-day repeatability is 1-2 dB),
1.5 dB of a relative one (crest factor, a band's share of the total: gain-independent), 50 Hz
of a spectral centroid, 0.05 of a ratio such as a modulation depth or the spectral flux."""

SCALE_FLOOR_BY_NAME: dict[str, float] = {"tonal_peak_count": 0.5, "kurtosis": 0.1}
"""Integer counts: one step must read as two sigma, not as an explosion. Kurtosis: the
estimate over one 10 s window of a healthy machine wanders by 0.1-0.2 between recordings
(Gaussian noise alone: 0.012); impulsive faults move it by whole units."""

MAX_EXEMPLARS = 2000
"""Feedback exemplars kept (newest win): bounds memory and the per-window distance cost."""


class EnrolmentError(UserError):
    """A missing, corrupt, stale or other-version enrolment, or unusable enrolment data."""


def false_alarm_rate_for(false_alarms_per_day: float, hop_s: float = 1.0) -> float:
    """Per-window false-alarm probability for a number of false alarms per day at a hop."""
    if not (false_alarms_per_day > 0 and hop_s > 0):
        raise ValueError("false_alarms_per_day and hop_s must be positive")
    return min(0.5, float(false_alarms_per_day) / (86400.0 / float(hop_s)))


DEFAULT_FALSE_ALARM_RATE = false_alarm_rate_for(DEFAULT_FALSE_ALARMS_PER_DAY, 1.0)
"""1 false alarm per day at a 1 s hop: about 1.16e-5 per window."""


def bonferroni_threshold(n_components: int, false_alarm_rate: float) -> float:
    """The fused threshold below which the false-alarm rate cannot be guaranteed: the surprise
    ``t`` with ``n_components * 10**-t = false_alarm_rate``."""
    return float(math.log10(max(1, n_components) / false_alarm_rate))


def scale_floors(names: Sequence[str]) -> np.ndarray:
    """The robust-scale floor of each indicator, from its unit (or its name for counts)."""
    out = []
    for name in names:
        if name in SCALE_FLOOR_BY_NAME:
            out.append(SCALE_FLOOR_BY_NAME[name])
        else:
            out.append(SCALE_FLOOR_BY_UNIT.get(indicator_meta(name).unit, 1e-3))
    return np.asarray(out, dtype=np.float64)


def _edge_asd_version() -> str:
    try:
        return version("edge-asd")
    except PackageNotFoundError:
        return "0.0.0+unknown"


# --------------------------------------------------------------------------------------------
# Window data
# --------------------------------------------------------------------------------------------


@dataclass
class WindowSet:
    """Per-window features: indicators (N, K), embeddings (N, D) or None, ce (N,) or None,
    spectral profiles (N, ``PROFILE_SIZE``) float32 or None."""

    indicators: np.ndarray
    embeddings: np.ndarray | None = None
    ce: np.ndarray | None = None
    profiles: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.indicators = np.atleast_2d(np.asarray(self.indicators, dtype=np.float64))
        n = self.indicators.shape[0]
        if not np.all(np.isfinite(self.indicators)):
            raise ValueError("indicator values must be finite")
        if self.embeddings is not None:
            self.embeddings = np.atleast_2d(np.asarray(self.embeddings, dtype=np.float32))
            if self.embeddings.shape[0] != n:
                raise ValueError(f"{self.embeddings.shape[0]} embeddings for {n} indicator rows")
            if not np.all(np.isfinite(self.embeddings)):
                raise ValueError("embeddings must be finite")
        if self.ce is not None:
            self.ce = np.asarray(self.ce, dtype=np.float64).reshape(-1)
            if self.ce.shape[0] != n:
                raise ValueError(f"{self.ce.shape[0]} ce scores for {n} indicator rows")
            if not np.all(np.isfinite(self.ce)):
                raise ValueError("ce scores must be finite")
        if self.profiles is not None:
            self.profiles = np.atleast_2d(np.asarray(self.profiles, dtype=np.float32))
            if self.profiles.shape != (n, PROFILE_SIZE):
                raise ValueError(
                    f"spectral profiles of shape {self.profiles.shape} for {n} windows: expected ({n}, {PROFILE_SIZE}) "
                    "(edge_asd.core.spectra)"
                )
            if not np.all(np.isfinite(self.profiles)):
                raise ValueError("spectral profiles must be finite")

    def __len__(self) -> int:
        return int(self.indicators.shape[0])

    @classmethod
    def empty_like(cls, other: WindowSet) -> WindowSet:
        k = other.indicators.shape[1]
        emb = None if other.embeddings is None else np.zeros((0, other.embeddings.shape[1]), np.float32)
        prof = None if other.profiles is None else np.zeros((0, PROFILE_SIZE), np.float32)
        return cls(np.zeros((0, k)), emb, None if other.ce is None else np.zeros(0), prof)

    def append(self, other: WindowSet, keep_last: int | None = None) -> WindowSet:
        """A new set with ``other``'s rows after ours (the newest ``keep_last`` rows kept)."""
        if other.indicators.shape[1] != self.indicators.shape[1]:
            raise ValueError(f"{other.indicators.shape[1]} indicators per window, enrolled {self.indicators.shape[1]}")

        def cat(a: np.ndarray | None, b: np.ndarray | None, n_b: int, width: int | None) -> np.ndarray | None:
            if a is None:
                return None
            if b is None:  # e.g. ce absent from feedback windows: not used for scoring
                b = np.zeros((n_b,) if width is None else (n_b, width), dtype=a.dtype)
            out = np.concatenate([a, b.astype(a.dtype, copy=False)], axis=0)
            return out[-keep_last:] if keep_last else out

        if self.profiles is not None and other.profiles is None and len(other):
            raise ValueError("windows without spectral profiles cannot join a set that has them")
        emb_w = None if self.embeddings is None else self.embeddings.shape[1]
        return WindowSet(
            cat(self.indicators, other.indicators, len(other), self.indicators.shape[1]),  # type: ignore[arg-type]
            cat(self.embeddings, other.embeddings, len(other), emb_w),
            cat(self.ce, other.ce, len(other), None),
            cat(self.profiles, other.profiles, len(other), PROFILE_SIZE),
        )


# --------------------------------------------------------------------------------------------
# Scores
# --------------------------------------------------------------------------------------------


def _finite(x: float) -> float:
    """A float that strict JSON accepts (inf and NaN cannot leave the device)."""
    x = float(x)
    if math.isnan(x):
        return 0.0
    if math.isinf(x):
        return 1e300 if x > 0 else -1e300
    return x


@dataclass(frozen=True)
class ComponentScores:
    """One component over a batch: its raw scores and their surprise (both (B,), float64)."""

    raw: np.ndarray
    surprise: np.ndarray


@dataclass(frozen=True)
class SiteScore:
    """One window's fused score, the threshold, and every component (raw, surprise)."""

    fused: float
    threshold: float
    components: dict[str, tuple[float, float]]
    driver: str
    """The component with the largest surprise (the one the fused score is)."""

    @property
    def anomalous(self) -> bool:
        return self.fused > self.threshold

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (finite floats only): what an event payload carries."""
        return {
            "fused": _finite(self.fused),
            "threshold": _finite(self.threshold),
            "anomalous": self.anomalous,
            "driver": self.driver,
            "components": {
                name: {"raw": _finite(raw), "surprise": _finite(sur)} for name, (raw, sur) in self.components.items()
            },
        }


@dataclass(frozen=True)
class SiteScores:
    """Scores of a batch of windows: fused (B,), the threshold, and each component."""

    fused: np.ndarray
    threshold: float
    components: dict[str, ComponentScores]

    def __len__(self) -> int:
        return int(self.fused.shape[0])

    @property
    def anomalous(self) -> np.ndarray:
        return self.fused > self.threshold

    def row(self, i: int) -> SiteScore:
        comps = {name: (float(c.raw[i]), float(c.surprise[i])) for name, c in self.components.items()}
        driver = max(comps, key=lambda name: comps[name][1])
        return SiteScore(float(self.fused[i]), float(self.threshold), comps, driver)

    def rows(self) -> list[SiteScore]:
        return [self.row(i) for i in range(len(self))]


# --------------------------------------------------------------------------------------------
# The enrolment
# --------------------------------------------------------------------------------------------


@dataclass
class Enrolment:
    """A fitted enrolment; build it with ``fit_enrolment`` or ``Enrolment.load``."""

    data: WindowSet
    refs: list[WindowRef]
    exemplars: WindowSet
    indicator_names: tuple[str, ...]
    false_alarm_rate: float
    knn_k: int
    meta: dict[str, Any]
    # fitted state
    indicator_model: IndicatorModel
    bank: np.ndarray | None
    """The enrolled windows' embeddings at unit length (``l2_normalise``): the knn references."""
    fits: dict[str, SurpriseFit]
    folds: np.ndarray
    oof: dict[str, np.ndarray]
    oof_fused: np.ndarray
    threshold: float
    threshold_fit: dict[str, Any] | None
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    envelope_model: EnvelopeModel | None = None
    """Per-bin normal range of the envelope spectrum (with profiles), fitted on all windows."""
    _knn_cache: tuple[np.ndarray, np.ndarray | None] | None = field(default=None, init=False, repr=False, compare=False)
    _spectrum_cache: tuple[SpectrumBank, SpectrumBank] | None = field(
        default=None, init=False, repr=False, compare=False
    )

    @property
    def components(self) -> tuple[str, ...]:
        """Components present, in ``COMPONENTS`` order."""
        return tuple(c for c in COMPONENTS if c in self.fits)

    @property
    def n_windows(self) -> int:
        return len(self.data)

    @property
    def threshold_method(self) -> str:
        """How the threshold was set: the fused fit (gamma or empirical) or the Bonferroni floor."""
        if self.threshold <= bonferroni_threshold(len(self.fits), self.false_alarm_rate) + 1e-12:
            return "bonferroni floor"
        return "gamma fit" if self.threshold_fit is not None else "empirical quantile"

    @property
    def bundle_sha(self) -> str | None:
        sha = self.meta.get("bundle_sha")
        return None if sha is None else str(sha)

    # -- scoring ------------------------------------------------------------------------------
    def raw_scores(
        self,
        indicators: np.ndarray,
        embeddings: np.ndarray | None = None,
        ce: np.ndarray | None = None,
        profiles: np.ndarray | None = None,
    ) -> dict[str, np.ndarray]:
        """Each component's raw score of a batch, with the full enrolment as references.

        Inputs an enrolment has no component for are ignored (e.g. profiles given to an
        enrolment fitted without them); a missing input it needs is a ``ValueError``.
        """
        x = np.atleast_2d(np.asarray(indicators, dtype=np.float64))
        if x.shape[1] != len(self.indicator_names):
            raise ValueError(f"got {x.shape[1]} indicators per window, the enrolment has {len(self.indicator_names)}")
        out = {INDICATORS: self.indicator_model.score(x, self.exemplars.indicators)}
        if any(name in self.fits for name in PROFILE_COMPONENTS):
            if profiles is None:
                raise ValueError(
                    "this enrolment has spectrum and envelope components: pass the windows' spectral profiles "
                    "(edge_asd.core.spectra.profile)"
                )
            prof = np.atleast_2d(np.asarray(profiles, dtype=np.float32))
            if prof.shape[1] != PROFILE_SIZE:
                raise ValueError(f"got spectral profiles of {prof.shape[1]} values, expected {PROFILE_SIZE}")
            if SPECTRUM in self.fits:
                bank, ex_bank = self._spectrum_banks()
                out[SPECTRUM] = spectrum_component(prof[:, POWER_SLICE], bank, ex_bank)
            if ENVELOPE in self.fits:
                assert self.envelope_model is not None and self.exemplars.profiles is not None
                out[ENVELOPE] = self.envelope_model.score(
                    prof[:, ENVELOPE_SLICE], self.exemplars.profiles[:, ENVELOPE_SLICE]
                )
        if KNN in self.fits:
            if embeddings is None:
                raise ValueError("this enrolment has a knn component: pass the windows' embeddings")
            bank, exemplars = self._knn_banks()
            out[KNN] = knn_component(embeddings, bank, exemplars, self.knn_k, normalised=True)
        if CE in self.fits:
            if ce is None:
                raise ValueError("this enrolment has a ce component: pass the windows' ce scores")
            out[CE] = np.asarray(ce, dtype=np.float64).reshape(-1)
        n = x.shape[0]
        for name, values in out.items():
            if values.shape != (n,):
                raise ValueError(f"component {name}: {values.shape[0]} scores for {n} windows")
        return out

    def score(
        self,
        indicators: np.ndarray,
        embeddings: np.ndarray | None = None,
        ce: np.ndarray | None = None,
        profiles: np.ndarray | None = None,
    ) -> SiteScores:
        """Fused score, threshold and every component (raw, surprise) of a batch of windows."""
        raw = self.raw_scores(indicators, embeddings, ce, profiles)
        # A non-finite raw score (a broken input) is a missing one: surprise 0, never NaN, so it
        # can neither hide the other components in the maximum nor raise an alarm by itself.
        # (A surprise is clipped to [0, SURPRISE_MAX]: finite, or NaN from a NaN score.)
        comps = {}
        for name, values in raw.items():
            surprise = self.fits[name].surprise(values)
            comps[name] = ComponentScores(values, np.where(np.isfinite(values) & np.isfinite(surprise), surprise, 0.0))
        fused = np.max(np.stack([c.surprise for c in comps.values()]), axis=0)
        return SiteScores(fused, float(self.threshold), comps)

    def _knn_banks(self) -> tuple[np.ndarray, np.ndarray | None]:
        """(bank, exemplar embeddings) at unit length, the exemplars made so once and cached:
        every window's ``knn`` compares against them, and normalising them (and the bank,
        which is unit length from the start) again each window cost more than the
        comparison. The bank is not copied: it is the enrolment's own ``bank``."""
        if self._knn_cache is None:
            assert self.bank is not None
            exemplars = self.exemplars.embeddings
            has_exemplars = exemplars is not None and len(exemplars) > 0
            self._knn_cache = (self.bank, l2_normalise(exemplars) if has_exemplars else None)
        return self._knn_cache

    def _spectrum_banks(self) -> tuple[SpectrumBank, SpectrumBank]:
        """(enrolled windows, exemplars) as ``spectrum`` references, cached."""
        if self._spectrum_cache is None:
            assert self.data.profiles is not None and self.exemplars.profiles is not None
            self._spectrum_cache = (
                SpectrumBank(self.data.profiles[:, POWER_SLICE]),
                SpectrumBank(self.exemplars.profiles[:, POWER_SLICE]),
            )
        return self._spectrum_cache

    def explain(self, indicator_vector: np.ndarray) -> Explanation:
        """Which indicators of one window moved, against the enrolled normal (words and numbers)."""
        m = self.indicator_model
        return explain_vector(indicator_vector, self.indicator_names, m.median, m.scale)

    # -- feedback -----------------------------------------------------------------------------
    def add_normal(
        self,
        indicators: np.ndarray,
        embeddings: np.ndarray | None = None,
        ce: np.ndarray | None = None,
        profiles: np.ndarray | None = None,
    ) -> Enrolment:
        """A new enrolment with these windows as normal exemplars and a re-derived threshold.

        The windows join the references (exemplars of every component but ``ce``, for every
        fold) and never the held-out set the threshold is fitted on.
        """
        new = WindowSet(indicators, embeddings, ce, profiles)
        if KNN in self.fits and new.embeddings is None:
            raise ValueError("this enrolment has a knn component: feedback windows need their embeddings")
        if self.data.profiles is not None and new.profiles is None:
            raise ValueError(
                "this enrolment has spectrum and envelope components: feedback windows need their spectral profiles"
            )
        if new.embeddings is not None and self.data.embeddings is None:
            new = WindowSet(new.indicators, None, new.ce, new.profiles)
        if new.ce is not None and self.data.ce is None:
            new = WindowSet(new.indicators, new.embeddings, None, new.profiles)
        if new.profiles is not None and self.data.profiles is None:
            new = WindowSet(new.indicators, new.embeddings, new.ce, None)
        exemplars = self.exemplars.append(new, keep_last=MAX_EXEMPLARS)
        meta = dict(self.meta)
        meta["feedback_normal_windows"] = int(meta.get("feedback_normal_windows", 0)) + len(new)
        meta["feedback_updated"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        return _fit(
            self.data, self.refs, exemplars, names=self.indicator_names, false_alarm_rate=self.false_alarm_rate,
            knn_k=self.knn_k, meta=meta, created=self.created,
        )  # fmt: skip

    def with_feedback_of(self, old: Enrolment) -> Enrolment:
        """This (new) enrolment with the normal exemplars an operator taught ``old``.

        A re-enrolment learns the machine anew; what an operator already said was a false
        alarm is still true of it, and must not ring again because someone re-enrolled.
        ``ValueError`` when the two cannot share exemplars (another indicator set, or a
        component whose features the old exemplars lack)."""
        if len(old.exemplars) == 0:
            return self
        if tuple(old.indicator_names) != tuple(self.indicator_names):
            raise ValueError("the previous enrolment has other indicators: its feedback cannot be carried over")
        ex = old.exemplars
        carried = self.add_normal(ex.indicators, ex.embeddings, ex.ce, profiles=ex.profiles)
        carried.meta["feedback_normal_windows"] = int(old.meta.get("feedback_normal_windows", len(ex)))
        carried.meta["feedback_events"] = list(old.meta.get("feedback_events") or [])
        carried.meta["feedback_carried_from"] = old.created
        return carried

    # -- reporting ----------------------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        """What ``enrol`` prints and stores: windows, threshold, rule, each component's fit."""
        comps = {}
        for name in self.components:
            oof = self.oof[name]
            fit = self.fits[name]
            comps[name] = {
                "method": fit.method,
                "fit": fit.fit,
                "median": float(np.median(oof)),
                "p99": float(np.quantile(oof, 0.99)),
                "max": float(oof.max()),
            }
        return {
            "windows": self.n_windows,
            "segments": len({r.segment for r in self.refs}),
            "folds": int(self.folds.max()) + 1,
            "exemplars": len(self.exemplars),
            "threshold": float(self.threshold),
            "threshold_method": self.threshold_method,
            "false_alarm_rate": float(self.false_alarm_rate),
            "oof_fused_max": float(self.oof_fused.max()),
            "holdout_rule": HOLDOUT_RULE,
            "fusion": "max surprise over components (Tippett)",
            "indicator_shrinkage": float(self.indicator_model.shrinkage),
            "components": comps,
        }

    # -- persistence --------------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        """Write the arrays (``enrolment-<sha>.npz``), then ``enrolment.json``, the commit point.

        Earlier array files of the folder are removed once the JSON names the new one.
        """
        directory = Path(directory)
        segments = self._segment_index()  # once: a 2-hour enrolment has 7200 refs
        arrays: dict[str, np.ndarray] = {
            "indicators": self.data.indicators,
            "ref_segment": np.asarray([segments[r.segment] for r in self.refs], dtype=np.int64),
            "ref_start": np.asarray([r.start for r in self.refs], dtype=np.int64),
            "folds": self.folds.astype(np.int64),
            "ex_indicators": self.exemplars.indicators,
            "ind_median": self.indicator_model.median,
            "ind_scale": self.indicator_model.scale,
            "ind_center": self.indicator_model.center,
            "ind_precision": self.indicator_model.precision,
            "oof_fused": self.oof_fused,
        }
        if self.data.embeddings is not None:
            arrays["embeddings"] = self.data.embeddings
            arrays["ex_embeddings"] = self.exemplars.embeddings  # type: ignore[assignment]
        if self.data.ce is not None:
            arrays["ce"] = self.data.ce
            arrays["ex_ce"] = self.exemplars.ce  # type: ignore[assignment]
        if self.data.profiles is not None:
            assert self.envelope_model is not None
            arrays["profiles"] = self.data.profiles
            arrays["ex_profiles"] = self.exemplars.profiles  # type: ignore[assignment]
            arrays["env_median"] = self.envelope_model.median
            arrays["env_scale"] = self.envelope_model.scale
        for name in self.components:
            arrays[f"oof_{name}"] = self.oof[name]
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        blob = buf.getvalue()
        digest = hashlib.sha256(blob).hexdigest()
        npz_name = f"{NPZ_PREFIX}{digest[:16]}.npz"
        atomic_write_bytes(directory / npz_name, blob)
        doc = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "created": self.created,
            "edge_asd_version": self.meta.get("edge_asd_version") or _edge_asd_version(),
            "meta": self.meta,
            "false_alarm_rate": self.false_alarm_rate,
            "threshold": _finite(self.threshold),
            "threshold_fit": self.threshold_fit,
            "components": list(self.components),
            "fits": {name: self.fits[name].fit for name in self.components},
            "indicator_names": list(self.indicator_names),
            "indicator_shrinkage": self.indicator_model.shrinkage,
            "knn_k": self.knn_k,
            "profile_size": None if self.data.profiles is None else PROFILE_SIZE,
            "holdout_rule": HOLDOUT_RULE,
            "fusion": "max surprise over components (Tippett)",
            "segments": list(segments),
            "npz": npz_name,
            "npz_sha256": digest,
            "summary": self.summary(),
        }
        atomic_write_text(directory / ENROLMENT_JSON, json.dumps(doc, indent=2, allow_nan=False) + "\n")
        for old in directory.glob(f"{NPZ_PREFIX}*.npz"):
            if old.name != npz_name:
                with contextlib.suppress(OSError):
                    old.unlink()
        return directory

    def _segment_index(self) -> dict[str, int]:
        index: dict[str, int] = {}
        for r in self.refs:
            index.setdefault(r.segment, len(index))
        return index

    @classmethod
    def load(cls, directory: str | Path) -> Enrolment:
        """Read an enrolment written by ``save``; ``EnrolmentError`` saying what to do otherwise."""
        return load_enrolment(directory)


# --------------------------------------------------------------------------------------------
# Fitting
# --------------------------------------------------------------------------------------------


def fit_enrolment(
    indicators: np.ndarray,
    embeddings: np.ndarray | None,
    ce: np.ndarray | None,
    refs: Sequence[WindowRef],
    *,
    false_alarm_rate: float = DEFAULT_FALSE_ALARM_RATE,
    meta: Mapping[str, Any] | None = None,
    knn_k: int = DEFAULT_KNN_K,
    indicator_names: Sequence[str] | None = None,
    profiles: np.ndarray | None = None,
) -> Enrolment:
    """Fit an enrolment from per-window features of normal audio and their provenance.

    ``indicators`` (N, K) (``edge_asd.core.indicators``; names default to ``INDICATOR_NAMES``),
    ``embeddings`` (N, D) or None (no ``knn`` component), ``ce`` (N,) or None (a stream without
    classes: no ``ce`` component), ``refs`` one ``WindowRef`` per row, ``profiles``
    (N, ``PROFILE_SIZE``) spectral profiles (``edge_asd.core.spectra``) or None (no ``spectrum``
    and ``envelope`` components). ``false_alarm_rate`` is the per-window probability the
    threshold is set at (``false_alarm_rate_for``).
    """
    data = WindowSet(indicators, embeddings, ce, profiles)
    refs = list(refs)
    if len(refs) != len(data):
        raise ValueError(f"{len(refs)} window refs for {len(data)} windows")
    if not 0.0 < false_alarm_rate < 1.0:
        raise ValueError(f"false_alarm_rate must be in (0, 1), got {false_alarm_rate}")
    k = data.indicators.shape[1]
    if indicator_names is None:
        if k != len(INDICATOR_NAMES):
            raise ValueError(f"{k} indicators per window but the indicator set has {len(INDICATOR_NAMES)}: pass names")
        indicator_names = INDICATOR_NAMES
    names = tuple(indicator_names)
    if len(names) != k:
        raise ValueError(f"{len(names)} indicator names for {k} indicators per window")
    full_meta = {"edge_asd_version": _edge_asd_version(), **dict(meta or {})}
    full_meta.setdefault("windows", len(data))
    full_meta.setdefault("holdout_rule", HOLDOUT_RULE)
    return _fit(
        data, refs, WindowSet.empty_like(data), names=names, false_alarm_rate=float(false_alarm_rate),
        knn_k=int(knn_k), meta=full_meta,
    )  # fmt: skip


def _fit(
    data: WindowSet,
    refs: list[WindowRef],
    exemplars: WindowSet,
    *,
    names: tuple[str, ...],
    false_alarm_rate: float,
    knn_k: int,
    meta: dict[str, Any],
    created: str | None = None,
) -> Enrolment:
    """Steps 1-5 of the module docstring."""
    folds = assign_folds(refs)
    plan = cross_fit_plan(refs, folds)
    floors = scale_floors(names)
    n = len(data)
    oof: dict[str, np.ndarray] = {INDICATORS: np.empty(n)}
    if data.embeddings is not None:
        oof[KNN] = np.empty(n)
    ex_bank = ex_envelope = None
    if data.profiles is not None:
        assert exemplars.profiles is not None
        oof[SPECTRUM] = np.empty(n)
        oof[ENVELOPE] = np.empty(n)
        ex_bank = SpectrumBank(exemplars.profiles[:, POWER_SLICE])  # the same for every fold
        ex_envelope = exemplars.profiles[:, ENVELOPE_SLICE]
    for held, ref_idx in plan:
        model = fit_indicator_model(data.indicators[ref_idx], floors)
        oof[INDICATORS][held] = model.score(data.indicators[held], exemplars.indicators)
        if data.embeddings is not None:
            oof[KNN][held] = knn_component(
                data.embeddings[held], data.embeddings[ref_idx], exemplars.embeddings, knn_k
            )
        if data.profiles is not None:
            held_prof, ref_prof = data.profiles[held], data.profiles[ref_idx]
            oof[SPECTRUM][held] = spectrum_component(
                held_prof[:, POWER_SLICE], SpectrumBank(ref_prof[:, POWER_SLICE]), ex_bank
            )
            oof[ENVELOPE][held] = fit_envelope_model(ref_prof[:, ENVELOPE_SLICE]).score(
                held_prof[:, ENVELOPE_SLICE], ex_envelope
            )
    if data.ce is not None:
        oof[CE] = data.ce.copy()  # the model's own score: no references to hold out
    oof = {name: oof[name] for name in COMPONENTS if name in oof}
    fits = {name: fit_surprise(values, f"component {name}") for name, values in oof.items()}
    oof_fused = np.max(np.stack([fits[name].surprise(values) for name, values in oof.items()]), axis=0)
    fitted, threshold_fit = threshold_for(oof_fused, false_alarm_rate, "fused site score")
    threshold = max(fitted, bonferroni_threshold(len(oof), false_alarm_rate))
    model = fit_indicator_model(data.indicators, floors)
    bank = None if data.embeddings is None else l2_normalise(data.embeddings)
    envelope_model = None if data.profiles is None else fit_envelope_model(data.profiles[:, ENVELOPE_SLICE])
    logger.info(
        "enrolment: %d windows in %d folds, components %s, threshold %.3f",
        n, int(folds.max()) + 1, ", ".join(oof), threshold,
    )  # fmt: skip
    kwargs = {} if created is None else {"created": created}
    return Enrolment(
        data=data, refs=refs, exemplars=exemplars, indicator_names=names, false_alarm_rate=false_alarm_rate,
        knn_k=knn_k, meta=meta, indicator_model=model, bank=bank, fits=fits, folds=folds, oof=oof,
        oof_fused=oof_fused, threshold=float(threshold), threshold_fit=threshold_fit,
        envelope_model=envelope_model, **kwargs,
    )  # fmt: skip


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def _corrupt(directory: Path, why: str) -> EnrolmentError:
    return EnrolmentError(
        f"enrolment in {directory} is unusable ({why}): delete the folder and re-enrol with `edge-asd enrol`"
    )


def read_enrolment_json(directory: str | Path) -> dict[str, Any]:
    """The validated ``enrolment.json`` of a folder (format and version checked)."""
    directory = Path(directory)
    path = directory / ENROLMENT_JSON
    if not path.is_file():
        raise EnrolmentError(f"no enrolment in {directory} ({ENROLMENT_JSON} is missing): run `edge-asd enrol` first")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise _corrupt(directory, f"{ENROLMENT_JSON} is not valid JSON: {err}") from err
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise _corrupt(directory, f"{ENROLMENT_JSON} is not an edge-asd enrolment")
    if doc.get("version") != FORMAT_VERSION:
        raise EnrolmentError(
            f"enrolment in {directory} has format version {doc.get('version')!r}; this edge-asd reads version "
            f"{FORMAT_VERSION}: re-enrol with `edge-asd enrol` (or use the edge-asd that wrote it)"
        )
    return doc


def load_enrolment(directory: str | Path) -> Enrolment:
    """Load and check an enrolment folder (see ``Enrolment.save``)."""
    directory = Path(directory)
    doc = read_enrolment_json(directory)
    npz_name = str(doc.get("npz", ""))
    if not npz_name.startswith(NPZ_PREFIX) or "/" in npz_name or "\\" in npz_name:
        raise _corrupt(directory, f"{ENROLMENT_JSON} names no array file")
    try:
        blob = (directory / npz_name).read_bytes()
    except OSError as err:
        raise _corrupt(directory, f"cannot read {npz_name}: {err}") from err
    if hashlib.sha256(blob).hexdigest() != doc.get("npz_sha256"):
        raise _corrupt(directory, f"{npz_name} does not match the checksum in {ENROLMENT_JSON}")
    try:
        with np.load(io.BytesIO(blob), allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
        components = tuple(doc["components"])
        names = tuple(str(x) for x in doc["indicator_names"])
        segments = [str(s) for s in doc["segments"]]
        refs = [WindowRef(segments[int(s)], int(t)) for s, t in zip(arrays["ref_segment"], arrays["ref_start"])]
        has_knn = KNN in components
        has_ce = CE in components
        has_profiles = any(name in components for name in PROFILE_COMPONENTS)
        if has_profiles and doc.get("profile_size") != PROFILE_SIZE:
            raise EnrolmentError(
                f"enrolment in {directory} holds spectral profiles of {doc.get('profile_size')!r} values; this "
                f"edge-asd computes {PROFILE_SIZE}: re-enrol with `edge-asd enrol`"
            )
        data = WindowSet(
            arrays["indicators"], arrays["embeddings"] if has_knn else None, arrays["ce"] if has_ce else None,
            arrays["profiles"] if has_profiles else None,
        )  # fmt: skip
        exemplars = WindowSet(
            arrays["ex_indicators"], arrays["ex_embeddings"] if has_knn else None, arrays["ex_ce"] if has_ce else None,
            arrays["ex_profiles"] if has_profiles else None,
        )  # fmt: skip
        envelope_model = (
            EnvelopeModel(np.asarray(arrays["env_median"], np.float64), np.asarray(arrays["env_scale"], np.float64))
            if has_profiles
            else None
        )
        model = IndicatorModel(
            arrays["ind_median"], arrays["ind_scale"], arrays["ind_center"], arrays["ind_precision"],
            float(doc["indicator_shrinkage"]),
        )  # fmt: skip
        oof = {name: np.asarray(arrays[f"oof_{name}"], dtype=np.float64) for name in components}
        fits = {name: SurpriseFit(np.sort(oof[name]), doc["fits"].get(name)) for name in components}
        enrolment = Enrolment(
            data=data, refs=refs, exemplars=exemplars, indicator_names=names,
            false_alarm_rate=float(doc["false_alarm_rate"]), knn_k=int(doc["knn_k"]), meta=dict(doc.get("meta") or {}),
            indicator_model=model, bank=None if data.embeddings is None else l2_normalise(data.embeddings),
            fits=fits, folds=np.asarray(arrays["folds"], dtype=np.int64), oof=oof,
            oof_fused=np.asarray(arrays["oof_fused"], dtype=np.float64), threshold=float(doc["threshold"]),
            threshold_fit=doc.get("threshold_fit"), created=str(doc.get("created", "")),
            envelope_model=envelope_model,
        )  # fmt: skip
    except (KeyError, ValueError, TypeError, IndexError, OSError, EOFError) as err:
        raise _corrupt(directory, f"{type(err).__name__}: {err}") from err
    k = len(names)
    if len(refs) != len(data) or model.median.shape != (k,) or model.precision.shape != (k, k):
        raise _corrupt(directory, "array shapes disagree")
    env = enrolment.envelope_model
    if env is not None and not (env.median.shape == env.scale.shape == (N_ENVELOPE,)):
        raise _corrupt(directory, "envelope statistics have the wrong shape")
    return enrolment


__all__ = [
    "DEFAULT_FALSE_ALARMS_PER_DAY",
    "DEFAULT_FALSE_ALARM_RATE",
    "ENROLMENT_JSON",
    "NPZ_PREFIX",
    "FORMAT",
    "FORMAT_VERSION",
    "MAX_EXEMPLARS",
    "bonferroni_threshold",
    "ComponentScores",
    "Enrolment",
    "EnrolmentError",
    "SiteScore",
    "SiteScores",
    "WindowSet",
    "false_alarm_rate_for",
    "fit_enrolment",
    "load_enrolment",
    "read_enrolment_json",
    "scale_floors",
]
