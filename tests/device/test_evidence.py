"""Evidence store (bounded, atomic) and the PNG writer."""

from __future__ import annotations

import os
import struct
import wave
import zlib
from pathlib import Path

import numpy as np
import pytest

from edge_asd.evidence import EvidenceStore, log_spectrogram, wav_bytes
from edge_asd.png import PNG_SIGNATURE, encode_png

pytestmark = pytest.mark.device


def _parse_png(data: bytes) -> tuple[dict, bytes]:
    assert data[:8] == PNG_SIGNATURE
    pos, chunks, idat = 8, [], b""
    ihdr = None
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert crc == zlib.crc32(kind + body) & 0xFFFFFFFF
        chunks.append(kind)
        if kind == b"IHDR":
            w, h, depth, colour, _c, _f, _i = struct.unpack(">IIBBBBB", body)
            ihdr = {"width": w, "height": h, "depth": depth, "colour": colour}
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    assert chunks[0] == b"IHDR" and chunks[-1] == b"IEND"
    return ihdr, zlib.decompress(idat)


def test_png_roundtrip_grey_and_rgb() -> None:
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    ihdr, raw = _parse_png(encode_png(grey))
    assert ihdr == {"width": 4, "height": 3, "depth": 8, "colour": 0}
    rows = np.frombuffer(raw, np.uint8).reshape(3, 5)
    assert np.all(rows[:, 0] == 0)
    np.testing.assert_array_equal(rows[:, 1:], grey)
    rgb = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    ihdr, raw = _parse_png(encode_png(rgb))
    assert ihdr["colour"] == 2 and (ihdr["width"], ihdr["height"]) == (7, 5)
    np.testing.assert_array_equal(np.frombuffer(raw, np.uint8).reshape(5, 22)[:, 1:].reshape(5, 7, 3), rgb)
    with pytest.raises(ValueError):
        encode_png(np.zeros((2, 2), np.float32))


def test_spectrogram_finds_the_tone() -> None:
    t = np.arange(16000) / 16000
    db = log_spectrogram(np.sin(2 * np.pi * 1000 * t), n_fft=512, hop=256)
    assert db.shape == (257, 61)
    assert abs(int(np.argmax(db[:, 30])) - 32) <= 1  # 1000 Hz / 31.25 Hz per bin


def _window(seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(160000) * 0.1).astype(np.float32)


def test_save_roundtrips_wav_and_png(tmp_path: Path) -> None:
    store = EvidenceStore(tmp_path / "ev")
    audio = _window(0)
    files = store.save("mic 1/a", "1700000000.123456-abc123", audio)
    assert files.wav.parent.name == "mic_1_a" and files.wav.name == "1700000000.123456-abc123.wav"
    with wave.open(str(files.wav)) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()) == (1, 2, 16000, 160000)
        pcm = np.frombuffer(w.readframes(160000), "<i2")
    np.testing.assert_allclose(pcm / 32767.0, audio, atol=1.0 / 32767)
    ihdr, raw = _parse_png(files.png.read_bytes())
    assert ihdr["colour"] == 2 and ihdr["height"] == 257 and ihdr["width"] == 624
    assert len(raw) == ihdr["height"] * (1 + 3 * ihdr["width"])
    assert not [p for p in files.wav.parent.iterdir() if p.name.startswith(".")]  # no temp files left


def test_bounded_by_count_oldest_first(tmp_path: Path) -> None:
    store = EvidenceStore(tmp_path, max_count=3, png=False)
    paths = []
    for i in range(5):
        p = store.save("m", f"ev{i}", _window(i)).wav
        os.utime(p, (1000 + i, 1000 + i))  # distinct mtimes, oldest first
        paths.append(p)
    store.enforce_limits()
    assert [p.exists() for p in paths] == [False, False, True, True, True]
    assert store.usage()[0] == 3 and store.removed == 2


def test_bounded_by_bytes_keeps_newest(tmp_path: Path) -> None:
    one = len(wav_bytes(_window(0)))
    store = EvidenceStore(tmp_path, max_count=100, max_bytes=int(2.5 * one), png=False)
    paths = []
    for i in range(4):
        p = store.save("m", f"ev{i}", _window(i)).wav
        os.utime(p, (2000 + i, 2000 + i))
        paths.append(p)
    store.enforce_limits()
    count, total = store.usage()
    assert count == 2 and total <= 2.5 * one
    assert paths[-1].exists() and paths[-2].exists()
    tiny = EvidenceStore(tmp_path / "tiny", max_bytes=10, png=False)
    assert tiny.save("m", "only", _window(9)).wav.exists()  # the one just saved is never removed
