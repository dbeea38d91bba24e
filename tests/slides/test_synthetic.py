"""The synthetic slide generator: pyramid and metadata, exact ground truth, plausible colours."""

from __future__ import annotations

import json
from pathlib import Path

import large_image
import numpy as np
import pytest
import shapely
import tifffile
from django.core.management import call_command
from scipy import ndimage
from shapely.geometry import shape
from shapely.ops import unary_union

from slides import synthetic
from slides.synthetic import SyntheticSlide, generate_slide, load_masks

W, H = 2048, 1536


@pytest.fixture(scope="module")
def slides(tmp_path_factory) -> dict[str, SyntheticSlide]:
    folder = tmp_path_factory.mktemp("synthetic")
    calls: list[tuple[int, int]] = []
    positive = generate_slide(
        folder / "pos.tiff", width=W, height=H, seed=3, progress=lambda d, t: calls.append((d, t))
    )
    negative = generate_slide(folder / "neg.tiff", width=W, height=H, seed=4, tumour=False)
    return {"pos": positive, "neg": negative, "progress": calls}


def level0(slide: SyntheticSlide) -> np.ndarray:
    return tifffile.imread(slide.path, key=0)


def full_res(mask: np.ndarray, ds: int, erode: int = 0) -> np.ndarray:
    """A mask at level 0 (optionally eroded by `erode` mask pixels first, away from edges)."""
    if erode:
        mask = ndimage.binary_erosion(mask, iterations=erode)
    return np.repeat(np.repeat(mask, ds, axis=0), ds, axis=1)[:H, :W]


def regions(slide: SyntheticSlide) -> dict[str, shapely.Geometry]:
    doc = json.loads(slide.regions_path.read_text())
    assert doc["type"] == "FeatureCollection"
    by_class: dict[str, list] = {}
    for feature in doc["features"]:
        by_class.setdefault(feature["properties"]["class"], []).append(shape(feature["geometry"]))
    return {k: unary_union(v) for k, v in by_class.items()}


def test_files_and_result(slides):
    slide = slides["pos"]
    assert slide.path.exists() and slide.path.suffix == ".tiff"
    assert slide.masks_path == slide.path.with_name("pos.masks.npz") and slide.masks_path.exists()
    assert slide.regions_path == slide.path.with_name("pos.regions.geojson")
    assert (slide.width, slide.height, slide.mpp) == (W, H, 0.5)
    assert slide.has_tumour and not slides["neg"].has_tumour
    assert not list(slide.path.parent.glob(".*.tmp"))  # no temporary level files left


def test_large_image_reads_the_pyramid(slides):
    slide = slides["pos"]
    source = large_image.open(str(slide.path))
    assert source.name == "tiff"
    meta = source.getMetadata()
    assert (meta["sizeX"], meta["sizeY"]) == (W, H)
    assert meta["levels"] == 4  # 2048, 1024, 512, 256 px wide
    assert (meta["tileWidth"], meta["tileHeight"]) == (256, 256)
    assert meta["mm_x"] == pytest.approx(0.5 / 1000) and meta["mm_y"] == pytest.approx(0.5 / 1000)
    tile = source.getTile(0, 0, 0, numpyAllowed="always")  # lowest resolution reads back
    assert np.asarray(tile).shape[-1] >= 3


def test_tiff_layout(slides):
    with tifffile.TiffFile(slides["pos"].path) as tif:
        pages = list(tif.pages)
        assert [p.shape[:2] for p in pages] == [(1536, 2048), (768, 1024), (384, 512), (192, 256)]
        for i, page in enumerate(pages):
            assert page.is_tiled and (page.tilelength, page.tilewidth) == (256, 256)
            assert page.compression == tifffile.COMPRESSION.JPEG
            assert page.subfiletype == (1 if i else 0)
            assert page.tags["ResolutionUnit"].value == tifffile.RESUNIT.CENTIMETER
        x_res = pages[0].tags["XResolution"].value
        assert x_res[0] / x_res[1] == pytest.approx(1e4 / 0.5)  # pixels per centimetre
        assert "synthetic" in pages[0].description


