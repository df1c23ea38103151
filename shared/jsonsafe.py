"""The one rule for numbers leaving the system as JSON (registry rows, metrics, HTTP).

Strict JSON has no NaN or Infinity: finite floats pass unchanged, ``±inf`` becomes the
strings ``"inf"`` / ``"-inf"`` (``float("inf")`` reads them back) and NaN becomes
``null``. The output of :func:`json_safe` passes ``json.dumps(..., allow_nan=False)``.
"""

from __future__ import annotations

import math
from typing import Any, Literal

# A number as it leaves the system: finite, or "inf"/"-inf" (NaN leaves as null).
JsonFloat = float | Literal["inf", "-inf"]


def json_float(value: float | None) -> JsonFloat | None:
    """`value` as JSON can carry it: finite floats unchanged, ±inf as "inf"/"-inf", NaN as None."""
    if value is None:
        return None
    value = float(value)
    if math.isfinite(value):
        return value
    if math.isnan(value):
        return None
    return "inf" if value > 0 else "-inf"


def json_safe(value: Any) -> Any:
    """`value` with :func:`json_float` applied to every float inside dicts, lists and
    tuples (tuples become lists, dict keys strings, numpy scalars Python numbers)."""
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        return json_float(value)
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return json_safe(value.item())
    return value
