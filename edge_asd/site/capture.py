"""Minutes of one stream's audio from the live input machinery, as gap-free segments.

``enrol --config`` learns a stream's normal from its configured source (a sound card, a file,
the synthetic generator) through exactly the path ``listen`` uses: source -> capture ring ->
streaming resampler -> 16 kHz ``StreamBuffer``. This module drains the streams of a
``Capture`` into memory. A gap (an input overflow, a device restart) ends a segment and
starts a new one: a window must never straddle a splice, and the hold-out rule treats
segments as separate stretches of time. For sources that are not real time (files, synth) the
capture's backpressure (``hold_index``) keeps every sample, as ``record`` does.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence

import numpy as np

from edge_asd.audio.capture import Capture
from edge_asd.audio.devices import AudioDeviceError
from edge_asd.core.constants import SAMPLE_RATE

logger = logging.getLogger(__name__)

CHUNK_SAMPLES = SAMPLE_RATE // 2
"""Audio taken from the buffer at a time: half a second, well inside the buffer's history."""


def capture_segments(
    capture: Capture,
    *,
    seconds: float,
    stream_indices: Sequence[int] | None = None,
    labels: Sequence[str] | None = None,
    stall_timeout_s: float = 60.0,
    poll_s: float = 0.05,
    progress: Callable[[float], None] | None = None,
    stop: threading.Event | None = None,
) -> list[list[tuple[str, np.ndarray]]]:
    """Up to ``seconds`` of 16 kHz audio of each stream of ``capture``, split at gaps.

    All streams of one capture are read in lockstep (they share sample indices), so one pass
    over a multichannel input enrols every stream on it. Pass the capture not yet started;
    the caller stops it. Returns, per stream index, ``[(segment_id, audio)]`` with ids
    ``<label>#<n>@<UTC start>``. Ends early when the source finishes (end of a file) or
    ``stop`` is set; Ctrl-C keeps what was captured. ``progress(seconds_so_far)`` is called
    about once a second.
    """
    indices = list(range(len(capture.streams))) if stream_indices is None else [int(i) for i in stream_indices]
    names = list(labels) if labels is not None else [f"{capture.source.name}:{i}" for i in indices]
    buffers = [capture.streams[i] for i in indices]
    wanted = int(round(seconds * SAMPLE_RATE))
    segments: list[list[tuple[str, np.ndarray]]] = [[] for _ in indices]
    current: list[list[np.ndarray]] = [[] for _ in indices]
    current_id = ""
    total = 0
    next_start = max(b.first_index for b in buffers)
    capture.hold_index = next_start
    if not capture.started:
        capture.start()
    last_end, last_change, last_report = buffers[0].end_index, time.monotonic(), time.monotonic()

    def close_segment() -> None:
        for k in range(len(indices)):
            if current[k]:
                segments[k].append((f"{names[k]}#{current_id}", np.concatenate(current[k])))
            current[k] = []

    try:
        while total < wanted:
            capture.hold_index = next_start
            if stop is not None and stop.is_set():
                break
            n = min(CHUNK_SAMPLES, wanted - total)
            end_index = min(b.end_index for b in buffers)
            if end_index < next_start + n:
                if capture.finished.is_set():
                    break
                if capture.error is not None:
                    raise AudioDeviceError(f"capture from {capture.source.name} failed: {capture.error}")
                now = time.monotonic()
                if end_index != last_end:
                    last_end, last_change = end_index, now
                elif now - last_change > stall_timeout_s:
                    raise AudioDeviceError(
                        f"no audio from {capture.source.name} for {stall_timeout_s:.0f} s: check the device and its cable"
                    )
                time.sleep(poll_s)
                continue
            got = [b.get(next_start, n) for b in buffers]
            if any(g is None or g[1] for g in got):  # fell out of a buffer, or a gap: a new segment
                close_segment()
                next_start = max(next_start + n, max(b.first_index for b in buffers))
                continue
            if not current[0]:
                current_id = f"{sum(len(x) for x in segments)}@{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
            for k, g in enumerate(got):
                assert g is not None
                current[k].append(np.asarray(g[0], dtype=np.float32).copy())
            next_start += n
            total += n
            if progress is not None and time.monotonic() - last_report >= 1.0:
                last_report = time.monotonic()
                progress(total / SAMPLE_RATE)
    except KeyboardInterrupt:
        logger.warning("interrupted: enrolling from the %.0f s captured so far", total / SAMPLE_RATE)
    finally:
        capture.hold_index = None
        close_segment()
    return segments


__all__ = ["CHUNK_SAMPLES", "capture_segments"]
