"""`edge-asd listen` end to end: a recording with an anomaly spliced in, a real mosquitto, a
SCADA-like subscriber. The model is the shared synthetic run, exported once (bundle_fixture).

Marked ``device``: in the torch-free Python 3.10 venv this runs the same daemon on the same
bundle, which is the Jetson path without TensorRT.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import yaml

from edge_asd.core.audio_io import write_wav
from tests.fixtures.bundles import calibration_then_monitoring, recording_with_anomaly, synth_bundle
from tests.fixtures.mosquitto import Broker, Recorder

pytestmark = [pytest.mark.device, pytest.mark.timeout(1500)]

EDGE_ASD = [sys.executable, "-c", "from edge_asd.cli import main; main()"]
SECONDS, ANOMALY_AT, ANOMALY_S = 60.0, 25.0, 8.0


def split_class(name: str) -> tuple[str, int]:
    machine_type, machine_id = name.split("/")
    return machine_type, int(machine_id.split("_")[-1])


@pytest.fixture(scope="module")
def bundle(artifacts_dir: Path) -> Path:
    return synth_bundle(artifacts_dir)


def write_config(
    path: Path, bundle: Path, wav: Path, cls: str, broker_url: str | None, state: Path, threshold: float | None = None
) -> Path:
    config = {
        "bundle": str(bundle),
        "backend": "onnxruntime",
        "hop_s": 1.0,
        "state_dir": str(state),
        "node_id": "e2e",
        "mqtt": {"url": broker_url, "stats_interval_s": 5},
        "sources": [{"name": "line", "type": "file", "path": str(wav), "realtime": False}],
        "streams": [{"name": "press1", "source": "line", "classes": [cls]}],
        "logging": {"level": "INFO"},
    }
    if broker_url is None:
        del config["mqtt"]
    if threshold is not None:
        config["streams"][0]["threshold"] = threshold
    path.write_text(yaml.safe_dump(config))
    return path


def site_threshold(bundle: Path, cls: str, normal, tmp_path: Path) -> float:
    """`edge-asd calibrate` on the machine's normal sound heard before the monitored part: the
    on-site step that turns the bundle's training calibration into this microphone's threshold."""
    wav = tmp_path / "normal.wav"
    write_wav(wav, normal)
    config = write_config(tmp_path / "calibrate.yaml", bundle, wav, cls, None, tmp_path / "cal-state")
    out = tmp_path / "calibrated.yaml"
    proc = subprocess.run(
        EDGE_ASD + ["calibrate", "--config", str(config), "--minutes", "1", "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    threshold = yaml.safe_load(out.read_text())["streams"][0]["threshold"]
    assert threshold > 0
    return float(threshold)


def test_listen_alerts_on_the_spliced_anomaly_only(bundle: Path, tmp_path: Path) -> None:
    from engines.bundle import load_bundle

    cls = load_bundle(bundle).classes[0]
    machine_type, machine_id = split_class(cls)
    normal, audio, span = calibration_then_monitoring(
        machine_type, machine_id, 11, 75.0, SECONDS, ANOMALY_AT, ANOMALY_S, "imbalance"
    )
    assert span == pytest.approx((ANOMALY_AT, ANOMALY_AT + ANOMALY_S))
    wav = tmp_path / "line.wav"
    write_wav(wav, audio)
    recorded, _ = sf.read(wav, dtype="float32")
    threshold = site_threshold(bundle, cls, normal, tmp_path)

    broker = Broker(tmp_path / "broker").start()
    try:
        sub = Recorder(broker.port, ["edge-asd/#"])
        config = write_config(tmp_path / "config.yaml", bundle, wav, cls, broker.url, tmp_path / "state", threshold)
        proc = subprocess.run(EDGE_ASD + ["listen", "--config", str(config)], capture_output=True, text=True, timeout=400)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert sub.wait_for(lambda msgs: any('"end"' in m["payload"] for m in msgs if m["topic"].endswith("/events")), 20), (
            proc.stderr[-3000:]
        )
        events = sub.events("edge-asd/e2e/events")
        sub.close()
    finally:
        broker.stop()

    ids = {e["after"]["id"] for e in events}
    assert len(ids) == 1, f"expected one event, got {[(e['type'], e['after']['start_time']) for e in events]}"
    kinds = [e["type"] for e in events]
    assert kinds[0] == "new" and kinds[-1] == "end"
    new, end = events[0]["after"], events[-1]["after"]
    # The first window over the threshold must contain the anomaly: it ends after its onset and
    # starts before its end (windows are 10 s; start_time is the window's end, in audio time).
    assert ANOMALY_AT < new["start_time"] <= ANOMALY_AT + ANOMALY_S + 10.0
    assert new["stream"] == "press1" and new["classes"] == [cls]
    assert end["end_time"] is not None and end["end_time"] >= new["start_time"]
    assert new["peak_score"] > new["threshold"]

    evidence = Path(new["evidence"])
    assert evidence.is_file() and evidence.with_suffix(".png").is_file()
    saved, sr = sf.read(evidence, dtype="float32")
    assert sr == 16000 and saved.shape == (160000,)
    # the window that opened the event: `windows` windows after the first one over the threshold
    end_sample = int(round((new["start_time"] + (new["windows"] - 1) * new["hop_s"]) * 16000))
    expected = recorded[end_sample - 160000 : end_sample]
    assert np.abs(saved - expected).max() <= 2 / 32768, "the evidence WAV is not the triggering window"


def test_listen_stream_fault_on_silent_microphone_is_not_an_anomaly(bundle: Path, tmp_path: Path) -> None:
    from engines.bundle import load_bundle

    cls = load_bundle(bundle).classes[0]
    wav = tmp_path / "zeros.wav"
    write_wav(wav, np.zeros(16000 * 20, dtype=np.float32))
    broker = Broker(tmp_path / "broker").start()
    try:
        sub = Recorder(broker.port, ["edge-asd/#"])
        config = write_config(tmp_path / "config.yaml", bundle, wav, cls, broker.url, tmp_path / "state")
        proc = subprocess.run(EDGE_ASD + ["listen", "--config", str(config)], capture_output=True, text=True, timeout=200)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert sub.wait_for(lambda m: any(x["topic"] == "edge-asd/e2e/press1/status" and x["payload"] == "fault" for x in m), 10)
        time.sleep(0.5)
        assert not sub.on("edge-asd/e2e/events"), "a dead microphone raised a machine anomaly"
        message = sub.last("edge-asd/e2e/press1/status/message") or ""
        assert "dead" in message or "silent" in message
        sub.close()
    finally:
        broker.stop()


def test_listen_bad_input_gives_clear_messages(bundle: Path, tmp_path: Path) -> None:
    good = tmp_path / "good.wav"
    write_wav(good, 0.1 * np.random.default_rng(0).standard_normal(16000 * 12).astype(np.float32))
    truncated = tmp_path / "cut.wav"
    truncated.write_bytes(good.read_bytes()[:50000])
    env = {**os.environ, "HOME": str(tmp_path)}
    base = EDGE_ASD + ["listen", "--bundle", str(bundle), "--state-dir", str(tmp_path / "state")]
    cases = {
        "truncated WAV": (["--source", f"file:{truncated}"], str(truncated)),
        "unknown class": (["--source", f"file:{good}", "--class", "nope/id_99"], "nope/id_99"),
    }
    for what, (args, named) in cases.items():
        proc = subprocess.run(base + args, capture_output=True, text=True, timeout=120, env=env)
        assert proc.returncode == 2, f"{what}: rc {proc.returncode}\n{proc.stderr[-2000:]}"
        assert "Traceback" not in proc.stderr, f"{what}: traceback\n{proc.stderr[-2000:]}"
        assert named in proc.stderr.replace("\n", ""), f"{what}: message does not name {named!r}: {proc.stderr[-800:]}"
    # A missing device is not a user error for the daemon (it may be plugged in later, issue 11):
    # listen stays up, the stream is a fault whose message names the device, and it retries.
    listen = subprocess.Popen(base + ["--device", "no-such-microphone-xyz"], stderr=subprocess.PIPE, text=True, env=env)
    lines: list[str] = []
    try:
        assert listen.stderr is not None
        for line in listen.stderr:
            lines.append(line)
            if "is fault: audio input" in line:
                break
    finally:
        listen.terminate()
        rest = listen.communicate(timeout=60)[1]
    err = "".join(lines) + rest
    assert listen.returncode == 0, err[-2000:]
    assert "Traceback" not in err, err[-2000:]
    fault = [line for line in lines if "is fault: audio input" in line]
    assert fault and "no-such-microphone-xyz" in fault[0] and "retrying" in fault[0], err[-2000:]


def test_listen_unreachable_broker_at_start_queues_and_delivers(bundle: Path, tmp_path: Path) -> None:
    from engines.bundle import load_bundle

    cls = load_bundle(bundle).classes[0]
    machine_type, machine_id = split_class(cls)
    audio, _ = recording_with_anomaly(machine_type, machine_id, 45.0, 15.0, 8.0, "imbalance", seed=12)
    wav = tmp_path / "line.wav"
    write_wav(wav, audio)
    broker = Broker(tmp_path / "broker")  # configured but not started yet
    config = write_config(tmp_path / "config.yaml", bundle, wav, cls, broker.url, tmp_path / "state", 1e-6)
    proc = subprocess.run(EDGE_ASD + ["listen", "--config", str(config)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    outbox_rows = _outbox_rows(tmp_path / "state")
    assert outbox_rows > 0, "events published while the broker was down were not kept on disk"
    # The broker comes up; a second daemon start replays the outbox first, in order.
    broker.start()
    try:
        sub = Recorder(broker.port, ["edge-asd/+/events"])
        empty = tmp_path / "quiet.wav"
        write_wav(empty, audio[: 16000 * 12])
        config2 = write_config(tmp_path / "config2.yaml", bundle, empty, cls, broker.url, tmp_path / "state", 1e9)
        proc = subprocess.run(EDGE_ASD + ["listen", "--config", str(config2)], capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert sub.wait_for(lambda m: len(m) >= outbox_rows, 20)
        kinds = [json.loads(m["payload"])["type"] for m in sub.messages]
        assert kinds[0] == "new" and "end" in kinds
        sub.close()
    finally:
        broker.stop()
    assert _outbox_rows(tmp_path / "state") == 0


def _outbox_rows(state: Path) -> int:
    import sqlite3

    from edge_asd.comms.mqtt import OUTBOX_FILE

    db = state / OUTBOX_FILE
    assert db.is_file(), f"no outbox database at {db}"
    with sqlite3.connect(db) as conn:
        return conn.execute("select count(*) from outbox").fetchone()[0]
