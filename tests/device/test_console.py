"""The operator's console against a real mosquitto and a fake daemon, without a browser.

What a browser would do is done with urllib: pages, the JSON API, the server-sent events,
the evidence files, and the POSTs with and without their CSRF token. Remote clients are
tested twice: for real, by binding the console to this machine's non-loopback address and
connecting from it (skipped when the machine has none), and by calling the access check
with a forged peer address (the TCP peer is all the console trusts: X-Forwarded-For is never
read, so no header can make a remote client look local).
"""

from __future__ import annotations

import asyncio
import base64
import http.client
import json
import logging
import os
import socket
import ssl
import threading
import time
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from typer.testing import CliRunner

from edge_asd.cli import app
from edge_asd.console.auth import (
    Credentials,
    add_user,
    hash_password,
    is_local_request,
    verify_password,
)
from edge_asd.console.files import evidence_url, resolve_evidence
from edge_asd.console.settings import ConsoleError, ConsoleSettings
from edge_asd.console.store import EventStore
from tests.device.test_console_fakes import FakeDaemon, Http, console_settings, start_console, wait_until
from tests.fixtures.mosquitto import Broker, make_tls_files

pytestmark = [pytest.mark.device, pytest.mark.timeout(120)]


@pytest.fixture
def daemon(broker: Broker, tmp_path: Path):
    d = FakeDaemon(broker.port, tmp_path / "state")
    d.announce(["fan1", "pump1"])
    yield d
    d.close()


@pytest.fixture
def console(broker: Broker, tmp_path: Path, daemon: FakeDaemon):
    thread = start_console(console_settings(broker.url, tmp_path))
    client = Http(thread.url)
    wait_until(lambda: len(client.json("/api/now")["nodes"][0]["streams"]) == 2 if client.json("/api/now")["nodes"]
               else False)
    yield thread, client
    thread.stop()


def _sse_reader(url: str, events: list[dict[str, Any]], stop: threading.Event) -> None:
    parts = url.split("//", 1)[1].rstrip("/").split(":")
    conn = http.client.HTTPConnection(parts[0], int(parts[1]), timeout=15)
    conn.request("GET", "/api/stream", headers={"Accept": "text/event-stream"})
    resp = conn.getresponse()
    assert resp.status == 200 and resp.getheader("Content-Type", "").startswith("text/event-stream")
    name = None
    while not stop.is_set():
        line = resp.fp.readline().decode().rstrip("\n")
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: ") and name:
            events.append({"event": name, "data": json.loads(line[6:])})
        elif line == "":
            name = None
    conn.close()


# --- pages and live updates -----------------------------------------------------------------


def test_now_page_lists_nodes_and_streams_with_status_and_why(console, daemon: FakeDaemon) -> None:
    thread, client = console
    daemon.fault("pump1", "microphone silent (muted or unplugged?): RMS -96 dBFS")
    daemon.score("fan1", 12.5)
    wait_until(lambda: any(s["status"] == "fault" for s in client.json("/api/now")["nodes"][0]["streams"]))
    status, headers, body = client.get("/")
    html = body.decode()
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert 'data-key="n1/fan1"' in html and 'data-key="n1/pump1"' in html
    assert "microphone silent (muted or unplugged?)" in html and "st-fault" in html
    assert "15.000" in html  # the threshold from the retained attributes
    assert "default-src 'self'" in headers["Content-Security-Policy"]
    streams = client.get("/streams")[2].decode()
    assert "ok · enrolled 3 d ago · 600 windows · 10 min" in streams
    series = wait_until(lambda: client.json("/api/series")["series"].get("n1/fan1"))
    assert series[-1][1] == pytest.approx(12.5) and series[-1][2] == pytest.approx(15.0)


