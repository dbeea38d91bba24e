"""Mosaic nodes of real tissue (`slides.mosaic`, `manage.py build_mosaics`): layout, pixels,
ground truth, deduplication, no patch reused, and import through the manifest path."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import large_image
import numpy as np
import pytest
import shapely
from django.core.management import call_command
from django.core.management.base import CommandError
from PIL import Image

from annotations.tissue import tissue_mask
from slides.ingest import import_manifest
from slides.models import Node, Slide
from slides.mosaic import (
    CAPSULE,
    GLASS,
    PCAM_MPP,
    NotEnoughPatches,
    build_mosaics,
    node_cells,
    plan_layout,
    scan_patches,
)

from ..conftest import SHARED_DATA

PCAM_VALID = SHARED_DATA / "pcam-sample" / "valid"
P = 96


def _colour(label: int, i: int) -> tuple[int, int, int]:
    """Distinct flat colours: tumour patches dark purple, non-tumour pale pink/green."""
    if label:
        return (60 + 9 * i, 20, 120)
    return (200, 90 + 6 * i, 150 + 3 * (i % 5))


@pytest.fixture
def patches(tmp_path) -> Path:
    """A PCam-layout folder: 24 non-tumour and 6 tumour 96 px PNG patches, plus byte-identical
    copies (two of a tumour patch, one of a non-tumour one)."""
    root = tmp_path / "pcam"
    for label, n in ((0, 24), (1, 6)):
        (root / str(label)).mkdir(parents=True)
        for i in range(n):
            img = np.zeros((P, P, 3), np.uint8)
            img[:] = _colour(label, i)
            Image.fromarray(img).save(root / str(label) / f"patch{i:07d}.png")
    shutil.copy(root / "1" / "patch0000002.png", root / "1" / "patch0000100.png")
    shutil.copy(root / "1" / "patch0000002.png", root / "1" / "patch0000101.png")
    shutil.copy(root / "0" / "patch0000005.png", root / "0" / "patch0000100.png")
    return root


def _read(path: Path) -> tuple[dict, list[dict], list[dict]]:
    doc = json.loads(path.read_text())
    return doc["properties"], doc["features"], doc["patches"]


def test_scan_drops_duplicates_and_conflicting_labels(patches):
    pool = scan_patches(patches)
    assert (pool.count(0), pool.count(1)) == (24, 6)
    assert pool.duplicates == 3 and pool.conflicts == 0 and pool.patch_px == P
    assert len({p.sha256 for p in pool.patches[0] + pool.patches[1]}) == 30
    shutil.copy(patches / "0" / "patch0000007.png", patches / "1" / "patch0000200.png")
    pool = scan_patches(patches)
    assert pool.conflicts == 1 and (pool.count(0), pool.count(1)) == (23, 6)


def test_layout_round_node_and_deposits_apart():
    cells = node_cells(4)
    assert len(cells) == 12 and (0, 0) not in cells and (1, 1) in cells
    assert len(node_cells(4, round_node=False)) == 16
    layout = plan_layout(12, [3, 2], np.random.default_rng(0))
    inside = set(layout.cells)
    big, small = layout.deposits
    assert (big.side, small.side) == (3, 2) and set(big.cells) | set(small.cells) <= inside
    gap = min(max(abs(a[0] - b[0]), abs(a[1] - b[1])) for a in big.cells for b in small.cells)
    assert gap >= 2  # at least one non-tumour cell between them
    with pytest.raises(ValueError, match="no room"):
        plan_layout(4, [4], np.random.default_rng(0))


def test_build_writes_tiff_ground_truth_and_manifest(patches, tmp_path):
    out = tmp_path / "out"
    build = build_mosaics(patches, out, positive=1, negative=1, grid=4, seed=3, deposit_sides=[2])
    assert [m.truth for m in build.mosaics].count("positive") == 1
    assert build.pool.duplicates == 3
    used = []
    for mosaic in build.mosaics:
        props, features, placed = _read(mosaic.regions_path)
        assert props["synthetic"] is False and props["mosaic"] is True
        assert props["truth"] == mosaic.truth and props["mpp"] == PCAM_MPP
        assert props["tumour_extent"] == "patch squares" and "centre 32 x 32" in props["label_rule"]
        assert len(placed) == mosaic.n_patches == 12
        used += [p["sha256"] for p in placed]

        source = large_image.open(str(mosaic.path))
        meta = source.getMetadata()
        assert (meta["sizeX"], meta["sizeY"]) == (6 * P, 6 * P)  # 4 cells and a glass margin
        assert meta["levels"] >= 3
        assert meta["mm_x"] * 1000 == pytest.approx(PCAM_MPP, rel=1e-4)
        whole, _ = source.getRegion(format=large_image.constants.TILE_FORMAT_NUMPY)
        whole = whole[..., :3].astype(int)
        for p in placed:
            x0, y0, x1, y1 = p["box"]
            expected = np.asarray(Image.open(patches / p["file"]).convert("RGB"), int)
            assert np.abs(whole[y0:y1, x0:x1] - expected).mean() < 2.0, p
            assert p["label"] == int(p["file"].split("/")[0])
        assert np.abs(whole[:P, :P] - GLASS).max() <= 2  # margin is glass
        corner = whole[P : 2 * P, P : 2 * P]  # a corner cell outside the disc: glass...
        assert np.abs(corner[:-16, :-16] - GLASS).max() <= 2  # JPEG ringing near the outline
        assert np.abs(corner[:-8, :-8] - GLASS).mean() < 1.5
        outline = corner[8:-8, -props["outline_px"] :].reshape(-1, 3).mean(axis=0)
        assert np.abs(outline - CAPSULE).max() < 25  # ...and the outline along the tissue

        tumour = [f for f in features if f["properties"]["class"] == "tumour"]
        tumour_patches = [p for p in placed if p["label"] == 1]
        if not mosaic.positive:
            assert tumour == [] and tumour_patches == [] and mosaic.deposits == ()
            continue
        assert len(tumour) == 1 and len(tumour_patches) == 4
        dep = tumour[0]["properties"]
        side_mm = 2 * P * PCAM_MPP / 1000
        assert dep["block"] == [2, 2] and dep["patches"] == 4
        assert dep["extent_mm"] == pytest.approx([side_mm, side_mm], abs=1e-3)
        assert dep["largest_dimension_mm"] == pytest.approx(side_mm * math.sqrt(2), abs=1e-3)
        assert dep["area_mm2"] == pytest.approx(side_mm**2, rel=1e-3)
        assert dep["centre_area_mm2"] == pytest.approx(4 * (32 * PCAM_MPP / 1000) ** 2, rel=1e-3)
        xs = [p["box"][0] for p in tumour_patches] + [p["box"][2] for p in tumour_patches]
        ys = [p["box"][1] for p in tumour_patches] + [p["box"][3] for p in tumour_patches]
        ring = np.asarray(tumour[0]["geometry"]["coordinates"][0])
        assert (ring[:, 0].min(), ring[:, 0].max()) == (min(xs), max(xs))
        assert (ring[:, 1].min(), ring[:, 1].max()) == (min(ys), max(ys))
        assert {p["deposit"] for p in tumour_patches} == {0}
        # the deposit's pixels are the tumour colour (dark purple), a 2 x 2 block
        block = whole[min(ys) : max(ys), min(xs) : max(xs)]
        assert block[..., 2].mean() > 100 and block[..., 1].mean() < 30
    assert len(used) == len(set(used)) == 24  # no patch placed twice in the build

    rows = build.manifest_path.read_text().splitlines()
    assert rows[0] == "case,node,file,status,description"
    assert all("real H&E patches" in row and "not a whole slide" in row for row in rows[1:])


def test_seeded_and_short_pools_write_nothing(patches, tmp_path):
    a = build_mosaics(patches, tmp_path / "a", positive=1, negative=0, grid=4, seed=7)
    b = build_mosaics(patches, tmp_path / "b", positive=1, negative=0, grid=4, seed=7)
    assert _read(a.mosaics[0].regions_path)[2] == _read(b.mosaics[0].regions_path)[2]
    with pytest.raises(NotEnoughPatches, match="needs 48 non-tumour"):
        build_mosaics(patches, tmp_path / "c", positive=0, negative=4, grid=4, seed=0)
    assert not (tmp_path / "c").exists()


def test_manifest_imports_as_real_tissue_with_ground_truth(patches, tmp_path, people, capsys):
    out = tmp_path / "out"
    call_command(
        "build_mosaics",
        "--source",
        str(patches),
        "--out",
        str(out),
        "--positive",
        "1",
        "--negative",
        "1",
        "--grid",
        "4",
        "--blocks",
        "2",
        "--seed",
        "1",
        verbosity=0,
    )
    assert "3 duplicates" in capsys.readouterr().out
    call_command("import_slides", str(out), "--lab", people.lab.code, "--create-missing")
    assert "2 imported, 0 failed" in capsys.readouterr().out
    slides = list(Slide.objects.select_related("node__case"))
    assert len(slides) == 2 and {s.node.case.accession_number for s in slides} == {"MOSAIC-S1-001"}
    for slide in slides:
        props = _read(Path(slide.file_path).with_name(Path(slide.name).stem + ".regions.geojson"))[
            0
        ]
        assert slide.node.ground_truth == props["truth"]
        assert not slide.synthetic
        assert slide.mpp_x == pytest.approx(PCAM_MPP, rel=1e-4) and slide.levels >= 3
    truths = sorted(Node.objects.values_list("ground_truth", flat=True))
    assert truths == ["negative", "positive"]
    with pytest.raises(CommandError, match="needs"):
        call_command(
            "build_mosaics", "--source", str(patches), "--out", str(tmp_path / "x"), "--grid", "9"
        )


@pytest.mark.skipif(
    not PCAM_VALID.is_dir(), reason="../shared/data/pcam-sample is not beside this clone"
)
def test_pcam_valid_mosaics_build_and_import(tmp_path, people):
    out = tmp_path / "pcam"
    build = build_mosaics(PCAM_VALID, out, positive=1, negative=1, grid=12, seed=0)
    assert build.pool.duplicates > 0  # PCam repeats tumour patches byte for byte
    report = import_manifest(manifest=build.manifest_path, lab=people.lab, create_missing=True)
    assert report.ok and len(report.imported) == 2
    for mosaic, slide in zip(build.mosaics, report.imported, strict=True):
        props, features, placed = _read(mosaic.regions_path)
        assert slide.node.ground_truth == mosaic.truth == props["truth"]
        assert not slide.synthetic and slide.width == slide.height == 14 * P
        labels = {p["label"] for p in placed}
        assert all(p["file"].startswith(f"{p['label']}/") for p in placed)
        if mosaic.positive:
            assert labels == {0, 1} and mosaic.deposits[0]["patches"] in (4, 9)
        else:
            assert labels == {0} and not any(f["properties"]["class"] == "tumour" for f in features)
        # the platform's tissue mask finds the whole node (the outline closes it)
        tissue = tissue_mask(slide, use_cache=False)
        node = shapely.geometry.shape(features[0]["geometry"])
        scale = 14 * P / tissue.mask.shape[1]
        yy, xx = np.mgrid[0 : tissue.mask.shape[0], 0 : tissue.mask.shape[1]]
        inside = shapely.contains_xy(node, (xx + 0.5) * scale, (yy + 0.5) * scale)
        assert (tissue.mask & inside).sum() / inside.sum() > 0.99
        assert (tissue.mask & ~inside).sum() / (~inside).sum() < 0.05  # the outline only
