"""Patch labels from polygons: known answers on a hand-made slide, exact boundaries, tissue masks."""

from __future__ import annotations

import numpy as np
import pytest
import shapely

from annotations import services
from annotations.labels import (
    PatchGrid,
    PatchLabelError,
    coverage,
    derive_patch_labels,
    patch_grid,
    shapes_of,
    summarise,
)
from annotations.tissue import (
    TissueMask,
    cache_path,
    fill_enclosed_holes,
    mask_from_rgb,
    otsu_threshold,
    tissue_mask,
)
from slides.ingest import register_slide
from slides.models import Node
from tests.factories import write_pyramid_tiff

from .conftest import make_slide, square

# A 1000 x 700 px slide at 0.5 µm/px: 40 px patches at 1.0 µm/px are 80 level-0 px, a 8 x 12 grid.
W, H, SIZE = 1000, 700, 80


def cell(row: int, col: int) -> tuple[int, int]:
    return row, col


def grid_of(size: int, step: int, width: int = W, height: int = H) -> PatchGrid:
    count = lambda extent: (extent - size) // step + 1  # noqa: E731
    return PatchGrid(40, 1.0, 40, size, step, count(height), count(width))


def covered_cells(geometry: dict, grid: PatchGrid) -> set[tuple[int, int]]:
    rows, cols = np.nonzero(coverage(shapes_of([geometry]), grid))
    return set(zip(rows.tolist(), cols.tolist(), strict=True))


def test_grid_maps_the_patch_size_through_the_slide_mpp(case):
    grid = patch_grid(make_slide(case.nodes.first(), width=W, height=H, mpp=0.5))
    assert (grid.size, grid.step, grid.n_rows, grid.n_cols) == (80, 80, 8, 12)
    fine = patch_grid(make_slide(case.nodes.first(), mpp=0.243), stride_px=10)
    assert (fine.size, fine.step) == (165, 41)
    with pytest.raises(PatchLabelError, match="has no µm per pixel"):
        patch_grid(make_slide(case.nodes.first(), mpp=None))


def test_any_pixel_rule_at_patch_boundaries_is_exact():
    grid = grid_of(SIZE, SIZE)
    # Exactly patches rows 2..4 x cols 3..5: the edges lie on patch borders, no neighbour touched.
    assert covered_cells(square(240, 160, 480, 400), grid) == {
        cell(r, c) for r in range(2, 5) for c in range(3, 6)
    }
    # One pixel into the next patch (pixel 80, centre 80.5) makes that patch tumour too.
    assert covered_cells(square(0, 480, 81, 560), grid) == {cell(6, 0), cell(6, 1)}
    # Less than a pixel centre over the border does not: 80.4 < 80.5; 80.5 itself is the half-open edge.
    assert covered_cells(square(0, 480, 80.4, 560), grid) == {cell(6, 0)}
    assert covered_cells(square(0, 480, 80.5, 560), grid) == {cell(6, 0)}
    assert covered_cells(square(0, 480, 80.6, 560), grid) == {cell(6, 0), cell(6, 1)}
    # Vertically likewise, and a polygon smaller than a patch inside one patch.
    assert covered_cells(square(0, 0, 10, 80.6), grid) == {cell(0, 0), cell(1, 0)}
    assert covered_cells(square(90.2, 90.2, 90.8, 90.8), grid) == {cell(1, 1)}
    # A polygon too thin to hold any pixel centre covers nothing.
    assert covered_cells(square(100.6, 100, 101.4, 300), grid) == set()
    # Holes: the ring's patches, not the hole's.
    ring = {
        "type": "Polygon",
        "coordinates": [
            square(0, 0, 400, 400)["coordinates"][0],
            square(80, 80, 320, 320)["coordinates"][0],
        ],
    }
    border = {cell(r, c) for r in range(5) for c in range(5) if r in (0, 4) or c in (0, 4)}
    assert covered_cells(ring, grid) == border


