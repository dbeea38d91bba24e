"""Integer query parameters: one strict parser (config/params.py), and no route answers 5xx to them.

The property test walks every route of the URL resolver (admin aside), fills its path parameters
with the ids of existing objects (or, now and then, with an over-long or non-ASCII number), and
GETs it as a lab admin with query parameters named as the code reads them and valued by
Hypothesis: Unicode digits, huge and negative integers, floats, NUL, empty and long strings.
"""

from __future__ import annotations

import re
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from django.http import QueryDict
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from annotations import services as annotation_services
from config.params import INT32_MAX, BadParameter, id_param, int_param, parse_int
from inference.heatmaps import write_raster
from inference.records import HeatMap, ScoringRun
from slides.ingest import register_slide
from studies.models import StudyImage
from tests.review.factories import make_model_version, score_node

ROOT = Path(__file__).resolve().parents[2]
APPS = ("slides", "annotations", "inference", "review", "clinical", "studies", "config", "audit")

# ---- the parser ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    ["١٢٣", "²", "𝟙", "1e3", "1.0", " 1", "1 ", "1\n", "+1", "0x10", "", "--1", "\x00", "1_000"],
)
def test_only_ascii_digits_are_integers(raw):
    with pytest.raises(BadParameter) as caught:
        parse_int(raw, "case")
    assert caught.value.detail == {"case": [caught.value.message]}
    assert "case" in str(caught.value)


def test_bounds_are_named():
    assert parse_int("-12", "x", minimum=-20) == -12
    assert parse_int(str(INT32_MAX), "offset") == INT32_MAX
    assert parse_int("-5", "offset", minimum=0, clamp=True) == 0
    assert parse_int("9" * 99, "offset", maximum=10, clamp=True) == 10
    with pytest.raises(BadParameter, match="offset: must be at most"):
        parse_int(str(INT32_MAX + 1), "offset")
    with pytest.raises(BadParameter, match="between 0 and 10"):
        parse_int("-1", "limit", minimum=0, maximum=10)
    with pytest.raises(BadParameter):
        parse_int("9" * 400, "case")
    assert id_param({"case": str(2**63 - 1)}, "case") == 2**63 - 1
    with pytest.raises(BadParameter):
        id_param({"case": str(2**63)}, "case")
    assert int_param({"offset": ""}, "offset", default=7) == 7
    assert int_param({}, "offset") is None


# ---- the sweep ----------------------------------------------------------------------------------


def _routes(patterns=None, prefix: str = "") -> list[str]:
    out = []
    for p in get_resolver().url_patterns if patterns is None else patterns:
        if isinstance(p, URLResolver):
            out += _routes(p.url_patterns, prefix + str(p.pattern))
        elif isinstance(p, URLPattern):
            out.append(prefix + str(p.pattern))
    return [r for r in dict.fromkeys(out) if not r.startswith(("admin/", "logout/", "login/"))]


def _names_read_by_the_code() -> list[str]:
    """Every name given to int_param / id_param in the project's code, plus the common ones."""
    names = {"case", "node", "slide", "offset", "limit", "page", "x", "y", "level", "z", "size"}
    names |= {"lab", "version", "author", "model_version", "against", "image", "threshold"}
    call = re.compile(r"\b(?:int_param|id_param)\(\s*[^,()]+,\s*\"(\w+)\"")
    for app in APPS:
        for path in (ROOT / app).rglob("*.py"):
            if "migrations" not in path.parts:
                names |= set(call.findall(path.read_text()))
    return sorted(names)


NAMES = _names_read_by_the_code()

NASTY = [
    "١٢٣",  # Arabic-Indic digits: int() accepts them
    "²",  # isdigit() is True, int() refuses it
    "𝟙𝟚",
    "99999999999999999999999",  # overflows a 64-bit database integer
    str(2**31),
    str(2**63),
    "-1",
    "-99999999999999999999",
    "0",
    "1e309",
    "nan",
    "inf",
    "-inf",
    "1.5",
    "",
    "\x00",
    "1\x00",
    "9" * 400,
    "x" * 2000,
    "0x1F",
    " 7 ",
]
values = st.one_of(
    st.sampled_from(NASTY),
    st.integers(min_value=-(2**80), max_value=2**80).map(str),
    st.text(st.characters(categories=["Nd", "No"]), min_size=1, max_size=25),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.text(max_size=40),
)
BAD_PATH_IDS = ["99999999999999999999999", str(2**63), str(2**31), "0", "١٢٣", "²"]


