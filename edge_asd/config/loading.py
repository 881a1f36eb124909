"""Reading a config: YAML file -> validated ``AppConfig``, and back to YAML for ``config check``.

The YAML is parsed twice, as data and as a node tree: the tree gives every key its line,
so a validation error can say where in the file it is. Relative paths in a file are
resolved against the file's folder (validation context ``base_dir``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import TypeAdapter, ValidationError

from edge_asd.config.errors import ConfigError, config_error
from edge_asd.config.runtime import RuntimeConfig
from edge_asd.config.schema import AppConfig

logger = logging.getLogger(__name__)

MASK = "***"
_RUNTIME = TypeAdapter(RuntimeConfig)


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
    ``replaced`` whose values came from command line flags.
    """
    try:
        return AppConfig.model_validate(dict(data), context={"base_dir": base_dir})
    except ValidationError as exc:
        raise config_error(exc, AppConfig, where, root, replaced) from None


def validate_runtime_config(data: Mapping[str, Any], *, where: str = "runtime settings") -> RuntimeConfig:
    """A ``runtime:`` section on its own (``engines.runtime.open_runtime`` with keyword settings)."""
    try:
        return _RUNTIME.validate_python(dict(data))
    except ValidationError as exc:
        raise config_error(exc, RuntimeConfig, where) from None


def read_yaml(path: Path) -> tuple[dict[str, Any], yaml.Node | None]:
    """A config file's top-level mapping and its node tree (``{}``, None for an empty file)."""
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


def read_config_file(
    path: Path | str | None, no_file: str, suffix: str
) -> tuple[dict[str, Any], yaml.Node | None, Path | None, str]:
    """``(data, yaml root, folder for relative paths, description)`` of an optional config file."""
    if path is None:
        return {}, None, None, no_file
    path = Path(path).expanduser()
    data, root = read_yaml(path)
    return data, root, path.resolve().parent, f"config {path}{suffix}"


def load_config(path: Path | str) -> AppConfig:
    """Load and validate a YAML config file (``listen --config``, ``config check``, ``watch``)."""
    data, root, base_dir, where = read_config_file(path, "config", "")
    return validate_config(data, where=where, base_dir=base_dir, root=root)


def effective_config_dict(cfg: AppConfig) -> dict[str, Any]:
    """The validated config as plain data with defaults filled in and the password masked."""
    data = cfg.model_dump(mode="json")
    mqtt = data.get("mqtt")
    if mqtt and mqtt.get("password") is not None:
        mqtt["password"] = MASK
    return data


def effective_config_yaml(cfg: AppConfig) -> str:
    """``effective_config_dict`` as YAML, in the schema's key order (``config check``)."""
    return yaml.safe_dump(effective_config_dict(cfg), sort_keys=False, default_flow_style=False)


__all__ = [
    "MASK",
    "effective_config_dict",
    "effective_config_yaml",
    "load_config",
    "read_config_file",
    "read_yaml",
    "validate_config",
    "validate_runtime_config",
]
