"""Creating, changing, deleting and restoring annotations, and importing them in bulk.

Every change is one transaction that writes the row and one `AnnotationHistory` entry. Changes
to an existing annotation are conditional updates (`UPDATE ... WHERE id = %s AND version = n`):
if another writer got there first, no row matches, nothing is written, and `Conflict` carries
the version that is there now. Two concurrent writers holding the same version can therefore
never both win, whatever the isolation level.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import shapely
from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from audit import log as audit
from slides.models import Slide

from .geometry import (
    REPAIR_METHODS,
    CheckedGeometry,
    DegenerateGeometry,
    InvalidAnnotation,
    UnknownLabelClass,
    plain,
    repair_geometry,
    simplify_for_view,
    validate_geometry,
    vertex_count,
)
from .models import Annotation, AnnotationHistory, AnnotationImport, LabelClass

Action = AnnotationHistory.Action


class Conflict(Exception):
    """A write based on a stale version (or onto a deleted annotation); nothing was changed."""

    def __init__(self, message: str, *, current_version: int, deleted: bool):
        super().__init__(message)
        self.current_version = current_version
        self.deleted = deleted


class ImportRefused(InvalidAnnotation):
    """An import with at least one bad polygon; nothing was imported. `problems` names each one."""

    field = "file"

    def __init__(self, problems: Sequence[str]):
        self.problems = list(problems)
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        super().__init__("; ".join(self.problems[:5]) + more)


class ImportTooLarge(InvalidAnnotation):
    """A file over an import bound (polygons or vertices per import): refused while it is read,
    before any geometry is built; nothing was imported. The API answers 413."""

    field = "file"

    def __init__(self, message: str, *, setting: str, limit: int):
        super().__init__(message)
        self.setting = setting
        self.limit = limit


@dataclass
class ImportBudget:
    """Polygons and vertices an import may hold (settings ANNOTATION_IMPORT_MAX_POLYGONS and
    ANNOTATION_IMPORT_MAX_VERTICES), counted as a reader goes: over either, `ImportTooLarge`."""

    max_polygons: int
    max_vertices: int
    polygons: int = 0
    vertices: int = 0

    @classmethod
    def from_settings(cls) -> ImportBudget:
        return cls(
            max_polygons=settings.ANNOTATION_IMPORT_MAX_POLYGONS,
            max_vertices=settings.ANNOTATION_IMPORT_MAX_VERTICES,
        )

    def polygon(self, vertices: int = 0) -> None:
        self.polygons += 1
        if self.polygons > self.max_polygons:
            raise ImportTooLarge(
                f"the file holds more than {self.max_polygons} polygons, the most one import"
                " takes (ANNOTATION_IMPORT_MAX_POLYGONS); split it into smaller files",
                setting="ANNOTATION_IMPORT_MAX_POLYGONS",
                limit=self.max_polygons,
            )
        self.add_vertices(vertices)

    def add_vertices(self, count: int) -> None:
        self.vertices += count
        if self.vertices > self.max_vertices:
            raise ImportTooLarge(
                f"the file holds more than {self.max_vertices} vertices, the most one import"
                " takes (ANNOTATION_IMPORT_MAX_VERTICES); split it into smaller files",
                setting="ANNOTATION_IMPORT_MAX_VERTICES",
                limit=self.max_vertices,
            )


# ---- label classes ------------------------------------------------------------------------------


def label_classes() -> dict[str, LabelClass]:
    """Every label class by key."""
    return {c.key: c for c in LabelClass.objects.all()}


def resolve_label_class(
    value: object, *, classes: Mapping[str, LabelClass] | None = None
) -> LabelClass:
    """A label class by key, or by name (case-insensitive); `InvalidAnnotation` if unknown."""
    classes = label_classes() if classes is None else classes
    if isinstance(value, LabelClass):
        return value
    if isinstance(value, str):
        text = value.strip()
        if text in classes:
            return classes[text]
        for cls in classes.values():
            if text.casefold() in (cls.key.casefold(), cls.name.casefold()):
                return cls
    raise UnknownLabelClass(f"unknown label class {value!r}; known: {', '.join(sorted(classes))}")


# ---- viewport queries ---------------------------------------------------------------------------


def viewport_queryset(
    *,
    slide: Slide,
    bbox: tuple[float, float, float, float] | None = None,
    authors: Sequence[int] | None = None,
    class_keys: Sequence[str] | None = None,
    include_deleted: bool = False,
):
    """Annotations of a slide whose indexed bbox meets `bbox`, in id order (a lazy queryset).

    Callers page it in SQL and then call `drop_non_intersecting` on the page.
    """
    qs = (
        Annotation.objects.filter(slide=slide)
        .select_related("label_class", "author")
        .order_by("id")
    )
    if not include_deleted:
        qs = qs.filter(deleted_at__isnull=True)
    if authors is not None:
        qs = qs.filter(author_id__in=list(authors))
    if class_keys is not None:
        qs = qs.filter(label_class__key__in=list(class_keys))
    if bbox is not None:
        x0, y0, x1, y1 = bbox
        qs = qs.filter(min_x__lte=x1, max_x__gte=x0, min_y__lte=y1, max_y__gte=y0)
    return qs


def drop_non_intersecting(
    rows: Sequence[Annotation],
    bbox: tuple[float, float, float, float] | None,
    *,
    geometry_of: Callable[[Annotation], Mapping] | None = None,
) -> list[Annotation]:
    """Drop rows whose bbox meets the viewport but whose polygon does not (an L-shape round a
    corner). Rows whose bbox lies inside the viewport skip the shapely test. The polygon tested
    is the stored one, or what ``geometry_of(row)`` gives (the outline a zoomed-out view sends)."""
    rows = list(rows)
    if bbox is None:
        return rows
    x0, y0, x1, y1 = bbox
    edge = [
        a for a in rows if not (a.min_x >= x0 and a.max_x <= x1 and a.min_y >= y0 and a.max_y <= y1)
    ]
    if edge:
        geometry_of = geometry_of or (lambda a: a.geometry)
        shapes = shapely.from_geojson([json.dumps(geometry_of(a)) for a in edge])
        hits = shapely.intersects(shapes, shapely.box(x0, y0, x1, y1))
        missed = {a.pk for a, hit in zip(edge, hits, strict=True) if not hit}
        rows = [a for a in rows if a.pk not in missed]
    return rows


def viewport_annotations(
    *,
    slide: Slide,
    bbox: tuple[float, float, float, float] | None = None,
    authors: Sequence[int] | None = None,
    class_keys: Sequence[str] | None = None,
    include_deleted: bool = False,
) -> list[Annotation]:
    """Annotations of a slide whose polygon intersects `bbox` (x0, y0, x1, y1, level-0 px).

    The indexed bbox columns narrow the rows in the database; shapely then drops those whose bbox
    meets the viewport but whose polygon does not, so the answer is exactly the intersecting
    polygons.
    """
    qs = viewport_queryset(
        slide=slide,
        bbox=bbox,
        authors=authors,
        class_keys=class_keys,
        include_deleted=include_deleted,
    )
    return drop_non_intersecting(qs, bbox)


@dataclass(frozen=True)
class Outline:
    """What a zoomed-out view draws of one annotation: its outline at a tolerance, and whether
    that is simplified (False: the stored geometry)."""

    geometry: dict
    simplified: bool


def outline_cache_key(annotation: Annotation, tolerance: float) -> str:
    """One key per annotation, version, time of its last change and tolerance: an edit makes a
    new version, so a cached outline never outlives the geometry it was made from (the time
    guards against a row id used again, as SQLite may after a rollback or a restored backup)."""
    changed = annotation.updated_at.timestamp() if annotation.updated_at else 0.0
    return f"annotation-outline:{annotation.pk}:{annotation.version}:{changed!r}:{tolerance!r}"


def view_outlines(
    rows: Sequence[Annotation],
    *,
    bbox: tuple[float, float, float, float] | None,
    tolerance: float,
) -> tuple[list[Annotation], dict[int, Outline]]:
    """For a zoomed-out view: each row's outline at `tolerance` level-0 px, and the rows (loaded
    without their geometry, see the list view) whose outline as sent meets `bbox`.

    Outlines come from the outline cache where they are there, so no stored geometry is read or
    parsed for them; the others are made from their stored geometry, read in one query, and
    cached. Rows on the viewport's edge (their box is not inside it) are tested against the
    outline sent, which lies within `tolerance` of the stored one: the view gets what it draws
    in view. A row edited between the two reads is drawn as it now is but not cached under the
    version the page saw; a row removed in between is left out."""
    from django.conf import settings
    from django.core.cache import cache

    rows = list(rows)
    keys = {a.pk: outline_cache_key(a, tolerance) for a in rows}
    cached = cache.get_many(list(keys.values())) if rows else {}
    missing = [a for a in rows if keys[a.pk] not in cached]
    stored, changed = {}, set()
    if missing:
        versions = {a.pk: a.version for a in missing}
        for pk, version, geometry in Annotation.objects.filter(pk__in=versions).values_list(
            "pk", "version", "geometry"
        ):
            stored[pk] = geometry
            if version != versions[pk]:  # edited since the page was read
                changed.add(pk)
        rows = [a for a in rows if a.pk in stored or keys[a.pk] in cached]  # removed: left out
        missing = [a for a in missing if a.pk in stored]
    outlines = {a.pk: Outline(**cached[keys[a.pk]]) for a in rows if keys[a.pk] in cached}
    if missing:
        detailed = [a for a in missing if a.vertex_count > 3]  # a triangle has nothing to drop
        simplified = simplify_for_view([stored[a.pk] for a in detailed], tolerance=tolerance)
        shown = dict(zip((a.pk for a in detailed), simplified, strict=True))
        made = {}
        for a in missing:
            simple = shown.get(a.pk)
            outline = Outline(geometry=simple or stored[a.pk], simplified=simple is not None)
            outlines[a.pk] = outline
            if a.pk not in changed:  # never an outline under a version it was not made from
                made[keys[a.pk]] = {"geometry": outline.geometry, "simplified": outline.simplified}
        cache.set_many(made, timeout=settings.ANNOTATION_OUTLINE_CACHE_SECONDS)
    rows = drop_non_intersecting(rows, bbox, geometry_of=lambda a: outlines[a.pk].geometry)
    return rows, {a.pk: outlines[a.pk] for a in rows}


# ---- single annotations -------------------------------------------------------------------------


def snapshot(annotation: Annotation) -> dict:
    """The state a history entry records: class, geometry, deleted or not."""
    return {
        "label_class": annotation.label_class.key,
        "geometry": annotation.geometry,
        "deleted": annotation.deleted_at is not None,
    }


def _geometry_fields(checked: CheckedGeometry) -> dict:
    min_x, min_y, max_x, max_y = checked.bounds
    return {
        "geometry": checked.geojson,
        "min_x": min_x,
        "min_y": min_y,
        "max_x": max_x,
        "max_y": max_y,
        "vertex_count": checked.vertex_count,
        "area_px": checked.area,
    }


def check_geometry(geometry: object, *, slide: Slide) -> CheckedGeometry:
    return validate_geometry(geometry, width=slide.width, height=slide.height)


def create_annotation(
    *, slide: Slide, user, geometry: object, label_class: object, name: str = ""
) -> Annotation:
    """Validate and store one polygon, with its `create` history entry."""
    cls = resolve_label_class(label_class)
    checked = check_geometry(geometry, slide=slide)
    with transaction.atomic():
        annotation = Annotation.objects.create(
            slide=slide, label_class=cls, author=_user(user), name=name, **_geometry_fields(checked)
        )
        AnnotationHistory.objects.create(
            annotation=annotation,
            version=1,
            action=Action.CREATE,
            user=_user(user),
            after=snapshot(annotation),
        )
    return annotation


def update_annotation(
    *,
    annotation: Annotation,
    user,
    expected_version: int,
    geometry: object | None = None,
    label_class: object | None = None,
) -> Annotation:
    """Change geometry and/or class, if the annotation is still at `expected_version`."""
    if geometry is None and label_class is None:
        raise InvalidAnnotation("nothing to change: give a geometry, a label class, or both")
    cls = resolve_label_class(label_class) if label_class is not None else None
    checked = check_geometry(geometry, slide=annotation.slide) if geometry is not None else None
    changes: dict = {}
    if cls is not None:
        changes["label_class"] = cls
    if checked is not None:
        changes.update(_geometry_fields(checked))
        changes["source_geometry"] = None  # the as-imported outline no longer describes this row
    return _change(
        annotation=annotation,
        user=user,
        expected_version=expected_version,
        action=Action.UPDATE,
        changes=changes,
    )


def delete_annotation(
    *, annotation: Annotation, user, expected_version: int | None = None
) -> Annotation:
    """Soft-delete (the row stays, with its history); `expected_version` guards against stale deletes."""
    return _change(
        annotation=annotation,
        user=user,
        expected_version=expected_version,
        action=Action.DELETE,
        changes={"deleted_at": timezone.now()},
    )


def restore_annotation(
    *, annotation: Annotation, user, expected_version: int | None = None
) -> Annotation:
    """Undo a soft delete."""
    return _change(
        annotation=annotation,
        user=user,
        expected_version=expected_version,
        action=Action.RESTORE,
        changes={"deleted_at": None},
    )


def _current(pk: int) -> Annotation:
    return Annotation.objects.select_related("label_class", "slide").get(pk=pk)


def _change(
    *, annotation: Annotation, user, expected_version: int | None, action: str, changes: dict
) -> Annotation:
    with transaction.atomic():
        current = _current(annotation.pk)
        version = current.version if expected_version is None else expected_version
        _refuse_if_stale(current, version, action)
        before = snapshot(current)
        updated = Annotation.objects.filter(pk=current.pk, version=version).update(
            version=F("version") + 1, updated_at=timezone.now(), **changes
        )
        if updated != 1:
            # Someone wrote between our read and our update; nothing of ours was written.
            now = Annotation.objects.get(pk=current.pk)
            raise Conflict(
                f"annotation {current.pk} changed meanwhile (now version {now.version})",
                current_version=now.version,
                deleted=now.deleted_at is not None,
            )
        fresh = _current(current.pk)
        AnnotationHistory.objects.create(
            annotation=fresh,
            version=fresh.version,
            action=action,
            user=_user(user),
            before=before,
            after=snapshot(fresh),
        )
    return fresh


def _refuse_if_stale(current: Annotation, version: int, action: str) -> None:
    deleted = current.deleted_at is not None
    if current.version != version:
        raise Conflict(
            f"annotation {current.pk} is at version {current.version}, not {version}: reload it and try again",
            current_version=current.version,
            deleted=deleted,
        )
    if action in (Action.UPDATE, Action.DELETE) and deleted:
        raise Conflict(
            f"annotation {current.pk} is deleted; restore it first",
            current_version=current.version,
            deleted=True,
        )
    if action == Action.RESTORE and not deleted:
        raise Conflict(
            f"annotation {current.pk} is not deleted",
            current_version=current.version,
            deleted=False,
        )


def _user(user):
    return user if user is not None and getattr(user, "is_authenticated", False) else None


# ---- bulk import --------------------------------------------------------------------------------


@dataclass
class ParsedAnnotation:
    """One polygon read from a file, not yet validated. `class_name` is the file's own word for it.

    `geometry` is GeoJSON-shaped; a reader may give rings as (n, 2) numpy arrays (fast to parse).
    """

    name: str
    class_name: str
    geometry: dict
    label_class: str | None = None  # resolved key, when the reader already knows it


@dataclass
class ImportResult:
    record: AnnotationImport
    annotations: list[Annotation] = field(default_factory=list)

    @property
    def repaired(self) -> list[dict]:
        return self.record.repaired

    @property
    def dropped(self) -> list[dict]:
        return self.record.dropped


def import_annotations(
    *,
    slide: Slide,
    user,
    items: Iterable[ParsedAnnotation],
    file_name: str,
    format: str,  # noqa: A002 - the file format's name, as in the API
    repair: str = "",
    default_class: str = "",
) -> ImportResult:
    """Validate every polygon, then store all of them in one transaction, or none.

    Without `repair`, one bad polygon refuses the whole file (`ImportRefused` names each bad one).
    With `repair="make_valid"`, invalid polygons (self-intersections) are repaired with shapely's
    `make_valid`, their original outline kept in `source_geometry`, and polygons that cannot be an
    area at all (fewer than 3 distinct vertices, or all on one line) are dropped into the import record's `dropped`
    list with their coordinates; both lists are reported. Other problems still refuse the file.
    Polygons without a class in the file get `default_class`, if given.
    """
    if repair and repair not in REPAIR_METHODS:
        raise InvalidAnnotation(
            f"unknown repair method {repair!r}; use one of {', '.join(REPAIR_METHODS)}"
        )
    items = list(items)
    budget = (
        ImportBudget.from_settings()
    )  # the readers count too, as they parse; this is for any caller
    counts = []
    for item in items:
        counts.append(_listed_vertices(item.geometry))
        budget.polygon(counts[-1])
    classes = label_classes()
    rows: list[Annotation] = []
    problems: list[str] = []
    repaired: list[dict] = []
    dropped: list[dict] = []
    author = _user(user)
    total_vertices = 0
    for i, item in enumerate(items):
        label = f"{item.name or 'polygon'} (#{i + 1}, {item.class_name or 'no class'})"
        try:
            count = counts[i]
            total_vertices += count
            word = item.label_class or item.class_name or default_class
            if not word:
                raise UnknownLabelClass("has no class in the file (give a default class)")
            cls = resolve_label_class(word, classes=classes)
            if repair:
                try:
                    checked, was_repaired = repair_geometry(
                        item.geometry, width=slide.width, height=slide.height
                    )
                except DegenerateGeometry as exc:
                    dropped.append(
                        {
                            "index": i,
                            "name": item.name,
                            "class": item.class_name,
                            "reason": str(exc),
                            "vertex_count": count,
                            "geometry": plain(item.geometry),
                        }
                    )
                    continue
            else:
                checked, was_repaired = check_geometry(item.geometry, slide=slide), False
        except InvalidAnnotation as exc:
            problems.append(f"{label}: {exc}")
            continue
        row = Annotation(
            slide=slide,
            label_class=cls,
            author=author,
            name=item.name[:255],
            **_geometry_fields(checked),
        )
        if was_repaired:
            row.source_geometry = plain(item.geometry)
            repaired.append(
                {
                    "index": i,
                    "name": item.name,
                    "source_vertex_count": count,
                    "vertex_count": checked.vertex_count,
                }
            )
        rows.append(row)
    if problems:
        raise ImportRefused(problems)
    with transaction.atomic():
        record = AnnotationImport.objects.create(
            slide=slide,
            file_name=file_name[:255],
            format=format,
            repair=repair,
            imported_by=author,
            polygon_count=len(items),
            vertex_count=total_vertices,
            repaired=repaired,
            dropped=dropped,
        )
        audit.record(
            actor=author,
            action="annotations imported",
            obj=record,
            slide=slide.pk,
            file=record.file_name,
            format=format,
            polygons=len(rows),
            repaired=len(repaired),
            dropped=len(dropped),
        )
        for row in rows:
            row.source_import = record
        created = Annotation.objects.bulk_create(rows, batch_size=500)
        if any(
            row.pk is None for row in created
        ):  # a backend that cannot return ids from bulk inserts
            created = list(Annotation.objects.filter(source_import=record).order_by("id"))
        AnnotationHistory.objects.bulk_create(
            [
                AnnotationHistory(
                    annotation=row,
                    version=1,
                    action=Action.CREATE,
                    user=author,
                    after={
                        "label_class": row.label_class.key,
                        "geometry": row.geometry,
                        "deleted": False,
                    },
                )
                for row in created
            ],
            batch_size=500,
        )
    return ImportResult(record=record, annotations=created)


def _listed_vertices(geometry: object) -> int:
    """Vertices as the file lists them (closing repeats not counted), for the import record."""
    try:
        return vertex_count(geometry)  # type: ignore[arg-type]
    except Exception:  # noqa: BLE001 - malformed geometry; validation names the problem
        return 0
