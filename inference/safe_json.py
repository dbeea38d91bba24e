"""The one sanitiser of figures written to JSON columns (training progress, curves, ROC, metrics).

A figure that cannot be computed comes out of NumPy and PyTorch as NaN (an AUC of a validation
set holding one class only) or infinity. JSON has no such values: PostgreSQL's jsonb refuses the
``NaN`` token Python writes, and SQLite's JSON_VALID check fails on it, so one such figure turned
a training run into an internal database error. Every JSON write of figures goes through
`json_safe` (NaN and infinities become null, NumPy scalars and arrays plain Python), and
`with_reasons` records beside each figure that came out null why it is missing
(``{"val_auc": null, "val_auc_missing": "the validation set holds one class only ..."}``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

#: Why a figure is missing when nothing more precise is known.
NOT_FINITE = "not a finite number"


def finite_or_none(value: Any) -> float | None:
    """A finite float, or None (for NaN, infinities, None and anything that is not a number)."""
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return number if math.isfinite(number) else None


def json_safe(value: Any) -> Any:
    """`value` as JSON any database accepts: NaN/±inf → None, NumPy → Python, tuples → lists,
    keys → str. Everything else is kept as it is."""
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return json_safe(value.tolist())
    if isinstance(value, np.generic):
        return json_safe(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def with_reasons(figures: Mapping[str, Any], reasons: Mapping[str, str] | None = None) -> dict:
    """`json_safe(figures)`, plus ``<name>_missing`` for each top-level figure that was a number
    but is not finite (NaN, inf): ``reasons[name]`` when given, else "not a finite number"."""
    out = json_safe(figures)
    for name, value in figures.items():
        is_number = isinstance(value, float | int | np.number) and not isinstance(value, bool)
        if is_number and finite_or_none(value) is None:
            out[f"{name}_missing"] = (reasons or {}).get(name) or NOT_FINITE
    return out


def auc_missing_reason(val_set: Any, classes: list[str] | None = None) -> str:
    """Why a validation AUC cannot be computed for `val_set` (its labels, when it has them)."""
    try:
        labels = np.asarray(val_set.labels).reshape(-1)
    except (AttributeError, TypeError, ValueError):
        return "the validation AUC is " + NOT_FINITE
    if labels.size == 0:
        return "the validation set is empty"
    present = np.unique(labels)
    if present.size < 2:
        index = int(present[0])
        name = classes[index] if classes and 0 <= index < len(classes) else str(index)
        return (
            f"the validation set holds one class only ({labels.size} images, all {name});"
            " an AUC needs both: add images"
        )
    return "the validation AUC is " + NOT_FINITE
