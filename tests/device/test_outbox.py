"""The SQLite event outbox: order, delete-on-ack, persistence, bound policy."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import pytest

from edge_asd.comms import outbox as outbox_mod
from edge_asd.comms.outbox import Outbox
from edge_asd.config import ConfigError
from tests.fixtures.faults import small_filesystem

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


def _event(eid: str, stream: str = "fan1", **kw: object) -> dict:
    return {"id": eid, "stream": stream, "start_time": 3.0, "end_time": None, "windows": 3, "hop_s": 1.0, **kw}


def test_open_events_are_recorded_with_their_rows_and_survive_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite3"
    box = Outbox(path)
    box.append("new", "t", b"n1", _event("e1"))
    box.append("new", "t", b"n2", _event("e2", "fan2"))
    box.append("update", "t", b"u1", _event("e1", peak_score=9.0))
    box.append("end", "t", b"x2", _event("e2", "fan2", end_time=7.0))
    for row in box.pending():
        box.delete(row.seq)  # delivered: the rows go, the record of what is open stays
    assert len(box) == 0
    box.close()  # (a crash leaves the same state: every change was committed with its row)
    box = Outbox(path)
    [ev] = box.open_events()
    assert (ev.id, ev.stream, ev.topic, ev.event["peak_score"]) == ("e1", "fan1", "t", 9.0)
    box.append("end", "t", b"x1", _event("e1"))
    assert box.open_events() == []
    box.close()
    assert Outbox(path).open_events() == []


def test_a_full_database_degrades_to_memory_and_recovers_in_order(tmp_path: Path, caplog) -> None:
    """The real SQLite error ("database or disk is full") through ``PRAGMA max_page_count``."""
    faults: list[str | None] = []
    box = Outbox(tmp_path / "o.sqlite3", on_fault=faults.append)
    first = box.append("new", "t", b"m0", _event("e1"))
    pages = box._db.execute("PRAGMA page_count").fetchone()[0]
    box._db.execute(f"PRAGMA max_page_count = {pages}")  # nothing more fits
    seqs = [first] + [box.append("update", "t", b"m%d" % i + b"x" * 4000, _event("e1")) for i in range(1, 6)]
    seqs.append(box.append("end", "t", b"m6", _event("e1")))
    assert box.degraded and box.memory_rows >= 5 and len(box) == 7
    assert len(faults) == 1 and "database or disk is full" in faults[0] and str(tmp_path) in faults[0]
    assert [r.seq for r in box.pending(limit=100)] == seqs  # file and memory rows, in order
    box.delete(seqs[1])  # a row delivered from memory
    assert box.open_events() == []  # the end closed it, even in memory
    assert not box.retry()  # still full: still in memory, no new fault message
    assert len(faults) == 1
    box._db.execute("PRAGMA max_page_count = 1000000")
    assert box.retry() and not box.degraded and faults[-1] is None
    assert "works again" in caplog.text
    box.close()
    box = Outbox(tmp_path / "o.sqlite3")
    assert [r.seq for r in box.pending(limit=100)] == [seqs[0]] + seqs[2:]  # same numbers, same order
    assert box.open_events() == []
    assert box.append("new", "t", b"later") > seqs[-1]
    box.close()


def test_the_memory_queue_is_bounded_dropping_updates_first(tmp_path: Path, caplog) -> None:
    box = Outbox(tmp_path / "o.sqlite3", memory_max=4)
    box._db.execute(f"PRAGMA max_page_count = {box._db.execute('PRAGMA page_count').fetchone()[0]}")
    kinds = ["new", "update", "update", "end", "new", "update", "end", "update"]
    for i, kind in enumerate(kinds):
        box.append(kind, "t", b"p%d" % i + b"x" * 9000)
    assert box.degraded and box.memory_rows == 4
    on_disk = len(box) - 4
    assert box.memory_dropped == len(kinds) - on_disk - 4
    memory_kinds = [r.kind for r in box.pending(limit=100)][on_disk:]
    assert memory_kinds == ["end", "new", "end", "update"]  # updates first, then the oldest (a new)
    assert caplog.text.count("event queue in memory full") == box.memory_dropped
    box.close()


def test_a_garbage_outbox_is_moved_aside_and_a_fresh_one_started(tmp_path: Path, caplog) -> None:
    path = tmp_path / "outbox.sqlite3"
    path.write_bytes(b"this is not an SQLite database, it is junk " * 100)
    box = Outbox(path)
    assert box.moved_aside is not None and box.moved_aside.name.startswith("outbox.sqlite3.corrupt-")
    assert box.moved_aside.read_bytes().startswith(b"this is not")  # kept for a post-mortem
    assert str(box.moved_aside) in caplog.text  # and named in the log
    seq = box.append("new", "t", b"a")
    assert seq > 10**12  # continues above any seq the old file may have used
    assert [r.payload for r in box.pending()] == [b"a"]
    box.close()


@pytest.mark.parametrize("where", ["root page", "leaf page"])
def test_a_damaged_page_is_moved_aside(tmp_path: Path, where: str) -> None:
    """A damaged root page reads as "malformed"; a damaged leaf fails ``PRAGMA quick_check``."""
    import sqlite3

    path = tmp_path / "outbox.sqlite3"
    box = Outbox(path)
    for i in range(300):
        box.append("update", "t", b"%04d" % i * 50)
    box.close()
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        pages, size = db.execute("PRAGMA page_count").fetchone()[0], db.execute("PRAGMA page_size").fetchone()[0]
    data = bytearray(path.read_bytes())
    page = 2 if where == "root page" else pages - 5  # 1-based; page 2 is the outbox table's root
    start = (page - 1) * size
    data[start + 8 : start + 200] = b"\xff" * 192  # cell pointers out of range
    path.write_bytes(bytes(data))
    box = Outbox(path)
    assert box.moved_aside is not None and len(box) == 0 and not box.degraded
    box.close()


@pytest.fixture
def small_disk(tmp_path: Path):
    """A 320 KiB tmpfs: a real full disk (root only; elsewhere the max_page_count test covers it)."""
    with small_filesystem(tmp_path / "small", "320k") as mnt:
        yield mnt


def test_a_really_full_file_system_degrades_and_recovers(small_disk: Path) -> None:
    faults: list[str | None] = []
    box = Outbox(small_disk / "state" / "outbox.sqlite3", on_fault=faults.append)
    seqs = [box.append("new", "t", b"before", _event("e1"))]
    filler = small_disk / "filler"
    try:
        with filler.open("wb") as f:
            while True:
                f.write(b"\0" * 4096)
                f.flush()
    except OSError:
        pass  # ENOSPC: the file system is full
    seqs += [box.append("update", "t", b"u%d" % i * 1000, _event("e1")) for i in range(20)]
    assert box.degraded and faults and faults[0] is not None
    assert [r.seq for r in box.pending(limit=100)] == seqs
    filler.unlink()
    assert box.retry() and faults[-1] is None and box.memory_rows == 0
    box.close()
    box = Outbox(small_disk / "state" / "outbox.sqlite3")
    assert [r.seq for r in box.pending(limit=100)] == seqs and [e.id for e in box.open_events()] == ["e1"]
    box.close()


# --- review of issue 11: numbers never reused, a file unreadable at start, read-only disks ------


def _previous_run(path: Path) -> None:
    """Five events opened, the first three delivered: rows 4 and 5 and events e0..e4 left."""
    box = Outbox(path)
    for i in range(5):
        box.append("new", "t", b"x%d" % i, _event(f"e{i}"))
    for seq in (1, 2, 3):
        box.delete(seq)
    box.close()


def _failing_first_connect(monkeypatch: pytest.MonkeyPatch, message: str = "disk I/O error") -> None:
    """The first open of the file fails the way a sick disk makes it fail; later ones work."""
    real = Outbox._connect
    calls = {"n": 0}

    def flaky(self: Outbox, seq_floor: int = 0) -> sqlite3.Connection:
        calls["n"] += 1
        if calls["n"] == 1:
            raise sqlite3.OperationalError(message)
        return real(self, seq_floor)

    monkeypatch.setattr(Outbox, "_connect", flaky)


def _held_in_memory(box: Outbox, n: int = 5) -> list[int]:
    return [box.append("new", "t", b"mem%d" % i, _event(f"m{i}")) for i in range(n)]


def test_a_file_unreadable_at_start_never_reuses_sequence_numbers(tmp_path: Path, monkeypatch) -> None:
    """/tmp/rev11/seq_reuse.py: numbers continue above the mark, the old rows stay first, the
    previous run's open events are merged (not erased) and handed out to be ended."""
    path = tmp_path / "outbox.sqlite3"
    _previous_run(path)
    assert (tmp_path / "outbox.sqlite3.seq").read_text().strip() == "5"  # a clean close: exact
    _failing_first_connect(monkeypatch)
    faults: list[str | None] = []
    box = Outbox(path, on_fault=faults.append)
    assert box.degraded and box.open_events() == [] and box.take_stale() == []  # not readable yet
    seqs = _held_in_memory(box)
    assert seqs == [6, 7, 8, 9, 10]
    assert box.retry() and faults == [faults[0], None] and box.renumbered == 0
    rows = box.pending(limit=50)
    assert [(r.seq, r.payload) for r in rows] == [(4, b"x3"), (5, b"x4")] + [(s, b"mem%d" % i) for i, s in enumerate(seqs)]
    assert sorted(e.id for e in box.open_events()) == [f"e{i}" for i in range(5)] + [f"m{i}" for i in range(5)]
    assert [e.id for e in box.take_stale()] == [f"e{i}" for i in range(5)]  # only the previous run's
    assert box.take_stale() == []
    box.close()
    with sqlite3.connect(path) as db:  # what a crash now would leave: nothing erased
        assert len(db.execute("SELECT id FROM open_events").fetchall()) == 10


