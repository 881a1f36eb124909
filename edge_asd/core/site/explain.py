"""Explanations: which condition indicators moved, in words and numbers an operator can check.

A fused score says *that* a window is unusual; a maintenance technician needs *what* changed.
Each indicator of the window is compared with the enrolled normal on its robust scale
(median, 1.4826 x MAD: the same standardisation the ``indicators`` component uses), and the
ones beyond ``Z_MOVED`` (3 robust standard deviations) are listed, largest first, e.g.

* ``crest factor 8.1 dB, normal 10.2 +/- 0.4 dB`` (value, normal median +/- robust sigma);
* ``2.5 kHz band +7.0 dB`` (band levels are relative to the total, so the change is the news).

When only level indicators moved (overall and peak level), the explanation adds that a gain
or microphone change moves levels too: re-enrol after moving or replacing the microphone.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from edge_asd.core.indicators import INDICATORS, Indicator

logger = logging.getLogger(__name__)

Z_MOVED = 3.0
"""Robust z beyond which an indicator counts as moved."""

MAX_LISTED = 5
"""Moved indicators named in the one-line summary (all of them are in ``moved``)."""

LEVEL_KINDS = ("level",)
"""Indicator kinds that a microphone gain or position change moves without any fault."""

LEVEL_NOTE = (
    "only levels moved: a microphone gain or position change moves levels too; "
    "re-enrol after moving or replacing the microphone"
)

_BY_NAME = {ind.name: ind for ind in INDICATORS}


@dataclass(frozen=True)
class MovedIndicator:
    """One indicator outside its normal range."""

    name: str
    label: str
    unit: str
    kind: str
    value: float
    normal_median: float
    normal_scale: float
    z: float
    text: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Explanation:
    """The moved indicators (largest robust z first), a one-line summary and an optional note."""

    moved: tuple[MovedIndicator, ...]
    summary: str
    note: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"summary": self.summary, "note": self.note, "moved": [m.to_dict() for m in self.moved]}


def indicator_meta(name: str) -> Indicator:
    """The metadata of an indicator by name; a bare stand-in for names this version lacks."""
    found = _BY_NAME.get(name)
    if found is not None:
        return found
    return Indicator(name, name.replace("_", " "), "", "", "")


def _decimals(scale: float) -> int:
    """Decimals that show a spread of ``scale`` with one significant digit (0 to 3)."""
    if not (math.isfinite(scale) and scale > 0):
        return 1
    return int(min(max(-math.floor(math.log10(scale)), 0), 3))


def _unit(unit: str) -> str:
    return f" {unit}" if unit else ""


def describe(meta: Indicator, value: float, median: float, scale: float) -> str:
    """One moved indicator in words and numbers (see the module docstring for the two forms)."""
    places = _decimals(scale)
    if meta.kind == "band":
        return f"{meta.label} {value - median:+.{max(places, 1)}f}{_unit(meta.unit)}"
    return (
        f"{meta.label} {value:.{places}f}{_unit(meta.unit)}, normal {median:.{places}f} "
        f"+/- {scale:.{places}f}{_unit(meta.unit)}"
    )


def explain_vector(
    values: np.ndarray, names: tuple[str, ...], median: np.ndarray, scale: np.ndarray, *, z_moved: float = Z_MOVED
) -> Explanation:
    """Explain one indicator vector against an enrolled normal (median and robust scale)."""
    x = np.asarray(values, dtype=np.float64).ravel()
    if x.size != len(names):
        raise ValueError(f"got {x.size} indicator values for {len(names)} enrolled indicators")
    z = (x - median) / scale
    order = np.argsort(-np.abs(z), kind="stable")
    moved = []
    for i in order:
        if not abs(z[i]) > z_moved:
            break
        meta = indicator_meta(names[i])
        moved.append(
            MovedIndicator(
                name=meta.name, label=meta.label, unit=meta.unit, kind=meta.kind,
                value=float(x[i]), normal_median=float(median[i]), normal_scale=float(scale[i]), z=float(z[i]),
                text=describe(meta, float(x[i]), float(median[i]), float(scale[i])),
            )
        )  # fmt: skip
    if not moved:
        return Explanation((), f"no indicator beyond {z_moved:g} robust standard deviations of normal")
    summary = "; ".join(m.text for m in moved[:MAX_LISTED])
    if len(moved) > MAX_LISTED:
        summary += f"; and {len(moved) - MAX_LISTED} more"
    note = LEVEL_NOTE if all(m.kind in LEVEL_KINDS for m in moved) else None
    return Explanation(tuple(moved), summary, note)


__all__ = [
    "LEVEL_KINDS",
    "LEVEL_NOTE",
    "MAX_LISTED",
    "Z_MOVED",
    "Explanation",
    "MovedIndicator",
    "describe",
    "explain_vector",
    "indicator_meta",
]
