"""The daemon's configuration schema: every key a config file may hold, with its default.

Each field carries a title and a description so ``config check`` and the docs can explain
it, and each default lives here only: the runtime objects (``DecisionEngine``,
``LevelMonitor``, the inference runtime) are built from these models and have no defaults of
their own. Checks that span several fields raise errors that carry the key path they are
about, so ``edge_asd.config.errors`` can point at the right line of the file.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Annotated, Any, Literal
from urllib.parse import unquote, urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_core import PydanticCustomError

from edge_asd.config.base import (
    ConfigModel,
    ConfigPath,
    SafeName,
    default_node_id,
    default_state_dir,
)
from edge_asd.config.runtime import RUNTIME_TYPES, AutoRuntimeConfig, RuntimeConfig, RuntimeType
from edge_asd.core.constants import MAX_AUDIO_RATE, MIN_AUDIO_RATE
from edge_asd.core.site.enrolment import DEFAULT_FALSE_ALARMS_PER_DAY

logger = logging.getLogger(__name__)


# --- MQTT -----------------------------------------------------------------------------------


def check_topic_prefix(value: str) -> str:
    """``value`` as the first level(s) of MQTT topic names, or ValueError saying what is wrong."""
    if not value:
        raise ValueError("must not be empty (Home Assistant's default is homeassistant)")
    bad = sorted({c for c in value if c in "+#\x00"})
    if bad:
        raise ValueError(
            f"{value!r} contains {' and '.join(repr(c) for c in bad)}: wildcards cannot be published to; "
            "use the plain prefix, e.g. homeassistant"
        )
    if any(level == "" for level in value.split("/")):
        raise ValueError(f"{value!r} has an empty topic level (a leading, trailing or double '/'): e.g. homeassistant")
    return value



class TlsConfig(ConfigModel):
    """TLS to the broker; any certificate setting turns it on."""

    enabled: bool = Field(False, title="TLS", description="Connect with TLS (implied by an mqtts:// url).")
    ca_file: ConfigPath | None = Field(
        None, title="CA file", description="PEM CA bundle that signed the broker's certificate; system CAs if unset."
    )
    cert_file: ConfigPath | None = Field(
        None, title="Client certificate", description="PEM client certificate for mutual TLS."
    )
    key_file: ConfigPath | None = Field(
        None, title="Client key", description="PEM private key of the client certificate."
    )
    insecure: bool = Field(
        False, title="Skip hostname check", description="Do not verify the broker's hostname (testing only)."
    )

    @model_validator(mode="after")
    def _cert_needs_key(self) -> TlsConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("tls.cert_file and tls.key_file must be given together")
        if self.ca_file or self.cert_file or self.insecure:
            self.enabled = True
        return self


class DiscoveryConfig(ConfigModel):
    """Home Assistant MQTT discovery."""

    enabled: bool = Field(True, title="HA discovery", description="Publish Home Assistant MQTT discovery configs.")
    prefix: str = Field(
        "homeassistant",
        title="Discovery prefix",
        description="Home Assistant's discovery prefix: topic levels without wildcards (+, #) or empty levels.",
    )

    @field_validator("prefix")
    @classmethod
    def _prefix_is_a_topic(cls, value: str) -> str:
        """A prefix the node publishes under must be a valid topic name: ``ha/#`` makes every
        discovery publish fail, and with it the connect sequence, so the node would never
        say ``online``; refuse it at start instead."""
        return check_topic_prefix(value)


class MqttConfig(ConfigModel):
    """The broker connection; a ``url`` is split into host, port, user and TLS when loaded."""

    url: str | None = Field(
        None,
        title="Broker URL",
        description="mqtt://[user@]host[:port] or mqtts://...; alternative to host/port/tls.enabled.",
    )
    host: str = Field("localhost", title="Broker host", description="Broker host name or address.")
    port: int | None = Field(
        None, ge=1, le=65535, title="Broker port", description="Broker port; 1883, or 8883 with TLS, if unset."
    )
    prefix: SafeName = Field(
        "edge-asd", title="Topic prefix", description="First topic level; unique per installation."
    )
    client_id: str | None = Field(
        None,
        title="Client id",
        description="MQTT client id (must be unique on the broker); if unset, edge-asd-<node_id>-<suffix> with a "
        "random suffix kept in the state directory, so restarts keep it and cloned images differ.",
    )
    username: str | None = Field(None, title="User name", description="MQTT user name.")
    password: SecretStr | None = Field(
        None,
        title="Password",
        description="Inline password (discouraged: prefer password_file or the systemd credential).",
    )
    password_file: ConfigPath | None = Field(
        None, title="Password file", description="File whose first line is the MQTT password."
    )
    password_credential: str = Field(
        "mqtt_password",
        title="Credential name",
        description="Name of the password file in $CREDENTIALS_DIRECTORY (systemd LoadCredential=).",
    )
    protocol: Literal["auto", "v5", "v311"] = Field(
        "auto", title="Protocol", description="auto: MQTT v5, falling back to 3.1.1 if the broker refuses v5."
    )
    keepalive: int = Field(60, ge=5, le=3600, title="Keepalive (s)", description="MQTT keepalive interval.")
    stats_interval_s: float = Field(
        60.0, gt=0, title="Stats interval (s)", description="How often <prefix>/<node>/stats is published."
    )
    max_inflight: int = Field(
        20, ge=1, le=1000, title="Events in flight", description="Outbox events awaiting PUBACK at once."
    )
    outbox_max_rows: int = Field(
        100_000,
        ge=100,
        title="Outbox bound",
        description="Event rows kept while the broker is unreachable; the oldest 'update' rows go first.",
    )
    tls: TlsConfig = Field(default_factory=TlsConfig, title="TLS", description="TLS settings.")
    discovery: DiscoveryConfig = Field(
        default_factory=DiscoveryConfig, title="HA discovery", description="Home Assistant discovery."
    )

    @model_validator(mode="before")
    @classmethod
    def _expand_url(cls, data: Any) -> Any:
        """Split a URL into host/port/username/password/tls so the rest of the code sees one form."""
        if not isinstance(data, Mapping) or not data.get("url"):
            return data
        data = dict(data)
        url = str(data["url"])
        parts = urlsplit(url if "://" in url else f"mqtt://{url}")
        if parts.scheme not in ("mqtt", "mqtts"):
            raise ValueError(f"url {url!r}: scheme must be mqtt:// or mqtts://")
        if not parts.hostname:
            raise ValueError(f"url {url!r} has no host")
        for key in ("host", "port"):
            if data.get(key) is not None:
                raise ValueError(f"give either url or {key}, not both")
        try:
            port = parts.port
        except ValueError as err:
            raise ValueError(f"url {url!r}: bad port ({err})") from None
        data["host"] = parts.hostname
        data["port"] = port
        if parts.username:
            data["username"] = unquote(parts.username)
        if parts.password:
            data["password"] = unquote(parts.password)
            # A warning, not a refusal: an upgrade must not turn a working node into a restart
            # loop. The password is never part of the message.
            logger.warning(
                "SECURITY: the MQTT broker URL carries a password: on the command line (--broker) it shows in `ps` "
                "and the shell history, in config.yaml it ends up in backups and bug reports. Keep only the user in "
                "the URL (%s://%s@%s) and put the password in a file: the systemd credential /etc/edge-asd/mqtt_password "
                "(root 0600, `install-jetson.sh --mqtt-password-file`), or `mqtt.password_file` (chmod 600)",
                parts.scheme, unquote(parts.username or "USER"), parts.hostname,
            )  # fmt: skip
        if parts.scheme == "mqtts":
            tls = dict(data.get("tls") or {})
            tls["enabled"] = True
            data["tls"] = tls
        user = f"{unquote(parts.username)}@" if parts.username else ""
        data["url"] = f"{parts.scheme}://{user}{parts.hostname}" + (f":{port}" if port else "")
        return data

    @property
    def effective_port(self) -> int:
        return self.port or (8883 if self.tls.enabled else 1883)


# --- sources --------------------------------------------------------------------------------


class _SourceBase(ConfigModel):
    """What every source has: the name that streams refer to."""

    name: SafeName = Field(..., title="Name", description="Source name that streams refer to.")


class DeviceSourceConfig(_SourceBase):
    """A sound card (``edge_asd.audio.sources.SoundDeviceSource``)."""

    type: Literal["device"] = Field("device", title="Type", description="A sound card (PortAudio).")
    device: int | str | None = Field(
        None,
        title="Device",
        description="Device index, a substring of its name, or a stable id; the default input if unset.",
    )
    samplerate: int | None = Field(
        None,
        ge=MIN_AUDIO_RATE,
        le=MAX_AUDIO_RATE,
        title="Sample rate",
        description="Capture rate in Hz; the device's native rate if unset (48000 while the device is missing).",
    )
    channels: int | None = Field(
        None, ge=1, le=64, title="Channels", description="Channels to open; enough for the streams if unset."
    )


class FileSourceConfig(_SourceBase):
    """A sound file played as a stream (``edge_asd.audio.sources.FileSource``)."""

    type: Literal["file"] = Field("file", title="Type", description="A WAV/FLAC file played as a stream.")
    path: ConfigPath = Field(..., title="Path", description="Audio file to play.")
    realtime: bool = Field(True, title="Real time", description="Pace the file at its real sample rate.")
    loop: bool = Field(False, title="Loop", description="Start again at the end of the file.")


class AnomalyInterval(ConfigModel):
    """When a synthetic machine sounds wrong (demo, tests)."""

    start_s: float = Field(..., ge=0, title="Start (s)", description="Seconds after start of the anomaly.")
    duration_s: float = Field(..., gt=0, title="Duration (s)", description="How long the anomaly lasts.")
    kind: str = Field(
        "rattle", title="Kind", description="Anomaly kind (edge_asd.core.synth.ANOMALY_KINDS: rattle, bearing, ...)."
    )


class SynthSourceConfig(_SourceBase):
    """A synthetic machine sound (``edge_asd.audio.sources.SyntheticSource``)."""

    type: Literal["synth"] = Field("synth", title="Type", description="A synthetic machine sound (demo, tests).")
    machine_type: str = Field("fan", title="Machine type", description="Synthetic machine type.")
    machine_id: str = Field("id_00", title="Machine id", description="Synthetic machine id.")
    seed: int = Field(0, title="Seed", description="Random seed: the same seed gives the same sound.")
    channels: int = Field(1, ge=1, le=64, title="Channels", description="Channels generated.")
    anomalies: list[AnomalyInterval] = Field(
        default_factory=list, title="Anomaly schedule", description="Intervals in which the machine sounds wrong."
    )


SourceConfig = Annotated[DeviceSourceConfig | FileSourceConfig | SynthSourceConfig, Field(discriminator="type")]


# --- streams --------------------------------------------------------------------------------


class DecisionConfig(ConfigModel):
    """When window scores become an anomaly event (``edge_asd.decisions.DecisionEngine``).

    The defaults suit a 10 s window and a 1 s hop: three windows over the threshold open an
    event, three quiet ones end it, and 30 s pass before the next one may open.
    """

    warmup_windows: int = Field(3, ge=0, title="Warm-up", description="Windows ignored after (re)start.")
    patience: int = Field(3, ge=1, title="Patience", description="Consecutive windows over threshold to alert.")
    off_ratio: float = Field(
        0.9, gt=0, le=1, title="Off ratio", description="Hysteresis: below threshold*off_ratio counts as quiet."
    )
    max_quiet: int = Field(3, ge=1, title="Max quiet", description="Consecutive quiet windows that end an event.")
    cooldown_s: float = Field(30.0, ge=0, title="Cooldown (s)", description="Minimum gap between two events.")
    update_every: int = Field(
        10,
        ge=1,
        title="Update every",
        description="While an event is open, publish an update every this many windows (and when its peak rises).",
    )


class LevelsConfig(ConfigModel):
    """When a microphone is faulty rather than the machine anomalous (``edge_asd.levels``)."""

    silent_dbfs: float = Field(
        -70.0, le=0, title="Silence level", description="Windows quieter than this (dBFS) mean a dead mic."
    )
    clip_dbfs: float = Field(
        -0.1, le=0, title="Clipping level", description="Peaks at or above this (dBFS) count as clipping."
    )
    clip_fraction: float = Field(
        0.001,
        ge=0,
        lt=1,
        title="Clipped fraction",
        description="A window with more than this fraction of clipped samples is clipping.",
    )
    debounce_windows: int = Field(
        3,
        ge=1,
        title="Debounce",
        description="Consecutive windows that must agree before the published stream state changes.",
    )


class StreamConfig(ConfigModel):
    """One monitored machine: a channel of a source, the bundle classes it may be, its tuning."""

    name: SafeName = Field(..., title="Name", description="Stream name (an MQTT topic level).")
    source: str = Field(..., title="Source", description="Name of the source this stream reads.")
    channel: int = Field(0, ge=0, title="Channel", description="Channel of the source (0-based).")
    classes: list[str] = Field(
        default_factory=list,
        title="Classes",
        description="Bundle class names this machine may be (min score wins); none for a machine type the "
        "bundle never saw, which then needs an enrolment (edge-asd enrol).",
    )
    threshold: float | None = Field(
        None,
        gt=0,
        title="Threshold",
        description="Override of the active score's threshold: the enrolment's for an enrolled stream, "
        "else the bundle's calibrated one (finite and positive).",
    )
    enabled: bool = Field(
        True,
        title="Enabled",
        description="Initial state of <stream>/enabled; an operator's enabled/set command, kept in the state "
        "directory, wins over it.",
    )
    decision: DecisionConfig = Field(
        default_factory=DecisionConfig, title="Decision", description="Alert state machine parameters."
    )
    levels: LevelsConfig = Field(
        default_factory=LevelsConfig, title="Levels", description="Mic fault (silence/clipping) thresholds."
    )


class EvidenceConfig(ConfigModel):
    """How much evidence (WAV + PNG of triggering windows) is kept."""

    enabled: bool = Field(True, title="Evidence", description="Save WAV+PNG of windows that trigger an event.")
    max_files: int = Field(200, ge=1, title="Max files", description="Oldest evidence is deleted beyond this.")
    max_mb: float = Field(500.0, gt=0, title="Max MB", description="Oldest evidence is deleted beyond this size.")


class SiteConfig(ConfigModel):
    """Site learning: score enrolled streams against their own normal (docs/site-learning.md)."""

    enabled: bool = Field(
        True, title="Site learning", description="Score enrolled streams with the fused site score."
    )
    false_alarms_per_day: float = Field(
        DEFAULT_FALSE_ALARMS_PER_DAY, gt=0, title="False alarms per day",
        description="Target false windows per day a re-enrolment sets its threshold for.",
    )


class ConsoleConfig(ConfigModel):
    """The operator's web console (`edge-asd console`); its command-line flags win."""

    enabled: bool = Field(
        True, title="Console",
        description="false: `edge-asd console --config` exits at once (the edge-asd-console unit stays idle); "
        "the unit itself is off until enabled with systemctl.",
    )
    host: str = Field(
        "127.0.0.1", title="Host", description="Bind address; anything but loopback needs a credentials file."
    )
    port: int = Field(8090, ge=0, le=65535, title="Port", description="TCP port of the console.")
    credentials_file: ConfigPath | None = Field(
        None, title="Credentials file", description="Users and password hashes (edge-asd console-user)."
    )
    cert_file: ConfigPath | None = Field(None, title="Certificate", description="PEM certificate: serve HTTPS.")
    key_file: ConfigPath | None = Field(None, title="Key", description="PEM private key of the certificate.")
    public_url: str | None = Field(
        None, title="Public URL", description="URL other nodes' consoles link to for this node's evidence."
    )
    db: ConfigPath | None = Field(
        None, title="Database", description="Event history database; <state_dir>/console/console.sqlite."
    )
    max_events: int = Field(10_000, ge=100, title="Max events", description="Events kept in the history.")
    trust_localhost: bool = Field(
        True, title="Trust localhost", description="Loopback clients need no password."
    )


