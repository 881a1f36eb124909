"""Decoded audio cached on disk, so that each epoch reads int16 rows instead of decoding WAVs.

The reference code holds the whole data set in RAM (about 30 GB for DCASE 2020); here a list of
files becomes one memory-mapped ``.npy`` of shape (N, 160000) int16 (320 kB per clip), which
the OS pages in as the training loop needs it. The cache is keyed by a hash of the sorted
(path, size, mtime) list and the clip length, so a changed, added or removed file rebuilds it,
and it is written to a temporary name and renamed at the end, so an interrupted build is
never mistaken for a finished one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from edge_asd.core.audio_io import AudioFileError, fit_length, read_audio
from edge_asd.core.constants import WINDOW_SAMPLES

logger = logging.getLogger(__name__)

CACHE_VERSION = 1
_SCALE = 32768.0  # int16 full scale, the same convention as soundfile's float conversion


class AudioCache:
    """A finished cache of the files ``paths`` (in the order they were given).

    ``cache[i]`` (or ``cache.audio[i]``) is the int16 row of ``paths[i]``; ``ok[i]`` says whether
    that file could be read (a bad file's row is silent). On disk the rows are in sorted path
    order (``files``), so the same set of files in another order reuses the same cache.
    """

    def __init__(
        self,
        npy_path: Path,
        paths: Sequence[Path | str],
        files: Sequence[Path],
        length: int,
        bad: Sequence[tuple[Path, str]] = (),
        reused: bool = False,
    ) -> None:
        self.npy_path = Path(npy_path)
        self.paths = [Path(p) for p in paths]
        self.files = list(files)
        self.length = int(length)
        self.bad = list(bad)
        self.reused = reused
        self.rows = {p: i for i, p in enumerate(self.files)}
        self._order = np.array([self.rows[p.resolve()] for p in self.paths], dtype=np.int64)
        bad_rows = {self.rows[p] for p, _ in self.bad}
        self.ok = np.array([r not in bad_rows for r in self._order], dtype=bool)
        self._array: np.ndarray | None = None

    @property
    def array(self) -> np.ndarray:
        """The on-disk (N, length) int16 memmap, opened on first use (and again in each worker)."""
        if self._array is None:
            self._array = np.load(self.npy_path, mmap_mode="r")
        return self._array

    @property
    def audio(self) -> AudioCache:
        """Row access by position in ``paths``: ``cache.audio[i]`` is int16 (length,)."""
        return self

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> np.ndarray:
        return self.array[self._order[i]]

    def row(self, path: Path | str) -> int:
        """The on-disk row of ``path`` (any spelling of it)."""
        return self.rows[Path(path).resolve()]

    def clip_audio(self, path: Path | str) -> np.ndarray:
        """The cached clip of ``path`` as float32 in [-1, 1)."""
        return self.row_audio(self.row(path))

    def row_audio(self, row: int) -> np.ndarray:
        """On-disk row ``row`` as float32 in [-1, 1)."""
        return self.array[row].astype(np.float32) / np.float32(_SCALE)

    @property
    def good_paths(self) -> list[Path]:
        return [p for p, ok in zip(self.paths, self.ok, strict=True) if ok]

    def __getstate__(self) -> dict:
        # A DataLoader worker must not receive a copy of the whole memmap: it reopens the file.
        state = self.__dict__.copy()
        state["_array"] = None
        return state


def default_cache_dir() -> Path:
    """``$EDGE_ASD_CACHE`` or ``$XDG_CACHE_HOME/edge-asd/audio`` (``~/.cache/edge-asd/audio``)."""
    env = os.environ.get("EDGE_ASD_CACHE")
    if env:
        return Path(env).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "edge-asd" / "audio"


def cache_key(paths: Sequence[Path | str], length: int = WINDOW_SAMPLES) -> str:
    """Hash of the sorted (path, size, mtime_ns) list and the target length."""
    items = []
    for p in sorted(Path(x).resolve() for x in paths):
        try:
            st = p.stat()
            items.append([str(p), st.st_size, st.st_mtime_ns])
        except OSError:
            items.append([str(p), -1, -1])
    blob = json.dumps({"version": CACHE_VERSION, "length": int(length), "files": items}, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def build_cache(
    paths: Sequence[Path | str],
    cache_dir: Path | str,
    length: int = WINDOW_SAMPLES,
    progress: Callable[[int, int], None] | None = None,
    skip_bad: bool = False,
) -> AudioCache:
    """Decode ``paths`` (cropped/padded to ``length``) into a cached int16 array, or reuse one.

    Rows are in sorted path order. An unreadable file raises ``AudioFileError`` naming it,
    unless ``skip_bad``: then its row stays silent and it is listed in ``AudioCache.bad``
    (the caller logs those in the run log and leaves them out). ``progress(done, total)`` is
    called after each decoded file.
    """
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    files = sorted({Path(p).resolve() for p in paths})
    key = cache_key(files, length)
    npy_path = cache_dir / f"audio-{key[:20]}.npy"
    meta_path = npy_path.with_suffix(".json")
    reused = _load_meta(meta_path, npy_path, key, len(files), length)
    if reused is not None:
        bad = [(Path(p), msg) for p, msg in reused["bad"]]
        if bad and not skip_bad:
            p, msg = bad[0]
            raise AudioFileError(msg if str(p) in msg else f"{p}: {msg}")
        logger.info("reusing audio cache %s (%d clips)", npy_path, len(files))
        return AudioCache(npy_path, paths, files, length, bad, reused=True)

    tmp_npy = npy_path.with_name(f".{npy_path.stem}.{os.getpid()}.tmp.npy")
    tmp_meta = meta_path.with_name(f".{meta_path.stem}.{os.getpid()}.tmp.json")
    bad: list[tuple[Path, str]] = []
    try:
        arr = np.lib.format.open_memmap(tmp_npy, mode="w+", dtype=np.int16, shape=(len(files), length))
        for i, path in enumerate(files):
            try:
                audio = fit_length(read_audio(path), length)
            except AudioFileError as err:
                if not skip_bad:
                    raise
                logger.warning("skipping unreadable audio: %s", err)
                bad.append((path, str(err)))
                arr[i] = 0
            else:
                arr[i] = np.clip(np.round(audio * _SCALE), -32768, 32767).astype(np.int16)
            if progress is not None:
                progress(i + 1, len(files))
        arr.flush()
        del arr
        meta = {
            "version": CACHE_VERSION,
            "key": key,
            "length": length,
            "count": len(files),
            "paths": [str(p) for p in files],
            "bad": [[str(p), msg] for p, msg in bad],
        }
        tmp_meta.write_text(json.dumps(meta, indent=1))
        os.replace(tmp_npy, npy_path)
        os.replace(tmp_meta, meta_path)  # written last: its presence marks a finished cache
    finally:
        for tmp in (tmp_npy, tmp_meta):
            tmp.unlink(missing_ok=True)
    logger.info("built audio cache %s (%d clips, %d unreadable)", npy_path, len(files), len(bad))
    return AudioCache(npy_path, paths, files, length, bad, reused=False)


def _load_meta(meta_path: Path, npy_path: Path, key: str, count: int, length: int) -> dict | None:
    """The metadata of a finished cache with this key, or None when it must be (re)built."""
    if not (meta_path.is_file() and npy_path.is_file()):
        return None
    try:
        meta = json.loads(meta_path.read_text())
        header = np.load(npy_path, mmap_mode="r")
    except (OSError, ValueError) as err:
        logger.warning("audio cache %s is unreadable (%s): rebuilding it", npy_path, err)
        return None
    if meta.get("key") != key or header.shape != (count, length) or header.dtype != np.int16:
        return None
    return meta


def load_audio_cache(
    paths: Sequence[Path | str],
    cache_dir: Path | str | None = None,
    length: int = WINDOW_SAMPLES,
    skip_bad: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> AudioCache:
    """``build_cache`` in ``cache_dir`` or the default folder (``default_cache_dir``).

    ``progress(done, total)`` is called after each decoded file; the caller renders it (the
    trainer passes its ``Progress`` sink, so this module draws nothing itself).
    """
    folder = Path(cache_dir) if cache_dir else default_cache_dir()
    return build_cache(paths, folder, length, progress or None, skip_bad)


__all__ = ["CACHE_VERSION", "AudioCache", "build_cache", "cache_key", "default_cache_dir", "load_audio_cache"]
