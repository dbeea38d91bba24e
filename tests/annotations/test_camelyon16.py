"""The 110 real CAMELYON16 outline files: every polygon and every vertex imported, at real scale.

Their slides (0.5-3 GB each) are not here, so one small real pyramid (CMU-1-Small-Region) is
registered and its row copied per file with the size of a CAMELYON16 slide covering the outlines
(validation needs only width and height) and their scanner's 0.243 µm/px.

373 of the 2,588 polygons cross or touch themselves (as drawn), and one ("Annotation 8" of
Tumor_054) is two vertices, a line with no area. Validation refuses both, so the files are imported
with the explicit `repair="make_valid"`: invalid outlines are repaired with shapely's make_valid and
keep their outline as drawn in `source_geometry`; the two-vertex one is kept, coordinates and all,
in the import record's `dropped` list. Nothing of any file is lost.
"""

from __future__ import annotations

import json
import math
import re
import time

import numpy as np
import pytest
import shapely

from annotations import services
from annotations.formats import read_asap
from annotations.geometry import vertex_count
from annotations.labels import derive_patch_labels
from annotations.models import Annotation, AnnotationHistory, AnnotationImport
from annotations.tissue import TissueMask
from slides.ingest import register_slide
from slides.models import Slide
from tests.conftest import CMU_DIR, SHARED_DATA, needs_shared_data

ASAP_DIR = SHARED_DATA / "camelyon16-annotations" / "asap-xml"
CAMELYON16_MPP = 0.243

pytestmark = [
    pytest.mark.shared_data,
    needs_shared_data,
    pytest.mark.skipif(
        not ASAP_DIR.exists(), reason="CAMELYON16 annotations are not in ../shared/data"
    ),
]


@pytest.fixture
def real_slide(case) -> Slide:
    return register_slide(node=case.nodes.first(), path=CMU_DIR / "CMU-1-Small-Region.pyramid.tiff")


def camelyon_slide(template: Slide, name: str, width: int, height: int) -> Slide:
    """A row for a CAMELYON16 slide: the registered file's row with the size the outlines need."""
    fields = {
        f.attname: getattr(template, f.attname)
        for f in Slide._meta.concrete_fields
        if f.attname != "id"
    }
    fields.update(
        name=name,
        checksum=f"camelyon16-{name}".ljust(64, "0"),
        width=width,
        height=height,
        mpp_x=CAMELYON16_MPP,
        mpp_y=CAMELYON16_MPP,
    )
    return Slide.objects.create(**fields)


def stored_outline(row: Annotation) -> dict:
    """The outline as drawn: the repaired row keeps it in `source_geometry`."""
    return row.source_geometry if row.source_geometry is not None else row.geometry


def open_ring(ring: list) -> list:
    return ring[:-1] if len(ring) > 1 and ring[0] == ring[-1] else ring


def test_every_camelyon16_file_imports_with_every_polygon_and_vertex(people, real_slide):
    files = sorted(ASAP_DIR.glob("*.xml"))
    assert len(files) == 110
    totals = {"polygons": 0, "coordinates": 0, "rows": 0, "repaired": 0, "dropped": 0}
    seconds = 0.0
    for path in files:
        data = path.read_bytes()
        coordinates_in_file = len(re.findall(rb"<Coordinate\s", data))  # counted without the parser
        polygons_in_file = len(re.findall(rb"<Annotation\s", data))
        started = time.perf_counter()
        items = read_asap(data)
        extent = np.concatenate(
            [np.asarray(i.geometry["coordinates"][0], dtype=float) for i in items]
        )
        slide = camelyon_slide(
            real_slide,
            path.stem,
            math.ceil(extent[:, 0].max()) + 1,
            math.ceil(extent[:, 1].max()) + 1,
        )
        result = services.import_annotations(
            slide=slide,
            user=people.pathologist,
            items=items,
            file_name=path.name,
            format="asap",
            repair="make_valid",
        )
        seconds += time.perf_counter() - started

        assert len(items) == polygons_in_file
        assert sum(len(i.geometry["coordinates"][0]) for i in items) == coordinates_in_file
        rows = {a.name: a for a in Annotation.objects.filter(slide=slide)}
        dropped = {d["name"]: d for d in result.record.dropped}
        assert len(rows) + len(dropped) == polygons_in_file == len({i.name for i in items})
        # Every vertex, exactly as in the file, in order: kept on the row or in the dropped list.
        for item in items:
            kept = (
                stored_outline(rows[item.name])
                if item.name in rows
                else dropped[item.name]["geometry"]
            )
            assert open_ring(kept["coordinates"][0]) == open_ring(
                item.geometry["coordinates"][0].tolist()
            ), item.name
        before = sum(vertex_count(i.geometry) for i in items)
        after = sum(vertex_count(stored_outline(a)) for a in rows.values()) + sum(
            d["vertex_count"] for d in dropped.values()
        )
        assert after == before == result.record.vertex_count
        # Repaired rows are flagged and valid; the rest are stored exactly as drawn.
        repaired = {r["name"] for r in result.record.repaired}
        assert repaired == {name for name, a in rows.items() if a.source_geometry is not None}
        assert all(shapely.from_geojson(json.dumps(rows[n].geometry)).is_valid for n in repaired)
        totals["polygons"] += polygons_in_file
        totals["coordinates"] += coordinates_in_file
        totals["rows"] += len(rows)
        totals["repaired"] += len(repaired)
        totals["dropped"] += len(dropped)

    assert totals == {
        "polygons": 2588,
        "coordinates": 1_070_604,
        "rows": 2587,
        "repaired": 373,
        "dropped": 1,
    }
    (record,) = AnnotationImport.objects.filter(file_name="Tumor_054.xml")
    assert [(d["name"], d["vertex_count"]) for d in record.dropped] == [("Annotation 8", 2)]
    assert "fewer than 3 distinct vertices" in record.dropped[0]["reason"]
    assert AnnotationHistory.objects.count() == 2587
    print(
        f"\nCAMELYON16: imported 110 files, {totals['rows']} polygons, {totals['coordinates']:,} vertices in {seconds:.1f} s"
    )
    assert seconds < 120


