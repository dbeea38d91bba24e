"""What the scanner reads: stored tiles decoded directly give large-image's pixels."""

from __future__ import annotations

import numpy as np
import pytest

from inference.scoring import (
    Classifier,
    SlideReader,
    _rgb_uint8,
    scan_image,
    scan_slide,
)
from slides.ingest import register_slide
from tests.conftest import CMU_DIR, needs_shared_data

from .test_scoring import generated_slide, random_dense_model


def random_regions(reader: SlideReader, count: int, seed: int, largest: int = 400):
    rng = np.random.default_rng(seed)
    for _ in range(count):
        w, h = (int(v) for v in rng.integers(1, largest, 2))
        x = int(rng.integers(0, reader.width - w + 1))
        y = int(rng.integers(0, reader.height - h + 1))
        yield x, y, w, h


@pytest.mark.parametrize(("mpp", "level_below_top"), [(1.0, 0), (0.5, 1)])
def test_regions_from_stored_tiles_equal_large_images_regions(case, tmp_path, mpp, level_below_top):
    """Scanning at 1.0 µm/px a slide scanned at 1.0 or 0.5 µm/px: the level with that scale is
    read from its stored JPEG tiles (decoded by libjpeg-turbo), and every region equals what
    large-image's getRegion returns, pixel for pixel."""
    slide = generated_slide(
        case.nodes.first(), tmp_path, seed=21, tumour=True, size=(1100, 900), mpp=mpp
    )
    reader = SlideReader(slide, target_mpp=1.0)
    assert reader.level == reader.source.levels - 1 - level_below_top
    assert reader.native.levels, "the generated TIFF's JPEG tiles should line up"
    decoded = []
    original = reader._decode_stored

    def counting(tx, ty):
        tile = original(tx, ty)
        decoded.append(tile is not None)
        return tile

    reader._decode_stored = counting
    regions = list(random_regions(reader, 60, seed=int(mpp * 10)))
    regions += [(0, 0, reader.width, reader.height), (reader.width - 7, reader.height - 5, 7, 5)]
    for x, y, w, h in regions:
        got = reader(x, y, w, h)
        want = reader._region(x, y, w, h)
        assert got.shape == want.shape == (h, w, 3)
        assert got.dtype == np.uint8
        assert np.array_equal(got, want), (x, y, w, h)
    assert any(decoded), "no stored tile was decoded directly"
    # warm decodes ahead in threads, and what it decoded is what reading decodes
    fresh = SlideReader(slide, target_mpp=1.0)
    fresh.warm([(0, 0, 300, 300)], [(300, 0, 300, 300)])
    assert len(fresh._tiles) >= 2  # whole stored tiles only: edge tiles go through large-image
    for (tx, ty), tile in fresh._tiles.items():
        stored = fresh.source.getTile(tx, ty, fresh.level, numpyAllowed="always")
        assert np.array_equal(tile, _rgb_uint8(stored))
    assert np.array_equal(fresh(0, 0, 600, 300), reader._region(0, 0, 600, 300))


def test_a_scale_without_a_level_is_read_through_large_image(case, tmp_path):
    slide = generated_slide(case.nodes.first(), tmp_path, seed=22, tumour=False, mpp=0.7)
    reader = SlideReader(slide, target_mpp=1.0)
    assert reader.level is None  # 1.0 / 0.7 is no power of two: resized by large-image
    pixels = reader(10, 20, 123, 77)
    assert pixels.shape == (77, 123, 3) and pixels.dtype == np.uint8
    assert pixels.std() > 0


def test_tile_pixels_of_any_layout_become_rgb_uint8():
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4)
    assert np.array_equal(_rgb_uint8(grey), np.repeat(grey[..., None], 3, axis=-1))
    grey_alpha = np.stack([grey, np.full_like(grey, 255)], axis=-1)
    assert np.array_equal(_rgb_uint8(grey_alpha), np.repeat(grey[..., None], 3, axis=-1))
    rgba = np.random.default_rng(0).integers(0, 256, (3, 4, 4), dtype=np.uint8)
    assert np.array_equal(_rgb_uint8(rgba), rgba[..., :3])
    wide = np.array([[[-5, 300, 128]]], dtype=np.int32)
    assert _rgb_uint8(wide).tolist() == [[[0, 255, 128]]]


def test_a_slide_scan_reads_stored_tiles_and_equals_the_scan_of_its_pixels(case, tmp_path):
    slide = generated_slide(case.nodes.first(), tmp_path, seed=23, tumour=True, size=(700, 600))
    primary = Classifier(model=random_dense_model(seed=34)).to("cpu")
    tissue = np.ones((60, 70), bool)
    from_slide = scan_slide(slide, primary=primary, tissue=tissue, tile_windows=12)
    pixels = SlideReader(slide, target_mpp=1.0)._region(0, 0, 700, 600)
    from_pixels = scan_image(pixels, primary=primary, tile_windows=12)
    assert from_slide.tiles_scanned == from_pixels.tiles_scanned > 4
    assert np.array_equal(from_slide.primary, from_pixels.primary)


@needs_shared_data
def test_shared_svs_is_read_from_its_stored_tiles_like_openslide(case):
    """Aperio's RGB JPEG tiles (an APP14 marker spliced in) decode as OpenSlide decodes them."""
    slide = register_slide(node=case.nodes.first(), path=CMU_DIR / "CMU-1-Small-Region.svs")
    reader = SlideReader(slide, target_mpp=slide.mpp)
    assert reader.level is not None and reader.native.levels
    for x, y, w, h in random_regions(reader, 20, seed=5, largest=600):
        assert np.array_equal(reader(x, y, w, h), reader._region(x, y, w, h)), (x, y, w, h)
