"""The ``sd_notify(3)`` protocol itself: ``KEY=value`` lines in one datagram to ``$NOTIFY_SOCKET``.

Why written here instead of ``libsystemd`` / ``systemd-python`` / the ``sdnotify`` package: a
Jetson venv should not need a C build or an unmaintained dependency for what is one datagram
per call. The address is a filesystem path, or ``@name`` for a socket in the abstract
namespace, spelt with a leading NUL byte on the wire. A notification that cannot be delivered
is logged at debug level and reported as ``False``: losing a STATUS line must never stop
monitoring.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import socket
import threading
import time
from collections.abc import Mapping
from typing import Any

logger = logging.getLogger(__name__)

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
