"""``SystemdIntegration``: the one object the daemon holds for systemd, and its status line.

It bundles the notifier and the watchdog behind the few calls the pipeline makes (ready,
progress, status, timeout extension, stopping), each safe outside systemd, so the pipeline
never has to ask whether it runs under a service manager. ``format_status`` builds the one
line ``systemctl status`` shows from the streams' scores and faults.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterator, Mapping

from edge_asd.sdnotify.protocol import Notifier
from edge_asd.sdnotify.watchdog import Watchdog, watchdog_interval_from_env

logger = logging.getLogger(__name__)


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

        Call once the config is valid, the engine is loaded and the first audio arrived.
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
        """After each scored batch: proof of life for the watchdog."""
        self.watchdog.progress()

    def status(self, text: str) -> None:
        """Update the line shown by ``systemctl status``."""
        self.notifier.status(text)

    def extend_timeout(self, seconds: float) -> None:
        """Extend the current start/stop timeout by ``seconds`` from now."""
        self.notifier.extend_timeout(seconds)

    @contextlib.contextmanager
    def extending_timeout(
        self, extend_s: float = 90.0, every_s: float = 30.0, status: str | None = None
    ) -> Iterator[None]:
        """Keep extending the start timeout while the body runs (an engine build).

        A TensorRT build blocks in C++ for minutes, so the extension is sent from a helper
        thread every ``every_s`` seconds, each time asking for ``extend_s`` more. If the
        build hangs for good, the process still blocks, but a hung builder is something only
        a human can fix, and the extensions stop as soon as the body ends either way.
        """
        if not self.notifier.enabled:
            yield
            return
        if status is not None:
            self.notifier.status(status)
        done = threading.Event()

        def _keep_extending() -> None:
            while True:
                self.notifier.extend_timeout(extend_s)
                if done.wait(every_s):
                    return

        thread = threading.Thread(target=_keep_extending, name="sd-extend-timeout", daemon=True)
        thread.start()
        try:
            yield
        finally:
            done.set()
            thread.join(1.0)

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
