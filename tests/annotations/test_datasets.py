"""Dataset snapshots: frozen labels and hash, split by case, refusals, extraction and loading."""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass

import numpy as np
import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from large_image.constants import TILE_FORMAT_NUMPY
from PIL import Image

from annotations import extraction, services
from annotations.datasets import (
    LABEL_DTYPE,
    DatasetError,
    SnapshotPatchDataset,
    create_snapshot,
    labels_path,
    open_snapshot,
    patches_path,
    sample_patches,
)
from annotations.models import Annotation, Dataset, DatasetFrozen
from annotations.tasks import extract_dataset
from annotations.tissue import DEFAULT_MAX_SIZE, cache_path, tissue_mask
from slides.ingest import register_slide
from slides.models import Node, Slide
from slides.synthetic import SyntheticSlide, generate_slide
from slides.tiles import source_cache, source_for
from tests.factories import make_case

from .conftest import make_slide
from .test_labels_synthetic import import_regions

SIDE = 1024  # 0.5 µm/px: 12 x 12 patches of 40 px at 1.0 µm/px (80 level-0 px)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, SyntheticSlide]:
    folder = tmp_path_factory.mktemp("dataset-slides")
    out = {}
    for name, seed, tumour in (("a", 31, True), ("b", 32, True), ("n", 34, False)):
        out[name] = generate_slide(
            folder / f"{name}.tiff",
            width=SIDE,
            height=SIDE,
            mpp=0.5,
            seed=seed,
            tumour=tumour,
            n_tumour_nests=2 if tumour else None,
        )
    return out


@pytest.fixture(scope="module")
def tissue_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("tissue-masks")


@dataclass
class World:
    slides: dict[str, Slide]
    people: object
    files: dict[str, SyntheticSlide]

    def ids(self, *names: str) -> list[int]:
        return [self.slides[n].pk for n in names]


@pytest.fixture
def world(people, files, tissue_cache, tmp_path) -> World:
    """Three cases: A (slide a, tumour), B (slide b, tumour), C (slide n of a negative node)."""
    slides = {}
    for name, accession in (("a", "S26-A"), ("b", "S26-B"), ("n", "S26-C")):
        node = make_case(people.lab, accession, nodes=("node 1",)).nodes.get()
        node.ground_truth = Node.GroundTruth.NEGATIVE if name == "n" else Node.GroundTruth.POSITIVE
        node.save()
        path = tmp_path / f"{name}.tiff"  # a copy per test: a test may delete or damage it
        shutil.copyfile(files[name].path, path)
        slides[name] = register_slide(node=node, path=path)
        if name != "n":
            import_regions(slides[name], files[name], people.pathologist)
    _tissue_masks_once(slides.values(), tissue_cache)
    return World(slides=slides, people=people, files=files)


def _tissue_masks_once(slides, folder) -> None:
    """Tissue masks are cached by checksum under RESULTS_DIR, which is new for every test: copy
    them from the first test that computed them (the copies have the same checksums)."""
    for slide in slides:
        cached = cache_path(slide, DEFAULT_MAX_SIZE)
        kept = folder / cached.name
        if kept.exists():
            cached.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(kept, cached)
        else:
            tissue_mask(slide)
            shutil.copyfile(cached, kept)


def snapshot(world: World, name: str = "ds", names=("a", "b", "n"), **kwargs) -> Dataset:
    kwargs.setdefault("enqueue", False)
    return create_snapshot(
        name=name, slides=world.ids(*names), user=world.people.pathologist, **kwargs
    )


def label_rows(dataset: Dataset) -> dict[int, np.ndarray]:
    return {r["id"]: np.load(labels_path(dataset.folder, r["id"])) for r in dataset.slide_records}


def file_bytes(dataset: Dataset) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(dataset.folder.iterdir())}


# ---- snapshots ----------------------------------------------------------------------------------


