"""Dense scanning, the cascade, heat maps, rescoring jobs and the overlay endpoints.

The exactness tests compare dense scanning with the patch loop (every window classified on its
own) on random weights and on a tiny model trained on generated slides; the trained model is also
shown to score tumour nodes above follicle-only nodes.
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from django.core.management import call_command
from django.urls import include, path
from PIL import Image

import config.urls
from inference.heatmaps import (
    Raster,
    heatmap_dir,
    raster_cache,
    read_raster,
    regions_at_threshold,
    render_tile,
    write_raster,
)
from inference.models import build_model
from inference.models.layers import PatchClassifier
from inference.records import (
    HeatMap,
    ModelVersion,
    NodeScore,
    ScoringRun,
    SlideScoring,
    Stage,
    TrainingRun,
)
from inference.rescoring import (
    ScoringRequestError,
    rescore_after_promotion,
    rescore_all,
    score_imported_slides,
    score_slide_job,
    screening_changes,
)
from inference.scoring import (
    DENSE_MOBILENET,
    Classifier,
    NotDenseScannable,
    ScanGeometry,
    box_sum_full,
    cells_from_mask,
    naive_window_probabilities,
    scan_image,
)
from inference.training import WEIGHTS_FORMAT, TrainingRecipe, atomic_torch_save, train
from slides.ingest import register_slide
from slides.models import Node
from slides.synthetic import generate_slide, load_masks

from ..factories import make_case

# The heat-map API under /api/ (the lead mounts inference.heatmap_urls in config/urls.py too).
urlpatterns = [path("api/", include("inference.heatmap_urls")), *config.urls.urlpatterns]
HEATMAP_URLS = "tests.inference.test_scoring"

TINY = {**DENSE_MOBILENET, "width_mult": 0.25, "last_channels": 64}
G = ScanGeometry()  # 40 px window, stride 10, 1.0 µm/px


# ---- helpers (also used by tests/integration/test_rescoring_worker.py) ------------------------


def random_dense_model(name: str = "mobilenetv2", *, seed: int = 0, **kw) -> PatchClassifier:
    """A valid-padded model with random weights and non-trivial batch-norm statistics."""
    torch.manual_seed(seed)
    config = TINY if name == "mobilenetv2" and not kw else kw
    model = build_model(name, num_classes=2, input_size=40, **config)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.3, 0.3)
        # a head that spreads the probabilities over (0, 1) for random windows
        model.eval()
        windows = torch.rand(64, 3, 40, 40) * 4 - 2
        features = torch.nn.functional.adaptive_avg_pool2d(model.forward_features(windows), 1)
        features = features.flatten(1)
        direction = torch.randn(features.shape[1])
        projected = features @ direction
        direction *= 2.0 / projected.std()
        model.fc.weight.copy_(torch.stack([torch.zeros_like(direction), direction]))
        model.fc.bias.copy_(torch.tensor([0.0, -float((features @ direction).mean())]))
    return model.eval()


def save_weights(model: PatchClassifier, path: Path, *, recipe: dict | None = None) -> Path:
    """A weights file in train()'s format for ``model``."""
    return atomic_torch_save(
        {
            "format": WEIGHTS_FORMAT,
            "model_name": model.name,
            "model_config": dict(model.config),
            "classes": ["normal", "tumour"],
            "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "recipe": TrainingRecipe(model_kwargs=dict(recipe or {})).to_dict(),
            "metrics": {},
        },
        path,
    )


def make_version(
    weights: Path,
    *,
    stage: str = Stage.PRIMARY,
    name: str | None = None,
    threshold: float | None = None,
    padding: str = "valid",
    live: bool = False,
) -> ModelVersion:
    """A ModelVersion (and its succeeded TrainingRun) for a weights file."""
    run = TrainingRun.objects.create(
        dataset_source={"kind": "test"}, stage=stage, status=TrainingRun.Status.SUCCEEDED
    )
    return ModelVersion.objects.create(
        training_run=run,
        name=name or f"test-{stage}-{run.pk}",
        architecture="mobilenetv2",
        stage=stage,
        weights_path=str(weights),
        weights_sha256=hashlib.sha256(Path(weights).read_bytes()).hexdigest(),
        dataset_hash="0" * 64,
        hyperparameters={"model_kwargs": {"padding": padding}},
        code_version="test",
        classes=["normal", "tumour"],
        val_accuracy=1.0,
        val_auc=1.0,
        threshold=threshold,
        is_live=live,
    )


