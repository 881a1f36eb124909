"""``edge-asd demo``: the whole system on one machine, in minutes, with nothing to download.

1. synthesise machine sounds in the DCASE 2020 layout (2 types x 2 IDs);
2. train TASTgram-MFN with Noisy-ArcMix on the CPU and evaluate it (per-ID AUC/pAUC);
3. export the bundle the device runs (ONNX, thresholds, embeddings);
4. start a mosquitto broker on a free loopback port (unless ``--broker`` is given);
5. calibrate the stream's threshold on a minute of the machine's normal sound, as
   ``edge-asd calibrate`` does on site;
6. make a recording of the machine with an anomaly injected at a known time;
7. subscribe like a SCADA client, and replay the recording through the real ``listen``
   pipeline (same windows, engine, decisions, outbox and MQTT as on a Jetson), then print
   the alerts the subscriber received, with the evidence path.

It imports the trainer (torch) and so runs on a workstation, not on the device.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from edge_asd.core.errors import UserError

logger = logging.getLogger(__name__)

# The recipe, in one visible place: small enough for a few minutes on 2 CPU cores, large enough
# for a usable model (the learning test trains the same recipe and checks AUC >= 0.90).
SYNTH = {"types": 2, "ids": 2, "train_clips": 24, "test_clips": 10, "seed": 7}
TRAIN = {"epochs": 12, "batch_size": 8, "lr": 2e-3, "min_lr": 1e-4, "val_fraction": 0.125, "seed": 2023, "score": "knn"}
"""The embedding (knn) score: with two dozen clips per machine the cross-entropy score memorises
the training clips (docs/training.md), the situation of a new site."""
RECORDING_S, ANOMALY_AT_S, ANOMALY_S, ANOMALY_KIND = 60.0, 30.0, 8.0, "imbalance"
CALIBRATION_S = 180.0
NODE = "demo"


@dataclass
class DemoResult:
    alerts: list[dict[str, Any]] = field(default_factory=list)
    anomaly_span: tuple[float, float] = (ANOMALY_AT_S, ANOMALY_AT_S + ANOMALY_S)
    table: str = ""
    bundle: Path | None = None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class EmbeddedBroker:
    """A mosquitto process on a free loopback port, for the demo's lifetime only."""

    def __init__(self, folder: Path) -> None:
        exe = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None)
        if exe is None:
            raise UserError(
                "the demo starts a local MQTT broker but mosquitto is not installed: `sudo apt-get install mosquitto`, "
                "or point the demo at a broker with --broker mqtt://HOST:PORT"
            )
        self.port = _free_port()
        folder.mkdir(parents=True, exist_ok=True)
        conf = folder / "mosquitto.conf"
        lines = [f"listener {self.port} 127.0.0.1", "allow_anonymous true", "persistence false"]
        if os.geteuid() == 0:
            lines.append("user root")
        conf.write_text("\n".join(lines) + "\n")
        self.log = folder / "mosquitto.log"
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen([exe, "-c", str(conf)], stdout=log, stderr=log)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise UserError(f"mosquitto did not start: {self.log.read_text(errors='replace')[-500:]}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise UserError("mosquitto did not open its port within 10 s")

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()


class Subscriber:
    """What a SCADA or Node-RED flow does: subscribe to the node's topics, act on events."""

    def __init__(self, url: str, prefix: str, console: Console) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

        from edge_asd.config import MqttConfig

        cfg = MqttConfig(url=url)
        self.console = console
        self.events: list[dict[str, Any]] = []
        self.subscribed = threading.Event()
        self.got_end = threading.Event()
        self.topic = f"{prefix}/{NODE}/#"
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"demo-scada-{os.getpid()}",
                                  protocol=MQTTProtocolVersion.MQTTv5)
        self.client.on_connect = lambda c, *_: c.subscribe(self.topic, qos=1)
        self.client.on_subscribe = lambda *_: self.subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect(cfg.host, cfg.effective_port, keepalive=30)
        self.client.loop_start()
        if not self.subscribed.wait(10):
            raise UserError(f"could not subscribe to {url}: is the broker reachable?")

    def _on_message(self, _client: Any, _userdata: Any, msg: Any) -> None:
        if msg.topic.endswith("/events"):
            event = json.loads(msg.payload)
            self.events.append(event)
            after = event["after"]
            self.console.print(
                f"[bold red]MQTT {msg.topic}[/] {event['type']:>6}: stream {after['stream']} event {after['id']} "
                f"score {after['peak_score']:.4g} > {after['threshold']:.4g}",
                highlight=False,
            )
            if event["type"] == "end":
                self.got_end.set()
        elif msg.topic.endswith("/anomaly"):
            self.console.print(f"MQTT {msg.topic} = {msg.payload.decode()}", highlight=False)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _step(console: Console, n: int, text: str) -> None:
    console.rule(f"[bold]{n}/8 {text}")


