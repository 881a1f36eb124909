"""Strict JSON for everything that leaves the device.

Python's ``json`` writes ``NaN`` and ``Infinity`` by default, which is not JSON: Node-RED,
Home Assistant's templates and most SCADA parsers reject the whole message. A non-finite
number here means "no value" (a score that could not be computed), so it becomes ``null``;
numpy scalars and arrays become plain numbers and lists.
"""

from __future__ import annotations

import json
import math
from typing import Any


def sanitize(obj: Any) -> Any:
    """A copy of ``obj`` that strict JSON can hold: non-finite floats become None."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): sanitize(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [sanitize(v) for v in obj]
    if hasattr(obj, "tolist"):  # numpy scalars and arrays
        return sanitize(obj.tolist())
    if obj is None or isinstance(obj, (str, int, bool)):
        return obj
    return str(obj)


def dumps(obj: Any, **kwargs: Any) -> str:
    """``json.dumps`` that never writes NaN or Infinity (see ``sanitize``)."""
    return json.dumps(sanitize(obj), allow_nan=False, **kwargs)


__all__ = ["dumps", "sanitize"]
