"""Geometry validation: every refusal names its problem; nothing is silently repaired."""

from __future__ import annotations

import math

import pytest

from annotations.geometry import (
    MAX_VERTICES,
    InvalidAnnotation,
    repair_geometry,
    validate_geometry,
    vertex_count,
)

from .conftest import square

W, H = 1000, 700


def refused(geometry, **kwargs) -> str:
    with pytest.raises(InvalidAnnotation) as info:
        validate_geometry(geometry, width=W, height=H, **kwargs)
    return str(info.value)


def test_a_clean_polygon_with_a_hole_is_accepted_and_measured():
    geometry = {
        "type": "Polygon",
        "coordinates": [
            [[100, 100], [300, 100], [300, 300], [100, 300]],  # unclosed, as ASAP writes rings
            [[150, 150], [200, 150], [200, 200], [150, 200], [150, 150]],
        ],
    }
    checked = validate_geometry(geometry, width=W, height=H)
    assert checked.bounds == (100, 100, 300, 300)
    assert checked.area == 200 * 200 - 50 * 50
    assert checked.vertex_count == 8
    assert checked.geojson["coordinates"][0][-1] == [100, 100]  # closed, integers kept as integers
    assert vertex_count(checked.geojson) == 8


def test_multipolygon_is_accepted():
    geometry = {
        "type": "MultiPolygon",
        "coordinates": [square(0, 0, 10, 10)["coordinates"], square(20, 20, 30, 30)["coordinates"]],
    }
    checked = validate_geometry(geometry, width=W, height=H)
    assert (
        checked.area == 200
        and checked.vertex_count == 8
        and checked.geojson["type"] == "MultiPolygon"
    )


def test_self_intersection_is_named_with_its_location_and_not_repaired():
    bowtie = {"type": "Polygon", "coordinates": [[[0, 0], [100, 100], [100, 0], [0, 100], [0, 0]]]}
    message = refused(bowtie)
    assert "self-intersection at (50, 50)" in message


def test_ring_touching_itself_is_refused():
    figure = {
        "type": "Polygon",
        "coordinates": [[[0, 0], [10, 0], [10, 10], [5, 0], [0, 10], [0, 0]]],
    }
    assert "self-intersection at (5, 0)" in refused(figure)


def test_hole_outside_its_shell_is_refused():
    geometry = {
        "type": "Polygon",
        "coordinates": [
            square(0, 0, 10, 10)["coordinates"][0],
            square(20, 20, 30, 30)["coordinates"][0],
        ],
    }
    assert "hole lies outside shell" in refused(geometry)


def test_fewer_than_three_distinct_vertices():
    assert "ring 0: fewer than 3 distinct vertices" in refused(
        {"type": "Polygon", "coordinates": [[[1, 1], [5, 5]]]}
    )
    repeated = {"type": "Polygon", "coordinates": [[[1, 1], [5, 5], [1, 1], [5, 5], [1, 1]]]}
    assert "fewer than 3 distinct vertices" in refused(repeated)


def test_zero_area_is_refused():
    line = {"type": "Polygon", "coordinates": [[[0, 0], [10, 10], [20, 20], [0, 0]]]}
    assert refused(line) == "outer ring has zero area"


def test_coordinates_outside_the_slide_are_refused_with_the_vertex():
    assert (
        refused(square(900, 600, 1001, 650))
        == "vertex (1001, 600) lies outside the slide (0..1000 × 0..700 px)"
    )
    assert "vertex (-0.5, 10) lies outside" in refused(square(-0.5, 10, 20, 20))
    assert "outside the slide" in refused(square(10, 10, 20, 700.25))
    validate_geometry(square(0, 0, W, H), width=W, height=H)  # the slide's own edge is inside


def test_too_many_vertices():
    n = MAX_VERTICES + 1
    ring = [
        [500 + 300 * math.cos(2 * math.pi * i / n), 350 + 300 * math.sin(2 * math.pi * i / n)]
        for i in range(n)
    ]
    assert "geometry has 200,001 vertices; at most 200,000 are allowed" in refused(
        {"type": "Polygon", "coordinates": [ring]}
    )
    assert "at most 3 are allowed" in refused(square(0, 0, 10, 10), max_vertices=3)


@pytest.mark.parametrize(
    ("geometry", "expected"),
    [
        (
            {"type": "LineString", "coordinates": [[0, 0], [1, 1]]},
            "geometry type must be Polygon or MultiPolygon, got 'LineString'",
        ),
        ({"type": "Point", "coordinates": [0, 0]}, "got 'Point'"),
        ([[0, 0], [1, 0], [1, 1]], "must be a GeoJSON object"),
        ({"type": "Polygon"}, "Polygon needs a non-empty list of coordinates"),
        (
            {"type": "Polygon", "coordinates": [[[0, 0], [10, "0"], [10, 10]]]},
            "vertex 1 has a non-numeric coordinate '0'",
        ),
        (
            {"type": "Polygon", "coordinates": [[[0, 0], [10, None], [10, 10]]]},
            "vertex 1 has a non-numeric coordinate None",
        ),
        (
            {"type": "Polygon", "coordinates": [[[0, 0], [10, 0, 1, 1], [10, 10]]]},
            "vertex 1 must be an [x, y] pair",
        ),
        (
            {"type": "Polygon", "coordinates": [[[0, 0], [10, 0], [10, float("nan")]]]},
            "vertex 2 has a NaN or infinite coordinate",
        ),
        (
            {"type": "Polygon", "coordinates": [[[0, 0], [float("inf"), 0], [10, 10]]]},
            "vertex 1 has a NaN or infinite coordinate",
        ),
        (
            {"type": "Polygon", "coordinates": [[[0, 0], [True, 0], [10, 10]]]},
            "non-numeric coordinate True",
        ),
    ],
)
def test_wrong_types_and_bad_numbers(geometry, expected):
    assert expected in refused(geometry)


def test_repair_is_explicit_and_keeps_the_union_of_a_crossing_outline():
    bowtie = {"type": "Polygon", "coordinates": [[[0, 0], [100, 100], [100, 0], [0, 100], [0, 0]]]}
    checked, repaired = repair_geometry(bowtie, width=W, height=H)
    assert repaired and checked.geojson["type"] == "MultiPolygon"
    assert checked.area == pytest.approx(5000)  # both lobes kept
    clean, was_repaired = repair_geometry(square(0, 0, 10, 10), width=W, height=H)
    assert not was_repaired and clean.area == 100
    with pytest.raises(InvalidAnnotation, match="fewer than 3 distinct"):
        repair_geometry({"type": "Polygon", "coordinates": [[[1, 1], [5, 5]]]}, width=W, height=H)
    with pytest.raises(InvalidAnnotation, match="outside the slide"):
        repair_geometry(square(0, 0, 2000, 10), width=W, height=H)
