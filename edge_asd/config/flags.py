"""Command line flags over a config file: ``listen``/``calibrate`` with ``--device``, ``--source``,
``--class``, ``--broker``, ``--backend`` ... (flags win over the file).

A one-machine setup needs no file at all (``--device 2 --class fan/id_00 --bundle B``); a
file plus a flag changes one thing for a test run without editing the file. The flags are
merged into the file's data before validation, so the result is checked exactly like a file
and errors still point at the file's lines for the keys the flags left alone.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from edge_asd.config.base import sanitize_id
from edge_asd.config.errors import ConfigError
from edge_asd.config.loading import read_config_file, validate_config
from edge_asd.config.schema import AppConfig

logger = logging.getLogger(__name__)


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
    state_dir: Path | str | None = None,
    node_id: str | None = None,
) -> AppConfig:
    """One-stream config from flags, or flags merged over a file (flags win).

    ``--device``/``--source`` replace the file's sources with one source; the stream keeps the
    file's settings when the file has exactly one stream. ``--class`` sets that stream's classes.
    """
    if device is not None and source is not None:
        raise ConfigError("give either --device or --source, not both")
    # file paths are anchored to the file's folder before CLI paths (already absolute) merge in
    data, root, base_dir, where = read_config_file(config_path, "command line flags", " with command line flags")
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
        stream["name"] = stream.get("name") or default_name
        data["sources"] = [src]
        streams = [stream]
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
        runtime = data.get("runtime")
        if isinstance(runtime, Mapping) and runtime.get("type", "auto") != backend:
            # the file's runtime settings belong to the backend the flag replaces
            logger.info("--backend %s replaces the config's runtime section (type %s)", backend, runtime.get("type", "auto"))
            data.pop("runtime")
        data["backend"] = backend
    if state_dir is not None:
        data["state_dir"] = _abs(state_dir)
    if node_id is not None:
        data["node_id"] = node_id
    if broker is not None:
        mqtt = dict(data.get("mqtt") or {})
        # the file's credentials belong to the file's broker
        for key in ("host", "port", "url", "username", "password"):
            mqtt.pop(key, None)
        mqtt["url"] = broker
        data["mqtt"] = mqtt
    replaced = frozenset(k for k in data if data.get(k) != original.get(k))
    return validate_config(data, where=where, base_dir=base_dir, root=root, replaced=replaced)


__all__ = ["config_from_cli", "parse_source_flag"]
