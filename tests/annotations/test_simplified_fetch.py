"""`?simplify=<px>` on the viewport list: outlines simplified for a zoomed-out view, never stored.

A detailed outline (a wobbly circle of 2,000 vertices, like a CAMELYON16 ASAP outline) comes back
with far fewer vertices, valid, marked `simplified`, with the stored `vertex_count`; the row in
the database is untouched; small and tiny polygons still come back; bad values are 400 naming the
parameter; without it the response is exactly as before; access rules are those of the list.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import shapely
from shapely.geometry import shape

from annotations import services
from annotations.geometry import vertex_count
from annotations.models import Annotation

from .conftest import client_for, make_slide, square


def wobbly_circle(cx: float, cy: float, r: float, n: int = 2000, seed: int = 0) -> dict:
    """A closed outline of `n` integer vertices within ±3 px of a circle (a hand-drawn outline)."""
    rng = np.random.default_rng(seed)
    t = np.linspace(0, 2 * math.pi, n, endpoint=False)
    radius = r + rng.integers(-3, 4, n)
    ring = np.column_stack([cx + radius * np.cos(t), cy + radius * np.sin(t)]).round()
    ring = ring.astype(int).tolist()
    return {"type": "Polygon", "coordinates": [[*ring, ring[0]]]}


@pytest.fixture
def big_slide(case):
    return make_slide(case.nodes.first(), width=20_000, height=20_000)


@pytest.fixture
def outlines(people, big_slide, label_classes) -> dict[str, Annotation]:
    """A detailed outline, one with a hole, a small square and a polygon smaller than 4 px."""
    create = services.create_annotation
    detailed = wobbly_circle(5000, 5000, 2000)
    ring = wobbly_circle(12000, 12000, 3000, seed=1)["coordinates"][0]
    hole = wobbly_circle(12000, 12000, 1000, n=800, seed=2)["coordinates"][0][::-1]
    user = people.pathologist
    return {
        "detailed": create(slide=big_slide, user=user, geometry=detailed, label_class="tumour"),
        "holed": create(
            slide=big_slide,
            user=user,
            geometry={"type": "Polygon", "coordinates": [ring, hole]},
            label_class="tumour",
        ),
        "square": create(
            slide=big_slide, user=user, geometry=square(100, 100, 300, 300), label_class="sinus"
        ),
        "tiny": create(
            slide=big_slide,
            user=user,
            geometry={
                "type": "Polygon",
                "coordinates": [[[900, 900], [902, 900], [903, 901], [902, 903], [900, 902]]],
            },
            label_class="ink",
        ),
    }


def listed(client, slide, query: str = "") -> dict:
    response = client.get(f"/api/slides/{slide.pk}/annotations/?bbox=0,0,20000,20000{query}")
    assert response.status_code == 200, response.content
    return {row["id"]: row for row in response.json()["results"]}


def test_simplify_sends_fewer_vertices_valid_and_marked(people, big_slide, outlines):
    rows = listed(client_for(people.pathologist), big_slide, "&simplify=16")
    assert set(rows) == {a.pk for a in outlines.values()}, "nothing disappears from view"
    for key in ("detailed", "holed"):
        stored, row = outlines[key], rows[outlines[key].pk]
        sent = shape(row["geometry"])
        assert row["simplified"] is True
        assert row["vertex_count"] == stored.vertex_count  # the stored count, as before
        assert vertex_count(row["geometry"]) < stored.vertex_count / 5
        assert sent.is_valid and not sent.is_empty
        # Within the tolerance of the stored outline, holes kept.
        assert shape(stored.geometry).hausdorff_distance(sent) <= 16
        assert len(sent.interiors) == len(shape(stored.geometry).interiors)
        # Its vertices are stored vertices: a subset, nothing invented.
        stored_points = {tuple(p) for ring in stored.geometry["coordinates"] for p in ring}
        assert {tuple(p) for ring in row["geometry"]["coordinates"] for p in ring} <= stored_points
    # A square has nothing to drop: sent as stored and marked so.
    square_row = rows[outlines["square"].pk]
    assert square_row["simplified"] is False
    assert square_row["geometry"] == outlines["square"].geometry
    # A polygon smaller than the tolerance still comes back, as a valid outline with area.
    tiny = rows[outlines["tiny"].pk]
    assert shape(tiny["geometry"]).is_valid and shape(tiny["geometry"]).area > 0
    assert shapely.box(899, 899, 904, 904).contains(shape(tiny["geometry"]))


def test_simplify_changes_nothing_stored(people, big_slide, outlines):
    before = {
        a.pk: (a.geometry, a.vertex_count, a.version, a.history.count()) for a in outlines.values()
    }
    listed(client_for(people.pathologist), big_slide, "&simplify=64")
    for annotation in Annotation.objects.filter(pk__in=before):
        assert (
            annotation.geometry,
            annotation.vertex_count,
            annotation.version,
            annotation.history.count(),
        ) == before[annotation.pk]
    # The single-annotation endpoint (what editing starts from) gives the full outline.
    full = client_for(people.pathologist).get(f"/api/annotations/{outlines['detailed'].pk}/")
    assert full.json()["geometry"] == outlines["detailed"].geometry
    assert "simplified" not in full.json()


def test_without_simplify_the_response_is_unchanged(people, big_slide, outlines):
    client = client_for(people.pathologist)
    url = f"/api/slides/{big_slide.pk}/annotations/?bbox=0,0,20000,20000"
    response = client.get(url)
    from annotations.serializers import AnnotationSerializer

    rows = Annotation.objects.filter(pk__in=[a.pk for a in outlines.values()]).order_by("id")
    assert response.json()["results"] == AnnotationSerializer(rows, many=True).data
    assert all("simplified" not in row for row in response.json()["results"])
    assert response.json()["results"][0]["geometry"] == outlines["detailed"].geometry


@pytest.mark.parametrize(
    "value", ["", "0", "-4", "nan", "inf", "-inf", "1e999", "abc", "4,4", "0x10", "²"]
)
def test_bad_simplify_is_400_naming_the_parameter(people, big_slide, outlines, value):
    response = client_for(people.pathologist).get(
        f"/api/slides/{big_slide.pk}/annotations/", {"bbox": "0,0,100,100", "simplify": value}
    )
    assert response.status_code == 400, (value, response.content)
    assert list(response.json()) == ["simplify"]
    assert "simplify" in response.json()["simplify"][0]


def test_simplify_follows_the_list_access_rules(people, big_slide, outlines):
    url = f"/api/slides/{big_slide.pk}/annotations/?simplify=8"
    assert client_for(people.outsider).get(url).status_code == 404
    from django.test import Client

    assert Client().get(url).status_code in (401, 403)
    for user in (people.lab_lead, people.admin):
        assert client_for(user).get(url).status_code == 200


def test_simplify_pages_and_filters_like_the_list(people, big_slide, outlines):
    client = client_for(people.pathologist)
    page = client.get(
        f"/api/slides/{big_slide.pk}/annotations/?simplify=8&limit=1&class=tumour"
    ).json()
    assert [r["id"] for r in page["results"]] == [outlines["detailed"].pk]
    assert page["next"] and "simplify=8" in page["next"]
    second = client.get(page["next"]).json()
    assert [r["id"] for r in second["results"]] == [outlines["holed"].pk]
    assert second["results"][0]["simplified"] is True
    # A deleted outline is listed with ?deleted=1 only, simplified too.
    services.delete_annotation(
        annotation=outlines["detailed"], user=people.pathologist, expected_version=1
    )
    live = listed(client, big_slide, "&simplify=8")
    assert outlines["detailed"].pk not in live
    everything = listed(client, big_slide, "&simplify=8&deleted=1")
    assert everything[outlines["detailed"].pk]["simplified"] is True


def _selects_geometry(queries) -> list[str]:
    """The SQL of `queries` that read the stored outline column of annotations."""
    return [q["sql"] for q in queries if '"geometry"' in q["sql"] and "SELECT" in q["sql"]]


def test_zoomed_out_views_read_no_stored_outline_once_cached(people, big_slide, outlines):
    """The stored outlines (reading and parsing them is what a zoomed-out fetch costs) are read
    once, in one query, and then come from the outline cache: the same answer without touching
    them; the queries do not grow with the rows (no query per row)."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    client = client_for(people.pathologist)
    with CaptureQueriesContext(connection) as first:
        cold = listed(client, big_slide, "&simplify=32")
    assert len(_selects_geometry(first.captured_queries)) == 1
    with CaptureQueriesContext(connection) as second:
        warm = listed(client, big_slide, "&simplify=32")
    assert warm == cold
    assert _selects_geometry(second.captured_queries) == []
    # twice the rows, the same number of queries
    for i in range(4):
        services.create_annotation(
            slide=big_slide,
            user=people.pathologist,
            geometry=wobbly_circle(3000 + 3000 * i, 16000, 800, n=600, seed=10 + i),
            label_class="tumour",
        )
    with CaptureQueriesContext(connection) as more:
        assert len(listed(client, big_slide, "&simplify=32")) == 8
    assert len(more.captured_queries) == len(first.captured_queries)