def generated_slide(node: Node, folder: Path, *, seed: int, tumour: bool, size=(600, 500), mpp=1.0):
    synthetic = generate_slide(
        folder / f"slide-{seed}.tiff",
        width=size[0],
        height=size[1],
        mpp=mpp,
        seed=seed,
        tumour=tumour,
        workers=1,
    )
    return register_slide(node=node, path=synthetic.path, synthetic=True)


class RedMean(PatchClassifier):
    """A model with known output: P(tumour) = sigmoid(gain * (mean of channel ``channel`` over
    the window - cut)), computed from valid (1x1) features; counts the pixels it is shown."""

    name = "red-mean"

    def __init__(self, *, channel: int = 0, cut: float = 0.0, gain: float = 20.0) -> None:
        super().__init__()
        self.channel, self.padding, self.output_stride = channel, "valid", 1
        self.input_size, self.in_channels, self.config = 40, 3, {}
        self.dropout = torch.nn.Identity()
        self.fc = torch.nn.Linear(1, 2)
        with torch.no_grad():
            self.fc.weight.copy_(torch.tensor([[0.0], [gain]]))
            self.fc.bias.copy_(torch.tensor([0.0, -gain * cut]))
        self.windows_seen = 0

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, self.channel : self.channel + 1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.windows_seen += x.shape[0]
        return super().forward(x)


def known_classifier(*, channel: int, cut: float) -> Classifier:
    # mean 0 / std 1 after /255: the feature is the channel's intensity in [0, 1]
    return Classifier(model=RedMean(channel=channel, cut=cut), mean=(0, 0, 0), std=(1, 1, 1))