def test_event_appears_in_api_and_sse_once(console, daemon: FakeDaemon) -> None:
    thread, client = console
    events: list[dict[str, Any]] = []
    stop = threading.Event()
    reader = threading.Thread(target=_sse_reader, args=(thread.url, events, stop), daemon=True)
    reader.start()
    wait_until(lambda: thread.call(lambda: len(thread.server.ctx.hub.clients)) == 1)
    daemon.score("fan1", 18.0)
    daemon.event("fan1", "ev-1")
    daemon.event("fan1", "ev-1", "update", peak=21.0)
    daemon.event("fan1", "ev-1", "update", peak=20.0)  # at-least-once: a late duplicate never lowers the peak
    wait_until(lambda: any(e["event"] == "event" and e["data"]["id"] == "ev-1" for e in events))
    wait_until(lambda: any(e["event"] == "scores" and "n1/fan1" in e["data"]["s"] for e in events))
    listed = client.json("/api/events")["events"]
    assert [e["id"] for e in listed] == ["ev-1"]
    assert listed[0]["peak"] == pytest.approx(21.0) and listed[0]["active"] is True
    assert "crest factor 8.1 dB" in listed[0]["summary"]
    now_html = client.get("/")[2].decode()
    assert 'data-event="n1/ev-1"' in now_html  # an open event on the Now page
    daemon.event("fan1", "ev-1", end=True)
    wait_until(lambda: client.json("/api/events")["events"][0]["active"] is False)
    daemon.event("fan1", "ev-1", "update")  # redelivered after the end: stays ended
    time.sleep(0.3)
    assert client.json("/api/events")["events"][0]["active"] is False
    rows = client.get("/events?stream=n1/fan1")[2].decode()
    assert 'data-event="n1/ev-1"' in rows and "crest factor" in rows
    assert 'data-event="n1/ev-1"' not in client.get("/events?label=normal")[2].decode()
    stop.set()


def test_history_survives_a_console_restart(broker: Broker, tmp_path: Path, daemon: FakeDaemon) -> None:
    settings = console_settings(broker.url, tmp_path)
    thread = start_console(settings)
    daemon.event("fan1", "ev-keep", evidence=False)
    wait_until(lambda: Http(thread.url).json("/api/events")["events"])
    thread.stop()
    again = start_console(console_settings(broker.url, tmp_path))
    try:
        assert [e["id"] for e in Http(again.url).json("/api/events")["events"]] == ["ev-keep"]
    finally:
        again.stop()


# --- evidence -------------------------------------------------------------------------------


def test_evidence_wav_and_png_are_served_with_their_types(console, daemon: FakeDaemon) -> None:
    thread, client = console
    after = daemon.event("fan1", "1795600460.011852-9lw23v")
    wait_until(lambda: client.json("/api/events")["events"])
    page = client.get("/event?node=n1&id=1795600460.011852-9lw23v")[2].decode()
    wav_url = evidence_url("n1", after["evidence"])
    assert wav_url == "/evidence/n1/fan1/1795600460.011852-9lw23v.wav" and wav_url in page
    status, headers, body = client.get(wav_url)
    assert status == 200 and headers["Content-Type"] == "audio/wav" and body[:4] == b"RIFF"
    assert body == Path(after["evidence"]).read_bytes()
    status, headers, body = client.get(wav_url, headers={"Range": "bytes=0-99"})  # <audio> seeks with ranges
    assert status == 206 and len(body) == 100
    status, headers, body = client.get(wav_url.replace(".wav", ".png"))
    assert status == 200 and headers["Content-Type"] == "image/png" and body[:4] == b"\x89PNG"
    assert "False alarm: learn as normal" in page and "Confirm anomaly" in page
    assert "2.5 kHz band +7.0 dB" in page  # the indicators that moved


def test_evidence_paths_cannot_escape_the_evidence_folder(console, daemon: FakeDaemon, tmp_path: Path) -> None:
    thread, client = console
    daemon.event("fan1", "ev-2")
    wait_until(lambda: client.json("/api/events")["events"])
    root = tmp_path / "state" / "evidence"
    secret = tmp_path / "secret.wav"
    secret.write_bytes(b"RIFFsecret")
    (root / "fan1" / "link.wav").symlink_to(secret)
    (root / "escape").symlink_to(tmp_path)
    for path in (
        "/evidence/n1/..%2F..%2F/secret.wav",
        "/evidence/n1/fan1/..%2F..%2F..%2Fsecret.wav",
        "/evidence/n1/%2E%2E/secret.wav",
        "/evidence/n1/fan1/link.wav",        # a symlink that points outside
        "/evidence/n1/escape/secret.wav",    # a folder symlink that points outside
        "/evidence/n1/fan1/ev-2.txt",        # not an evidence kind
        "/evidence/n1/fan1/missing.wav",
        "/evidence/n2/fan1/ev-2.wav",        # another node's evidence is not here
        "/evidence/../../etc/passwd",
    ):
        status, _, body = client.get(path)
        assert status == 404, (path, status, body[:200])
        assert b"RIFFsecret" not in body
    assert resolve_evidence(root, "..", "secret.wav") is None
    assert resolve_evidence(root, "fan1", "ev-2.wav") == (root / "fan1" / "ev-2.wav").resolve()
    assert evidence_url("n1", "/etc/shadow") is None and evidence_url("n1", "/x/../../etc/a.wav") is None