def test_an_edit_is_drawn_at_once_not_a_cached_outline(people, big_slide, outlines):
    client = client_for(people.pathologist)
    detailed = outlines["detailed"]
    before = listed(client, big_slide, "&simplify=16")[detailed.pk]
    moved = wobbly_circle(9000, 4000, 1500, seed=5)
    response = client.patch(
        f"/api/annotations/{detailed.pk}/",
        {"version": detailed.version, "geometry": moved},
        content_type="application/json",
    )
    assert response.status_code == 200, response.content
    after = listed(client, big_slide, "&simplify=16")[detailed.pk]
    assert after["version"] == before["version"] + 1
    assert shape(after["geometry"]).hausdorff_distance(shape(moved)) <= 16
    assert shape(after["geometry"]).distance(shape(before["geometry"])) > 0  # elsewhere now


def test_outlines_on_the_viewports_edge_are_tested_exactly(people, big_slide, label_classes):
    """An L-shape whose box meets the viewport but whose outline does not is left out, as
    without simplify; one that reaches in is kept. With simplify the test is made on the outline
    sent (within the tolerance of the stored one), from the cache the second time."""
    ell = {
        "type": "Polygon",
        "coordinates": [
            [[0, 0], [4000, 0], [4000, 500], [500, 500], [500, 4000], [0, 4000], [0, 0]]
        ],
    }
    inside = wobbly_circle(3000, 3000, 300, n=400, seed=7)
    for geometry in (ell, inside):
        services.create_annotation(
            slide=big_slide, user=people.pathologist, geometry=geometry, label_class="tumour"
        )
    client = client_for(people.pathologist)
    url = f"/api/slides/{big_slide.pk}/annotations/?bbox=1000,1000,3600,3600"
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    for query in ("", "&simplify=8", "&simplify=8"):  # the last one from the outline cache
        with CaptureQueriesContext(connection) as queries:
            rows = client.get(url + query).json()["results"]
        assert [vertex_count(r["geometry"]) > 0 for r in rows] == [True]
        assert rows[0]["vertex_count"] == 400
    assert _selects_geometry(queries.captured_queries) == []  # the edge test too, from the cache


