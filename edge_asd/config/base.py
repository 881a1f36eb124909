"""What every config model shares: the strict base model, path and name field types, id helpers.

Why ``extra="forbid"`` on the one base: a typo in a factory config (``patiense``) must fail
loudly at start, naming the key path and the allowed keys, instead of silently running with a
default. Paths are anchored at the config file's folder (passed as validation context
``base_dir``), so a config works whatever the daemon's working directory is.
"""

from __future__ import annotations

import logging
import os
import re
import socket
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationInfo

logger = logging.getLogger(__name__)

SAFE_NAME = re.compile(r"^[A-Za-z0-9_-]+$")
DEFAULT_STATE_DIR = Path("/var/lib/edge-asd")


class ConfigModel(BaseModel):
    """Base of every config model: unknown keys are errors, defaults are trusted as written."""

    model_config = ConfigDict(extra="forbid", validate_default=False, allow_inf_nan=False)


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
"""A path field: ``~`` expanded, relative paths taken from the config file's folder."""


def _safe_name(value: str) -> str:
    if not SAFE_NAME.match(value):
        raise ValueError(f"{value!r} may only contain letters, digits, '_' and '-' (it becomes an MQTT topic level)")
    return value


SafeName = Annotated[str, AfterValidator(_safe_name)]
"""A name that becomes an MQTT topic level or a Home Assistant id."""


__all__ = [
    "DEFAULT_STATE_DIR",
    "ConfigModel",
    "ConfigPath",
    "SafeName",
    "default_node_id",
    "default_state_dir",
    "sanitize_id",
]
