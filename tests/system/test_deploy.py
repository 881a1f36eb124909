"""The deploy/ files: the systemd unit passes ``systemd-analyze verify``, the installer passes
``bash -n``/shellcheck and its ``--dry-run`` shows every step without changing anything, the
example config validates, and the example mosquitto config really serves TLS with passwords
and an ACL."""

from __future__ import annotations

import os
import re
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
UNIT = DEPLOY / "edge-asd.service"
CONSOLE_UNIT = DEPLOY / "edge-asd-console.service"
CONSTRAINTS = DEPLOY / "constraints.txt"
INSTALLER = DEPLOY / "install-jetson.sh"
EXAMPLE_CONFIG = DEPLOY / "config.example.yaml"
MOSQUITTO_DIR = DEPLOY / "mosquitto"

EXEC_START = "/opt/edge-asd/venv/bin/edge-asd"


def _unit_entries(text: str) -> list[tuple[str, str, str]]:
    """``(section, key, value)`` for every assignment; systemd allows repeated keys."""
    section = ""
    out = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, _, value = line.partition("=")
        out.append((section, key.strip(), value.strip()))
    return out


def _values(entries: list[tuple[str, str, str]], section: str, key: str) -> list[str]:
    return [v for s, k, v in entries if s == section and k == key]


# --- systemd unit -----------------------------------------------------------------------------


def _verifiable_copy(tmp_path: Path, text: str) -> Path:
    """The unit with ExecStart pointed at an executable that exists here.

    ``systemd-analyze verify`` fails when the ExecStart binary is missing or not executable;
    /opt/edge-asd/venv does not exist off the device. Only that path is rewritten (to a tmp
    script); the user, directories and credential file are not checked by verify, so nothing
    else changes and nothing needs root.
    """
    exe = tmp_path / "edge-asd"
    exe.write_text("#!/bin/sh\nexit 0\n")
    exe.chmod(0o755)
    assert EXEC_START in text
    unit = tmp_path / "edge-asd.service"
    unit.write_text(text.replace(EXEC_START, str(exe)))
    return unit


def _verify(unit: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SYSTEMD_LOG_COLOR": "0", "SYSTEMD_PAGER": "", "LC_ALL": "C"}
    return subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(unit)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def _complaints(result: subprocess.CompletedProcess[str], unit: Path) -> list[str]:
    """verify exits 0 on unknown keys and bad values; its messages name the file."""
    lines = (result.stdout + result.stderr).splitlines()
    return [line for line in lines if unit.name in line or str(unit) in line]


needs_systemd_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed (apt install systemd)"
)


@needs_systemd_analyze
@pytest.mark.parametrize("source", [UNIT, CONSOLE_UNIT], ids=lambda p: p.name)
def test_unit_passes_systemd_analyze_verify(tmp_path: Path, source: Path) -> None:
    unit = _verifiable_copy(tmp_path, source.read_text())
    unit = unit.rename(tmp_path / source.name)
    result = _verify(unit)
    assert result.returncode == 0, result.stdout + result.stderr
    assert _complaints(result, unit) == []


@needs_systemd_analyze
@pytest.mark.parametrize("source", [UNIT, CONSOLE_UNIT], ids=lambda p: p.name)
def test_unit_exposure_is_ok_for_systemd_analyze_security(tmp_path: Path, source: Path) -> None:
    """``systemd-analyze security --offline``: the hardening leaves an exposure rated OK (< 4.0;
    the daemon was 6.3 MEDIUM before CapabilityBoundingSet=, SystemCallFilter= and ProtectProc=)."""
    unit = _verifiable_copy(tmp_path, source.read_text()).rename(tmp_path / source.name)
    env = {**os.environ, "SYSTEMD_LOG_COLOR": "0", "SYSTEMD_PAGER": "", "LC_ALL": "C"}
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", "--no-pager", str(unit)],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    if "--offline" in result.stderr and "unrecognized" in result.stderr:
        pytest.skip("systemd-analyze security --offline needs systemd 252 or newer")
    match = re.search(r"Overall exposure level for \S+: ([0-9.]+)", result.stdout)
    assert match, result.stdout + result.stderr
    print(f"{source.name}: exposure {match.group(1)}")
    assert float(match.group(1)) < 4.0, result.stdout


_HARDENING = {
    "CapabilityBoundingSet": "",
    "AmbientCapabilities": "",
    "SystemCallFilter": "@system-service",
    "SystemCallErrorNumber": "EPERM",
    "ProtectKernelLogs": "yes",
    "ProtectProc": "invisible",
    "NoNewPrivileges": "yes",
}


@pytest.mark.parametrize("source", [UNIT, CONSOLE_UNIT], ids=lambda p: p.name)
def test_units_are_hardened(source: Path) -> None:
    entries = _unit_entries(source.read_text())
    for key, value in _HARDENING.items():
        assert _values(entries, "Service", key) == [value], key
    families = set(_values(entries, "Service", "RestrictAddressFamilies")[0].split())
    assert families == {"AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK"}


