"""``SystemdIntegration``: the one object the daemon holds for systemd, and its status line.

It bundles the notifier and the watchdog behind the few calls the pipeline makes (ready,
progress, status, timeout extension, stopping), each safe outside systemd, so the pipeline
never has to ask whether it runs under a service manager. ``StartProgress`` is the hook a
slow start-up step (a TensorRT build) calls to earn more start time. ``format_status`` builds the one
line ``systemctl status`` shows from the streams' scores and faults.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping

from edge_asd.sdnotify.protocol import Notifier
from edge_asd.sdnotify.watchdog import Watchdog, watchdog_interval_from_env

logger = logging.getLogger(__name__)

START_EXTEND_S = 90.0
"""Each progress report during start-up asks systemd for this many more seconds."""
START_EXTEND_CAP_S = 1200.0
"""No extension after this long in total (20 min): longer than any engine build on a Jetson,
so a start that still "makes progress" after it is hung in a loop and must time out."""
START_EXTEND_MIN_INTERVAL_S = 5.0
"""A builder may report progress many times a second; one datagram per this many seconds."""


class StartProgress:
    """The ``progress(message=None)`` hook handed to a slow start-up step (an engine build).

    Thread-safe (a builder reports from its own threads) and never raises: a lost extension
    only means systemd's own start timeout applies.
    """

    def __init__(
        self, notifier: Notifier, extend_s: float, cap_s: float, min_interval_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:  # fmt: skip
        self._notifier = notifier
        self.extend_s = float(extend_s)
        self.cap_s = float(cap_s)
        self.min_interval_s = float(min_interval_s)
        self._clock = clock
        self._started = clock()
        self._last_sent: float | None = None
        self._lock = threading.Lock()
        self._closed = False
        self._capped = False
        self.extensions = 0
        self.last_message: str | None = None

    def __call__(self, message: str | None = None) -> None:
        """Report progress: extend the start timeout (rate-limited, capped)."""
        try:
            self._report(message)
        except Exception:  # a progress hook must never break the build that calls it
            logger.debug("start-up progress report failed", exc_info=True)

    def _report(self, message: str | None) -> None:
        with self._lock:
            if message:
                self.last_message = str(message)
            if self._closed or not self._notifier.enabled:
                return
            now = self._clock()
            if now - self._started >= self.cap_s:
                if not self._capped:
                    self._capped = True
                    logger.warning(
                        "start-up still running after %.0f s: no more start timeout extensions, so systemd's "
                        "TimeoutStartSec decides (a build that takes this long is hung)", now - self._started,
                    )  # fmt: skip
                return
            if self._last_sent is not None and now - self._last_sent < self.min_interval_s:
                return
            self._last_sent = now
            if self._notifier.extend_timeout(self.extend_s):
                self.extensions += 1
            if message:
                self._notifier.status(message)

    def close(self) -> None:
        """The slow step ended: later reports (a stray builder thread) send nothing."""
        with self._lock:
            self._closed = True


class SystemdIntegration:
    """The one object the daemon holds: readiness, status, progress, timeouts, stopping.

    Every method is safe to call outside systemd (it does nothing) and never raises.
    """

    def __init__(self, notifier: Notifier, watchdog: Watchdog | None = None) -> None:
        self.notifier = notifier
        self.watchdog = watchdog if watchdog is not None else Watchdog(notifier, None)
        self._ready = False

    @classmethod
    def from_env(cls, stall_after_s: float | None = None) -> SystemdIntegration:
        """Read ``$NOTIFY_SOCKET``, ``$WATCHDOG_USEC`` and ``$WATCHDOG_PID``.

        The variables are then removed from the environment so subprocesses cannot speak
        for the daemon. ``stall_after_s`` overrides how long without progress counts as
        stalled (default: the watchdog interval); keep it above the longest hop.
        """
        interval = watchdog_interval_from_env()
        notifier = Notifier.from_env(unset_environment=True)
        for name in ("WATCHDOG_USEC", "WATCHDOG_PID"):
            os.environ.pop(name, None)
        return cls(notifier, Watchdog(notifier, interval, stall_after_s=stall_after_s))

    @property
    def enabled(self) -> bool:
        """True under a service manager (``Type=notify``)."""
        return self.notifier.enabled

    @property
    def is_ready(self) -> bool:
        return self._ready

    def ready(self, status: str | None = None) -> None:
        """Tell systemd start-up is complete and start the progress-gated watchdog.

        Call once the monitoring loop runs (config valid, engine loaded), whatever state the
        streams are in: a missing microphone is a stream fault, not a failed start.
        Later calls only update the status (READY is sent once).
        """
        if self._ready:
            if status is not None:
                self.notifier.status(status)
            return
        self._ready = True
        self.notifier.ready(status)
        self.watchdog.start()

    def progress(self) -> None:
        """After each pass of the monitoring loop: proof of life for the watchdog.

        A pass, not a scored window: silent or unplugged microphones (every machine off at
        night) must not get the service killed; a hung engine or a wedged loop still does.
        """
        self.watchdog.progress()

    def status(self, text: str) -> None:
        """Update the line shown by ``systemctl status``."""
        self.notifier.status(text)

    def extend_timeout(self, seconds: float) -> None:
        """Extend the current start/stop timeout by ``seconds`` from now."""
        self.notifier.extend_timeout(seconds)

    @contextlib.contextmanager
    def extending_timeout(
        self,
        extend_s: float = START_EXTEND_S,
        cap_s: float = START_EXTEND_CAP_S,
        status: str | None = None,
        min_interval_s: float = START_EXTEND_MIN_INTERVAL_S,
    ) -> Iterator[StartProgress]:
        """Extend the start timeout only while the body reports progress (an engine build).

        Yields a ``progress(message=None)`` callable for the slow step (a TensorRT build
        calls it per phase or step). Each call asks systemd for ``extend_s`` more seconds from
        now, at most once per ``min_interval_s``; calls after ``cap_s`` seconds in total no
        longer extend. So a build that keeps working gets its time, while a start that hangs
        (no progress, or progress for longer than any build takes) runs into
        ``TimeoutStartSec=`` and systemd restarts the service, as the unit file promises.
        Nothing is sent before the first progress report: a start that finishes inside
        ``TimeoutStartSec=`` needs no extension.
        """
        progress = StartProgress(self.notifier, extend_s, cap_s, min_interval_s)
        if status is not None and self.notifier.enabled:
            self.notifier.status(status)
        try:
            yield progress
        finally:
            progress.close()

    def stopping(self, status: str | None = "stopping") -> None:
        """On SIGTERM: stop watchdog pings and tell systemd shutdown has begun."""
        self.watchdog.stop()
        self.notifier.stopping(status)

    def close(self) -> None:
        """Stop the watchdog thread and close the socket."""
        self.watchdog.stop()
        self.notifier.close()


def format_status(
    scores: Mapping[str, float | None],
    *,
    thresholds: Mapping[str, float] | None = None,
    anomalous: Mapping[str, bool] | None = None,
    faults: Mapping[str, str] | None = None,
    extra: str | None = None,
) -> str:
    """One ``systemctl status`` line: ``fan1 0.42/0.80 · pump2 ANOMALY 1.31/0.90 · mic3 fault: silent``.

    ``None`` scores (a stream still warming up) show as ``warming up``. ``extra`` (xruns,
    backend, …) goes at the end.
    """
    thresholds = thresholds or {}
    anomalous = anomalous or {}
    faults = faults or {}
    parts = []
    for name, score in scores.items():
        if faults.get(name):
            parts.append(f"{name} fault: {faults[name]}")
            continue
        if score is None:
            parts.append(f"{name} warming up")
            continue
        text = f"{name} "
        if anomalous.get(name):
            text += "ANOMALY "
        text += f"{score:.2f}"
        if name in thresholds:
            text += f"/{thresholds[name]:.2f}"
        parts.append(text)
    if extra:
        parts.append(extra)
    return " · ".join(parts) if parts else "no streams"
