"""The demo's live model: what `make demo` trains so that the first login shows the main job.

On the demo lab's generated lymph-node slides, through the platform's own paths (seed 002's quick
settings, about a minute on two CPU cores):

1. the demo pathologist's tumour outlines, taken from the generator's exact tumour regions (the
   annotation service, as the viewer saves them), on the positive nodes;
2. a dataset snapshot of those slides and the negative nodes (40 px at 1.0 µm/px, split by case),
   its patches extracted here;
3. a scannable MobileNetV2 primary trained through a TrainingRun, launched by the demo admin;
4. every whole slide of the lab scored by it (a scoring run, its per-slide jobs run here);
5. its threshold locked on the validation cases' nodes (seed 002's rule: the highest keeping
   100% sensitivity), then promotion without a second rescoring (every slide is scored already).

Idempotent: a second run finds the live demo model and only scores slides it has not scored.
Everything it makes is named ``demo-…`` and every slide is marked synthetic.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from django.db import transaction

from slides.models import Lab, Node, Slide

from .records import ModelVersion, ScoringRun, SlideScoring, Stage

DEMO_DATASET = "demo-lymph-nodes"
DEMO_MODEL_NAME = "demo-primary"

#: Seed 002's quick settings (benchmarks/seed002.py --quick): few epochs of a half-width
#: scannable MobileNetV2; generated slides have no stain variation, so no colour jitter.
DEMO_RECIPE = {
    "max_epochs": 6,
    "batch_size": 32,
    "brightness": 0,
    "contrast": 0,
    "saturation": 0,
    "hue": 0,
    "lr_step_epochs": 4,
    "early_stopping_patience": 6,
    "seed": 0,
}


def _recipe(epochs: int) -> dict:
    from .scoring import DENSE_MOBILENET

    return {
        **DEMO_RECIPE,
        "max_epochs": epochs,
        "lr_step_epochs": max(1, epochs * 2 // 3),
        "early_stopping_patience": epochs,
        "model_kwargs": {**DENSE_MOBILENET, "width_mult": 0.5},
    }


def _regions_file(slide: Slide) -> Path | None:
    """The generator's exact regions beside a generated slide file (None for other slides)."""
    path = Path(slide.file_path)
    candidate = path.with_name(path.stem + ".regions.geojson")
    return candidate if candidate.exists() else None


def annotate_tumour(slides: list[Slide], *, pathologist) -> int:
    """Save the generator's tumour outlines of positive nodes as the pathologist's annotations
    (slides that already hold a tumour annotation are left as they are)."""
    from annotations.models import Annotation, LabelClass
    from annotations.services import create_annotation

    saved = 0
    for slide in slides:
        if slide.node.ground_truth != Node.GroundTruth.POSITIVE:
            continue
        done = Annotation.objects.filter(
            slide=slide, deleted_at__isnull=True, label_class__kind=LabelClass.Kind.TUMOUR
        ).exists()
        regions = _regions_file(slide)
        if done or regions is None:
            continue
        for feature in json.loads(regions.read_text())["features"]:
            if feature["properties"].get("class") != "tumour":
                continue
            create_annotation(
                slide=slide, user=pathologist, geometry=feature["geometry"], label_class="tumour"
            )
            saved += 1
    return saved


def _snapshot(slides: list[Slide]):
    from annotations.datasets import create_snapshot
    from annotations.extraction import execute_extraction
    from annotations.models import Dataset

    dataset = Dataset.objects.filter(name=DEMO_DATASET).first()
    if dataset is None:
        dataset = create_snapshot(
            name=DEMO_DATASET,
            slides=slides,
            patch_px=40,
            target_mpp=1.0,
            stride_px=20,
            balanced=True,
            max_per_class=1500,
            val_fraction=0.4,
            seed=0,
            enqueue=False,
        )
    if dataset.status != Dataset.Status.READY:
        state = execute_extraction(dataset_id=dataset.pk, worker="demo", workers=1)
        if state != Dataset.Status.READY:
            dataset.refresh_from_db()
            raise RuntimeError(f"demo dataset extraction {state}: {dataset.status_reason}")
    dataset.refresh_from_db()
    return dataset


