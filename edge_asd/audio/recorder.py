"""Recording normal operation as 10 s, 16 kHz clips in the own-machines training layout.

``edge-asd record`` is how a user collects training data for their own machine:
``OUT/<machine>/[<id>/]rec_<UTC time>_<n>.wav``, the layout ``edge-asd train --layout own``
reads. Clips are consecutive, non-overlapping windows of one stream. A clip that spans a gap
(overflow, device restart) is dropped and counted, because a splice is not normal machine
sound. Every clip is written atomically, so Ctrl-C keeps every finished clip and leaves no
partial file; names carry the capture time and a counter and never overwrite a file.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from edge_asd.audio.capture import Capture
from edge_asd.audio.devices import AudioDeviceError
from edge_asd.core.constants import SAMPLE_RATE, WINDOW_SAMPLES
from edge_asd.evidence import safe_name, write_wav_atomic

logger = logging.getLogger(__name__)


@dataclass
class RecordResult:
    saved: list[Path] = field(default_factory=list)
    dropped: int = 0
    planned: int = 0
    interrupted: bool = False


def clip_folder(out_dir: str | Path, machine: str, machine_id: str | None = None) -> Path:
    """``OUT/<machine>/[<id>/]`` with file-name-safe parts."""
    folder = Path(out_dir) / safe_name(machine)
    if machine_id:
        folder = folder / safe_name(machine_id)
    return folder


def _unique_path(folder: Path, stamp: str, n: int) -> Path:
    path = folder / f"rec_{stamp}_{n:05d}.wav"
    k = 1
    while path.exists():
        path = folder / f"rec_{stamp}_{n:05d}_{k}.wav"
        k += 1
    return path


def record_clips(
    capture: Capture,
    folder: Path,
    n_clips: int,
    stream_index: int = 0,
    clip_samples: int = WINDOW_SAMPLES,
    on_progress: Callable[[RecordResult], None] | None = None,
    stop: threading.Event | None = None,
    stall_timeout_s: float = 60.0,
    poll_s: float = 0.05,
) -> RecordResult:
    """Cut ``n_clips`` consecutive clips from a capture's stream into ``folder``.

    Pass the capture *not yet started*: it is started here after setting its backpressure
    (``hold_index``), so a file replayed as fast as possible loses nothing. The caller stops it.

    Returns early when the source finishes (end of a file) or ``stop`` is set. Raises
    ``AudioDeviceError`` if no audio arrives for ``stall_timeout_s``. KeyboardInterrupt is
    turned into ``result.interrupted`` so that the caller can report what was kept.
    """
    stream = capture.streams[stream_index]
    result = RecordResult(planned=int(n_clips))
    folder.mkdir(parents=True, exist_ok=True)
    next_start = stream.first_index
    capture.hold_index = next_start
    if not capture.started:
        capture.start()
    last_progress = time.monotonic()
    last_end = stream.end_index
    try:
        while len(result.saved) + result.dropped < n_clips:
            capture.hold_index = next_start
            if stop is not None and stop.is_set():
                break
            if stream.end_index < next_start + clip_samples:
                if capture.finished.is_set() and stream.end_index < next_start + clip_samples:
                    break
                if capture.error is not None:
                    raise AudioDeviceError(f"capture from {capture.source.name} failed: {capture.error}")
                now = time.monotonic()
                if stream.end_index != last_end:
                    last_end, last_progress = stream.end_index, now
                elif now - last_progress > stall_timeout_s:
                    raise AudioDeviceError(
                        f"no audio from {capture.source.name} for {stall_timeout_s:.0f} s "
                        f"(status {capture.status}): check the device and its cable"
                    )
                time.sleep(poll_s)
                continue
            got = stream.get(next_start, clip_samples)
            if got is None:  # fell out of the buffer (we were far too slow)
                result.dropped += 1
                next_start = max(next_start + clip_samples, stream.first_index)
            else:
                audio, has_gap = got
                if has_gap:
                    result.dropped += 1
                    logger.info("clip at sample %d spans a gap: dropped", next_start)
                else:
                    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
                    path = _unique_path(folder, stamp, len(result.saved))
                    write_wav_atomic(path, audio, SAMPLE_RATE)
                    result.saved.append(path)
                next_start += clip_samples
            if on_progress is not None:
                on_progress(result)
    except KeyboardInterrupt:
        result.interrupted = True
    finally:
        capture.hold_index = None
    return result
