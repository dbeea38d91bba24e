"""Patch datasets (arrays, image folders, CSV, PCam HDF5) and the train/validation split."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from inference.datasets import (
    ArrayPatchDataset,
    ImageFolderPatchDataset,
    PatchSubset,
    h5py_available,
    load_image,
    split_indices,
)


def _write_folder(root, per_class: int = 3, size: int = 20) -> None:
    rng = np.random.default_rng(0)
    for name, level in (("non-tumour", 60), ("tumour", 200)):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = np.full((size, size + 4, 3), level, np.uint8)
            pixels[..., 0] = rng.integers(0, 255)
            Image.fromarray(pixels).save(root / name / f"p{i}.png")


def test_array_dataset_items_and_batches():
    images = np.random.default_rng(0).integers(0, 256, (5, 8, 8, 3), dtype=np.uint8)
    ds = ArrayPatchDataset(images, [0, 1, 0, 1, 1], groups=list("aabbc"))
    x, y = ds[1]
    assert x.dtype == torch.uint8 and x.shape == (3, 8, 8) and y == 1
    assert torch.equal(x, torch.from_numpy(images[1]).permute(2, 0, 1))
    xb, yb = ds.get_batch([4, 0])
    assert xb.shape == (2, 3, 8, 8) and yb.tolist() == [1, 0]
    assert ds.classes == ["0", "1"]
    sub = PatchSubset(ds, [3, 4])
    assert len(sub) == 2 and sub.labels.tolist() == [1, 1] and sub.groups.tolist() == ["b", "c"]
    assert torch.equal(sub.get_batch([1])[0][0], ds[4][0])
    with pytest.raises(ValueError, match="uint8"):
        ArrayPatchDataset(images.astype(np.float32), [0] * 5)


def test_memory_mapped_arrays_read_in_any_order(tmp_path):
    images = np.random.default_rng(1).integers(0, 256, (6, 4, 4, 3), dtype=np.uint8)
    np.save(tmp_path / "x.npy", images)
    ds = ArrayPatchDataset(np.load(tmp_path / "x.npy", mmap_mode="r"), [0, 1] * 3)
    xb, _ = ds.get_batch([5, 1, 3])
    assert torch.equal(xb, torch.from_numpy(images[[5, 1, 3]]).permute(0, 3, 1, 2))


def test_image_folder_one_subfolder_per_class(tmp_path):
    _write_folder(tmp_path)
    ds = ImageFolderPatchDataset(tmp_path, size=16)
    assert ds.classes == ["non-tumour", "tumour"] and len(ds) == 6
    assert ds.labels.tolist() == [0, 0, 0, 1, 1, 1]
    x, y = ds[4]
    assert x.shape == (3, 16, 16) and y == 1 and int(x[1].float().mean()) == 200
    arrays = ds.to_arrays(workers=2)
    assert arrays.images.shape == (6, 16, 16, 3) and arrays.classes == ds.classes
    ordered = ImageFolderPatchDataset(tmp_path, classes=["tumour", "non-tumour"], size=16)
    assert ordered.labels.tolist() == [1, 1, 1, 0, 0, 0]


def test_image_folder_from_csv_with_groups(tmp_path):
    _write_folder(tmp_path)
    csv_path = tmp_path / "labels.csv"
    csv_path.write_text(
        "file,label,case\n"
        "tumour/p0.png,tumour,A\nnon-tumour/p0.png,non-tumour,A\n"
        "tumour/p1.png,tumour,B\nnon-tumour/p1.png,non-tumour,B\n"
    )
    ds = ImageFolderPatchDataset(tmp_path, csv_path=csv_path, classes=["non-tumour", "tumour"])
    assert ds.labels.tolist() == [1, 0, 1, 0] and ds.groups.tolist() == ["A", "A", "B", "B"]
    assert ds[0][0].shape == (3, 20, 24)  # no size: native size
    with pytest.raises(ValueError, match="differ in shape|not in classes"):
        ImageFolderPatchDataset(tmp_path, csv_path=csv_path, classes=["tumour"])
    bad = tmp_path / "bad.csv"
    bad.write_text("file,label\nmissing.png,tumour\n")
    with pytest.raises(FileNotFoundError):
        ImageFolderPatchDataset(tmp_path, csv_path=bad)


def test_load_image_resizes_jpeg(tmp_path):
    Image.fromarray(np.full((224, 224, 3), 128, np.uint8)).save(tmp_path / "a.jpg")
    px = load_image(tmp_path / "a.jpg", size=96)
    assert px.shape == (96, 96, 3) and px.dtype == np.uint8 and abs(int(px.mean()) - 128) <= 2


def test_split_by_group_keeps_groups_apart_and_is_deterministic():
    labels = np.array([0, 1] * 50)
    groups = np.repeat(np.arange(20), 5)
    a = split_indices(labels=labels, groups=groups, val_fraction=0.3, seed=4)
    b = split_indices(labels=labels, groups=groups, val_fraction=0.3, seed=4)
    assert a.by == "group" and np.array_equal(a.train, b.train) and np.array_equal(a.val, b.val)
    assert not set(groups[a.train]) & set(groups[a.val])
    assert sorted(np.r_[a.train, a.val].tolist()) == list(range(100))
    assert 30 <= a.val.size <= 35
    c = split_indices(labels=labels, groups=groups, val_fraction=0.3, seed=5)
    assert not np.array_equal(a.val, c.val)


def test_split_by_group_keeps_every_class_on_both_sides_when_the_groups_allow():
    """Three cases, one of them the only negative and the largest: the seed's first shuffle puts
    it alone in validation; the split tries the seed's next shuffles and keeps both classes on
    both sides, the same split every time. When no split can, it says so."""
    groups = np.array([0] * 40 + [1] * 30 + [2] * 30)
    labels = np.r_[np.zeros(40), np.tile([0, 1], 15), np.tile([0, 1], 15)].astype(int)
    firsts = []
    for seed in range(12):
        split = split_indices(labels=labels, groups=groups, val_fraction=0.3, seed=seed)
        assert set(labels[split.val]) == set(labels[split.train]) == {0, 1}, seed
        assert not set(groups[split.train]) & set(groups[split.val])
        assert "lacks a class" not in split.note
        again = split_indices(labels=labels, groups=groups, val_fraction=0.3, seed=seed)
        assert np.array_equal(split.val, again.val)
        first = np.random.default_rng(seed).permutation(3)[0]
        firsts.append(first)
    assert 0 in firsts  # some seeds' first shuffle did put the negative case alone in validation
    # two cases, one all tumour, one all normal: no split keeps both classes on both sides
    apart = split_indices(labels=np.r_[np.ones(10), np.zeros(10)], groups=np.repeat([0, 1], 10))
    assert "validation lacks a class" in apart.note


def test_random_split_is_stratified_and_says_so():
    labels = np.array([0] * 70 + [1] * 30)
    s = split_indices(labels=labels, val_fraction=0.3, seed=0)
    assert s.by == "random" and "optimistic" in s.note and "no group" in s.note
    assert np.bincount(labels[s.val]).tolist() == [21, 9]
    assert not set(s.train) & set(s.val)
    assert np.array_equal(s.val, split_indices(labels=labels, val_fraction=0.3, seed=0).val)


@pytest.mark.skipif(not h5py_available(), reason="h5py is not installed")
def test_pcam_hdf5_reader(tmp_path):
    import h5py

    from inference.datasets import PCamDataset

    x = np.random.default_rng(0).integers(0, 256, (6, 96, 96, 3), dtype=np.uint8)
    y = np.array([0, 1, 1, 0, 1, 0], np.uint8).reshape(6, 1, 1, 1)
    base = tmp_path / "camelyonpatch_level_2_split_valid"
    with h5py.File(f"{base}_x.h5", "w") as f:
        f["x"] = x
    with h5py.File(f"{base}_y.h5", "w") as f:
        f["y"] = y
    ds = PCamDataset.from_directory(tmp_path, "valid")
    assert len(ds) == 6 and ds.labels.tolist() == [0, 1, 1, 0, 1, 0]
    assert torch.equal(ds[2][0], torch.from_numpy(x[2]).permute(2, 0, 1))
    xb, yb = ds.get_batch([5, 1, 5])
    assert torch.equal(xb, torch.from_numpy(x[[5, 1, 5]]).permute(0, 3, 1, 2))
    assert yb.tolist() == [0, 1, 0]


@pytest.mark.skipif(h5py_available(), reason="h5py is installed")
def test_pcam_without_h5py_says_what_to_install(tmp_path):
    from inference.datasets import PCamDataset

    with pytest.raises(ImportError, match="pip install h5py"):
        PCamDataset.from_directory(tmp_path, "train")
