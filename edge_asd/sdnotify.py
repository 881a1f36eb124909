"""systemd readiness, status and watchdog notifications, written here in pure Python.

Why not ``libsystemd`` / ``systemd-python`` / the ``sdnotify`` package: a Jetson venv should
not need a C build or an unmaintained dependency for what is one datagram per call. The
protocol (``sd_notify(3)``): send ``KEY=value`` lines in one ``AF_UNIX`` ``SOCK_DGRAM``
datagram to the path in ``$NOTIFY_SOCKET``; a leading ``@`` names a socket in the abstract
namespace, spelt with a leading NUL byte on the wire.

Rules this module keeps, because the daemon depends on them:

- Outside systemd (``$NOTIFY_SOCKET`` unset) every call is a cheap no-op, so the pipeline can
  call it unconditionally, in tests and on a workstation alike.
- Nothing here ever raises into the daemon: a notification that cannot be delivered is logged
  at debug level and reported as ``False``. Losing a STATUS line must never stop monitoring.
- The watchdog pings only while the pipeline reports progress. A timer thread that pings
  blindly would keep a wedged daemon (dead capture thread, hung inference) alive forever,
  which is exactly what ``WatchdogSec=`` is there to catch.

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

import contextlib
import logging
import math
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

logger = logging.getLogger(__name__)

__all__ = [
    "Notifier",
    "SystemdIntegration",
    "Watchdog",
    "extend_timeout",
    "format_status",
    "notify",
    "ready",
    "status",
    "stopping",
    "watchdog",
]

# A notification is small; a full receive queue on the manager side must not block the
# pipeline for long, so sends time out quickly and are then dropped (logged at debug).
_SEND_TIMEOUT_S = 0.5
# systemd truncates STATUS= at its own limits; keep our lines short and on one line.
_MAX_STATUS_CHARS = 400


def _socket_address(raw: str) -> str | None:
    """Turn ``$NOTIFY_SOCKET`` into an address for ``sendto``; ``None`` if unsupported.

    ``@name`` is the Linux abstract namespace, which the socket API spells ``\\0name``.
    Other schemes (``vsock:`` in newer systemd) are not used on a Jetson and are ignored.
    """
    if raw.startswith("@"):
        return "\0" + raw[1:]
    if raw.startswith("/"):
        return raw
    return None


def _format_value(value: Any) -> str:
    """One notification value: booleans become 1/0, newlines are flattened (they end a field)."""
    if isinstance(value, bool):
        return "1" if value else "0"
    text = str(value)
    return text.replace("\r", " ").replace("\n", " ")


def _encode(fields: Mapping[str, Any]) -> bytes:
    """``{"READY": 1, "STATUS": "x"}`` → ``b"READY=1\\nSTATUS=x"`` (keys upper-cased)."""
    lines = []
    for key, value in fields.items():
        if value is None:
            continue
        name = key.upper()
        if not name or "=" in name or "\n" in name:
            raise ValueError(f"invalid sd_notify field name {key!r}")
        lines.append(f"{name}={_format_value(value)}")
    return "\n".join(lines).encode("utf-8")


class Notifier:
    """Sends ``sd_notify`` datagrams to one socket; a no-op when there is none.

    One datagram socket is created lazily and reused, guarded by a lock because the
    watchdog thread and the pipeline thread both send.
    """

    def __init__(self, socket_path: str | None) -> None:
        self._raw = socket_path or None
        self._address = _socket_address(self._raw) if self._raw else None
        if self._raw and self._address is None:
            logger.debug("NOTIFY_SOCKET=%s is not a path or abstract socket; notifications disabled", self._raw)
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()

    @classmethod
    def from_env(cls, unset_environment: bool = False) -> Notifier:
        """Use ``$NOTIFY_SOCKET``; ``unset_environment`` hides it from child processes.

        Children (an engine build in a subprocess, say) would otherwise inherit the socket
        and could send READY=1 on the daemon's behalf (only ignored with NotifyAccess=main).
        """
        raw = os.environ.get("NOTIFY_SOCKET")
        if unset_environment:
            os.environ.pop("NOTIFY_SOCKET", None)
        return cls(raw)

    @property
    def enabled(self) -> bool:
        """True when running under a service manager that listens for notifications."""
        return self._address is not None

    def send(self, **fields: Any) -> bool:
        """Send one datagram with ``KEY=value`` lines; ``True`` when it was handed to the kernel."""
        if self._address is None:
            return False
        try:
            payload = _encode(fields)
        except ValueError as err:
            logger.debug("sd_notify not sent: %s", err)
            return False
        if not payload:
            return False
        with self._lock:
            try:
                if self._sock is None:
                    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                    sock.settimeout(_SEND_TIMEOUT_S)
                    self._sock = sock
                self._sock.sendto(payload, self._address)
            except OSError as err:
                logger.debug("sd_notify to %s failed: %s", self._raw, err)
                return False
        return True

    def ready(self, status: str | None = None) -> bool:
        """READY=1: the service is up; systemd starts its watchdog and ordering waits end."""
        return self.send(READY=1, STATUS=_short(status))

    def status(self, text: str) -> bool:
        """STATUS=: the one line ``systemctl status`` shows under the unit."""
        return self.send(STATUS=_short(text))

    def stopping(self, status: str | None = None) -> bool:
        """STOPPING=1: shutdown has begun (TimeoutStopSec applies from here)."""
        return self.send(STOPPING=1, STATUS=_short(status))

    def reloading(self) -> bool:
        """RELOADING=1, followed later by ready(): a config reload is in progress."""
        return self.send(RELOADING=1, MONOTONIC_USEC=time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000)

    def extend_timeout(self, seconds: float) -> bool:
        """EXTEND_TIMEOUT_USEC=: give the current phase (start, stop) this many more seconds.

        It has to be repeated before each extension runs out, like a watchdog ping.
        """
        usec = max(0, int(math.ceil(seconds * 1_000_000)))
        return self.send(EXTEND_TIMEOUT_USEC=usec)

    def watchdog(self) -> bool:
        """WATCHDOG=1: one keep-alive ping. Use :class:`Watchdog`, which pings only on progress."""
        return self.send(WATCHDOG=1)

    def close(self) -> None:
        """Close the socket; later sends reopen it."""
        with self._lock:
            if self._sock is not None:
                with contextlib.suppress(OSError):
                    self._sock.close()
                self._sock = None


def _short(text: str | None) -> str | None:
    if text is None:
        return None
    flat = _format_value(text)
    if len(flat) > _MAX_STATUS_CHARS:
        flat = flat[: _MAX_STATUS_CHARS - 1] + "…"
    return flat


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

    The pipeline calls :meth:`progress` after each scored batch. When no progress has been
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


# Module-level helpers for one-off calls (each reads $NOTIFY_SOCKET at call time).


def notify(**fields: Any) -> bool:
    """Send ``KEY=value`` fields to ``$NOTIFY_SOCKET``; ``False`` (no-op) when unset."""
    notifier = Notifier.from_env()
    try:
        return notifier.send(**fields)
    finally:
        notifier.close()


def ready(status: str | None = None) -> bool:
    return notify(READY=1, STATUS=_short(status))


def status(text: str) -> bool:
    return notify(STATUS=_short(text))


def stopping(status: str | None = None) -> bool:
    return notify(STOPPING=1, STATUS=_short(status))


def extend_timeout(seconds: float) -> bool:
    return notify(EXTEND_TIMEOUT_USEC=max(0, int(math.ceil(seconds * 1_000_000))))


def watchdog() -> bool:
    return notify(WATCHDOG=1)