# --- access ---------------------------------------------------------------------------------


def test_binding_beyond_loopback_needs_a_credentials_file(tmp_path: Path) -> None:
    settings = console_settings("mqtt://127.0.0.1:1", tmp_path, host="0.0.0.0")
    with pytest.raises(ConsoleError, match="--credentials"):
        settings.check()
    result = CliRunner().invoke(app, ["console", "--host", "0.0.0.0", "--broker", "mqtt://127.0.0.1:1",
                                      "--state-dir", str(tmp_path)])
    assert isinstance(result.exception, ConsoleError) and "without a password" in str(result.exception)
    console_settings("mqtt://127.0.0.1:1", tmp_path, host="127.0.0.2").check()  # loopback is fine


def _non_loopback_address() -> str | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.123", 9))  # no packet is sent: this only picks the outgoing interface
            addr = s.getsockname()[0]
        except OSError:
            return None
    return None if addr.startswith("127.") else addr


@pytest.fixture
def users(tmp_path: Path) -> Path:
    path = tmp_path / "users"
    add_user(path, "ops", "s3cret-pass")
    return path


def test_remote_client_without_password_is_refused(broker: Broker, tmp_path: Path, users: Path,
                                                   daemon: FakeDaemon) -> None:
    addr = _non_loopback_address()
    if addr is None:
        pytest.skip("this machine has no non-loopback IPv4 address to connect from")
    thread = start_console(console_settings(broker.url, tmp_path, host=addr, credentials_file=users))
    try:
        remote = Http(thread.url)
        status, headers, body = remote.get("/")
        assert status == 401 and b"Sign in" in body and b"fan1" not in body
        assert remote.get("/api/now", headers={"Accept": "application/json"})[0] == 401
        assert remote.get("/evidence/n1/fan1/x.wav")[0] == 401
        assert remote.get("/api/now", headers={"X-Forwarded-For": "127.0.0.1"})[0] == 401
        assert remote.get("/static/app.css")[0] == 200  # the sign-in page's own assets
        basic = base64.b64encode(b"ops:s3cret-pass").decode()
        assert remote.get("/api/now", headers={"Authorization": f"Basic {basic}"})[0] == 200
        wrong = base64.b64encode(b"ops:wrong").decode()
        assert remote.get("/api/now", headers={"Authorization": f"Basic {wrong}"})[0] == 401
        token = remote.csrf("/login")
        status, _, _ = remote.post("/login", {"user": "ops", "password": "nope", "csrf": token, "next": "/"})
        assert status == 401
        status, headers, _ = remote.post("/login", {"user": "ops", "password": "s3cret-pass", "csrf": token,
                                                    "next": "/streams"})
        assert status == 303 and headers["Location"] == "/streams"
        status, _, body = remote.get("/")
        assert status == 200 and b"fan1" in body and b"ops" in body
    finally:
        thread.stop()


