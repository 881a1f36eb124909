"""Where the MQTT password comes from, and checks of TLS files before connecting.

Why files: a password in the YAML ends up in backups and bug reports, one in a ``--broker``
URL shows in ``ps``. systemd's ``LoadCredential=mqtt_password:/etc/edge-asd/mqtt_password``
exposes it as a file in ``$CREDENTIALS_DIRECTORY`` readable only by the service. The password
is never logged.

What is checked, each time a daemon, ``watch`` or the console connects:

* a password sent over plain ``mqtt://`` to a host that is not this machine: a warning (anyone
  on the plant network can read it); the fix is TLS (``mqtts://``, deploy/mosquitto/README.md);
* a client key (``mqtt.tls.key_file``) that every user can actually read: refused, since
  whoever holds it is the node to the broker. "Actually" means the file is world-readable AND
  every directory above it lets other users through (o+x): a ``0644`` key inside a ``0750`` or
  ``0700`` directory (how many nodes were set up before this check existed) cannot be reached,
  so it gets a warning instead of stopping a node that worked. Readable by a group other than
  the service's own: a warning. ``root:edge-asd 0640`` (the group of the service user) and
  ``edge-asd 0600`` are both fine;
* a ``password_file`` readable by every user: a warning.
"""

from __future__ import annotations

import logging
import os
import ssl
import stat
from pathlib import Path

from edge_asd.config import ConfigError, MqttConfig
from edge_asd.core.hosts import is_loopback_host

logger = logging.getLogger(__name__)


def _read_secret(path: Path, what: str) -> str:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{what} {path} not found: create it or fix the path") from None
    except OSError as err:
        raise ConfigError(f"cannot read {what} {path}: {err.strerror}; check its permissions") from None
    lines = text.splitlines()
    return lines[0] if lines else ""


def resolve_password(cfg: MqttConfig) -> str | None:
    """The password: inline, else ``password_file``, else ``$CREDENTIALS_DIRECTORY/<credential>``.

    An empty file means "no password": the installer creates an empty credential file when the
    broker is anonymous, because systemd's ``LoadCredential=`` fails the start without one.
    A password that would cross the network in clear text gets a warning.
    """
    password = _find_password(cfg)
    if password and not cfg.tls.enabled and not is_loopback_host(cfg.host):
        logger.warning(
            "SECURITY: the MQTT password for %s goes to %s:%d over plain mqtt:// (no TLS): anyone on the network "
            "path can read it. Use TLS: mqtts://%s (mqtt.tls; deploy/mosquitto/README.md sets up a broker with it)",
            cfg.username or "(no user)", cfg.host, cfg.effective_port, cfg.host,
        )  # fmt: skip
    return password


def _find_password(cfg: MqttConfig) -> str | None:
    if cfg.password is not None:
        return cfg.password.get_secret_value() or None
    if cfg.password_file is not None:
        _warn_if_world_readable(cfg.password_file, "mqtt.password_file")
        return _read_secret(cfg.password_file, "mqtt.password_file") or None
    cred_dir = os.environ.get("CREDENTIALS_DIRECTORY")
    if cred_dir:
        path = Path(cred_dir) / cfg.password_credential
        if path.is_file():
            logger.info("MQTT password taken from credential %s", cfg.password_credential)
            return _read_secret(path, "credential file") or None
    return None


def _mode(path: Path) -> int | None:
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return None  # reading it says what is wrong


def _warn_if_world_readable(path: Path, what: str) -> None:
    mode = _mode(path)
    if mode is not None and mode & stat.S_IROTH:
        logger.warning("SECURITY: %s %s is readable by every user (mode %04o): chmod 600 %s", what, path, mode, path)


def _closed_directory(path: Path) -> tuple[Path, int] | None:
    """The nearest directory above ``path`` (symlinks resolved: the kernel walks the real path
    too) that other users cannot pass through (no ``o+x``), with its mode; None when every one,
    ``/`` included, lets them through. A directory that cannot be examined counts as open: the
    answer then errs towards refusing, as before this check looked at directories."""
    for parent in Path(os.path.realpath(path)).parents:
        try:
            mode = stat.S_IMODE(parent.stat().st_mode)
        except OSError:
            continue
        if not mode & stat.S_IXOTH:
            return parent, mode
    return None


def check_key_permissions(path: Path, what: str = "mqtt.tls.key_file") -> None:
    """Refuse a private key that every user can reach and read; warn when it is world-readable
    behind a closed directory, or readable by a group other than the service's own. The key is
    the node's identity to the broker."""
    try:
        st = path.stat()
    except OSError:
        return  # the open below reports it, naming the file
    mode = stat.S_IMODE(st.st_mode)
    if mode & stat.S_IROTH:
        closed = _closed_directory(path)
        if closed is None:
            raise ConfigError(
                f"{what} {path} is readable by every user on this machine (mode {mode:04o}, and every directory "
                f"above it lets them in): whoever reads it can connect as this node. Run `chmod 600 {path}` "
                "(owned by the user the daemon runs as, or `chmod 640` with the service's group), then start again"
            )
        folder, folder_mode = closed
        # Not reachable today, but one chmod or move of the directory away from being so.
        logger.warning(
            "SECURITY: %s %s is readable by every user (mode %04o); only its directory %s (mode %04o) keeps "
            "other users out. chmod 600 %s (or 640 with the service's group)", what, path, mode, folder,
            folder_mode, path,
        )  # fmt: skip
        return
    if mode & stat.S_IRGRP and st.st_gid != os.getegid():
        logger.warning(
            "SECURITY: %s %s is readable by group %d, which is not this service's group (mode %04o): "
            "chmod 600 %s (or chgrp it to the service's group)", what, path, st.st_gid, mode, path,
        )  # fmt: skip


def check_tls_files(cfg: MqttConfig) -> ssl.SSLContext | None:
    """Build the TLS context now, so a missing or bad file is a clear error naming it.

    Loading each file separately pins the blame: ``ssl`` alone would say "[SSL] PEM lib" for
    any of the three.
    """
    tls = cfg.tls
    if not tls.enabled:
        return None
    if tls.key_file is not None:
        check_key_permissions(Path(tls.key_file))
    for key in ("ca_file", "cert_file", "key_file"):
        path = getattr(tls, key)
        if path is None:
            continue
        try:
            with open(path, "rb"):
                pass
        except FileNotFoundError:
            raise ConfigError(f"mqtt.tls.{key} {path} not found") from None
        except OSError as err:
            raise ConfigError(f"cannot read mqtt.tls.{key} {path}: {err.strerror}") from None
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    if tls.ca_file is not None:
        try:
            ctx.load_verify_locations(cafile=str(tls.ca_file))
        except (ssl.SSLError, ValueError) as err:
            raise ConfigError(f"mqtt.tls.ca_file {tls.ca_file} is not a valid PEM CA certificate ({err})") from None
    if tls.cert_file is not None and tls.key_file is not None:
        try:
            ctx.load_cert_chain(certfile=str(tls.cert_file), keyfile=str(tls.key_file))
        except (ssl.SSLError, ValueError) as err:
            raise ConfigError(
                f"mqtt.tls.cert_file {tls.cert_file} / key_file {tls.key_file}: not a valid PEM certificate "
                f"and matching key ({err})"
            ) from None
    if tls.insecure:
        ctx.check_hostname = False  # the certificate chain is still verified
    return ctx