@pytest.mark.parametrize(("size", "step"), [(80, 80), (40, 10), (37, 23), (16, 16)])
def test_coverage_equals_brute_force_pixel_rasterisation(size, step):
    """Random self-intersection-free polygons with float vertices, against every pixel centre."""
    rng = np.random.default_rng(size * 100 + step)
    width, height = 300, 220
    grid = grid_of(size, step, width, height)
    ys, xs = np.mgrid[0:height, 0:width] + 0.5
    for _ in range(15):
        n = int(rng.integers(3, 40))
        angles = np.sort(rng.uniform(0, 2 * np.pi, n))
        radii = rng.uniform(3, 90, n)
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        ring = np.column_stack(
            [
                np.clip(cx + radii * np.cos(angles), 0, width),
                np.clip(cy + radii * np.sin(angles), 0, height),
            ]
        )
        polygon = shapely.Polygon(ring)
        if not polygon.is_valid or polygon.area == 0:
            continue
        inside = shapely.contains_xy(polygon, xs, ys)
        expected = np.zeros((grid.n_rows, grid.n_cols), dtype=bool)
        for r in range(grid.n_rows):
            for c in range(grid.n_cols):
                expected[r, c] = inside[
                    r * step : r * step + size, c * step : c * step + size
                ].any()
        got = coverage(
            shapes_of([{"type": "Polygon", "coordinates": [ring.tolist() + [ring[0].tolist()]]}]),
            grid,
        )
        assert (got == expected).all()


def test_known_answers_on_a_hand_made_slide(people, case):
    slide = make_slide(case.nodes.first(), width=W, height=H, mpp=0.5)

    def draw(geometry, cls):
        services.create_annotation(
            slide=slide, user=people.pathologist, geometry=geometry, label_class=cls
        )

    draw(square(240, 160, 480, 400), "tumour")  # patches rows 2..4 x cols 3..5
    draw(square(0, 480, 81, 560), "tumour")  # (6, 0) and, by one pixel, (6, 1)
    draw(square(810, 410, 820, 420), "tumour")  # inside the follicle: tumour wins
    draw(square(640, 0, 800, 160), "artefact")  # drops rows 0..1 x cols 8..9
    draw(square(470, 300, 500, 310), "ink")  # drops (3, 5), a tumour patch, and (3, 6)
    draw(square(800, 400, 960, 560), "lymphoid-follicle")  # rows 5..6 x cols 10..11
    draw(square(880, 480, 1000, 640), "sinus")  # (6, 11), which stays follicle, and (7, 11)
    mask = np.ones((70, 100), dtype=bool)
    mask[:, :8] = False  # background left of x = 80: column 0 is dropped, tumour or not
    labels = derive_patch_labels(slide, mask=TissueMask(mask=mask, width=W, height=H))

    got = {
        cell(r, c): labels.classes[k]
        for r, c, k in zip(labels.row, labels.col, labels.label, strict=True)
    }
    dropped = (
        {cell(r, 0) for r in range(8)}
        | {cell(r, c) for r in (0, 1) for c in (8, 9)}
        | {cell(3, 5), cell(3, 6)}
    )
    expected = {}
    for r in range(8):
        for c in range(12):
            if cell(r, c) not in dropped:
                expected[cell(r, c)] = "non-tumour"
    for r in range(2, 5):
        for c in range(3, 6):
            expected[cell(r, c)] = "tumour"
    expected.update({cell(6, 1): "tumour", cell(5, 10): "tumour"})
    expected.update(
        {
            cell(5, 11): "lymphoid-follicle",
            cell(6, 10): "lymphoid-follicle",
            cell(6, 11): "lymphoid-follicle",
        }
    )
    expected[cell(7, 11)] = "sinus"
    for d in dropped:
        expected.pop(d, None)
    assert got == expected
    assert (labels.x0 == labels.col * 80).all() and (labels.y0 == labels.row * 80).all()
    counts = summarise(labels)
    assert counts["tumour"] == 10 and counts["lymphoid-follicle"] == 3 and counts["sinus"] == 1
    assert counts["non-tumour"] == 68 and sum(counts.values()) == 96 - 14
    assert set(counts) == set(labels.classes) and "artefact" not in counts
    assert len(labels.annotation_versions) == 7


def test_negative_nodes_give_all_their_tissue_as_non_tumour(people, case):
    node = case.nodes.first()
    node.ground_truth = Node.GroundTruth.NEGATIVE
    node.save()
    slide = make_slide(node, width=W, height=H, mpp=0.5)
    mask = np.zeros((70, 100), dtype=bool)
    mask[:32, :48] = True  # tissue over rows 0..3 x cols 0..5 exactly
    labels = derive_patch_labels(slide, mask=TissueMask(mask=mask, width=W, height=H))
    assert summarise(labels)["non-tumour"] == 24 and len(labels) == 24
    services.create_annotation(
        slide=slide, user=people.pathologist, geometry=square(0, 0, 10, 10), label_class="tumour"
    )
    with pytest.raises(
        PatchLabelError, match="ground truth is negative but has 1 tumour annotation"
    ):
        derive_patch_labels(slide, mask=TissueMask(mask=mask, width=W, height=H))


