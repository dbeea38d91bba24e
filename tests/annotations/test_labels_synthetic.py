"""Patch labels of a generated slide against its exact ground truth.

The generator writes its tumour / follicle / sinus polygons (`.regions.geojson`) and rasters of the
same polygons (`.masks.npz`). Generated with `mask_downsample=1`, the rasters are at level 0, and
both they and the label derivation use the same rule: a level-0 pixel belongs to a polygon when
its centre lies inside it (even-odd, half-open at the edges). So after importing the polygons as
annotations, the derived labels must match the masks exactly: a patch is tumour if and only if one
of its level-0 pixels is tumour in the mask. (A coarser mask, or the geometric test "the patch box
touches the polygon", would disagree at the boundary: a polygon can graze a patch without
covering the centre of any of its pixels; `test_touching_without_a_pixel_centre_is_not_tumour`
shows those are slivers.)
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import shapely

from annotations import services
from annotations.labels import derive_patch_labels
from annotations.tissue import TissueMask
from slides.ingest import register_slide
from slides.models import Node, Slide
from slides.synthetic import SyntheticSlide, generate_slide, load_masks

SIZE_PX = 3000  # 0.5 µm/px: 40 px at 1.0 µm/px are 80 level-0 px, a 37 x 37 grid
REGION_CLASSES = {"tumour": "tumour", "lymphoid follicle": "lymphoid-follicle", "sinus": "sinus"}


def import_regions(
    slide: Slide, synthetic: SyntheticSlide, user=None, classes: dict[str, str] | None = None
) -> int:
    """Store the generator's polygons of `classes` (file class → label class key) as annotations."""
    classes = REGION_CLASSES if classes is None else classes
    doc = json.loads(Path(synthetic.regions_path).read_text())
    n = 0
    for feature in doc["features"]:
        key = classes.get(feature["properties"]["class"])
        if key:
            services.create_annotation(
                slide=slide, user=user, geometry=feature["geometry"], label_class=key
            )
            n += 1
    return n


def any_in_patch(mask: np.ndarray, size: int, n_rows: int, n_cols: int) -> np.ndarray:
    """(n_rows, n_cols): whether each size x size patch (stride = size) holds a True pixel."""
    m = mask[: n_rows * size, : n_cols * size]
    return m.reshape(n_rows, size, n_cols, size).any(axis=(1, 3))


def share_in_patch(mask: np.ndarray, size: int, n_rows: int, n_cols: int) -> np.ndarray:
    m = mask[: n_rows * size, : n_cols * size]
    return m.reshape(n_rows, size, n_cols, size).mean(axis=(1, 3))


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> SyntheticSlide:
    folder = tmp_path_factory.mktemp("synthetic-labels")
    return generate_slide(
        folder / "node.tiff",
        width=SIZE_PX,
        height=SIZE_PX,
        mpp=0.5,
        seed=21,
        n_tumour_nests=3,
        mask_downsample=1,
    )


@pytest.fixture
def labelled(people, case, generated):
    node = case.nodes.first()
    node.ground_truth = Node.GroundTruth.POSITIVE
    node.save()
    slide = register_slide(node=node, path=generated.path)
    assert import_regions(slide, generated, people.pathologist) > 3
    masks, ds = load_masks(generated.masks_path)
    assert ds == 1 and masks["tumour"].shape == (SIZE_PX, SIZE_PX)
    return slide, masks


def expected_labels(masks: dict[str, np.ndarray], size: int, n: int) -> np.ndarray:
    """Fine label keys per patch from the masks: tumour, then follicle, then sinus, else non-tumour."""
    out = np.full((n, n), "non-tumour", dtype=object)
    out[any_in_patch(masks["sinus"], size, n, n)] = "sinus"
    out[any_in_patch(masks["follicle"], size, n, n)] = "lymphoid-follicle"
    out[any_in_patch(masks["tumour"], size, n, n)] = "tumour"
    return out


def test_labels_match_the_ground_truth_masks_exactly(labelled):
    slide, masks = labelled
    tissue = TissueMask(mask=masks["tissue"], width=SIZE_PX, height=SIZE_PX)
    labels = derive_patch_labels(slide, mask=tissue)
    grid = labels.grid
    assert (grid.size, grid.step, grid.n_rows, grid.n_cols) == (80, 80, 37, 37)

    kept = share_in_patch(masks["tissue"], 80, 37, 37) >= 0.5
    rows, cols = np.nonzero(kept)
    assert np.array_equal(labels.row, rows) and np.array_equal(labels.col, cols)
    expected = expected_labels(masks, 80, 37)[rows, cols]
    got = np.array(labels.classes, dtype=object)[labels.label]
    assert (got == expected).all(), np.flatnonzero(got != expected)[:10]

    # The slide really has all of them, and tumour touching patches are all found.
    counts = {k: int((got == k).sum()) for k in ("tumour", "lymphoid-follicle", "sinus")}
    assert all(v > 0 for v in counts.values()), counts
    touching = any_in_patch(masks["tumour"], 80, 37, 37) & kept
    assert counts["tumour"] == int(touching.sum())


def test_labels_with_the_tissue_mask_from_pixels(labelled):
    """With the Otsu mask from the image every kept patch still has exactly its ground-truth label.

    The mask itself is conservative: it keeps nothing outside the section, but misses some of it
    (on this slide 62 of 707 patches, 42 of them pale sinus, which Otsu on saturation calls glass).
    """
    slide, masks = labelled
    labels = derive_patch_labels(slide)
    truth_kept = share_in_patch(masks["tissue"], 80, 37, 37) >= 0.5
    kept = np.zeros_like(truth_kept)
    kept[labels.row, labels.col] = True
    assert not (kept & ~truth_kept).any()
    assert kept.sum() >= 0.85 * truth_kept.sum(), (kept.sum(), truth_kept.sum())
    expected = expected_labels(masks, 80, 37)[labels.row, labels.col]
    got = np.array(labels.classes, dtype=object)[labels.label]
    assert (got == expected).all()


def test_touching_without_a_pixel_centre_is_not_tumour(labelled):
    """Patches whose box meets a tumour polygon but holds no tumour pixel centre: the rule is
    "any pixel", so they are not tumour; what they share with the polygon is a sliver."""
    slide, masks = labelled
    doc = json.loads(Path(slide.file_path).with_name("node.regions.geojson").read_text())
    tumour = shapely.union_all(
        [
            shapely.geometry.shape(f["geometry"])
            for f in doc["features"]
            if f["properties"]["class"] == "tumour"
        ]
    )
    has_pixel = any_in_patch(masks["tumour"], 80, 37, 37)
    r, c = np.mgrid[0:37, 0:37]
    boxes = shapely.box(c * 80, r * 80, c * 80 + 80, r * 80 + 80)
    touches = shapely.intersects(boxes, tumour)
    assert (touches | ~has_pixel).all()  # every patch with a tumour pixel touches the polygon
    grazing = touches & ~has_pixel
    areas = shapely.area(shapely.intersection(boxes[grazing], tumour))
    assert (areas < 80).all(), areas.max()  # less than one row of pixels of an 80 px patch
