"""Builders for review tests: model versions, heat maps and node scores without any training."""

from __future__ import annotations

import hashlib
import itertools

from inference.records import HeatMap, ModelVersion, NodeScore, Stage, TrainingRun
from slides.models import Node, Slide

_counter = itertools.count(1)


def make_model_version(
    name: str | None = None,
    *,
    threshold: float | None = 0.5,
    live: bool = True,
    stage: str = Stage.PRIMARY,
) -> ModelVersion:
    """A ModelVersion (with its succeeded TrainingRun); `live` makes it the stage's live version."""
    n = next(_counter)
    run = TrainingRun.objects.create(
        dataset_source={"kind": "test", "n": n}, stage=stage, status=TrainingRun.Status.SUCCEEDED
    )
    if live:
        ModelVersion.objects.filter(stage=stage, is_live=True).update(is_live=False)
    return ModelVersion.objects.create(
        training_run=run,
        name=name or f"test-model-{n}",
        architecture="mobilenetv2",
        stage=stage,
        weights_path=f"/nonexistent/weights-{n}.pt",
        weights_sha256="0" * 64,
        dataset_hash="d" * 64,
        hyperparameters={},
        code_version="test",
        classes=["non-tumour", "tumour"],
        val_accuracy=0.9,
        val_auc=0.95,
        threshold=threshold,
        is_live=live,
    )


def make_slide(
    node: Node, name: str = "slide-1", *, width: int = 4000, height: int = 3000
) -> Slide:
    """A registered-looking slide row without a file (enough for everything but tiles)."""
    n = next(_counter)
    return Slide.objects.create(
        node=node,
        name=name,
        file_path=f"/nonexistent/{n}.tiff",
        source="tiff",
        checksum=hashlib.sha256(f"slide-{n}".encode()).hexdigest(),
        file_size=1,
        width=width,
        height=height,
        levels=3,
        tile_width=256,
        tile_height=256,
        mpp_x=0.5,
        mpp_y=0.5,
        synthetic=True,
    )


def make_heatmap(
    slide: Slide, version: ModelVersion, *, max_score: float, x: float = 1000.0, y: float = 800.0
) -> HeatMap:
    return HeatMap.objects.create(
        slide=slide,
        model_version=version,
        raster_path=f"/nonexistent/heatmap-{next(_counter)}.npy",
        stride_px=40.0,
        window_px=160.0,
        rows=10,
        cols=10,
        max_score=max_score,
        max_x=x,
        max_y=y,
    )


def score_node(
    node: Node,
    version: ModelVersion,
    score: float,
    *,
    threshold: float | None = None,
    x: float | None = 1000.0,
    y: float | None = 800.0,
    heatmap: HeatMap | None = None,
) -> NodeScore:
    """A NodeScore of `node` by `version` (threshold: the version's unless given)."""
    threshold = version.threshold if threshold is None else threshold
    return NodeScore.objects.create(
        node=node,
        model_version=version,
        score=score,
        threshold=threshold,
        screened_positive=None if threshold is None else score >= threshold,
        max_heatmap=heatmap,
        max_x=heatmap.max_x if heatmap else x,
        max_y=heatmap.max_y if heatmap else y,
    )