def _train(dataset, *, admin, epochs: int) -> ModelVersion:
    from .jobs import execute_training_run, launch_training
    from .records import TrainingRun

    run = launch_training(
        dataset_source={"kind": "snapshot", "id": dataset.pk},
        architecture="mobilenetv2",
        stage=Stage.PRIMARY,
        recipe=_recipe(epochs),
        user=admin,
        enqueue=False,
    )
    state = execute_training_run(run_id=run.pk, worker="demo")
    run.refresh_from_db()
    if state != TrainingRun.Status.SUCCEEDED:
        raise RuntimeError(f"demo training run {run.pk} {state}: {run.status_reason}")
    version = run.model_version
    ModelVersion.objects.filter(pk=version.pk).update(name=DEMO_MODEL_NAME)
    version.refresh_from_db()
    return version


def score_here(version: ModelVersion, slides: list[int], *, user=None) -> ScoringRun | None:
    """Score ``slides`` with ``version`` in this process (a scoring run whose jobs run here)."""
    from .rescoring import rescore_all, score_slide_job

    if not slides:
        return None
    run = rescore_all(version=version, user=user, slides=slides, enqueue=False)
    for job in SlideScoring.objects.filter(scoring_run=run).order_by("pk"):
        score_slide_job(job.pk, worker="demo")
    run.refresh_from_db()
    return run


def _lock(version: ModelVersion, dataset, *, admin) -> None:
    from .thresholds import lock_threshold

    val_cases = [c["id"] for c in dataset.split_cases("val")]
    scores = {}
    truths = {}
    for node_id, score, truth in (
        version.node_scores.filter(node__case_id__in=val_cases)
        .exclude(node__ground_truth=Node.GroundTruth.UNKNOWN)
        .order_by("created_at", "id")
        .values_list("node_id", "score", "node__ground_truth")
    ):
        scores[node_id] = score
        truths[node_id] = truth == Node.GroundTruth.POSITIVE
    lock_threshold(
        version=version,
        node_scores=scores,
        truths=truths,
        user=admin,
        source={"chosen": "the validation cases of the demo snapshot", "nodes": sorted(scores)},
    )


def ensure_demo_model(
    *,
    lab: Lab,
    pathologist,
    admin,
    progress: Callable[[str], None] = print,
    epochs: int = DEMO_RECIPE["max_epochs"],
) -> ModelVersion | None:
    """Train, score, calibrate and promote the demo model once (see the module docstring);
    None when the lab has no generated lymph-node slide with its regions to learn from."""
    from .jobs import promote

    slides = list(
        Slide.objects.filter(
            node__case__lab=lab, modality=Slide.Modality.SLIDE, synthetic=True
        ).select_related("node__case")
    )
    slides = [s for s in slides if _regions_file(s) is not None]
    if not slides:
        progress("no generated slides with regions: the demo has no model")
        return None
    version = ModelVersion.objects.filter(name=DEMO_MODEL_NAME).first()
    if version is None:
        saved = annotate_tumour(slides, pathologist=pathologist)
        progress(f"demo model: {saved} tumour outlines saved by {pathologist.username}")
        dataset = _snapshot(slides)
        progress(
            f"demo model: dataset {dataset.name}: {dataset.total_patches} patches "
            f"({', '.join(f'{k} {v}' for k, v in dataset.class_counts.items() if v)})"
        )
        progress("demo model: training a scannable MobileNetV2 (seed 002 quick settings)")
        version = _train(dataset, admin=admin, epochs=epochs)
        progress(f"demo model: {version.name}, validation AUC {version.val_auc:.3f}")
    every = list(
        Slide.objects.filter(node__case__lab=lab, modality=Slide.Modality.SLIDE).values_list(
            "pk", flat=True
        )
    )
    scored = set(version.heatmaps.values_list("slide_id", flat=True))
    missing = [pk for pk in every if pk not in scored]
    if missing:
        progress(f"demo model: scoring {len(missing)} slides")
        score_here(version, missing, user=admin)
    if version.threshold is None:
        from annotations.models import Dataset

        dataset = Dataset.objects.get(name=DEMO_DATASET)
        _lock(version, dataset, admin=admin)
        version.refresh_from_db()
        progress(f"demo model: threshold {version.threshold:g} locked ({version.threshold_method})")
    if not version.is_live:
        with transaction.atomic():
            promote(version=version, user=admin, rescore=False)  # every slide is scored already
        progress(f"demo model: {version.name} is live")
    return version
