"""Config errors as a user reads them: the key path, the line of the file, what is allowed.

pydantic reports a location like ``('streams', 0, 'decision', 'patiense')`` and, inside a
discriminated union, the tag it chose (``('sources', 1, 'file', 'looping')``). A factory
technician needs ``streams[0].decision.patiense (line 18): unknown key 'patiense'; allowed
keys: warmup_windows, patience, ...``. This module walks the schema along the location to
name the keys a model allows and finds the line in the composed YAML. Cross-field checks
carry their key path in the error context (``path``).
"""

from __future__ import annotations

import logging
import re
import types
import typing
from collections.abc import Mapping
from typing import Annotated, Any, Union

import yaml
from pydantic import BaseModel, ValidationError

from edge_asd.core.errors import UserError

logger = logging.getLogger(__name__)


class ConfigError(UserError):
    """A config file or flag the user must fix; the message names the key path."""


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


def _walk_loc(root: Any, loc: tuple[Any, ...]) -> tuple[list[str | int], type[BaseModel] | None]:
    """Turn a pydantic error location into key-path parts and the model found at its end.

    ``root`` is the validated type (a model or a union of models). Discriminated unions add
    the tag (``device``) to the location; it is not a key the user wrote, so it is skipped.
    """
    parts: list[str | int] = []
    candidates: list[Any] = [root]
    for item in loc:
        flat = [t for tp in candidates for t in _unwrap(tp)]
        if isinstance(item, int):
            parts.append(item)
            candidates = [typing.get_args(t)[0] for t in flat if typing.get_origin(t) is list and typing.get_args(t)]
            continue
        models = [t for t in flat if _is_model(t)]
        tagged = [m for m in models if "type" in m.model_fields and m.model_fields["type"].default == item]
        if len(models) > 1 and tagged:
            candidates = tagged
            continue
        field_model = next((m for m in models if item in m.model_fields), None)
        parts.append(item)
        candidates = [field_model.model_fields[item].annotation] if field_model else []
    models = [t for tp in candidates for t in _unwrap(tp) if _is_model(t)]
    return parts, (models[0] if len(models) == 1 else None)


def format_path(parts: list[str | int]) -> str:
    """``["streams", 0, "decision"]`` -> ``streams[0].decision``."""
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def parse_path(text: str) -> list[str | int]:
    """The inverse of ``format_path``."""
    parts: list[str | int] = []
    for name, index in re.findall(r"([A-Za-z0-9_]+)|\[(\d+)\]", text):
        parts.append(int(index) if index else name)
    return parts


def yaml_line(root: yaml.Node | None, parts: list[str | int]) -> int | None:
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


def describe_error(
    err: Mapping[str, Any], schema: Any, root: yaml.Node | None = None, replaced: frozenset[str] = frozenset()
) -> str:
    """One problem as ``key.path (line N): what is wrong; what is allowed``.

    ``schema`` is the validated type; ``root`` the composed YAML (for line numbers), except
    under the top-level keys in ``replaced`` whose values came from command line flags.
    """
    loc = tuple(err.get("loc", ()))
    kind = err.get("type", "")
    ctx = err.get("ctx") or {}
    if kind == "extra_forbidden":
        parts, _ = _walk_loc(schema, loc)
        _, parent = _walk_loc(schema, loc[:-1])
        allowed = ", ".join(parent.model_fields) if parent else "?"
        text = f"unknown key {loc[-1]!r}; allowed keys: {allowed}"
    else:
        parts, _ = _walk_loc(schema, loc)
        text = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
        expected = ctx.get("expected") or ctx.get("expected_tags")
        if kind in ("literal_error", "union_tag_invalid", "enum") and expected:
            allowed = ", ".join(re.findall(r"'([^']*)'", str(expected))) or str(expected)
            got = err.get("input") if kind != "union_tag_invalid" else ctx.get("tag")
            text = f"invalid value {got!r}; allowed values: {allowed}"
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        parts = [*parts, str(ctx.get("discriminator", "type")).strip("'")]
    if kind == "cross_field":
        parts = parse_path(str(ctx.get("path", "")))
    # a line number only where the value really comes from the file, not from a flag
    line = yaml_line(root, parts) if parts and parts[0] not in replaced else None
    return f"{format_path(parts)}{f' (line {line})' if line else ''}: {text}"


def config_error(
    exc: ValidationError,
    schema: Any,
    where: str,
    root: yaml.Node | None = None,
    replaced: frozenset[str] = frozenset(),
) -> ConfigError:
    """Every problem of a failed validation in one ``ConfigError``, one line each."""
    problems = [describe_error(e, schema, root, replaced) for e in exc.errors()]
    lines = "\n".join(f"  - {p}" for p in problems)
    return ConfigError(f"invalid {where} ({len(problems)} problem(s)):\n{lines}")


__all__ = ["ConfigError", "config_error", "describe_error", "format_path", "parse_path", "yaml_line"]
