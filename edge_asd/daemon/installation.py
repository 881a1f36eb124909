"""What belongs to one installation of ``listen``: the state-directory lock and the MQTT client id.

Both answer "which daemon is this?": two daemons on one state directory (a manual ``sudo
edge-asd listen`` beside the service) would share an outbox and enrolments, and two machines
with one client id (cloned disk images) take each other off the broker.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import secrets
import uuid
from pathlib import Path

from edge_asd.core.atomic import atomic_write_text
from edge_asd.core.errors import UserError

logger = logging.getLogger(__name__)

LOCK_FILE = "listen.lock"
"""Under the state directory: held (``flock``) by the running ``listen``; holds its pid."""

CLIENT_ID_FILE = "mqtt_client_id.json"
"""Under the state directory: the random part of the default MQTT client id, and the machine
it was made on."""


class StateDirError(UserError):
    """The state directory is in use by another ``listen``."""


class StateDirLock:
    """An exclusive ``flock`` on ``<state_dir>/listen.lock`` for the daemon's lifetime.

    Why: two daemons on one state directory (a manual ``sudo edge-asd listen`` beside the
    service) would share one outbox and one evidence folder and publish as the same node, each
    undoing the other's retained states. The kernel drops the lock when the process dies (even
    by SIGKILL), so a crash never leaves a stale lock behind. A state directory that cannot be
    written at all is left to the parts that need it (nothing to protect there).

    ``flock`` needs no write access, so a lock file this user cannot write (left by a manual
    ``sudo edge-asd listen``, owned by root) is opened read-only and still locked; only the pid
    in it cannot be updated. A file system without ``flock`` (NFS mounted ``nolock``) is a
    warning and a node fault, not a refusal to start.
    """

    def __init__(self, state_dir: str | Path) -> None:
        self.path = Path(state_dir) / LOCK_FILE
        self._fd: int | None = None
        self.error: str | None = None
        """Why the lock could not be taken (an unwritable state directory, a file system
        without locks); None when held."""

    def acquire(self) -> StateDirLock:
        writable = True
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except PermissionError:  # someone else's file (root's): flock works on a read-only fd
                fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
                writable = False
        except OSError as err:
            return self._not_held(f"cannot lock the state directory {self.path.parent} ({err})")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            other = _read_pid(fd)
            os.close(fd)
            if err.errno in _NO_LOCKS:
                return self._not_held(f"the file system of the state directory {self.path.parent} has no locks ({err})")
            if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise StateDirError(f"cannot lock {self.path}: {err}") from err
            raise StateDirError(
                f"another edge-asd listen (pid {other or 'unknown'}) is using the state directory {self.path.parent}: "
                "stop it first (`systemctl stop edge-asd` for the service) or give this one its own --state-dir"
            ) from None
        if writable:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        else:
            logger.warning("%s is not writable by this user (left by a run as another user?): the state directory "
                           "is locked, but a second listen would be told a stale pid; fix the owner with "
                           "`chown` to the service user", self.path)  # fmt: skip
        self._fd = fd
        return self

    def _not_held(self, reason: str) -> StateDirLock:
        """Go on without the lock, said loudly (a node fault follows from ``error``)."""
        self.error = f"{reason}: a second listen on it is not refused"
        logger.warning("%s", self.error)
        return self

    def release(self) -> None:
        """Let go (closing the file drops the lock; the file stays, unlinking would race)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)

    @property
    def held(self) -> bool:
        return self._fd is not None


_NO_LOCKS = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, getattr(errno, "ENOTSUP", errno.EOPNOTSUPP)}
"""``flock`` errors of a file system that cannot lock at all (NFS without a lock manager)."""


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        return int(text) if text.isdigit() else None
    except OSError:
        return None


MACHINE_ID_FILES = ("/etc/machine-id", "/var/lib/dbus/machine-id")
"""Where the machine id is kept (systemd's; D-Bus keeps one where there is no systemd)."""

_UNUSABLE_MACHINE_IDS = {"", "uninitialized", "0" * 32}
"""Machine ids that do not tell machines apart: none yet, or the placeholder an image is
prepared with (systemd replaces it at first boot; a clone that keeps it shares it)."""


def _machine_id() -> str | None:
    """The systemd (or D-Bus) machine id, if there is a usable one."""
    for path in MACHINE_ID_FILES:
        try:
            text = Path(path).read_text(encoding="ascii", errors="replace").strip().lower()
        except OSError:
            continue
        if text not in _UNUSABLE_MACHINE_IDS:
            return text
    return None


