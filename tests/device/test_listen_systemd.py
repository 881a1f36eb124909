"""The daemon under systemd's notify protocol: READY once the monitoring loop runs, WATCHDOG
as long as the loop turns (an input that stops is a stream fault, not a reason to be
killed), STOPPING at SIGTERM, exit 0."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from pathlib import Path

import pytest
import yaml

from edge_asd.core.audio_io import write_wav
from tests.fixtures.bundles import recording_with_anomaly, synth_bundle

pytestmark = [pytest.mark.device, pytest.mark.timeout(300)]


class NotifySocket:
    """A datagram socket standing in for systemd; records (time, fields) per datagram."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.1)
        self.messages: list[tuple[float, dict[str, str]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except OSError:
                continue
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            self.messages.append((time.monotonic(), fields))

    def count(self, key: str, since: float = 0.0) -> int:
        return sum(1 for t, f in list(self.messages) if key in f and t >= since)

    def wait(self, key: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.count(key):
                return True
            time.sleep(0.02)
        return False

    def close(self) -> None:
        self._stop.set()
        self._thread.join(1)
        self.sock.close()


def test_ready_watchdog_and_stopping(artifacts_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from edge_asd.config import load_config
    from edge_asd.daemon.listen import build_daemon, run_daemon
    from engines.bundle import load_bundle

    bundle = synth_bundle(artifacts_dir)
    cls = load_bundle(bundle).classes[0]
    machine_type, machine_id = cls.split("/")
    audio, _ = recording_with_anomaly(machine_type, int(machine_id[-2:]), 20.0, None, 1.0, "rattle", seed=3)
    wav = tmp_path / "loop.wav"
    write_wav(wav, audio)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({
        "bundle": str(bundle),
        "backend": "onnxruntime",
        "state_dir": str(tmp_path / "state"),
        "sources": [{"name": "loop", "type": "file", "path": str(wav), "realtime": False, "loop": True}],
        "streams": [{"name": "m1", "source": "loop", "classes": [cls]}],
    }))
    notify = NotifySocket(tmp_path / "notify.sock")
    monkeypatch.setenv("NOTIFY_SOCKET", str(notify.path))
    monkeypatch.setenv("WATCHDOG_USEC", "600000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    daemon = build_daemon(load_config(config))
    observed: dict[str, object] = {}

    def script() -> None:
        try:
            assert notify.wait("READY", 60), "no READY"
            stream = daemon.pipeline.streams[0]
            deadline = time.monotonic() + 60
            while stream.counters.windows < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
            t0 = time.monotonic()
            time.sleep(2.0)
            observed["pings_flowing"] = notify.count("WATCHDOG", t0)
            daemon.captures[0].source.stop()  # the input stops (it is not finished: it loops)
            # the audio already captured is still scored; wait until the windows stop
            last, quiet_since = stream.counters.windows, time.monotonic()
            while time.monotonic() - quiet_since < 1.0:
                time.sleep(0.05)
                if stream.counters.windows != last:
                    last, quiet_since = stream.counters.windows, time.monotonic()
            t1 = time.monotonic()
            time.sleep(2.0)  # more than 2 x WatchdogSec (0.6 s) without a scored window
            observed["pings_without_windows"] = notify.count("WATCHDOG", t1)
            observed["status"] = stream.published_status
        finally:
            os.kill(os.getpid(), signal.SIGTERM)

    thread = threading.Thread(target=script, daemon=True)
    thread.start()
    try:
        rc = run_daemon(daemon)
    finally:
        thread.join(10)
        time.sleep(0.2)
        notify.close()
    assert rc == 0
    # READY once the loop runs, not after a scored window: test_liveness.py shows it with no microphone
    assert observed["pings_flowing"] >= 3, observed
    assert observed["pings_without_windows"] >= 3, observed
    status, message = observed["status"]
    assert status == "fault" and "audio input file:loop.wav unavailable" in message, observed
    assert notify.count("STOPPING") >= 1
    stopping_at = min(t for t, f in notify.messages if "STOPPING" in f)
    ready_at = min(t for t, f in notify.messages if "READY" in f)
    assert ready_at < stopping_at