def test_access_check_with_forged_peer_addresses(tmp_path: Path, users: Path) -> None:
    """The decision itself, for peers no test machine can produce (another host, IPv6)."""
    from aiohttp.test_utils import make_mocked_request

    from edge_asd.console.state import ConsoleState
    from edge_asd.console.web import ConsoleContext, identify, make_app

    settings = console_settings("mqtt://127.0.0.1:1", tmp_path, credentials_file=users)
    store = EventStore(tmp_path / "h.sqlite", 100)
    ctx = ConsoleContext(settings, ConsoleState("edge-asd", 3600, 5), store, None, lambda: (True, ""),
                         Credentials.load(users))
    application = make_app(ctx)

    def who(peer: str, host: str = "127.0.0.1:8090", **headers: str) -> str | None:
        transport = mock.Mock()
        transport.get_extra_info.side_effect = lambda name, default=None: (peer, 5555) if name == "peername" else default
        req = make_mocked_request("GET", "/", headers={"Host": host, **headers}, transport=transport, app=application)
        return asyncio.run(identify(req))

    assert who("127.0.0.1") == "localhost"
    assert who("::1", "[::1]:8090") == "localhost"
    assert who("::ffff:127.0.0.1", "localhost:8090") == "localhost"
    assert who("203.0.113.7") is None
    assert who("203.0.113.7", **{"X-Forwarded-For": "127.0.0.1", "X-Real-IP": "127.0.0.1"}) is None
    assert who("127.0.0.1", "evil.example:8090") is None  # DNS rebinding: a loopback peer, a foreign name
    basic = base64.b64encode(b"ops:s3cret-pass").decode()
    assert who("203.0.113.7", Authorization=f"Basic {basic}") == "ops"
    assert is_local_request("127.0.0.5", "localhost") and not is_local_request("10.0.0.1", "localhost")
    store.close()


def test_credentials_file_holds_salted_hashes_only(tmp_path: Path) -> None:
    a, b = hash_password("pw-1"), hash_password("pw-1")
    assert a != b and a.startswith("scrypt$") and verify_password("pw-1", a) and not verify_password("pw-2", a)
    plain = tmp_path / "plain"
    plain.write_text("ops:hunter2\n")
    with pytest.raises(ConsoleError, match="never a clear password"):
        Credentials.load(plain)
    path = tmp_path / "users"
    result = CliRunner().invoke(app, ["console-user", "ops", "--credentials", str(path), "--password-stdin"],
                                input="correct horse\n")
    assert result.exit_code == 0, result.output
    assert oct(path.stat().st_mode & 0o777) == "0o600" and "correct horse" not in path.read_text()
    assert Credentials.load(path).check("ops", "correct horse")


def test_https_when_given_a_certificate(broker: Broker, tmp_path: Path, users: Path, daemon: FakeDaemon) -> None:
    files = make_tls_files(tmp_path / "tls")
    thread = start_console(console_settings(broker.url, tmp_path, cert_file=files["server"],
                                            key_file=files["server_key"], credentials_file=users))
    try:
        assert thread.url.startswith("https://127.0.0.1:")
        ctx = ssl.create_default_context(cafile=str(files["ca"]))
        client = Http(thread.url, context=ctx)
        status, headers, body = wait_until(lambda: (r := client.get("/")) and b"fan1" in r[2] and r)
        assert status == 200 and "Strict-Transport-Security" in headers
        first = Http(thread.url, context=ctx).get("/")  # a new browser gets its CSRF cookie, HTTPS-only
        assert "Secure" in first[1].get("Set-Cookie", "") and "SameSite=Strict" in first[1]["Set-Cookie"]
    finally:
        thread.stop()


# --- commands -------------------------------------------------------------------------------


def test_forged_post_without_csrf_token_is_refused(console, daemon: FakeDaemon) -> None:
    thread, client = console
    daemon.event("fan1", "ev-3", evidence=False)
    wait_until(lambda: client.json("/api/events")["events"])
    form = {"node": "n1", "stream": "fan1", "event": "ev-3", "label": "normal"}
    assert client.post("/api/feedback", form)[0] == 403                       # no token, no cookie
    token = client.csrf()
    assert client.post("/api/feedback", {**form, "csrf": "0" * 64})[0] == 403   # a wrong token
    other = Http(thread.url)
    assert other.post("/api/feedback", {**form, "csrf": token})[0] == 403     # a token without its cookie
    assert client.post("/api/feedback", {**form, "csrf": token},
                       headers={"Origin": "http://evil.example"})[0] == 403   # another site's page
    assert client.post("/api/enrol", {"node": "n1", "stream": "fan1", "minutes": "5"})[0] == 403
    time.sleep(0.5)
    assert daemon.commands == []


