"""Site enrolment on the device path (onnxruntime, no torch): CLI, storage, feedback, evaluate-site."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from edge_asd.core.audio_io import write_wav
from edge_asd.core.constants import SAMPLE_RATE
from edge_asd.core.errors import UserError
from edge_asd.core.synth import make_stream_recording

pytestmark = pytest.mark.device
pytest.importorskip("onnxruntime")


def _run(args: list[str]):
    from edge_asd.cli import app

    return CliRunner().invoke(app, args)


def _fan(seconds: float, seed: int) -> np.ndarray:
    audio, _ = make_stream_recording("fan", 0, seconds, None, seed=seed)
    return audio


def _with_tone(audio: np.ndarray, hz: float = 2500.0, amplitude: float = 0.05) -> np.ndarray:
    t = np.arange(audio.size) / SAMPLE_RATE
    return (audio + amplitude * np.sin(2 * np.pi * hz * t)).astype(np.float32)


@pytest.fixture(scope="module")
def runtime(cached_bundle: Path):
    from engines.runtime import open_runtime

    with open_runtime(cached_bundle, backend="onnxruntime", max_batch=8) as rt:
        yield rt


def test_enrol_from_a_wav_without_classes(cached_bundle: Path, tmp_path: Path, no_torch_guard) -> None:
    from edge_asd.site.storage import bundle_sha, enrolment_status, load_stream_enrolment
    from engines.bundle import load_bundle

    wav = write_wav(tmp_path / "press line 1.wav", _fan(75.0, seed=1))
    state = tmp_path / "state"
    result = _run(["enrol", "--bundle", str(cached_bundle), "--wav", str(wav), "--state-dir", str(state),
                   "--backend", "onnxruntime"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "threshold" in result.output and "hold-out" in result.output and "indicators" in result.output
    sha = bundle_sha(load_bundle(cached_bundle))
    status = enrolment_status(state, "press_line_1", sha)  # default stream name: the WAV's stem, sanitised
    assert status.state == "ok", status.message
    en = load_stream_enrolment(state, "press_line_1", sha)
    assert en.components == ("indicators", "spectrum", "envelope", "knn")  # no --class: no ce
    assert en.n_windows == 66  # 75 s at a 1 s hop
    src = en.meta["source"]
    assert src["kind"] == "wav" and src["paths"] == [str(wav)] and src["minutes"] == pytest.approx(1.25)
    assert en.meta["bundle_sha"] == sha and en.meta["hop_s"] == 1.0
    assert int(en.folds.max()) + 1 == 2  # one 75 s recording: two halves


def test_re_enrolment_keeps_feedback_unless_told_to_forget(cached_bundle: Path, tmp_path: Path) -> None:
    from edge_asd.site.storage import bundle_sha, load_stream_enrolment, save_stream_enrolment
    from engines.bundle import load_bundle

    sha = bundle_sha(load_bundle(cached_bundle))
    state = tmp_path / "state"
    wav = write_wav(tmp_path / "fan.wav", _fan(40.0, seed=2))
    args = ["enrol", "--bundle", str(cached_bundle), "--wav", str(wav), "--state-dir", str(state), "--stream", "fan1",
            "--backend", "onnxruntime"]  # fmt: skip
    assert _run(args).exit_code == 0
    first = load_stream_enrolment(state, "fan1", sha)
    taught = first.add_normal(first.data.indicators[:4], first.data.embeddings[:4], profiles=first.data.profiles[:4])
    taught.meta["feedback_events"] = ["1700000000-abcdef"]
    save_stream_enrolment(taught, state, "fan1")  # what a feedback "normal" leaves

    again = _run(args)
    assert again.exit_code == 0, again.output
    assert "kept the 4 windows operators taught as normal" in again.output
    kept = load_stream_enrolment(state, "fan1", sha)
    assert len(kept.exemplars) == 4 and kept.meta["feedback_events"] == ["1700000000-abcdef"]

    forgot = _run([*args, "--forget-feedback"])
    assert forgot.exit_code == 0, forgot.output
    assert len(load_stream_enrolment(state, "fan1", sha).exemplars) == 0


def test_enrol_from_a_folder_with_a_class(cached_bundle: Path, tmp_path: Path, no_torch_guard) -> None:
    from edge_asd.site.storage import load_stream_enrolment

    folder = tmp_path / "normals"
    for i in range(12):
        write_wav(folder / f"rec_{i:03d}.wav", _fan(10.0, seed=10 + i))
    write_wav(folder / "anomaly" / "bad.wav", _with_tone(_fan(10.0, seed=99)))  # filed as anomaly: not used
    state = tmp_path / "state"
    result = _run(["enrol", "--bundle", str(cached_bundle), "--folder", str(folder), "--stream", "fan1",
                   "--class", "fan/section_00", "--state-dir", str(state), "--backend", "onnxruntime",
                   "--false-alarms-per-day", "24"])  # fmt: skip
    assert result.exit_code == 0, result.output
    en = load_stream_enrolment(state, "fan1")
    assert en.components == ("indicators", "spectrum", "envelope", "knn", "ce")
    assert en.n_windows == 12 and en.meta["source"]["kind"] == "folder"
    assert en.meta["classes"] == ["fan/section_00"]
    assert en.false_alarm_rate == pytest.approx(24 / 86400)
    assert int(en.folds.max()) + 1 == 5  # twelve clips: five folds of whole clips


def test_enrol_user_errors(cached_bundle: Path, tmp_path: Path) -> None:
    wav = write_wav(tmp_path / "a.wav", _fan(12.0, seed=2))
    cases = [
        (["enrol", "--bundle", str(cached_bundle)], "exactly one"),
        (["enrol", "--bundle", str(cached_bundle), "--wav", str(tmp_path / "nope.wav")], "does not exist"),
        (["enrol", "--wav", str(wav)], "bundle"),
        (["enrol", "--bundle", str(cached_bundle), "--wav", str(wav), "--stream", "bad name",
          "--state-dir", str(tmp_path)], "stream name"),
        (["enrol", "--bundle", str(cached_bundle), "--wav", str(wav), "--class", "nope/id_00",
          "--state-dir", str(tmp_path)], "not in the bundle"),
        (["enrol", "--bundle", str(cached_bundle), "--wav", str(wav), "--state-dir", str(tmp_path),
          "--backend", "onnxruntime"], "at least"),  # 12 s: 3 windows
    ]  # fmt: skip
    for args, message in cases:
        result = _run(args)
        assert isinstance(result.exception, UserError), (args, result.output)
        assert message in str(result.exception), (args, str(result.exception))
        assert "\n" not in str(result.exception)


def test_enrolment_status_missing_ok_stale(tmp_path: Path, runtime, cached_bundle: Path) -> None:
    from edge_asd.site.enrol import enrol_features, provenance
    from edge_asd.site.features import extract
    from edge_asd.site.storage import bundle_sha, enrolment_dir, enrolment_status, save_stream_enrolment
    from engines.bundle import load_bundle

    bundle = load_bundle(cached_bundle)
    sha = bundle_sha(bundle)
    assert enrolment_status(tmp_path, "s1", sha).state == "missing"
    feats = extract([("rec", _fan(40.0, seed=3))], runtime)
    en = enrol_features(feats, bundle, stream="s1", source=provenance("wav", feats))
    save_stream_enrolment(en, tmp_path, "s1")
    assert enrolment_status(tmp_path, "s1", sha).state == "ok"
    assert enrolment_status(tmp_path, "s1", sha[:12]).state == "ok"  # the id listen publishes
    stale = enrolment_status(tmp_path, "s1", "0" * 64)
    assert stale.state == "stale" and "re-enrol" in stale.message
    doc_path = enrolment_dir(tmp_path, "s1") / "enrolment.json"
    doc = json.loads(doc_path.read_text())
    doc["profile_size"] += 1  # spectral profiles of another edge-asd
    doc_path.write_text(json.dumps(doc))
    other = enrolment_status(tmp_path, "s1", sha)
    assert other.state == "stale" and "spectral profiles" in other.message and "re-enrol" in other.message
    (enrolment_dir(tmp_path, "s1") / "enrolment.json").write_text("{")
    assert enrolment_status(tmp_path, "s1", sha).state == "stale"


def test_extract_shares_blocks_and_pads_short_clips(runtime) -> None:
    from edge_asd.core.audio_io import fit_length
    from edge_asd.core.indicators import compute
    from edge_asd.core.spectra import PROFILE_SIZE, compute_profile
    from edge_asd.site.features import extract

    audio = _fan(14.0, seed=4)
    short = _fan(6.0, seed=5)
    feats = extract([("a", audio), ("b", short)], runtime, class_indices=[0, 2])
    assert [(r.segment, r.start) for r in feats.refs] == [("a", i * SAMPLE_RATE) for i in range(5)] + [("b", 0)]
    np.testing.assert_allclose(feats.indicators[3], compute(audio[3 * SAMPLE_RATE : 13 * SAMPLE_RATE]))
    np.testing.assert_allclose(feats.indicators[5], compute(fit_length(short)))
    assert feats.profiles.shape == (6, PROFILE_SIZE)
    np.testing.assert_array_equal(feats.profiles[3], compute_profile(audio[3 * SAMPLE_RATE : 13 * SAMPLE_RATE]))
    np.testing.assert_array_equal(feats.profiles[5], compute_profile(fit_length(short)))
    odd = extract([("a", audio)], runtime, hop_s=1.5)  # a hop of no whole seconds: blocks per window
    np.testing.assert_array_equal(odd.profiles[1], compute_profile(audio[24000 : 24000 + 10 * SAMPLE_RATE]))
    np.testing.assert_allclose(odd.indicators[1], compute(audio[24000 : 24000 + 10 * SAMPLE_RATE]))
    np.testing.assert_array_equal(feats.select([3]).profiles[0], feats.profiles[3])
    out = runtime.infer(fit_length(short)[None, :])
    np.testing.assert_allclose(feats.embeddings[5], out.embedding[0], rtol=1e-5, atol=1e-6)
    assert feats.ce is not None and feats.ce[5] == pytest.approx(out.scores[0, [0, 2]].min(), rel=1e-5)
    assert feats.minutes == pytest.approx(20.0 / 60.0)


def test_feedback_normal_stops_the_same_sound_and_survives_a_restart(
    tmp_path: Path, runtime, cached_bundle: Path, no_torch_guard
) -> None:
    from edge_asd.core.synth import MachineSoundStream
    from edge_asd.site.enrol import enrol_features, provenance
    from edge_asd.site.features import extract
    from edge_asd.site.storage import load_stream_enrolment, save_stream_enrolment
    from edge_asd.site.store import load_event_windows, save_event_windows
    from engines.bundle import load_bundle

    bundle = load_bundle(cached_bundle)
    machine = MachineSoundStream("fan", 0, seed=6)  # one machine heard continuously
    feats = extract([("rec", machine.read(150 * SAMPLE_RATE))], runtime)
    en = enrol_features(feats, bundle, stream="fan1", source=provenance("wav", feats))
    save_stream_enrolment(en, tmp_path, "fan1")
    normal_later = extract([("n", machine.read(14 * SAMPLE_RATE))], runtime)
    assert not en.score(normal_later.indicators, normal_later.embeddings, profiles=normal_later.profiles).anomalous.any()
    # a new but harmless sound (a 2.5 kHz whine of the ventilation next door) raises an event
    event = extract([("ev", _with_tone(machine.read(14 * SAMPLE_RATE)))], runtime)
    scores = en.score(event.indicators, event.embeddings, profiles=event.profiles)
    assert scores.anomalous.all(), scores.fused
    assert "2.5 kHz band" in en.explain(event.indicators[0]).summary
    save_event_windows(tmp_path, "fan1", "ev-1", event.indicators, event.embeddings, profiles=event.profiles)
    # the operator says "normal": the daemon reloads (restart) and adds the event's windows
    saved = load_event_windows(tmp_path, "fan1", "ev-1")
    assert saved is not None and len(saved) == len(event)
    assert saved.profiles is not None and np.array_equal(saved.profiles, event.profiles)
    updated = load_stream_enrolment(tmp_path, "fan1").add_normal(
        saved.indicators, saved.embeddings, profiles=saved.profiles
    )
    save_stream_enrolment(updated, tmp_path, "fan1")
    restarted = load_stream_enrolment(tmp_path, "fan1")
    again = extract([("later", _with_tone(machine.read(14 * SAMPLE_RATE)))], runtime)  # the same sound, later
    after = restarted.score(again.indicators, again.embeddings, profiles=again.profiles)
    assert not after.anomalous.any(), after.fused
    assert restarted.meta["feedback_normal_windows"] == len(event)
    assert restarted.threshold == pytest.approx(updated.threshold)
    # a different fault still alerts
    other = extract([("knock", _with_tone(machine.read(14 * SAMPLE_RATE), hz=400.0, amplitude=0.1))], runtime)
    assert restarted.score(other.indicators, other.embeddings, profiles=other.profiles).anomalous.all()
    assert load_event_windows(tmp_path, "fan1", "unknown") is None


def test_labels_are_kept_and_exported_as_a_manifest(tmp_path: Path) -> None:
    from edge_asd.core.site.labels import labelled_clips
    from edge_asd.site.store import LabelStoreError, export_labels, record_label

    state = tmp_path / "state"
    ev_a = write_wav(tmp_path / "evidence" / "a.wav", _fan(10.0, seed=9))
    ev_b = write_wav(tmp_path / "evidence" / "b.wav", _with_tone(_fan(10.0, seed=10)))
    record_label(state, "fan1", "ev-a", "normal", ev_a)
    record_label(state, "fan1", "ev-b", "normal", ev_b)
    record_label(state, "fan1", "ev-b", "anomaly", ev_b)  # changed their mind: one label per event
    assert not (state / "labels" / "fan1" / "normal" / "ev-b.wav").exists()
    with pytest.raises(LabelStoreError, match="not one of"):
        record_label(state, "fan1", "ev-c", "maybe", ev_a)
    with pytest.raises(LabelStoreError, match="does not exist"):
        record_label(state, "fan1", "ev-c", "anomaly", tmp_path / "gone.wav")
    out = tmp_path / "export"
    result = export_labels(state, out)
    assert result.counts == {"fan1": {"normal": 1, "anomaly": 1}}
    rows = (out / "manifest.csv").read_text().splitlines()
    assert rows[0] == "file,class,label,split"
    assert sorted(rows[1:]) == ["fan1/anomaly/ev-b.wav,fan1,anomaly,test", "fan1/normal/ev-a.wav,fan1,normal,train"]
    labelled, _ = labelled_clips(out / "fan1")  # evaluate-site reads the folder directly
    assert sorted(lab for _, lab in labelled) == [0, 1]


def test_evaluate_site_writes_a_report_with_fused(cached_bundle: Path, tmp_path: Path, no_torch_guard) -> None:
    normal = tmp_path / "normal"
    test = tmp_path / "test"
    for i in range(10):
        write_wav(normal / f"normal_id_00_{i:08d}.wav", _fan(10.0, seed=20 + i))
    for i in range(4):
        write_wav(test / f"normal_id_00_{i:08d}.wav", _fan(10.0, seed=40 + i))
        write_wav(test / f"anomaly_id_00_{i:08d}.wav", _with_tone(_fan(10.0, seed=50 + i), amplitude=0.1))
    write_wav(test / "unlabelled.wav", _fan(25.0, seed=60))
    out = tmp_path / "out"
    result = _run(["evaluate-site", str(normal), str(test), "--bundle", str(cached_bundle), "--out", str(out),
                   "--backend", "onnxruntime", "--class", "fan/section_00"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "fused" in result.output and "AUC" in result.output
    report = json.loads((out / "report.json").read_text())
    assert set(report["fused"]) == {"auc", "pauc"}
    assert set(report["components"]) == {"indicators", "spectrum", "envelope", "knn", "ce"}
    assert report["test_clips"] == {"normal": 4, "anomaly": 4, "unlabelled": 1}
    assert report["fused"]["auc"] >= 0.9  # a strong tone: the indicators see it
    assert len(report["clips"]) == 8 and all(c["windows"] == 1 for c in report["clips"])
    assert "max" in report["pooling"]
    assert (out / "enrolment" / "enrolment.json").is_file()


def test_enrol_from_a_config_file_source(cached_bundle: Path, tmp_path: Path, no_torch_guard) -> None:
    from edge_asd.site.storage import load_stream_enrolment

    wav = write_wav(tmp_path / "line.wav", _fan(70.0, seed=11))
    state = tmp_path / "state"
    config = tmp_path / "edge-asd.yaml"
    config.write_text(
        f"bundle: {cached_bundle}\nstate_dir: {state}\n"
        f"sources:\n  - name: rec\n    type: file\n    path: {wav}\n"
        "streams:\n  - name: fan1\n    source: rec\n    classes: [fan/section_00]\n"
    )
    result = _run(["enrol", "--config", str(config), "--minutes", "1", "--backend", "onnxruntime"])
    assert result.exit_code == 0, result.output
    en = load_stream_enrolment(state, "fan1")
    assert en.components == ("indicators", "spectrum", "envelope", "knn", "ce")
    assert en.meta["source"]["kind"] == "file" and en.meta["source"]["minutes"] == pytest.approx(1.0)
    assert en.n_windows == 51
