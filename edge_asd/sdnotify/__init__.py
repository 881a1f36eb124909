"""systemd readiness, status and watchdog notifications, written here in pure Python.

Rules this package keeps, because the daemon depends on them:

- Outside systemd (``$NOTIFY_SOCKET`` unset) every call is a cheap no-op, so the pipeline can
  call it unconditionally, in tests and on a workstation alike.
- Nothing here ever raises into the daemon: a notification that cannot be delivered is logged
  at debug level and reported as ``False``. Losing a STATUS line must never stop monitoring.
- The watchdog pings only while the pipeline reports progress. A timer thread that pings
  blindly would keep a wedged daemon (dead capture thread, hung inference) alive forever,
  which is exactly what ``WatchdogSec=`` is there to catch.

Modules: ``protocol`` (``Notifier``: the datagrams of ``sd_notify(3)``), ``watchdog``
(``Watchdog``: progress-gated pings), ``integration`` (``SystemdIntegration``, what the daemon
holds, and ``format_status``).

What the pipeline calls (through :class:`SystemdIntegration`)::

    sd = SystemdIntegration.from_env()
    with sd.extending_timeout():        # around an engine build at start-up
        build_engine(...)
    sd.ready("listening: 4 streams")   # config valid, engine loaded, first audio arrived
    sd.progress()                      # after every scored batch
    sd.status(format_status(...))      # streams and scores, as often as convenient
    sd.stopping()                      # on SIGTERM, before draining
"""

from __future__ import annotations

from edge_asd.sdnotify.integration import SystemdIntegration, format_status
from edge_asd.sdnotify.protocol import Notifier
from edge_asd.sdnotify.watchdog import Watchdog, watchdog_interval_from_env

__all__ = ["Notifier", "SystemdIntegration", "Watchdog", "format_status", "watchdog_interval_from_env"]
