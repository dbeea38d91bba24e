"""Small synthetic patch sets for training tests."""

from __future__ import annotations

import numpy as np

from inference.datasets import ArrayPatchDataset


def blob_patches(n: int = 64, *, size: int = 16, seed: int = 0) -> ArrayPatchDataset:
    """Noisy grey patches with one disc: bright (label 1) or dark (label 0), half each."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    images = rng.integers(70, 130, size=(n, size, size, 3)).astype(np.float64)
    yy, xx = np.mgrid[:size, :size]
    r = max(2, size // 5)
    for i in range(n):
        cy, cx = rng.integers(r, size - r, size=2)
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        images[i][disc] += 90 if labels[i] else -60
    return ArrayPatchDataset(
        np.clip(images, 0, 255).astype(np.uint8), labels, classes=["dark", "bright"]
    )
