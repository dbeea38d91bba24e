"""Node images (CT, ultrasound, other plain images): import, windowing, refusals, tiles, manifest,
upload and ROI annotations. Files are written at test time (64–512 px)."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from django.test import Client
from django.urls import reverse
from PIL import Image

from annotations.models import Annotation
from slides import node_images
from slides.ingest import SlideImportError, import_manifest
from slides.models import Case, Slide
from slides.node_images import (
    WINDOW_PRESETS,
    apply_window,
    parse_window_query,
    register_node_image,
    render_node_image,
)

from .node_image_files import ct_values, write_dicom, write_jpeg, write_png, write_tiff


@pytest.fixture(autouse=True)
def _fresh_pixel_cache():
    node_images._decoded.clear()
    node_images._rendered.clear()


@pytest.fixture
def node(case):
    return case.nodes.first()


@pytest.fixture
def ct(node, tmp_path) -> Slide:
    return register_node_image(node=node, path=write_dicom(tmp_path / "ct.dcm"), modality="ct")


def _client(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def _pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


# ---- each format -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("writer", "modality", "size", "mpp", "mode"),
    [
        (lambda p: write_png(p / "us.png", size=(96, 64)), "ultrasound", (96, 64), None, "L"),
        (lambda p: write_png(p / "rgb.png", mode="RGB"), "image", (96, 64), None, "RGB"),
        (lambda p: write_png(p / "g16.png", mode="I;16"), "image", (96, 64), None, "L"),
        (lambda p: write_jpeg(p / "us.jpg", size=(80, 48)), "ultrasound", (80, 48), None, "RGB"),
        (lambda p: write_tiff(p / "g8.tif", size=(72, 40)), "image", (72, 40), None, "L"),
        (
            lambda p: write_tiff(p / "c16.tiff", dtype=np.uint16, rgb=True, px_per_cm=5000),
            "image",
            (72, 40),
            2.0,
            "RGB",
        ),
        (lambda p: write_dicom(p / "ct.dcm"), "ct", (64, 64), None, "L"),
    ],
    ids=["png-grey", "png-rgb", "png-16bit", "jpeg", "tiff-8bit", "tiff-16bit-rgb", "dicom"],
)
def test_each_format_imports_with_size_scale_and_modality(
    node, tmp_path, writer, modality, size, mpp, mode
):
    path = writer(tmp_path)
    slide = register_node_image(node=node, path=path, modality=modality)
    slide.refresh_from_db()
    assert (slide.width, slide.height) == size
    assert slide.modality == modality and slide.source == "node-image"
    assert slide.tile_width == slide.tile_height == 256 and slide.levels == 1
    assert slide.is_node_image and slide.associated_images == []
    if modality == "ct":  # PixelSpacing 0.7 mm (rows) × 0.6 mm (columns)
        assert slide.mpp_x == pytest.approx(600) and slide.mpp_y == pytest.approx(700)
        assert (slide.window_center, slide.window_width) == (40, 400)
    elif mpp:
        assert slide.mpp_x == pytest.approx(mpp) and slide.mpp_y == pytest.approx(mpp)
    else:
        assert slide.mpp is None
    image = render_node_image(slide)
    assert image.mode == mode and image.size == size


def test_eight_bit_images_pass_through_unchanged(node, tmp_path):
    path = write_png(tmp_path / "us.png", size=(96, 64))
    slide = register_node_image(node=node, path=path, modality="ultrasound")
    expected = np.asarray(Image.open(path))
    assert np.array_equal(np.asarray(render_node_image(slide)), expected)
    assert np.array_equal(np.asarray(render_node_image(slide, window=(0, 10))), expected)


def test_pyramid_levels_follow_large_image():
    assert node_images.pyramid_levels(64, 64) == 1
    assert node_images.pyramid_levels(256, 256) == 1
    assert node_images.pyramid_levels(257, 100) == 2
    assert node_images.pyramid_levels(512, 300) == 2
    assert node_images.pyramid_levels(1000, 700) == 3


# ---- windowing ---------------------------------------------------------------------------------


def test_hounsfield_units_through_the_window(ct):
    """Stored values are HU + 1024 (RescaleIntercept -1024); a 40/400 window maps HU -160 → 0,
    HU 40 → 128, HU 240 → 255."""
    values, info = node_images.decoded_pixels(ct)
    assert values[0, :4].tolist() == [40, -160, 240, 1000]
    assert values[20, 20] == 40 and values[60, 60] == -1000
    pixels = np.asarray(render_node_image(ct, window=(40, 400)))
    assert pixels[0, :3].tolist() == [128, 0, 255]
    assert pixels[60, 60] == 0 and pixels[0, 3] == 255
    # The default is the slide's own window (from the DICOM header): the same 40/400.
    assert np.array_equal(np.asarray(render_node_image(ct)), pixels)
    # Lung window -600/1500: air (-1000) is above the floor of -1350, HU 40 is bright.
    lung = np.asarray(render_node_image(ct, window=WINDOW_PRESETS["lung"]))
    assert lung[60, 60] == 60 and lung[0, 0] == round(((40 + 600.5) / 1499 + 0.5) * 255)


def test_rescale_slope_and_a_window_from_min_to_max(node, tmp_path):
    hu = ct_values()
    path = write_dicom(tmp_path / "slope.dcm", hu=hu, slope=2.0, intercept=-2048, window=None)
    slide = register_node_image(node=node, path=path, modality="ct")
    assert slide.window_center is None and slide.window_width is None
    values, _info = node_images.decoded_pixels(slide)
    assert np.array_equal(values, hu.astype(np.float32))
    pixels = np.asarray(render_node_image(slide))  # min..max: -1000 → 0, 1000 → 255
    assert pixels.min() == 0 and pixels.max() == 255
    assert pixels[60, 60] == 0 and pixels[0, 3] == 255


def test_apply_window_matches_the_dicom_formula():
    values = np.array([-161, -160, -159.5, 39.5, 40, 239, 239.01, 240], dtype=np.float32)
    out = apply_window(values, 40, 400).tolist()
    assert out[:2] == [0, 0] and out[-1] == 255 and out[-2] == 255
    assert out[4] == 128 and out[3] == 128  # ((x - 39.5) / 399 + 0.5) * 255, rounded
    assert all(a <= b for a, b in zip(out, out[1:], strict=False))


def test_window_query_parsing():
    assert parse_window_query(None, None) == (None, "default")
    assert parse_window_query(None, "lung") == ((-600.0, 1500.0), "-600,1500")
    assert parse_window_query("40,400", None) == ((40.0, 400.0), "40,400")
    for window, preset, message in [
        ("40", None, "two numbers"),
        ("a,b", None, "two numbers"),
        ("40,0", None, "width > 0"),
        ("40,-5", None, "width > 0"),
        ("nan,400", None, "finite"),
        (None, "brain-ish", "unknown window preset 'brain-ish'"),
        ("40,400", "lung", "not both"),
    ]:
        with pytest.raises(ValueError, match=message):
            parse_window_query(window, preset)


# ---- refusals ----------------------------------------------------------------------------------


def _refused(node, path, modality="image", match=""):
    before = Slide.objects.count()
    with pytest.raises(SlideImportError, match=match) as info:
        register_node_image(node=node, path=path, modality=modality)
    assert str(path.name) in str(info.value)
    assert Slide.objects.count() == before
    return info.value


def test_refusals_name_the_file_and_write_nothing(node, tmp_path):
    png = write_png(tmp_path / "cut.png", size=(128, 128), mode="RGB")
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(png.read_bytes()[: png.stat().st_size // 2])
    _refused(node, truncated, match="truncated or corrupt")

    dcm = write_dicom(tmp_path / "whole.dcm")
    short = tmp_path / "short.dcm"
    short.write_bytes(dcm.read_bytes()[:-2000])
    _refused(node, short, "ct", match="truncated or corrupt")

    text = tmp_path / "notes.png"
    text.write_text("not an image at all")
    _refused(node, text, match="not a PNG, JPEG, TIFF or DICOM")

    gif = tmp_path / "anim.gif"
    Image.new("L", (8, 8)).save(gif)
    _refused(node, gif, match="unsupported file type '.gif'")

    _refused(node, tmp_path / "empty.png", match="file not found")
    (tmp_path / "zero.jpg").write_bytes(b"")
    _refused(node, tmp_path / "zero.jpg", match="file is empty")

    multi = write_dicom(tmp_path / "multi.dcm", frames=3)
    _refused(node, multi, "ct", match=r"multi-frame DICOM \(3 frames\)")

    no_pixels = tmp_path / "header.dcm"
    no_pixels.write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00" * 10)
    _refused(node, no_pixels, "ct", match="no Pixel Data")

    _refused(node, write_png(tmp_path / "x.png"), modality="mri", match="unknown modality 'mri'")


def test_decompression_bombs_are_refused_from_headers(node, tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 64 * 64)
    big_png = write_png(tmp_path / "big.png", size=(128, 96))
    _refused(node, big_png, match="decompression bomb refused")
    big_tiff = write_tiff(tmp_path / "big.tif", size=(128, 96))
    _refused(node, big_tiff, match="decompression bomb refused: a TIFF image declaring 128 × 96")
    # A DICOM header that declares 65,535 × 65,535 px over 8 KB of data: refused before decoding.
    bomb = write_dicom(tmp_path / "bomb.dcm", rows_cols=(65535, 65535))
    error = _refused(node, bomb, "ct", match="decompression bomb refused: a DICOM image")
    assert "65,535 × 65,535" in error.reason


def test_compressed_dicom_without_a_decoder_is_refused(node, tmp_path):
    from pydicom.pixels.decoders.base import get_decoder
    from pydicom.uid import JPEGLSLossless

    assert not get_decoder(JPEGLSLossless).is_available  # no JPEG-LS plugin is installed here
    path = write_dicom(tmp_path / "jls.dcm", transfer_syntax=JPEGLSLossless)
    error = _refused(node, path, "ct", match="compressed DICOM transfer syntax JPEG-LS Lossless")
    assert "export uncompressed" in error.reason


def test_duplicates_are_refused_by_checksum(node, ct, tmp_path):
    copy = tmp_path / "copy.dcm"
    copy.write_bytes((tmp_path / "ct.dcm").read_bytes())
    _refused(node, copy, "ct", match=f"already imported as image {ct.pk}")


# ---- tiles and the viewer ----------------------------------------------------------------------


def _tile(client, slide, z=0, x=0, y=0, query=""):
    return client.get(reverse("slide-tile", args=[slide.pk, z, x, y]) + query)


def test_tiles_follow_the_window(people, ct):
    client = _client(people.pathologist)
    default = _tile(client, ct)
    assert default.status_code == 200 and default["Content-Type"] == "image/jpeg"
    soft = _pixels(_tile(client, ct, query="?preset=soft-tissue").content)
    lung = _pixels(_tile(client, ct, query="?preset=lung").content)
    custom = _pixels(_tile(client, ct, query="?window=40,400").content)
    assert soft.shape == (64, 64)
    assert np.abs(soft.astype(int) - custom.astype(int)).max() <= 2  # same window
    assert np.abs(soft.astype(int) - lung.astype(int)).mean() > 20  # another window
    assert abs(int(soft[20, 20]) - 128) <= 3 and abs(int(lung[60, 60]) - 60) <= 4
    assert default["ETag"] != _tile(client, ct, query="?preset=lung")["ETag"]
    again = client.get(
        reverse("slide-tile", args=[ct.pk, 0, 0, 0]) + "?preset=lung",
        HTTP_IF_NONE_MATCH=_tile(client, ct, query="?preset=lung")["ETag"],
    )
    assert again.status_code == 304


def test_bad_window_is_400_naming_it(people, ct):
    client = _client(people.pathologist)
    bad = _tile(client, ct, query="?preset=brain-ish")
    assert bad.status_code == 400 and "brain-ish" in bad.json()["detail"]
    bad = _tile(client, ct, query="?window=40")
    assert bad.status_code == 400 and "'40'" in bad.json()["detail"]
    assert _tile(client, ct, z=1).status_code == 404  # one level only (64 px)


def test_pyramid_of_a_larger_image(people, node, tmp_path):
    path = write_png(tmp_path / "us.png", size=(500, 300))
    slide = register_node_image(node=node, path=path, modality="ultrasound")
    assert slide.levels == 2
    client = _client(people.pathologist)
    assert Image.open(io.BytesIO(_tile(client, slide, 0).content)).size == (250, 150)
    assert Image.open(io.BytesIO(_tile(client, slide, 1, 1, 1).content)).size == (244, 44)
    full = np.asarray(Image.open(path)).astype(int)
    tile = _pixels(_tile(client, slide, 1, 1, 0).content).astype(int)
    assert np.abs(tile - full[:256, 256:]).mean() < 12  # JPEG of noise, same pixels


def test_tile_access(people, ct):
    assert _tile(Client(), ct).status_code in (302, 403)
    page = Client().get(reverse("slide-viewer", args=[ct.pk]))
    assert page.status_code == 302 and page["Location"].startswith(reverse("login"))
    outsider = _client(people.outsider)
    assert _tile(outsider, ct, query="?preset=lung").status_code == 404
    assert outsider.get(reverse("slide-tilesource", args=[ct.pk])).status_code == 404
    assert outsider.get(reverse("slide-thumbnail", args=[ct.pk])).status_code == 404
    assert outsider.get(reverse("slide-viewer", args=[ct.pk])).status_code == 404


def test_tilesource_thumbnail_and_viewer_page(people, ct, node, tmp_path):
    client = _client(people.pathologist)
    info = client.get(reverse("slide-tilesource", args=[ct.pk])).json()
    assert info["modality"] == "ct" and info["windowed"] is True
    assert info["window"] == {"center": 40, "width": 400}
    assert {p["name"] for p in info["windowPresets"]} == set(WINDOW_PRESETS)
    assert (info["width"], info["height"], info["levels"]) == (64, 64, 1)
    thumb = client.get(reverse("slide-thumbnail", args=[ct.pk]) + "?size=32")
    assert thumb.status_code == 200 and Image.open(io.BytesIO(thumb.content)).size == (32, 32)
    page = client.get(reverse("slide-viewer", args=[ct.pk]))
    assert page.status_code == 200 and b"CT \xc2\xb7" in page.content
    us = register_node_image(node=node, path=write_png(tmp_path / "us.png"), modality="ultrasound")
    info = client.get(reverse("slide-tilesource", args=[us.pk])).json()
    assert info["modality"] == "ultrasound" and info["windowed"] is False
    assert "windowPresets" not in info
    admin = _client(people.admin)
    assert admin.get(reverse("slide-associated", args=[us.pk, "label"])).status_code == 404


# ---- upload and manifest -----------------------------------------------------------------------


def test_upload_of_a_node_image(people, node, tmp_path):
    client = _client(people.pathologist)
    path = write_dicom(tmp_path / "up.dcm")
    with open(path, "rb") as fh:
        response = client.post(
            "/api/slides/",
            {
                "node": node.pk,
                "file": fh,
                "modality": "ct",
                "window_center": "50",
                "window_width": "350",
            },
        )
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["modality"] == "ct" and (body["width"], body["height"]) == (64, 64)
    assert (body["window_center"], body["window_width"]) == (50, 350)
    png = write_png(tmp_path / "plain.png")
    with open(png, "rb") as fh:  # a PNG without a modality is not a slide
        refused = client.post("/api/slides/", {"node": node.pk, "file": fh})
    assert refused.status_code == 400 and "modality=ct" in refused.json()["file"][0]
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    with open(bad, "rb") as fh:
        refused = client.post("/api/slides/", {"node": node.pk, "file": fh, "modality": "image"})
    assert refused.status_code == 400 and refused.json()["file"][0].startswith("bad.png:")
    assert Slide.objects.count() == 1


def test_manifest_imports_mixed_rows(people, tiny_tiff, tmp_path):
    write_dicom(tmp_path / "ct1.dcm")
    write_png(tmp_path / "us1.png")
    write_tiff(tmp_path / "other.tif")
    (tmp_path / "broken.dcm").write_bytes((tmp_path / "ct1.dcm").read_bytes()[:-100])
    tiny = tmp_path / "slide.tiff"
    tiny.write_bytes(tiny_tiff.read_bytes())
    manifest = tmp_path / "manifest.csv"
    manifest.write_text(
        "case,node,file,status,patient,modality,window_center,window_width\n"
        "IMG-1,node A,ct1.dcm,positive,P1,ct,,\n"
        "IMG-1,node B,us1.png,negative,P1,US,,\n"
        "IMG-2,node A,other.tif,,P2,image,,\n"
        "IMG-2,node B,slide.tiff,,P2,,,\n"
        "IMG-3,node A,broken.dcm,,P3,ct,,\n"
        "IMG-3,node B,us1.png,,P3,mri,,\n"
        "IMG-3,node C,ct1.dcm,,P3,ct,40,\n"
    )
    report = import_manifest(manifest=manifest, lab=people.lab, create_missing=True)
    assert [s.modality for s in report.imported] == ["ct", "ultrasound", "image", "slide"]
    assert report.imported[3].source != "node-image"
    failed = {row: reason for row, _file, reason in report.failed}
    assert set(failed) == {6, 7, 8}
    assert "corrupt" in failed[6] or "truncated" in failed[6]
    assert "unknown modality 'mri'" in failed[7]
    assert "window needs both" in failed[8]
    assert not Case.objects.filter(accession_number="IMG-3").exists()  # nothing half-written
    ct_node = report.imported[0].node
    assert ct_node.ground_truth == "positive" and ct_node.case.patient_pseudonym == "P1"


# ---- regions of interest -----------------------------------------------------------------------


def test_box_and_polygon_annotations_on_a_node_image(people, node, label_classes, tmp_path):
    slide = register_node_image(
        node=node, path=write_png(tmp_path / "us.png"), modality="ultrasound"
    )
    assert slide.mpp is None
    client = _client(people.pathologist)
    url = f"/api/slides/{slide.pk}/annotations/"
    box = {"type": "Polygon", "coordinates": [[[10, 10], [50, 10], [50, 40], [10, 40], [10, 10]]]}
    poly = {"type": "Polygon", "coordinates": [[[60, 5], [90, 20], [70, 60], [60, 5]]]}
    for geometry in (box, poly):
        response = client.post(
            url,
            json.dumps({"geometry": geometry, "label_class": "tumour"}),
            content_type="application/json",
        )
        assert response.status_code == 201, response.content
    outside = {"type": "Polygon", "coordinates": [[[80, 50], [120, 50], [120, 70], [80, 50]]]}
    response = client.post(
        url,
        json.dumps({"geometry": outside, "label_class": "tumour"}),
        content_type="application/json",
    )
    assert response.status_code == 400
    assert Annotation.objects.filter(slide=slide).count() == 2
    listed = client.get(url + "?bbox=0,0,96,64").json()
    rows = listed["results"] if isinstance(listed, dict) else listed
    assert len(rows) == 2
    assert _client(people.outsider).get(url).status_code == 404


# ---- demo --------------------------------------------------------------------------------------


def test_demo_adds_a_ct_and_an_ultrasound_case(people, tmp_path):
    from slides.demo import load_demo_node_images

    messages: list[str] = []
    report = load_demo_node_images(
        lab=people.lab, folder=tmp_path / "demo", progress=messages.append
    )
    assert report.ok, report.failed
    assert sorted({s.modality for s in report.imported}) == ["ct", "ultrasound"]
    for accession in ("DEMO-26-CT1", "DEMO-26-US1"):
        case = Case.objects.get(accession_number=accession)
        truths = sorted(case.nodes.values_list("ground_truth", flat=True))
        assert truths == ["negative", "negative", "positive", "positive"]
    ct = next(s for s in report.imported if s.modality == "ct")
    assert ct.synthetic and ct.mpp and ct.window_width  # PixelSpacing and a window from the header
    assert render_node_image(ct).mode == "L"
    again = load_demo_node_images(
        lab=people.lab, folder=tmp_path / "demo", progress=messages.append
    )
    assert not again.imported and all("already imported" in r for _i, _f, r in again.failed)
    assert len([m for m in messages if m.startswith("generating")]) == 2  # generated once


def test_import_command_with_modality_and_a_manifest(people, node, tmp_path):
    from django.core.management import call_command
    from django.core.management.base import CommandError

    files = [write_png(tmp_path / "a.png", seed=1), write_jpeg(tmp_path / "b.jpg", seed=2)]
    out = io.StringIO()
    call_command(
        "import_slides",
        *map(str, files),
        node=node.pk,
        modality="ultrasound",
        stdout=out,
        stderr=io.StringIO(),
    )
    assert "2 imported, 0 failed" in out.getvalue()
    assert set(node.slides.values_list("modality", flat=True)) == {"ultrasound"}
    write_dicom(tmp_path / "ct.dcm")
    (tmp_path / "manifest.csv").write_text(
        "case,node,file,modality,window_center,window_width\nCT-9,node 1,ct.dcm,ct,50,350\n"
    )
    out = io.StringIO()
    call_command(
        "import_slides",
        str(tmp_path),
        lab=people.lab.code,
        create_missing=True,
        stdout=out,
        stderr=io.StringIO(),
    )
    ct = Slide.objects.get(node__case__accession_number="CT-9")
    assert ct.modality == "ct" and (ct.window_center, ct.window_width) == (50, 350)
    with pytest.raises(CommandError, match="--modality is for files given with --node"):
        call_command("import_slides", str(tmp_path), modality="ct", stdout=io.StringIO())


def test_rle_compressed_and_monochrome1_dicom(node, tmp_path):
    rle = register_node_image(
        node=node, path=write_dicom(tmp_path / "rle.dcm", rle=True), modality="ct"
    )
    assert np.asarray(render_node_image(rle))[0, :3].tolist() == [128, 0, 255]
    inverted = register_node_image(
        node=node,
        path=write_dicom(tmp_path / "m1.dcm", photometric="MONOCHROME1", hu=ct_values() + 1),
        modality="image",
    )
    values, _info = node_images.decoded_pixels(inverted)
    assert values[0, 0] == 41  # values stay HU; only the display is inverted
    assert np.asarray(render_node_image(inverted, window=(41, 400)))[0, :3].tolist() == [
        127,
        255,
        0,
    ]