def _mac_text() -> str | None:
    node = uuid.getnode()
    return None if (node >> 40) & 1 else f"{node:012x}"  # uuid sets the multicast bit on a random stand-in


def _machine_fingerprint() -> str:
    """What tells two machines apart even when one is a clone of the other's disk image.

    The machine id alone where there is one (it is regenerated on the first boot of a prepared
    image, and stays put otherwise): a network MAC changes with Wi-Fi MAC randomisation or a
    USB network adapter, and a changed fingerprint means a new client id and a lost broker
    session. The MAC only stands in on a system without a machine id.
    """
    machine_id = _machine_id()
    part = machine_id if machine_id is not None else (_mac_text() or "")
    return hashlib.sha256(part.encode()).hexdigest()[:16]


NET_CLASS = "/sys/class/net"
"""Where Linux lists the network interfaces (a device link marks a physical one)."""


def _stable_macs() -> list[str]:
    """Hashes of the factory MACs of this machine's physical network interfaces.

    A plain ``dd`` copy of a disk keeps ``/etc/machine-id``; the network hardware is what
    differs. Only universally administered addresses count: a randomised Wi-Fi MAC is locally
    administered and changes by design."""
    out = []
    try:
        interfaces = sorted(Path(NET_CLASS).iterdir())
    except OSError:
        return []
    for iface in interfaces:
        try:
            if not (iface / "device").exists():
                continue  # virtual: bridges, veth, docker, loopback
            mac = (iface / "address").read_text(encoding="ascii").strip().lower()
            first = int(mac.split(":")[0], 16)
        except (OSError, ValueError):
            continue
        if first & 0x02 or first & 0x01 or mac == "00:00:00:00:00:00":
            continue
        out.append(hashlib.sha256(mac.encode()).hexdigest()[:12])
    return sorted(set(out))


def _cloned(stored: object, current: list[str]) -> bool:
    """A clone: the MACs the client id was made with and today's have nothing in common (an
    added USB adapter keeps an old one in common; a machine with none decides nothing)."""
    return isinstance(stored, list) and bool(stored) and bool(current) and not set(stored) & set(current)


def _legacy_fingerprint() -> str:
    """The fingerprint of versions that mixed in the MAC: a state directory written by one
    keeps its client id (and its broker session) over the upgrade."""
    parts = [p for p in (_machine_id(), _mac_text()) if p is not None]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def installation_client_id(state_dir: str | Path, node_id: str) -> str:
    """The default MQTT client id: ``edge-asd-<node_id>-<suffix>``.

    The suffix is random, kept in ``<state_dir>/mqtt_client_id.json`` so restarts keep their
    id (the broker resumes the session), and made again when the file was written on another
    machine: cloned images, which share host name and state directory, would otherwise take
    each other off the broker (a broker drops the older of two connections with one id).
    Another machine is another machine id, or, since a plain disk copy keeps the machine id,
    physical network interfaces with none of the factory MACs the file was made with.
    """
    path = Path(state_dir) / CLIENT_ID_FILE
    machine = _machine_fingerprint()
    macs = _stable_macs()
    data: object = None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        pass
    except (OSError, ValueError) as err:
        logger.warning("ignoring %s (%s): making a new MQTT client id", path, err)
    suffix = None
    if isinstance(data, dict):
        kept = data.get("suffix")
        same = data.get("machine") in (machine, _legacy_fingerprint()) and not _cloned(data.get("macs"), macs)
        if same and isinstance(kept, str) and kept.isalnum() and 4 <= len(kept) <= 16:
            suffix = kept
            if data.get("machine") != machine or data.get("macs") != macs:  # upgraded, or a NIC added
                with contextlib.suppress(OSError):
                    atomic_write_text(path, json.dumps({"suffix": suffix, "machine": machine, "macs": macs}) + "\n")
        else:
            logger.warning("%s was made on another machine (a cloned image?): this one gets its own MQTT client id", path)
    if suffix is None:
        suffix = secrets.token_hex(4)
        try:
            atomic_write_text(path, json.dumps({"suffix": suffix, "machine": machine, "macs": macs}) + "\n")
        except OSError as err:
            logger.warning("cannot keep the MQTT client id in %s (%s): it changes at every start", path, err)
    return f"edge-asd-{node_id}-{suffix}"


__all__ = ["CLIENT_ID_FILE", "LOCK_FILE", "StateDirError", "StateDirLock", "installation_client_id"]
