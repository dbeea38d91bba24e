"""The MIL attention overlay (issue 8): a MIL model trained for real on generated slides with
tumour outlines; its attention painted over the patch grid of a slide and served as heat-map
tiles. The brightest cells are the patches the prediction API weighs highest; lab scoping; bad
parameters. No mock: real files, real large-image reads, the real training and prediction."""

from __future__ import annotations

import io

import numpy as np
import pytest
from django.test import Client
from PIL import Image

from annotations import services as annotation_services
from clinical.services import save_clinical_record
from inference.heatmaps import colour_table
from inference.jobs import execute_training_run, launch_training
from inference.mil import MIL_ARCHITECTURE
from inference.mil_overlay import ATTENTION_LEVELS, attention_dir, overlay_path, slide_attention
from inference.records import TrainingRun
from slides.ingest import register_slide
from slides.models import Slide
from tests.clinical.test_mil_run import SOURCE, TUMOUR, _slide
from tests.factories import gradient_image, make_case, write_pyramid_tiff

pytestmark = pytest.mark.django_db

#: a second tumour area on the same slide, so the bag spans two separate regions
SECOND = {
    "type": "Polygon",
    "coordinates": [[[380, 20], [460, 20], [460, 100], [380, 100], [380, 20]]],
}


@pytest.fixture
def trained(people, tmp_path, seeded):
    """Eight outlined cases (four N0, four N+), one with a second, unoutlined slide; a MIL model
    trained on them (image only: attention does not depend on clinical data)."""
    cases = []
    for i in range(8):
        positive = i % 2 == 1
        case = make_case(people.lab, f"ATT-{i:03d}", nodes=("core biopsy",))
        slide = _slide(tmp_path, case.nodes.get(), positive=positive, seed=i + 30)
        for geometry in (TUMOUR, SECOND) if i == 1 else (TUMOUR,):
            annotation_services.create_annotation(
                slide=slide, user=people.pathologist, geometry=geometry, label_class="tumour"
            )
        save_clinical_record(
            case=case,
            values={"age": 50 + i},
            positive_nodes=(1 + i % 3) if positive else 0,
            user=people.pathologist,
        )
        cases.append(case)
    bare = write_pyramid_tiff(tmp_path / "bare.tiff", gradient_image(300, 260, seed=99), mpp=0.5)
    register_slide(node=cases[1].nodes.get(), path=bare, synthetic=True)
    run = launch_training(
        dataset_source={**SOURCE, "clinical": False, "max_instances": 64},
        architecture=MIL_ARCHITECTURE,
        recipe={"max_epochs": 3, "batch_size": 2, "n_bootstrap": 0},
        enqueue=False,
    )
    assert execute_training_run(run_id=run.pk) == TrainingRun.Status.SUCCEEDED
    run.refresh_from_db()
    case = cases[1]
    slides = list(Slide.objects.filter(node__case=case).order_by("id"))
    return case, slides, run.model_version