def test_unannotated_slides_of_other_nodes_are_refused(case):
    slide = make_slide(case.nodes.first(), width=W, height=H, mpp=0.5)
    with pytest.raises(PatchLabelError, match="no annotations and its node is not negative"):
        derive_patch_labels(
            slide, mask=TissueMask(mask=np.ones((7, 10), dtype=bool), width=W, height=H)
        )


def test_min_tissue_fraction(case):
    node = case.nodes.first()
    node.ground_truth = Node.GroundTruth.NEGATIVE
    node.save()
    slide = make_slide(node, width=W, height=H, mpp=0.5)
    mask = np.zeros((H, W), dtype=bool)
    mask[:, :60] = True  # 60 of the 80 columns of patch column 0
    full = TissueMask(mask=mask, width=W, height=H)
    assert len(derive_patch_labels(slide, mask=full, min_tissue=0.7)) == 8
    assert len(derive_patch_labels(slide, mask=full, min_tissue=0.8)) == 0


def test_otsu_separates_tissue_from_glass():
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.normal(0.05, 0.01, 5000), rng.normal(0.45, 0.05, 3000)]).clip(0, 1)
    truth = np.arange(8000) >= 5000
    assert ((values > otsu_threshold(values)) == truth).mean() > 0.999
    blank = np.full((50, 50, 3), 240, dtype=np.uint8) + rng.integers(
        0, 4, (50, 50, 3), dtype=np.uint8
    )
    assert not mask_from_rgb(blank).any()  # noise on glass is not tissue


def test_holes_the_tissue_encloses_are_tissue_and_glass_around_it_is_not():
    """A pale sinus inside a node counts as tissue; a bay of glass open to the outside does not."""
    rng = np.random.default_rng(1)
    image = np.full((120, 160, 3), 240, dtype=np.uint8) + rng.integers(
        0, 4, (120, 160, 3), np.uint8
    )
    image[20:100, 20:80] = (180, 90, 160)  # a node, H&E purple
    image[40:80, 35:65] = (236, 226, 234)  # a pale sinus inside it: barely stained
    image[20:100, 100:140] = (180, 90, 160)  # a second piece of tissue...
    image[50:70, 120:140] = 240  # ...with a bay of glass open to the glass around it
    mask = mask_from_rgb(image)
    assert mask[40:80, 35:65].all()  # the sinus is filled
    assert not mask[50:70, 122:140].any()  # the bay is glass
    assert not mask[:15].any() and not mask[:, 145:].any()  # glass around the tissue
    unfilled = mask_from_rgb(image, fill_holes=False)
    assert not unfilled[45:75, 40:60].any()  # without filling, the pale sinus was lost


def test_filling_holes_equals_scipys_binary_fill_holes():
    """The one-labelling hole filling gives scipy's result on masks with many holes, bays and
    pieces, and on the empty and the full mask."""
    from scipy import ndimage

    rng = np.random.default_rng(2)
    masks = [np.zeros((40, 30), bool), np.ones((40, 30), bool)]
    for sigma in (1.5, 3, 6):
        smooth = ndimage.gaussian_filter(rng.random((300, 260)), sigma)
        masks.append(smooth > np.quantile(smooth, 0.45))
    ring = np.zeros((50, 50), bool)
    ring[10:40, 10:40], ring[15:35, 15:35] = True, False  # a square hole
    masks.append(ring)
    for mask in masks:
        want = ndimage.binary_fill_holes(mask)
        assert np.array_equal(fill_enclosed_holes(mask), want)
    assert fill_enclosed_holes(ring)[15:35, 15:35].all()
    # the random masks do have holes and open bays, so the comparison means something
    assert any((ndimage.binary_fill_holes(m) != m).sum() > 50 for m in masks[2:5])


def test_tissue_mask_from_a_real_thumbnail_is_cached(case, tmp_path, monkeypatch):
    image = np.full((600, 800, 3), 242, dtype=np.uint8)  # glass
    image[100:400, 200:600] = (200, 110, 170)  # H&E-pink tissue
    path = write_pyramid_tiff(tmp_path / "tissue.tiff", image, mpp=0.5)
    slide = register_slide(node=case.nodes.first(), path=path)
    mask = tissue_mask(slide, max_size=200)
    assert mask.mask.shape == (150, 200)
    region = np.zeros(mask.mask.shape, dtype=bool)
    region[25:100, 50:150] = True
    assert (mask.mask == region).mean() > 0.98
    assert cache_path(slide, 200).exists()
    import slides.tiles

    monkeypatch.setattr(
        slides.tiles, "source_for", lambda s: (_ for _ in ()).throw(AssertionError("not cached"))
    )
    assert (tissue_mask(slide, max_size=200).mask == mask.mask).all()
