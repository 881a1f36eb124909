"""A minimal PNG writer (8-bit grey or RGB) on zlib: spectrograms without matplotlib.

The device has no matplotlib or Pillow, and a PNG is just a signature plus three chunks:
IHDR (size and pixel format), IDAT (the zlib-compressed rows, each prefixed by a filter
byte; we use filter 0, "none") and IEND, each with a CRC-32.
"""

from __future__ import annotations

import logging
import struct
import zlib

import numpy as np

logger = logging.getLogger(__name__)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def encode_png(image: np.ndarray, compress_level: int = 6) -> bytes:
    """PNG bytes of ``image``: uint8 ``(h, w)`` grey or ``(h, w, 3)`` RGB, row 0 at the top."""
    img = np.asarray(image)
    if img.dtype != np.uint8:
        raise ValueError(f"PNG image must be uint8, got {img.dtype}")
    if img.ndim == 2:
        colour_type, channels = 0, 1
    elif img.ndim == 3 and img.shape[2] == 3:
        colour_type, channels = 2, 3
    else:
        raise ValueError(f"PNG image must be (h, w) or (h, w, 3), got {img.shape}")
    h, w = img.shape[:2]
    if h < 1 or w < 1:
        raise ValueError("PNG image must not be empty")
    rows = np.ascontiguousarray(img).reshape(h, w * channels)
    raw = np.zeros((h, 1 + w * channels), dtype=np.uint8)  # column 0: filter type 0
    raw[:, 1:] = rows
    ihdr = struct.pack(">IIBBBBB", w, h, 8, colour_type, 0, 0, 0)
    return (
        PNG_SIGNATURE
        + _chunk(b"IHDR", ihdr)
        + _chunk(b"IDAT", zlib.compress(raw.tobytes(), compress_level))
        + _chunk(b"IEND", b"")
    )


# Anchor colours (dark blue -> purple -> orange -> pale yellow) for a perceptually ordered
# map that stays readable in greyscale print; interpolated linearly in between.
_ANCHORS = np.array(
    [
        [0, 0, 16],
        [40, 20, 100],
        [120, 30, 130],
        [200, 60, 90],
        [245, 140, 40],
        [252, 230, 150],
    ],
    dtype=np.float64,
)


def colormap(values: np.ndarray) -> np.ndarray:
    """Map values in [0, 1] to uint8 RGB through the anchor gradient above."""
    v = np.clip(np.nan_to_num(np.asarray(values, dtype=np.float64)), 0.0, 1.0)
    pos = v * (len(_ANCHORS) - 1)
    lo = np.minimum(pos.astype(np.int64), len(_ANCHORS) - 2)
    frac = (pos - lo)[..., None]
    rgb = _ANCHORS[lo] * (1.0 - frac) + _ANCHORS[lo + 1] * frac
    return np.round(rgb).astype(np.uint8)
