"""Services: create, versioned update with conflicts, soft delete, restore, history, viewport."""

from __future__ import annotations

import os

import pytest

from annotations import services
from annotations.geometry import InvalidAnnotation
from annotations.models import Annotation, AnnotationHistory

from .conftest import make_slide, square


@pytest.fixture
def annotation(people, slide) -> Annotation:
    return services.create_annotation(
        slide=slide, user=people.pathologist, geometry=square(10, 10, 50, 50), label_class="tumour"
    )


def test_create_stores_bbox_counts_and_a_history_entry(people, annotation):
    row = Annotation.objects.get(pk=annotation.pk)
    assert (row.min_x, row.min_y, row.max_x, row.max_y) == (10, 10, 50, 50)
    assert row.vertex_count == 4 and row.area_px == 1600 and row.version == 1
    assert row.author == people.pathologist and row.label_class.key == "tumour"
    (entry,) = row.history.all()
    assert (entry.version, entry.action, entry.user, entry.before) == (
        1,
        "create",
        people.pathologist,
        None,
    )
    assert entry.after == {"label_class": "tumour", "geometry": row.geometry, "deleted": False}


def test_unknown_class_and_bad_geometry_store_nothing(people, slide):
    with pytest.raises(InvalidAnnotation, match="unknown label class 'cancerish'"):
        services.create_annotation(
            slide=slide,
            user=people.pathologist,
            geometry=square(0, 0, 5, 5),
            label_class="cancerish",
        )
    with pytest.raises(InvalidAnnotation, match="outside the slide"):
        services.create_annotation(
            slide=slide,
            user=people.pathologist,
            geometry=square(0, 0, 5000, 5),
            label_class="tumour",
        )
    assert not Annotation.objects.exists() and not AnnotationHistory.objects.exists()


def test_class_resolves_by_key_or_name(people, slide):
    a = services.create_annotation(
        slide=slide,
        user=people.pathologist,
        geometry=square(0, 0, 5, 5),
        label_class="Lymphoid follicle",
    )
    assert a.label_class.key == "lymphoid-follicle"


def test_update_bumps_version_and_records_before_and_after(people, annotation):
    updated = services.update_annotation(
        annotation=annotation,
        user=people.lab_lead,
        expected_version=1,
        geometry=square(20, 20, 80, 60),
        label_class="sinus",
    )
    assert (
        updated.version == 2
        and updated.label_class.key == "sinus"
        and updated.bbox == [20, 20, 80, 60]
    )
    entry = AnnotationHistory.objects.get(annotation=annotation, version=2)
    assert entry.action == "update" and entry.user == people.lab_lead
    assert entry.before["label_class"] == "tumour" and entry.before["geometry"] == square(
        10, 10, 50, 50
    )
    assert entry.after["label_class"] == "sinus" and entry.after["geometry"] == square(
        20, 20, 80, 60
    )


def test_stale_update_is_a_conflict_and_changes_nothing(people, annotation):
    services.update_annotation(
        annotation=annotation, user=people.pathologist, expected_version=1, label_class="sinus"
    )
    with pytest.raises(services.Conflict) as info:
        services.update_annotation(
            annotation=annotation,
            user=people.lab_lead,
            expected_version=1,
            geometry=square(0, 0, 9, 9),
        )
    assert info.value.current_version == 2
    row = Annotation.objects.get(pk=annotation.pk)
    assert (
        row.version == 2
        and row.geometry == square(10, 10, 50, 50)
        and row.label_class.key == "sinus"
    )
    assert row.history.count() == 2


def test_conditional_update_loses_to_a_writer_between_read_and_write(
    people, annotation, monkeypatch
):
    """Both writers read version 1; the one whose UPDATE ... WHERE version = 1 runs second matches no row."""
    real_current = services._current

    def read_then_let_another_writer_in(pk):
        seen = real_current(pk)  # our writer has read version 1
        Annotation.objects.filter(pk=pk).update(
            version=2, label_class_id=seen.label_class_id
        )  # the other wins
        return seen

    monkeypatch.setattr(services, "_current", read_then_let_another_writer_in)
    with pytest.raises(services.Conflict) as info:
        services.update_annotation(
            annotation=annotation,
            user=people.pathologist,
            expected_version=1,
            label_class="capsule",
        )
    monkeypatch.undo()
    assert info.value.current_version == 2
    row = Annotation.objects.get(pk=annotation.pk)
    assert row.label_class.key == "tumour" and row.history.count() == 1


def test_update_needs_something_to_change(people, annotation):
    with pytest.raises(InvalidAnnotation, match="nothing to change"):
        services.update_annotation(
            annotation=annotation, user=people.pathologist, expected_version=1
        )


