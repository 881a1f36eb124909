"""The daemon's configuration: pydantic models loaded from YAML, merged with CLI flags.

Why pydantic with ``extra="forbid"`` everywhere: a typo in a factory config (``patiense``)
must fail loudly at start, naming the key path and the allowed keys, instead of silently
running with a default. Every field carries a title and description so ``config check``
and the docs can explain it. Relative paths in a file are resolved against the file's
folder, so a config works whatever the daemon's working directory is.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, Union
from urllib.parse import unquote, urlsplit

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    model_validator,
)
from pydantic_core import PydanticCustomError

from edge_asd.core.errors import UserError

logger = logging.getLogger(__name__)

MASK = "***"
SAFE_NAME = re.compile(r"^[A-Za-z0-9_-]+$")
DEFAULT_STATE_DIR = Path("/var/lib/edge-asd")


class ConfigError(UserError):
    """A config file or flag the user must fix; the message names the key path."""


def sanitize_id(text: str) -> str:
    """Map any text onto ``[a-zA-Z0-9_-]``: MQTT topic levels and HA ids must stay within it."""
    cleaned = re.sub(r"[^A-Za-z0-9_-]+", "_", text).strip("_")
    return cleaned or "node"


def default_node_id() -> str:
    """The sanitised, lower-cased short hostname: stable across reboots, unique on a LAN."""
    return sanitize_id(socket.gethostname().split(".")[0].lower())


def default_state_dir() -> Path:
    """systemd's ``StateDirectory=`` sets ``$STATE_DIRECTORY`` (colon-separated if several)."""
    env = os.environ.get("STATE_DIRECTORY", "")
    first = env.split(":")[0].strip()
    return Path(first) if first else DEFAULT_STATE_DIR


def _resolve_path(value: Path, info: ValidationInfo) -> Path:
    """Expand ``~`` and anchor relative paths at the config file's folder (context ``base_dir``)."""
    value = value.expanduser()
    base = (info.context or {}).get("base_dir") if info.context else None
    if not value.is_absolute() and base is not None:
        value = Path(base) / value
    return value


ConfigPath = Annotated[Path, AfterValidator(_resolve_path)]


def _safe_name(value: str) -> str:
    if not SAFE_NAME.match(value):
        raise ValueError(f"{value!r} may only contain letters, digits, '_' and '-' (it becomes an MQTT topic level)")
    return value


SafeName = Annotated[str, AfterValidator(_safe_name)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=False)


# --- MQTT -----------------------------------------------------------------------------------


class TlsConfig(_Model):
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


class DiscoveryConfig(_Model):
    enabled: bool = Field(True, title="HA discovery", description="Publish Home Assistant MQTT discovery configs.")
    prefix: str = Field(
        "homeassistant", title="Discovery prefix", description="Home Assistant's discovery prefix."
    )


class MqttConfig(_Model):
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
        None, title="Client id", description="MQTT client id; edge-asd-<node_id> if unset (must be unique)."
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


class _SourceBase(_Model):
    name: SafeName = Field(..., title="Name", description="Source name that streams refer to.")


class DeviceSource(_SourceBase):
    type: Literal["device"] = Field("device", title="Type", description="A sound card (PortAudio).")
    device: int | str | None = Field(
        None,
        title="Device",
        description="Device index, a substring of its name, or a stable id; the default input if unset.",
    )
    samplerate: int | None = Field(
        None, gt=0, title="Sample rate", description="Capture rate in Hz; the device's native rate if unset."
    )
    channels: int | None = Field(
        None, ge=1, le=64, title="Channels", description="Channels to open; enough for the streams if unset."
    )


class FileSource(_SourceBase):
    type: Literal["file"] = Field("file", title="Type", description="A WAV/FLAC file played as a stream.")
    path: ConfigPath = Field(..., title="Path", description="Audio file to play.")
    realtime: bool = Field(True, title="Real time", description="Pace the file at its real sample rate.")
    loop: bool = Field(False, title="Loop", description="Start again at the end of the file.")