def test_snapshot_records_labels_split_by_case_and_queues_extraction(
    world, monkeypatch, django_capture_on_commit_callbacks
):
    queued = []
    monkeypatch.setattr(
        extract_dataset, "apply_async", lambda args, queue: queued.append((args[0], queue))
    )
    with django_capture_on_commit_callbacks(execute=True):
        ds = snapshot(world, enqueue=True)
    assert queued == [(ds.pk, "default")] and ds.status == Dataset.Status.PENDING
    assert (ds.patch_px, ds.target_mpp, ds.stride_px) == (40, 1.0, 40)
    assert len(ds.content_hash) == 64 and ds.created_by == world.people.pathologist
    assert set(ds.slides.values_list("pk", flat=True)) == set(world.ids("a", "b", "n"))
    assert [r["checksum"] for r in ds.slide_records] == [
        Slide.objects.get(pk=r["id"]).checksum for r in ds.slide_records
    ]
    live = Annotation.objects.filter(slide__in=ds.slides.all())
    assert ds.annotation_versions == {str(a.pk): a.version for a in live}
    assert ds.class_counts["tumour"] > 0 and ds.class_counts["non-tumour"] > 0
    assert ds.class_counts["lymphoid-follicle"] > 0
    assert sum(ds.class_counts.values()) == ds.total_patches
    assert (ds.folder / "manifest.json").exists()

    rows = label_rows(ds)
    assert sum(len(r) for r in rows.values()) == ds.total_patches
    every = np.concatenate(list(rows.values()))
    assert every.dtype == LABEL_DTYPE
    # Split by case: every case on one side only, and both sides have both classes.
    sides = {}
    for case_id in np.unique(every["case"]):
        flags = set(every["val"][every["case"] == case_id].tolist())
        assert len(flags) == 1, f"case {case_id} is on both sides"
        sides[int(case_id)] = flags.pop()
    train_cases = {c["id"] for c in ds.split["train"]["cases"]}
    val_cases = {c["id"] for c in ds.split["val"]["cases"]}
    assert train_cases and val_cases and not train_cases & val_cases
    assert train_cases == {c for c, v in sides.items() if not v}
    assert val_cases == {c for c, v in sides.items() if v}
    for side in ("train", "val"):
        assert all(n > 0 for n in ds.split[side]["training_counts"].values())
    # Training label: tumour 1, everything else 0.
    tumour = ds.classes.index("tumour")
    assert np.array_equal(every["label"], (every["fine"] == tumour).astype(np.uint8))


def test_snapshot_is_immutable_and_a_new_one_sees_edits(world):
    ds = snapshot(world, name="first")
    before = file_bytes(ds)
    same = snapshot(world, name="same inputs")
    assert same.content_hash == ds.content_hash  # equal inputs, equal hash

    tumour = Annotation.objects.filter(slide=world.slides["a"], label_class__key="tumour")
    edited = tumour[0]
    gone = Annotation.objects.filter(slide=world.slides["b"], label_class__key="tumour")[0]
    services.update_annotation(
        annotation=edited,
        user=world.people.pathologist,
        expected_version=edited.version,
        label_class="non-tumour",
    )
    services.delete_annotation(annotation=gone, user=world.people.pathologist)

    ds.refresh_from_db()
    assert file_bytes(ds) == before
    assert ds.annotation_versions[str(edited.pk)] == 1
    ds.save(update_fields=["status_reason"])  # extraction state may be written
    ds.name = "renamed"
    with pytest.raises(DatasetFrozen):
        ds.save()
    with pytest.raises(DatasetFrozen):
        ds.save(update_fields=["name"])

    later = snapshot(world, name="after edits")
    assert later.content_hash != ds.content_hash
    assert later.annotation_versions[str(edited.pk)] == 2
    assert later.class_counts["tumour"] < ds.class_counts["tumour"]
    ds.refresh_from_db()
    assert ds.name == "first" and file_bytes(ds) == before


