"""Broker credentials handled safely: a password in the URL and a password over plain MQTT to
another host get a warning that says how to do it right, a TLS client key that every user can
reach and read is refused (one behind a directory closed to them is a warning), and the password
never appears in a message."""

from __future__ import annotations

import logging
import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge_asd.comms.credentials import (
    check_key_permissions,
    check_tls_files,
    resolve_password,
)
from edge_asd.config import ConfigError, MqttConfig, config_from_cli, validate_config
from edge_asd.core.hosts import is_loopback_host

pytestmark = pytest.mark.device

SECRET = "s3cret-Pa55"


def _one_stream() -> dict[str, Any]:
    return {
        "sources": [{"name": "s", "type": "synth"}],
        "streams": [{"name": "m", "source": "s", "classes": ["fan/id_00"]}],
    }


def test_a_password_in_the_broker_url_gets_a_loud_warning(caplog) -> None:
    with caplog.at_level(logging.WARNING):
        cfg = validate_config({**_one_stream(), "mqtt": {"url": "mqtts://press@broker.plant:8883"}})
    assert "password" not in caplog.text.lower()  # no password, no warning
    with caplog.at_level(logging.WARNING):
        cfg = validate_config({**_one_stream(), "mqtt": {"url": f"mqtts://press:{SECRET}@broker.plant:8883"}})
    assert cfg.mqtt is not None and cfg.mqtt.password is not None  # still works: a warning, not a refusal
    assert "SECURITY: the MQTT broker URL carries a password" in caplog.text
    assert "mqtts://press@broker.plant" in caplog.text and "/etc/edge-asd/mqtt_password" in caplog.text
    assert "password_file" in caplog.text and SECRET not in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):  # the same from the command line (--broker)
        config_from_cli(source="synth", classes=["fan/id_00"], broker=f"mqtt://u:{SECRET}@127.0.0.1:1883")
    assert "--broker" in caplog.text and "shows in `ps`" in caplog.text and SECRET not in caplog.text


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("localhost", True), ("127.0.0.1", True), ("127.0.1.1", True), ("::1", True), ("[::1]", True),
     ("broker.plant", False), ("10.0.0.5", False), ("localhost.example.com", False)],
)  # fmt: skip
def test_is_loopback_host(host: str, loopback: bool) -> None:
    assert is_loopback_host(host) is loopback


def test_a_password_over_plain_mqtt_to_another_host_gets_a_warning(tmp_path: Path, caplog) -> None:
    pw = tmp_path / "pw"
    pw.write_text(SECRET + "\n")
    pw.chmod(0o600)
    plain = MqttConfig(host="broker.plant", username="press", password_file=pw)
    with caplog.at_level(logging.WARNING):
        assert resolve_password(plain) == SECRET
    assert "over plain mqtt:// (no TLS)" in caplog.text and "mqtts://broker.plant" in caplog.text
    assert SECRET not in caplog.text
    for quiet in (
        MqttConfig(host="127.0.0.1", username="press", password_file=pw),  # this machine
        MqttConfig(host="broker.plant", username="press", password_file=pw, tls={"enabled": True}),  # TLS
        MqttConfig(host="broker.plant"),  # no password at all
    ):
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            resolve_password(quiet)
        assert "SECURITY" not in caplog.text, quiet


def test_a_world_readable_password_file_gets_a_warning(tmp_path: Path, caplog) -> None:
    pw = tmp_path / "pw"
    pw.write_text(SECRET + "\n")
    pw.chmod(0o644)
    with caplog.at_level(logging.WARNING):
        resolve_password(MqttConfig(host="127.0.0.1", password_file=pw))
    assert f"mqtt.password_file {pw} is readable by every user" in caplog.text and f"chmod 600 {pw}" in caplog.text


def _key_pair(folder: Path) -> tuple[Path, Path]:
    key, cert = folder / "client.key", folder / "client.crt"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-days", "2", "-subj", "/CN=press1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return key, cert


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory every user can pass through, and every directory above it too (pytest's
    ``tmp_path`` sits under a 0700 ``pytest-of-<user>``, which closes whatever is inside)."""
    folder = Path(tempfile.mkdtemp(prefix="edge-asd-keys-"))
    try:
        folder.chmod(0o755)
        closed = [str(d) for d in folder.resolve().parents if not d.stat().st_mode & stat.S_IXOTH]
        if closed:
            pytest.skip(f"the temporary directory is inside {closed[0]}, closed to other users")
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _need_openssl() -> None:
    if subprocess.run(["which", "openssl"], capture_output=True).returncode != 0:
        pytest.skip("openssl not installed")


def test_tls_key_file_permissions(open_dir: Path, caplog) -> None:
    _need_openssl()
    key, cert = _key_pair(open_dir)
    cfg = MqttConfig(url="mqtts://127.0.0.1:8883", tls={"cert_file": str(cert), "key_file": str(key)})
    key.chmod(0o644)
    with pytest.raises(ConfigError, match=r"mqtt\.tls\.key_file .*client\.key is readable by every user .*chmod 600"):
        check_tls_files(cfg)
    key.chmod(0o600)
    with caplog.at_level(logging.WARNING):
        assert check_tls_files(cfg) is not None
    assert "SECURITY" not in caplog.text
    # group-readable: fine for the service's own group (root:edge-asd 0640), a warning for another
    key.chmod(0o640)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        check_key_permissions(key)
    own_group = key.stat().st_gid == os.getegid()
    assert ("SECURITY" in caplog.text) is not own_group
    if os.geteuid() == 0:  # only root can give the file a group that is not its own
        os.chown(key, -1, os.getegid() + 4242)
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            check_key_permissions(key)
        assert "readable by group" in caplog.text and f"chmod 600 {key}" in caplog.text


@pytest.mark.parametrize("folder_mode", [0o750, 0o700])
def test_a_world_readable_key_behind_a_closed_directory_is_a_warning(open_dir: Path, folder_mode: int, caplog) -> None:
    """A 0644 key in a 0750/0700 directory (how nodes were set up before the check) is out of
    other users' reach: the node keeps starting, with a warning that names the directory."""
    _need_openssl()
    tls_dir = open_dir / "tls"
    tls_dir.mkdir()
    key, cert = _key_pair(tls_dir)
    key.chmod(0o644)
    cfg = MqttConfig(url="mqtts://127.0.0.1:8883", tls={"cert_file": str(cert), "key_file": str(key)})
    tls_dir.chmod(0o755)  # open all the way down: refused
    with pytest.raises(ConfigError, match=r"client\.key is readable by every user .*every directory above it"):
        check_tls_files(cfg)
    tls_dir.chmod(folder_mode)
    try:
        with caplog.at_level(logging.WARNING, logger="edge_asd.comms.credentials"):
            assert check_tls_files(cfg) is not None
        assert f"SECURITY: mqtt.tls.key_file {key} is readable by every user (mode 0644)" in caplog.text
        assert f"only its directory {tls_dir.resolve()} (mode {folder_mode:04o})" in caplog.text
        assert f"chmod 600 {key}" in caplog.text
        # the closed directory may be any one above the key, not only its own
        caplog.clear()
        tls_dir.chmod(0o755)
        open_dir.chmod(folder_mode)
        with caplog.at_level(logging.WARNING, logger="edge_asd.comms.credentials"):
            check_key_permissions(key)
        assert f"only its directory {open_dir.resolve()}" in caplog.text
    finally:
        open_dir.chmod(0o755)
        tls_dir.chmod(0o755)