def gradients(height: int = 260, width: int = 300, seed: int = 0) -> np.ndarray:
    """Red rises left to right, green top to bottom, plus noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    img = np.stack([xx * 255 / width, yy * 255 / height, np.full_like(xx, 128.0)], axis=-1)
    return np.clip(img + rng.normal(0, 25, img.shape), 0, 255).astype(np.uint8)


# ---- exactness -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "kw", "passes"),
    [
        ("mobilenetv2", TINY, 1),  # total stride 2 divides the 10 px stride: one run per tile
        ("mobilenetv2", {**TINY, "output_stride": 4}, 4),  # shift-and-stitch, 2 x 2 runs
        ("resnet-small", {"blocks": (1, 1), "widths": (8, 16), "padding": "valid"}, 4),
    ],
)
def test_dense_scanning_equals_the_patch_loop_with_random_weights(name, kw, passes):
    model = random_dense_model(name, seed=1, **kw)
    classifier = Classifier(model=model).to("cpu")
    assert classifier.passes(G.stride) == passes
    image = np.random.default_rng(2).integers(0, 256, (213, 187, 3), dtype=np.uint8)
    naive = naive_window_probabilities(classifier, image, window=40, stride=10)
    assert naive.shape == (G.windows_along(213), G.windows_along(187)) == (18, 15)
    assert naive.std() > 0.05 and (naive > 0.5).any() and (naive < 0.5).any()
    # one dense run over the whole image
    dense = classifier.dense_probabilities(image[None], window=40, stride=10)[0]
    assert np.abs(dense - naive).max() <= 1e-4
    # tiled with halos: 4 x 4 windows per tile, batches of 3 tiles, padded edge tiles
    result = scan_image(image, primary=classifier, tile_windows=4, batch_tiles=3)
    assert result.tiles_total == result.tiles_scanned == 5 * 4
    assert np.abs(result.primary - naive).max() <= 1e-4


def test_same_padding_is_refused_with_the_reason():
    same = build_model("mobilenetv2", num_classes=2, input_size=40, width_mult=0.25)
    with pytest.raises(NotDenseScannable, match='padding="valid"'):
        scan_image(np.zeros((80, 80, 3), np.uint8), primary=Classifier(model=same))
    wrong_window = random_dense_model()
    with pytest.raises(Exception, match="trained on 40 px patches"):
        scan_image(
            np.zeros((80, 80, 3), np.uint8),
            primary=Classifier(model=wrong_window),
            geometry=ScanGeometry(window=48, stride=12),
        )


def test_box_sum_equals_the_naive_per_pixel_count():
    rng = np.random.default_rng(0)
    decisions = rng.random((23, 31)) < 0.3
    counts = box_sum_full(decisions, 4)
    assert counts.shape == (26, 34)
    # seed 002 literally: every pixel of a tumour window gains 1/16
    score = np.zeros((10 * 26, 10 * 34))
    for i, j in zip(*np.nonzero(decisions), strict=True):
        score[10 * i : 10 * i + 40, 10 * j : 10 * j + 40] += 0.0625
    per_pixel = np.kron(counts, np.ones((10, 10))) / 16
    assert np.array_equal(per_pixel, score)
    assert counts.max() <= 16


def test_cascade_consults_the_secondary_only_where_the_primary_says_tumour():
    image = gradients()
    primary = known_classifier(channel=0, cut=0.55).to("cpu")  # right part
    secondary = known_classifier(channel=1, cut=0.45).to("cpu")  # lower part
    tissue = np.ones((G.cells_along(260), G.cells_along(300)), bool)
    tissue[:, :4] = False  # a strip of glass on the left
    result = scan_image(
        image,
        primary=primary,
        secondary=secondary,
        tissue_cells=tissue,
        secondary_mode="gather",
        tile_windows=8,
    )
    seen = secondary.model.windows_seen
    p1 = naive_window_probabilities(primary, image, window=40, stride=10)
    p2 = naive_window_probabilities(secondary, image, window=40, stride=10)
    in_tissue = result.tissue_windows
    assert not in_tissue[:, 0].any() and in_tissue[:, 1:].all()  # windows all on glass are skipped
    called = in_tissue & (p1 >= 0.5)
    assert 0 < called.sum() < in_tissue.sum()
    # the secondary saw exactly the primary's tumour windows, nothing else
    assert result.secondary_windows == seen == called.sum()
    assert np.array_equal(~np.isnan(result.secondary), called)
    expected = called & (p2 >= 0.5)
    assert 0 < expected.sum() < called.sum()
    assert np.array_equal(result.decisions, expected)
    counts = box_sum_full(expected, 4)[: tissue.shape[0], : tissue.shape[1]]
    counts[~tissue] = 0
    assert np.array_equal(result.counts, counts)
    assert result.max_score == 1.0
    # running the secondary densely over the tiles that need it decides the same
    dense = scan_image(
        image, primary=primary, secondary=secondary, tissue_cells=tissue, secondary_mode="dense"
    )
    assert np.array_equal(dense.decisions, expected)


def test_tiles_without_tissue_are_not_computed():
    classifier = Classifier(model=random_dense_model()).to("cpu")
    image = np.random.default_rng(3).integers(0, 256, (400, 400, 3), dtype=np.uint8)
    tissue = np.zeros((40, 40), bool)
    tissue[5:9, 6:10] = True
    result = scan_image(image, primary=classifier, tissue_cells=tissue, tile_windows=10)
    assert result.tiles_total == 16 and result.tiles_scanned == 1
    assert np.isnan(result.primary[~result.tissue_windows]).all()
    assert not result.counts[~tissue].any()


def test_cells_from_mask_marks_every_cell_touching_tissue():
    mask = np.zeros((50, 60), bool)  # one mask px = 4 level-0 px
    mask[10, 20] = True  # level-0 x 80..84, y 40..44
    cells = cells_from_mask(mask, level0_width=240, level0_height=200, cell_px=20, rows=10, cols=12)
    assert np.argwhere(cells).tolist() == [[2, 4]]


# ---- a tiny model trained on generated slides ----------------------------------------------


def _read_at_1um(path: Path) -> np.ndarray:
    import large_image

    source = large_image.open(str(path))
    pixels, _ = source.getRegion(
        scale={"mm_x": 0.001, "mm_y": 0.001}, format=large_image.constants.TILE_FORMAT_NUMPY
    )
    return np.asarray(pixels)[..., :3]


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """Slides at 0.5 µm/px (scanned at 1.0), a MobileNetV2 (width 0.25, valid padding) trained
    for three epochs on 40 px patches cut with the exact masks: tumour vs follicle and lymphocytes."""
    folder = tmp_path_factory.mktemp("trained")
    specs = {"train-pos": (40, True), "train-neg": (41, False)}
    specs |= {"pos-a": (50, True), "pos-b": (51, True), "neg-a": (60, False), "neg-b": (61, False)}
    slides = {}
    for key, (seed, tumour) in specs.items():
        slides[key] = generate_slide(
            folder / f"{key}.tiff",
            width=1800,
            height=1600,
            mpp=0.5,
            seed=seed,
            tumour=tumour,
            workers=1,
        )
    rng = np.random.default_rng(0)
    patches, labels = [], []
    for key in ("train-pos", "train-neg"):
        image = _read_at_1um(slides[key].path)
        masks, ds = load_masks(slides[key].masks_path)
        f = 2 / ds  # mask px per scan px
        taken = {"tumour": 0, "follicle": 0, "lymphoid": 0}
        for y, x in zip(
            rng.integers(0, image.shape[0] - 40, 5000),
            rng.integers(0, image.shape[1] - 40, 5000),
            strict=True,
        ):
            cut = (slice(int(y * f), int((y + 40) * f)), slice(int(x * f), int((x + 40) * f)))
            tumour, follicle = masks["tumour"][cut].mean(), masks["follicle"][cut].mean()
            if tumour >= 0.99:
                kind = "tumour"
            elif tumour == 0 and follicle >= 0.5:
                kind = "follicle"
            elif tumour == 0 and follicle == 0 and masks["tissue"][cut].mean() >= 0.99:
                kind = "lymphoid"
            else:
                continue
            if taken[kind] >= (160 if kind == "tumour" else 80):
                continue
            taken[kind] += 1
            patches.append(image[y : y + 40, x : x + 40])
            labels.append(int(kind == "tumour"))
    from inference.datasets import ArrayPatchDataset, PatchSubset

    data = ArrayPatchDataset(np.stack(patches), labels, classes=["normal", "tumour"])
    order = rng.permutation(len(labels))
    recipe = TrainingRecipe(
        max_epochs=3,
        batch_size=16,
        learning_rate=2e-3,
        model_kwargs=TINY,
        brightness=0,
        contrast=0,
        saturation=0,
        hue=0,
    )
    result = train(
        model_name="mobilenetv2",
        train_set=PatchSubset(data, order[len(order) // 4 :]),
        val_set=PatchSubset(data, order[: len(order) // 4]),
        recipe=recipe,
        checkpoint_dir=folder / "run",
        resume=False,
    )
    print("trained:", result.auc, result.accuracy, result.seconds)
    return {"slides": slides, "weights": result.weights_path, "auc": result.auc}


def test_dense_scanning_equals_the_patch_loop_with_a_trained_model(trained):
    classifier = Classifier.from_file(trained["weights"]).to("cpu")
    image = _read_at_1um(trained["slides"]["pos-a"].path)
    masks, ds = load_masks(trained["slides"]["pos-a"].masks_path)
    ys, xs = np.nonzero(masks["tumour"])
    cy, cx = int(ys.mean() * ds / 2), int(xs.mean() * ds / 2)  # a tumour nest, in scan px
    region = image[max(0, cy - 100) : cy + 100, max(0, cx - 100) : cx + 100]
    naive = naive_window_probabilities(classifier, region, window=40, stride=10)
    result = scan_image(region, primary=classifier, tile_windows=6)
    assert np.abs(result.primary - naive).max() <= 1e-4
    assert (naive >= 0.5).any()  # the region holds windows the model calls tumour


def test_trained_model_scores_tumour_nodes_above_follicle_only_nodes(trained, people, settings):
    assert trained["auc"] > 0.9
    case = make_case(people.lab, "S26-0100", nodes=("pos-a", "pos-b", "neg-a", "neg-b"))
    for node in case.nodes.all():
        node.ground_truth = "positive" if node.label.startswith("pos") else "negative"
        node.save()
        register_slide(node=node, path=trained["slides"][node.label].path, synthetic=True)
    version = make_version(Path(trained["weights"]))
    run = rescore_all(version=version, enqueue=False)
    for job in run.slide_jobs.all():
        assert score_slide_job(job.pk) == SlideScoring.Status.SUCCEEDED
    run.refresh_from_db()
    assert run.status == ScoringRun.Status.SUCCEEDED and run.slides_done == 4
    scores = {s.node.label: s for s in NodeScore.objects.filter(scoring_run=run)}
    assert set(scores) == {"pos-a", "pos-b", "neg-a", "neg-b"}
    lowest_positive = min(scores["pos-a"].score, scores["pos-b"].score)
    highest_negative = max(scores["neg-a"].score, scores["neg-b"].score)
    print({k: v.score for k, v in scores.items()})
    assert lowest_positive > highest_negative
    # the maximum lies in the tumour of a positive node (masks at 1/8 of level 0)
    best = scores["pos-a"]
    masks, ds = load_masks(trained["slides"]["pos-a"].masks_path)
    near = masks["tumour"][
        max(0, int(best.max_y // ds) - 10) : int(best.max_y // ds) + 10,
        max(0, int(best.max_x // ds) - 10) : int(best.max_x // ds) + 10,
    ]
    assert near.any()
    heatmap = best.max_heatmap
    assert heatmap.model_version == version and heatmap.stride_px == 20 and heatmap.window_px == 80
    raster = read_raster(heatmap.raster_path)
    assert raster.counts.dtype == np.uint8 and raster.denominator == 16
    assert raster.counts.shape == (heatmap.rows, heatmap.cols) == (80, 90)
    assert raster.counts.max() / 16 == heatmap.max_score == best.score


# ---- heat maps on disk, jobs ---------------------------------------------------------------


@pytest.fixture
def dense_version(tmp_path, db):
    return make_version(save_weights(random_dense_model(), tmp_path / "dense.pt"))


@pytest.fixture
def small_slide(case, tmp_path):
    return generated_slide(case.nodes.first(), tmp_path / "slides", seed=5, tumour=True)


class _Killed(BaseException):
    """Stands for the worker being killed (not an Exception: nothing handles it)."""


def test_a_worker_killed_while_writing_leaves_no_heat_map_and_the_slide_is_rescored(
    dense_version, small_slide, settings, monkeypatch
):
    run = rescore_all(version=dense_version, enqueue=False)
    job = run.slide_jobs.get()
    final = heatmap_dir() / f"run-{run.pk}" / f"slide-{small_slide.pk}.npz"

    class KilledAtRename:
        """`os` for inference.heatmaps, except that the process "dies" at the rename."""

        def __getattr__(self, name):
            return getattr(os, name)

        def replace(self, src, dst):
            # the temporary file is complete here; SIGKILL would leave it behind
            Path(src).with_name(Path(src).name + ".copy").write_bytes(Path(src).read_bytes())
            raise _Killed

    monkeypatch.setattr("inference.heatmaps.os", KilledAtRename())
    with pytest.raises(_Killed):
        score_slide_job(job.pk, worker="doomed")
    leftovers = list(final.parent.glob(".*.tmp.copy"))
    assert len(leftovers) == 1
    leftovers[0].rename(leftovers[0].with_suffix(""))  # as SIGKILL would have left it: *.tmp
    assert not final.exists() and not HeatMap.objects.exists() and not NodeScore.objects.exists()
    job.refresh_from_db()
    assert job.status == SlideScoring.Status.RUNNING  # truthfully: running, its worker gone
    # another worker may not take it while the heartbeat is fresh ...
    monkeypatch.setattr("inference.heatmaps.os", os)
    assert score_slide_job(job.pk, worker="eager") == SlideScoring.Status.RUNNING
    # ... but once the heartbeat is stale the slide is scanned afresh
    settings.JOB_STALE_SECONDS = -1
    assert score_slide_job(job.pk, worker="second") == SlideScoring.Status.SUCCEEDED
    job.refresh_from_db()
    assert job.attempts == 2 and job.progress == 1.0
    assert final.exists() and not list(final.parent.glob(".*.tmp"))
    heatmap = HeatMap.objects.get()
    assert heatmap.raster_path == str(final) and heatmap.scoring_run == run
    assert read_raster(final).counts.shape == (heatmap.rows, heatmap.cols)
    assert NodeScore.objects.get().max_heatmap == heatmap
    run.refresh_from_db()
    assert run.status == ScoringRun.Status.SUCCEEDED and run.slides_done == 1


def test_a_failing_slide_fails_truthfully_and_the_run_says_so(dense_version, small_slide):
    run = rescore_all(version=dense_version, enqueue=False)
    Path(small_slide.file_path).unlink()
    from slides.tiles import source_cache

    source_cache.clear()
    job = run.slide_jobs.get()
    assert score_slide_job(job.pk) == SlideScoring.Status.FAILED
    job.refresh_from_db()
    run.refresh_from_db()
    assert job.status_reason and run.status == ScoringRun.Status.FAILED and run.slides_failed == 1
    assert not HeatMap.objects.exists() and not NodeScore.objects.exists()


def test_rescore_all_queues_one_task_per_slide_on_the_gpu_queue(
    dense_version, case, tmp_path, settings, monkeypatch, django_capture_on_commit_callbacks
):
    nodes = list(case.nodes.all())
    for i, node in enumerate(nodes):
        generated_slide(node, tmp_path / "s", seed=10 + i, tumour=False, size=(200, 200))
    queued = []
    monkeypatch.setattr(
        "inference.tasks.score_slide.apply_async", lambda args, queue: queued.append((args, queue))
    )
    settings.TRAINING_QUEUE = "gpu-test"
    with django_capture_on_commit_callbacks(execute=True):
        run = rescore_all(version=dense_version, trigger=ScoringRun.Trigger.MANUAL)
    jobs = list(run.slide_jobs.order_by("pk"))
    assert run.slides_total == len(jobs) == 2 and run.threshold is None
    assert queued == [([job.pk], "gpu-test") for job in jobs]


def test_rescoring_refuses_models_that_cannot_scan_densely(db, tmp_path, small_slide):
    weights = save_weights(random_dense_model(), tmp_path / "w.pt")
    same = make_version(weights, padding="same")
    with pytest.raises(ScoringRequestError, match='padding="valid"'):
        rescore_all(version=same, enqueue=False)
    secondary = make_version(weights, stage=Stage.SECONDARY)
    with pytest.raises(ScoringRequestError, match="score with a primary model"):
        rescore_all(version=secondary, enqueue=False)
    with pytest.raises(ScoringRequestError, match="no slides with ids"):
        rescore_all(version=make_version(weights), slides=[999999], enqueue=False)
    assert not ScoringRun.objects.exists()


def test_promotion_run_uses_the_live_cascade_and_is_not_duplicated(dense_version, small_slide):
    secondary = make_version(Path(dense_version.weights_path), stage=Stage.SECONDARY, live=True)
    run = rescore_after_promotion(version=dense_version)
    assert run.trigger == ScoringRun.Trigger.PROMOTION
    assert run.model_version == dense_version and run.secondary_version == secondary
    assert rescore_after_promotion(version=dense_version) == run  # still queued: the same run


def test_imported_slides_are_scored_by_the_live_model_and_bad_models_do_not_block(
    dense_version, small_slide, tmp_path
):
    assert score_imported_slides(slides=[small_slide.pk]) is None  # nothing live yet
    ModelVersion.objects.filter(pk=dense_version.pk).update(is_live=True)
    run = score_imported_slides(slides=[small_slide.pk])
    assert run.trigger == ScoringRun.Trigger.IMPORT and run.slides_total == 1
    assert run.model_version == dense_version and run.secondary_version is None
    same = make_version(Path(dense_version.weights_path), padding="same")
    assert rescore_after_promotion(version=same) is None  # logged; promotion goes on
    assert ScoringRun.objects.count() == 1


def test_scores_keep_their_model_version_and_changes_are_listed(case, tmp_path, db):
    weights = save_weights(random_dense_model(), tmp_path / "w.pt")
    old_version, new_version = make_version(weights), make_version(weights)
    a, b = case.nodes.all()
    old = ScoringRun.objects.create(model_version=old_version, threshold=0.5)
    new = ScoringRun.objects.create(model_version=new_version, threshold=0.5)
    for run, version, (score_a, score_b) in (
        (old, old_version, (0.25, 0.75)),
        (new, new_version, (0.5, 0.75)),
    ):
        for node, score in ((a, score_a), (b, score_b)):
            NodeScore.objects.create(
                node=node,
                model_version=version,
                scoring_run=run,
                score=score,
                threshold=0.5,
                screened_positive=score >= 0.5,
            )
    changes = screening_changes(old, new)
    assert [(c.node_id, c.old_positive, c.new_positive, c.direction) for c in changes] == [
        (a.pk, False, True, "now positive")
    ]
    assert [c.node_id for c in screening_changes(old, new, threshold=0.8)] == []
    assert NodeScore.objects.filter(node=a).count() == 2  # the old score is kept


def test_manage_py_score_here(dense_version, small_slide, capsys):
    ModelVersion.objects.filter(pk=dense_version.pk).update(is_live=True)
    call_command(
        "score",
        "--here",
        "--slides",
        str(small_slide.pk),
        "--secondary",
        "none",
        "--version",
        str(dense_version.pk),
    )
    out = capsys.readouterr().out
    assert "scoring run" in out and '"slides_done": 1' in out
    assert HeatMap.objects.filter(slide=small_slide, model_version=dense_version).count() == 1


# ---- overlay endpoints -----------------------------------------------------------------------


@pytest.fixture
def live_heatmap(case, tiny_tiff, tmp_path, settings):
    """A hand-made heat map of the 1000 x 700 px tiny slide (0.5 µm/px: cells of 20 px)."""
    slide = register_slide(node=case.nodes.first(), path=tiny_tiff)
    weights = save_weights(random_dense_model(), tmp_path / "w.pt")
    version = make_version(weights, threshold=0.6875, live=True)
    counts = np.zeros((35, 50), np.uint8)
    counts[10:14, 20:26] = 12  # score 0.75 >= threshold: a 4 x 6 cell region
    counts[12, 22] = 16  # its maximum
    counts[30:32, 5:7] = 4  # 0.25: below the threshold
    path = write_raster(
        heatmap_dir() / "hand" / "slide.npz",
        counts=counts,
        denominator=16,
        stride_px=20,
        window_px=80,
    )
    raster_cache.clear()
    from inference.heatmap_views import heatmap_rows

    heatmap_rows.clear()
    heatmap = HeatMap.objects.create(
        slide=slide,
        model_version=version,
        raster_path=str(path),
        stride_px=20,
        window_px=80,
        rows=35,
        cols=50,
        max_score=1.0,
        max_x=22.5 * 20,
        max_y=12.5 * 20,
    )
    return slide, heatmap


@pytest.mark.urls(HEATMAP_URLS)
def test_overlay_tilesource_tiles_and_regions(client, people, live_heatmap):
    slide, heatmap = live_heatmap
    client.force_login(people.pathologist)
    info = client.get(f"/api/slides/{slide.pk}/heatmap/tilesource/").json()
    assert info["id"] == heatmap.pk and info["levels"] == slide.levels
    assert (info["width"], info["height"], info["tileWidth"]) == (1000, 700, slide.tile_width)
    assert info["max"] == {"x": 450.0, "y": 250.0} and info["threshold"] == 0.6875
    assert info["screenedPositive"] is True and len(info["legend"]) == 16
    top = slide.levels - 1
    tile_url = info["tileUrl"].replace("{z}", str(top)).replace("{x}", "1").replace("{y}", "0")
    response = client.get(tile_url)
    assert response.status_code == 200 and response["Content-Type"] == "image/png"
    assert "max-age" in response["Cache-Control"] and response["ETag"]
    tile = np.asarray(Image.open(io.BytesIO(response.content)))
    assert tile.shape == (256, 256, 4)
    # level-0 x 256..512, y 0..256: cells 20-25 x 10-13 are coloured, the rest transparent
    assert tile[12 * 20 - 0 + 5, 20 * 20 - 256 + 5, 3] > 0  # inside the region
    assert tile[5, 5, 3] == 0  # score 0
    assert (
        tile[12 * 20 + 5, 22 * 20 - 256 + 5, :3].tolist()
        != tile[10 * 20 + 5, 20 * 20 - 256 + 5, :3].tolist()
    )
    again = client.get(tile_url, HTTP_IF_NONE_MATCH=response["ETag"])
    assert again.status_code == 304
    edge = client.get(
        info["tileUrl"].replace("{z}", str(top)).replace("{x}", "3").replace("{y}", "2")
    )
    assert Image.open(io.BytesIO(edge.content)).size == (
        1000 - 768,
        700 - 512,
    )  # cropped like slide tiles
    whole = client.get(info["tileUrl"].replace("{z}", "0").replace("{x}", "0").replace("{y}", "0"))
    assert whole.status_code == 200
    assert (
        client.get(
            info["tileUrl"].replace("{z}", str(top)).replace("{x}", "9").replace("{y}", "0")
        ).status_code
        == 404
    )
    regions = client.get(info["regionsUrl"]).json()
    assert regions["properties"]["threshold"] == 0.6875
    assert regions["properties"]["threshold_source"] == "locked"
    (feature,) = regions["features"]
    assert feature["geometry"]["type"] == "Polygon"
    assert feature["geometry"]["coordinates"][0][0] in (
        [400.0, 200.0],
        [520.0, 200.0],
        [520.0, 280.0],
        [400.0, 280.0],
    )
    assert feature["properties"]["max_score"] == 1.0 and feature["properties"]["cells"] == 24
    assert (feature["properties"]["max_x"], feature["properties"]["max_y"]) == (450.0, 250.0)
    low = client.get(f"/api/slides/{slide.pk}/heatmap/regions/?threshold=0.25").json()
    assert len(low["features"]) == 2
    assert client.get(f"/api/slides/{slide.pk}/heatmap/regions/?threshold=7").status_code == 400


@pytest.mark.urls(HEATMAP_URLS)
def test_overlay_is_refused_to_outsiders_and_anonymous_users(
    client, people, live_heatmap, tiny_tiff
):
    slide, heatmap = live_heatmap
    urls = [
        f"/api/slides/{slide.pk}/heatmap/tilesource/",
        f"/api/slides/{slide.pk}/heatmap/tiles/0/0/0.png?heatmap={heatmap.pk}",
        f"/api/slides/{slide.pk}/heatmap/regions/",
    ]
    for url in urls:
        assert client.get(url).status_code == 403
    client.force_login(people.outsider)
    for url in urls:
        assert client.get(url).status_code == 404
    client.force_login(people.pathologist)
    assert (
        client.get(f"/api/slides/{slide.pk}/heatmap/tiles/0/0/0.png?heatmap=99999").status_code
        == 404
    )
    # a heat map of another slide cannot be read through this one
    other = make_case(people.lab, "S26-0002")
    other_slide = generated_slide(
        other.nodes.first(), Path(tiny_tiff).parent / "o", seed=3, tumour=False, size=(200, 200)
    )
    assert (
        client.get(
            f"/api/slides/{other_slide.pk}/heatmap/tiles/0/0/0.png?heatmap={heatmap.pk}"
        ).status_code
        == 404
    )
    none_yet = client.get(f"/api/slides/{other_slide.pk}/heatmap/tilesource/")
    assert none_yet.status_code == 200 and none_yet.json()["id"] is None  # not scored yet
    # a heat map of a model that is no longer live is not "the latest of the live model"
    ModelVersion.objects.update(is_live=False)
    assert client.get(f"/api/slides/{slide.pk}/heatmap/tilesource/").json()["id"] is None
    assert (
        client.get(f"/api/slides/{slide.pk}/heatmap/tilesource/?heatmap={heatmap.pk}").status_code
        == 200
    )


def test_overlay_tile_rendering_and_outlines_follow_the_cells():
    counts = np.zeros((4, 5), np.uint8)
    counts[1:3, 1:3] = 16
    counts[1, 1] = 0  # a notch: the outline is an L, not a square
    raster = Raster(counts=counts, denominator=16, stride_px=10, window_px=40)
    png = render_tile(
        raster, width=50, height=40, levels=1, tile_width=64, tile_height=64, z=0, x=0, y=0
    )
    tile = np.asarray(Image.open(io.BytesIO(png)))
    assert tile.shape == (40, 50, 4)
    assert (tile[..., 3] > 0).sum() == 3 * 100
    (feature,) = regions_at_threshold(raster, threshold=0.9)
    from shapely.geometry import shape

    polygon = shape(feature["geometry"])
    assert polygon.area == 300 and polygon.bounds == (10, 10, 30, 30)
    assert len(polygon.exterior.coords) == 7  # 6 corners of an L, closed


def test_zoomed_out_tiles_keep_a_single_hot_cell_visible():
    counts = np.zeros((350, 500), np.uint8)  # a 10,000 x 7,000 px slide in 20 px cells
    counts[123, 401] = 16
    raster = Raster(counts=counts, denominator=16, stride_px=20, window_px=80)
    png = render_tile(
        raster, width=10000, height=7000, levels=7, tile_width=256, tile_height=256, z=0, x=0, y=0
    )
    tile = np.asarray(Image.open(io.BytesIO(png)))
    assert tile.shape == (110, 157, 4)  # 64 px per pixel: 3.2 cells per pixel
    assert np.argwhere(tile[..., 3] > 0).tolist() == [[38, 125]]
