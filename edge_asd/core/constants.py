"""The numbers every part of edge-asd agrees on, in one place.

The model's input format is fixed by its architecture (the TgramNet LayerNorm over 313
frames pins the window to 10 s at 16 kHz), so these are facts about the model rather than
settings: the trainer, the exporter, the runtimes and the daemon all import them from here.
"""

from __future__ import annotations

SAMPLE_RATE = 16000
"""The model's sample rate: every clip and every live stream is resampled to it."""

WINDOW_SECONDS = 10.0
"""One model input in seconds."""

WINDOW_SAMPLES = 160000
"""One model input: 10 s at 16 kHz (the TgramNet LayerNorm(313) fixes this length)."""

EMBEDDING_DIM = 128
"""Width of the model's embedding output (the knn score compares these)."""

MIN_AUDIO_RATE = 8000
"""Lowest input sample rate accepted from a file or a device (telephone-band hardware)."""

MAX_AUDIO_RATE = 384000
"""Highest input sample rate accepted: what professional audio interfaces reach. A higher or
odd rate (999983 Hz) would build a resampling filter of millions of taps."""

# Stream and node states, as published on MQTT (docs/architecture.md, README's contract).
ONLINE = "online"
OFFLINE = "offline"
FAULT = "fault"
DISABLED = "disabled"
STREAM_STATES = (ONLINE, OFFLINE, FAULT, DISABLED)

__all__ = [
    "DISABLED",
    "EMBEDDING_DIM",
    "FAULT",
    "MAX_AUDIO_RATE",
    "MIN_AUDIO_RATE",
    "OFFLINE",
    "ONLINE",
    "SAMPLE_RATE",
    "STREAM_STATES",
    "WINDOW_SAMPLES",
    "WINDOW_SECONDS",
]