def test_rows_changed_or_removed_between_the_two_reads_are_not_cached_or_sent(
    people, big_slide, outlines
):
    """The page is read first, the stored outlines second: an outline edited in between is drawn
    as it now is but not cached under the version the page saw, and a row removed in between
    is left out (no error)."""
    from django.core.cache import cache

    page = list(
        services.viewport_queryset(slide=big_slide, bbox=(0, 0, 20000, 20000)).defer("geometry")
    )
    detailed, square_row = outlines["detailed"], outlines["square"]
    moved = wobbly_circle(9000, 4000, 1500, seed=6)
    services.update_annotation(
        annotation=Annotation.objects.get(pk=detailed.pk),
        user=people.pathologist,
        expected_version=detailed.version,
        geometry=moved,
    )
    Annotation.objects.filter(pk=square_row.pk).delete()
    rows, drawn = services.view_outlines(page, bbox=(0, 0, 20000, 20000), tolerance=16)
    assert square_row.pk not in {a.pk for a in rows} and square_row.pk not in drawn
    assert shape(drawn[detailed.pk].geometry).hausdorff_distance(shape(moved)) <= 16
    stale = next(a for a in page if a.pk == detailed.pk)
    assert cache.get(services.outline_cache_key(stale, 16)) is None
    holed = next(a for a in page if a.pk == outlines["holed"].pk)
    assert cache.get(services.outline_cache_key(holed, 16))["simplified"] is True
