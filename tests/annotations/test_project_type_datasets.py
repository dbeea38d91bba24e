"""Dataset snapshots by project type: a biopsy snapshot gets 256 px patches at 0.5 µm/px labelled
tumour / benign from its tumour polygons through the same labelling path; lymph-node defaults are
unchanged; slides of both types together are refused."""

from __future__ import annotations

import numpy as np
import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from annotations.datasets import DatasetError, create_snapshot, labels_path, load_snapshot_arrays
from annotations.models import Dataset
from slides.ingest import register_slide
from slides.models import Node
from slides.project_types import ProjectType
from slides.synthetic import SyntheticSlide, generate_slide, load_masks
from tests.factories import make_case

from .conftest import make_slide
from .test_datasets import _tissue_masks_once
from .test_labels_synthetic import any_in_patch, import_regions

SIDE = 1536  # at 0.5 µm/px: 6 x 6 biopsy patches of 256 px (128 µm), 19 x 19 lymph-node patches
ONLY_TUMOUR = {"tumour": "tumour"}  # a biopsy annotator draws tumour; the rest of tissue is benign


@pytest.fixture(scope="module")
def tissue_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("biopsy-tissue-masks")


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, SyntheticSlide]:
    folder = tmp_path_factory.mktemp("biopsy-slides")
    return {
        name: generate_slide(
            folder / f"{name}.tiff",
            width=SIDE,
            height=SIDE,
            mpp=0.5,
            seed=seed,
            tumour=tumour,
            n_tumour_nests=1 if tumour else None,
            mask_downsample=1,
        )
        for name, seed, tumour in (
            ("a", 41, True),
            ("b", 42, True),
            ("c", 43, False),
            ("d", 44, True),
        )
    }


def biopsies(
    people, files, tissue_cache, *, project_type: str = ProjectType.BIOPSY
) -> dict[str, object]:
    """Four cases of one project type: A, B and D with tumour polygons, C benign (negative)."""
    slides = {}
    for name in ("a", "b", "c", "d"):
        case = make_case(people.lab, f"NP-{name.upper()}", nodes=("nasopharynx",))
        case.project_type = project_type
        case.save()
        node = case.nodes.get()
        node.ground_truth = Node.GroundTruth.NEGATIVE if name == "c" else Node.GroundTruth.POSITIVE
        node.save()
        slides[name] = register_slide(node=node, path=files[name].path)
        if name != "c":
            assert import_regions(slides[name], files[name], people.pathologist, ONLY_TUMOUR) > 0
    _tissue_masks_once(slides.values(), tissue_cache)
    return slides


def test_biopsy_snapshot_has_256_px_patches_labelled_from_its_tumour_polygons(
    people, files, tissue_cache, capsys
):
    slides = biopsies(people, files, tissue_cache)
    ids = ",".join(str(s.pk) for s in slides.values())
    call_command("make_dataset", "np", "--slides", ids, "--now")  # no grid given
    assert "patches of 256 px at 0.5 µm/px" in capsys.readouterr().out
    ds = Dataset.objects.get(name="np")
    assert (ds.patch_px, ds.target_mpp, ds.stride_px) == (256, 0.5, 256)
    assert ds.training_classes == ["benign", "tumour"]
    assert {r["project_type"] for r in ds.slide_records} == {"biopsy"}
    assert {r["patch_size_px"] for r in ds.slide_records} == {256}  # level-0 px at 0.5 µm/px
    assert set(ds.split["train"]["training_counts"]) == {"benign", "tumour"}
    tumour = ds.classes.index("tumour")
    n = SIDE // 256
    for name, slide in slides.items():
        rows = np.load(labels_path(ds.folder, slide.pk))
        assert len(rows) > 0
        assert set(np.unique(rows["x0"] % 256)) == {0} and rows["x0"].max() <= SIDE - 256
        masks, downsample = load_masks(files[name].masks_path)
        assert downsample == 1
        touching = any_in_patch(masks["tumour"], 256, n, n)[rows["row"], rows["col"]]
        assert np.array_equal(rows["fine"] == tumour, touching)  # any tumour pixel → tumour
        assert np.array_equal(rows["label"] == 1, touching)
        if name == "c":
            assert not touching.any()
    assert ds.class_counts["tumour"] > 0 and ds.class_counts["non-tumour"] > 0

    assert ds.status == Dataset.Status.READY
    patches = load_snapshot_arrays(ds)
    assert patches.classes == ["benign", "tumour"]
    block = patches.pixels(np.arange(len(patches)))
    assert block.shape == (ds.total_patches, 256, 256, 3) and block.std() > 5


def test_grid_can_still_be_given_and_the_type_enters_the_hash(people, files, tissue_cache):
    slides = biopsies(people, files, tissue_cache)
    ids = [s.pk for s in slides.values()]
    given = create_snapshot(name="np-96", slides=ids, patch_px=128, target_mpp=1.0, enqueue=False)
    assert (given.patch_px, given.target_mpp, given.stride_px) == (128, 1.0, 128)
    assert given.training_classes == ["benign", "tumour"]
    # The same slides and grid as lymph-node cases: same labels, other names, another hash.
    from slides.models import Case

    Case.objects.filter(nodes__slides__in=ids).update(project_type=ProjectType.LYMPH_NODE)
    as_nodes = create_snapshot(
        name="ln-96", slides=ids, patch_px=128, target_mpp=1.0, enqueue=False
    )
    assert as_nodes.training_classes == ["non-tumour", "tumour"]
    assert as_nodes.class_counts == given.class_counts
    assert as_nodes.content_hash != given.content_hash


def test_lymph_node_defaults_are_unchanged(people, files, tissue_cache):
    slides = biopsies(people, files, tissue_cache, project_type=ProjectType.LYMPH_NODE)
    ds = create_snapshot(name="ln", slides=[s.pk for s in slides.values()], enqueue=False)
    assert (ds.patch_px, ds.target_mpp, ds.stride_px) == (40, 1.0, 40)
    assert ds.training_classes == ["non-tumour", "tumour"]
    assert {r["patch_size_px"] for r in ds.slide_records} == {80}


def test_slides_of_both_project_types_are_refused(people):
    node_case = make_case(people.lab, "LN-1", nodes=("level II, node 1",))
    biopsy_case = make_case(people.lab, "NP-1", nodes=("nasopharynx",))
    biopsy_case.project_type = ProjectType.BIOPSY
    biopsy_case.save()
    mixed = [make_slide(node_case.nodes.get()).pk, make_slide(biopsy_case.nodes.get()).pk]
    with pytest.raises(
        DatasetError,
        match=r"one project type, and these cases mix them \(biopsy: NP-1; lymph node: LN-1\)",
    ):
        create_snapshot(name="mixed", slides=mixed, enqueue=False)
    with pytest.raises(CommandError, match="mix them"):
        call_command("make_dataset", "mixed", "--slides", ",".join(map(str, mixed)))
    assert not Dataset.objects.exists()