def test_a_stale_clock_and_a_lost_mark_renumber_memory_rows_above_the_file(tmp_path: Path, monkeypatch) -> None:
    """/tmp/rev11/seq_reuse2.py at its worst: neither the mark nor the file can tell the numbers
    used, the clock is stale (a Jetson without an RTC battery): the memory rows collide with the
    file's and are renumbered above them when they move back, in order, with no duplicate."""
    path = tmp_path / "outbox.sqlite3"
    _previous_run(path)
    (tmp_path / "outbox.sqlite3.seq").unlink()
    _failing_first_connect(monkeypatch)
    monkeypatch.setattr(Outbox, "_peek_top", lambda self: None)
    monkeypatch.setattr(outbox_mod.time, "time", lambda: 0.003)  # 3 ms after the epoch
    box = Outbox(path)
    assert _held_in_memory(box) == [4, 5, 6, 7, 8]  # what the file already used, in part
    assert box.retry() and not box.degraded and box.renumbered == 1
    rows = box.pending(limit=50)
    assert [r.seq for r in rows] == [4, 5, 9, 10, 11, 12, 13]  # above every number used: 4..8 went out
    assert [r.payload for r in rows] == [b"x3", b"x4"] + [b"mem%d" % i for i in range(5)]
    assert box.append("end", "t", b"later") == 14
    box.close()