def test_sampling_caps_classes_with_a_seed(world):
    full = snapshot(world, name="full")
    capped = snapshot(world, name="capped", max_per_class=6)
    assert all(n <= 6 for n in capped.class_counts.values())
    assert capped.class_counts["tumour"] == 6 and capped.content_hash != full.content_hash
    again = snapshot(world, name="capped again", max_per_class=6)
    assert again.content_hash == capped.content_hash
    other_seed = snapshot(world, name="capped seed 1", max_per_class=6, seed=1)
    assert other_seed.content_hash != capped.content_hash

    fine = np.array([0] * 10 + [1] * 100 + [2] * 3 + [3] * 50)  # 0 = tumour
    kept = sample_patches(
        fine, n_classes=4, tumour=np.array([0]), max_per_class=None, balanced=True, seed=0
    )
    counts = np.bincount(fine[kept], minlength=4)
    # Ten non-tumour places shared by water-filling: the 3 rare ones stay, the rest split 4 / 3.
    assert counts[0] == 10 and counts[2] == 3 and counts[1:].sum() == 10
    assert sorted(counts[[1, 3]].tolist()) == [3, 4]


def test_refusals(world, case):
    with pytest.raises(DatasetError, match="at least one slide"):
        create_snapshot(name="none", slides=[])
    with pytest.raises(DatasetError, match="no such slide"):
        create_snapshot(name="missing", slides=[999_999])
    no_mpp = make_slide(case.nodes.first(), mpp=None)
    with pytest.raises(DatasetError, match="without µm per pixel.*" + str(no_mpp.pk)):
        create_snapshot(name="no mpp", slides=[no_mpp.pk, world.slides["a"].pk])
    with pytest.raises(DatasetError, match="only one class overall: .* no tumour patch"):
        snapshot(world, name="negative only", names=("n",))
    with pytest.raises(DatasetError, match="one case"):
        snapshot(world, name="one case", names=("a",))
    unannotated = make_slide(case.nodes.first(), mpp=0.5)
    with pytest.raises(DatasetError, match="has no annotations"):
        create_snapshot(name="unannotated", slides=[unannotated.pk, world.slides["a"].pk])
    snapshot(world, name="taken", names=("a", "b"))
    with pytest.raises(DatasetError, match="already exists"):
        snapshot(world, name="taken", names=("a", "b"))
    # Tumour only in case A: a split that puts case A in validation leaves training without it.
    messages = set()
    for seed in range(12):
        try:
            snapshot(world, name=f"split {seed}", names=("a", "n"), seed=seed)
        except DatasetError as exc:
            messages.add(re.sub(r" \(its cases.*", "", str(exc).split("leaves ")[-1]))
        if "no tumour patch in training" in messages:
            break
    assert "no tumour patch in training" in messages
    assert Dataset.objects.filter(name__startswith="split").count() == 0


# ---- extraction ---------------------------------------------------------------------------------


def test_extraction_task_writes_arrays_equal_to_region_reads(world):
    ds = snapshot(world)
    assert extract_dataset(ds.pk) == Dataset.Status.READY
    ds.refresh_from_db()
    assert ds.status == Dataset.Status.READY and ds.extracted_patches == ds.total_patches
    assert ds.progress["fraction"] == 1.0 and ds.attempts == 1
    assert not list(ds.folder.glob(".*"))
    rng = np.random.default_rng(0)
    for rec in ds.slide_records:
        rows = np.load(labels_path(ds.folder, rec["id"]))
        pixels = np.load(patches_path(ds.folder, rec["id"]), mmap_mode="r")
        assert pixels.shape == (len(rows), 40, 40, 3) and pixels.dtype == np.uint8
        source = source_for(Slide.objects.get(pk=rec["id"]))
        for i in rng.choice(len(rows), size=min(8, len(rows)), replace=False):
            direct, _ = source.getRegion(
                region={
                    "left": int(rows["x0"][i]),
                    "top": int(rows["y0"][i]),
                    "width": 80,
                    "height": 80,
                    "units": "base_pixels",
                },
                scale={"mm_x": 1.0 / 1000, "mm_y": 1.0 / 1000},
                format=TILE_FORMAT_NUMPY,
            )
            assert np.array_equal(pixels[i], np.asarray(direct)[..., :3])


