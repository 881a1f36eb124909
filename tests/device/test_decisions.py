"""The per-stream event state machine: warm-up, patience, hysteresis, max_quiet, cooldown,
fault pause and the event payload."""

from __future__ import annotations

import random

import pytest

from edge_asd.config import DecisionConfig
from edge_asd.decisions import DecisionEngine

pytestmark = pytest.mark.device

THR = 1.0


def _engine(**cfg) -> DecisionEngine:
    base = {"warmup_windows": 0, "patience": 3, "off_ratio": 0.8, "max_quiet": 2, "cooldown_s": 0.0, "update_every": 100}
    base.update(cfg)
    return DecisionEngine(
        "mic1", ["fan/id_00"], DecisionConfig(**base), model={"name": "m", "sha": "abc"},
        window_s=10.0, hop_s=1.0, rng=random.Random(0),
    )


def _feed(engine: DecisionEngine, scores, t0: float = 10.0, fault_at=()) -> list:
    out = []
    for k, s in enumerate(scores):
        t = t0 + k
        out.append(engine.update(t, 1_700_000_000.0 + t, s, THR, fault=k in fault_at))
    return out


def _kinds(transitions) -> list[str]:
    return [kind for step in transitions for kind, _b, _a in step]


def test_patience_opens_after_consecutive_windows() -> None:
    e = _engine()
    steps = _feed(e, [2, 2, 0.5, 2, 2, 3])
    assert _kinds(steps) == ["new"]
    assert steps[5][0][0] == "new" and e.active  # third consecutive above threshold
    kind, before, after = steps[5][0]
    assert before is None and after["active"] and after["windows"] == 3
    assert after["start_time"] == 13.0  # first window of the opening run


def test_warmup_suppresses_first_windows() -> None:
    e = _engine(warmup_windows=5)
    assert _kinds(_feed(e, [9] * 5)) == []
    assert _kinds(_feed(e, [9] * 3, t0=20)) == ["new"]


def test_hysteresis_and_max_quiet_close() -> None:
    e = _engine()
    steps = _feed(e, [2, 2, 2, 0.9, 0.85, 0.9, 0.7, 0.9, 0.7, 0.6])
    # 0.9/0.85 are below the threshold but above off_ratio*thr = 0.8: still active;
    # one quiet window (0.7) is not enough with max_quiet=2; two in a row end it.
    assert _kinds(steps) == ["new", "end"]
    kind, before, after = steps[9][0]
    assert kind == "end" and before["active"] and not after["active"]
    assert after["end_time"] == 17.0  # last window at or above the off level
    assert after["end_wall"] == 1_700_000_017.0
    assert after["windows"] == 10 and after["peak_score"] == 2
    assert after["mean_score"] == pytest.approx(sum([2, 2, 2, 0.9, 0.85, 0.9, 0.7, 0.9, 0.7, 0.6]) / 10)
    assert not e.active


def test_cooldown_blocks_new_event() -> None:
    e = _engine(cooldown_s=5.0)
    _feed(e, [2, 2, 2, 0.1, 0.1])  # ends at t=14
    steps = _feed(e, [2, 2, 2, 2, 2, 2], t0=15)  # t=15..20; cooldown until t>=19
    kinds = _kinds(steps)
    assert kinds == ["new"]
    assert [bool(s) for s in steps].index(True) == 4  # opened at t=19, not at t=17
    assert steps[4][0][2]["start_time"] == 17.0  # the last `patience` windows open it


def test_fault_pauses_and_never_opens() -> None:
    e = _engine()
    assert _kinds(_feed(e, [2, 2, None, 2, 2], fault_at={2})) == []  # run broken by the fault
    assert _kinds(_feed(e, [None] * 10, t0=30, fault_at=set(range(10)))) == []
    e2 = _engine()
    steps = _feed(e2, [2, 2, 2, None, None], fault_at={3, 4})
    assert _kinds(steps) == ["new", "end"]  # an active event ends when the mic dies
    assert e.fault_windows == 11


def test_updates_on_peak_rise_and_every_n() -> None:
    e = _engine(update_every=3, max_quiet=50)
    steps = _feed(e, [2, 2, 2, 5, 1.5, 1.5, 1.5, 1.5])
    assert _kinds(steps) == ["new", "update", "update"]
    kind, before, after = steps[3][0]
    assert before["peak_score"] == 2 and after["peak_score"] == 5
    assert steps[6][0][0] == "update"


def test_event_fields_and_evidence() -> None:
    e = _engine()
    steps = _feed(e, [2, 2, 3])
    ev = steps[2][0][2]
    assert set(ev) == {
        "id", "stream", "classes", "start_time", "end_time", "start_wall", "end_wall", "peak_score",
        "mean_score", "threshold", "windows", "model", "window_s", "hop_s", "active", "evidence",
        "score_kind", "components", "explanation",
    }
    assert ev["score_kind"] == "bundle" and ev["components"] is None and ev["explanation"] is None
    start_ts, rand = ev["id"].split("-")
    assert float(start_ts) == ev["start_wall"] and len(rand) == 6 and rand.isalnum()
    assert ev["stream"] == "mic1" and ev["classes"] == ["fan/id_00"] and ev["model"] == {"name": "m", "sha": "abc"}
    assert ev["end_time"] is None and ev["end_wall"] is None and ev["evidence"] is None
    assert ev["threshold"] == THR and ev["window_s"] == 10.0 and ev["hop_s"] == 1.0
    e.set_evidence("/x/y.wav")
    kind, before, after = e.close(20.0, 1_700_000_020.0)[0]
    assert kind == "end" and after["evidence"] == "/x/y.wav" and after["active"] is False


def test_config_validation() -> None:
    with pytest.raises(ValueError):
        DecisionConfig(patience=0)
    with pytest.raises(ValueError):
        DecisionConfig(off_ratio=1.5)


def test_defaults_are_the_configs() -> None:
    """The engine has no defaults of its own: without a config it runs the config's."""
    engine = DecisionEngine("mic1", ["fan/id_00"], hop_s=1.0)
    assert engine.config == DecisionConfig()
    assert (engine.config.warmup_windows, engine.config.max_quiet, engine.config.cooldown_s) == (3, 3, 30.0)
    assert engine.window_s == 10.0
