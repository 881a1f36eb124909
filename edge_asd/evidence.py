"""Evidence of each anomaly event: the triggering 10 s window as WAV plus a spectrogram PNG.

Somebody paged at 3 a.m. wants to *hear* what the monitor heard. Evidence lives on the
device's own storage (often an SD card), so the directory is bounded by both a count and a
byte budget, oldest events removed first, and every file is written to a temporary name and
renamed into place so a power cut never leaves half a WAV behind.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_asd.core.atomic import atomic_write_bytes
from edge_asd.core.constants import SAMPLE_RATE
from edge_asd.png import colormap, encode_png

logger = logging.getLogger(__name__)

_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(text: str) -> str:
    """A file-name-safe version of a stream name or event id."""
    return _SAFE.sub("_", str(text)).strip("._") or "_"


def wav_bytes(audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> bytes:
    """16-bit PCM mono WAV of float audio in [-1, 1] (clipped first, NaN as 0)."""
    x = np.nan_to_num(np.asarray(audio, dtype=np.float64).reshape(-1), nan=0.0, posinf=1.0, neginf=-1.0)
    pcm = np.round(np.clip(x, -1.0, 1.0) * 32767.0).astype("<i2")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(int(sample_rate))
        w.writeframes(pcm.tobytes())
    return buf.getvalue()


def write_wav_atomic(path: Path, audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> Path:
    atomic_write_bytes(path, wav_bytes(audio, sample_rate))
    return path


def log_spectrogram(audio: np.ndarray, n_fft: int = 512, hop: int = 256) -> np.ndarray:
    """Log-power STFT in dB, shape ``(n_fft // 2 + 1, frames)``, Hann window, numpy only."""
    x = np.nan_to_num(np.asarray(audio, dtype=np.float64).reshape(-1))
    if x.size < n_fft:
        x = np.pad(x, (0, n_fft - x.size))
    window = np.hanning(n_fft + 1)[:-1]
    frames = np.lib.stride_tricks.sliding_window_view(x, n_fft)[::hop]
    spec = np.fft.rfft(frames * window, axis=1)
    power = spec.real**2 + spec.imag**2
    return (10.0 * np.log10(power + 1e-12)).T


def spectrogram_png(audio: np.ndarray, dynamic_range_db: float = 80.0, n_fft: int = 512, hop: int = 256) -> bytes:
    """PNG of the log spectrogram: time to the right, frequency up, top ``dynamic_range_db``."""
    db = log_spectrogram(audio, n_fft, hop)
    top = float(db.max())
    norm = (db - (top - dynamic_range_db)) / dynamic_range_db
    image = colormap(norm[::-1])  # low frequencies at the bottom
    return encode_png(image)


BAND_PANEL_HEIGHT = 120
BAND_PANEL_DB = (-70.0, 0.0)
"""Band levels relative to the window's total power drawn in the panel (bottom, top)."""

NormalBands = tuple[np.ndarray, np.ndarray, np.ndarray]
"""(band centres in Hz, normal low dB, normal high dB) of an enrolled stream."""


def band_panel(audio: np.ndarray, normal: NormalBands, width: int) -> np.ndarray:
    """RGB panel: the window's third-octave band levels (white bars) over the enrolled normal
    range of each band (grey); a band outside its normal range is drawn red.

    No text (no fonts on the device): the bands run 25 Hz .. 8 kHz left to right, the levels
    -70 .. 0 dB re the window's total power bottom to top, as ``edge_asd.core.indicators``
    measures them; the event's explanation names the bands in words.
    """
    from edge_asd.core.indicators import band_levels

    centres, levels = band_levels(audio)
    want_hz, low, high = normal
    lo_db, hi_db = BAND_PANEL_DB
    h = BAND_PANEL_HEIGHT
    panel = np.full((h, width, 3), 16, dtype=np.uint8)

    def row(db: float) -> int:
        frac = (min(max(db, lo_db), hi_db) - lo_db) / (hi_db - lo_db)
        return int(round((1.0 - frac) * (h - 1)))

    n = len(centres)
    for i, hz in enumerate(centres):
        x0, x1 = i * width // n, max((i + 1) * width // n - 1, i * width // n + 1)
        match = np.flatnonzero(np.isclose(want_hz, hz))
        if match.size:
            j = int(match[0])
            panel[row(float(high[j])) : row(float(low[j])) + 1, x0:x1] = (90, 90, 90)
            outside = not float(low[j]) <= float(levels[i]) <= float(high[j])
        else:
            outside = False
        top = row(float(levels[i]))
        colour = (235, 60, 50) if outside else (235, 235, 235)
        panel[top : min(top + 3, h), x0:x1] = colour
    return panel


def evidence_png(audio: np.ndarray, normal: NormalBands | None = None) -> bytes:
    """The spectrogram, and under it the band-level panel when the stream is enrolled."""
    if normal is None:
        return spectrogram_png(audio)
    db = log_spectrogram(audio)
    top = float(db.max())
    spec = colormap((db - (top - 80.0)) / 80.0)[::-1]
    gap = np.zeros((4, spec.shape[1], 3), dtype=np.uint8)
    return encode_png(np.concatenate([spec, gap, band_panel(audio, normal, spec.shape[1])], axis=0))


@dataclass(frozen=True)
class EvidenceFiles:
    wav: Path
    png: Path | None


class EvidenceStore:
    """Bounded folder of evidence: ``root/<stream>/<event id>.wav`` and ``.png``.

    ``max_count`` bounds the number of events (a WAV and its PNG count as one), ``max_bytes``
    the total size; when either is exceeded after a save, the oldest events (by modification
    time) are deleted until both hold again, never the one just saved.
    """

    def __init__(
        self,
        root: str | Path,
        max_count: int = 200,
        max_bytes: int = 512 * 1024 * 1024,
        png: bool = True,
        sample_rate: int = SAMPLE_RATE,
    ) -> None:
        if max_count < 1 or max_bytes < 1:
            raise ValueError("EvidenceStore needs max_count >= 1 and max_bytes >= 1")
        self.root = Path(root)
        self.max_count = int(max_count)
        self.max_bytes = int(max_bytes)
        self.png = png
        self.sample_rate = int(sample_rate)
        self.removed = 0

    def wav_path(self, stream: str, event_id: str) -> Path:
        """Where the WAV of an event is (or would be) kept."""
        return self.root / safe_name(stream) / f"{safe_name(event_id)}.wav"

    def save(
        self, stream: str, event_id: str, audio: np.ndarray, normal_bands: NormalBands | None = None
    ) -> EvidenceFiles:
        """Save one event's window; returns the paths (the WAV path goes into the event).

        ``normal_bands``: the enrolled normal range of each third-octave band, drawn under the
        spectrogram with the window's own band levels."""
        folder = self.root / safe_name(stream)
        stem = safe_name(event_id)
        wav = write_wav_atomic(folder / f"{stem}.wav", audio, self.sample_rate)
        png_path = None
        if self.png:
            png_path = folder / f"{stem}.png"
            atomic_write_bytes(png_path, evidence_png(audio, normal_bands))
        self.enforce_limits(keep={wav, png_path} - {None})
        return EvidenceFiles(wav=wav, png=png_path)

    def entries(self) -> list[tuple[float, int, list[Path]]]:
        """``(mtime, bytes, files)`` per event, oldest first."""
        groups: dict[Path, list[Path]] = {}
        if not self.root.is_dir():
            return []
        for path in self.root.rglob("*"):
            if path.is_file() and path.suffix in (".wav", ".png") and not path.name.startswith("."):
                groups.setdefault(path.with_suffix(""), []).append(path)
        out = []
        for files in groups.values():
            stats = [f.stat() for f in files if f.exists()]
            if stats:
                out.append((max(s.st_mtime for s in stats), sum(s.st_size for s in stats), files))
        out.sort(key=lambda e: (e[0], str(e[2][0])))
        return out

    def usage(self) -> tuple[int, int]:
        """(events, bytes) currently stored."""
        entries = self.entries()
        return len(entries), sum(e[1] for e in entries)

    def enforce_limits(self, keep: set | None = None) -> int:
        """Delete the oldest events until the count and byte bounds hold; returns how many."""
        keep = {p for p in (keep or set()) if p is not None}
        entries = self.entries()
        count, total = len(entries), sum(e[1] for e in entries)
        removed = 0
        for _mtime, size, files in entries:
            if count <= self.max_count and total <= self.max_bytes:
                break
            if keep.intersection(files):
                continue
            for f in files:
                with contextlib.suppress(FileNotFoundError):
                    f.unlink()
            count -= 1
            total -= size
            removed += 1
            logger.debug("evidence: removed %s to stay within bounds", files[0].with_suffix(""))
        self.removed += removed
        return removed
