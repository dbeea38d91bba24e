"""A case's node-status prediction from a MIL ModelVersion (seed 001), for the API and the case page."""

from __future__ import annotations

from typing import Any

from slides.models import Case

from .services import current_record


class PredictionUnavailable(Exception):  # noqa: N818 - the name says what happened
    """No prediction can be made for this case now; the message says why."""


def mil_versions():
    from inference.mil import MIL_ARCHITECTURE
    from inference.records import ModelVersion

    return ModelVersion.objects.filter(architecture=MIL_ARCHITECTURE).order_by("-created_at", "-id")


def case_prediction(case: Case, *, version_id: int | None = None) -> dict[str, Any]:
    """Predicted class, probabilities and attention of `case` from the MIL version asked for (or
    the live one, else the newest)."""
    from inference.mil import MILError, predict_case

    versions = mil_versions()
    if version_id is not None:
        version = versions.filter(pk=version_id).first()
        if version is None:
            raise PredictionUnavailable(f"no MIL model version {version_id}")
    else:
        version = versions.filter(is_live=True).first() or versions.first()
        if version is None:
            raise PredictionUnavailable("no MIL model has been trained yet")
    entry = current_record(case)
    try:
        result = predict_case(case, version, clinical_values=entry.values if entry else None)
    except MILError as exc:
        raise PredictionUnavailable(str(exc)) from exc
    except FileNotFoundError as exc:
        raise PredictionUnavailable(f"model {version.name}: its weights file is missing") from exc
    result["case"] = case.pk
    result["node_status"] = entry.node_status if entry else ""
    return result