@needs_systemd_analyze
def test_verify_check_catches_a_typo(tmp_path: Path) -> None:
    """The check above is only worth something if a misspelt directive makes it fail."""
    text = UNIT.read_text().replace("WatchdogSec=30", "WatchdogSecs=30")
    unit = _verifiable_copy(tmp_path, text)
    result = _verify(unit)
    assert any("WatchdogSecs" in line for line in _complaints(result, unit)), result.stderr


def test_unit_settings() -> None:
    from edge_asd.config import MqttConfig

    entries = _unit_entries(UNIT.read_text())
    svc = "Service"
    assert _values(entries, svc, "Type") == ["notify"]
    assert _values(entries, svc, "NotifyAccess") == ["main"]
    assert _values(entries, svc, "User") == ["edge-asd"]
    assert _values(entries, svc, "Group") == ["edge-asd"]
    assert set(_values(entries, svc, "SupplementaryGroups")[0].split()) == {"audio", "video"}
    assert _values(entries, svc, "ExecStart") == [f"{EXEC_START} listen --config /etc/edge-asd/config.yaml"]
    assert _values(entries, svc, "Restart") == ["on-failure"]
    assert _values(entries, svc, "WatchdogSec") == ["30"]
    assert _values(entries, svc, "TimeoutStopSec") == ["20"]
    assert int(_values(entries, svc, "TimeoutStartSec")[0]) >= 120
    assert _values(entries, svc, "StateDirectory") == ["edge-asd"]
    assert _values(entries, svc, "ConfigurationDirectory") == ["edge-asd"]
    assert "PYTHONUNBUFFERED=1" in _values(entries, svc, "Environment")
    # The credential name is the one the daemon looks for in $CREDENTIALS_DIRECTORY.
    credential = MqttConfig.model_fields["password_credential"].default
    assert _values(entries, svc, "LoadCredential") == [f"{credential}:/etc/edge-asd/mqtt_password"]
    # These would hide /dev/snd and the Jetson GPU nodes, or break CUDA's JIT.
    keys = {k for _, k, _ in entries}
    for forbidden in ("PrivateDevices", "MemoryDenyWriteExecute", "ProtectClock", "DevicePolicy", "DeviceAllow"):
        assert forbidden not in keys
    for hardening in ("NoNewPrivileges", "ProtectSystem", "ProtectHome", "PrivateTmp", "RestrictAddressFamilies"):
        assert hardening in keys
    # The sound card and the GPU stay reachable: through the groups, with no device allow-list
    # (asserted above) and no option that implies one (ProtectClock=) or hides /proc/driver (ProcSubset=).
    assert "ProcSubset" not in keys
    assert _values(entries, "Unit", "StartLimitBurst") and _values(entries, "Unit", "StartLimitIntervalSec")
    assert _values(entries, "Install", "WantedBy") == ["multi-user.target"]


# --- install script ---------------------------------------------------------------------------