def test_extraction_at_a_scale_between_levels(world):
    """0.381 µm/px read at 1.0 µm/px: 105 level-0 px per patch, read from the 2x level and resized
    once by 1.3125 in blocks. Each patch is close to the exact box read at level 0 and resized once
    (what is left is the pyramid's own averaging), closer than large-image's per-patch read, which
    snaps the box to whole level pixels."""
    slide = world.slides["a"]
    size = 105  # odd: half the patches start between two pixels of the 2x level
    rows = np.zeros(30, dtype=LABEL_DTYPE)
    cells = np.random.default_rng(1).choice(81, size=30, replace=False)
    rows["y0"], rows["x0"] = (cells // 9) * size, (cells % 9) * size
    out = np.zeros((30, 40, 40, 3), np.uint8)
    extraction.extract_slide(slide, rows, out, patch_px=40, size=size, block_px=160)
    one_block = np.zeros_like(out)
    extraction.extract_slide(
        slide, rows, one_block, patch_px=40, size=size, block_px=4096, workers=1
    )
    assert np.array_equal(out, one_block)  # no seams: a patch does not depend on its block
    source = source_for(slide)
    ours, per_patch = [], []
    for i in range(30):
        box = {
            "left": int(rows["x0"][i]),
            "top": int(rows["y0"][i]),
            "width": size,
            "height": size,
            "units": "base_pixels",
        }
        level0, _ = source.getRegion(region=box, format=TILE_FORMAT_NUMPY)
        exact = Image.fromarray(np.asarray(level0)[..., :3]).resize((40, 40), Image.LANCZOS)
        exact = np.asarray(exact).astype(int)
        snapped, _ = source.getRegion(
            region=box, output={"maxWidth": 40, "maxHeight": 40}, format=TILE_FORMAT_NUMPY
        )
        ours.append(np.abs(out[i] - exact).mean())
        per_patch.append(np.abs(np.asarray(snapped)[..., :3] - exact).mean())
    assert np.mean(ours) < 4 and np.mean(ours) <= np.mean(per_patch), (ours, per_patch)


def test_open_snapshot_memory_maps_the_split(world):
    ds = snapshot(world)
    with pytest.raises(DatasetError, match="pending, not ready"):
        open_snapshot(ds.pk)
    extract_dataset(ds.pk)
    train, val, content_hash, summary = open_snapshot(ds.pk)
    assert content_hash == ds.content_hash == summary["content_hash"]
    assert len(train) + len(val) == ds.total_patches
    assert (len(train), len(val)) == (ds.split["train"]["patches"], ds.split["val"]["patches"])
    assert summary["classes"] == ["non-tumour", "tumour"] == train.classes
    assert not set(train.groups.tolist()) & set(val.groups.tolist())
    assert set(np.unique(train.labels)) == {0, 1} == set(np.unique(val.labels))
    full = train.dataset
    assert isinstance(full, SnapshotPatchDataset)
    assert all(isinstance(m, np.memmap) for m in full.images)
    images, labels = train.get_batch([5, 0, 3])
    assert images.shape == (3, 3, 40, 40) and str(images.dtype) == "torch.uint8"
    assert labels.tolist() == train.labels[[5, 0, 3]].tolist()
    patch, label = val[2]
    assert patch.shape == (3, 40, 40) and label == val.labels[2]
    first = full.records[train.indices[0]]
    stored = np.load(patches_path(ds.folder, int(full.slide_ids[train.indices[0]])))
    local = int(full.local[train.indices[0]])
    assert np.array_equal(images[1].permute(1, 2, 0).numpy(), stored[local])
    assert first["val"] == 0


def test_rerun_is_idempotent_and_a_live_claim_is_respected(world):
    ds = snapshot(world, names=("a", "b"))
    extract_dataset(ds.pk)
    stamps = {p.name: p.stat().st_mtime_ns for p in ds.folder.iterdir()}
    assert extract_dataset(ds.pk) == Dataset.Status.READY
    assert {p.name: p.stat().st_mtime_ns for p in ds.folder.iterdir()} == stamps
    ds.refresh_from_db()
    assert ds.attempts == 1

    busy = snapshot(world, name="busy", names=("a", "b"))
    assert busy.claim(worker="elsewhere")
    assert extract_dataset(busy.pk) == Dataset.Status.EXTRACTING  # a live worker holds it
    assert not list(busy.folder.glob("patches-*"))
    Dataset.objects.filter(pk=busy.pk).update(heartbeat_at=Dataset.stale_before() - timedelta_s(5))
    assert extract_dataset(busy.pk) == Dataset.Status.READY  # its worker died: taken over
    busy.refresh_from_db()
    assert busy.attempts == 2


def timedelta_s(seconds: float):
    from datetime import timedelta

    return timedelta(seconds=seconds)


def test_failed_extraction_leaves_no_partial_file_and_resumes(world, monkeypatch):
    ds = snapshot(world)
    second = ds.slide_records[1]["id"]
    real = extraction.read_level_region
    calls = {"n": 0}

    target = source_for(Slide.objects.get(pk=second))

    def flaky(source, plan, *args):
        if source is target:
            calls["n"] += 1
            if calls["n"] == 2:  # mid-way through the second slide
                raise OSError("read error: the slide file became unreadable")
        return real(source, plan, *args)

    monkeypatch.setattr(extraction, "read_level_region", flaky)
    monkeypatch.setattr(extraction, "BLOCK_PX", 160)
    assert extraction.execute_extraction(dataset_id=ds.pk, workers=1) == Dataset.Status.FAILED
    ds.refresh_from_db()
    assert ds.status == Dataset.Status.FAILED
    assert f"slide {second}" in ds.status_reason and "became unreadable" in ds.status_reason
    assert calls["n"] >= 2  # it failed after reading part of the slide
    first = ds.slide_records[0]["id"]
    assert patches_path(ds.folder, first).exists()  # complete, renamed into place
    assert not patches_path(ds.folder, second).exists()
    assert not [p for p in ds.folder.iterdir() if p.name.startswith(".")]
    with pytest.raises(DatasetError, match="failed, not ready: slide"):
        open_snapshot(ds.pk)

    done_at = patches_path(ds.folder, first).stat().st_mtime_ns
    monkeypatch.setattr(extraction, "read_level_region", real)
    assert extract_dataset(ds.pk) == Dataset.Status.READY  # a failed one may run again
    assert patches_path(ds.folder, first).stat().st_mtime_ns == done_at  # not redone
    assert len(open_snapshot(ds.pk)[0]) > 0


def test_a_missing_slide_file_fails_with_its_name(world):
    ds = snapshot(world, names=("a", "b"))
    lost = world.slides["b"]
    source_cache.clear()
    os.rename(lost.file_path, lost.file_path + ".moved")
    assert extract_dataset(ds.pk) == Dataset.Status.FAILED
    ds.refresh_from_db()
    assert ds.status_reason.startswith(f"slide {lost.pk} ({lost.name}):")
    assert not patches_path(ds.folder, lost.pk).exists()


def test_make_dataset_command(world, capsys):
    ids = ",".join(map(str, world.ids("a", "b", "n")))
    call_command("make_dataset", "cli", "--slides", ids, "--max-per-class", "20", "--now")
    ds = Dataset.objects.get(name="cli")
    assert ds.status == Dataset.Status.READY and max(ds.class_counts.values()) <= 20
    out = capsys.readouterr()
    assert "ready:" in out.out and "training" in out.out
    with pytest.raises(CommandError, match="already exists"):
        call_command("make_dataset", "cli", "--slides", ids)
    with pytest.raises(CommandError, match="slide ids"):
        call_command("make_dataset", "x", "--slides", "a,b")


def test_deleting_a_snapshot_removes_its_folder_once_the_deletion_commits(
    world, django_capture_on_commit_callbacks
):
    from django.db import transaction

    ds = snapshot(world, name="to-delete")
    folder = ds.folder
    assert (folder / "manifest.json").is_file()
    # a deletion that rolls back keeps the folder
    with django_capture_on_commit_callbacks(execute=False) as callbacks, transaction.atomic():
        Dataset.objects.get(pk=ds.pk).delete()
        transaction.set_rollback(True)
    assert not callbacks and Dataset.objects.filter(pk=ds.pk).exists() and folder.is_dir()
    with django_capture_on_commit_callbacks(execute=True):
        Dataset.objects.get(pk=ds.pk).delete()
    assert not Dataset.objects.filter(pk=ds.pk).exists()
    assert not folder.exists()
