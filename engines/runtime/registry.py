"""The runtimes, keyed by the ``type`` of their ``runtime:`` config (Frigate's detector registry).

Each backend module registers one ``RuntimeEntry``: its type key, its config model (from
``edge_asd.config.runtime``, where the defaults live), how to open it and an ``available()``
check that says why it cannot run here. Native backends are optional and fail soft: a module
imports its native library (TensorRT, onnxruntime, torch) only inside ``available()`` and
the constructor, so registering costs nothing and a missing library surfaces as a
``BackendUnavailableError`` that says what to install, only when that backend is asked for.

``auto`` is not a backend: it resolves to the first of ``AUTO_PREFERENCE`` that can run here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from edge_asd.config import (
    AutoRuntimeConfig,
    ConcreteRuntimeConfig,
    RuntimeConfig,
    validate_runtime_config,
)
from engines.bundle import Bundle, as_bundle
from engines.errors import BackendUnavailableError
from engines.runtime.base import Runtime

logger = logging.getLogger(__name__)

AUTO_PREFERENCE = ("tensorrt", "onnxruntime")
"""What ``auto`` tries, in order; the last one is taken when none can run (its error then
says what to install)."""

Opener = Callable[..., Runtime]


@dataclass(frozen=True)
class RuntimeEntry:
    """One backend: ``open(target, config, **extras)`` builds its ``Runtime``.

    ``target`` is a loaded ``Bundle``, or the path as given when ``takes_path`` (the torch
    backend also runs a training run directory). ``extras`` are keyword arguments that are not
    settings (a build progress hook); ``available()`` returns None when the backend can run
    here, else the reason.
    """

    type_key: str
    config_model: type[BaseModel]
    open: Opener
    available: Callable[[], str | None]
    extras: frozenset[str] = frozenset()
    takes_path: bool = False


_REGISTRY: dict[str, RuntimeEntry] = {}


def register(entry: RuntimeEntry) -> RuntimeEntry:
    """Add a backend; its config model's ``type`` default must be its key."""
    declared = entry.config_model.model_fields["type"].default
    if declared != entry.type_key:
        raise ValueError(f"runtime {entry.type_key!r}: its config model declares type {declared!r}")
    if entry.type_key in _REGISTRY:
        raise ValueError(f"runtime {entry.type_key!r} is registered twice")
    _REGISTRY[entry.type_key] = entry
    return entry


def entries() -> dict[str, RuntimeEntry]:
    """Every registered backend by type key, in registration order."""
    return dict(_REGISTRY)


def get_entry(type_key: str) -> RuntimeEntry:
    try:
        return _REGISTRY[type_key]
    except KeyError:
        known = ", ".join(["auto", *_REGISTRY])
        raise BackendUnavailableError(f"unknown backend {type_key!r}: choose one of {known}") from None


def backend_status() -> dict[str, str | None]:
    """For each backend (``auto``'s preference first): None when it can run here, else why not
    (``edge-asd info`` shows it)."""
    order = [*[k for k in AUTO_PREFERENCE if k in _REGISTRY], *[k for k in _REGISTRY if k not in AUTO_PREFERENCE]]
    return {key: _REGISTRY[key].available() for key in order}


def resolve_backend(backend: str) -> str:
    """``auto`` -> the first backend of ``AUTO_PREFERENCE`` that can run here; others as given."""
    if backend != "auto":
        return get_entry(backend).type_key
    for key in AUTO_PREFERENCE:
        reason = get_entry(key).available()
        if reason is None:
            return key
        logger.info("backend auto: not using %s (%s)", key, reason)
    return AUTO_PREFERENCE[-1]


def _fitting(entry: RuntimeEntry, settings: Mapping[str, Any]) -> dict[str, Any]:
    """The settings ``auto`` passes on to the backend it chose: those that backend has."""
    kept = {k: v for k, v in settings.items() if k in entry.config_model.model_fields or k in entry.extras}
    if len(kept) < len(settings):
        dropped = ", ".join(sorted(set(settings) - set(kept)))
        logger.debug("backend auto chose %s: ignoring %s", entry.type_key, dropped)
    return kept


def resolve_config(config: RuntimeConfig) -> ConcreteRuntimeConfig:
    """The concrete config a ``runtime:`` section stands for: ``auto`` picks the backend here and
    passes on the settings it was given that the chosen backend has (the rest keep its defaults)."""
    if not isinstance(config, AutoRuntimeConfig):
        return config
    entry = get_entry(resolve_backend("auto"))
    settings = _fitting(entry, config.model_dump(exclude={"type"}, exclude_none=True))
    return validate_runtime_config({"type": entry.type_key, **settings})  # type: ignore[return-value]


def open_runtime(
    target: Bundle | str | Path,
    backend: str | RuntimeConfig = "auto",
    max_batch: int | None = None,
    threads: int | None = None,
    **options: Any,
) -> Runtime:
    """Open a runtime for a bundle (for ``torch`` also a training run directory).

    ``backend`` is a type (``auto``, ``tensorrt``, ``onnxruntime``, ``torch``) or a validated
    ``runtime:`` config. ``max_batch``, ``threads`` and ``options`` are settings of the
    backend's config model (``onnx_file=``, ``allow_build=`` ...) or its extras
    (``progress=`` for a TensorRT build); given ones override the config's. With ``auto``,
    settings the chosen backend does not have are dropped (a TensorRT build hook when
    onnxruntime was chosen); with a named backend they are an error.
    """
    given = {"max_batch": max_batch, "threads": threads, **options}
    given = {k: v for k, v in given.items() if v is not None}
    if isinstance(backend, BaseModel):
        requested = str(getattr(backend, "type", ""))
        base: Mapping[str, Any] = backend.model_dump(exclude_none=True)
    else:
        requested = str(backend)
        base = {"type": requested}
    name = resolve_backend(requested)
    entry = get_entry(name)
    if requested == "auto":
        given = _fitting(entry, {**{k: v for k, v in base.items() if k != "type"}, **given})
        base = {"type": name}
    extras = {k: given.pop(k) for k in list(given) if k in entry.extras}
    config = validate_runtime_config({**base, **given}, where=f"{name} runtime settings")
    if entry.takes_path:
        return entry.open(target.path if isinstance(target, Bundle) else Path(target), config, **extras)
    return entry.open(as_bundle(target), config, **extras)


__all__ = [
    "AUTO_PREFERENCE",
    "RuntimeEntry",
    "backend_status",
    "entries",
    "get_entry",
    "open_runtime",
    "register",
    "resolve_backend",
    "resolve_config",
]
