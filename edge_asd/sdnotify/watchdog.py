"""The progress-gated watchdog: ``WATCHDOG=1`` pings only while the pipeline loop turns.

A timer thread that pings blindly would keep a wedged daemon (hung inference, a loop stuck
in a call) alive forever, which is exactly what ``WatchdogSec=`` is there to catch; so pings
stop when progress stops, and systemd restarts the service one interval later. Progress is
a pass of the loop, not a scored window: a microphone that is silent or unplugged is a
stream fault the loop reports and recovers from, and killing the service for it would only
turn one deaf stream into a node that restarts in a loop.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Mapping

from edge_asd.sdnotify.protocol import Notifier

logger = logging.getLogger(__name__)


def watchdog_interval_from_env(environ: Mapping[str, str] | None = None) -> float | None:
    """The watchdog interval in seconds, or ``None`` when it is not meant for this process.

    ``$WATCHDOG_USEC`` holds the interval; ``$WATCHDOG_PID``, when set, names the process
    that must ping (a child that inherited the variables must not).
    """
    env = os.environ if environ is None else environ
    raw = env.get("WATCHDOG_USEC")
    if not raw:
        return None
    pid = env.get("WATCHDOG_PID")
    if pid:
        try:
            if int(pid) != os.getpid():
                return None
        except ValueError:
            logger.debug("WATCHDOG_PID=%r is not a number; watchdog disabled", pid)
            return None
    try:
        usec = int(raw)
    except ValueError:
        logger.debug("WATCHDOG_USEC=%r is not a number; watchdog disabled", raw)
        return None
    return usec / 1_000_000 if usec > 0 else None


class Watchdog:
    """Pings ``WATCHDOG=1`` every half interval, but only while progress keeps coming.

    The pipeline calls :meth:`progress` after each pass of its loop. When no progress has been
    reported for ``stall_after_s`` (default: the watchdog interval), pings stop, and systemd
    kills and restarts the service one interval later. Pings resume if progress does.
    """

    def __init__(
        self,
        notifier: Notifier,
        interval_s: float | None,
        stall_after_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._notifier = notifier
        self.interval_s = interval_s if interval_s and interval_s > 0 else None
        self.stall_after_s = stall_after_s if stall_after_s is not None else self.interval_s
        self._clock = clock
        self._last_progress = clock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._stalled = False
        self.pings = 0

    @classmethod
    def from_env(cls, notifier: Notifier, stall_after_s: float | None = None) -> Watchdog:
        """Interval from ``$WATCHDOG_USEC`` (honouring ``$WATCHDOG_PID``)."""
        return cls(notifier, watchdog_interval_from_env(), stall_after_s=stall_after_s)

    @property
    def enabled(self) -> bool:
        """True when systemd expects pings and there is a socket to send them to."""
        return self.interval_s is not None and self._notifier.enabled

    def progress(self) -> None:
        """Record that the pipeline did useful work just now (cheap: one clock read)."""
        self._last_progress = self._clock()

    def is_stalled(self) -> bool:
        """True when no progress was reported for longer than ``stall_after_s``."""
        if self.stall_after_s is None:
            return False
        return self._clock() - self._last_progress > self.stall_after_s

    def tick(self) -> bool:
        """One check: ping if progress is recent. Returns whether a ping was sent.

        The background thread calls this; it is public so a caller without threads (or a
        test) can drive the watchdog itself.
        """
        if self.is_stalled():
            if not self._stalled:
                self._stalled = True
                logger.warning(
                    "no progress for %.1f s: stopping watchdog pings so systemd restarts the service",
                    self._clock() - self._last_progress,
                )
            return False
        if self._stalled:
            self._stalled = False
            logger.info("progress resumed: watchdog pings resumed")
        sent = self._notifier.watchdog()
        if sent:
            self.pings += 1
        return sent

    def start(self) -> None:
        """Start the ping thread (idempotent; nothing happens when the watchdog is off)."""
        if not self.enabled or (self._thread is not None and self._thread.is_alive()):
            return
        self._last_progress = self._clock()  # starting counts as progress: a grace period
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="sd-watchdog", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        assert self.interval_s is not None
        period = self.interval_s / 2
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception:  # never let the ping thread die silently with a traceback storm
                logger.debug("watchdog tick failed", exc_info=True)
            self._stop.wait(period)

    def stop(self, timeout_s: float = 1.0) -> None:
        """Stop pinging (at shutdown: TimeoutStopSec, not the watchdog, applies then)."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout_s)
        self._thread = None