def test_feedback_publishes_the_command_and_the_page_shows_the_result(
    console, daemon: FakeDaemon, caplog: pytest.LogCaptureFixture
) -> None:
    thread, client = console
    caplog.set_level(logging.INFO, logger="edge_asd.console")
    daemon.event("fan1", "ev-4")
    wait_until(lambda: client.json("/api/events")["events"])
    token = client.csrf("/event?node=n1&id=ev-4")
    status, _, body = client.post("/api/feedback", {"node": "n1", "stream": "fan1", "event": "ev-4",
                                                    "label": "normal", "csrf": token},
                                  headers={"Accept": "application/json"})
    assert status == 200 and json.loads(body)["ok"] is True
    sent = daemon.wait_command(lambda t, p: t == "edge-asd/n1/fan1/feedback/set")
    assert sent is not None and json.loads(sent[1]) == {"event": "ev-4", "label": "normal", "by": "localhost"}
    wait_until(lambda: b"threshold now 16.500" in client.get("/fragment/feedback?node=n1&id=ev-4")[2])
    page = client.get("/event?node=n1&id=ev-4")[2].decode()
    assert "Threshold of fan1 is now 16.500" in page and "false alarm" in page and "by <b>localhost</b>" in page
    wait_until(lambda: client.json("/api/now")["nodes"][0]["streams"][0]["threshold"] == pytest.approx(16.5))
    assert client.json("/api/events?label=normal")["events"][0]["id"] == "ev-4"
    assert any("feedback normal on n1/fan1 event ev-4 sent by localhost" in r.getMessage() for r in caplog.records)
    # the same buttons work without JavaScript: a plain form post is redirected back to the page
    status, headers, _ = client.post("/api/feedback", {"node": "n1", "stream": "fan1", "event": "ev-4",
                                                       "label": "anomaly", "csrf": token})
    assert status == 303 and headers["Location"] == "/event?node=n1&id=ev-4"
    assert client.post("/api/feedback", {"node": "n1", "stream": "fan1", "event": "nope", "label": "normal",
                                         "csrf": token})[0] == 404


def test_enrol_and_enable_commands(console, daemon: FakeDaemon) -> None:
    thread, client = console
    token = client.csrf("/streams")
    hdr = {"Accept": "application/json"}
    assert client.post("/api/enrol", {"node": "n1", "stream": "fan1", "minutes": "15", "csrf": token}, headers=hdr)[0] == 200
    sent = daemon.wait_command(lambda t, p: t.endswith("/fan1/enrol/set"))
    assert sent is not None and json.loads(sent[1]) == {"minutes": 15}
    wait_until(lambda: "enrolling 0 %" in client.get("/streams")[2].decode())
    assert client.post("/api/enabled", {"node": "n1", "stream": "pump1", "state": "OFF", "csrf": token}, headers=hdr)[0] == 200
    assert daemon.wait_command(lambda t, p: t == "edge-asd/n1/pump1/enabled/set" and p == "OFF") is not None
    assert client.post("/api/enrol", {"node": "n1", "stream": "fan1", "minutes": "0", "csrf": token}, headers=hdr)[0] == 400
    assert client.post("/api/enabled", {"node": "n1", "stream": "ghost", "state": "ON", "csrf": token}, headers=hdr)[0] == 404


# --- the history database -------------------------------------------------------------------


def test_store_deduplicates_keeps_ends_and_stays_bounded(tmp_path: Path) -> None:
    store = EventStore(tmp_path / "h.sqlite", max_events=100)
    base = {"stream": "s", "start_wall": 1000.0, "peak_score": 2.0, "threshold": 1.0}
    store.upsert("n", "new", {**base, "id": "a"})
    store.upsert("n", "new", {**base, "id": "a"})
    store.upsert("n", "end", {**base, "id": "a", "end_wall": 1010.0, "active": False})
    rec = store.upsert("n", "update", {**base, "id": "a", "peak_score": 3.0})
    assert store.count() == 1 and rec is not None and rec["active"] is False and rec["peak"] == 3.0
    assert rec["end_wall"] == 1010.0
    for i in range(150):
        store.upsert("n", "new", {**base, "id": f"e{i}", "start_wall": 2000.0 + i})
    assert store.count() == 100
    assert store.get("n", "e149") is not None and store.get("n", "e10") is None and store.get("n", "a") is None
    seq = store.add_feedback("n", "s", "e149", "normal", "ops")
    row = store.feedback_result("n", "s", {"event": "e149", "label": "normal", "ok": True, "threshold": 1.5})
    assert row is not None and row["seq"] == seq and row["by"] == "ops" and row["threshold"] == 1.5
    assert store.get("n", "e149")["label"] == "normal"
    store.close()


