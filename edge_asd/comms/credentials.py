"""Where the MQTT password comes from, and checks of TLS files before connecting.

Why files: a password in the YAML ends up in backups and bug reports. systemd's
``LoadCredential=mqtt_password:/etc/edge-asd/mqtt_password`` exposes it as a file in
``$CREDENTIALS_DIRECTORY`` readable only by the service. The password is never logged.
"""

from __future__ import annotations

import logging
import os
import ssl
from pathlib import Path

from edge_asd.config import ConfigError, MqttConfig

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
    """
    if cfg.password is not None:
        return cfg.password.get_secret_value() or None
    if cfg.password_file is not None:
        return _read_secret(cfg.password_file, "mqtt.password_file") or None
    cred_dir = os.environ.get("CREDENTIALS_DIRECTORY")
    if cred_dir:
        path = Path(cred_dir) / cfg.password_credential
        if path.is_file():
            logger.info("MQTT password taken from credential %s", cfg.password_credential)
            return _read_secret(path, "credential file") or None
    return None


def check_tls_files(cfg: MqttConfig) -> ssl.SSLContext | None:
    """Build the TLS context now, so a missing or bad file is a clear error naming it.

    Loading each file separately pins the blame: ``ssl`` alone would say "[SSL] PEM lib" for
    any of the three.
    """
    tls = cfg.tls
    if not tls.enabled:
        return None
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
