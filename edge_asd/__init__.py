"""edge-asd: the device side (capture, decisions, MQTT) and the ``edge-asd`` CLI.

Nothing in this package imports torch at module level: a Jetson runs the TensorRT
engine, not PyTorch. Commands that train or export import the ``trainer`` lazily.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("edge-asd")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"
