"""sd_notify over a real datagram socket: READY/STATUS/STOPPING/EXTEND_TIMEOUT_USEC, the
progress-gated watchdog, the abstract namespace, and the no-op without $NOTIFY_SOCKET."""

from __future__ import annotations

import os
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_asd.sdnotify import (
    Notifier,
    SystemdIntegration,
    Watchdog,
    format_status,
    watchdog_interval_from_env,
)

pytestmark = pytest.mark.device


def _parse(datagram: bytes) -> dict[str, str]:
    return dict(line.split("=", 1) for line in datagram.decode("utf-8").split("\n"))


class Receiver:
    """The service manager's side: a bound datagram socket that collects notifications."""

    def __init__(self, sock: socket.socket, env_value: str) -> None:
        self.sock = sock
        self.env_value = env_value

    def recv(self, timeout_s: float = 2.0) -> dict[str, str]:
        self.sock.settimeout(timeout_s)
        return _parse(self.sock.recv(4096))

    def drain(self, for_s: float) -> list[dict[str, str]]:
        """Everything that arrives within ``for_s`` seconds."""
        got: list[dict[str, str]] = []
        deadline = time.monotonic() + for_s
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                got.append(_parse(self.sock.recv(4096)))
            except TimeoutError:
                break
        return got


@pytest.fixture
def receiver(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Receiver]:
    path = tmp_path / "notify.sock"
    if len(str(path)) > 100:  # AF_UNIX paths are limited to 108 bytes
        path = Path(tempfile.mkdtemp(prefix="sdn")) / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    yield Receiver(sock, str(path))
    sock.close()


def test_ready_status_stopping_extend_datagrams(receiver: Receiver) -> None:
    notifier = Notifier.from_env()
    assert notifier.enabled
    assert notifier.ready("engine loaded, first audio arrived")
    assert receiver.recv() == {"READY": "1", "STATUS": "engine loaded, first audio arrived"}
    assert notifier.status("fan1 0.42/0.80\nsecond line")
    assert receiver.recv() == {"STATUS": "fan1 0.42/0.80 second line"}  # one line only
    assert notifier.extend_timeout(2.5)
    assert receiver.recv() == {"EXTEND_TIMEOUT_USEC": "2500000"}
    assert notifier.watchdog()
    assert receiver.recv() == {"WATCHDOG": "1"}
    assert notifier.stopping()
    assert receiver.recv() == {"STOPPING": "1"}
    notifier.close()


def test_send_fields_and_defaults(receiver: Receiver) -> None:
    notifier = Notifier.from_env()
    assert notifier.send(READY=1, status="hello", custom_field=True)
    assert receiver.recv() == {"READY": "1", "STATUS": "hello", "CUSTOM_FIELD": "1"}
    assert notifier.ready()
    assert receiver.recv() == {"READY": "1"}
    assert notifier.status("x")
    assert receiver.recv() == {"STATUS": "x"}
    assert notifier.extend_timeout(60)
    assert receiver.recv() == {"EXTEND_TIMEOUT_USEC": "60000000"}
    assert notifier.stopping("bye")
    assert receiver.recv() == {"STOPPING": "1", "STATUS": "bye"}
    assert notifier.watchdog()
    assert receiver.recv() == {"WATCHDOG": "1"}
    notifier.close()


def test_abstract_namespace_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"edge-asd-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    try:
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        notifier = Notifier.from_env()
        assert notifier.ready("abstract")
        notifier.close()
        sock.settimeout(2.0)
        assert _parse(sock.recv(4096)) == {"READY": "1", "STATUS": "abstract"}
    finally:
        sock.close()


def test_noop_without_notify_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.setenv("WATCHDOG_USEC", "200000")
    assert Notifier.from_env().send(READY=1) is False
    assert not Notifier.from_env().enabled
    sd = SystemdIntegration.from_env()
    assert not sd.enabled
    assert not sd.watchdog.enabled  # an interval without a socket is still off
    sd.ready("x")
    sd.progress()
    sd.status("y")
    sd.extend_timeout(10)
    with sd.extending_timeout(10, 0.01) as progress:
        progress("building")
    sd.stopping()
    sd.close()
    assert sd.watchdog.pings == 0


def test_never_raises_when_socket_is_gone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody-listens.sock"))
    notifier = Notifier.from_env()
    assert notifier.enabled
    assert notifier.ready("x") is False  # ENOENT is logged at debug, not raised
    assert notifier.status("y") is False
    # Unsupported address forms disable notifications instead of failing.
    assert not Notifier("vsock:2:1234").enabled
    assert Notifier("vsock:2:1234").send(READY=1) is False


