"""Extracting a snapshot's patch pixels into per-slide arrays that training memory-maps.

Patches are read in large blocks, never one read per patch. The output grid of a slide is fixed:
output pixel u covers level-0 x from u·s to (u+1)·s, with s = patch size in level-0 px / patch_px
(the label grid's own scale, so a patch's level-0 box maps onto exactly `patch_px` px), and a
patch whose box starts at x0 starts at output pixel round(x0 / s) (exactly x0 / s on the default
grid, where the stride is the patch size). For each block of about `BLOCK_PX` output px holding
wanted patches:

1. the pyramid level read is the coarsest level stored in the file (large-image's preferred
   levels) that is no coarser than s: its pixels come back undecimated by large-image;
2. the block's level region, plus a margin for the resampling filter, is read with one
   `getRegion` call;
3. it is resized ONCE with Pillow (Lanczos when shrinking) onto the output grid, the float `box`
   placing it to the sub-pixel (where s is the level's own scale the block is cut, not resampled;
   the two axes are resampled in a fixed order, see `resample`);
4. the block's patches are cut out with numpy fancy indexing.

Because the margin covers the filter's support, a patch's pixels do not depend on which block it
fell in. Each slide's (N, P, P, 3) uint8 array is written to a temporary `.npy` (a memory map,
so memory stays at a few blocks) and renamed into place when complete: a failed or killed
extraction never leaves a partial `patches-<slide>.npy`; a re-run skips the slides already done.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from slides.models import Slide

from .datasets import LABEL_DTYPE, labels_path, patches_path
from .models import Dataset

log = logging.getLogger(__name__)

BLOCK_PX = 2048  # output px per block side (about; rounded to whole patches)
PROGRESS_EVERY_S = 1.0
Progress = Callable[[int, int], None]


class ExtractionError(RuntimeError):
    """A slide whose patches could not be extracted; the message names it."""


# ---- reading ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReadPlan:
    """How a slide's output grid is read: pyramid level `z` (large-image numbering, 0 = coarsest),
    its downsample `d` from level 0, and `s` level-0 px per output px."""

    z: int
    d: int
    s: float
    width: int  # level-0 size
    height: int

    @property
    def ratio(self) -> float:
        """Level px per output px (> 1: shrink)."""
        return self.s / self.d


def read_plan(source, *, width: int, height: int, scale: float) -> ReadPlan:
    """The coarsest stored level that is no coarser than `scale` level-0 px per output px."""
    levels = int(source.levels or 1)
    top = levels - 1
    best = top
    for z in range(top, -1, -1):
        d = 2 ** (top - z)
        if d > scale * (1 + 1e-9):
            break
        if source.getPreferredLevel(z) == z:
            best = z
    return ReadPlan(z=best, d=2 ** (top - best), s=scale, width=width, height=height)


def read_level_region(source, plan: ReadPlan, lx0: int, ly0: int, lx1: int, ly1: int) -> np.ndarray:
    """(ly1 - ly0, lx1 - lx0, 3) uint8: the stored pixels of level `plan.z` in that box (level px).

    The region is given in level-0 px on multiples of the downsample, and the output size equals
    it at that level, so large-image reads the level as stored and resamples nothing.
    """
    from large_image.constants import TILE_FORMAT_NUMPY

    d = plan.d
    region, _ = source.getRegion(
        region={
            "left": lx0 * d,
            "top": ly0 * d,
            "right": lx1 * d,
            "bottom": ly1 * d,
            "units": "base_pixels",
        },
        output={"maxWidth": lx1 - lx0, "maxHeight": ly1 - ly0},
        format=TILE_FORMAT_NUMPY,
    )
    region = np.asarray(region)
    if region.ndim == 2:
        region = region[..., None]
    if region.shape[-1] == 1:
        region = np.repeat(region, 3, axis=-1)
    region = region[..., :3]
    if region.dtype != np.uint8:  # 16-bit sources: scale to 8 bits
        region = (region.astype(np.float64) / np.iinfo(region.dtype).max * 255).round()
        region = region.astype(np.uint8)
    if region.shape[:2] != (ly1 - ly0, lx1 - lx0):
        raise ExtractionError(
            f"level {plan.z} region came back {region.shape[:2]}, not {(ly1 - ly0, lx1 - lx0)}"
        )
    return np.ascontiguousarray(region)


def read_output_block(source, plan: ReadPlan, u0: int, v0: int, u1: int, v1: int) -> np.ndarray:
    """(v1 - v0, u1 - u0, 3) uint8: output px [u0, u1) x [v0, v1) at the target scale."""
    ratio = plan.ratio
    # The block in level coordinates (floats), and the integer level region that holds it plus a
    # margin for the filter (Lanczos reaches 3 source px per output px when shrinking).
    fx0, fy0, fx1, fy1 = (c * plan.s / plan.d for c in (u0, v0, u1, v1))
    margin = math.ceil(3 * max(ratio, 1.0)) + 1
    level_w, level_h = plan.width // plan.d, plan.height // plan.d
    exact = abs(ratio - 1.0) < 1e-9 and all(abs(f - round(f)) < 1e-6 for f in (fx0, fy0))
    if exact:
        lx0, ly0 = round(fx0), round(fy0)
        lx1, ly1 = min(level_w, lx0 + (u1 - u0)), min(level_h, ly0 + (v1 - v0))
        block = read_level_region(source, plan, lx0, ly0, lx1, ly1)
        if block.shape[:2] != (v1 - v0, u1 - u0):  # only at the slide's last partial level pixel
            block = np.pad(
                block,
                ((0, v1 - v0 - block.shape[0]), (0, u1 - u0 - block.shape[1]), (0, 0)),
                mode="edge",
            )
        return block
    lx0 = max(0, math.floor(fx0) - margin)
    ly0 = max(0, math.floor(fy0) - margin)
    lx1 = min(level_w, math.ceil(fx1) + margin)
    ly1 = min(level_h, math.ceil(fy1) + margin)
    region = read_level_region(source, plan, lx0, ly0, lx1, ly1)
    box = (
        fx0 - lx0,
        fy0 - ly0,
        min(fx1 - lx0, float(lx1 - lx0)),
        min(fy1 - ly0, float(ly1 - ly0)),
    )
    return resample(region, (u1 - u0, v1 - v0), box, shrink=ratio >= 1)


def resample(region: np.ndarray, size: tuple[int, int], box: tuple, *, shrink: bool) -> np.ndarray:
    """Resize the float `box` of `region` to `size`: Lanczos when shrinking, else bicubic.

    Two single-axis Pillow calls, horizontal then vertical, rather than one two-axis call: Pillow
    picks the order of its two passes from the image's shape, and with a uint8 image in between
    (clamped after the first pass) the order changes the result by a few levels where Lanczos
    overshoots. Fixing the order makes a pixel's value independent of the block it was read in.
    """
    method = Image.Resampling.LANCZOS if shrink else Image.Resampling.BICUBIC
    image = Image.fromarray(region, "RGB")
    rows = image.resize((size[0], image.height), method, box=(box[0], 0, box[2], image.height))
    out = rows.resize(size, method, box=(0, box[1], size[0], box[3]))
    return np.asarray(out, dtype=np.uint8)


def _blocks(u: np.ndarray, v: np.ndarray, p: int, block_px: int) -> list[np.ndarray]:
    """Indices of the patches in each block of about `block_px` output px (row-major)."""
    per = max(1, block_px // p) * p
    key = (v // per) * (int(u.max()) // per + 1 if len(u) else 1) + (u // per)
    order = np.argsort(key, kind="stable")
    bounds = np.flatnonzero(np.diff(key[order])) + 1
    return np.split(order, bounds) if len(order) else []


def extract_slide(
    slide: Slide,
    rows: np.ndarray,
    out: np.ndarray,
    *,
    patch_px: int,
    size: int,
    block_px: int | None = None,
    workers: int = 4,
    on_block: Callable[[int], None] | None = None,
) -> None:
    """Fill `out` (N, P, P, 3) with the patches whose level-0 corners are `rows["x0"/"y0"]`."""
    from slides.tiles import source_for

    if not len(rows):
        return
    source = source_for(slide)
    scale = size / patch_px
    plan = read_plan(source, width=slide.width, height=slide.height, scale=scale)
    u = np.rint(rows["x0"] / scale).astype(np.int64)
    v = np.rint(rows["y0"] / scale).astype(np.int64)
    ar = np.arange(patch_px)

    def work(idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        u0, v0 = int(u[idx].min()), int(v[idx].min())
        u1, v1 = int(u[idx].max()) + patch_px, int(v[idx].max()) + patch_px
        block = read_output_block(source, plan, u0, v0, u1, v1)
        ys = (v[idx] - v0)[:, None] + ar
        xs = (u[idx] - u0)[:, None] + ar
        return idx, block[ys[:, :, None], xs[:, None, :]]

    blocks = _blocks(u, v, patch_px, block_px or BLOCK_PX)
    with ThreadPoolExecutor(max(1, workers)) as pool:
        pending: deque = deque()
        try:
            for b in blocks:
                pending.append(pool.submit(work, b))
                if len(pending) > 2 * workers:
                    _store(pending.popleft().result(), out, on_block)
            while pending:
                _store(pending.popleft().result(), out, on_block)
        except BaseException:
            for future in pending:
                future.cancel()
            raise


def _store(result: tuple[np.ndarray, np.ndarray], out: np.ndarray, on_block) -> None:
    idx, patches = result
    order = np.argsort(idx)
    out[idx[order]] = patches[order]
    if on_block is not None:
        on_block(len(idx))


# ---- the job ------------------------------------------------------------------------------------


def _tmp_path(folder: Path, slide_id: int) -> Path:
    return folder / f".patches-{slide_id}.{os.getpid()}.tmp.npy"


def _complete(path: Path, n: int, p: int) -> bool:
    if not path.exists():
        return False
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError):
        return False
    return arr.shape == (n, p, p, 3) and arr.dtype == np.uint8


def extract_snapshot(
    dataset: Dataset,
    *,
    progress: Progress | None = None,
    workers: int | None = None,
    block_px: int | None = None,
) -> None:
    """Write every slide's patch array of a claimed dataset; raises `ExtractionError` on failure."""
    folder = dataset.folder
    if not folder.is_dir():
        raise ExtractionError(f"the snapshot folder {folder} is missing")
    for stale in folder.glob(".patches-*.tmp.npy"):  # left by a killed worker
        stale.unlink(missing_ok=True)
    workers = workers or min(4, os.cpu_count() or 1)
    p = dataset.patch_px
    total = dataset.total_patches
    done = 0
    last = [0.0]

    def report(slide_id: int | None, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - last[0] >= PROGRESS_EVERY_S:
            last[0] = now
            dataset.record_progress(done=done, total=total, slide_id=slide_id)
        if progress is not None:
            progress(done, total)

    report(None, force=True)
    for rec in dataset.slide_records:
        sid = rec["id"]
        rows = np.load(labels_path(folder, sid), allow_pickle=False)
        if rows.dtype != LABEL_DTYPE:
            raise ExtractionError(
                f"slide {sid}: {labels_path(folder, sid).name} is not a label file"
            )
        target = patches_path(folder, sid)
        if _complete(target, len(rows), p):
            done += len(rows)
            report(sid)
            continue
        slide = Slide.objects.filter(pk=sid).first()
        if slide is None:
            raise ExtractionError(f"slide {sid} ({rec['name']}) no longer exists")
        if slide.checksum != rec["checksum"]:
            raise ExtractionError(
                f"slide {sid} ({rec['name']}) has changed since the snapshot (checksum "
                f"{slide.checksum[:12]}…, the snapshot has {rec['checksum'][:12]}…)"
            )
        tmp = _tmp_path(folder, sid)
        try:
            out = np.lib.format.open_memmap(
                tmp, mode="w+", dtype=np.uint8, shape=(len(rows), p, p, 3)
            )

            def on_block(n: int, sid: int = sid) -> None:
                nonlocal done
                done += n
                report(sid)

            extract_slide(
                slide,
                rows,
                out,
                patch_px=p,
                size=rec["patch_size_px"],
                block_px=block_px,
                workers=workers,
                on_block=on_block,
            )
            out.flush()
            del out
            os.replace(tmp, target)
        except Exception as exc:
            raise ExtractionError(
                f"slide {sid} ({rec['name']}): {type(exc).__name__}: {exc}"
            ) from exc
        finally:
            tmp.unlink(missing_ok=True)
    report(None, force=True)


def execute_extraction(
    *,
    dataset_id: int,
    worker: str = "local",
    progress: Progress | None = None,
    workers: int | None = None,
) -> str:
    """Extract one dataset to a final state and return it; safe to call twice.

    A ready dataset is left alone; a pending, failed or stale one is claimed (conditional update)
    and extracted, resuming after the slides already written; one that another live worker holds
    is left to it.
    """
    dataset = Dataset.objects.filter(pk=dataset_id).first()
    if dataset is None:
        return "missing"
    if dataset.status == Dataset.Status.READY:
        return dataset.status
    if not dataset.claim(worker=worker):
        return dataset.status
    try:
        extract_snapshot(dataset, progress=progress, workers=workers)
    except Exception as exc:  # noqa: BLE001 - any failure ends the job with its reason
        log.warning("dataset %s extraction failed: %s", dataset.pk, exc)
        dataset.finish(Dataset.Status.FAILED, reason=str(exc))
        return dataset.status
    dataset.finish(Dataset.Status.READY)
    return dataset.status
