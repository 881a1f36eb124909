"""The SQLite event outbox: order, delete-on-ack, persistence, bound policy."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_asd.comms.outbox import Outbox
from edge_asd.config import ConfigError

pytestmark = pytest.mark.device


def test_rows_come_back_in_order_and_are_deleted_on_ack(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite3")
    seqs = [box.append("new" if i == 0 else "update", "t/events", f"m{i}".encode()) for i in range(5)]
    assert seqs == sorted(seqs) and len(box) == 5
    assert [r.payload for r in box.pending(limit=3)] == [b"m0", b"m1", b"m2"]
    assert [r.payload for r in box.pending(after_seq=seqs[2])] == [b"m3", b"m4"]
    box.delete(seqs[1])
    box.delete(seqs[1])  # an ack for an already deleted row is harmless
    assert [r.seq for r in box.pending()] == [seqs[0], seqs[2], seqs[3], seqs[4]]
    assert len(box) == 4
    row = box.pending(limit=1)[0]
    assert (row.kind, row.topic) == ("new", "t/events")
    box.close()


def test_rows_survive_reopening_and_sequence_keeps_growing(tmp_path: Path) -> None:
    path = tmp_path / "state" / "o.sqlite3"
    box = Outbox(path)
    first = box.append("new", "t", b"a")
    last = box.append("end", "t", b"b")
    box.delete(last)  # AUTOINCREMENT: a deleted seq is never reused
    box.close()
    box = Outbox(path)
    assert [(r.seq, r.payload) for r in box.pending()] == [(first, b"a")]
    assert box.append("new", "t", b"c") > last
    box.close()


def test_bound_drops_oldest_updates_first_and_never_new_or_end(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite3", max_rows=100)
    box.append("new", "t", b"new0")
    for i in range(98):
        box.append("update", "t", f"u{i}".encode())
    box.append("end", "t", b"end0")
    assert len(box) == 100
    box.append("new", "t", b"new1")  # full: the oldest update makes room
    payloads = [r.payload for r in box.pending(limit=1000)]
    assert len(box) == 100 and b"u0" not in payloads and b"u1" in payloads
    assert payloads[0] == b"new0" and payloads[-2:] == [b"end0", b"new1"]
    assert box.dropped_updates == 1
    box.close()
    box = Outbox(tmp_path / "o.sqlite3", max_rows=100)
    assert box.dropped_updates == 1  # the counter is persistent
    # only new/end rows left: they are kept even beyond the bound
    for r in box.pending(limit=1000):
        if r.kind == "update":
            box.delete(r.seq)
    for i in range(120):
        box.append("end", "t", f"e{i}".encode())
    assert len(box) == 3 + 120
    assert box.dropped_updates == 1
    box.close()


def test_unwritable_state_dir_is_a_config_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ConfigError, match="outbox"):
        Outbox(blocker / "o.sqlite3")
