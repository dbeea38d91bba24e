"""Small builders for tests: users per role, labs, cases, and tiny pyramidal TIFFs written by tifffile."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile
from django.contrib.auth import get_user_model

from slides.access import grant_role
from slides.models import Case, Lab, Node

PASSWORD = "correct-horse-battery-9"


def make_user(username: str, *, role: str | None, lab: Lab | None):
    user = get_user_model().objects.create_user(username=username, password=PASSWORD)
    if role:
        grant_role(user, role)
    if lab:
        lab.members.add(user)
    return user


def make_case(
    lab: Lab, accession: str = "S26-0001", *, nodes: tuple[str, ...] = ("level II, node 1",)
) -> Case:
    case = Case.objects.create(
        lab=lab, accession_number=accession, patient_pseudonym="PX-" + accession
    )
    for label in nodes:
        Node.objects.create(case=case, label=label)
    return case


def write_pyramid_tiff(
    path: Path, image: np.ndarray, *, mpp: float = 0.5, tile: int = 256, compression: str = "jpeg"
) -> Path:
    """Write `image` (H x W x 3 uint8) as a tiled pyramidal TIFF with halving sub-resolutions."""
    levels = [image]
    while max(levels[-1].shape[:2]) > tile:
        prev = levels[-1]
        h, w = prev.shape[0] // 2 * 2, prev.shape[1] // 2 * 2
        levels.append(
            prev[:h, :w].reshape(h // 2, 2, w // 2, 2, 3).mean(axis=(1, 3)).astype(np.uint8)
        )
    res = 1e4 / mpp  # pixels per centimetre
    with tifffile.TiffWriter(path, bigtiff=False) as tif:
        for i, level in enumerate(levels):
            tif.write(
                level,
                tile=(tile, tile),
                photometric="rgb",
                compression=compression,
                resolution=(res / 2**i, res / 2**i),
                resolutionunit="CENTIMETER",
                subfiletype=1 if i else 0,
                metadata=None,
            )
    return path


def gradient_image(width: int, height: int, seed: int = 0) -> np.ndarray:
    """A deterministic, non-blank RGB test image."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    img = np.stack(
        [(xx * 255 // max(width - 1, 1)), (yy * 255 // max(height - 1, 1)), ((xx + yy) % 256)],
        axis=-1,
    ).astype(np.uint8)
    noise = rng.integers(0, 20, size=img.shape, dtype=np.uint8)
    return np.clip(img.astype(np.int16) + noise, 0, 255).astype(np.uint8)
