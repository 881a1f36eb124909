"""Who may use the console: loopback clients, or users of a credentials file; CSRF tokens.

Why this shape:

* The console binds 127.0.0.1 by default, where only people already on the device reach it
  (they could read the evidence folder anyway). A loopback client is trusted as "localhost",
  but only when its ``Host`` header is a loopback name too: a web page that rebinds its own
  DNS name to 127.0.0.1 (DNS rebinding) would otherwise read the console from the browser of
  whoever sits at the device.
* Anything wider needs a credentials file of ``name:hash`` lines. Only salted scrypt (or
  PBKDF2) hashes are accepted, never a clear password, so the file is harmless in a backup.
  Browsers sign in through a form and get a session cookie; scripts send HTTP Basic auth
  (over HTTPS). Credentials never travel in a URL, so they never land in a proxy log.
* Every POST carries a token derived from a random per-browser cookie with a per-process
  secret (a signed double-submit cookie): a page of another site can make the browser send
  the cookie, but cannot read it, nor compute the token without the secret.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import logging
import os
import secrets
import stat
import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from pathlib import Path

from edge_asd.console.settings import ConsoleError
from edge_asd.core.hosts import is_loopback_host

logger = logging.getLogger(__name__)

SCRYPT_N = 2**14
SCRYPT_R = 8
SCRYPT_P = 1
SCRYPT_MAXMEM = 64 * 2**20
"""scrypt with N=2^14, r=8 takes 16 MiB and ~50 ms: slow for a guesser, fine on a Jetson."""

PBKDF2_MIN_ITERATIONS = 100_000

SESSION_S = 12 * 3600.0
"""A browser session lasts one shift."""

MAX_SESSIONS = 1000
LOGIN_FAILURES = 5
LOGIN_WINDOW_S = 300.0
"""After 5 failed sign-ins in 5 minutes an address waits until the oldest failure ages out."""

LOCAL_USER = "localhost"
"""The name feedback is logged with when it came from a loopback client."""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def hash_password(password: str, *, salt: bytes | None = None) -> str:
    """``scrypt$N$r$p$salt$hash`` (base64) of a password, with a fresh 16-byte salt."""
    if not password:
        raise ConsoleError("an empty password protects nothing: choose one")
    salt = salt if salt is not None else os.urandom(16)
    digest = hashlib.scrypt(
        password.encode("utf-8"), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, maxmem=SCRYPT_MAXMEM, dklen=32
    )
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(digest)}"


def _check_hash_format(encoded: str) -> str | None:
    """None when ``encoded`` is a hash this module can verify, else what is wrong with it."""
    parts = encoded.split("$")
    try:
        if parts[0] == "scrypt" and len(parts) == 6:
            n, r, p = (int(x) for x in parts[1:4])
            if n < 2**10 or n & (n - 1) or r < 1 or p < 1:
                return "scrypt parameters out of range"
            base64.b64decode(parts[4], validate=True)
            base64.b64decode(parts[5], validate=True)
            return None
        if parts[0] == "pbkdf2_sha256" and len(parts) == 4:
            if int(parts[1]) < PBKDF2_MIN_ITERATIONS:
                return f"pbkdf2 needs at least {PBKDF2_MIN_ITERATIONS} iterations"
            base64.b64decode(parts[2], validate=True)
            base64.b64decode(parts[3], validate=True)
            return None
    except ValueError:
        return "malformed numbers or base64"
    return "not a password hash (scrypt$... or pbkdf2_sha256$...)"


def verify_password(password: str, encoded: str) -> bool:
    """Constant-time check of ``password`` against a hash made by :func:`hash_password` (or PBKDF2)."""
    if _check_hash_format(encoded) is not None:
        return False
    parts = encoded.split("$")
    if parts[0] == "scrypt":
        n, r, p = (int(x) for x in parts[1:4])
        salt, want = base64.b64decode(parts[4]), base64.b64decode(parts[5])
        got = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p, maxmem=SCRYPT_MAXMEM, dklen=len(want))
    else:
        salt, want = base64.b64decode(parts[2]), base64.b64decode(parts[3])
        got = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, int(parts[1]), dklen=len(want))
    return hmac.compare_digest(got, want)


@dataclass(frozen=True)
class Credentials:
    """The users of a credentials file: name -> password hash."""

    users: dict[str, str]
    path: Path | None = None

    @classmethod
    def load(cls, path: Path) -> Credentials:
        """Parse ``name:hash`` lines (``#`` comments, blank lines); a clear password is an error."""
        try:
            text = Path(path).read_text(encoding="utf-8")
            mode = Path(path).stat().st_mode
        except FileNotFoundError:
            raise ConsoleError(f"credentials file {path} not found: create it with "
                               f"`edge-asd console-user NAME --credentials {path}`") from None
        except OSError as err:
            raise ConsoleError(f"cannot read credentials file {path}: {err.strerror}; check its permissions") from None
        if mode & stat.S_IROTH:
            logger.warning("credentials file %s is readable by every user: chmod 600 it", path)
        users: dict[str, str] = {}
        for number, raw in enumerate(text.splitlines(), start=1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            name, sep, encoded = line.partition(":")
            name = name.strip()
            problem = "no ':' between name and hash" if not sep else (
                "empty user name" if not name else _check_hash_format(encoded.strip()))
            if problem:
                raise ConsoleError(
                    f"credentials file {path}, line {number}: {problem}; write `name:hash` lines with "
                    f"`edge-asd console-user NAME --credentials {path}` (never a clear password)"
                )
            users[name] = encoded.strip()
        if not users:
            raise ConsoleError(f"credentials file {path} holds no user: add one with "
                               f"`edge-asd console-user NAME --credentials {path}`")
        return cls(users, Path(path))

    def check(self, name: str, password: str) -> bool:
        encoded = self.users.get(name)
        if encoded is None:
            # Spend the same time as for a real user, so timing does not reveal user names.
            verify_password(password, next(iter(self.users.values())))
            return False
        return verify_password(password, encoded)


def add_user(path: Path, name: str, password: str) -> bool:
    """Add or replace ``name`` in the credentials file (created 0600); True when it was new."""
    if not name or ":" in name or any(c.isspace() for c in name):
        raise ConsoleError(f"user name {name!r}: use letters, digits and punctuation other than ':'")
    lines: list[str] = []
    if path.exists():
        lines = path.read_text(encoding="utf-8").splitlines()
    entry = f"{name}:{hash_password(password)}"
    new = True
    for i, line in enumerate(lines):
        if line.split(":", 1)[0].strip() == name and not line.lstrip().startswith("#"):
            lines[i] = entry
            new = False
    if new:
        lines.append(entry)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write("\n".join(lines) + "\n")
    return new


class Sessions:
    """Signed-in browsers: an opaque random token -> (user, expiry), kept in memory only.

    A console restart signs everybody out, which is the safe side for a shared screen.
    """

    def __init__(self, lifetime_s: float = SESSION_S, max_sessions: int = MAX_SESSIONS) -> None:
        self.lifetime_s = lifetime_s
        self.max_sessions = max_sessions
        self._by_token: OrderedDict[str, tuple[str, float]] = OrderedDict()

    def create(self, user: str) -> str:
        token = secrets.token_urlsafe(32)
        self._by_token[token] = (user, time.monotonic() + self.lifetime_s)
        while len(self._by_token) > self.max_sessions:
            self._by_token.popitem(last=False)
        return token

    def user(self, token: str | None) -> str | None:
        if not token:
            return None
        entry = self._by_token.get(token)
        if entry is None:
            return None
        if entry[1] < time.monotonic():
            del self._by_token[token]
            return None
        return entry[0]

    def drop(self, token: str | None) -> None:
        if token:
            self._by_token.pop(token, None)


class BasicCache:
    """Recently verified Basic-auth pairs, so a script polling the API costs one scrypt, not one a call."""

    def __init__(self, ttl_s: float = 300.0, size: int = 64) -> None:
        self.ttl_s = ttl_s
        self.size = size
        self._key = os.urandom(32)
        self._seen: OrderedDict[bytes, tuple[str, float]] = OrderedDict()

    def _digest(self, name: str, password: str) -> bytes:
        return hmac.new(self._key, f"{name}\0{password}".encode(), hashlib.sha256).digest()

    def get(self, name: str, password: str) -> str | None:
        hit = self._seen.get(self._digest(name, password))
        if hit is None or hit[1] < time.monotonic():
            return None
        return hit[0]

    def put(self, name: str, password: str) -> None:
        self._seen[self._digest(name, password)] = (name, time.monotonic() + self.ttl_s)
        while len(self._seen) > self.size:
            self._seen.popitem(last=False)


class Throttle:
    """Failed sign-ins per client address; blocks guessing without locking a name out for good."""

    def __init__(self, limit: int = LOGIN_FAILURES, window_s: float = LOGIN_WINDOW_S) -> None:
        self.limit = limit
        self.window_s = window_s
        self._failures: dict[str, deque[float]] = {}

    def _recent(self, peer: str) -> deque[float]:
        q = self._failures.setdefault(peer, deque())
        cutoff = time.monotonic() - self.window_s
        while q and q[0] < cutoff:
            q.popleft()
        return q

    def blocked(self, peer: str) -> bool:
        return len(self._recent(peer)) >= self.limit

    def failed(self, peer: str) -> None:
        self._recent(peer).append(time.monotonic())
        if len(self._failures) > 10_000:
            self._failures.clear()

    def succeeded(self, peer: str) -> None:
        self._failures.pop(peer, None)


class Csrf:
    """Signed double-submit tokens: ``token = HMAC(secret, cookie nonce)``."""

    def __init__(self, secret: bytes | None = None) -> None:
        self._secret = secret or os.urandom(32)

    @staticmethod
    def new_nonce() -> str:
        return secrets.token_urlsafe(24)

    def token(self, nonce: str) -> str:
        return hmac.new(self._secret, nonce.encode(), hashlib.sha256).hexdigest()

    def valid(self, nonce: str | None, token: str | None) -> bool:
        if not nonce or not token:
            return False
        return hmac.compare_digest(self.token(nonce), token)


def is_loopback_peer(peer: str | None) -> bool:
    """True when the TCP peer is this machine (127.0.0.0/8, ::1, or ::ffff:127.x)."""
    if not peer:
        return False
    try:
        addr = ipaddress.ip_address(peer.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr.is_loopback


def host_name(host_header: str | None) -> str:
    """The name part of a ``Host`` header (``[::1]:8090`` -> ``::1``, ``a:80`` -> ``a``)."""
    host = (host_header or "").strip().lower()
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    if host.count(":") == 1:
        return host.split(":", 1)[0]
    return host


def is_local_request(peer: str | None, host_header: str | None, extra_hosts: tuple[str, ...] = ()) -> bool:
    """A loopback peer that addressed the console by a loopback name (or one it was told about)."""
    if not is_loopback_peer(peer):
        return False
    name = host_name(host_header)
    return is_loopback_host(name) or name in extra_hosts


__all__ = [
    "LOCAL_USER",
    "BasicCache",
    "Credentials",
    "Csrf",
    "Sessions",
    "Throttle",
    "add_user",
    "hash_password",
    "host_name",
    "is_local_request",
    "is_loopback_peer",
    "verify_password",
]
