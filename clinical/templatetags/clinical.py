"""`{% clinical_section case %}`: the case page's clinical data and MIL prediction section."""

from __future__ import annotations

from django import template

from ..prediction import PredictionUnavailable, case_prediction, mil_versions
from ..services import active_fields, current_record

register = template.Library()


@register.inclusion_tag("clinical/_case_section.html")
def clinical_section(case) -> dict:
    entry = current_record(case)
    labels = {f.key: (f.label, f.unit) for f in active_fields()}
    values = [
        {"label": labels.get(k, (k, ""))[0], "unit": labels.get(k, ("", ""))[1], "value": v}
        for k, v in (entry.values if entry else {}).items()
    ]
    prediction, reason = None, ""
    if mil_versions().exists():
        try:
            prediction = case_prediction(case)
        except PredictionUnavailable as exc:
            reason = str(exc)
    if prediction:
        prediction["top"] = prediction["attention"][:5]
        prediction["probability_rows"] = sorted(
            prediction["probabilities"].items(), key=lambda kv: -kv[1]
        )
    return {
        "case": case,
        "record": entry,
        "values": values,
        "prediction": prediction,
        "reason": reason,
    }