class AnomalyInterval(_Model):
    start_s: float = Field(..., ge=0, title="Start (s)", description="Seconds after start of the anomaly.")
    duration_s: float = Field(..., gt=0, title="Duration (s)", description="How long the anomaly lasts.")
    kind: str = Field(
        "rattle", title="Kind", description="Anomaly kind (edge_asd.core.synth.ANOMALY_KINDS: rattle, bearing, ...)."
    )


class SynthSource(_SourceBase):
    type: Literal["synth"] = Field("synth", title="Type", description="A synthetic machine sound (demo, tests).")
    machine_type: str = Field("fan", title="Machine type", description="Synthetic machine type.")
    machine_id: str = Field("id_00", title="Machine id", description="Synthetic machine id.")
    seed: int = Field(0, title="Seed", description="Random seed: the same seed gives the same sound.")
    channels: int = Field(1, ge=1, le=64, title="Channels", description="Channels generated.")
    anomalies: list[AnomalyInterval] = Field(
        default_factory=list, title="Anomaly schedule", description="Intervals in which the machine sounds wrong."
    )


SourceConfig = Annotated[DeviceSource | FileSource | SynthSource, Field(discriminator="type")]


# --- streams --------------------------------------------------------------------------------


class DecisionConfig(_Model):
    warmup_windows: int = Field(3, ge=0, title="Warm-up", description="Windows ignored after (re)start.")
    patience: int = Field(3, ge=1, title="Patience", description="Consecutive windows over threshold to alert.")
    off_ratio: float = Field(
        0.9, gt=0, le=1, title="Off ratio", description="Hysteresis: below threshold*off_ratio counts as quiet."
    )
    max_quiet: int = Field(3, ge=1, title="Max quiet", description="Consecutive quiet windows that end an event.")
    cooldown_s: float = Field(30.0, ge=0, title="Cooldown (s)", description="Minimum gap between two events.")


class LevelsConfig(_Model):
    silent_dbfs: float = Field(
        -70.0, le=0, title="Silence level", description="Windows quieter than this (dBFS) mean a dead mic."
    )
    clip_dbfs: float = Field(
        -0.1, le=0, title="Clipping level", description="Peaks at or above this (dBFS) count as clipping."
    )


class StreamConfig(_Model):
    name: SafeName = Field(..., title="Name", description="Stream name (an MQTT topic level).")
    source: str = Field(..., title="Source", description="Name of the source this stream reads.")
    channel: int = Field(0, ge=0, title="Channel", description="Channel of the source (0-based).")
    classes: list[str] = Field(
        ..., min_length=1, title="Classes", description="Bundle class names this machine may be (min score wins)."
    )
    threshold: float | None = Field(
        None, title="Threshold", description="Override of the bundle's calibrated threshold."
    )
    enabled: bool = Field(True, title="Enabled", description="Initial state of <stream>/enabled.")
    decision: DecisionConfig = Field(
        default_factory=DecisionConfig, title="Decision", description="Alert state machine parameters."
    )
    levels: LevelsConfig = Field(
        default_factory=LevelsConfig, title="Levels", description="Mic fault (silence/clipping) thresholds."
    )


class EvidenceConfig(_Model):
    enabled: bool = Field(True, title="Evidence", description="Save WAV+PNG of windows that trigger an event.")
    max_files: int = Field(200, ge=1, title="Max files", description="Oldest evidence is deleted beyond this.")
    max_mb: float = Field(500.0, gt=0, title="Max MB", description="Oldest evidence is deleted beyond this size.")


class LoggingConfig(_Model):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", title="Level", description="Log level of the daemon."
    )


