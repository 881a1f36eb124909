"""Crash-safe writes (``edge_asd.core.atomic``): the data and the rename both reach the disk.

A rename lives in the directory: until the directory is synced, a power cut can bring back
the old file (or none) although the new data was fsynced. File systems that refuse to sync a
directory must not make a write fail.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from edge_asd.core import atomic
from edge_asd.core.atomic import atomic_write_bytes, atomic_write_text


def _fsync_recorder(monkeypatch: pytest.MonkeyPatch, fail_dirs: bool = False) -> list[str]:
    """Record what ``os.fsync`` is called on: 'file' or 'dir' (optionally refusing dirs)."""
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        kind = "dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file"
        synced.append(kind)
        if kind == "dir" and fail_dirs:
            raise OSError(22, "Invalid argument")  # what some network file systems answer
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return synced


def test_rename_is_made_durable_by_syncing_the_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced = _fsync_recorder(monkeypatch)
    target = tmp_path / "sub" / "thresholds.json"
    assert atomic_write_text(target, '{"a": 1}\n', mode=0o640) == target
    assert target.read_text() == '{"a": 1}\n' and stat.S_IMODE(target.stat().st_mode) == 0o640
    assert synced == ["file", "dir"]  # the data first, then the rename
    assert [p.name for p in target.parent.iterdir()] == ["thresholds.json"]  # no temporary left


def test_a_folder_that_cannot_be_synced_is_not_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced = _fsync_recorder(monkeypatch, fail_dirs=True)
    target = atomic_write_bytes(tmp_path / "blob.bin", b"\x00\x01")
    assert target.read_bytes() == b"\x00\x01" and synced == ["file", "dir"]

    def refuse(*args: object, **kwargs: object) -> int:
        raise PermissionError(13, "Permission denied")

    atomic.fsync_dir(tmp_path)  # a folder that can be synced: nothing to see
    monkeypatch.setattr(os, "open", refuse)
    atomic.fsync_dir(tmp_path)  # cannot even be opened: ignored too


def test_a_failed_write_leaves_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "state.json"
    atomic_write_text(target, "old")

    def broken_replace(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="No space left"):
        atomic_write_text(target, "new")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["state.json"]
