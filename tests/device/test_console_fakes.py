"""Helpers for the console tests (no tests here): a fake daemon on MQTT and a small HTTP client.

Why a fake daemon: the console's contract is the MQTT topics, so a paho client publishing
exactly what the README's contract says exercises every path of the console in a second.
It writes its evidence with the daemon's own ``EvidenceStore`` and answers feedback the way
the daemon's site learning does (``feedback/result`` plus new retained ``attributes``). The
browser test takes it through a fixture, so the real daemon can replace it.
"""

from __future__ import annotations

import http.cookiejar
import json
import re
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from edge_asd.config import MqttConfig
from edge_asd.console.server import ConsoleThread
from edge_asd.console.settings import ConsoleSettings
from edge_asd.evidence import EvidenceStore


class FakeDaemon:
    """Publishes like ``edge-asd listen`` on one node and answers feedback/enrol commands."""

    def __init__(self, port: int, state_dir: Path, node: str = "n1", prefix: str = "edge-asd",
                 threshold: float = 15.0, answer: bool = True) -> None:
        self.node, self.prefix, self.state_dir = node, prefix, state_dir
        self.threshold: dict[str, float] = {}
        self.default_threshold = threshold
        self.answer = answer
        self.commands: list[tuple[str, str]] = []
        self._cond = threading.Condition()
        self.evidence = EvidenceStore(state_dir / "evidence")
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"fake-{node}-{time.monotonic_ns()}",
                                  protocol=MQTTProtocolVersion.MQTTv5)
        self.client.will_set(self.t("available"), "offline", qos=1, retain=True)
        self.client.on_message = self._on_message
        connected = threading.Event()
        self.client.on_connect = lambda c, u, f, r, p: (
            c.subscribe([(self.t("+/feedback/set"), 1), (self.t("+/enrol/set"), 1), (self.t("+/enabled/set"), 1)]),
            connected.set(),
        )
        self.client.connect("127.0.0.1", port, keepalive=10)
        self.client.loop_start()
        assert connected.wait(10), "fake daemon could not connect"

    def t(self, leaf: str) -> str:
        return f"{self.prefix}/{self.node}/{leaf}"

    def pub(self, leaf: str, payload: Any, retain: bool = False, qos: int = 1) -> None:
        text = payload if isinstance(payload, str) else json.dumps(payload)
        self.client.publish(self.t(leaf), text, qos=qos, retain=retain).wait_for_publish(5)

    def attributes(self, stream: str) -> dict[str, Any]:
        return {"threshold": self.threshold[stream], "classes": ["fan/id_00"], "source": "synth:fan",
                "enrolment": {"state": "ok", "created": time.time() - 3 * 86400, "windows": 600, "minutes": 10}}

    def announce(self, streams: list[str]) -> None:
        self.pub("available", "online", retain=True)
        for s in streams:
            self.threshold.setdefault(s, self.default_threshold)
            self.pub(f"{s}/status", "online", retain=True)
            self.pub(f"{s}/status/message", "", retain=True)
            self.pub(f"{s}/anomaly", "OFF", retain=True)
            self.pub(f"{s}/attributes", self.attributes(s), retain=True)
            self.pub(f"{s}/enabled/state", "ON", retain=True)

    def fault(self, stream: str, why: str) -> None:
        self.pub(f"{stream}/status", "fault", retain=True)
        self.pub(f"{stream}/status/message", why, retain=True)

    def score(self, stream: str, value: float) -> None:
        self.client.publish(self.t(f"{stream}/score"), f"{value:.3f}", qos=0)

    def event(self, stream: str, eid: str, kind: str = "new", *, evidence: bool = True, peak: float = 19.2,
              end: bool = False) -> dict[str, Any]:
        now = time.time()
        after: dict[str, Any] = {
            "id": eid, "stream": stream, "classes": ["fan/id_00"], "start_time": 31.0, "end_time": 40.0 if end else None,
            "start_wall": now - 5, "end_wall": now if end else None, "peak_score": peak, "mean_score": peak - 1,
            "threshold": self.threshold.get(stream, self.default_threshold), "windows": 3, "active": not end,
            "label": None,
            "components": {"indicators": {"score": 4.2, "surprise": 6.1}, "knn": {"score": 0.61}},
            "explanation": {
                "summary": "crest factor 8.1 dB, normal 10.2 +/- 0.4 dB; 2.5 kHz band +7.0 dB",
                "indicators": [
                    {"name": "crest_db", "label": "crest factor", "unit": "dB", "value": 8.1, "normal": 10.2,
                     "scale": 0.4, "z": -5.2, "text": "crest factor 8.1 dB, normal 10.2 +/- 0.4 dB"},
                    {"name": "band_2500", "label": "2.5 kHz band", "unit": "dB", "value": 7.0, "normal": 0.0,
                     "scale": 1.1, "z": 6.4, "text": "2.5 kHz band +7.0 dB"},
                ],
            },
        }
        if evidence:
            # 10 s like the daemon's window: a hum with harmonics, noise, and a 2.5 kHz whine in the middle
            t = np.arange(16000 * 10) / 16000.0
            audio = sum(0.2 / k * np.sin(2 * np.pi * 100 * k * t) for k in range(1, 6))
            audio = audio + 0.03 * np.random.default_rng(0).standard_normal(t.size)
            audio = audio + 0.1 * np.sin(2 * np.pi * 2500 * t) * ((t > 4) & (t < 7))
            files = self.evidence.save(stream, eid, audio)
            after["evidence"] = str(files.wav)
            if files.png is not None:
                after["evidence_png"] = str(files.png)
        self.pub("events", {"type": "end" if end else kind, "before": None, "after": after})
        return after

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        payload = msg.payload.decode()
        with self._cond:
            self.commands.append((msg.topic, payload))
            self._cond.notify_all()
        if not self.answer:
            return
        stream = msg.topic.split("/")[2]
        if msg.topic.endswith("/feedback/set"):
            body = json.loads(payload)
            if body.get("label") == "normal":
                self.threshold[stream] = round(self.threshold.get(stream, self.default_threshold) + 1.5, 3)
            result = {"event": body["event"], "label": body["label"], "ok": True,
                      "message": "learned as normal" if body["label"] == "normal" else "kept as an anomaly",
                      "threshold": self.threshold.get(stream)}
            threading.Thread(target=self._answer, args=(stream, result), daemon=True).start()
        elif msg.topic.endswith("/enrol/set"):
            state = {"state": "enrolling", "message": "recording normal operation", "progress": 0.0}
            threading.Thread(target=lambda: self.pub(f"{stream}/enrol/state", state, retain=True), daemon=True).start()

    def _answer(self, stream: str, result: dict[str, Any]) -> None:
        time.sleep(0.2)
        try:
            self.pub(f"{stream}/attributes", self.attributes(stream), retain=True)
            self.pub(f"{stream}/feedback/result", result)
        except RuntimeError:
            pass  # the test ended (and closed the fake daemon) before the answer went out

    def wait_command(self, predicate: Callable[[str, str], bool], timeout_s: float = 10.0) -> tuple[str, str] | None:
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while True:
                for topic, payload in self.commands:
                    if predicate(topic, payload):
                        return topic, payload
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(left)

    def close(self) -> None:
        self.pub("available", "offline", retain=True)
        self.client.disconnect()
        self.client.loop_stop()