def _client(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def _full_resolution(client: Client, source: dict) -> np.ndarray:
    """The overlay at level-0 resolution: every tile of the top level, stitched (RGBA)."""
    z = source["levels"] - 1
    tw, th = source["tileWidth"], source["tileHeight"]
    out = np.zeros((source["height"], source["width"], 4), np.uint8)
    for ty in range(-(-source["height"] // th)):
        for tx in range(-(-source["width"] // tw)):
            url = source["tileUrl"].format(z=z, x=tx, y=ty)
            answer = client.get(url)
            assert answer.status_code == 200, answer.content
            assert answer["Content-Type"] == "image/png"
            tile = np.asarray(Image.open(io.BytesIO(answer.content)).convert("RGBA"))
            out[ty * th : ty * th + tile.shape[0], tx * tw : tx * tw + tile.shape[1]] = tile
    return out


def test_the_brightest_cells_are_the_patches_the_model_attends_to_most(trained, people):
    case, (slide, bare), version = trained
    client = _client(people.pathologist)
    prediction = client.get(f"/api/cases/{case.pk}/mil-prediction/?model_version={version.pk}")
    assert prediction.status_code == 200, prediction.content
    attention = prediction.json()["attention"]  # highest weight first
    assert len(attention) > 16  # two outlined areas

    answer = client.get(f"/api/slides/{slide.pk}/mil-attention/?model_version={version.pk}")
    assert answer.status_code == 200, answer.content
    source = answer.json()
    assert source["patches"] == source["casePatches"] == len(attention)
    assert source["modelVersion"]["id"] == version.pk and source["case"] == case.pk
    best = attention[0]
    assert source["top"] == {k: best[k] for k in ("x", "y", "size", "weight")}
    assert source["maxWeight"] == pytest.approx(best["weight"])
    assert "storage" not in str(source)  # no file path leaks

    image = _full_resolution(client, source)
    table = colour_table(ATTENTION_LEVELS)
    brightest = table[ATTENTION_LEVELS]
    painted = np.zeros(image.shape[:2], bool)
    shown = []
    for a in attention:
        cell = image[a["y"] : a["y"] + a["size"], a["x"] : a["x"] + a["size"]]
        assert (cell == cell[0, 0]).all(), "a patch is painted in one colour"
        painted[a["y"] : a["y"] + a["size"], a["x"] : a["x"] + a["size"]] = True
        shown.append(cell[0, 0])
        expected = max(1, round(ATTENTION_LEVELS * a["weight"] / best["weight"]))
        assert (cell[0, 0] == table[expected]).all()
    # the most-attended patch is painted in the brightest colour, and only patches that match it
    assert (shown[0] == brightest).all()
    top_cells = [a for a, rgba in zip(attention, shown, strict=True) if (rgba == brightest).all()]
    assert all(a["weight"] >= 0.998 * best["weight"] for a in top_cells)
    # alpha and the colour table's position never rise as the weight falls
    levels = [int(np.flatnonzero((table == rgba).all(axis=1))[0]) for rgba in shown]
    assert levels == sorted(levels, reverse=True) and levels[0] == ATTENTION_LEVELS
    assert len(set(levels)) > 3  # weights differ, and the overlay shows it
    assert (image[~painted][:, 3] == 0).all(), "transparent where the bag has no patch"

    # zoomed right out, the whole slide in one tile: the brightest patch still shows
    overview = client.get(source["tileUrl"].format(z=0, x=0, y=0))
    pixels = np.asarray(Image.open(io.BytesIO(overview.content)).convert("RGBA")).reshape(-1, 4)
    assert (pixels == brightest).all(axis=1).any()

    # a slide of the case without outlines: nothing to paint, every pixel transparent
    other = client.get(f"/api/slides/{bare.pk}/mil-attention/?model_version={version.pk}").json()
    assert other["patches"] == 0 and other["top"] is None and other["casePatches"] == len(attention)
    assert (_full_resolution(client, other)[..., 3] == 0).all()


def test_rasters_are_cached_per_model_and_outline_and_written_whole(trained, people):
    case, (slide, bare), version = trained
    first = slide_attention(slide=slide, version_id=version.pk)
    assert not first.cached
    folder = attention_dir() / f"version-{version.pk}"
    names = sorted(p.name for p in folder.iterdir())
    assert names == sorted(
        overlay_path(version_id=version.pk, slide_id=s.pk, bag_key=first.bag_key).name
        for s in (slide, bare)
    ), "every slide of the case in one go, no temporary file left"
    again = slide_attention(slide=bare, version_id=version.pk)
    assert again.cached and again.bag_key == first.bag_key
    # the default model is the case page's (the only MIL model: the newest)
    assert slide_attention(slide=slide).version_id == version.pk
    # an edited outline is a new bag: a new raster, never the stale one
    annotation_services.create_annotation(
        slide=slide,
        user=people.pathologist,
        geometry={
            "type": "Polygon",
            "coordinates": [[[20, 300], [90, 300], [90, 390], [20, 390], [20, 300]]],
        },
        label_class="tumour",
    )
    edited = slide_attention(slide=slide, version_id=version.pk)
    assert edited.bag_key != first.bag_key and not edited.cached
    assert edited.patches > first.patches


def test_tiles_answer_304_to_their_etag(trained, people):
    _, (slide, _), version = trained
    client = _client(people.pathologist)
    source = client.get(f"/api/slides/{slide.pk}/mil-attention/?model_version={version.pk}").json()
    url = source["tileUrl"].format(z=0, x=0, y=0)
    first = client.get(url)
    assert first.status_code == 200 and first["ETag"]
    assert client.get(url, HTTP_IF_NONE_MATCH=first["ETag"]).status_code == 304


def test_other_labs_get_404_and_anonymous_users_are_refused(trained, people):
    _, (slide, _), version = trained
    client = _client(people.pathologist)
    source = client.get(f"/api/slides/{slide.pk}/mil-attention/?model_version={version.pk}").json()
    tile = source["tileUrl"].format(z=0, x=0, y=0)
    outsider = _client(people.outsider)
    assert outsider.get(f"/api/slides/{slide.pk}/mil-attention/").status_code == 404
    assert outsider.get(tile).status_code == 404
    anonymous = Client()
    assert anonymous.get(f"/api/slides/{slide.pk}/mil-attention/").status_code in (401, 403)
    assert anonymous.get(tile).status_code in (401, 403)
    assert anonymous.get(tile).get("Content-Type") != "image/png"


def test_bad_parameters_are_400s_naming_the_parameter(trained, people):
    _, (slide, _), version = trained
    client = _client(people.pathologist)
    base = f"/api/slides/{slide.pk}/mil-attention/"
    for bad in ("abc", "-3", "0", "99999999999"):
        answer = client.get(f"{base}?model_version={bad}")
        assert answer.status_code == 400 and "model_version" in answer.json(), bad
    missing = client.get(f"{base}?model_version=99999")
    assert missing.status_code == 400
    assert missing.json() == {"model_version": ["no MIL model version 99999"]}
    tiles = f"{base}tiles/0/0/0.png"
    assert "model_version" in client.get(f"{tiles}?bag=0123456789abcdef").json()
    assert "bag" in client.get(f"{tiles}?model_version={version.pk}").json()
    assert "bag" in client.get(f"{tiles}?model_version={version.pk}&bag=../../etc").json()
    never = client.get(f"{tiles}?model_version={version.pk}&bag=0123456789abcdef")
    assert never.status_code == 404
    source = client.get(f"{base}?model_version={version.pk}").json()
    outside = source["tileUrl"].format(z=source["levels"] + 3, x=0, y=0)
    assert client.get(outside).status_code == 404


def test_a_case_without_outlines_gets_a_409_with_the_reason(trained, people, tmp_path):
    _, _, version = trained
    bare_case = make_case(people.lab, "ATT-BARE", nodes=("core biopsy",))
    path = write_pyramid_tiff(tmp_path / "bare2.tiff", gradient_image(200, 200, seed=5), mpp=0.5)
    slide = register_slide(node=bare_case.nodes.get(), path=path, synthetic=True)
    answer = _client(people.pathologist).get(
        f"/api/slides/{slide.pk}/mil-attention/?model_version={version.pk}"
    )
    assert answer.status_code == 409 and "outline the cancer areas" in answer.json()["detail"]


def test_the_case_page_links_to_the_viewer_with_the_attention_overlay(trained, people):
    case, (slide, _), version = trained
    page = _client(people.pathologist).get(f"/cases/{case.pk}/")
    assert page.status_code == 200
    assert f"attention={version.pk}".encode() in page.content
    viewer = _client(people.pathologist).get(f"/slides/{slide.pk}/view/?attention={version.pk}")
    assert viewer.status_code == 200
