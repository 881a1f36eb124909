"""Site learning in the real daemon: enrol, alert with an explanation, learn a false alarm.

A site machine of the synthetic ``tone`` family (a fan whose new bearing whine barely moves the
level) is enrolled from five minutes of its normal sound with ``edge-asd enrol``; the stream
has no ``classes:`` (the bundle never saw this machine). ``edge-asd listen`` then replays a
later recording in a loop against a real mosquitto: the whine raises an event that carries the
fused score's components and an explanation. The operator marks it ``normal`` over MQTT; the
daemon answers with the re-derived threshold, and the same sound raises no event again, in
this run or after a restart. An ``anomaly`` verdict lands in ``edge-asd labels export``.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from edge_asd.core.audio_io import write_wav
from edge_asd.core.synth import make_site_recording
from tests.fixtures.mosquitto import Broker, Recorder

pytestmark = [pytest.mark.device, pytest.mark.timeout(900)]
pytest.importorskip("onnxruntime")

EDGE_ASD = [sys.executable, "-c", "from edge_asd.cli import main; main()"]
FAMILY, SEED = "tone", 3
ENROL_S, NORMAL_S, ANOMALY_S = 300.0, 40.0, 30.0


def _strict(text: str) -> dict:
    def refuse(constant: str) -> None:
        raise AssertionError(f"non-strict JSON constant {constant} in {text[:200]}")

    return json.loads(text, parse_constant=refuse)


def _config(path: Path, bundle: Path, wav: Path, state: Path, broker: Broker, loop: bool) -> Path:
    path.write_text(yaml.safe_dump({
        "bundle": str(bundle),
        "backend": "onnxruntime",
        "state_dir": str(state),
        "node_id": "site",
        "mqtt": {"url": broker.url, "stats_interval_s": 5},
        "sources": [{"name": "line", "type": "file", "path": str(wav), "realtime": False, "loop": loop}],
        "streams": [{"name": "fan1", "source": "line"}],
        "evidence": {"max_files": 50},
    }))
    return path


def _listen(config: Path, log: Path) -> subprocess.Popen:
    return subprocess.Popen(EDGE_ASD + ["listen", "--config", str(config)], stdout=log.open("w"), stderr=subprocess.STDOUT)


def _payloads(recorder: Recorder, topic: str) -> list[str]:
    return [m["payload"] for m in recorder.on(topic)]


def _events(recorder: Recorder, kind: str) -> list[dict]:
    out = []
    for payload in _payloads(recorder, "edge-asd/site/events"):
        body = _strict(payload)
        if body["type"] == kind:
            out.append(body["after"])
    return out


def _wait(predicate, timeout: float, what: str, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}; daemon log:\n{log.read_text()[-3000:]}")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)


@pytest.fixture(scope="module")
def site_audio(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("site-audio")
    normal, _ = make_site_recording(FAMILY, ENROL_S, None, seed=SEED, take=0)
    monitored, span = make_site_recording(FAMILY, NORMAL_S + ANOMALY_S, NORMAL_S, None, seed=SEED, take=1)
    assert span is not None
    return {"normal": write_wav(root / "normal.wav", normal), "monitored": write_wav(root / "monitored.wav", monitored)}


def test_enrolled_stream_alerts_explains_and_learns_a_false_alarm(
    cached_bundle: Path, site_audio: dict[str, Path], tmp_path: Path
) -> None:
    state = tmp_path / "state"
    enrol = subprocess.run(
        EDGE_ASD + ["enrol", "--bundle", str(cached_bundle), "--wav", str(site_audio["normal"]), "--stream", "fan1",
                    "--state-dir", str(state), "--backend", "onnxruntime"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert enrol.returncode == 0, enrol.stdout[-2000:] + enrol.stderr[-2000:]

    broker = Broker(tmp_path / "broker").start()
    recorder = Recorder(broker.port, ["edge-asd/#"])
    try:
        log = tmp_path / "listen.log"
        proc = _listen(_config(tmp_path / "loop.yaml", cached_bundle, site_audio["monitored"], state, broker, True), log)
        try:
            _wait(lambda: _events(recorder, "end"), 300, "the first event to end", log)
            first = _events(recorder, "new")[0]
            print("event:", json.dumps({k: first[k] for k in ("start_time", "peak_score", "threshold", "score_kind")}))
            print("explanation:", first["explanation"]["summary"])
            assert first["score_kind"] == "fused"
            assert first["stream"] == "fan1" and first["classes"] == []
            assert first["start_time"] >= NORMAL_S, "the normal part of the recording raised the event"
            assert {"indicators", "spectrum", "envelope", "knn"} <= set(first["components"])
            assert all({"raw", "surprise"} <= set(c) for c in first["components"].values())
            assert isinstance(first["explanation"]["summary"], str)
            assert Path(first["evidence"]).is_file() and Path(first["evidence_png"]).is_file()
            old_threshold = first["threshold"]

            # The operator hears it: the whine is normal for this fan (the CLI sends what the console sends).
            node_cfg = _config(tmp_path / "node.yaml", cached_bundle, site_audio["monitored"], state, broker, True)
            fb = subprocess.run(
                EDGE_ASD + ["feedback", "--config", str(node_cfg), "--stream", "fan1", "--event", first["id"],
                            "--label", "normal", "--by", "test"],
                capture_output=True, text=True, timeout=120,
            )  # fmt: skip
            assert fb.returncode == 0, fb.stdout[-2000:] + fb.stderr[-2000:]
            results = [_strict(p) for p in _payloads(recorder, "edge-asd/site/fan1/feedback/result")]
            assert results and results[-1]["ok"] and results[-1]["event"] == first["id"]
            new_threshold = results[-1]["threshold"]
            print(f"threshold {old_threshold:.3f} -> {new_threshold:.3f}")
            attributes = [_strict(p) for p in _payloads(recorder, "edge-asd/site/fan1/attributes")]
            assert attributes[-1]["threshold"] == pytest.approx(new_threshold)

            # Two more passes over the same recording after the feedback: no new event.
            seen = len(_events(recorder, "new"))
            windows_per_pass = int(NORMAL_S + ANOMALY_S - 10) + 1
            start = len(recorder.on("edge-asd/site/fan1/score"))
            _wait(lambda: len(recorder.on("edge-asd/site/fan1/score")) - start >= 2 * windows_per_pass + 10,
                  300, "two more passes", log)  # fmt: skip
            # An event open at the time of the feedback may still end; none may start.
            assert len(_events(recorder, "new")) == seen, [e["start_time"] for e in _events(recorder, "new")]
        finally:
            _stop(proc)

        # A restart reads the updated enrolment from the state directory: still no event.
        before = len(_events(recorder, "new"))
        once = _config(tmp_path / "once.yaml", cached_bundle, site_audio["monitored"], state, broker, False)
        proc = _listen(once, tmp_path / "listen2.log")
        assert proc.wait(timeout=300) == 0, (tmp_path / "listen2.log").read_text()[-3000:]
        assert len(_events(recorder, "new")) == before
    finally:
        recorder.close()
        broker.stop()


def test_feedback_anomaly_lands_in_the_label_export(cached_bundle: Path, site_audio: dict[str, Path], tmp_path: Path) -> None:
    state = tmp_path / "state"
    subprocess.run(
        EDGE_ASD + ["enrol", "--bundle", str(cached_bundle), "--wav", str(site_audio["normal"]), "--stream", "fan1",
                    "--state-dir", str(state), "--backend", "onnxruntime"],
        check=True, capture_output=True, timeout=600,
    )  # fmt: skip
    broker = Broker(tmp_path / "broker").start()
    recorder = Recorder(broker.port, ["edge-asd/#"])
    try:
        cfg = _config(tmp_path / "once.yaml", cached_bundle, site_audio["monitored"], state, broker, False)
        proc = _listen(cfg, tmp_path / "listen.log")
        assert proc.wait(timeout=300) == 0, (tmp_path / "listen.log").read_text()[-3000:]
        event = _events(recorder, "new")[0]
    finally:
        recorder.close()
        broker.stop()
    for bad in (["--event", "no-such-event", "--label", "normal"], ["--event", event["id"], "--label", "maybe"]):
        out = subprocess.run(EDGE_ASD + ["feedback", "--config", str(cfg), "--stream", "fan1", "--local", *bad],
                             capture_output=True, text=True, timeout=120)  # fmt: skip
        assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    ok = subprocess.run(
        EDGE_ASD + ["feedback", "--config", str(cfg), "--stream", "fan1", "--local", "--event", event["id"],
                    "--label", "anomaly"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert ok.returncode == 0, ok.stdout + ok.stderr
    out_dir = tmp_path / "labels"
    export = subprocess.run(EDGE_ASD + ["labels", "export", str(out_dir), "--state-dir", str(state)],
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    assert export.returncode == 0, export.stdout + export.stderr
    wavs = list(out_dir.rglob("*.wav"))
    assert len(wavs) == 1 and "anomaly" in wavs[0].parts


def test_score_with_a_stream_enrolment_uses_the_fused_score(
    cached_bundle: Path, site_audio: dict[str, Path], tmp_path: Path
) -> None:
    state = tmp_path / "state"
    subprocess.run(
        EDGE_ASD + ["enrol", "--bundle", str(cached_bundle), "--wav", str(site_audio["normal"]), "--stream", "fan1",
                    "--state-dir", str(state), "--backend", "onnxruntime"],
        check=True, capture_output=True, timeout=600,
    )  # fmt: skip
    first_normal = tmp_path / "calm.wav"
    import soundfile as sf

    audio, sr = sf.read(site_audio["monitored"], dtype="float32")
    write_wav(first_normal, audio[: int(NORMAL_S * sr)], sr)
    out = subprocess.run(
        EDGE_ASD + ["score", str(cached_bundle), str(first_normal), str(site_audio["monitored"]), "--stream", "fan1",
                    "--state-dir", str(state), "--backend", "onnxruntime", "--json"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    doc = _strict(out.stdout)
    verdicts = {Path(r["file"]).name: r["anomalous"] for r in doc["results"]}
    assert verdicts == {"calm.wav": False, "monitored.wav": True}
    missing = subprocess.run(
        EDGE_ASD + ["score", str(cached_bundle), str(first_normal), "--stream", "nope", "--state-dir", str(state)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert missing.returncode == 2 and "enrol" in missing.stderr and "Traceback" not in missing.stderr