@pytest.mark.parametrize("cause", ["disk I/O error", "database or disk is full", "database is locked"])
def test_any_failure_at_first_open_degrades_to_memory(tmp_path: Path, monkeypatch, cause: str) -> None:
    path = tmp_path / "outbox.sqlite3"
    _previous_run(path)
    _failing_first_connect(monkeypatch, cause)
    box = Outbox(path)
    assert box.degraded and cause in (box.failure or "")
    assert box.append("new", "t", b"m") > 5
    assert box.retry() and [r.payload for r in box.pending()] == [b"x3", b"x4", b"m"]
    box.close()


def test_a_really_full_file_system_at_start_keeps_order_and_open_events(small_disk: Path) -> None:
    """/tmp/rev11/fullopen.py: the previous run's file on a file system that is full at start."""
    path = small_disk / "state" / "outbox.sqlite3"
    _previous_run(path)
    filler = small_disk / "filler"
    try:
        with filler.open("wb") as f:
            while True:
                f.write(b"\0" * 512)
                f.flush()
    except OSError:
        pass  # ENOSPC
    box = Outbox(path)
    assert box.degraded
    seqs = [box.append("new", "t", b"m", _event("m")), box.append("new", "t", b"m2", _event("m2"))]
    # The previous run closed cleanly (its mark says 5) and no new mark can be written: numbers
    # jump to the clock, so a crash now could never hand out again what went out from memory.
    assert 5 < seqs[0] < seqs[1] and seqs[0] >= 10**12
    filler.unlink()
    assert box.retry() and not box.retry()  # works, and stays working
    assert [(r.seq, r.payload) for r in box.pending(limit=50)] == [(4, b"x3"), (5, b"x4"), (seqs[0], b"m"), (seqs[1], b"m2")]
    assert [e.id for e in box.take_stale()] == [f"e{i}" for i in range(5)]
    box.close()


def test_a_read_only_file_system_at_start_degrades_instead_of_failing(small_disk: Path) -> None:
    """/tmp/rev11/ro.py: an existing WAL outbox on a file system mounted read-only at start."""
    path = small_disk / "state" / "outbox.sqlite3"
    _previous_run(path)
    made = subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"cannot remount read-only: {made.stderr.decode(errors='replace').strip()}")
    try:
        faults: list[str | None] = []
        box = Outbox(path, on_fault=faults.append)
        assert box.degraded and faults and "mounted read-only" in (faults[-1] or "")
        seq = box.append("new", "t", b"m", _event("m"))
        assert seq > 5  # above the readable mark (and the clock's, as no new mark can be written)
        assert not box.retry()
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(small_disk)], capture_output=True)
    assert box.retry() and faults[-1] is None
    assert [r.seq for r in box.pending(limit=50)] == [4, 5, seq]
    box.close()


def test_cannot_open_on_a_read_only_file_system_is_a_fault_not_a_config_error(tmp_path: Path, monkeypatch) -> None:
    """The same without root: SQLITE_CANTOPEN and a directory statvfs calls read-only."""
    _failing_first_connect(monkeypatch, "unable to open database file")
    monkeypatch.setattr(outbox_mod, "read_only_fs", lambda path: True)
    faults: list[str | None] = []
    box = Outbox(tmp_path / "outbox.sqlite3", on_fault=faults.append)
    assert box.degraded and "remount it read-write" in (faults[-1] or "")
    box.close()


