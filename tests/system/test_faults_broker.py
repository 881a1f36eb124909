"""Fault suite, the broker side: a 30 s broker outage mid-stream, and a broker whose ACL refuses
the events topic. The real ``edge-asd listen`` against a real mosquitto; each test prints its
figure (``pytest -s``) and asserts it. Harness: ``tests/fixtures/faults.py``."""

from __future__ import annotations

import contextlib
import sqlite3
import time
from pathlib import Path

import pytest

from tests.fixtures.faults import (
    EVENTS_TOPIC,
    STREAM,
    EventLedger,
    EventPlan,
    ListenProcess,
    acl_denying,
    listen_config,
    node_fault_messages,
    node_status,
    outbox_rows,
    running,
    strict_json,
    topic,
    wait_delivered,
    wait_for,
)
from tests.fixtures.mosquitto import Broker, Recorder, retained_snapshot

pytestmark = [pytest.mark.timeout(400)]
pytest.importorskip("onnxruntime")

OUTAGE_S = 30.0


def test_broker_down_30s_mid_stream_loses_nothing(event_plan: EventPlan, tmp_path: Path) -> None:
    broker = Broker(tmp_path / "broker", persistence=True).start()
    # A persistent session: what the broker queues for it while it is away is kept, so a
    # subscriber that reconnects after the daemon still gets every event (as SCADA would).
    rec = Recorder(broker.port, [topic("#")], client_id="faults-outage-sub", persistent=True)
    wav = event_plan.wav(tmp_path / "cycles.wav", cycles=3)
    config = listen_config(tmp_path / "listen.yaml", event_plan, state=tmp_path / "state", wav=wav, broker=broker,
                           loop=True)  # fmt: skip
    try:
        with running(ListenProcess(config, tmp_path / "listen.log")) as daemon:
            daemon.wait_events(3, 120)
            assert wait_for(lambda: len(EventLedger.from_recorder(rec).ids("end")) >= 3, 30), daemon.tail()
            before = len(daemon.opened())
            broker.stop()  # SIGTERM: mosquitto saves the subscriber's session
            down_at = time.monotonic()
            while time.monotonic() - down_at < OUTAGE_S:
                assert daemon.alive, f"the daemon died during the outage:\n{daemon.tail()}"
                time.sleep(0.5)
            during = len(daemon.opened()) - before
            broker.start()
            up_at = time.monotonic()
            ended = len(daemon.ended())
            daemon.wait_events(ended + 3, 120)
            # every event raised so far is delivered after the outage (paho reconnects with backoff)
            assert wait_for(lambda: not EventLedger.from_recorder(rec).missing(daemon.ended())["end"], 90), (
                f"events of the outage not delivered 90 s after the broker came back:\n{daemon.tail()}"
            )
            caught_up_s = time.monotonic() - up_at
            rc = daemon.terminate()
        assert rc == 0, daemon.tail()
        opened = daemon.opened()
        assert wait_delivered(rec, opened, 30)
        ledger = EventLedger.from_recorder(rec)
        missing = ledger.missing(opened)
        problems = ledger.order_problems()
        snapshot = retained_snapshot(broker.port, topic("#"))
    finally:
        rec.close()
        broker.stop()
    lost = len(missing["new"]) + len(missing["end"])
    print(f"\nbroker down {OUTAGE_S:.0f} s mid-stream: {during} events raised during the outage; "
          f"{len(ledger.ids('new'))} new / {len(ledger.ids('end'))} end delivered of {len(opened)} raised, "
          f"{lost} lost, {len(problems)} out of order, {ledger.duplicates} duplicates dropped; "
          f"caught up {caught_up_s:.0f} s after the broker returned; retained anomaly "
          f"{snapshot.get(topic(STREAM, 'anomaly'))}, available {snapshot.get(topic('available'))}")  # fmt: skip
    assert during >= 5, f"only {during} events during the outage: the test did not exercise it"
    assert lost == 0, missing
    assert not problems, problems[:10]
    assert snapshot.get(topic(STREAM, "anomaly")) == "OFF", snapshot
    assert snapshot.get(topic("available")) == "offline", snapshot


def test_acl_denying_the_events_topic_keeps_events_and_raises_a_node_fault(
    event_plan: EventPlan, tmp_path: Path
) -> None:
    broker = Broker(tmp_path / "broker", acl=acl_denying(EVENTS_TOPIC)).start()
    rec = Recorder(broker.port, [topic("#")])
    state = tmp_path / "state"
    wav = event_plan.wav(tmp_path / "cycles.wav", cycles=3)
    config = listen_config(tmp_path / "listen.yaml", event_plan, state=state, wav=wav, broker=broker, loop=True)
    try:
        with running(ListenProcess(config, tmp_path / "listen.log")) as daemon:
            daemon.wait_events(3, 120)
            found = wait_for(lambda: any("authori" in m.lower() for m in node_fault_messages(rec)), 30)
            faults = node_fault_messages(rec)
            node_faulted = "fault" in node_status(rec)
            rc = daemon.terminate()
        assert rc == 0, daemon.tail()
        opened = daemon.opened()
        kept = _outbox_events(state)
        refused_log = "not authori" in daemon.text().lower()

        # The ACL is lifted: the next start delivers what was kept, in order.
        broker.set_acl(acl_denying())  # reloaded by SIGHUP
        rec.close()
        rec = Recorder(broker.port, [topic("#")])
        quiet = listen_config(tmp_path / "quiet.yaml", event_plan, state=state, wav=wav, broker=broker, threshold=1e9)
        with running(ListenProcess(quiet, tmp_path / "listen2.log")) as second:
            assert second.wait(180) == 0, second.tail()
        delivered = wait_delivered(rec, opened, 30)
        ledger = EventLedger.from_recorder(rec)
        left = outbox_rows(state)
        node_after = retained_snapshot(broker.port, topic("status")).get(topic("status"))
    finally:
        rec.close()
        broker.stop()
    kept_ids = {i for kind, i in kept if kind == "new"} & {i for kind, i in kept if kind == "end"}
    print(f"\nACL denies {EVENTS_TOPIC}: {len(opened)} events raised, {len(kept_ids)} kept in the outbox "
          f"({len(kept)} rows); node fault: {faults[-1] if faults else None!r}; after the ACL was lifted "
          f"{len(ledger.ids('new'))} new / {len(ledger.ids('end'))} end delivered, {left} left in the outbox, "
          f"node status {node_after}")  # fmt: skip
    assert refused_log, "the daemon did not log the broker's refusal"
    assert set(opened) <= kept_ids, f"refused events were dropped: {sorted(set(opened) - kept_ids)}"
    assert found and node_faulted, f"no node fault naming the refusal on {topic('status')}: {faults}"
    assert delivered, ledger.missing(opened)
    assert not ledger.order_problems(), ledger.order_problems()[:10]
    assert left == 0


def _outbox_events(state: Path) -> list[tuple[str, str]]:
    """(type, id) of every event row in the outbox, in order."""
    with contextlib.closing(sqlite3.connect(str(state / "outbox.sqlite3"))) as conn:
        rows = conn.execute("SELECT payload FROM outbox ORDER BY seq").fetchall()
    out = []
    for (payload,) in rows:
        body = strict_json(bytes(payload).decode())
        out.append((body["type"], body["after"]["id"]))
    return out
