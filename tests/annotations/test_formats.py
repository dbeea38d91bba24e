"""QuPath GeoJSON, ASAP XML and DSA JSON: reading, writing, and exact round trips."""

from __future__ import annotations

import json

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from annotations import services
from annotations.formats import (
    FORMATS,
    FormatError,
    detect_format,
    read_asap,
    read_dsa,
    read_qupath,
)
from annotations.geometry import plain
from annotations.models import Annotation

from .conftest import make_slide, square

HOLE = {
    "type": "Polygon",
    "coordinates": [
        [[100, 100], [400, 100], [400, 400], [100, 400], [100, 100]],
        [[200.25, 200.5], [300.75, 200.5], [300.75, 300.125], [200.25, 300.125], [200.25, 200.5]],
    ],
}
MULTI = {
    "type": "MultiPolygon",
    "coordinates": [
        square(500, 50, 560, 90)["coordinates"],
        square(600, 60, 640, 95.5)["coordinates"],
    ],
}
SHAPES = [
    (square(10, 10, 50, 40), "tumour", "focus A"),
    (
        {
            "type": "Polygon",
            "coordinates": [[[700.5, 300.25], [900.125, 310], [800, 500.75], [700.5, 300.25]]],
        },
        "lymphoid-follicle",
        "follicle",
    ),
    (square(20, 600, 80, 690), "ink", "ink mark"),
    (square(300, 550, 350, 600), "non-tumour", "normal"),
    (square(400, 550, 450, 600), "necrosis", "necrotic"),
]


def make_all(slide, user, shapes) -> list[Annotation]:
    return [
        services.create_annotation(slide=slide, user=user, geometry=g, label_class=c, name=n)
        for g, c, n in shapes
    ]


def roundtrip(fmt: str, source, target) -> list[Annotation]:
    rows = services.viewport_annotations(slide=source)
    data = FORMATS[fmt].write(rows)
    result = services.import_annotations(
        slide=target, user=None, items=FORMATS[fmt].read(data), file_name=f"x.{fmt}", format=fmt
    )
    return sorted(result.annotations, key=lambda a: a.pk)


def signature(rows) -> list[tuple]:
    return [(a.label_class.key, json.dumps(a.geometry)) for a in rows]


@pytest.mark.parametrize("fmt", ["qupath", "dsa"])
def test_qupath_and_dsa_roundtrips_keep_geometry_holes_parts_and_classes_exactly(people, case, fmt):
    source, target = make_slide(case.nodes.first()), make_slide(case.nodes.first())
    originals = make_all(
        source,
        people.pathologist,
        [*SHAPES, (HOLE, "tumour", "ring"), (MULTI, "sinus", "two parts")],
    )
    copies = roundtrip(fmt, source, target)
    assert signature(copies) == signature(originals)
    assert [a.name for a in copies] == [a.name for a in originals]
    assert [a.vertex_count for a in copies] == [a.vertex_count for a in originals]


def test_asap_roundtrip_keeps_polygons_and_classes_exactly(people, case):
    source, target = make_slide(case.nodes.first()), make_slide(case.nodes.first())
    originals = make_all(source, people.pathologist, SHAPES)
    copies = roundtrip("asap", source, target)
    assert signature(copies) == signature(originals)
    assert [a.name for a in copies] == [a.name for a in originals]


def test_asap_writes_holes_as_exclusions_and_parts_separately(people, case):
    slide = make_slide(case.nodes.first())
    make_all(slide, people.pathologist, [(HOLE, "tumour", "ring"), (MULTI, "sinus", "two")])
    data = FORMATS["asap"].write(services.viewport_annotations(slide=slide))
    items = read_asap(data)
    assert [(i.name, i.class_name, i.label_class) for i in items] == [
        ("ring", "Tumor", "tumour"),
        ("ring hole 1", "Exclusion", "artefact"),
        ("two part 1", "Sinus", "sinus"),
        ("two part 2", "Sinus", "sinus"),
    ]
    assert (
        plain(items[1].geometry)["coordinates"][0] == HOLE["coordinates"][1][:-1]
    )  # ASAP rings are open