class AppConfig(_Model):
    bundle: ConfigPath | None = Field(None, title="Bundle", description="Model bundle folder (edge-asd export).")
    backend: Literal["auto", "tensorrt", "onnxruntime"] = Field(
        "auto", title="Backend", description="Inference backend; auto prefers TensorRT."
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

    @model_validator(mode="after")
    def _cross_check(self) -> AppConfig:
        """Checks that span several fields; messages start with the key path they are about."""
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


# --- loading and error messages -------------------------------------------------------------


def _deep_merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """Overlay ``over`` on ``base``; nested mappings merge, everything else replaces."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _deep_merge(dict(out[key]), value)
        else:
            out[key] = value
    return out


def _expand_dotted(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``{"mqtt.url": x}`` becomes ``{"mqtt": {"url": x}}`` so flags can name nested keys."""
    out: dict[str, Any] = {}
    for key, value in overrides.items():
        if isinstance(value, Mapping):
            value = _expand_dotted(value)
        parts = str(key).split(".")
        node = {parts[-1]: value}
        for part in reversed(parts[:-1]):
            node = {part: node}
        out = _deep_merge(out, node)
    return out


def _unwrap(tp: Any) -> list[Any]:
    """Flatten Annotated/Optional/Union into the candidate types (lists are kept)."""
    origin = typing.get_origin(tp)
    if origin is Annotated:
        return _unwrap(typing.get_args(tp)[0])
    if origin is Union or origin is types.UnionType:
        return [t for arg in typing.get_args(tp) if arg is not type(None) for t in _unwrap(arg)]
    return [tp]


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def _walk_loc(loc: tuple[Any, ...]) -> tuple[list[str | int], type[BaseModel] | None]:
    """Turn a pydantic error location into key-path parts and the model found at its end.

    Discriminated unions add the tag (``device``) to the location; it is not a key the user
    wrote, so it is skipped.
    """
    parts: list[str | int] = []
    types: list[Any] = [AppConfig]
    for item in loc:
        cands = [t for tp in types for t in _unwrap(tp)]
        if isinstance(item, int):
            parts.append(item)
            types = [typing.get_args(t)[0] for t in cands if typing.get_origin(t) is list and typing.get_args(t)]
            continue
        models = [t for t in cands if _is_model(t)]
        tagged = [m for m in models if "type" in m.model_fields and m.model_fields["type"].default == item]
        if len(models) > 1 and tagged:
            types = tagged
            continue
        field_model = next((m for m in models if item in m.model_fields), None)
        parts.append(item)
        types = [field_model.model_fields[item].annotation] if field_model else []
    models = [t for tp in types for t in _unwrap(tp) if _is_model(t)]
    return parts, (models[0] if len(models) == 1 else None)


def _format_path(parts: list[str | int]) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _yaml_line(root: yaml.Node | None, parts: list[str | int]) -> int | None:
    """1-based line of the YAML node at a key path (the key itself for the last part)."""
    node = root
    line = None
    for part in parts:
        if isinstance(node, yaml.MappingNode) and isinstance(part, str):
            match = next(((k, v) for k, v in node.value if getattr(k, "value", None) == part), None)
            if match is None:
                return line
            line = match[0].start_mark.line + 1
            node = match[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            return line
    return line


def _describe_error(err: Mapping[str, Any], root: yaml.Node | None, replaced: frozenset[str]) -> str:
    loc = tuple(err.get("loc", ()))
    kind = err.get("type", "")
    msg = str(err.get("msg", "invalid value"))
    if kind == "extra_forbidden":
        parts, _ = _walk_loc(loc)
        _, parent = _walk_loc(loc[:-1])
        allowed = ", ".join(parent.model_fields) if parent else "?"
        text = f"unknown key {loc[-1]!r}; allowed keys: {allowed}"
    else:
        parts, _ = _walk_loc(loc)
        text = msg.removeprefix("Value error, ")
        expected = (err.get("ctx") or {}).get("expected") or (err.get("ctx") or {}).get("expected_tags")
        if kind in ("literal_error", "union_tag_invalid", "enum") and expected:
            allowed = ", ".join(re.findall(r"'([^']*)'", str(expected))) or str(expected)
            got = err.get("input") if kind != "union_tag_invalid" else (err.get("ctx") or {}).get("tag")
            text = f"invalid value {got!r}; allowed values: {allowed}"
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        parts = [*parts, str((err.get("ctx") or {}).get("discriminator", "type")).strip("'")]
    if kind == "cross_field":
        parts = _parse_path(str((err.get("ctx") or {}).get("path", "")))
    # a line number only where the value really comes from the file, not from a flag
    line = _yaml_line(root, parts) if parts and parts[0] not in replaced else None
    return f"{_format_path(parts)}{f' (line {line})' if line else ''}: {text}"


def _parse_path(text: str) -> list[str | int]:
    parts: list[str | int] = []
    for name, index in re.findall(r"([A-Za-z0-9_]+)|\[(\d+)\]", text):
        parts.append(int(index) if index else name)
    return parts


def validate_config(
    data: Mapping[str, Any],
    *,
    where: str = "config",
    base_dir: Path | None = None,
    root: yaml.Node | None = None,
    replaced: frozenset[str] = frozenset(),
) -> AppConfig:
    """Validate a plain mapping; ``ConfigError`` lists every problem with its key path.

    ``root`` (the composed YAML) adds line numbers, except under the top-level keys in
    ``replaced`` whose values came from overrides.
    """
    try:
        return AppConfig.model_validate(dict(data), context={"base_dir": base_dir})
    except ValidationError as exc:
        problems = [_describe_error(e, root, replaced) for e in exc.errors()]
        lines = "\n".join(f"  - {p}" for p in problems)
        raise ConfigError(f"invalid {where} ({len(problems)} problem(s)):\n{lines}") from None


def _read_yaml(path: Path) -> tuple[dict[str, Any], yaml.Node | None]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file {path} not found") from None
    except OSError as err:
        raise ConfigError(f"cannot read config file {path}: {err.strerror}") from None
    try:
        data = yaml.safe_load(text)
        root = yaml.compose(text)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{path}:{where}: YAML syntax error: {err.problem or err}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: YAML error: {err}") from None
    if data is None:
        return {}, None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys (bundle:, mqtt:, streams:, ...)")
    return data, root


def _read_config_file(
    path: Path | str | None, no_file: str, suffix: str
) -> tuple[dict[str, Any], yaml.Node | None, Path | None, str]:
    """``(data, yaml root, folder for relative paths, description)`` of an optional config file."""
    if path is None:
        return {}, None, None, no_file
    path = Path(path).expanduser()
    data, root = _read_yaml(path)
    return data, root, path.resolve().parent, f"config {path}{suffix}"


def load_config(path: Path | str | None, overrides: Mapping[str, Any] | None = None) -> AppConfig:
    """Load a YAML config (or nothing) and overlay ``overrides`` (nested or dotted keys).

    Override values are taken as given (paths in them should already be absolute); paths in
    the file are relative to the file's folder.
    """
    data, root, base_dir, where = _read_config_file(path, "config", "")
    replaced: frozenset[str] = frozenset()
    if overrides:
        expanded = _expand_dotted(overrides)
        replaced = frozenset(expanded)
        data = _deep_merge(data, expanded)
    return validate_config(data, where=where, base_dir=base_dir, root=root, replaced=replaced)


def effective_config_dict(cfg: AppConfig) -> dict[str, Any]:
    """The validated config as plain data with defaults filled in and the password masked."""
    data = cfg.model_dump(mode="json")
    mqtt = data.get("mqtt")
    if mqtt and mqtt.get("password") is not None:
        mqtt["password"] = MASK
    return data


def effective_config_yaml(cfg: AppConfig) -> str:
    return yaml.safe_dump(effective_config_dict(cfg), sort_keys=False, default_flow_style=False)


def _abs(path: str | Path) -> str:
    return str(Path(path).expanduser().absolute())


def parse_source_flag(spec: str) -> dict[str, Any]:
    """``file:PATH`` / ``synth[:TYPE[/ID]]`` / ``device:DEV`` into a source mapping (without name)."""
    kind, _, rest = spec.partition(":")
    if kind == "file":
        if not rest:
            raise ConfigError("--source file:PATH needs a path, e.g. --source file:recording.wav")
        return {"type": "file", "path": _abs(rest)}
    if kind == "synth":
        out: dict[str, Any] = {"type": "synth"}
        if rest:
            machine_type, _, machine_id = rest.partition("/")
            out["machine_type"] = machine_type
            if machine_id:
                out["machine_id"] = machine_id
        return out
    if kind == "device":
        return {"type": "device", "device": _device_value(rest) if rest else None}
    raise ConfigError(f"--source {spec!r}: use file:PATH, synth[:TYPE[/ID]] or device:DEV (or --device DEV)")


def _device_value(dev: str) -> int | str:
    return int(dev) if dev.strip().isdigit() else dev


def config_from_cli(
    config_path: Path | str | None = None,
    *,
    device: str | None = None,
    source: str | None = None,
    bundle: Path | str | None = None,
    classes: list[str] | None = None,
    broker: str | None = None,
    hop: float | None = None,
    backend: str | None = None,
    stream_name: str | None = None,
    state_dir: Path | str | None = None,
    node_id: str | None = None,
    prefix: str | None = None,
) -> AppConfig:
    """One-stream config from flags, or flags merged over a file (flags win).

    ``--device``/``--source`` replace the file's sources with one source; the stream keeps the
    file's settings when the file has exactly one stream. ``--class`` sets that stream's classes.
    """
    if device is not None and source is not None:
        raise ConfigError("give either --device or --source, not both")
    # file paths are anchored to the file's folder before CLI paths (already absolute) merge in
    data, root, base_dir, where = _read_config_file(config_path, "command line flags", " with command line flags")
    original = dict(data)
    streams = list(data.get("streams") or [])
    if device is not None or source is not None:
        src = {"type": "device", "device": _device_value(device)} if device is not None else parse_source_flag(source)
        default_name = {"device": "mic", "synth": "synth"}.get(src["type"]) or sanitize_id(
            Path(str(src.get("path", "file"))).stem
        )
        src["name"] = "cli_source"
        stream = dict(streams[0]) if len(streams) == 1 and isinstance(streams[0], Mapping) else {}
        stream.pop("channel", None)
        stream["source"] = src["name"]
        stream["name"] = stream_name or stream.get("name") or default_name
        data["sources"] = [src]
        streams = [stream]
    elif stream_name is not None:
        if len(streams) != 1:
            raise ConfigError("--stream renames the one stream; the config has several (or none)")
        streams[0] = {**streams[0], "name": stream_name}
    if classes:
        if len(streams) != 1:
            raise ConfigError(
                "--class applies to a single stream; set `classes` per stream in the config file instead"
            )
        streams[0] = {**streams[0], "classes": list(classes)}
    elif len(streams) == 1 and not streams[0].get("classes") and (device is not None or source is not None):
        raise ConfigError("no class for the stream: pass --class NAME (a class of the bundle, e.g. fan/id_00)")
    if streams:
        data["streams"] = streams
    if bundle is not None:
        data["bundle"] = _abs(bundle)
    if hop is not None:
        data["hop_s"] = hop
    if backend is not None:
        data["backend"] = backend
    if state_dir is not None:
        data["state_dir"] = _abs(state_dir)
    if node_id is not None:
        data["node_id"] = node_id
    if broker is not None or prefix is not None:
        mqtt = dict(data.get("mqtt") or {})
        if broker is not None:
            for key in ("host", "port", "url", "username", "password"):
                mqtt.pop(key, None)
            mqtt["url"] = broker
        if prefix is not None:
            mqtt["prefix"] = prefix
        data["mqtt"] = mqtt
    replaced = frozenset(k for k in data if data.get(k) != original.get(k))
    return validate_config(data, where=where, base_dir=base_dir, root=root, replaced=replaced)
