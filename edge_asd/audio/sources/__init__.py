"""Where audio comes from: a sound device, a sound file, or the synthetic machine generator.

All sources share one small interface (``AudioSource``, in ``base``): they know their native
sample rate and channel count, and once started they push float32 ``(frames, channels)``
blocks into a ``CaptureRing`` from their own thread (PortAudio's callback thread, or a reader
thread). Tests and demos inject a ``FileSource`` or ``SyntheticSource`` where production uses a
``SoundDeviceSource``, so everything downstream of the ring runs the same code either way.
One module per kind of source: ``device`` (PortAudio), ``file``, ``synthetic``; ``threaded``
holds what the two non-device sources share.

Source specs on the command line / in the config: ``file:PATH``, ``synth[:TYPE[:ID]]``,
anything else is a device (index, stable id, or name substring); ``open_source`` parses them.
"""

from __future__ import annotations

import logging
from typing import Any

from edge_asd.audio.sources.base import FINISHED, AudioSource, AudioSourceError
from edge_asd.audio.sources.device import SoundDeviceSource
from edge_asd.audio.sources.file import FileSource, check_wav_complete
from edge_asd.audio.sources.synthetic import SyntheticSource

logger = logging.getLogger(__name__)

__all__ = [
    "FINISHED",
    "AudioSource",
    "AudioSourceError",
    "FileSource",
    "SoundDeviceSource",
    "SyntheticSource",
    "check_wav_complete",
    "open_source",
]


def open_source(spec: str, *, realtime: bool = True, loop: bool = False, channels: int | None = None,
                synth_seconds: float | None = None, **device_kwargs: Any) -> AudioSource:
    """Build a source from a spec: ``file:PATH``, ``synth[:TYPE[:ID]]`` or a device."""
    text = str(spec).strip()
    if text.startswith("file:"):
        return FileSource(text[5:], realtime=realtime, loop=loop)
    if text == "synth" or text.startswith("synth:"):
        parts = text.split(":")
        machine_type = parts[1] if len(parts) > 1 and parts[1] else "fan"
        machine_id = parts[2] if len(parts) > 2 and parts[2] else "0"
        return SyntheticSource(machine_type, machine_id, channels=channels or 1, realtime=realtime,
                               duration_s=synth_seconds)
    return SoundDeviceSource(text, channels=channels, **device_kwargs)