def test_console_settings_from_a_daemon_config(tmp_path: Path) -> None:
    from edge_asd.cli.console_cmd import build_settings

    cfg = tmp_path / "config.yaml"
    cfg.write_text(
        "node_id: press-1\nstate_dir: state\nmqtt:\n  url: mqtt://broker.example:1884\n  prefix: plant\n"
        "sources:\n  - {name: s, type: synth}\nstreams:\n  - {name: fan1, source: s, classes: [fan/id_00]}\n"
    )
    settings, enabled = build_settings(config=cfg, broker=None, prefix=None, state_dir=None, node=None,
                                       flags={"port": 9001})
    assert isinstance(settings, ConsoleSettings) and enabled
    assert settings.node_id == "press-1" and settings.prefix == "plant" and settings.port == 9001
    assert settings.mqtt.host == "broker.example" and settings.state_dir == tmp_path / "state"
    assert settings.database == tmp_path / "state" / "console" / "console.sqlite"
    assert os.fspath(settings.evidence_root).endswith("state/evidence")


def test_fleet_other_nodes_evidence_links_to_their_console(broker: Broker, tmp_path: Path, console,
                                                           daemon: FakeDaemon) -> None:
    from tests.fixtures.mosquitto import retained_snapshot

    thread, client = console
    other = FakeDaemon(broker.port, tmp_path / "other", node="n2")
    try:
        other.announce(["press9"])
        other.event("press9", "ev-far")
        wait_until(lambda: client.json("/api/events?stream=n2/press9")["events"])
        page = client.get("/event?node=n2&id=ev-far")[2].decode()
        assert "Evidence on node n2 (its console has not announced" in page and "<audio" not in page
        # a console of n2 that is reachable from outside announces itself; ours links to it
        n2 = start_console(console_settings(broker.url, tmp_path / "c2", node_id="n2",
                                            public_url="https://n2.plant.example:8090"))
        try:
            wait_until(lambda: retained_snapshot(broker.port, "edge-asd/n2/console").get("edge-asd/n2/console"))
            wait_until(lambda: "https://n2.plant.example:8090/event?node=n2&amp;id=ev-far"
                       in client.get("/event?node=n2&id=ev-far")[2].decode())
        finally:
            n2.stop()
        assert not retained_snapshot(broker.port, "edge-asd/n2/console").get("edge-asd/n2/console")
        assert client.get("/evidence/n2/press9/ev-far.wav")[0] == 404
    finally:
        other.close()


def test_pages_work_without_a_broker_and_commands_say_why_not(tmp_path: Path) -> None:
    """The demo's leftovers (history and evidence) can be browsed after its broker is gone."""
    from edge_asd.console.server import ConsoleThread
    from tests.fixtures.mosquitto import free_port

    settings = console_settings(f"mqtt://127.0.0.1:{free_port()}", tmp_path)
    store = EventStore(settings.database, 100)
    store.upsert("n1", "new", {"id": "old-1", "stream": "fan1", "start_wall": time.time() - 60, "peak_score": 3.0})
    store.close()
    thread = ConsoleThread(settings)
    thread.start()
    try:
        client = Http(thread.url)
        status, _, body = client.get("/event?node=n1&id=old-1")
        assert status == 200 and b"broker unreachable" in body
        token = client.csrf()
        status, _, body = client.post("/api/feedback", {"node": "n1", "stream": "fan1", "event": "old-1",
                                                        "label": "normal", "csrf": token},
                                      headers={"Accept": "application/json"})
        assert status == 503 and json.loads(body)["message"].startswith("not sent")
    finally:
        thread.stop()
