"""Generated bags with a known answer, for tests and the benchmark (never real cases).

Instances are standard normal feature vectors. A bag's "tumour-like" key instances carry an
offset along a known direction; the node status depends on them and, when asked, on a known
clinical variable (tumour size, the first clinical column), so an attention model must find the
few key instances among many and a model with clinical data can beat one without:

* binary: evidence = 2 x (bag has key instances) + 1.5 x tumour size (standardised); N+ when the
  evidence exceeds 1. Image alone then reaches an AUC of about 0.75, clinical alone about 0.8,
  both about 1;
* three-class: N0 has no key instances, N+(1-2) has key instances along direction 1, N+(>2) along
  directions 1 and 2 (labels from the image only).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .mil import BINARY_CLASSES, THREE_CLASSES, Bag

CLINICAL_COLUMNS = ("tumour_size", "age", "er", "pr", "her2", "ki67")


@dataclass
class GeneratedBags:
    bags: list[Bag]
    key: list[np.ndarray]  # per bag: bool (K,), which instances are key ("tumour-like")
    classes: tuple[str, ...]
    directions: np.ndarray  # (2, D) unit vectors


def generated_bags(
    n_bags: int,
    *,
    task: str = "binary",
    dim: int = 32,
    instances: tuple[int, int] = (16, 48),
    key_instances: tuple[int, int] = (2, 5),
    strength: float = 3.0,
    clinical_weight: float = 1.5,
    seed: int = 0,
) -> GeneratedBags:
    """``n_bags`` generated bags (see the module docstring); seeded and reproducible."""
    rng = np.random.default_rng(seed)
    directions = np.linalg.qr(np.random.default_rng(1234).standard_normal((dim, 2)))[0].T
    bags, keys = [], []
    for i in range(n_bags):
        k_total = int(rng.integers(instances[0], instances[1] + 1))
        x = rng.standard_normal((k_total, dim)).astype(np.float32)
        clinical = rng.standard_normal(len(CLINICAL_COLUMNS)).astype(np.float32)
        clinical[2:5] = (clinical[2:5] > 0).astype(np.float32)  # ER, PR, HER2 as 0/1
        if task == "binary":
            has_key = bool(rng.random() < 0.5)
            evidence = 2.0 * has_key + clinical_weight * float(clinical[0])
            label = int(evidence > 1.0)
            level = 1 if has_key else 0
        elif task == "three-class":
            level = label = int(rng.integers(0, 3))
        else:
            raise ValueError(f"unknown task {task!r}")
        key = np.zeros(k_total, dtype=bool)
        if level:
            n_key = int(rng.integers(key_instances[0], key_instances[1] + 1))
            where = rng.choice(k_total, n_key, replace=False)
            key[where] = True
            offset = directions[0] if level == 1 else (directions[0] + directions[1])
            x[where] += (strength * offset).astype(np.float32)
        boxes = np.stack(
            [np.full(k_total, i), np.arange(k_total) * 40, np.zeros(k_total), np.full(k_total, 40)],
            axis=1,
        ).astype(np.int64)
        bags.append(
            Bag(case_id=i, features=x, boxes=boxes, label=label, clinical=clinical, group=f"P{i}")
        )
        keys.append(key)
    classes = BINARY_CLASSES if task == "binary" else THREE_CLASSES
    return GeneratedBags(bags=bags, key=keys, classes=classes, directions=directions)
