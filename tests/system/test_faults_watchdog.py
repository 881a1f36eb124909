"""Fault suite, systemd's watchdog: a silent microphone and a missing audio device under a
``NOTIFY_SOCKET`` harness with ``WATCHDOG_USEC`` set. The daemon must keep pinging past
2 x WatchdogSec while its stream is ``fault`` (systemd would otherwise kill it and, with the
device still missing, every restart too), then say ``online`` when sound returns. Each test
prints its figure (``pytest -s``). Harness: ``tests/fixtures/faults.py``; the notify socket is
``tests/device/test_listen_systemd.py``'s, the JACK server ``tests/device/test_portaudio_jack.py``'s."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from edge_asd.core.constants import SAMPLE_RATE
from tests.device.test_listen_systemd import NotifySocket
from tests.fixtures.faults import (
    STREAM,
    EventPlan,
    ListenProcess,
    listen_config,
    noise,
    running,
    topic,
    write_wav,
)
from tests.fixtures.mosquitto import Broker, Recorder

pytestmark = [pytest.mark.timeout(300)]
pytest.importorskip("onnxruntime")

WATCHDOG_S = 2.0
SILENT_S = 15.0
"""Seconds of a muted input at the start of the file: windows ending at 10-15 s are all silence."""


class StatusWatch:
    """When each retained status of the stream arrived (the recorder keeps no times)."""

    def __init__(self, rec: Recorder) -> None:
        self.rec = rec
        self.seen = 0
        self.changes: list[tuple[float, str]] = []

    def poll(self) -> None:
        messages = self.rec.on(topic(STREAM, "status"))
        for m in messages[self.seen :]:
            if not self.changes or self.changes[-1][1] != m["payload"]:
                self.changes.append((time.monotonic(), m["payload"]))
        self.seen = len(messages)

    def first(self, status: str, after: float = 0.0) -> float | None:
        return next((t for t, s in self.changes if s == status and t >= after), None)

    def wait(self, status: str, timeout: float, daemon: ListenProcess, after: float = 0.0) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.poll()
            at = self.first(status, after)
            if at is not None:
                return at
            assert daemon.alive, f"the daemon exited waiting for {status}:\n{daemon.tail()}"
            time.sleep(0.05)
        raise AssertionError(f"no {status} in {timeout:.0f} s (statuses {self.changes}):\n{daemon.tail()}")


def _notify_env(notify: NotifySocket, **extra: str) -> dict[str, str]:
    env = {**os.environ, "NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": str(int(WATCHDOG_S * 1e6)), **extra}
    env.pop("WATCHDOG_PID", None)  # systemd's pid would be the daemon's; unset means "this process"
    return env


def _pings(notify: NotifySocket, start: float, end: float) -> tuple[int, float]:
    """WATCHDOG=1 datagrams in [start, end] and the longest gap between two (edges included)."""
    times = [t for t, f in list(notify.messages) if "WATCHDOG" in f and start <= t <= end]
    edges = [start, *times, end]
    return len(times), max(b - a for a, b in zip(edges, edges[1:]))


def test_silent_microphone_keeps_the_watchdog_fed_then_online(event_plan: EventPlan, tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    muted = (rng.integers(-1, 2, int(SILENT_S * SAMPLE_RATE)) / 32768.0).astype(np.float32)  # +-1 LSB, not digital zero
    wav = write_wav(tmp_path / "muted-then-sound.wav", np.concatenate([muted, noise(10.0)]))
    broker = Broker(tmp_path / "broker").start()
    rec = Recorder(broker.port, [topic("#")])
    notify = NotifySocket(tmp_path / "notify.sock")
    config = listen_config(tmp_path / "listen.yaml", event_plan, state=tmp_path / "state", broker=broker,
                           source={"type": "file", "path": str(wav), "realtime": True}, threshold=1e9)  # fmt: skip
    watch = StatusWatch(rec)
    try:
        with running(ListenProcess(config, tmp_path / "listen.log", env=_notify_env(notify))) as daemon:
            started = daemon.started
            fault_at = watch.wait("fault", 60, daemon)
            online_at = watch.wait("online", 60, daemon, after=fault_at)
            assert daemon.terminate() == 0, daemon.tail()
        message = next((m["payload"] for m in rec.on(topic(STREAM, "status", "message")) if m["payload"]), "")
    finally:
        rec.close()
        broker.stop()
        notify.close()
    ready = [t for t, f in notify.messages if f.get("READY") == "1"]
    pings, gap = _pings(notify, fault_at, online_at)
    _, gap_from_ready = _pings(notify, ready[0], online_at) if ready else (0, float("inf"))
    print(f"\nsilent microphone ({SILENT_S:.0f} s muted, WatchdogSec {WATCHDOG_S:g} s): READY "
          f"{(ready[0] - started) if ready else float('nan'):.1f} s after start, fault for {online_at - fault_at:.1f} s "
          f"({message!r}), {pings} watchdog pings meanwhile, longest gap {gap:.2f} s (from READY "
          f"{gap_from_ready:.2f} s), online {online_at - started:.1f} s after start; statuses "
          f"{[s for _, s in watch.changes]}")  # fmt: skip
    assert ready and ready[0] < fault_at, "READY must not wait for a scored window"
    assert online_at - fault_at >= 2 * WATCHDOG_S, "the fault did not last 2 x WatchdogSec: the test proved nothing"
    assert gap_from_ready < WATCHDOG_S, f"watchdog pings stopped for {gap_from_ready:.2f} s"
    assert "silent" in message, message


def test_missing_device_keeps_the_watchdog_fed_then_online(
    event_plan: EventPlan, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`device: jack:system` while no JACK server runs (an unplugged USB interface); the server
    (JACK's dummy backend, a real clock) comes up later with a metronome wired into the
    daemon's PortAudio ports."""
    from tests.device import test_portaudio_jack as jack  # skips the test without jackd + libportaudio2

    metro_exe, connect, lsp = shutil.which("jack_metro"), shutil.which("jack_connect"), shutil.which("jack_lsp")
    if not (metro_exe and connect and lsp):
        pytest.skip("jack_metro/jack_connect/jack_lsp not installed (jackd2 example clients)")
    server = f"edgeasdfaults{os.getpid()}"
    jack_env = {"JACK_DEFAULT_SERVER": server, "JACK_NO_AUDIO_RESERVATION": "1", "JACK_NO_START_SERVER": "1"}
    for key, value in jack_env.items():
        monkeypatch.setenv(key, value)
    broker = Broker(tmp_path / "broker").start()
    rec = Recorder(broker.port, [topic("#")])
    notify = NotifySocket(tmp_path / "notify.sock")
    source = {"type": "device", "device": "jack:system", "samplerate": SAMPLE_RATE, "channels": 2}  # as jackd runs
    config = listen_config(tmp_path / "listen.yaml", event_plan, state=tmp_path / "state", broker=broker,
                           source=source, threshold=1e9)  # fmt: skip
    watch = StatusWatch(rec)
    jackd = metro = None
    try:
        with running(ListenProcess(config, tmp_path / "listen.log", env=_notify_env(notify, **jack_env))) as daemon:
            started = daemon.started
            fault_at = watch.wait("fault", 60, daemon)
            message = next((m["payload"] for m in rec.on(topic(STREAM, "status", "message")) if m["payload"]), "")
            time.sleep(max(0.0, fault_at + 2 * WATCHDOG_S + 0.5 - time.monotonic()))
            plugged_at = time.monotonic()
            jackd = jack._start_jackd(server)
            metro, wired_at = _metronome_into_portaudio(metro_exe, connect, lsp, daemon, timeout=60)
            online_at = watch.wait("online", 60, daemon, after=fault_at)
            assert daemon.terminate() == 0, daemon.tail()  # before the server goes: PortAudio needs it to close
    finally:
        rec.close()
        broker.stop()
        notify.close()
        for proc in (metro, jackd):
            if proc is not None:
                jack._stop(proc)
    ready = [t for t, f in notify.messages if f.get("READY") == "1"]
    pings, gap = _pings(notify, fault_at, plugged_at)
    _, gap_total = _pings(notify, ready[0], online_at) if ready else (0, float("inf"))
    print(f"\nmissing device (jack:system absent, WatchdogSec {WATCHDOG_S:g} s): READY "
          f"{(ready[0] - started) if ready else float('nan'):.1f} s after start, fault {fault_at - started:.1f} s after "
          f"start ({message!r}), {pings} pings in the {plugged_at - fault_at:.1f} s before the device appeared, "
          f"device opened and wired {wired_at - plugged_at:.1f} s after it appeared, online "
          f"{online_at - plugged_at:.1f} s after it appeared; longest ping gap {gap_total:.2f} s; statuses "
          f"{[s for _, s in watch.changes]}")  # fmt: skip
    assert ready and ready[0] < online_at
    assert plugged_at - fault_at >= 2 * WATCHDOG_S and gap < WATCHDOG_S, (pings, gap)
    assert gap_total < WATCHDOG_S, f"watchdog pings stopped for {gap_total:.2f} s"
    assert "jack:system" in message, message