def test_asap_groups_map_as_in_camelyon16(db):
    xml = b"""<?xml version="1.0"?>
<ASAP_Annotations><Annotations>
  <Annotation Name="A" Type="Polygon" PartOfGroup="_0" Color="#F4FA58"><Coordinates>
    <Coordinate Order="2" X="10" Y="20" /><Coordinate Order="0" X="0" Y="0" /><Coordinate Order="1" X="10.5" Y="0" />
  </Coordinates></Annotation>
  <Annotation Name="B" Type="Polygon" PartOfGroup="_2" Color="#F4FA58"><Coordinates /></Annotation>
  <Annotation Name="C" Type="Polygon" PartOfGroup="Tumor"><Coordinates /></Annotation>
  <Annotation Name="D" Type="Polygon" PartOfGroup="Exclusion"><Coordinates /></Annotation>
  <Annotation Name="E" Type="Polygon" PartOfGroup="_1"><Coordinates /></Annotation>
  <Annotation Name="F" Type="Polygon" PartOfGroup="Whatever"><Coordinates /></Annotation>
  <Annotation Name="G" Type="Dot" PartOfGroup="Stroma"><Coordinates /></Annotation>
</Annotations></ASAP_Annotations>"""
    items = read_asap(xml)
    assert [i.label_class for i in items] == [
        "tumour",
        "artefact",
        "tumour",
        "artefact",
        "tumour",
        "non-tumour",
        "stroma",
    ]
    assert plain(items[0].geometry) == {
        "type": "Polygon",
        "coordinates": [[[0, 0], [10.5, 0], [10, 20]]],
    }  # by Order
    assert items[6].geometry["type"] == "ASAP Dot"