def test_from_env_hides_variables_from_children(receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    sd = SystemdIntegration.from_env()
    assert sd.enabled and sd.watchdog.enabled
    assert sd.watchdog.interval_s == pytest.approx(30.0)
    for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
        assert name not in os.environ
    sd.status("still works after unsetting")
    assert receiver.recv() == {"STATUS": "still works after unsetting"}
    sd.close()


def test_watchdog_pid_of_another_process_disables_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "200000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))
    assert watchdog_interval_from_env() is None
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert watchdog_interval_from_env() == pytest.approx(0.2)
    monkeypatch.setenv("WATCHDOG_USEC", "garbage")
    assert watchdog_interval_from_env() is None


def test_watchdog_pings_only_while_progress_is_reported(receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "200000")  # 200 ms: pings every ~100 ms
    sd = SystemdIntegration.from_env()
    assert sd.watchdog.enabled
    sd.ready("up")
    assert receiver.recv() == {"READY": "1", "STATUS": "up"}

    def progress_for(seconds: float) -> list[dict[str, str]]:
        """Report progress every 20 ms (like a pipeline) while collecting notifications."""
        stop = threading.Event()

        def _pipeline() -> None:
            while not stop.is_set():
                sd.progress()
                stop.wait(0.02)

        worker = threading.Thread(target=_pipeline)
        worker.start()
        try:
            return receiver.drain(seconds)
        finally:
            stop.set()
            worker.join()

    # Progress keeps coming: so do pings.
    during = progress_for(0.8)
    pings = [m for m in during if m == {"WATCHDOG": "1"}]
    assert len(pings) >= 2, during

    # Progress stops: after the stall window (200 ms) plus slack, no ping arrives any more.
    receiver.drain(0.6)
    assert sd.watchdog.is_stalled()
    assert receiver.drain(0.6) == []

    # Progress resumes: pings resume.
    assert {"WATCHDOG": "1"} in progress_for(0.6)

    # STOPPING ends the pings for good, even with progress.
    sd.stopping()
    tail = receiver.drain(0.3)  # the STOPPING datagram and any ping already in flight
    assert {"STOPPING": "1", "STATUS": "stopping"} in tail
    sd.progress()
    assert receiver.drain(0.4) == []
    sd.close()


def test_watchdog_tick_is_progress_gated_with_a_fake_clock(receiver: Receiver) -> None:
    now = [100.0]
    dog = Watchdog(Notifier(receiver.env_value), interval_s=10.0, clock=lambda: now[0])
    assert dog.tick() is True  # fresh: progress "just now"
    assert receiver.recv() == {"WATCHDOG": "1"}
    now[0] += 9.0
    assert dog.tick() is True
    receiver.recv()
    now[0] += 2.0  # 11 s without progress > 10 s interval
    assert dog.is_stalled()
    assert dog.tick() is False
    dog.progress()
    assert dog.tick() is True
    assert dog.pings == 3


def test_extending_timeout_only_while_progress_is_reported(receiver: Receiver) -> None:
    """A start that reports no progress gets no extension (systemd's TimeoutStartSec applies);
    each report extends, rate-limited; nothing after the body ended."""
    sd = SystemdIntegration(Notifier(receiver.env_value))
    with sd.extending_timeout(extend_s=120, min_interval_s=0.0, status="building TensorRT engine") as progress:
        assert receiver.recv() == {"STATUS": "building TensorRT engine"}
        assert receiver.drain(0.3) == [], "extended without any progress"
        progress()
        progress("TensorRT build: tactics (12 steps)")
        got = receiver.drain(0.3)
    assert got == [{"EXTEND_TIMEOUT_USEC": "120000000"}, {"EXTEND_TIMEOUT_USEC": "120000000"},
                   {"STATUS": "TensorRT build: tactics (12 steps)"}]
    assert progress.extensions == 2
    progress("a stray builder thread after the body ended")
    assert receiver.drain(0.2) == []


def test_extending_timeout_is_rate_limited_and_capped(receiver: Receiver) -> None:
    """A builder reporting many times a second sends one datagram per interval, and after the
    cap no report extends any more: a start hung in a loop of "progress" still times out."""
    sd = SystemdIntegration(Notifier(receiver.env_value))
    with sd.extending_timeout(extend_s=30, cap_s=0.6, min_interval_s=0.2) as progress:
        deadline = time.monotonic() + 1.2
        while time.monotonic() < deadline:
            progress()
            time.sleep(0.01)
        got = receiver.drain(0.2)
    extends = [m for m in got if "EXTEND_TIMEOUT_USEC" in m]
    assert 2 <= len(extends) <= 4, extends  # ~0.6 s / 0.2 s, not ~100
    assert progress.extensions == len(extends)


def test_start_progress_never_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    from edge_asd.sdnotify import StartProgress

    notifier = Notifier("/nonexistent/notify.sock")
    monkeypatch.setattr(notifier, "extend_timeout", lambda s: 1 / 0)
    hook = StartProgress(notifier, 10, 100, 0)
    hook("still building")  # swallowed and logged: a lost extension must not fail the build
    assert hook.extensions == 0 and hook.last_message == "still building"


def test_ready_is_sent_once(receiver: Receiver) -> None:
    sd = SystemdIntegration(Notifier(receiver.env_value))
    sd.ready("first")
    assert receiver.recv() == {"READY": "1", "STATUS": "first"}
    sd.ready("second")
    assert receiver.recv() == {"STATUS": "second"}
    assert sd.is_ready


def test_format_status() -> None:
    line = format_status(
        {"fan1": 0.421, "pump2": 1.31, "mic3": 0.1, "valve4": None},
        thresholds={"fan1": 0.8, "pump2": 0.9},
        anomalous={"pump2": True},
        faults={"mic3": "silent"},
        extra="xruns 0",
    )
    assert line == "fan1 0.42/0.80 · pump2 ANOMALY 1.31/0.90 · mic3 fault: silent · valve4 warming up · xruns 0"
    assert format_status({}) == "no streams"
