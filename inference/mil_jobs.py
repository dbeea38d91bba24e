"""MIL training runs (seed 001) through the TrainingRun machinery: checks before queueing, and the
worker side (bags from cases, training, a ModelVersion with AUC and its 95% CI).

A run's ``dataset_source``::

    {"kind": "mil-bags",
     "task": "binary" | "three-class",       # N0 vs N+, or N0 / N+(1-2) / N+(>2)
     "clinical": false | true | [keys],       # DL-CNB (false) or DL-CNB+C
     "cases": [ids],                          # optional; default every case with a node status
     "extractor": {"model_version": id}       # a trained patch model's backbone, or
                | {"architecture": "resnet-small", "seed": 0},   # a seeded random backbone
     "patch_px": 40, "target_mpp": 1.0, "max_instances": 512, "val_fraction": 0.3, "seed": 0}

Cases are split by patient (pseudonym; the case when there is none), never bag by bag. The
ModelVersion keeps the metrics in its existing fields: ``val_auc`` (N+ vs N0) and
``val_accuracy``, ``roc``, ``curves``, and in ``dataset_summary["metrics"]`` the AUC, accuracy,
sensitivity and specificity with bootstrap 95% intervals (per class, one-vs-rest, for three
classes); ``hyperparameters`` hold what a prediction needs (extractor, bag grid, clinical
encoding). Its ``stage`` is ``"mil"``, so it is never mistaken for the live patch classifier.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

import numpy as np
from django.db import transaction
from django.utils import timezone

from .mil import (
    MIL_ARCHITECTURE,
    MIL_DATASET_KIND,
    MIL_STAGE,
    TASKS,
    Bag,
    BagGrid,
    MILError,
    MILRecipe,
    case_bag,
    clinical_encoding,
    encode_clinical,
    extractor_from_spec,
    train_mil,
)
from .records import ModelVersion, TrainingRun
from .safe_json import finite_or_none, json_safe

PROGRESS_EVERY_S = 1.0


def is_mil_request(*, architecture: str, dataset_source: Any) -> bool:
    kind = dataset_source.get("kind") if isinstance(dataset_source, dict) else None
    return architecture == MIL_ARCHITECTURE or kind == MIL_DATASET_KIND


def _cases(source: dict[str, Any], scope=None):
    """The cases a MIL source names, of the labs ``scope`` may read (None: every lab); a case
    of another lab is left out as an unknown id is."""
    from slides.models import Case

    cases = Case.objects.all() if scope is None else scope.narrow(Case.objects.all())
    cases = cases.filter(clinical_records__isnull=False).distinct().order_by("id")
    if source.get("cases") is not None:
        ids = source["cases"]
        if not isinstance(ids, list) or not all(isinstance(i, int) for i in ids):
            raise MILError("cases must be a list of case ids")
        cases = cases.filter(pk__in=ids)
    return list(cases)


def _labelled(source: dict[str, Any], scope=None) -> tuple[list, dict[int, Any], list[str]]:
    """Cases with a node status (current clinical record), their records, and skipped notes."""
    from clinical.services import current_records

    cases = _cases(source, scope)
    records = current_records(cases)
    kept, skipped = [], []
    for case in cases:
        entry = records.get(case.pk)
        if entry is None or not entry.node_status:
            skipped.append(f"{case.accession_number}: no node status")
            continue
        kept.append(case)
    return kept, records, skipped


def label_of(node_status: str, task: str) -> int:
    """Class index of a node status: binary N0 = 0 / N+ = 1; three classes in their order."""
    from clinical.models import NodeStatus

    order = [NodeStatus.N0, NodeStatus.N_PLUS_1_2, NodeStatus.N_PLUS_GT_2]
    index = order.index(node_status)
    return min(index, 1) if task == "binary" else index


def check_mil_request(
    *, dataset_source: dict[str, Any], architecture: str, recipe: dict[str, Any], scope=None
) -> dict[str, int]:
    """Refuse a MIL run that cannot train, before anything is queued (MILError says why)."""
    if architecture != MIL_ARCHITECTURE:
        raise MILError(f"dataset kind {MIL_DATASET_KIND} trains architecture {MIL_ARCHITECTURE}")
    if dataset_source.get("kind") != MIL_DATASET_KIND:
        raise MILError(f"{MIL_ARCHITECTURE} trains on dataset kind {MIL_DATASET_KIND}")
    task = dataset_source.get("task", "binary")
    if task not in TASKS:
        raise MILError(f"unknown task {task!r}; choose one of {list(TASKS)}")
    try:
        MILRecipe.from_dict(recipe or {})
    except (TypeError, ValueError) as exc:
        raise MILError(f"bad recipe: {exc}") from exc
    _clinical_keys(dataset_source)
    val_fraction = dataset_source.get("val_fraction", 0.3)
    if not isinstance(val_fraction, int | float) or not 0 < val_fraction < 1:
        raise MILError("val_fraction must be between 0 and 1")
    cases, records, _ = _labelled(dataset_source, scope)
    counts: dict[str, int] = {}
    for case in cases:
        name = TASKS[task][label_of(records[case.pk].node_status, task)]
        counts[name] = counts.get(name, 0) + 1
    present = {k: v for k, v in counts.items() if v}
    if len(present) < 2:
        raise MILError(
            f"MIL training needs cases of at least two node statuses; have {present or 'none'}"
        )
    if min(present.values()) < 2:
        raise MILError(f"each node status needs at least two cases; counts are {present}")
    return counts


def _clinical_keys(source: dict[str, Any]) -> list[str]:
    from clinical.services import active_fields

    wanted = source.get("clinical", False)
    known = [f.key for f in active_fields()]
    if wanted is False or wanted is None:
        return []
    if wanted is True:
        return known
    if not isinstance(wanted, list) or not wanted:
        raise MILError("clinical must be true, false or a list of clinical variable keys")
    unknown = [k for k in wanted if k not in known]
    if unknown:
        raise MILError(f"unknown clinical variables {unknown}; known: {known}")
    return list(wanted)


def build_run_bags(
    source: dict[str, Any], *, on_case=None, scope=None
) -> tuple[list[Bag], list[Bag], dict[str, Any], dict[str, Any]]:
    """Bags of the labelled cases, split by patient; (train, val, summary, what prediction needs)."""
    from clinical.models import ClinicalField

    from .datasets import split_indices

    task = source.get("task", "binary")
    grid = BagGrid(
        patch_px=int(source.get("patch_px", 40)),
        target_mpp=float(source.get("target_mpp", 1.0)),
        max_instances=int(source.get("max_instances", 512)),
        seed=int(source.get("seed", 0)),
    )
    extractor_spec = dict(source.get("extractor") or {"architecture": "resnet-small", "seed": 0})
    extractor = extractor_from_spec(extractor_spec, patch_px=grid.patch_px)
    cases, records, skipped = _labelled(source, scope)
    bags: list[Bag] = []
    for i, case in enumerate(cases):
        try:
            bag = case_bag(case, extractor, grid)
        except MILError as exc:
            skipped.append(str(exc))
            continue
        bag.label = label_of(records[case.pk].node_status, task)
        bag.group = case.patient_pseudonym or f"case-{case.pk}"
        bags.append(bag)
        if on_case is not None:
            on_case(i + 1, len(cases))
    if len(bags) < 4:
        raise MILError(
            f"only {len(bags)} cases have tumour outlines and a node status; need at least 4"
        )
    split = split_indices(
        labels=[b.label for b in bags],
        groups=[b.group for b in bags],
        val_fraction=float(source.get("val_fraction", 0.3)),
        seed=int(source.get("seed", 0)),
    )
    train = [bags[i] for i in split.train]
    val = [bags[i] for i in split.val]
    keys = _clinical_keys(source)
    fields = [f for key in keys for f in ClinicalField.objects.filter(key=key)]
    encoding = clinical_encoding(fields, [records[b.case_id].values for b in train])
    if keys:
        for bag in bags:
            bag.clinical = encode_clinical(records[bag.case_id].values, encoding)
    classes = TASKS[task]
    summary = {
        "kind": MIL_DATASET_KIND,
        "task": task,
        "classes": list(classes),
        "counts": {c: sum(b.label == j for b in bags) for j, c in enumerate(classes)},
        "train": len(train),
        "val": len(val),
        "split": split.note.replace("patches", "cases"),
        "instances": {"total": int(sum(len(b) for b in bags)), "max_per_case": grid.max_instances},
        "skipped": skipped,
        "clinical": keys,
        **({"labs": scope.labs()} if scope is not None else {}),
    }
    needs = {
        "task": task,
        "extractor": extractor_spec,
        "extractor_key": extractor.key,
        "bag_grid": {
            "patch_px": grid.patch_px,
            "target_mpp": grid.target_mpp,
            "max_instances": grid.max_instances,
            "seed": grid.seed,
        },
        "clinical_encoding": encoding if keys else [],
        "feature_dim": int(bags[0].features.shape[1]),
    }
    return train, val, summary, needs


def _content_hash(bags: list[Bag]) -> str:
    digest = hashlib.sha256()
    for bag in sorted(bags, key=lambda b: b.case_id):
        digest.update(f"{bag.case_id}:{bag.label}:".encode())
        digest.update(np.ascontiguousarray(bag.features).tobytes())
        if bag.clinical is not None:
            digest.update(bag.clinical.tobytes())
    return digest.hexdigest()


def execute_mil_run(run: TrainingRun, *, device: str | None = None, scope=None) -> str:
    """The worker side of a claimed MIL run: bags, training, ModelVersion; returns the status.
    ``scope`` (:mod:`inference.scope`, default the run's launcher) bounds the cases it reads."""
    from .scope import TrainingScope

    scope = scope if scope is not None else TrainingScope.of_run(run)
    from .jobs import code_version, install_weights, run_dir
    from .training import TrainingCancelled

    last = [0.0]

    def write(fields: dict[str, Any], *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - last[0] < PROGRESS_EVERY_S:
            return
        last[0] = now
        TrainingRun.objects.filter(pk=run.pk).update(
            progress=json_safe(fields), heartbeat_at=timezone.now()
        )

    def should_cancel() -> bool:
        return TrainingRun.objects.filter(pk=run.pk, cancel_requested=True).exists()

    try:
        scope.check_launcher()
        recipe = MILRecipe.from_dict(run.recipe or {})
        train_bags, val_bags, summary, needs = build_run_bags(
            run.dataset_source,
            scope=scope,
            on_case=lambda done, total: write(
                {"phase": "bags", "cases_done": done, "cases": total}
            ),
        )
    except Exception as exc:  # noqa: BLE001 - any bad input ends the run with its reason
        run.finish(TrainingRun.Status.FAILED, reason=f"dataset or recipe: {exc}")
        return run.status
    try:
        result = train_mil(
            train_bags=train_bags,
            val_bags=val_bags,
            classes=summary["classes"],
            recipe=recipe,
            use_clinical=bool(summary["clinical"]),
            progress=lambda p: write({"phase": "training", **p}, force=True),
            should_cancel=should_cancel,
            checkpoint_dir=run_dir(run),
            device=device,
        )
    except TrainingCancelled as exc:
        run.finish(TrainingRun.Status.CANCELLED, reason=str(exc))
        return run.status
    except Exception as exc:  # noqa: BLE001
        run.finish(TrainingRun.Status.FAILED, reason=f"{type(exc).__name__}: {exc}")
        return run.status

    name = f"{MIL_ARCHITECTURE}-{summary['task']}{'-clinical' if summary['clinical'] else ''}-run{run.pk}"
    target = install_weights(result.weights_path, name)
    metrics = result.metrics
    auc = finite_or_none((metrics["n_plus_vs_n0"].get("auc") or {}).get("value"))
    if auc is None:
        run.finish(
            TrainingRun.Status.FAILED,
            reason="validation cases hold one node status only, so there is no AUC: add cases",
        )
        return run.status
    roc: dict[str, Any] = {}
    positive = result.val_labels > 0
    if positive.any() and not positive.all():
        from .metrics import roc_curve

        roc = roc_curve(
            positive, 1.0 - result.val_probabilities[:, 0], drop_intermediate=True
        ).to_dict()
    with transaction.atomic():
        ModelVersion.objects.create(
            training_run=run,
            name=name,
            architecture=MIL_ARCHITECTURE,
            stage=MIL_STAGE,
            weights_path=str(target),
            weights_sha256=hashlib.sha256(target.read_bytes()).hexdigest(),
            dataset_hash=_content_hash(train_bags + val_bags),
            dataset_summary=json_safe({**summary, "metrics": metrics}),
            hyperparameters=json_safe({**recipe.to_dict(), **needs, "model_config": result.config}),
            code_version=code_version(),
            classes=list(result.classes),
            val_accuracy=float(metrics["accuracy"]),
            val_auc=float(auc),
            roc=json_safe(roc),
            curves=json_safe(result.curves),
            device=result.device,
            training_seconds=float(result.seconds),
        )
        TrainingRun.objects.filter(pk=run.pk).update(
            status=TrainingRun.Status.SUCCEEDED,
            finished_at=timezone.now(),
            status_reason=(
                f"best epoch {result.best_epoch} of {result.epochs_run}; "
                f"validation AUC (N+ vs N0) {auc:.4f}"
            ),
        )
    return TrainingRun.Status.SUCCEEDED
