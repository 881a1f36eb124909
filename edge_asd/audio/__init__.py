"""Device-side audio capture: sources -> capture ring -> resampler -> 16 kHz stream buffers.

numpy only (sounddevice is imported lazily by the device source), so this package runs on a
Jetson without torch or scipy. See ``docs/architecture.md`` (Device side) for how the listen
pipeline uses it.
"""