def _metronome_into_portaudio(
    metro_exe: str, connect: str, lsp: str, daemon: ListenProcess, timeout: float
) -> tuple[subprocess.Popen, float]:
    """Once the JACK server answers, start a metronome client; once the daemon has opened the
    device (PortAudio's input ports exist), connect the metronome to them."""
    deadline = time.monotonic() + timeout
    ports: list[str] = []
    metro: subprocess.Popen | None = None
    while time.monotonic() < deadline:
        assert daemon.alive, daemon.tail()
        ports = subprocess.run([lsp], capture_output=True, text=True).stdout.split("\n")
        server_up = any(p.startswith("system:") for p in ports)  # a client can join
        if server_up and (metro is None or metro.poll() is not None):
            metro = subprocess.Popen([metro_exe, "-n", "metro", "-b", "300", "-f", "700", "-A", "0.3", "-D", "80"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        metro_out = [p for p in ports if p.startswith("metro:")]
        pa_in = [p for p in ports if p.startswith("PortAudio") and "in" in p.split(":")[-1]]
        if metro is not None and metro_out and pa_in:
            for port in pa_in:
                subprocess.run([connect, metro_out[0], port], capture_output=True)
            return metro, time.monotonic()
        time.sleep(0.2)
    if metro is not None:
        metro.kill()
    raise AssertionError(f"no metronome wired into the daemon's JACK ports (ports {ports}):\n{daemon.tail()}")