def test_installer_is_valid_bash() -> None:
    result = subprocess.run(["bash", "-n", str(INSTALLER)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert os.access(INSTALLER, os.X_OK)


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed (apt install shellcheck)")
def test_installer_passes_shellcheck() -> None:
    result = subprocess.run(["shellcheck", str(INSTALLER)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def _bundle(tmp_path: Path) -> Path:
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "model.json").write_text('{"format": "edge-asd-bundle"}\n')
    (bundle / "model.onnx").write_bytes(b"onnx")
    return bundle


def _run_installer(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(INSTALLER), *args], capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL
    )


# Paths a real install creates; a dry run must leave each as it found it.
_INSTALL_PATHS = [
    Path("/opt/edge-asd"),
    Path("/etc/edge-asd"),
    Path("/var/lib/edge-asd"),
    Path("/var/cache/edge-asd"),
    Path("/etc/systemd/system/edge-asd.service"),
    Path("/etc/default/edge-asd"),
]


def _snapshot() -> dict[Path, bool]:
    return {path: path.exists() for path in _INSTALL_PATHS}


def test_dry_run_prints_every_step_and_changes_nothing(tmp_path: Path) -> None:
    bundle = _bundle(tmp_path)
    before = _snapshot()
    user_before = subprocess.run(["getent", "passwd", "edge-asd"], capture_output=True).returncode
    result = _run_installer("--dry-run", "--bundle", str(bundle), "--yes")
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "DRY RUN" in out
    # every step of a real install, in order
    steps = [
        "Checking privileges",
        "Checking the platform",
        "Installing system packages",
        "Creating the service user edge-asd",
        "Creating the virtual environment /opt/edge-asd/venv",
        "Installing edge-asd[jetson]",
        "Installing the model bundle into /var/lib/edge-asd/bundle",
        "Building the TensorRT engine",
        "Installing the configuration /etc/edge-asd/config.yaml",
        "Installing the MQTT password",
        "Installing the systemd unit /etc/systemd/system/edge-asd.service",
        "Enabling and starting edge-asd.service",
    ]
    positions = [out.find(step) for step in steps]
    assert all(p >= 0 for p in positions), [s for s, p in zip(steps, positions, strict=True) if p < 0]
    assert positions == sorted(positions)
    # and the commands behind them
    assert "useradd --system" in out or "usermod --append --groups audio" in out
    if not Path("/opt/edge-asd/venv/bin/python").exists():
        assert "-m venv --system-site-packages /opt/edge-asd/venv" in out
    assert "-m pip install" in out
    assert f"cp -a {bundle} /var/lib/edge-asd/bundle.new" in out
    assert "build-engine /var/lib/edge-asd/bundle" in out
    assert "runuser -u edge-asd" in out or "sudo -u edge-asd" in out
    assert "systemctl daemon-reload" in out
    assert "systemctl enable edge-asd.service" in out
    if not Path("/etc/nv_tegra_release").exists():
        assert "not a Jetson" in result.stderr  # a warning in a dry run, not a failure
    # nothing was changed
    assert _snapshot() == before
    assert subprocess.run(["getent", "passwd", "edge-asd"], capture_output=True).returncode == user_before


def test_dry_run_with_config_and_password_and_no_engine(tmp_path: Path) -> None:
    bundle = _bundle(tmp_path)
    config = tmp_path / "config.yaml"
    shutil.copy(EXAMPLE_CONFIG, config)
    secret = tmp_path / "mqtt_password"
    secret.write_text("s3cret\n")
    result = _run_installer(
        "--dry-run", "--yes", "--bundle", str(bundle), "--config", str(config),
        "--mqtt-password-file", str(secret), "--no-engine",
    )  # fmt: skip
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "build-engine /var/lib/edge-asd/bundle" not in out and "skipped (--no-engine" in out
    assert f"install -m 0600 -o root -g root {secret} /etc/edge-asd/mqtt_password" in out
    assert "s3cret" not in out + result.stderr
    if not Path("/etc/edge-asd/config.yaml").exists():
        assert f"install -m 0640 -o root -g edge-asd {config} /etc/edge-asd/config.yaml" in out
        # a given config means the service is started, not just enabled
        assert "systemctl restart edge-asd.service" in out


def test_dry_run_uninstall_keeps_data_unless_purge() -> None:
    kept = _run_installer("--uninstall", "--dry-run", "--yes")
    assert kept.returncode == 0, kept.stdout + kept.stderr
    assert "kept (bundle, engines, outbox, evidence)" in kept.stdout
    assert "rm -rf /var/lib/edge-asd" not in kept.stdout
    purged = _run_installer("--uninstall", "--purge", "--dry-run", "--yes")
    assert purged.returncode == 0, purged.stdout + purged.stderr
    assert "rm -rf /var/lib/edge-asd /var/cache/edge-asd" in purged.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--bundle", "/nonexistent/bundle"], "--bundle /nonexistent/bundle is not a directory"),
        (["--purge"], "--purge only goes with --uninstall"),
        (["--wheel", "a.whl", "--source", "."], "either --wheel or --source"),
        (["--frobnicate"], "unknown option '--frobnicate'"),
        (["--prefix", "relative/dir"], "--prefix must be an absolute path"),
        (["--bundle"], "--bundle needs a value"),
    ],
)
def test_installer_rejects_bad_arguments(args: list[str], message: str) -> None:
    result = _run_installer("--dry-run", "--yes", *args)
    assert result.returncode != 0
    assert message in result.stderr


def test_installer_rejects_a_folder_that_is_not_a_bundle(tmp_path: Path) -> None:
    result = _run_installer("--dry-run", "--yes", "--bundle", str(tmp_path))
    assert result.returncode != 0
    assert "has no model.json" in result.stderr


def test_installer_help() -> None:
    result = _run_installer("--help")
    assert result.returncode == 0
    for option in ("--bundle", "--config", "--wheel", "--source", "--prefix", "--no-engine", "--yes", "--dry-run",
                   "--uninstall", "--purge"):
        assert option in result.stdout


# --- example config ---------------------------------------------------------------------------


def test_example_config_is_valid() -> None:
    from edge_asd.config import DeviceSourceConfig, load_config

    cfg = load_config(EXAMPLE_CONFIG)
    assert str(cfg.bundle) == "/var/lib/edge-asd/bundle"
    assert str(cfg.state_dir) == "/var/lib/edge-asd"
    assert len(cfg.sources) == 1
    source = cfg.sources[0]
    assert isinstance(source, DeviceSourceConfig) and source.channels == 4
    assert [s.channel for s in cfg.streams] == [0, 1, 2, 3]
    assert all(s.source == source.name and s.classes for s in cfg.streams)
    assert cfg.mqtt is not None
    assert cfg.mqtt.tls.enabled and cfg.mqtt.effective_port == 8883
    assert cfg.mqtt.discovery.enabled
    # the password comes from the systemd credential, not from the file
    assert cfg.mqtt.password is None and cfg.mqtt.password_file is None