def _cached(marker: Path, recipe: dict) -> bool:
    return marker.is_file() and marker.read_text() == json.dumps(recipe, sort_keys=True)


def _keep_for_console(state_dir: Path, events: list[dict]) -> None:
    """Put the alerts the subscriber received into the console's history, so that
    ``edge-asd console --state-dir`` shows them (with their evidence) after the demo's broker is gone."""
    from edge_asd.console.settings import DB_NAME, DEFAULT_MAX_EVENTS
    from edge_asd.console.store import EventStore

    store = EventStore(state_dir / "console" / DB_NAME, DEFAULT_MAX_EVENTS)
    try:
        for event in events:
            store.upsert(NODE, event["type"], event["after"])
    finally:
        store.close()


def run_demo(out: Path, *, broker: str | None = None, fresh: bool = False, console: Console | None = None) -> DemoResult:
    """Run the seven steps; returns what the subscriber received."""
    import numpy as np

    from edge_asd.config import AppConfig, validate_config
    from edge_asd.core.audio_io import write_wav
    from edge_asd.core.synth import MachineSoundStream, make_dataset
    from edge_asd.daemon.listen import build_daemon, run_daemon
    from edge_asd.site.enrol import enrol_files
    from edge_asd.site.storage import save_stream_enrolment
    from engines.bundle import load_bundle
    from engines.export import export_run
    from engines.runtime import open_runtime
    from trainer.evaluate import evaluate_run
    from trainer.progress import LineProgress
    from trainer.train import TrainConfig, train

    console = console or Console()
    out = Path(out).resolve()
    if fresh and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    result = DemoResult()
    t_start = time.monotonic()

    data, run, bundle = out / "data", out / "run", out / "bundle"
    recipe = {"synth": SYNTH, "train": TRAIN}
    _step(console, 1, "synthesise machine sounds (DCASE 2020 layout)")
    if _cached(data / ".recipe", SYNTH):
        console.print(f"reusing {data}")
    else:
        shutil.rmtree(data, ignore_errors=True)
        make_dataset(data, **SYNTH)
        (data / ".recipe").write_text(json.dumps(SYNTH, sort_keys=True))
        console.print(f"wrote {sum(1 for _ in data.rglob('*.wav'))} clips to {data}")

    _step(console, 2, "train TASTgram-MFN with Noisy-ArcMix on the CPU, then evaluate")
    if _cached(run / ".recipe", recipe) and (run / "report.json").is_file():
        console.print(f"reusing the trained run {run} (pass --fresh to train again)")
        report = json.loads((run / "report.json").read_text())
    else:
        shutil.rmtree(run, ignore_errors=True)
        lines = LineProgress(lambda text: console.print(f"  {text}"))  # the trainer reports, the demo prints
        train(TrainConfig(data=[str(data)], out=str(run), device="cpu", threads=os.cpu_count(),
                          cache_dir=str(out / "cache"), **TRAIN), progress=lines)
        report = evaluate_run(run, device="cpu", progress=lines)
        (run / ".recipe").write_text(json.dumps(recipe, sort_keys=True))
    result.table = report.get("markdown", "")
    console.print(result.table)

    _step(console, 3, "export the device bundle (ONNX + thresholds + embeddings)")
    if not (bundle / "model.json").is_file() or not _cached(bundle / ".recipe", recipe):
        shutil.rmtree(bundle, ignore_errors=True)
        export_run(run, bundle, progress=lambda text: console.print(f"  {text}"))
        (bundle / ".recipe").write_text(json.dumps(recipe, sort_keys=True))
    result.bundle = bundle
    cls = load_bundle(bundle).classes[0]
    machine_type, machine_id = cls.split("/")
    console.print(f"bundle {bundle}: classes {', '.join(load_bundle(bundle).classes)}")

    _step(console, 4, "MQTT broker")
    embedded = None
    if broker is None:
        embedded = EmbeddedBroker(out / "broker")
        broker = embedded.url
        console.print(f"started mosquitto on {broker}")
    else:
        console.print(f"using {broker}")

    state_dir = out / "state"
    shutil.rmtree(state_dir, ignore_errors=True)
    try:
        prefix = "edge-asd"

        def config(wav: Path, mqtt: bool) -> AppConfig:
            stream: dict[str, Any] = {"name": "press1", "source": "line1", "classes": [cls]}
            data: dict[str, Any] = {
                "bundle": str(bundle), "backend": "auto", "hop_s": 1.0, "node_id": NODE,
                "state_dir": str(state_dir),
                "sources": [{"name": "line1", "type": "file", "path": str(wav), "realtime": False}],
                "streams": [stream], "logging": {"level": "WARNING"},
            }
            if mqtt:
                data["mqtt"] = {"url": broker, "prefix": prefix}
            return validate_config(data, where="demo config")

        # One machine heard continuously: a calibration period, then the monitored minute.
        machine = MachineSoundStream(machine_type, int(machine_id.split("_")[-1]), seed=99)
        _step(console, 5, f"enrol on site: {CALIBRATION_S:.0f} s of {cls} running normally (edge-asd enrol)")
        normal_wav = out / "normal.wav"
        write_wav(normal_wav, machine.read(int(CALIBRATION_S * 16000)))
        loaded = load_bundle(bundle)
        with open_runtime(loaded, backend="auto") as runtime:
            enrolment = enrol_files([normal_wav], loaded, runtime, stream="press1", kind="wav",
                                    class_indices=[loaded.class_index(cls)])  # fmt: skip
        save_stream_enrolment(enrolment, state_dir, "press1")
        console.print(
            f"{enrolment.n_windows} windows, components {', '.join(enrolment.components)}: fused threshold "
            f"{enrolment.threshold:.3f} ({enrolment.threshold_method})",
            highlight=False,
        )

        _step(console, 6, f"the next {RECORDING_S:.0f} s of {cls}, with an anomaly ({ANOMALY_KIND}) at {ANOMALY_AT_S:.0f} s")
        start, end = machine.schedule_anomaly(ANOMALY_KIND, CALIBRATION_S + ANOMALY_AT_S, ANOMALY_S)
        audio = machine.read(int(RECORDING_S * 16000))
        span = (round(start - CALIBRATION_S, 3), round(end - CALIBRATION_S, 3))
        result.anomaly_span = span
        wav = out / "recording.wav"
        write_wav(wav, np.asarray(audio))
        console.print(f"wrote {wav}; anomaly injected at {span[0]:.1f}-{span[1]:.1f} s")

        _step(console, 7, "subscribe like a SCADA client and replay the recording through `listen`")
        subscriber = Subscriber(broker, prefix, console)
        daemon = build_daemon(config(wav, True))
        console.print(f"engine: {daemon.runtime.describe()}")
        run_daemon(daemon)
        subscriber.got_end.wait(10)
        subscriber.close()

        _step(console, 8, "alerts received")
        result.alerts = subscriber.events
        news = [e["after"] for e in result.alerts if e["type"] == "new"]
        if not news:
            console.print("[yellow]no alert was received[/] (the model missed the anomaly)")
        for after in news:
            end_s = after["start_time"]
            console.print(
                f"[bold red]ALERT[/] {after['stream']} ({', '.join(after['classes'])}): anomaly in the window "
                f"{end_s - after['window_s']:.1f}-{end_s:.1f} s of the recording (injected at {span[0]:.1f} s); "
                f"{after.get('score_kind', 'bundle')} score {after['peak_score']:.4g} > threshold "
                f"{after['threshold']:.4g}; evidence {after['evidence']}",
                highlight=False,
            )
            summary = (after.get("explanation") or {}).get("summary")
            if summary:
                console.print(f"  what moved: {summary}", highlight=False)
        _keep_for_console(state_dir, result.alerts)
        console.print(f"demo finished in {time.monotonic() - t_start:.0f} s; everything is under {out}")
        console.print(
            f"review the alerts in the web console: edge-asd console --state-dir {state_dir} --node {NODE}",
            highlight=False,
        )
    finally:
        if embedded is not None:
            embedded.stop()
    return result
