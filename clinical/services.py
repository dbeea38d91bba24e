"""Clinical data: validation against the ClinicalField definitions, saving, CSV import.

Every refusal names the field (or CSV row and column) and says what is wrong. Values are stored
in canonical form: numbers as numbers, yes/no as booleans, categories spelled as the field lists
them. A missing value is simply absent (unless the field is required).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from django.db import transaction

from audit.log import record
from slides.access import cases_for
from slides.models import Case

from .models import ClinicalField, ClinicalRecord, NodeStatus

TRUE_WORDS = {"true", "yes", "y", "1"}
FALSE_WORDS = {"false", "no", "n", "0"}
MAX_IMPORT_ROWS = 20_000
ACCESSION_COLUMN = "accession_number"
NODE_COLUMNS = ("positive_nodes", "node_status")


class ClinicalDataError(ValueError):
    """Values that cannot be stored; `errors` maps each offending field to its reason."""

    def __init__(self, errors: Mapping[str, str]) -> None:
        self.errors = dict(errors)
        super().__init__("; ".join(f"{k}: {v}" for k, v in self.errors.items()))


@dataclass
class ImportReport:
    """What a CSV import did (imported) or why nothing was imported (errors, per row)."""

    imported: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


def active_fields() -> list[ClinicalField]:
    return list(ClinicalField.objects.filter(active=True).order_by("order", "key"))


def status_from_count(positive_nodes: int) -> str:
    """N0 for none, N+(1-2) for one or two, N+(>2) for three or more positive nodes."""
    if positive_nodes <= 0:
        return NodeStatus.N0
    return NodeStatus.N_PLUS_1_2 if positive_nodes <= 2 else NodeStatus.N_PLUS_GT_2


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _number(spec: ClinicalField, value: Any) -> float | int:
    if isinstance(value, bool):
        raise ValueError("must be a number, not true/false")
    if isinstance(value, str):
        try:
            value = float(value.strip().replace(",", "."))
        except ValueError:
            raise ValueError(f"must be a number, got {value!r}") from None
    if not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"must be a finite number, got {value!r}")
    if spec.integer:
        if float(value) != int(value):
            raise ValueError(f"must be a whole number, got {value!r}")
        value = int(value)
    unit = f" {spec.unit}" if spec.unit else ""
    if spec.min_value is not None and value < spec.min_value:
        raise ValueError(f"must be at least {spec.min_value:g}{unit}, got {value:g}")
    if spec.max_value is not None and value > spec.max_value:
        raise ValueError(f"must be at most {spec.max_value:g}{unit}, got {value:g}")
    return value


def _category(spec: ClinicalField, value: Any) -> str:
    allowed = [str(v) for v in spec.allowed_values or []]
    text = str(value).strip()
    for choice in allowed:
        if choice.lower() == text.lower():
            return choice
    raise ValueError(f"must be one of {', '.join(allowed)}; got {text!r}")


def _boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in TRUE_WORDS:
        return True
    if text in FALSE_WORDS:
        return False
    raise ValueError(f"must be yes or no, got {value!r}")


def clean_value(spec: ClinicalField, value: Any) -> Any:
    """One value in canonical form, or ValueError saying what is wrong with it."""
    if spec.kind == ClinicalField.Kind.NUMERIC:
        return _number(spec, value)
    if spec.kind == ClinicalField.Kind.CATEGORICAL:
        return _category(spec, value)
    return _boolean(value)


def validate_values(
    values: Mapping[str, Any], *, fields: Iterable[ClinicalField] | None = None
) -> dict[str, Any]:
    """Validated values keyed by field, or ClinicalDataError naming every bad field."""
    if not isinstance(values, Mapping):
        raise ClinicalDataError({"values": "must be an object of field key -> value"})
    specs = {f.key: f for f in (active_fields() if fields is None else fields)}
    errors: dict[str, str] = {}
    clean: dict[str, Any] = {}
    for key, value in values.items():
        spec = specs.get(key)
        if spec is None:
            errors[key] = f"unknown clinical variable (known: {', '.join(specs)})"
            continue
        if _blank(value):
            continue
        try:
            clean[key] = clean_value(spec, value)
        except ValueError as exc:
            errors[key] = str(exc)
    for key, spec in specs.items():
        if spec.required and key not in clean and key not in errors:
            errors[key] = "is required"
    if errors:
        raise ClinicalDataError(errors)
    return clean


def node_status_of(positive_nodes: Any, node_status: Any) -> tuple[int | None, str]:
    """The (count, status) pair to store: the status is derived from the count when only the
    count is given; when both are given they must agree."""
    errors: dict[str, str] = {}
    count: int | None = None
    status = ""
    if not _blank(positive_nodes):
        try:
            number = (
                float(str(positive_nodes).strip())
                if isinstance(positive_nodes, str)
                else positive_nodes
            )
            if (
                isinstance(number, bool)
                or not isinstance(number, int | float)
                or number != int(number)
            ):
                raise ValueError
            count = int(number)
            if not 0 <= count <= 100:
                raise ValueError
        except (TypeError, ValueError, OverflowError):
            errors["positive_nodes"] = (
                f"must be a whole number from 0 to 100, got {positive_nodes!r}"
            )
    if not _blank(node_status):
        text = str(node_status).strip()
        match = next((s for s in NodeStatus.values if s.lower() == text.lower()), None)
        if match is None:
            errors["node_status"] = f"must be one of {', '.join(NodeStatus.values)}; got {text!r}"
        else:
            status = match
    if count is not None and not errors:
        derived = status_from_count(count)
        if status and status != derived:
            errors["node_status"] = (
                f"{status} contradicts positive_nodes={count} (which is {derived})"
            )
        status = derived
    if errors:
        raise ClinicalDataError(errors)
    return count, status


def save_clinical_record(
    *,
    case: Case,
    values: Mapping[str, Any],
    positive_nodes: Any = None,
    node_status: Any = None,
    user=None,
    source: str = ClinicalRecord.Source.API,
    fields: Iterable[ClinicalField] | None = None,
) -> ClinicalRecord:
    """Validate and append a new current record for `case` (the previous one stays as history)."""
    errors: dict[str, str] = {}
    try:
        clean = validate_values(values, fields=fields)
    except ClinicalDataError as exc:
        errors.update(exc.errors)
    try:
        count, status = node_status_of(positive_nodes, node_status)
    except ClinicalDataError as exc:
        errors.update(exc.errors)
    if errors:
        raise ClinicalDataError(errors)
    with transaction.atomic():
        entry = ClinicalRecord.objects.create(
            case=case,
            values=clean,
            positive_nodes=count,
            node_status=status,
            source=source,
            entered_by=user if user is not None and user.is_authenticated else None,
        )
        record(actor=user, action="clinical data saved", obj=case, source=source, record=entry.pk)
    return entry


def current_record(case: Case) -> ClinicalRecord | None:
    return case.clinical_records.order_by("-id").first()


def current_records(cases: Iterable[Case]) -> dict[int, ClinicalRecord]:
    """The latest record of each case (one query)."""
    ids = [c.pk for c in cases]
    latest: dict[int, ClinicalRecord] = {}
    for entry in ClinicalRecord.objects.filter(case_id__in=ids).order_by("case_id", "-id"):
        latest.setdefault(entry.case_id, entry)
    return latest


def record_as_dict(entry: ClinicalRecord | None) -> dict[str, Any]:
    if entry is None:
        return {
            "values": {},
            "positive_nodes": None,
            "node_status": "",
            "entered_by": None,
            "entered_at": None,
            "source": None,
            "id": None,
        }
    return {
        "id": entry.pk,
        "values": entry.values,
        "positive_nodes": entry.positive_nodes,
        "node_status": entry.node_status,
        "source": entry.source,
        "entered_by": entry.entered_by.username if entry.entered_by_id else None,
        "entered_at": entry.entered_at.isoformat(),
    }


# ---- CSV import ----------------------------------------------------------------------------------


def import_csv(text: str, *, user) -> ImportReport:
    """Import clinical rows (accession_number + field columns + positive_nodes/node_status).

    All or nothing: every row is validated first; one bad row imports none, and the report lists
    every bad row (its line number in the file, the accession number, and the reason per column).
    An accession number outside the user's labs reads as unknown, so nothing is revealed about
    other labs' cases.
    """
    report = ImportReport()
    try:
        return _import_rows(text, user=user, report=report)
    except csv.Error as exc:  # a malformed file (stray quote, over-long field)
        return ImportReport(
            errors=[{"row": None, "errors": {"file": f"not readable as CSV: {exc}"}}]
        )


def _import_rows(text: str, *, user, report: ImportReport) -> ImportReport:
    reader = csv.DictReader(io.StringIO(text.lstrip("\ufeff"), newline=""))
    header = [h.strip() for h in (reader.fieldnames or [])]
    if ACCESSION_COLUMN not in header:
        report.errors.append({"row": 1, "errors": {ACCESSION_COLUMN: "missing column"}})
        return report
    specs = active_fields()
    known = {f.key for f in specs} | {ACCESSION_COLUMN, *NODE_COLUMNS}
    unknown = [h for h in header if h not in known]
    if unknown:
        report.errors.append(
            {"row": 1, "errors": {h: "unknown column (not a clinical variable)" for h in unknown}}
        )
        return report
    if len(set(header)) != len(header):
        report.errors.append({"row": 1, "errors": {"header": "a column is named twice"}})
        return report
    visible = {c.accession_number: c for c in cases_for(user)}
    seen: dict[str, int] = {}
    pending: list[tuple[Case, dict[str, Any], int | None, str]] = []
    for line, raw in enumerate(reader, start=2):
        if line - 1 > MAX_IMPORT_ROWS:
            report.errors.append(
                {"row": line, "errors": {"file": f"more than {MAX_IMPORT_ROWS} rows"}}
            )
            break
        row = {(k or "").strip(): v for k, v in raw.items()}
        if None in raw:
            report.errors.append({"row": line, "errors": {"row": "more cells than columns"}})
            continue
        accession = (row.pop(ACCESSION_COLUMN) or "").strip()
        errors: dict[str, str] = {}
        case = visible.get(accession)
        if not accession:
            errors[ACCESSION_COLUMN] = "is empty"
        elif case is None:
            errors[ACCESSION_COLUMN] = f"no case {accession!r} in your labs"
        elif accession in seen:
            errors[ACCESSION_COLUMN] = f"{accession!r} already on row {seen[accession]}"
        seen.setdefault(accession, line)
        count_cell, status_cell = row.pop("positive_nodes", None), row.pop("node_status", None)
        clean: dict[str, Any] = {}
        count, status = None, ""
        try:
            clean = validate_values(row, fields=specs)
        except ClinicalDataError as exc:
            errors.update(exc.errors)
        try:
            count, status = node_status_of(count_cell, status_cell)
        except ClinicalDataError as exc:
            errors.update(exc.errors)
        if errors:
            report.errors.append({"row": line, "accession_number": accession, "errors": errors})
        elif case is not None:
            pending.append((case, clean, count, status))
    if not report.errors and not pending:
        report.errors.append({"row": 2, "errors": {"file": "no data rows"}})
    if report.errors:
        return report
    with transaction.atomic():
        ClinicalRecord.objects.bulk_create(
            [
                ClinicalRecord(
                    case=case,
                    values=clean,
                    positive_nodes=count,
                    node_status=status,
                    source=ClinicalRecord.Source.CSV,
                    entered_by=user if user is not None and user.is_authenticated else None,
                )
                for case, clean, count, status in pending
            ]
        )
        record(actor=user, action="clinical data imported", rows=len(pending))
    report.imported = len(pending)
    return report