@pytest.fixture
def world(people, case, tiny_tiff, label_classes, settings):
    settings_ = settings
    """One of each object a route can name, in the lab admin's lab."""
    node = case.nodes.first()
    slide = register_slide(node=node, path=tiny_tiff)
    version = make_model_version("sweep-model", threshold=0.5)
    counts = np.zeros((70, 100), np.uint8)
    counts[20:40, 30:60] = 14
    raster = write_raster(
        settings_.RESULTS_DIR / "heatmaps" / "sweep.npz",
        counts=counts,
        denominator=16,
        stride_px=10,
        window_px=40,
    )
    heatmap = HeatMap.objects.create(
        slide=slide,
        model_version=version,
        raster_path=str(raster),
        stride_px=10,
        window_px=40,
        rows=70,
        cols=100,
        max_score=14 / 16,
        max_x=450,
        max_y=300,
    )
    score_node(node, version, 0.9, heatmap=heatmap)
    annotation = annotation_services.create_annotation(
        slide=slide,
        user=people.admin,
        geometry={"type": "Polygon", "coordinates": [[[10, 10], [90, 10], [90, 90], [10, 10]]]},
        label_class="tumour",
    )
    run = ScoringRun.objects.create(model_version=version)
    client = Client()
    client.force_login(people.admin)
    study = client.post(
        "/api/studies/",
        {
            "name": "sweep",
            "lab": people.lab.pk,
            "instructions": "?",
            "images": [slide.pk],
            "readers": [people.pathologist.pk],
            "model_version": version.pk,
        },
        content_type="application/json",
    )
    assert study.status_code == 201, study.content
    study_id = study.json()["id"]
    image = StudyImage.objects.get(study_id=study_id).pk
    ids = {
        "slides": slide.pk,
        "cases": case.pk,
        "nodes": node.pk,
        "annotations": annotation.pk,
        "model-versions": version.pk,
        "models": version.pk,
        "training-runs": version.training_run_id,
        "scoring-runs": run.pk,
        "studies": study_id,
        "labs": people.lab.pk,
    }
    return {"client": client, "ids": ids, "slide": slide.pk, "image": image}


_PARAM = re.compile(r"<(?:(\w+):)?(\w+)>|\(\?P<(\w+)>[^)]*\)")


def _url(route: str, world: dict, bad: str | None) -> str:
    """`route` with its parameters filled; `bad` replaces the first id, if given."""
    text = route.replace("^", "").replace("$", "").replace("\\.", ".").replace("/?", "/")
    done = False

    def fill(match: re.Match) -> str:
        nonlocal done
        converter, name = match.group(1), match.group(2) or match.group(3)
        if name == "format":
            return "json"
        if converter == "slug" or name == "name":
            return "label"
        if bad is not None and not done and converter in (None, "int"):
            done = True
            return bad
        if name in ("z", "x", "y"):
            return "0"
        if name in ("slide_id", "slide_pk"):
            return str(world["slide"])
        if name == "image":
            return str(world["image"])
        if name == "gradcam":
            return "1"
        before = text[: match.start()].rstrip("/").split("/")
        return str(world["ids"].get(before[-1], 1))

    return "/" + _PARAM.sub(fill, text)


ROUTES = _routes()
#: The values every (route, parameter it reads) pair gets, whatever Hypothesis draws besides.
SWEEP = ["²", "١٢٣", "99999999999999999999999", "-1", "nan", "\x00"]
#: Not swept name by name (Hypothesis still visits them): format-suffix twins of other routes, and
#: the OpenAPI schema (slow to build, reads no integer).
SWEPT = [r for r in ROUTES if "(?P<format>" not in r and "<drf_format_suffix" not in r]
SWEPT.remove("api/schema/")


@contextmanager
def names_read(into: set[str]):
    """Record the query parameter names a view reads (through any QueryDict accessor)."""
    originals = {
        attr: getattr(QueryDict, attr) for attr in ("get", "__getitem__", "getlist", "__contains__")
    }

    def spy(attr):
        def read(self, key, *args, **kwargs):
            if not self._mutable:  # a request's query, not one being built
                into.add(key)
            return originals[attr](self, key, *args, **kwargs)

        return read

    for attr in originals:
        setattr(QueryDict, attr, spy(attr))
    try:
        yield into
    finally:
        for attr, original in originals.items():
            setattr(QueryDict, attr, original)


