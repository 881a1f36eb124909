"""Crash-safe file writes: a reader (or a resumed run) never sees half a file.

Torch-free and numpy-free, so the device (evidence, outbox neighbours) and the trainer
(checkpoints, thresholds, metrics) share one implementation.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from pathlib import Path

logger = logging.getLogger(__name__)


def atomic_write_bytes(path: str | Path, data: bytes, mode: int = 0o644) -> Path:
    """Write through a temporary file in the same folder, fsync, ``os.replace``, then fsync
    the folder (so the rename itself survives a power cut)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, mode)  # mkstemp makes it 0600
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)
    return path


def fsync_dir(folder: str | Path) -> None:
    """Make a rename in ``folder`` durable: until the directory itself is synced, a power cut
    can bring back the old name (the old file, or none) although the new data is on disk.

    Best effort: some file systems (and platforms) refuse to open or sync a directory; the
    write has still happened, so that is not an error.
    """
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError as err:
        logger.debug("cannot open %s to sync it: %s", folder, err)
        return
    try:
        os.fsync(fd)
    except OSError as err:
        logger.debug("cannot sync directory %s: %s", folder, err)
    finally:
        os.close(fd)


def atomic_write_text(path: str | Path, text: str, mode: int = 0o644) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"), mode)
