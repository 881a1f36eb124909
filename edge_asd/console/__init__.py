"""The operator's console: a small web server to watch the machines, hear an alert and teach the system.

It is an MQTT subscriber like ``edge-asd watch`` that runs on the device beside the daemon
(or anywhere on the broker's network): it folds ``<prefix>/#`` into a live picture of every
node and stream, keeps its own bounded history of events in SQLite, serves the evidence WAV
and PNG of its own node from the daemon's state directory, and turns an operator's buttons
into the daemon's MQTT commands (feedback, re-enrol, enable). See docs/console.md.

Modules: ``settings`` (what it was told), ``auth`` (who may come in, CSRF), ``state`` (the
live picture), ``store`` (history), ``link`` (MQTT), ``files`` (evidence paths),
``pages`` (HTML), ``web`` (aiohttp routes), ``server`` (all of it on one loop).
"""

from __future__ import annotations

from edge_asd.console.settings import ConsoleError, ConsoleSettings

__all__ = ["ConsoleError", "ConsoleSettings"]