def test_progress_reports_up_to_the_total(slides):
    calls = slides["progress"]
    total = 48 + 12 + 4 + 1  # tiles over the four levels
    assert calls[-1] == (total, total)
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)


def test_masks(slides):
    masks, ds = load_masks(slides["pos"].masks_path)
    assert ds == 8
    assert set(masks) == {"tumour", "follicle", "sinus", "tissue"}
    for mask in masks.values():
        assert mask.shape == (H // 8, W // 8) and mask.dtype == bool
    tissue = masks["tissue"]
    assert 0.2 < tissue.mean() < 0.8
    assert not tissue[0].any() and not tissue[:, 0].any()  # white margin around the section
    for name in ("tumour", "follicle", "sinus"):
        assert masks[name].any(), name
        assert not (masks[name] & ~tissue).any(), f"{name} outside tissue"
    # Classes are exclusive (tumour over follicle over sinus).
    assert not (masks["tumour"] & masks["follicle"]).any()
    assert not (masks["tumour"] & masks["sinus"]).any()
    assert not (masks["follicle"] & masks["sinus"]).any()

    negative, _ = load_masks(slides["neg"].masks_path)
    assert not negative["tumour"].any()
    assert negative["tissue"].any() and negative["follicle"].any()


def test_geojson_polygons_match_the_masks(slides):
    slide = slides["pos"]
    masks, ds = load_masks(slide.masks_path)
    polys = regions(slide)
    assert set(polys) == {"tumour", "lymphoid follicle", "sinus", "tissue"}
    yy, xx = np.mgrid[0 : H // ds, 0 : W // ds]
    centres_x, centres_y = (xx + 0.5) * ds, (yy + 0.5) * ds
    for key, cls in [
        ("tumour", "tumour"),
        ("follicle", "lymphoid follicle"),
        ("sinus", "sinus"),
        ("tissue", "tissue"),
    ]:
        raster = shapely.contains_xy(polys[cls], centres_x, centres_y)
        iou = (raster & masks[key]).sum() / (raster | masks[key]).sum()
        assert iou > 0.98, (key, iou)
    negative = regions(slides["neg"])
    assert "tumour" not in negative and "lymphoid follicle" in negative


def test_tumour_nests_lie_inside_tissue(slides):
    polys = regions(slides["pos"])
    tissue = polys["tissue"]
    nests = list(getattr(polys["tumour"], "geoms", [polys["tumour"]]))
    assert nests
    for nest in nests:
        assert tissue.buffer(1e-6).contains(nest)
        assert nest.area > 0


def test_background_is_near_white(slides):
    slide = slides["pos"]
    masks, ds = load_masks(slide.masks_path)
    img = level0(slide).astype(np.float32)
    outside = ~full_res(ndimage.binary_dilation(masks["tissue"], iterations=2), ds)
    glass = img[outside]
    assert glass.size and (glass.mean(axis=0) > 232).all() and (glass.mean(axis=0) < 248).all()
    assert (glass.std(axis=0) < 6).all()
    tissue = img[full_res(masks["tissue"], ds, erode=4)]
    assert tissue.mean() < glass.mean() - 60  # the section is clearly stained


def test_tumour_looks_different_from_lymphoid_tissue_and_follicles(slides):
    slide = slides["pos"]
    masks, ds = load_masks(slide.masks_path)
    img = level0(slide).astype(np.float32)
    lymph = masks["tissue"] & ~masks["tumour"] & ~masks["follicle"] & ~masks["sinus"]
    mean = {
        name: img[full_res(mask, ds, erode=3)].mean(axis=0)
        for name, mask in [
            ("tumour", masks["tumour"]),
            ("follicle", masks["follicle"]),
            ("lymph", lymph),
            ("sinus", masks["sinus"]),
        ]
    }
    # Lymphocyte-dense tissue is haematoxylin blue-purple (blue above red); tumour is pinker
    # (eosinophilic cytoplasm); follicles lie in between but nearer the lymphoid tissue.
    red_minus_blue = {k: float(v[0] - v[2]) for k, v in mean.items()}
    assert red_minus_blue["lymph"] < 0
    assert red_minus_blue["tumour"] > red_minus_blue["lymph"] + 10
    assert red_minus_blue["tumour"] > red_minus_blue["follicle"] + 8
    assert np.linalg.norm(mean["tumour"] - mean["lymph"]) > 12
    assert np.linalg.norm(mean["tumour"] - mean["follicle"]) > 8
    # Sinuses are pale, follicles paler than the dense lymphocytes around them.
    assert mean["sinus"].mean() > mean["lymph"].mean() + 25
    assert mean["follicle"].mean() > mean["lymph"].mean()
    assert mean["lymph"].mean() < 170  # dense dark nuclei


def test_same_seed_same_slide_whatever_workers_and_buffers(tmp_path, monkeypatch):
    a = generate_slide(tmp_path / "a.tiff", width=640, height=512, seed=11, mask_downsample=4)
    monkeypatch.setattr(synthetic, "_IN_MEMORY_BYTES", 0)  # reduced levels through memmaps
    b = generate_slide(
        tmp_path / "b.tiff", width=640, height=512, seed=11, mask_downsample=4, workers=1
    )
    c = generate_slide(tmp_path / "c.tiff", width=640, height=512, seed=12, mask_downsample=4)
    ma, ds = load_masks(a.masks_path)
    mb, _ = load_masks(b.masks_path)
    mc, _ = load_masks(c.masks_path)
    assert ds == 4 and ma["tissue"].shape == (128, 160)
    for key in ma:
        assert np.array_equal(ma[key], mb[key]), key
    assert not np.array_equal(ma["tissue"], mc["tissue"])
    assert a.regions_path.read_text() == b.regions_path.read_text()
    with tifffile.TiffFile(a.path) as ta, tifffile.TiffFile(b.path) as tb:
        assert len(ta.pages) == len(tb.pages) == 3
        for pa, pb in zip(ta.pages, tb.pages, strict=True):
            assert np.array_equal(pa.asarray(), pb.asarray())
    assert not list(tmp_path.glob(".*.tmp"))


def test_odd_sizes_and_other_mpp(tmp_path):
    slide = generate_slide(tmp_path / "odd.tiff", width=1001, height=777, mpp=0.25, seed=5)
    meta = large_image.open(str(slide.path)).getMetadata()
    assert (meta["sizeX"], meta["sizeY"], meta["levels"]) == (1001, 777, 3)
    assert meta["mm_x"] == pytest.approx(0.25 / 1000)
    masks, ds = load_masks(slide.masks_path)
    assert masks["tumour"].shape == (98, 126)  # ceil(777 / 8), ceil(1001 / 8)
    assert masks["tumour"].any()


def test_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError):
        generate_slide(tmp_path / "x.tiff", width=10, height=10)
    with pytest.raises(ValueError):
        generate_slide(tmp_path / "x.tiff", width=512, height=512, tile_size=100)


def test_generate_slides_command(tmp_path, capsys):
    call_command(
        "generate_slides",
        str(tmp_path / "out"),
        count=2,
        width=512,
        height=384,
        seed=20,
        negative_share=0.5,
        verbosity=0,
    )
    printed = capsys.readouterr().out.split()
    assert len(printed) == 2
    paths = [Path(p) for p in printed]
    assert all(p.exists() and p.parent == tmp_path / "out" for p in paths)
    tumour = [
        load_masks(p.with_name(p.name.replace(".tiff", ".masks.npz")))[0]["tumour"].any()
        for p in paths
    ]
    assert sorted(tumour) == [False, True]
