"""systemd readiness, status and watchdog notifications, written here in pure Python.

Rules this package keeps, because the daemon depends on them:

- Outside systemd (``$NOTIFY_SOCKET`` unset) every call is a cheap no-op, so the pipeline can
  call it unconditionally, in tests and on a workstation alike.
- Nothing here ever raises into the daemon: a notification that cannot be delivered is logged
  at debug level and reported as ``False``. Losing a STATUS line must never stop monitoring.
- The watchdog pings only while the pipeline reports progress: each pass of its loop, not
  each scored window, so streams that are silent, faulted or unplugged do not get the service
  killed, while a wedged loop (hung inference) stops the pings, which is what ``WatchdogSec=``
  is there to catch. A timer thread that pings blindly would hide exactly that.
- The start timeout is extended only while a slow start-up step reports progress, with a
  total cap, so a hung start still times out.

Modules: ``protocol`` (``Notifier``: the datagrams of ``sd_notify(3)``), ``watchdog``
(``Watchdog``: progress-gated pings), ``integration`` (``SystemdIntegration``, what the daemon
holds, and ``format_status``).

What the pipeline calls (through :class:`SystemdIntegration`)::

    sd = SystemdIntegration.from_env()
    with sd.extending_timeout() as progress:   # around an engine build at start-up
        build_engine(..., progress=progress)   # each progress report extends (capped)
    sd.ready("listening: 4 streams")   # the monitoring loop runs (streams in any state)
    sd.progress()                      # after every pass of the loop
    sd.status(format_status(...))      # streams and scores, as often as convenient
    sd.stopping()                      # on SIGTERM, before draining
"""

from __future__ import annotations

from edge_asd.sdnotify.integration import StartProgress, SystemdIntegration, format_status
from edge_asd.sdnotify.protocol import Notifier
from edge_asd.sdnotify.watchdog import Watchdog, watchdog_interval_from_env

__all__ = [
    "Notifier",
    "StartProgress",
    "SystemdIntegration",
    "Watchdog",
    "format_status",
    "watchdog_interval_from_env",
]