def test_cannot_open_with_no_permission_on_the_state_dir_is_a_config_error(tmp_path: Path, monkeypatch) -> None:
    _failing_first_connect(monkeypatch, "unable to open database file")
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if Path(p) == tmp_path else real_access(p, mode))
    with pytest.raises(ConfigError, match=f"lacks permission on {tmp_path}: chown it"):
        Outbox(tmp_path / "outbox.sqlite3")


def test_another_cannot_open_case_degrades(tmp_path: Path) -> None:
    """SQLITE_CANTOPEN on a writable directory (here the file's name is taken by a folder)."""
    (tmp_path / "outbox.sqlite3").mkdir()
    box = Outbox(tmp_path / "outbox.sqlite3")
    assert box.degraded and "unable to open database file" in (box.failure or "")
    assert box.append("new", "t", b"m") >= 1
    box.close()


def test_the_mark_reserves_numbers_ahead_so_a_crash_never_reuses_them(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite3"
    box = Outbox(path)
    first = box.append("new", "t", b"a")
    mark = int((tmp_path / "outbox.sqlite3.seq").read_text())
    assert mark == first + outbox_mod.SEQ_RESERVE - 1  # written before the number was used
    box._db.close()  # a crash: no close(), the mark still holds the reservation
    box._db = None
    again = Outbox(path)
    assert again.append("new", "t", b"b") == mark + 1
    again.close()


def test_past_the_reservation_without_a_mark_numbers_jump_to_the_clock(tmp_path: Path, monkeypatch) -> None:
    """A long spell with an unwritable mark must not leave numbers a crash would hand out again."""
    box = Outbox(tmp_path / "outbox.sqlite3")
    first = box.append("new", "t", b"a")
    monkeypatch.setattr(box, "_write_mark", lambda value: False)  # the mark cannot be written any more
    box._last_seq = box._reserved  # the reservation is used up
    before = int(time.time() * 1000)
    seq = box._next_seq()
    assert seq >= before > first  # above anything the reservation covered, and what a crash would reuse
    box.close()


def test_fault_notices_end_with_the_current_state(tmp_path: Path) -> None:
    """A fault taken by one thread and a recovery by another: the last word is the recovery."""
    published: list[str | None] = []
    entered = threading.Event()
    release = threading.Event()

    def publish(message: str | None) -> None:
        if message is not None and not entered.is_set():
            entered.set()
            release.wait(5)  # the pipeline thread is slow to publish its fault
        published.append(message)

    box = Outbox(tmp_path / "o.sqlite3", on_fault=publish)
    box._db.execute(f"PRAGMA max_page_count = {box._db.execute('PRAGMA page_count').fetchone()[0]}")
    appender = threading.Thread(target=box.append, args=("update", "t", b"x" * 9000))
    appender.start()
    assert entered.wait(5)
    box._db.execute("PRAGMA max_page_count = 1000000")
    recovery = threading.Thread(target=box.retry)
    recovery.start()
    time.sleep(0.2)  # the sender's recovery notice must wait for the fault's
    release.set()
    appender.join(5)
    recovery.join(5)
    assert box.failure is None and published[-1] is None and published[0] is not None
    box.close()


def test_dead_letters_are_kept_in_the_file_even_when_decided_while_degraded(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite3"
    box = Outbox(path)
    in_file = box.append("new", "t", b"file-row")
    box._db.execute(f"PRAGMA max_page_count = {box._db.execute('PRAGMA page_count').fetchone()[0]}")
    in_memory = box.append("new", "t", b"mem-row" + b"x" * 9000)
    kept = box.append("end", "t", b"kept" + b"x" * 9000)
    assert box.degraded and box.memory_rows == 2
    assert box.dead_letter(in_memory, 0x95, "Packet too large (0x95)").payload.startswith(b"mem-row")
    assert box.dead_letter(in_file, 0x99, "Payload format invalid (0x99)").payload == b"file-row"
    assert box.dead_letter(in_file, 0x99, "again") is None  # set aside already
    assert box.dead_letters == 2 and [r.seq for r in box.pending()] == [kept]
    box._db.execute("PRAGMA max_page_count = 1000000")
    assert box.retry()
    box.close()
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT seq, code FROM dead_letter ORDER BY seq").fetchall()
        assert rows == [(in_file, 0x99), (in_memory, 0x95)]
        assert [r[0] for r in db.execute("SELECT seq FROM outbox")] == [kept]
    again = Outbox(path)
    assert again.dead_letters == 2 and [r.seq for r in again.pending()] == [kept]
    again.close()