class LoggingConfig(ConfigModel):
    """The daemon's logging."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", title="Level", description="Log level of the daemon."
    )


class MetricsConfig(ConfigModel):
    """The Prometheus endpoint of the daemon (edge_asd.daemon.metrics): off unless enabled, and
    on loopback by default because it has no authentication (scrape it through a local agent
    or an SSH tunnel, or bind it to a plant-network address on purpose)."""

    enabled: bool = Field(False, title="Metrics", description="Serve Prometheus metrics at http://HOST:PORT/metrics.")
    host: str = Field(
        "127.0.0.1", title="Host", description="Bind address; anything but loopback serves the metrics to the network."
    )
    port: int = Field(9464, ge=0, le=65535, title="Port", description="TCP port (0: any free port, logged at start).")


class AppConfig(ConfigModel):
    """A whole config file: the bundle, the runtime, the broker, the audio inputs and the streams."""

    bundle: ConfigPath | None = Field(None, title="Bundle", description="Model bundle folder (edge-asd export).")
    backend: RuntimeType | None = Field(
        None,
        exclude=True,
        title="Backend",
        description="Shorthand for `runtime: {type: ...}` (what --backend sets); after loading, the runtime's type.",
    )
    runtime: RuntimeConfig = Field(
        default_factory=AutoRuntimeConfig,
        title="Runtime",
        description="Inference backend (type: auto, tensorrt, onnxruntime, torch) and its settings.",
    )
    hop_s: float = Field(1.0, gt=0, le=10, title="Hop (s)", description="Seconds between two scored windows.")
    state_dir: ConfigPath = Field(
        default_factory=default_state_dir,
        title="State directory",
        description="Outbox, evidence and engine cache; $STATE_DIRECTORY or /var/lib/edge-asd.",
    )
    node_id: SafeName = Field(
        default_factory=default_node_id, title="Node id", description="This device's topic level; the hostname."
    )
    mqtt: MqttConfig | None = Field(None, title="MQTT", description="Broker connection; no MQTT if unset.")
    sources: list[SourceConfig] = Field(default_factory=list, title="Sources", description="Audio inputs.")
    streams: list[StreamConfig] = Field(
        default_factory=list, title="Streams", description="Monitored machines: a source channel each."
    )
    evidence: EvidenceConfig = Field(
        default_factory=EvidenceConfig, title="Evidence", description="Evidence retention."
    )
    logging: LoggingConfig = Field(default_factory=LoggingConfig, title="Logging", description="Logging.")
    site: SiteConfig = Field(default_factory=SiteConfig, title="Site learning", description="Site learning.")
    console: ConsoleConfig = Field(
        default_factory=ConsoleConfig, title="Console", description="The operator's web console."
    )
    metrics: MetricsConfig = Field(
        default_factory=MetricsConfig, title="Metrics", description="Prometheus endpoint (opt-in)."
    )

    @model_validator(mode="before")
    @classmethod
    def _backend_is_runtime_type(cls, data: Any) -> Any:
        """``backend: X`` is ``runtime: {type: X}``; both given must agree (one source of truth).

        A ``runtime:`` section without ``type`` is ``auto`` (or the ``backend``'s type).
        """
        if not isinstance(data, Mapping):
            return data
        backend = data.get("backend")
        runtime = data.get("runtime")
        if backend not in RUNTIME_TYPES:
            backend = None  # an invalid backend is reported by the field itself, with the allowed values
        if backend is None and not (isinstance(runtime, Mapping) and "type" not in runtime):
            return data
        data = dict(data)
        if runtime is None:
            data["runtime"] = {"type": backend}
        elif isinstance(runtime, Mapping):
            kind = runtime.get("type", backend or "auto")
            if backend is not None and kind != backend:
                raise _cross("backend", f"backend {backend!r} disagrees with runtime.type {kind!r}; keep only runtime.type")
            data["runtime"] = {**runtime, "type": kind}
        return data

    @model_validator(mode="after")
    def _cross_check(self) -> AppConfig:
        """Checks that span several fields; messages start with the key path they are about."""
        self.backend = self.runtime.type
        if not self.streams:
            raise _cross("streams", "no stream configured; add a `streams:` entry or pass --device/--source")
        _unique([s.name for s in self.sources], "sources")
        _unique([s.name for s in self.streams], "streams")
        by_name = {s.name: s for s in self.sources}
        for i, stream in enumerate(self.streams):
            source = by_name.get(stream.source)
            if source is None:
                known = ", ".join(by_name) or "none"
                raise _cross(f"streams[{i}].source", f"unknown source {stream.source!r} (sources: {known})")
            channels = getattr(source, "channels", None)
            if channels is not None and stream.channel >= channels:
                raise _cross(
                    f"streams[{i}].channel",
                    f"channel {stream.channel} does not exist; source "
                    f"{source.name!r} has {channels} channel(s) (0-based)"
                )
        return self


def _cross(path: str, detail: str) -> PydanticCustomError:
    """An error of a cross-field check; ``path`` is the key path it is about."""
    return PydanticCustomError("cross_field", "{detail}", {"detail": detail, "path": path})


def _unique(names: list[str], where: str) -> None:
    seen: set[str] = set()
    for i, name in enumerate(names):
        if name in seen:
            raise _cross(f"{where}[{i}].name", f"duplicate name {name!r}")
        seen.add(name)


__all__ = [
    "AnomalyInterval",
    "AppConfig",
    "DecisionConfig",
    "DeviceSourceConfig",
    "DiscoveryConfig",
    "EvidenceConfig",
    "FileSourceConfig",
    "LevelsConfig",
    "LoggingConfig",
    "MetricsConfig",
    "SiteConfig",
    "ConsoleConfig",
    "MqttConfig",
    "SourceConfig",
    "StreamConfig",
    "SynthSourceConfig",
    "TlsConfig",
]