# --- example mosquitto config -----------------------------------------------------------------

_TOOLS = ("mosquitto", "mosquitto_passwd", "openssl")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture
def tls_broker(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """The example mosquitto.conf and acl, started on a free loopback port.

    Rewritten for the test: the cert/password/ACL paths (to files made here), the listener
    port (free port, loopback only), and ``user root`` when running as root (otherwise
    mosquitto switches to the ``mosquitto`` user, which cannot read the pytest tmp dir).
    """
    missing = [tool for tool in _TOOLS if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"not installed: {', '.join(missing)}")
    d = tmp_path
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl("req", "-x509", *ec, "-days", "2", "-subj", "/CN=test CA", "-keyout", "ca.key", "-out", "ca.crt", cwd=d)
    _openssl("req", *ec, "-subj", "/CN=localhost", "-keyout", "broker.key", "-out", "broker.csr", cwd=d)
    (d / "broker.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    _openssl(
        "x509", "-req", "-in", "broker.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
        "-days", "2", "-extfile", "broker.ext", "-out", "broker.crt", cwd=d,
    )  # fmt: skip
    passwd = d / "passwd"
    for i, (user, password) in enumerate([("press-line-1", "devpw"), ("homeassistant", "hapw")]):
        cmd = ["mosquitto_passwd", "-b", *(["-c"] if i == 0 else []), str(passwd), user, password]
        subprocess.run(cmd, check=True, capture_output=True, timeout=30)
    shutil.copy(MOSQUITTO_DIR / "acl", d / "acl")
    port = _free_port()
    conf = (MOSQUITTO_DIR / "mosquitto.conf").read_text()
    assert "listener 8883\n" in conf
    conf = (
        conf.replace("/etc/mosquitto/certs/", f"{d}/")
        .replace("/etc/mosquitto/passwd", str(passwd))
        .replace("/etc/mosquitto/acl", str(d / "acl"))
        .replace("listener 8883\n", f"listener {port} 127.0.0.1\n")
    )
    if os.geteuid() == 0:
        conf += "\nuser root\n"
    (d / "mosquitto.conf").write_text(conf)
    log = (d / "mosquitto.log").open("w")
    proc = subprocess.Popen(["mosquitto", "-c", str(d / "mosquitto.conf")], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 15
        while True:
            if proc.poll() is not None:
                pytest.fail(f"mosquitto exited: {(d / 'mosquitto.log').read_text()}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail("mosquitto did not open its port in 15 s")
                time.sleep(0.05)
        yield port, d / "ca.crt"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def _client(port: int, ca: Path, user: str, password: str):
    import paho.mqtt.client as mqtt

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"test-{user}", protocol=mqtt.MQTTv311)
    client.tls_set(ca_certs=str(ca), cert_reqs=ssl.CERT_REQUIRED)
    client.username_pw_set(user, password)
    result: dict[str, object] = {}
    connected = threading.Event()

    def on_connect(_c, _u, _flags, reason_code, _props) -> None:
        result["rc"] = reason_code
        connected.set()

    client.on_connect = on_connect
    client.connect("localhost", port)
    client.loop_start()
    assert connected.wait(10), "no CONNACK"
    return client, result["rc"]


def test_mosquitto_example_accepts_tls_password_and_enforces_acl(tls_broker: tuple[int, Path]) -> None:
    port, ca = tls_broker
    # a wrong password is refused
    bad, rc = _client(port, ca, "press-line-1", "wrong")
    bad.loop_stop()
    bad.disconnect()
    assert rc.is_failure

    ha, rc = _client(port, ca, "homeassistant", "hapw")
    device, rc_dev = _client(port, ca, "press-line-1", "devpw")
    try:
        assert not rc.is_failure and not rc_dev.is_failure
        received: list[tuple[str, bytes]] = []
        got_allowed = threading.Event()
        subscribed = threading.Event()

        def on_message(_c, _u, msg) -> None:
            received.append((msg.topic, msg.payload))
            if msg.topic == "edge-asd/press-line-1/available":
                got_allowed.set()

        ha.on_message = on_message
        ha.on_subscribe = lambda *_a: subscribed.set()
        ha.subscribe([("edge-asd/#", 1), ("homeassistant/+/+/config", 1)])
        assert subscribed.wait(10)
        # Denied first, allowed last, same client and QoS 1: the broker forwards in order, so
        # once the allowed message arrived, a wrongly allowed one would already be there.
        device.publish("edge-asd/press-line-2/available", "spoofed", qos=1).wait_for_publish(10)
        device.publish("homeassistant/binary_sensor/edge_asd_press-line-1_x/config", "{}", qos=1).wait_for_publish(10)
        device.publish("edge-asd/press-line-1/available", "online", qos=1).wait_for_publish(10)
        assert got_allowed.wait(10), received
        topics = [t for t, _ in received]
        assert "edge-asd/press-line-2/available" not in topics  # a device cannot speak for another
        assert "homeassistant/binary_sensor/edge_asd_press-line-1_x/config" in topics  # discovery allowed
    finally:
        for client in (ha, device):
            client.loop_stop()
            client.disconnect()


def test_bridge_example_in_the_docs_is_a_valid_mosquitto_config(tmp_path: Path) -> None:
    """The bridge snippet of docs/deploy.md loads in mosquitto (its remote is unreachable here).

    Rewritten for the test: the central broker's address (an unused loopback port), the CA
    path (a file made here); a loopback listener and ``user root`` (when root) are added.
    """
    missing = [tool for tool in ("mosquitto", "openssl") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"not installed: {', '.join(missing)}")
    doc = (REPO / "docs" / "deploy.md").read_text()
    marker = "`/etc/mosquitto/conf.d/bridge-central.conf`:\n\n```\n"
    assert marker in doc
    block = doc.split(marker, 1)[1].split("```", 1)[0]
    assert "connection " in block and "topic edge-asd/# out 1" in block
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl("req", "-x509", *ec, "-days", "2", "-subj", "/CN=test CA", "-keyout", "ca.key", "-out", "ca.crt",
             cwd=tmp_path)
    port, remote = _free_port(), _free_port()
    conf = block.replace("/etc/mosquitto/certs/central-ca.crt", str(tmp_path / "ca.crt")).replace(
        "central-mqtt.example.com:8883", f"127.0.0.1:{remote}"
    )
    head = f"listener {port} 127.0.0.1\nallow_anonymous true\n" + ("user root\n" if os.geteuid() == 0 else "")
    (tmp_path / "bridge.conf").write_text(head + conf)
    proc = subprocess.Popen(
        ["mosquitto", "-v", "-c", str(tmp_path / "bridge.conf")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 15
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                time.sleep(0.05)
        assert proc.poll() is None, proc.communicate()[0]  # a bad config makes mosquitto exit at once
    finally:
        proc.terminate()
        try:
            out = proc.communicate(timeout=10)[0]
        except subprocess.TimeoutExpired:
            proc.kill()
            out = proc.communicate()[0]
    assert "Config loaded" in out, out
    assert "Bridge local.bridge-plant-a doing local SUBSCRIBE on topic edge-asd/#" in out, out


# --- the real install path, against a scratch root with recording fakes -------------------------
#
# A real install needs root, a Jetson, apt and systemd as PID 1, none of which a test may touch.
# EDGE_ASD_INSTALL_ROOT (a test hook of the script) puts every file under tmp_path; the system
# commands (apt-get, dpkg-query, useradd/usermod/userdel, runuser, systemctl, chown, id and the
# owner flags of install) are replaced by fakes on PATH that record their arguments; the system
# Python is a fake that makes a fake venv whose pip and edge-asd record their calls, and whose
# build-engine writes an engine file into the bundle. Everything else (mkdir, install, cp, mv,
# rm, diff, sed, chmod, mktemp) is real, so file placement, modes, the unit rewrite, the bundle
# swap and idempotency are what a Jetson would get.

_FAKES = {
    "apt-get": 'echo "apt-get $*" >> "$FAKE_LOG"',
    "dpkg-query": 'case "$*" in *libnvinfer*) echo "libnvinfer10 10.3.0.30-1+cuda12.5";; *) exit 1;; esac',
    "useradd": 'echo "useradd $*" >> "$FAKE_LOG"',
    "usermod": 'echo "usermod $*" >> "$FAKE_LOG"',
    "userdel": 'echo "userdel $*" >> "$FAKE_LOG"',
    "systemctl": 'echo "systemctl $*" >> "$FAKE_LOG"; case "$1" in is-active) exit 3;; esac',
    "chown": 'echo "chown $*" >> "$FAKE_LOG"',
    "id": 'if [ "$1" = -u ]; then echo 0; else exec /usr/bin/id "$@"; fi',
    "sleep": "exit 0",
    "runuser": 'echo "runuser $*" >> "$FAKE_LOG"; while [ "$1" != -- ]; do shift; done; shift; exec "$@"',
    # install: drop -o/-g (the edge-asd user does not exist here), keep the rest
    "install": (
        'args=""; skip=0; for a in "$@"; do if [ $skip = 1 ]; then skip=0; continue; fi; '
        'case "$a" in -o|-g) skip=1;; *) args="$args \'$a\'";; esac; done; eval "exec /usr/bin/install $args"'
    ),
}

_FAKE_SYSTEM_PYTHON = r"""#!/bin/sh
case "$*" in
  *"import tensorrt"*) echo 10.3.0; exit 0;;
  "-m venv --system-site-packages "*)
    venv="$4"; echo "venv $venv" >> "$FAKE_LOG"; mkdir -p "$venv/bin"
    printf 'include-system-site-packages = true\n' > "$venv/pyvenv.cfg"
    printf '#!/bin/sh\necho "venv-python $*" >> "$FAKE_LOG"\ncase "$1" in -c) echo tensorrt 10.3.0;; esac\n' > "$venv/bin/python"
    cat > "$venv/bin/edge-asd" <<'EOF'
#!/bin/sh
echo "edge-asd $*" >> "$FAKE_LOG"
case "$1" in
  build-engine) mkdir -p "$2/engines/trt10.3_orin_sm87" && echo plan > "$2/engines/trt10.3_orin_sm87/model.plan";;
  config) if grep -q INVALID "$3"; then echo "error: invalid config $3" >&2; exit 2; fi; echo "effective config";;
esac
EOF
    chmod +x "$venv/bin/python" "$venv/bin/edge-asd"; exit 0;;
esac
exec "$REAL_PYTHON" "$@"
"""


@pytest.fixture
def fake_system(tmp_path: Path) -> dict[str, object]:
    import sys

    bin_dir = tmp_path / "fakebin"
    bin_dir.mkdir()
    for name, body in _FAKES.items():
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    python = tmp_path / "system-python3"
    python.write_text(_FAKE_SYSTEM_PYTHON)
    python.chmod(0o755)
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "nv_tegra_release").write_text("# R36 (release), REVISION: 4.3, GCID: 0, BOARD: generic\n")
    nvcc = root / "usr" / "local" / "cuda" / "bin" / "nvcc"
    nvcc.parent.mkdir(parents=True)
    nvcc.write_text("#!/bin/sh\necho 'Cuda compilation tools, release 12.6, V12.6.68'\n")
    nvcc.chmod(0o755)
    log = tmp_path / "calls.log"
    log.touch()
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "EDGE_ASD_INSTALL_ROOT": str(root),
        "EDGE_ASD_SYSTEM_PYTHON": str(python),
        "REAL_PYTHON": sys.executable,
        "FAKE_LOG": str(log),
    }
    return {"root": root, "log": log, "env": env}


def _install(fake: dict[str, object], *args: str) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    log = fake["log"]
    assert isinstance(log, Path)
    log.write_text("")
    result = subprocess.run(
        ["bash", str(INSTALLER), "--yes", *args],
        capture_output=True, text=True, timeout=120, env=fake["env"], stdin=subprocess.DEVNULL,
    )  # fmt: skip
    return result, log.read_text().splitlines()


def test_install_upgrade_and_uninstall_against_a_scratch_root(fake_system: dict[str, object], tmp_path: Path) -> None:
    root = fake_system["root"]
    assert isinstance(root, Path)
    bundle = _bundle(tmp_path)
    config = tmp_path / "config.yaml"
    shutil.copy(EXAMPLE_CONFIG, config)
    secret = tmp_path / "pw"
    secret.write_text("s3cret\n")

    # --- first install
    result, calls = _install(
        fake_system, "--bundle", str(bundle), "--config", str(config), "--mqtt-password-file", str(secret)
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "L4T R36.4.3 (JetPack 6.x)" in result.stdout
    assert any(c.startswith("apt-get install -y --no-install-recommends libportaudio2 libsndfile1") for c in calls)
    assert any(c.startswith("useradd --system --user-group --groups audio,video") for c in calls)
    venv = root / "opt" / "edge-asd" / "venv"
    assert f"venv {venv}" in calls
    pip = [c for c in calls if c.startswith("venv-python -m pip install")]
    assert any(c.endswith(f"{REPO}[jetson]") and "--constraint" in c for c in pip), pip
    assert (root / "opt" / "edge-asd" / "pip-constraints.txt").read_text() == CONSTRAINTS.read_text()
    assert "numpy==1.26.4" in CONSTRAINTS.read_text().splitlines()
    assert any(c.startswith("venv-python -m pip install --constraint") and c.endswith("--upgrade pip") for c in calls)
    # pip >= 26.2 pins isolated build environments (pycuda's numpy and setuptools, edge-asd's
    # setuptools) only with --build-constraint: every pip call that builds passes it, with the
    # same file; the venv's own old pip, which only upgrades itself from a wheel, does not.
    pinned = root / "opt" / "edge-asd" / "pip-constraints.txt"
    builds = [c for c in pip if not c.endswith("--upgrade pip")]
    assert len(builds) == 2 and any("--force-reinstall --no-deps" in c for c in builds), builds
    for c in builds:
        assert f"--constraint {pinned} --build-constraint {pinned}" in c, c
    assert all("--build-constraint" not in c for c in pip if c.endswith("--upgrade pip")), pip
    assert "PIP_CONSTRAINT=" not in INSTALLER.read_text()  # it no longer reaches build environments
    manifest = (root / "opt" / "edge-asd" / "installed-versions.txt").read_text()
    assert "libnvinfer10" in manifest and "apt libportaudio2=" in manifest  # (the fake dpkg-query ignores -f)
    installed = root / "var" / "lib" / "edge-asd" / "bundle"
    assert (installed / "model.json").read_text() == (bundle / "model.json").read_text()
    assert any(c.startswith("runuser -u edge-asd -- env") for c in calls)
    assert f"edge-asd build-engine {installed}" in calls
    plan = installed / "engines" / "trt10.3_orin_sm87" / "model.plan"
    assert plan.is_file()
    etc = root / "etc" / "edge-asd"
    assert (etc / "config.yaml").read_text() == config.read_text()
    assert (etc / "config.yaml").stat().st_mode & 0o777 == 0o640
    assert (etc / "mqtt_password").read_text() == "s3cret\n"
    assert (etc / "mqtt_password").stat().st_mode & 0o777 == 0o600
    assert (etc.stat().st_mode & 0o777) == 0o750
    unit = (root / "etc" / "systemd" / "system" / "edge-asd.service").read_text()
    assert f"ExecStart={venv}/bin/edge-asd listen --config /etc/edge-asd/config.yaml" in unit
    assert (root / "etc" / "default" / "edge-asd").is_file()
    check = next(i for i, c in enumerate(calls) if c == f"edge-asd config check {etc / 'config.yaml'}")
    assert calls[check - 1].startswith("runuser -u edge-asd -- ")  # checked as the service user
    assert check < calls.index("systemctl restart edge-asd.service")
    assert "effective config" not in result.stdout  # run_quiet
    systemctl = [c for c in calls if c.startswith("systemctl ")]
    assert systemctl.index("systemctl daemon-reload") < systemctl.index("systemctl enable edge-asd.service")
    assert systemctl.index("systemctl enable edge-asd.service") < systemctl.index("systemctl restart edge-asd.service")
    assert "s3cret" not in result.stdout + result.stderr

    # --- re-run, same bundle, another config: nothing rebuilt, the config is kept
    other = tmp_path / "other.yaml"
    other.write_text(config.read_text().replace("hop_s: 1.0", "hop_s: 2.0"))
    result, calls = _install(fake_system, "--bundle", str(bundle), "--config", str(other))
    assert result.returncode == 0, result.stdout + result.stderr
    assert not any(c.startswith("venv ") for c in calls)  # the venv is reused
    assert "unchanged: keeping" in result.stdout and plan.is_file()
    assert f"edge-asd build-engine {installed}" in calls  # a current engine is the command's business
    assert (etc / "config.yaml").read_text() == config.read_text()
    assert "differs from the installed" in result.stderr
    assert (etc / "mqtt_password").read_text() == "s3cret\n"

    # --- a new bundle replaces the old one, without its stale engine, and gets a new one
    (bundle / "model.json").write_text('{"format": "edge-asd-bundle", "v": 2}\n')
    result, calls = _install(fake_system, "--bundle", str(bundle))
    assert result.returncode == 0, result.stdout + result.stderr
    assert (installed / "model.json").read_text() == (bundle / "model.json").read_text()
    assert not (installed.parent / "bundle.old").exists() and not (installed.parent / "bundle.new").exists()
    assert f"edge-asd build-engine {installed}" in calls and plan.is_file()

    # --- uninstall keeps the data; --purge removes it
    result, calls = _install(fake_system, "--uninstall")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "systemctl disable --now edge-asd.service" in calls
    assert not (root / "etc" / "systemd" / "system" / "edge-asd.service").exists()
    assert not (root / "opt" / "edge-asd").exists() and not etc.exists()
    assert (installed / "model.json").is_file()
    result, calls = _install(fake_system, "--uninstall", "--purge")
    assert result.returncode == 0, result.stdout + result.stderr
    assert not (root / "var" / "lib" / "edge-asd").exists()


def test_install_without_config_enables_but_does_not_start(fake_system: dict[str, object], tmp_path: Path) -> None:
    root = fake_system["root"]
    assert isinstance(root, Path)
    result, calls = _install(fake_system, "--bundle", str(_bundle(tmp_path)), "--no-engine")
    assert result.returncode == 0, result.stdout + result.stderr
    assert (root / "etc" / "edge-asd" / "config.yaml").read_text() == EXAMPLE_CONFIG.read_text()
    assert (root / "etc" / "edge-asd" / "mqtt_password").read_text() == ""  # LoadCredential needs it
    assert "systemctl enable edge-asd.service" in calls
    assert "systemctl restart edge-asd.service" not in calls
    assert not any(c.startswith("edge-asd build-engine") for c in calls)
    assert "edit" in result.stderr and "config.yaml" in result.stderr


@pytest.mark.parametrize(
    ("deb", "python"),
    [("libnvinfer8 8.6.2.3-1+cuda12.2", "8.6.2"), ("libnvinfer10 10.3.0.30-1+cuda12.5", "8.6.2")],
    ids=["jetpack-6.0", "old-python-bindings"],
)
def test_install_stops_on_tensorrt_older_than_10(
    fake_system: dict[str, object], tmp_path: Path, deb: str, python: str
) -> None:
    """JetPack 6.0 (TensorRT 8.6) is a hard failure that names JetPack 6.1+, not a warning."""
    fakebin = Path(str(fake_system["env"]["PATH"]).split(":")[0])  # type: ignore[index]
    (fakebin / "dpkg-query").write_text(f'#!/bin/sh\ncase "$*" in *libnvinfer*) echo "{deb}";; *) exit 1;; esac\n')
    system_python = Path(str(fake_system["env"]["EDGE_ASD_SYSTEM_PYTHON"]))  # type: ignore[index]
    system_python.write_text(system_python.read_text().replace("echo 10.3.0; exit 0", f"echo {python}; exit 0"))
    root = fake_system["root"]
    assert isinstance(root, Path)
    result, calls = _install(fake_system, "--bundle", str(_bundle(tmp_path)))
    assert result.returncode != 0
    assert "is too old: edge-asd needs TensorRT 10 or newer" in result.stderr
    assert "JetPack 6.1" in result.stderr and "JetPack 6.0 ships TensorRT 8.6" in result.stderr
    assert calls == []  # stopped before changing anything
    assert not (root / "opt").exists()
    # a dry run stops as well: this is not a plan that can work
    dry = subprocess.run(
        ["bash", str(INSTALLER), "--dry-run", "--yes", "--bundle", str(tmp_path / "bundle")],
        capture_output=True, text=True, timeout=120, env=fake_system["env"], stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert dry.returncode != 0 and "JetPack 6.1" in dry.stderr


def test_every_pip_dependency_is_pinned_exactly() -> None:
    """deploy/constraints.txt pins every dependency of pyproject (base, jetson, onnx), the
    installer's own tools and what the isolated builds install (edge-asd's and pycuda's
    [build-system] requires, given to pip as --build-constraint) to one version; numpy stays 1.x
    for JetPack's TensorRT bindings, in the venv and in pycuda's build alike."""
    import tomllib

    pins = {}
    for line in CONSTRAINTS.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep and version, f"not an exact pin: {line!r}"
            pins[re.sub(r"[-_.]+", "-", name.lower())] = version
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    project = pyproject["project"]
    # pycuda's own pyproject.toml (2026.1): [build-system] requires = setuptools, wheel, numpy>=1.24
    pycuda_build = ["setuptools", "wheel", "numpy>=1.24"]
    wanted = [*project["dependencies"], *project["optional-dependencies"]["jetson"],
              *project["optional-dependencies"]["onnx"], "pip", "setuptools", "wheel",
              *pyproject["build-system"]["requires"], *pycuda_build]  # fmt: skip
    assert pins["pycuda"] == "2026.1", "pycuda changed: check its [build-system] requires above"
    for requirement in wanted:
        name = re.sub(r"[-_.]+", "-", re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].lower())
        assert name in pins, f"{name} is not pinned in {CONSTRAINTS}"
    assert int(pins["numpy"].split(".")[0]) < 2


def test_install_stops_without_tensorrt(fake_system: dict[str, object], tmp_path: Path) -> None:
    fakebin = Path(str(fake_system["env"]["PATH"]).split(":")[0])  # type: ignore[index]
    (fakebin / "dpkg-query").write_text("#!/bin/sh\nexit 1\n")
    root = fake_system["root"]
    assert isinstance(root, Path)
    result, calls = _install(fake_system, "--bundle", str(_bundle(tmp_path)))
    assert result.returncode != 0
    assert "TensorRT is not installed" in result.stderr and "nvidia-jetpack" in result.stderr
    assert calls == []  # stopped before changing anything
    assert not (root / "opt").exists()


def test_install_does_not_start_with_an_invalid_config(fake_system: dict[str, object], tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("INVALID: true\n")
    result, calls = _install(fake_system, "--bundle", str(_bundle(tmp_path)), "--config", str(config), "--no-engine")
    assert result.returncode != 0
    assert "config.yaml is not valid" in result.stderr and "error: invalid config" in result.stderr
    assert "systemctl enable edge-asd.service" in calls
    assert "systemctl restart edge-asd.service" not in calls
