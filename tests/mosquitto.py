"""A real mosquitto broker for tests, on a free loopback port.

Why a real broker: retained messages, the last will, sessions and PUBACK timing are what the
MQTT code is about, and a mocked paho client tests none of it. The broker can be stopped,
killed and restarted on the same port (outage tests), run with TLS (a throw-away CA made
with ``openssl``) and with a password file (``mosquitto_passwd``).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

MOSQUITTO = shutil.which("mosquitto") or (
    "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def require_mosquitto() -> str:
    if MOSQUITTO is None:
        pytest.skip("mosquitto is not installed (apt-get install mosquitto)")
    return MOSQUITTO


def make_tls_files(folder: Path) -> dict[str, Path]:
    """A CA and a server certificate for 127.0.0.1/localhost; skips without openssl."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed: cannot make test certificates")
    folder.mkdir(parents=True, exist_ok=True)
    files = {k: folder / f"{k}.pem" for k in ("ca", "ca_key", "server", "server_key")}
    csr = folder / "server.csr"
    ext = folder / "san.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=edge-asd test CA",
        "-keyout", str(files["ca_key"]), "-out", str(files["ca"]))
    run("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
        "-keyout", str(files["server_key"]), "-out", str(csr))
    run("x509", "-req", "-in", str(csr), "-CA", str(files["ca"]), "-CAkey", str(files["ca_key"]),
        "-CAcreateserial", "-days", "2", "-extfile", str(ext), "-out", str(files["server"]))
    return files


class Broker:
    """One mosquitto process; ``restart()`` reuses the port and (if enabled) the persistence db."""

    def __init__(
        self,
        folder: Path,
        *,
        persistence: bool = False,
        tls: bool = False,
        users: dict[str, str] | None = None,
    ) -> None:
        self.exe = require_mosquitto()
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.tls_files = make_tls_files(folder / "tls") if tls else None
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = folder / "mosquitto.log"
        lines = [f"listener {self.port} 127.0.0.1"]
        if os.geteuid() == 0:
            lines.append("user root")  # else it drops to `mosquitto`, which cannot read tmp_path
        if self.tls_files:
            lines += [
                f"cafile {self.tls_files['ca']}",
                f"certfile {self.tls_files['server']}",
                f"keyfile {self.tls_files['server_key']}",
            ]
        if users:
            passwd = shutil.which("mosquitto_passwd")
            if passwd is None:
                pytest.skip("mosquitto_passwd is not installed")
            pwfile = folder / "passwd"
            for i, (user, password) in enumerate(users.items()):
                args = [passwd, "-b"] + (["-c"] if i == 0 else []) + [str(pwfile), user, password]
                subprocess.run(args, check=True, capture_output=True)
            pwfile.chmod(0o600)
            lines += ["allow_anonymous false", f"password_file {pwfile}"]
        else:
            lines.append("allow_anonymous true")
        if persistence:
            lines += ["persistence true", f"persistence_location {folder}/", "autosave_interval 1"]
        else:
            lines.append("persistence false")
        lines += ["log_type all", "log_dest stderr"]
        self.conf = folder / "mosquitto.conf"
        self.conf.write_text("\n".join(lines) + "\n")

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls_files else 'mqtt'}://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 10.0) -> Broker:
        log = self.log.open("ab")
        self.proc = subprocess.Popen([self.exe, "-c", str(self.conf)], stdout=log, stderr=log)
        log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited: {self.log.read_text(errors='replace')[-2000:]}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"mosquitto did not open port {self.port}")

    def stop(self) -> None:
        """SIGTERM: mosquitto saves its persistence db and exits."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def kill(self) -> None:
        """SIGKILL: an abrupt broker death (nothing saved)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self.proc = None

    def restart(self) -> Broker:
        self.stop()
        return self.start()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@pytest.fixture(name="broker")
def broker_fixture(tmp_path: Path) -> Iterator[Broker]:
    """A plain broker (import ``broker_fixture`` into a test module, request ``broker``)."""
    b = Broker(tmp_path / "broker").start()
    yield b
    b.stop()


class Recorder:
    """A paho subscriber that records every message (topic, payload, retain, properties)."""

    def __init__(
        self,
        port: int,
        topics: list[str],
        *,
        client_id: str | None = None,
        persistent: bool = False,
    ) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        self.messages: list[dict[str, Any]] = []
        self._cond = threading.Condition()
        self.subscribed = threading.Event()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id or f"rec-{time.monotonic_ns()}",
            protocol=MQTTProtocolVersion.MQTTv5,
        )
        self.client.reconnect_delay_set(1, 2)
        self._topics = topics

        def on_connect(client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
            if not reason.is_failure:
                client.subscribe([(t, 1) for t in self._topics])

        def on_subscribe(client: Any, userdata: Any, mid: int, codes: Any, props: Any) -> None:
            self.subscribed.set()

        def on_message(client: Any, userdata: Any, msg: Any) -> None:
            props = msg.properties
            item = {
                "topic": msg.topic,
                "payload": msg.payload.decode("utf-8", "replace"),
                "retain": bool(msg.retain),
                "qos": msg.qos,
                "user_properties": list(getattr(props, "UserProperty", []) or []),
                "content_type": getattr(props, "ContentType", None),
                "expiry": getattr(props, "MessageExpiryInterval", None),
            }
            with self._cond:
                self.messages.append(item)
                self._cond.notify_all()

        self.client.on_connect = on_connect
        self.client.on_subscribe = on_subscribe
        self.client.on_message = on_message
        props = None
        if persistent:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = 3600
        self.client.connect("127.0.0.1", port, keepalive=10, clean_start=not persistent, properties=props)
        self.client.loop_start()
        if not self.subscribed.wait(10):
            raise RuntimeError("recorder did not subscribe")

    def wait_for(self, predicate: Any, timeout_s: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while not predicate(self.messages):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return True

    def on(self, topic: str) -> list[dict[str, Any]]:
        with self._cond:
            return [m for m in self.messages if m["topic"] == topic]

    def last(self, topic: str) -> str | None:
        msgs = self.on(topic)
        return msgs[-1]["payload"] if msgs else None

    def events(self, topic: str) -> list[dict[str, Any]]:
        return [json.loads(m["payload"]) for m in self.on(topic)]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def retained_snapshot(port: int, pattern: str, settle_s: float = 0.7) -> dict[str, str]:
    """What a fresh subscriber gets: the retained messages under ``pattern``."""
    rec = Recorder(port, [pattern])
    time.sleep(settle_s)
    rec.close()
    return {m["topic"]: m["payload"] for m in rec.messages if m["retain"]}