def test_strict_import_refuses_a_file_with_self_intersections_and_names_them(people, real_slide):
    data = (ASAP_DIR / "Tumor_001.xml").read_bytes()
    slide = camelyon_slide(real_slide, "Tumor_001", 100_000, 220_000)
    with pytest.raises(services.ImportRefused) as info:
        services.import_annotations(
            slide=slide,
            user=people.pathologist,
            items=read_asap(data),
            file_name="Tumor_001.xml",
            format="asap",
        )
    assert info.value.problems == [
        "Annotation 1 (#2, Tumor): geometry is not valid: ring self-intersection at (71272, 127775)"
    ]
    assert not Annotation.objects.exists() and not AnnotationImport.objects.exists()


def test_command_imports_a_real_file_and_viewport_queries_match_shapely(people, real_slide, capsys):
    from django.core.management import call_command

    slide = camelyon_slide(real_slide, "Tumor_011", 100_000, 220_000)
    call_command(
        "import_annotations",
        str(slide.pk),
        str(ASAP_DIR / "Tumor_011.xml"),
        "--repair",
        "make_valid",
        "--user",
        "path",
    )
    assert "imported" in capsys.readouterr().out
    rows = list(Annotation.objects.filter(slide=slide))
    shapes = shapely.from_geojson([json.dumps(a.geometry) for a in rows])
    x0, y0, x1, y1 = shapely.total_bounds(shapes)
    rng = np.random.default_rng(11)
    for _ in range(20):
        w, h = rng.uniform(200, 8000, size=2)
        bx, by = rng.uniform(x0 - w, x1), rng.uniform(y0 - h, y1)
        box = (bx, by, bx + w, by + h)
        expected = sorted(
            a.pk
            for a, hit in zip(rows, shapely.intersects(shapes, shapely.box(*box)), strict=True)
            if hit
        )
        assert [a.pk for a in services.viewport_annotations(slide=slide, bbox=box)] == expected


def test_patch_labels_at_real_scale_agree_with_shapely(people, real_slide):
    """The largest tumour (Tumor_009): every patch whose centre is in tumour is tumour, and every
    tumour patch meets a tumour polygon; derivation stays well within seconds."""
    slide = camelyon_slide(real_slide, "Tumor_009", 100_000, 220_000)
    items = read_asap((ASAP_DIR / "Tumor_009.xml").read_bytes())
    services.import_annotations(
        slide=slide,
        user=None,
        items=items,
        file_name="Tumor_009.xml",
        format="asap",
        repair="make_valid",
    )
    everywhere = TissueMask(
        mask=np.ones((220, 100), dtype=bool), width=slide.width, height=slide.height
    )
    started = time.perf_counter()
    labels = derive_patch_labels(slide, mask=everywhere)
    seconds = time.perf_counter() - started
    size = labels.grid.size
    assert size == round(40 / CAMELYON16_MPP)
    tumour = np.asarray(labels.classes)[labels.label] == "tumour"
    rows = Annotation.objects.filter(slide=slide).select_related("label_class")
    shapes = {
        k: shapely.union_all(
            shapely.from_geojson([json.dumps(a.geometry) for a in rows if a.label_class.key == k])
        )
        for k in ("tumour", "artefact")
    }
    cx, cy = labels.x0 + size / 2, labels.y0 + size / 2
    centre_in_tumour = shapely.contains_xy(shapes["tumour"], cx, cy) & ~shapely.intersects(
        shapes["artefact"], shapely.box(labels.x0, labels.y0, labels.x0 + size, labels.y0 + size)
    )
    assert tumour[centre_in_tumour].all()
    boxes = shapely.box(
        labels.x0[tumour], labels.y0[tumour], labels.x0[tumour] + size, labels.y0[tumour] + size
    )
    assert shapely.intersects(shapes["tumour"], boxes).all()
    assert (
        tumour.sum() > shapes["tumour"].area / size**2
    )  # any-pixel rule: at least the area's worth
    print(
        f"\nTumor_009: {len(labels):,} patches, {int(tumour.sum()):,} tumour, derived in {seconds:.2f} s"
    )
    assert seconds < 30
