"""Tile, thumbnail and associated-image endpoints through the full Django stack."""

from __future__ import annotations

import io

import numpy as np
import pytest
from django.test import Client
from django.urls import reverse
from PIL import Image
from rest_framework.authtoken.models import Token

from slides import tiles
from slides.ingest import register_slide
from tests.conftest import CMU_DIR, needs_shared_data


@pytest.fixture
def slide(case, tiny_tiff):
    return register_slide(node=case.nodes.first(), path=tiny_tiff)


def _client(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def _tile_url(slide, z, x, y) -> str:
    return reverse("slide-tile", args=[slide.pk, z, x, y])


def test_tile_is_jpeg_of_the_right_size(people, slide):
    client = _client(people.pathologist)
    # 1000 x 700 at 256 px tiles: full resolution z=2 has 4 x 3 tiles; the last is cropped.
    response = client.get(_tile_url(slide, 2, 0, 0))
    assert response.status_code == 200
    assert response["Content-Type"] == "image/jpeg"
    assert Image.open(io.BytesIO(response.content)).size == (256, 256)
    edge = client.get(_tile_url(slide, 2, 3, 2))
    assert Image.open(io.BytesIO(edge.content)).size == (1000 - 3 * 256, 700 - 2 * 256)
    top = client.get(_tile_url(slide, 0, 0, 0))
    assert Image.open(io.BytesIO(top.content)).size == (250, 175)
    assert "private" in response["Cache-Control"] and "max-age" in response["Cache-Control"]


def test_tile_pixels_match_the_slide(people, slide, tiny_tiff):
    import tifffile

    level0 = tifffile.imread(tiny_tiff, level=0)
    data = _client(people.pathologist).get(_tile_url(slide, 2, 1, 1)).content
    tile = np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(float)
    expected = level0[256:512, 256:512].astype(float)
    assert np.abs(tile - expected).mean() < 4  # JPEG round trip only


def test_etag_and_304(people, slide):
    client = _client(people.pathologist)
    first = client.get(_tile_url(slide, 1, 0, 0))
    etag = first["ETag"]
    assert etag
    again = client.get(_tile_url(slide, 1, 0, 0), HTTP_IF_NONE_MATCH=etag)
    assert again.status_code == 304
    assert again.content == b""
    other = client.get(_tile_url(slide, 1, 1, 0), HTTP_IF_NONE_MATCH=etag)
    assert other.status_code == 200


def test_tiles_need_login(slide):
    response = Client().get(_tile_url(slide, 0, 0, 0))
    assert response.status_code in (302, 403)
    page = Client().get(reverse("slide-viewer", args=[slide.pk]))
    assert page.status_code == 302 and page["Location"].startswith(reverse("login"))


def test_token_authentication_for_tiles(people, slide):
    token = Token.objects.create(user=people.pathologist)
    response = Client().get(_tile_url(slide, 0, 0, 0), HTTP_AUTHORIZATION=f"Token {token.key}")
    assert response.status_code == 200
    bad = Client().get(_tile_url(slide, 0, 0, 0), HTTP_AUTHORIZATION="Token nope")
    assert bad.status_code == 403


@pytest.mark.parametrize(("z", "x", "y"), [(3, 0, 0), (2, 4, 0), (2, 0, 3), (0, 1, 0)])
def test_tile_outside_pyramid_is_404(people, slide, z, x, y):
    assert _client(people.pathologist).get(_tile_url(slide, z, x, y)).status_code == 404


def test_outsider_cannot_see_tiles_or_thumbnails(people, slide):
    client = _client(people.outsider)
    assert client.get(_tile_url(slide, 0, 0, 0)).status_code == 404
    assert client.get(reverse("slide-thumbnail", args=[slide.pk])).status_code == 404
    assert client.get(reverse("slide-tilesource", args=[slide.pk])).status_code == 404


def test_encoded_tiles_are_cached(people, slide):
    from django.core.cache import caches

    client = _client(people.pathologist)
    client.get(_tile_url(slide, 2, 1, 1))
    cached = caches["tiles"].get(f"tile:{slide.checksum[:24]}:2:1:1")
    assert cached is not None and cached[:2] == b"\xff\xd8"
    # A second request is served from the cache even if the file vanishes.
    tiles.source_cache.clear()
    slide_path = slide.file_path
    import os

    os.rename(slide_path, slide_path + ".moved")
    try:
        assert client.get(_tile_url(slide, 2, 1, 1)).content == cached
    finally:
        os.rename(slide_path + ".moved", slide_path)


def test_tilesource_and_thumbnail(people, slide):
    client = _client(people.pathologist)
    meta = client.get(reverse("slide-tilesource", args=[slide.pk])).json()
    assert (
        meta["width"] == 1000
        and meta["levels"] == 3
        and meta["mpp"] == pytest.approx(0.5, rel=1e-3)
    )
    assert meta["tileUrl"].endswith("/tiles/{z}/{x}/{y}.jpg")
    thumb = client.get(reverse("slide-thumbnail", args=[slide.pk]) + "?size=128")
    assert thumb.status_code == 200
    assert max(Image.open(io.BytesIO(thumb.content)).size) == 128
    assert client.get(reverse("slide-thumbnail", args=[slide.pk]) + "?size=big").status_code == 400


@needs_shared_data
def test_native_jpeg_tiles_pass_through_and_label_is_admin_only(people, case):
    svs = register_slide(node=case.nodes.first(), path=CMU_DIR / "CMU-1-Small-Region.svs")
    tiff = register_slide(node=case.nodes.last(), path=CMU_DIR / "CMU-1-Small-Region.pyramid.tiff")
    client = _client(people.pathologist)
    # Interior tile of the tiled TIFF at full resolution: the stored JPEG, byte for byte.
    import tifffile

    with tifffile.TiffFile(CMU_DIR / "CMU-1-Small-Region.pyramid.tiff") as tf:
        page = tf.pages[0]
        stored = tf.filehandle
        stored.seek(page.dataoffsets[0])
        raw = stored.read(page.databytecounts[0])
    served = client.get(_tile_url(tiff, tiff.levels - 1, 0, 0)).content
    assert served == raw
    # Aperio stores abbreviated RGB JPEG: tables and an RGB marker are spliced in, and the pixels
    # decode exactly as OpenSlide decodes them.
    z = svs.levels - 1
    served_svs = client.get(_tile_url(svs, z, 2, 3)).content
    with tifffile.TiffFile(CMU_DIR / "CMU-1-Small-Region.svs") as tf:
        page = tf.pages[0]
        index = 3 * (-(-page.imagewidth // 240)) + 2
        tf.filehandle.seek(page.dataoffsets[index])
        stored_scan = tf.filehandle.read(page.databytecounts[index])[2:]
    assert served_svs.endswith(stored_scan)
    decoded = np.asarray(Image.open(io.BytesIO(served_svs)).convert("RGB")).astype(int)
    reference = tiles.source_for(svs).getTile(2, 3, z, numpyAllowed="always")[..., :3].astype(int)
    assert np.abs(decoded - reference).max() <= 1

    label_url = reverse("slide-associated", args=[svs.pk, "label"])
    assert client.get(label_url).status_code == 403
    assert _client(people.lab_lead).get(label_url).status_code == 403
    admin_label = _client(people.admin).get(label_url)
    assert admin_label.status_code == 200 and admin_label["Content-Type"] == "image/jpeg"
    # The slide API hides file paths and associated images from non-admins.
    api = client.get(reverse("slide-detail", args=[svs.pk])).json()
    assert "file_path" not in api and "associated_images" not in api
    api_admin = _client(people.admin).get(reverse("slide-detail", args=[svs.pk])).json()
    assert "label" in api_admin["associated_images"]