def test_asap_refuses_entities_and_foreign_xml():
    with pytest.raises(FormatError, match="DOCTYPE"):
        read_asap(b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaa">]><ASAP_Annotations/>')
    with pytest.raises(FormatError, match="root element is <svg>"):
        read_asap(b"<svg></svg>")


def test_qupath_reader_accepts_lists_single_features_and_string_classes(db):
    feature = {
        "type": "Feature",
        "geometry": square(0, 0, 5, 5),
        "properties": {"classification": "Tumor", "name": "n1"},
    }
    (item,) = read_qupath(json.dumps(feature).encode())
    assert (item.name, item.label_class) == ("n1", "tumour")
    items = read_qupath(
        json.dumps(
            [feature, {**feature, "properties": {"classification": {"name": "Stroma"}}}]
        ).encode()
    )
    assert [i.label_class for i in items] == ["tumour", "stroma"]
    with pytest.raises(FormatError, match="not valid JSON"):
        read_qupath(b"{")
    with pytest.raises(FormatError, match="FeatureCollection"):
        read_qupath(b'{"type": "Polygon"}')


def test_dsa_reader_converts_rectangles_and_refuses_open_polylines_by_name(people, case):
    doc = {
        "annotation": {
            "name": "from DSA",
            "elements": [
                {
                    "type": "rectangle",
                    "center": [100, 50, 0],
                    "width": 40,
                    "height": 20,
                    "rotation": 0,
                    "label": {"value": "tumor"},
                },
                {
                    "type": "polyline",
                    "closed": False,
                    "points": [[0, 0, 0], [5, 5, 0]],
                    "group": "Stroma",
                },
                {"type": "point", "center": [1, 1, 0]},
            ],
        }
    }
    items = read_dsa(json.dumps(doc).encode())
    assert items[0].geometry == {
        "type": "Polygon",
        "coordinates": [[[80, 40], [120, 40], [120, 60], [80, 60]]],
    }
    assert items[0].label_class == "tumour" and items[1].label_class == "stroma"
    slide = make_slide(case.nodes.first())
    with pytest.raises(services.ImportRefused) as info:
        services.import_annotations(
            slide=slide,
            user=None,
            items=items,
            file_name="d.json",
            format="dsa",
            default_class="tumour",
        )
    assert len(info.value.problems) == 2
    assert (
        "'DSA polyline (not closed)'" in info.value.problems[0]
        and "'DSA point'" in info.value.problems[1]
    )
    assert not Annotation.objects.exists()


def test_unclassified_polygons_need_a_default_class(case):
    slide = make_slide(case.nodes.first())
    items = read_qupath(
        json.dumps(
            {
                "type": "FeatureCollection",
                "features": [{"type": "Feature", "geometry": square(0, 0, 5, 5), "properties": {}}],
            }
        ).encode()
    )
    with pytest.raises(services.ImportRefused, match="has no class in the file"):
        services.import_annotations(
            slide=slide, user=None, items=items, file_name="q.geojson", format="qupath"
        )
    result = services.import_annotations(
        slide=slide,
        user=None,
        items=items,
        file_name="q.geojson",
        format="qupath",
        default_class="stroma",
    )
    assert result.annotations[0].label_class.key == "stroma"


def test_detect_format():
    assert detect_format("a.xml", b"").name == "asap"
    assert detect_format("a", b'  <?xml version="1.0"?>').name == "asap"
    assert (
        detect_format("a.json", b'{"type": "FeatureCollection", "features": []}').name == "qupath"
    )
    assert detect_format("a.json", b'{"name": "x", "elements": []}').name == "dsa"
    with pytest.raises(FormatError):
        detect_format("a.bin", b"\x00\x01")


def test_import_command(people, case, tmp_path):
    slide = make_slide(case.nodes.first())
    path = tmp_path / "shapes.geojson"
    path.write_text(
        json.dumps(
            {
                "type": "FeatureCollection",
                "features": [
                    {
                        "type": "Feature",
                        "geometry": square(0, 0, 5, 5),
                        "properties": {"classification": {"name": "Tumour"}},
                    }
                ],
            }
        )
    )
    call_command("import_annotations", str(slide.pk), str(path), "--user", "path")
    row = Annotation.objects.get()
    assert row.author == people.pathologist and row.label_class.key == "tumour"
    bad = tmp_path / "bad.geojson"
    bad.write_text(
        json.dumps(
            {
                "type": "FeatureCollection",
                "features": [
                    {
                        "type": "Feature",
                        "geometry": square(0, 0, 5000, 5),
                        "properties": {"classification": "Tumour"},
                    }
                ],
            }
        )
    )
    with pytest.raises(CommandError, match="outside the slide"):
        call_command("import_annotations", str(slide.pk), str(bad), "--format", "qupath")
    with pytest.raises(CommandError, match="unknown slide"):
        call_command("import_annotations", "999999", str(path))
    assert Annotation.objects.count() == 1


ASAP_WITH_PROBLEMS = b"""<?xml version="1.0"?>
<ASAP_Annotations><Annotations>
  <Annotation Name="bowtie" Type="Polygon" PartOfGroup="Tumor"><Coordinates>
    <Coordinate Order="0" X="0" Y="0" /><Coordinate Order="1" X="100" Y="100" />
    <Coordinate Order="2" X="100" Y="0" /><Coordinate Order="3" X="0" Y="100" />
  </Coordinates></Annotation>
  <Annotation Name="slip" Type="Polygon" PartOfGroup="Tumor"><Coordinates>
    <Coordinate Order="0" X="300" Y="300" /><Coordinate Order="1" X="310" Y="320" />
  </Coordinates></Annotation>
  <Annotation Name="fine" Type="Polygon" PartOfGroup="Exclusion"><Coordinates>
    <Coordinate Order="0" X="500" Y="500" /><Coordinate Order="1" X="600" Y="500" /><Coordinate Order="2" X="600" Y="600" />
  </Coordinates></Annotation>
</Annotations></ASAP_Annotations>"""


def test_asap_import_is_strict_unless_repair_is_asked_for(people, case):
    from django.core.files.uploadedfile import SimpleUploadedFile

    from .conftest import client_for

    slide = make_slide(case.nodes.first())
    client = client_for(people.pathologist)
    url = f"/api/slides/{slide.pk}/annotations/import/"
    strict = client.post(url, {"file": SimpleUploadedFile("c16.xml", ASAP_WITH_PROBLEMS)})
    assert strict.status_code == 400
    assert strict.json()["problems"] == [
        "bowtie (#1, Tumor): geometry is not valid: self-intersection at (50, 50)",
        "slip (#2, Tumor): ring 0: fewer than 3 distinct vertices",
    ]
    assert not Annotation.objects.exists()
    repaired = client.post(
        url, {"file": SimpleUploadedFile("c16.xml", ASAP_WITH_PROBLEMS), "repair": "make_valid"}
    )
    assert repaired.status_code == 201, repaired.content
    body = repaired.json()
    assert body["imported"] == 2 and body["polygons_in_file"] == 3 and body["vertices_in_file"] == 9
    assert [(r["name"], r["source_vertex_count"]) for r in body["repaired"]] == [("bowtie", 4)]
    assert [(d["name"], d["vertex_count"]) for d in body["dropped"]] == [("slip", 2)]
    bowtie = Annotation.objects.get(name="bowtie")
    assert bowtie.geometry["type"] == "MultiPolygon" and bowtie.area_px == 5000
    assert bowtie.source_geometry == {
        "type": "Polygon",
        "coordinates": [[[0, 0], [100, 100], [100, 0], [0, 100]]],
    }
    assert Annotation.objects.get(name="fine").label_class.key == "artefact"
    detail = client.get(f"/api/annotations/{bowtie.pk}/").json()
    assert detail["repaired_on_import"] is True
    from audit.models import AuditEvent

    event = AuditEvent.objects.get(action="annotations imported")
    assert (
        event.actor == people.pathologist
        and event.detail["repaired"] == 1
        and event.detail["dropped"] == 1
    )


def test_asap_non_numeric_coordinate_is_named(case):
    xml = ASAP_WITH_PROBLEMS.replace(b'X="600" Y="500"', b'X="6OO" Y="500"')
    with pytest.raises(services.ImportRefused) as info:
        services.import_annotations(
            slide=make_slide(case.nodes.first()),
            user=None,
            items=read_asap(xml),
            file_name="c.xml",
            format="asap",
            repair="make_valid",
        )
    assert info.value.problems == [
        "fine (#3, Exclusion): ring 0: vertex 1 has a non-numeric coordinate '6OO'"
    ]