def test_delete_and_restore_are_versioned_changes_with_history(people, annotation):
    deleted = services.delete_annotation(
        annotation=annotation, user=people.pathologist, expected_version=1
    )
    assert deleted.deleted_at is not None and deleted.version == 2
    with pytest.raises(services.Conflict, match="is deleted"):
        services.update_annotation(
            annotation=annotation, user=people.pathologist, expected_version=2, label_class="sinus"
        )
    with pytest.raises(services.Conflict, match="not 1"):
        services.restore_annotation(
            annotation=annotation, user=people.pathologist, expected_version=1
        )
    restored = services.restore_annotation(
        annotation=annotation, user=people.lab_lead, expected_version=2
    )
    assert restored.deleted_at is None and restored.version == 3
    with pytest.raises(services.Conflict, match="not deleted"):
        services.restore_annotation(annotation=annotation, user=people.lab_lead)
    actions = list(
        annotation.history.values_list("version", "action", "before__deleted", "after__deleted")
    )
    assert actions == [
        (1, "create", None, False),
        (2, "delete", False, True),
        (3, "restore", True, False),
    ]


def test_viewport_returns_exactly_the_polygons_meeting_it(people, slide):
    def make(geometry, cls="tumour"):
        return services.create_annotation(
            slide=slide, user=people.pathologist, geometry=geometry, label_class=cls
        ).pk

    inside = make(square(110, 110, 120, 120))
    crossing = make(square(180, 150, 260, 170))
    touching = make(square(200, 40, 240, 100))  # its bottom edge lies on the viewport's top edge
    far = make(square(600, 600, 700, 650))
    # An L around the viewport's corner: its bbox overlaps the viewport, the polygon does not.
    ell = make(
        {
            "type": "Polygon",
            "coordinates": [
                [[150, 20], [300, 20], [300, 180], [280, 180], [280, 40], [150, 40], [150, 20]]
            ],
        }
    )
    around = make(
        {
            "type": "Polygon",
            "coordinates": [
                [[50, 50], [400, 50], [400, 400], [50, 400], [50, 50]],
                [[60, 60], [390, 60], [390, 390], [60, 390], [60, 60]],
            ],
        }
    )
    deleted = make(square(150, 150, 160, 160))
    services.delete_annotation(
        annotation=Annotation.objects.get(pk=deleted), user=people.pathologist
    )
    other_slide = make_slide(slide.node)
    services.create_annotation(
        slide=other_slide,
        user=people.pathologist,
        geometry=square(100, 100, 200, 200),
        label_class="tumour",
    )

    def ids(**kwargs):
        return [a.pk for a in services.viewport_annotations(slide=slide, **kwargs)]

    assert ids(bbox=(100, 100, 200, 200)) == [inside, crossing, touching]
    bbox_hits = Annotation.objects.filter(
        slide=slide, min_x__lte=200, max_x__gte=100, min_y__lte=200, max_y__gte=100
    )
    assert ell in set(bbox_hits.values_list("pk", flat=True))  # shapely, not the bbox, left it out
    assert ids(bbox=(100, 100, 200, 200), include_deleted=True) == [
        inside,
        crossing,
        touching,
        deleted,
    ]
    assert ids(bbox=(0, 0, 1000, 700)) == [inside, crossing, touching, far, ell, around]
    assert ids(bbox=(55, 55, 58, 58)) == [around]  # inside the ring itself
    assert ids(bbox=(150, 150, 151, 151)) == []  # in the hole of `around`
    assert ids(bbox=(100, 100, 200, 200), class_keys=["sinus"]) == []


@pytest.mark.skipif(
    not os.environ.get("DATABASE_URL", "").startswith("postgres"),
    reason="needs concurrent writers on PostgreSQL (SQLite serialises whole-database writes)",
)
@pytest.mark.django_db(transaction=True, serialized_rollback=True)  # keep the seeded label classes
def test_two_concurrent_writers_of_the_same_version_cannot_both_win(people, slide, monkeypatch):
    """Real threads on PostgreSQL: both read version 1 before either writes; exactly one update lands."""
    import threading

    from django.db import connections

    annotation = services.create_annotation(
        slide=slide, user=people.pathologist, geometry=square(10, 10, 50, 50), label_class="tumour"
    )
    barrier = threading.Barrier(2, timeout=20)
    real_current = services._current

    local = threading.local()

    def read_together(pk):
        seen = real_current(pk)
        if not getattr(local, "read", False):  # the first read of each writer, not its re-read
            local.read = True
            barrier.wait()
        return seen

    monkeypatch.setattr(services, "_current", read_together)
    outcomes: dict[str, object] = {}

    def write(cls: str) -> None:
        try:
            services.update_annotation(
                annotation=annotation, user=people.pathologist, expected_version=1, label_class=cls
            )
            outcomes[cls] = "won"
        except services.Conflict as exc:
            outcomes[cls] = exc.current_version
        finally:
            connections.close_all()

    threads = [threading.Thread(target=write, args=(cls,)) for cls in ("sinus", "capsule")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(map(str, outcomes.values())) == ["2", "won"]
    winner = next(cls for cls, outcome in outcomes.items() if outcome == "won")
    row = Annotation.objects.get(pk=annotation.pk)
    assert row.version == 2 and row.label_class.key == winner and row.history.count() == 2