def console_settings(broker_url: str, tmp: Path, **kw: Any) -> ConsoleSettings:
    base: dict[str, Any] = {"mqtt": MqttConfig.model_validate({"url": broker_url}), "state_dir": tmp / "state",
                            "node_id": "n1", "port": 0, "db_path": tmp / "console" / "history.sqlite"}
    base.update(kw)
    return ConsoleSettings(**base)


def start_console(settings: ConsoleSettings) -> ConsoleThread:
    thread = ConsoleThread(settings)
    thread.start()
    assert thread.server.link is not None and thread.server.link.wait_connected(10), "console did not connect"
    return thread


@dataclass
class Http:
    """A tiny cookie-keeping HTTP client (urllib) for the console's pages and API."""

    base: str
    jar: http.cookiejar.CookieJar = field(default_factory=http.cookiejar.CookieJar)
    context: Any = None

    def __post_init__(self) -> None:
        handlers: list[Any] = [urllib.request.HTTPCookieProcessor(self.jar), _NoRedirect()]
        if self.context is not None:
            handlers.append(urllib.request.HTTPSHandler(context=self.context))
        self.opener = urllib.request.build_opener(*handlers)

    def request(self, method: str, path: str, data: dict[str, str] | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        body = urllib.parse.urlencode(data).encode() if data is not None else None
        req = urllib.request.Request(self.base.rstrip("/") + path, data=body, method=method, headers=headers or {})
        if body is not None:
            req.add_header("Content-Type", "application/x-www-form-urlencoded")
        try:
            with self.opener.open(req, timeout=10) as resp:
                return resp.status, dict(resp.headers.items()), resp.read()
        except urllib.error.HTTPError as err:
            return err.code, dict(err.headers.items()), err.read()

    def get(self, path: str, **kw: Any) -> tuple[int, dict[str, str], bytes]:
        return self.request("GET", path, **kw)

    def post(self, path: str, data: dict[str, str], **kw: Any) -> tuple[int, dict[str, str], bytes]:
        return self.request("POST", path, data=data, **kw)

    def json(self, path: str) -> Any:
        status, _, body = self.get(path, headers={"Accept": "application/json"})
        assert status == 200, (status, body[:300])
        return json.loads(body)

    def csrf(self, path: str = "/") -> str:
        status, _, body = self.get(path)
        assert status == 200, (status, body[:300])
        m = re.search(rb'<meta name="csrf-token" content="([^"]+)"', body)
        assert m, body[:500]
        return m.group(1).decode()


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def wait_until(predicate: Callable[[], Any], timeout_s: float = 10.0, step_s: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(step_s)
