"""Enrolment math on synthetic feature vectors: fit, score, fuse, explain, feedback, save/load."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from edge_asd.core.constants import SAMPLE_RATE
from edge_asd.core.indicators import INDICATOR_NAMES, INDICATORS
from edge_asd.core.site import WindowRef, fit_enrolment, load_enrolment
from edge_asd.core.site.enrolment import (
    ENROLMENT_JSON,
    FORMAT_VERSION,
    EnrolmentError,
    bonferroni_threshold,
    false_alarm_rate_for,
)
from edge_asd.core.site.explain import LEVEL_NOTE
from edge_asd.core.site.normalise import SURPRISE_MAX, fit_surprise
from edge_asd.core.thresholds import threshold_for

pytestmark = pytest.mark.device

K = len(INDICATORS)
IDX = {name: i for i, name in enumerate(INDICATOR_NAMES)}


LOADINGS = np.random.default_rng(99).normal(0.0, 0.38 / 2.0, (4, K))
"""Real indicators move together (load and speed move level, bands, crest factor): four
latent factors carry most of each indicator's normal spread (about 0.4), noise the rest."""


def _normal(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Correlated indicators around plausible medians, embeddings near one direction, gamma ce."""
    rng = np.random.default_rng(seed)
    center = np.zeros(K)
    center[IDX["rms_level"]] = -30.0
    center[IDX["crest_factor"]] = 10.2
    center[IDX["band_2500hz"]] = -20.0
    x = center + rng.standard_normal((n, 4)) @ LOADINGS + rng.normal(0.0, 0.12, (n, K))
    base = np.random.default_rng(1234).standard_normal(128)  # the same machine in every call
    emb = (base + 0.3 * rng.standard_normal((n, 128))).astype(np.float32)
    ce = rng.gamma(3.0, 0.5, n)
    return x, emb, ce


def _refs(n: int) -> list[WindowRef]:
    return [WindowRef("rec-0", i * SAMPLE_RATE) for i in range(n)]


@pytest.fixture(scope="module")
def enrolment():
    x, emb, ce = _normal(400, 0)
    return fit_enrolment(x, emb, ce, _refs(400), meta={"bundle_sha": "ab" * 32, "stream": "press"})


def test_normal_windows_stay_under_and_a_moved_indicator_goes_over(enrolment) -> None:
    x, emb, ce = _normal(50, 1)
    scores = enrolment.score(x, emb, ce)
    assert set(scores.components) == {"indicators", "knn", "ce"}
    assert scores.anomalous.mean() < 0.05
    moved = x.copy()
    moved[:, IDX["crest_factor"]] -= 2.1  # impacts weakened: crest factor 10.2 -> 8.1 dB (5 sigma)
    bad = enrolment.score(moved, emb, ce)
    assert bad.anomalous.all()
    assert all(bad.row(i).driver in ("indicators",) for i in range(len(bad)))
    # fused = max surprise over components (Tippett)
    stacked = np.stack([c.surprise for c in bad.components.values()])
    np.testing.assert_allclose(bad.fused, stacked.max(axis=0))


def test_threshold_is_the_fused_fit_or_the_bonferroni_floor(enrolment) -> None:
    fitted, _ = threshold_for(enrolment.oof_fused, enrolment.false_alarm_rate)
    floor = bonferroni_threshold(len(enrolment.components), enrolment.false_alarm_rate)
    assert enrolment.threshold == pytest.approx(max(fitted, floor))
    assert enrolment.false_alarm_rate == pytest.approx(1.0 / 86400.0)
    assert false_alarm_rate_for(24.0, 1.0) == pytest.approx(24.0 / 86400.0)


def test_uninformative_component_cannot_dilute_an_informative_one() -> None:
    """One component at chance, one that separates: the fused score keeps the separation."""
    from edge_asd.core.site.metrics import auc

    x, emb, ce = _normal(300, 2)
    en = fit_enrolment(x, emb, ce, _refs(300))
    tx, temb, tce = _normal(60, 3)
    anomalies = tx[30:].copy()
    anomalies[:, IDX["band_2500hz"]] += 2.0
    test_x = np.vstack([tx[:30], anomalies])
    labels = np.r_[np.zeros(30), np.ones(30)]
    s = en.score(test_x, temb, tce)  # knn and ce see nothing
    assert auc(labels, s.components["knn"].raw) < 0.75
    assert auc(labels, s.fused) >= 0.97


def test_site_score_payload_is_strict_json(enrolment) -> None:
    x, emb, ce = _normal(3, 4)
    x[0, IDX["rms_level"]] += 500.0  # absurd: surprise clips at 50, stays finite
    row = enrolment.score(x, emb, ce).row(0)
    doc = row.to_dict()
    text = json.dumps(doc, allow_nan=False)
    assert json.loads(text)["components"]["indicators"]["surprise"] == SURPRISE_MAX
    assert doc["anomalous"] is True and set(doc["components"]) == set(enrolment.components)


def test_surprise_is_monotone_and_uses_the_empirical_tail_without_a_fit() -> None:
    fit = fit_surprise(np.random.default_rng(5).gamma(2.0, 1.0, 200))
    assert fit.method == "gamma"
    s = fit.surprise(np.array([0.0, 1.0, 3.0, 10.0, 1e6]))
    assert np.all(np.diff(s) >= 0) and s[0] == 0.0 and s[-1] == SURPRISE_MAX
    few = fit_surprise(np.array([1.0, 2.0, 3.0]))  # too few for a gamma fit
    assert few.method == "empirical"
    t = few.surprise(np.array([0.5, 2.0, 4.0, 8.0]))
    assert np.all(np.diff(t) > 0) and np.all(np.isfinite(t))


def test_gamma_surprise_of_a_batch_equals_each_score_alone_and_the_tail_formula() -> None:
    """The gamma surprise runs in Python floats a score at a time (the daemon asks for one
    window's): a batch gets each score's own number, which is -log10 of the tail probability
    clipped to [0, SURPRISE_MAX]; a non-finite score gets SURPRISE_MAX, as its p of 0 says."""
    fit = fit_surprise(np.random.default_rng(6).gamma(3.0, 0.5, 300))
    assert fit.method == "gamma"
    scores = np.array([-1.0, 0.2, 1.5, 3.0, 6.0, 40.0, np.nan, np.inf])
    batch = fit.surprise(scores)
    assert batch.dtype == np.float64 and batch.shape == scores.shape
    for value, got in zip(scores, batch):
        assert fit.surprise(value)[0] == got
    p = fit.p_exceed(scores)
    expected = np.minimum(np.maximum(-np.log10(np.maximum(p, 10.0**-SURPRISE_MAX)), 0.0), SURPRISE_MAX)
    np.testing.assert_allclose(batch, expected, rtol=1e-12, atol=0)
    assert batch[0] == 0.0 and not np.signbit(batch[0]) and batch[-2] == batch[-1] == SURPRISE_MAX
    assert fit.surprise(np.array([[0.2, 1.5]])).shape == (1, 2)


def test_stream_without_classes_or_embeddings_scores() -> None:
    x, _, _ = _normal(120, 6)
    en = fit_enrolment(x, None, None, _refs(120))
    assert en.components == ("indicators",)
    s = en.score(x[:4])
    assert s.fused.shape == (4,) and set(s.components) == {"indicators"}
    with_emb = fit_enrolment(x, _normal(120, 6)[1], None, _refs(120))
    assert with_emb.components == ("indicators", "knn")
    with pytest.raises(ValueError, match="embeddings"):
        with_emb.score(x[:2])


def test_explanations_in_words_and_numbers(enrolment) -> None:
    x, _, _ = _normal(1, 7)
    v = x[0].copy()
    v[IDX["crest_factor"]] = 8.1
    v[IDX["band_2500hz"]] += 7.0
    ex = enrolment.explain(v)
    names = [m.name for m in ex.moved]
    assert names[:2] == ["band_2500hz", "crest_factor"]  # largest move first
    crest = ex.moved[1]
    assert crest.text.startswith("crest factor 8.1 dB, normal 10.2 +/- 0.")
    assert crest.unit == "dB" and crest.z < -3
    assert ex.moved[0].text.startswith("2.5 kHz band +7.")
    assert "crest factor" in ex.summary and ex.note is None
    lvl = x[0].copy()
    lvl[IDX["rms_level"]] += 6.0
    lvl[IDX["peak_level"]] += 6.0
    level_only = enrolment.explain(lvl)
    assert {m.kind for m in level_only.moved} == {"level"} and level_only.note == LEVEL_NOTE
    assert enrolment.explain(x[0]).moved == ()


def test_feedback_normal_silences_the_same_sound_and_rederives_the_threshold(enrolment) -> None:
    x, emb, ce = _normal(6, 8)
    x[:, IDX["band_2500hz"]] += 3.0  # a new, harmless sound at 2.5 kHz
    before = enrolment.score(x, emb, ce)
    assert before.anomalous.all()
    updated = enrolment.add_normal(x[:3], emb[:3], ce[:3])
    after = updated.score(x[3:], emb[3:], ce[3:])  # the same sound, other windows
    assert not after.anomalous.any()
    # exemplars join the references only: the held-out set (and its size) is unchanged
    assert updated.n_windows == enrolment.n_windows and len(updated.exemplars) == 3
    assert updated.oof_fused.shape == enrolment.oof_fused.shape
    assert np.all(updated.oof["indicators"] <= enrolment.oof["indicators"] + 1e-12)
    fitted, _ = threshold_for(updated.oof_fused, updated.false_alarm_rate)
    assert updated.threshold == pytest.approx(max(fitted, bonferroni_threshold(len(updated.fits), updated.false_alarm_rate)))
    assert updated.meta["feedback_normal_windows"] == 3
    # other anomalies still alert
    other = _normal(2, 9)
    moved = other[0].copy()
    moved[:, IDX["crest_factor"]] -= 2.1
    assert updated.score(moved, other[1], other[2]).anomalous.all()


def test_a_re_enrolment_keeps_what_operators_taught(enrolment) -> None:
    """Feedback "normal" survives a re-enrolment: the false alarm must not ring again."""
    x, emb, ce = _normal(6, 12)
    x[:, IDX["band_2500hz"]] += 3.0  # the harmless 2.5 kHz sound an operator marked normal
    taught = enrolment.add_normal(x[:3], emb[:3], ce[:3])
    taught.meta["feedback_events"] = ["1700000000-abcdef"]
    fresh = fit_enrolment(*_normal(300, 13), _refs(300), meta={"bundle_sha": "ab" * 32, "stream": "press"})
    assert fresh.score(x[3:], emb[3:], ce[3:]).anomalous.all()  # re-enrolled from scratch: it rings again
    kept = fresh.with_feedback_of(taught)
    assert not kept.score(x[3:], emb[3:], ce[3:]).anomalous.any()
    assert len(kept.exemplars) == 3 and kept.n_windows == fresh.n_windows
    assert kept.meta["feedback_events"] == ["1700000000-abcdef"] and kept.meta["feedback_normal_windows"] == 3
    assert kept.meta["feedback_carried_from"] == taught.created
    assert fresh.with_feedback_of(enrolment) is fresh  # nothing taught, nothing to carry
    moved = _normal(2, 14)
    bad = moved[0].copy()
    bad[:, IDX["crest_factor"]] -= 2.1
    assert kept.score(bad, moved[1], moved[2]).anomalous.all()  # other faults still alert


def test_save_load_round_trip(tmp_path: Path, enrolment) -> None:
    en = enrolment.add_normal(*[a[:2] for a in _normal(2, 10)])
    en.save(tmp_path / "e")
    back = load_enrolment(tmp_path / "e")
    x, emb, ce = _normal(8, 11)
    a, b = en.score(x, emb, ce), back.score(x, emb, ce)
    np.testing.assert_allclose(a.fused, b.fused)
    for name in a.components:
        np.testing.assert_allclose(a.components[name].raw, b.components[name].raw, rtol=1e-6)
    assert back.threshold == en.threshold and back.components == en.components
    assert back.refs == en.refs and back.meta["bundle_sha"] == "ab" * 32
    assert len(back.exemplars) == 2
    # re-fitting after a load gives the same enrolment as re-fitting before
    np.testing.assert_allclose(back.add_normal(x[:1], emb[:1], ce[:1]).threshold, en.add_normal(x[:1], emb[:1], ce[:1]).threshold)
    # a second save replaces the array file (one npz per folder)
    back.save(tmp_path / "e")
    assert len(list((tmp_path / "e").glob("*.npz"))) == 1
    doc = json.loads((tmp_path / "e" / ENROLMENT_JSON).read_text())
    assert doc["version"] == FORMAT_VERSION and "hold" in doc["holdout_rule"]


def test_missing_corrupt_and_other_version_enrolments_are_user_errors(tmp_path: Path, enrolment) -> None:
    with pytest.raises(EnrolmentError, match="edge-asd enrol"):
        load_enrolment(tmp_path / "nothing")
    folder = tmp_path / "e"
    enrolment.save(folder)
    npz = next(folder.glob("*.npz"))
    data = bytearray(npz.read_bytes())
    data[len(data) // 2] ^= 0xFF
    npz.write_bytes(bytes(data))
    with pytest.raises(EnrolmentError, match="checksum"):
        load_enrolment(folder)
    enrolment.save(folder)
    (folder / ENROLMENT_JSON).write_text("{not json")
    with pytest.raises(EnrolmentError, match="re-enrol"):
        load_enrolment(folder)
    enrolment.save(folder)
    doc = json.loads((folder / ENROLMENT_JSON).read_text())
    doc["version"] = FORMAT_VERSION + 1
    (folder / ENROLMENT_JSON).write_text(json.dumps(doc))
    with pytest.raises(EnrolmentError, match="version"):
        load_enrolment(folder)


def test_metrics_match_sklearn_and_hand_values() -> None:
    from edge_asd.core.site.metrics import auc, pauc

    y = np.array([0, 0, 1, 1])
    assert auc(y, np.array([0.1, 0.4, 0.35, 0.8])) == pytest.approx(0.75)
    assert auc(y, np.array([1.0, 1.0, 1.0, 1.0])) == pytest.approx(0.5)
    assert pauc(y, np.array([0.0, 0.1, 0.9, 1.0])) == pytest.approx(1.0)
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(12)
    for _ in range(5):
        labels = rng.integers(0, 2, 80)
        scores = np.round(rng.normal(labels * 0.8, 1.0), 1)  # ties on purpose
        assert auc(labels, scores) == pytest.approx(metrics.roc_auc_score(labels, scores))
        assert pauc(labels, scores) == pytest.approx(metrics.roc_auc_score(labels, scores, max_fpr=0.1))


def test_labels_from_every_layout(tmp_path: Path) -> None:
    from edge_asd.core.site.labels import LabelError, label_from_name, labelled_clips

    assert label_from_name("normal_id_00_00000000.wav") == 0
    assert label_from_name("anomaly_id_02_00000011.wav") == 1
    assert label_from_name("section_00_source_test_normal_0001_car_A1.wav") == 0
    assert label_from_name("section_01_target_test_anomaly_0003.wav") == 1
    assert label_from_name(tmp_path / "press" / "anomaly" / "ev1.wav", tmp_path) == 1
    assert label_from_name(tmp_path / "normal" / "rec.wav", tmp_path) == 0
    assert label_from_name("section_00_0001.wav") is None
    for rel in ("normal/a.wav", "anomaly/b.wav", "anomaly_id_00_00000001.wav", "misc/c.wav"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    labelled, unlabelled = labelled_clips(tmp_path)
    assert sorted(lab for _, lab in labelled) == [0, 1, 1] and [p.name for p in unlabelled] == ["c.wav"]
    with pytest.raises(LabelError, match="anomalous"):
        labelled_clips(tmp_path / "normal")


def test_core_site_is_torch_free(no_torch_guard) -> None:
    import importlib

    import edge_asd.core.site.enrolment

    importlib.reload(edge_asd.core.site.enrolment)
    assert math.isfinite(bonferroni_threshold(2, 1e-5))


def test_knn_is_scored_against_the_unit_bank_and_exemplars_normalised_once(enrolment) -> None:
    """The knn component keeps its references at unit length instead of normalising them for
    every window: the same distances as the one-call form (to float32 rounding), each
    enrolment with its own exemplars (a taught window is near an exemplar of the new
    enrolment only)."""
    from edge_asd.core.site.components import knn_component

    x, emb, ce = _normal(12, 21)
    far = emb.copy()
    far[:, :64] *= -1.0  # another sound to the embedding
    got = enrolment.raw_scores(x, far, ce)["knn"]
    direct = knn_component(far, enrolment.data.embeddings, enrolment.exemplars.embeddings, enrolment.knn_k)
    np.testing.assert_allclose(got, direct, rtol=1e-5, atol=1e-6)
    assert enrolment.raw_scores(x, far, ce)["knn"].tolist() == got.tolist()  # the cache changes nothing
    taught = enrolment.add_normal(x[:3], far[:3], ce[:3])
    np.testing.assert_allclose(taught.raw_scores(x[:3], far[:3], ce[:3])["knn"], 0.0, atol=1e-6)
    assert (enrolment.raw_scores(x[:3], far[:3], ce[:3])["knn"] > 0.1).all()  # the first one is untaught
    direct = knn_component(far, taught.data.embeddings, taught.exemplars.embeddings, taught.knn_k)
    np.testing.assert_allclose(taught.raw_scores(x, far, ce)["knn"], direct, rtol=1e-5, atol=1e-6)