def _get(client: Client, url: str, query: dict) -> int:
    started = time.monotonic()
    response = client.get(url, query)
    assert response.status_code < 500, (url, query, response.status_code)
    assert time.monotonic() - started < 10, ("slow", url, query)
    return response.status_code


@pytest.mark.django_db
def test_the_sweep_covers_the_routes_and_names():
    assert len(ROUTES) > 60
    assert {"case", "offset", "limit", "node"} <= set(NAMES)


@pytest.mark.timeout(300)
def test_no_route_answers_5xx_to_odd_integer_parameters(world):
    """Each route once plain, to learn which query names its view reads; each of those names with
    each SWEEP value; then Hypothesis: any route, names it reads or the common ones, any values."""
    client = world["client"]
    reads: dict[str, set[str]] = {}
    for route in ROUTES:
        url = _url(route, world, None)
        with names_read(set()) as read:
            _get(client, url, {})
            _get(client, url, dict.fromkeys(NAMES, "1"))  # reads past the first missing name
        reads[route] = {n for n in read if isinstance(n, str)} - {"format"}
    assert sum(len(r) for r in reads.values()) > 20, reads
    for route in SWEPT:
        read = reads[route]
        url = _url(route, world, None)
        for name in sorted(read):
            for value in SWEEP:
                _get(client, url, {name: value})

    @settings(
        max_examples=400,
        deadline=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(data=st.data())
    def random_requests(data):
        route = data.draw(st.sampled_from(ROUTES), label="route")
        names = sorted(reads[route] | set(NAMES))
        query = data.draw(
            st.dictionaries(st.sampled_from(names), values, min_size=1, max_size=4), label="query"
        )
        bad = data.draw(st.one_of(st.none(), st.sampled_from(BAD_PATH_IDS)), label="path id")
        _get(client, _url(route, world, bad), query)

    random_requests()


@pytest.mark.parametrize(
    ("url", "name"),
    [
        ("/api/nodes/?case=١٢٣", "case"),
        ("/api/nodes/?case=²", "case"),
        ("/api/nodes/?case=99999999999999999999999", "case"),
        ("/api/slides/?offset=²", "offset"),
        ("/api/cases/?limit=١٠", "limit"),
        ("/api/review/triage/?model_version=١", "model_version"),
        ("/api/cases/{cases}/mil-prediction/?model_version=²", "model_version"),
        ("/api/slides/{slides}/thumbnail.jpg?size=١٢٨", "size"),
    ],
)
def test_bad_integers_are_a_400_naming_the_parameter(world, url, name):
    # the objects' own ids (PostgreSQL does not restart its sequences between tests)
    response = world["client"].get(url.format(**world["ids"]))
    assert response.status_code == 400, response.content
    assert name in response.json()


def test_an_absurd_page_is_an_empty_page(world):
    response = world["client"].get("/api/slides/?offset=99999999999999999999999&limit=10**9")
    assert response.status_code == 400  # "10**9" is not an integer
    response = world["client"].get("/api/slides/?offset=99999999999999999999999&limit=-4")
    assert response.status_code == 200
    assert response.json()["results"] == []


def test_a_page_view_names_the_bad_parameter(world):
    response = world["client"].get("/review/triage/?offset=٣")
    assert response.status_code == 400
    assert b"offset" in response.content


def test_an_over_long_id_in_the_path_is_a_404(world):
    client = world["client"]
    for url in (
        "/api/slides/99999999999999999999999/",
        "/api/annotations/99999999999999999999999/",
        "/cases/99999999999999999999999/",
        "/api/slides/99999999999999999999999/tiles/0/0/0.jpg",
    ):
        assert client.get(url).status_code == 404, url


def test_a_nul_byte_in_any_query_parameter_is_a_400_naming_it(people):
    from django.test import Client

    client = Client()
    client.force_login(people.pathologist)
    api = client.get("/api/cases/", {"accession": "a\x00b"})
    assert api.status_code == 400 and "NUL" in api.json()["accession"][0]
    page = client.get("/", {"q": "\x00"})
    assert page.status_code == 400 and b"NUL" in page.content
