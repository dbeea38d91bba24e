"""Dense scanning of slides with the patch classifier cascade (seed 002), exactly equal to the
per-window patch loop, and the per-pixel tumour score as a box sum.

What is computed
----------------
A ``window`` x ``window`` px window (40 px at 1.0 µm/px) slides over the slide with ``stride`` px
(10). Every window in tissue is classified by the primary model; where the primary calls it tumour
(probability >= its decision threshold, 0.5 by default) the secondary model, if any, decides again
(the cascade). A window finally called tumour adds ``1 / n**2`` (n = window / stride = 4, so
0.0625) to every pixel it covers. Pixels are grouped into stride cells (10 x 10 px), which all
windows either cover completely or not at all, so the heat map is a raster with one value per
cell: the number of covering tumour windows (0 ... 16), i.e. the score times 16, stored as uint8.

Why the dense run equals the patch loop (max abs difference of probabilities <= 1e-4, tested)
-------------------------------------------------------------------------------------------
The classifier is ``forward_features`` -> global average pool -> linear layer. Dense scanning runs
``forward_features`` once over a whole tile (many windows plus a halo) instead of once per window:

1. **Valid padding.** With ``padding="valid"`` no layer pads, so a feature at position ``j`` of a
   layer depends only on the input pixels of its receptive field, never on zeros placed at a
   border. Convolutions are translation-equivariant: shifting the input by a multiple of the
   layer's cumulative stride shifts its output by the corresponding number of positions. Residual
   branches are centre-cropped by a fixed offset (``inference.models.layers.crop_to``), which is
   the same whether the input is one window or a tile, so the equivariance survives them. With
   "same" padding a window's border features see zeros where the tile has real pixels: dense
   scanning cannot be exact, and :meth:`Classifier.check_dense` refuses such models. Train scoring
   models with ``recipe.model_kwargs={"padding": "valid", ...}`` (see :data:`DENSE_MOBILENET`).
2. **Batch norm in eval mode** is a fixed per-channel affine map (running statistics), the same
   at every position and for every batch; ReLU6 and the other activations are pointwise. Dropout
   is the identity in eval mode.
3. **Total stride S** (the model's ``output_stride``). The features of the window whose top-left
   corner is at tile offset ``p`` are the block of the tile's dense feature map starting at
   ``p / S``, of the size ``feature_size(window)`` (fh x fw) - provided ``p`` is a multiple of S
   (every stride-2 layer then sees the same pixel parity). When S divides the scoring stride every
   wanted window is such a position: one dense run per tile. Otherwise (S = 4 or 8 with stride
   10) :meth:`Classifier.dense_logits` uses shift-and-stitch: for each residue ``r`` of the wanted
   offsets modulo S it runs the tile shifted by ``r`` (``S / gcd(S, stride)`` runs per axis), which
   is exact but costs that many runs squared; hence :data:`DENSE_MOBILENET` uses S = 2.
4. **The global average pool over a window's footprint, then the linear layer**: as both are
   linear they commute, so the linear layer is applied first at every position of the dense
   feature map (a 1x1 convolution with ``fc.weight``, 2 outputs) and the result averaged with
   ``avg_pool2d``, kernel (fh, fw), sampled every ``stride / S`` positions (2 channels to average
   instead of the head's 128). Softmax gives the probability.
5. **Tiles and halo.** A tile holds T x T windows (T = 24 on CPU, 64 on CUDA): its input is
   ``(T - 1) * stride + window`` px, i.e. the windows' cells plus a halo of ``window - stride`` px
   shared with the neighbouring tile, so every window lies entirely inside one tile and is
   computed from real pixels only. Each tile is an input of its own, so only offsets relative to
   its origin (multiples of the stride) matter. Tiles are batched by size; a smaller edge tile in
   a batch is zero-padded, and the padding only reaches windows that are discarded.

What remains is floating-point rounding: the dense and per-window runs sum the same products in
different orders (different convolution algorithms for different input sizes), about 1e-6 in
float32. On CUDA, scoring runs under fp16 autocast (fast, not bit-exact: probabilities moved
by up to 0.025 on random weights on an H100, so a window that close to the decision threshold may
flip; tests/inference/test_scoring_cuda.py); exactness is asserted on CPU in float32, and on CUDA
with autocast and TF32 off.

The box sum
-----------
Cell (r, c) is covered by the windows (i, j) with r - n < i <= r and c - n < j <= c, so the count
raster is the "full" correlation of the window-decision map with an n x n box of ones, computed
exactly in integers from a 2-D cumulative sum (:func:`box_sum_full`), not by a loop over windows.

Tissue
------
Cells holding any tissue (from :func:`annotations.tissue.tissue_mask`) are tissue cells; a window
is scanned only if one of its cells is tissue, tiles without such windows are never read or
computed, and the score of a cell without tissue is set to 0 (seed 002 removes the edge areas
without tissue).
"""

from __future__ import annotations

import copy
import math
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from inference.models.layers import PatchClassifier
    from inference.records import ModelVersion
    from slides.models import Slide

__all__ = [
    "DENSE_MOBILENET",
    "Classifier",
    "NotDenseScannable",
    "ScanGeometry",
    "ScanResult",
    "ScoringError",
    "box_sum_full",
    "cells_from_mask",
    "naive_window_probabilities",
    "scan",
    "scan_image",
    "scan_slide",
]

#: MobileNetV2 settings for a dense-scanning model of seed 002's 40 px window: valid padding,
#: total stride 2 (divides the 10 px scoring stride, so one dense run per tile is exact), a depth
#: whose 3x3 layers fit a 40 px window (features 9 x 9). Use as ``recipe.model_kwargs`` (add
#: ``"width_mult"``). Dense scanning then does about 6x less work per window than the patch loop
#: (not 16x: with valid padding each window's deeper maps shrink, so the patch loop recomputes
#: deep layers fewer than 16 times; see benchmarks/scoring.py).
DENSE_MOBILENET: dict[str, Any] = {
    "padding": "valid",
    "output_stride": 2,
    "inverted_residual_setting": [[1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 2, 2]],
    "last_channels": 128,
}

#: "auto" cascade: what checking one window on its own costs, in stride cells of a dense run, and
#: what one dense call costs on top of its cells. The secondary runs densely over the box holding
#: a tile's called windows (its cells plus the halo) when that costs less than checking them one
#: by one. Measured for DENSE_MOBILENET on CPU (1 thread): ~60 µs a window one by one, ~9 µs a
#: cell plus ~0.45 ms a call densely (the multiply-accumulates differ 6.1x).
WINDOW_COST_IN_DENSE_CELLS = 6.0
DENSE_CALL_COST_IN_CELLS = 50
#: Otherwise the tile is cut into blocks of BLOCK x BLOCK windows (70 px of pixels for seed 002's
#: grid) and each block into quarters of SMALL x SMALL windows (50 px). A quarter holding more
#: called windows than :data:`SMALL_BLOCK_COST_IN_WINDOWS` runs densely, else its windows are
#: checked one by one; a block runs densely as a whole where that costs less than its quarters
#: (:data:`BLOCK_COST_IN_WINDOWS`). Dense blocks and quarters go many to a call. Measured for
#: DENSE_MOBILENET on CPU (2 threads, batches of 64 blocks or 128 quarters or windows): a block
#: costs 3.3-5.2 windows and a quarter 1.5-2.0 (two machines): with valid padding two
#: neighbouring windows computed together cost little more than one.
SECONDARY_BLOCK = 4
SECONDARY_SMALL_BLOCK = 2
BLOCK_COST_IN_WINDOWS = 4.5
SMALL_BLOCK_COST_IN_WINDOWS = 1.8
#: Scan tiles whose stored tiles are decoded together, ahead of the model (see SlideReader.warm).
READ_AHEAD_BATCHES = 8

Progress = Callable[[int, int], None]
Reader = Callable[[int, int, int, int], np.ndarray]


class ScoringError(ValueError):
    """A slide or model that cannot be scored, with the reason."""


class NotDenseScannable(ScoringError):  # noqa: N818 - the name says what is wrong
    """The model cannot be run densely with an exact result (e.g. padding="same")."""


# ---- geometry ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScanGeometry:
    """The scanning grid in pixels at ``target_mpp`` µm/px (seed 002: 40 px, stride 10, 1.0)."""

    window: int = 40
    stride: int = 10
    target_mpp: float = 1.0

    def __post_init__(self) -> None:
        if self.window < 1 or self.stride < 1 or self.target_mpp <= 0:
            raise ScoringError("window, stride and target mpp must be positive")
        if self.window % self.stride:
            raise ScoringError(
                f"the window ({self.window} px) must be a multiple of the stride ({self.stride} px)"
                " so that every stride cell is covered by whole windows"
            )

    @property
    def n(self) -> int:
        """Windows covering a cell along one axis (4 for 40 / 10)."""
        return self.window // self.stride

    @property
    def denominator(self) -> int:
        """Windows covering an inner cell (16): one tumour window adds 1/denominator."""
        return self.n * self.n

    @property
    def halo(self) -> int:
        """Pixels a tile shares with its neighbour so that windows across the seam are complete."""
        return self.window - self.stride

    def windows_along(self, length: int) -> int:
        """Window positions that fit entirely inside ``length`` px."""
        return 0 if length < self.window else (length - self.window) // self.stride + 1

    def cells_along(self, length: int) -> int:
        return -(-length // self.stride)

    def to_dict(self) -> dict[str, Any]:
        return {"window": self.window, "stride": self.stride, "target_mpp": self.target_mpp}


def box_sum_full(decisions: np.ndarray, n: int) -> np.ndarray:
    """The "full" 2-D correlation of a (rows, cols) 0/1 map with an n x n box of ones, exactly,
    via a 2-D cumulative sum: out[r, c] = sum of decisions[r-n+1 .. r, c-n+1 .. c] (clipped), of
    shape (rows + n - 1, cols + n - 1). For window decisions this is, per stride cell, the number of
    covering windows called tumour."""
    d = np.asarray(decisions, dtype=np.int32)
    rows, cols = d.shape
    padded = np.zeros((rows + 2 * (n - 1) + 1, cols + 2 * (n - 1) + 1), np.int32)
    padded[n : n + rows, n : n + cols] = d
    integral = padded.cumsum(0).cumsum(1)
    return integral[n:, n:] - integral[:-n, n:] - integral[n:, :-n] + integral[:-n, :-n]


def box_any_valid(cells: np.ndarray, n: int) -> np.ndarray:
    """For each n x n block of ``cells`` (valid positions, stride 1): does it hold any True?"""
    c = np.asarray(cells, dtype=np.int32)
    rows, cols = c.shape[0] - n + 1, c.shape[1] - n + 1
    if rows <= 0 or cols <= 0:
        return np.zeros((max(rows, 0), max(cols, 0)), bool)
    integral = np.zeros((c.shape[0] + 1, c.shape[1] + 1), np.int64)
    integral[1:, 1:] = c.cumsum(0).cumsum(1)
    s = integral[n:, n:] - integral[:-n, n:] - integral[n:, :-n] + integral[:-n, :-n]
    return s > 0


def cells_from_mask(
    mask: np.ndarray, *, level0_width: int, level0_height: int, cell_px: float, rows: int, cols: int
) -> np.ndarray:
    """A (rows, cols) boolean map: does cell (r, c) - level-0 box [c*cell_px, (c+1)*cell_px) x
    [r*cell_px, (r+1)*cell_px) - overlap any True pixel of ``mask`` (which covers the whole slide)?
    Exact for any mask resolution, through an integral image."""
    mask = np.asarray(mask, dtype=bool)
    mh, mw = mask.shape
    # int32 holds any count of a mask up to 2**31 px (a 46,000 px square), and sums twice as fast
    dtype = np.int32 if mask.size < 2**31 else np.int64
    integral = np.zeros((mh + 1, mw + 1), dtype)
    np.cumsum(mask, axis=0, dtype=dtype, out=integral[1:, 1:])
    np.cumsum(integral[1:, 1:], axis=1, out=integral[1:, 1:])

    def spans(count: int, size: int, level0: int) -> tuple[np.ndarray, np.ndarray]:
        per = level0 / size  # level-0 px per mask px
        edges = np.arange(count + 1) * cell_px
        lo = np.clip(np.floor(edges[:-1] / per).astype(np.int64), 0, size)
        hi = np.clip(np.ceil(edges[1:] / per).astype(np.int64), 0, size)
        return lo, np.maximum(hi, lo)

    y0, y1 = spans(rows, mh, level0_height)
    x0, x1 = spans(cols, mw, level0_width)
    total = (
        integral[y1[:, None], x1[None, :]]
        - integral[y0[:, None], x1[None, :]]
        - integral[y1[:, None], x0[None, :]]
        + integral[y0[:, None], x0[None, :]]
    )
    return total > 0


# ---- the classifier ------------------------------------------------------------------------


@dataclass
class Classifier:
    """A patch classifier ready for scanning: the model in eval mode, its input normalisation,
    which output is tumour, and the probability at or above which a window is called tumour."""

    model: PatchClassifier
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    positive_index: int = 1
    decision_threshold: float = 0.5
    name: str = ""
    device: Any = None
    amp: bool = False
    _feature_sizes: dict[int, tuple[int, int]] = field(default_factory=dict, repr=False)
    _inference: Any = field(default=None, repr=False)
    _raw_input: bool = field(default=False, repr=False)

    def __post_init__(self) -> None:
        self.model.eval()
        if not 0 <= self.positive_index < self.model.num_classes:
            raise ScoringError(
                f"positive class {self.positive_index} outside the model's {self.model.num_classes} outputs"
            )

    # -- construction --

    @classmethod
    def from_file(
        cls, path: str | PathLike[str], *, decision_threshold: float = 0.5, name: str = ""
    ) -> Classifier:
        """Load a ``model.pt`` written by :func:`inference.training.train`."""
        from inference.augmentation import IMAGENET_MEAN, IMAGENET_STD
        from inference.training import load_trained_model

        model, meta = load_trained_model(path)
        recipe = meta.get("recipe") or {}
        classes = [str(c).lower() for c in meta.get("classes") or []]
        positive = int(recipe.get("positive_class", 1))
        for tumour_name in ("tumour", "tumor"):
            if tumour_name in classes:
                positive = classes.index(tumour_name)
        return cls(
            model=model,  # type: ignore[arg-type]
            mean=tuple(recipe.get("mean") or IMAGENET_MEAN),
            std=tuple(recipe.get("std") or IMAGENET_STD),
            positive_index=positive,
            decision_threshold=decision_threshold,
            name=name or Path(path).stem,
        )

    @classmethod
    def from_version(cls, version: ModelVersion, *, decision_threshold: float = 0.5) -> Classifier:
        """The classifier of a ModelVersion (its weights file), cached per process by checksum."""
        key = (version.weights_sha256 or version.weights_path, decision_threshold)
        cached = _CLASSIFIERS.get(key)
        if cached is None:
            path = Path(version.weights_path)
            if not path.is_file():
                raise ScoringError(f"the weights of model {version.name} are missing ({path})")
            cached = cls.from_file(path, decision_threshold=decision_threshold, name=version.name)
            _CLASSIFIERS[key] = cached
            while len(_CLASSIFIERS) > 4:
                _CLASSIFIERS.pop(next(iter(_CLASSIFIERS)))
        return cached

    def to(
        self, device: str | torch.device | None = None, *, amp: bool | None = None
    ) -> Classifier:
        """Move to ``device`` (default: CUDA when available); fp16 autocast and channels-last on
        CUDA unless ``amp=False``."""
        import torch

        dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.device = dev
        self.model.to(dev)
        on_cuda = dev.type == "cuda"
        self.amp = on_cuda if amp is None else (amp and on_cuda)
        if on_cuda:
            self.model.to(memory_format=torch.channels_last)
        self._inference = None  # rebuilt for the new device on first use
        return self

    @property
    def inference_model(self) -> PatchClassifier:
        """The network that computes: a copy of :attr:`model` with every batch norm folded into
        the convolution before it (eval-mode batch norm is a fixed per-channel affine map, so
        this is the same function up to float rounding, ~1e-7) and channels-last memory format.
        With valid padding on CPU the input normalisation ``(x / 255 - mean) / std`` is folded
        into the first convolution too (no zero padding to tell the two apart), so it takes the
        pixels as they are, converted to float (:meth:`_prepare_input`). On CPU each convolution
        followed by its ReLU / ReLU6 then runs as one oneDNN call (:func:`fuse_conv_activations`:
        the activation is applied as the convolution writes its output, not in a second pass
        over the feature map). Both the patch loop and dense scanning run it; :attr:`model`'s
        weights are left untouched (a model without batch norms is run as it is, in
        channels-last). Each step is checked on a probe against :attr:`model` and skipped if it
        does not compute the same function. Together these make dense scanning about 2.5x faster
        on CPU (benchmarks/scoring.py)."""
        if self._inference is None:
            import torch

            fused, folded = fold_batch_norms(self.model)
            if not folded:  # nothing to fold: run the model itself
                fused = self.model
            elif not self._same_function(fused):  # pragma: no cover - a layer order not known
                fused = copy.deepcopy(self.model).eval()
            self._raw_input = False
            on_cpu = self.device is None or torch.device(self.device).type == "cpu"
            if self.can_scan_densely and on_cpu:  # on a GPU normalising costs next to nothing
                raw = fold_normalisation(fused, mean=self.mean, std=self.std)
                if raw is not None and self._same_function(raw, raw_input=True):
                    fused, self._raw_input = raw, True
            if on_cpu and folded:
                merged, n_merged = fuse_conv_activations(fused)
                if n_merged and self._same_function(merged, raw_input=self._raw_input):
                    fused = merged
            self._inference = fused.to(memory_format=torch.channels_last)
        return self._inference

    def _same_function(self, fused: PatchClassifier, *, raw_input: bool = False) -> bool:
        """Does ``fused`` compute what :attr:`model` computes (on a random probe)? Guards the
        folding against a layer order it does not know. ``raw_input``: ``fused`` takes pixels in
        0..255, :attr:`model` their normalisation."""
        import torch

        size = int(getattr(self.model, "input_size", None) or 64)
        param = next(self.model.parameters())
        generator = torch.Generator().manual_seed(0)
        if raw_input:
            pixels = torch.randint(
                0, 256, (2, size, size, 3), generator=generator, dtype=torch.uint8
            )
            probe = self._prepare(pixels).to(param.dtype)
            fused_probe = pixels.permute(0, 3, 1, 2).to(param.device, param.dtype)
        else:
            probe = torch.rand(2, self.model.in_channels, size, size, generator=generator) * 4 - 2
            probe = fused_probe = probe.to(param.device, param.dtype)
        with torch.inference_mode():
            want, got = self.model(probe), fused(fused_probe)
        return bool(torch.allclose(want, got, rtol=1e-4, atol=1e-4 if raw_input else 1e-5))

    # -- checks --

    @property
    def output_stride(self) -> int:
        return int(getattr(self.model, "output_stride", 1))

    @property
    def can_scan_densely(self) -> bool:
        return getattr(self.model, "padding", None) == "valid"

    def feature_size(self, window: int) -> tuple[int, int]:
        if window not in self._feature_sizes:
            self._feature_sizes[window] = self.model.feature_size(window)
        return self._feature_sizes[window]

    def check_window(self, geometry: ScanGeometry) -> None:
        """The model must have been trained on ``geometry.window`` px patches (when it says)."""
        size = getattr(self.model, "input_size", None)
        if size is not None and int(size) != geometry.window:
            raise ScoringError(
                f"model {self.name or self.model.name} was trained on {size} px patches; the scanning"
                f" window is {geometry.window} px"
            )

    def check_dense(self, geometry: ScanGeometry) -> None:
        """Refuse, with the reason, a model whose dense run would not equal the patch loop."""
        self.check_window(geometry)
        if not self.can_scan_densely:
            raise NotDenseScannable(
                f"model {self.name or self.model.name} uses padding={getattr(self.model, 'padding', None)!r}:"
                " with zero padding a window's features depend on where it sits, so dense scanning"
                ' cannot equal classifying each window; it needs padding="valid". Train scoring'
                ' models with recipe model_kwargs {"padding": "valid", ...}'
                " (inference.scoring.DENSE_MOBILENET)."
            )
        try:
            self.feature_size(geometry.window)
        except ValueError as exc:
            raise NotDenseScannable(str(exc)) from exc

    def passes(self, stride: int) -> int:
        """Dense runs per tile: 1 when the total stride divides ``stride``, else shift-and-stitch
        needs (S / gcd(S, stride))**2."""
        s = self.output_stride
        return (s // math.gcd(s, stride)) ** 2

    # -- computing --

    def _prepare(self, pixels: np.ndarray | torch.Tensor) -> torch.Tensor:
        """(N, H, W, 3) uint8 -> normalised float (N, 3, H, W) on the device, channels-last (the
        permuted HWC pixels already are: no copy), in one pass: x * (1 / (255 std)) - mean / std."""
        import torch

        x = torch.as_tensor(pixels)
        if x.ndim == 3:
            x = x[None]
        x = x.to(self.device or "cpu", non_blocking=True).permute(0, 3, 1, 2)
        std = torch.tensor(self.std, dtype=torch.float64)
        scale = (1.0 / (255.0 * std)).to(x.device, torch.float32).view(1, -1, 1, 1)
        shift = (-torch.tensor(self.mean, dtype=torch.float64) / std).to(x.device, torch.float32)
        x = torch.addcmul(shift.view(1, -1, 1, 1), x.float(), scale)
        # channels-last on CPU too: oneDNN's depthwise and 1x1 convolutions run ~2x faster on it
        return x.contiguous(memory_format=torch.channels_last)

    def _prepare_input(self, pixels: np.ndarray | torch.Tensor) -> torch.Tensor:
        """What :attr:`inference_model` takes: the pixels as float, channels-last, when it holds
        the normalisation (one pass, no arithmetic), else :meth:`_prepare`'s normalisation."""
        import torch

        _ = self.inference_model  # built first: it decides whether the normalisation is folded in
        if not self._raw_input:
            return self._prepare(pixels)
        x = torch.as_tensor(pixels)
        if x.ndim == 3:
            x = x[None]
        x = x.to(self.device or "cpu", non_blocking=True).permute(0, 3, 1, 2)
        return x.float().contiguous(memory_format=torch.channels_last)

    def _autocast(self):
        import contextlib

        import torch

        if self.amp and self.device is not None and torch.device(self.device).type == "cuda":
            return torch.autocast("cuda", dtype=torch.float16)
        return contextlib.nullcontext()

    def window_probabilities(self, windows: np.ndarray, *, batch_size: int = 512) -> np.ndarray:
        """Tumour probability of each (window x window) patch of (N, h, w, 3) uint8 ``windows``,
        each classified on its own (the patch loop)."""
        import torch

        out = np.empty(len(windows), np.float32)
        with torch.inference_mode(), self._autocast():
            for start in range(0, len(windows), batch_size):
                x = self._prepare_input(windows[start : start + batch_size])
                logits = self.inference_model(x).float()
                probs = torch.softmax(logits, dim=1)[:, self.positive_index]
                out[start : start + len(x)] = probs.cpu().numpy()
        return out

    def dense_logits(self, x: torch.Tensor, *, window: int, stride: int) -> torch.Tensor:
        """Logits of every window at offsets (stride*i, stride*j) of the prepared (B, 3, H, W)
        tiles ``x``, from dense runs: (B, classes, rows, cols). See the module docstring."""
        import torch
        import torch.nn.functional as F

        model = self.inference_model
        s = self.output_stride
        fh, fw = self.feature_size(window)
        h, w = x.shape[-2:]
        rows, cols = (h - window) // stride + 1, (w - window) // stride + 1
        if rows < 1 or cols < 1:
            raise ScoringError(f"a {h}x{w} tile holds no {window} px window")
        lcm = stride * s // math.gcd(stride, s)
        step_k = lcm // stride  # wanted windows of one residue are step_k windows apart
        step_f = lcm // s  # ... and step_f feature positions apart
        out = x.new_empty((x.shape[0], model.num_classes, rows, cols), dtype=torch.float32)
        fc_weight = model.fc.weight[:, :, None, None]
        # residue r of the wanted offset stride*k modulo S -> the first k with that residue
        first: dict[int, int] = {}
        for k in range(min(step_k, max(rows, cols))):
            first.setdefault(stride * k % s, k)
        for ry, ky in first.items():
            if ky >= rows:
                continue
            for rx, kx in first.items():
                if kx >= cols:
                    continue
                feats = model.forward_features(x[..., ry:, rx:])
                iy, ix = (stride * ky - ry) // s, (stride * kx - rx) // s
                # the linear layer first, at every feature position (a 1x1 convolution), then the
                # average over each window's footprint: the same numbers (averaging and a linear
                # map commute), but 2 channels to pool instead of the head's 128 or more
                per_position = F.conv2d(feats[..., iy:, ix:], fc_weight.to(feats.dtype))
                logits = F.avg_pool2d(
                    per_position.float(), kernel_size=(fh, fw), stride=(step_f, step_f)
                )
                logits = logits + model.fc.bias.float().view(1, -1, 1, 1)
                ny, nx = len(range(ky, rows, step_k)), len(range(kx, cols, step_k))
                out[:, :, ky::step_k, kx::step_k] = logits[:, :, :ny, :nx]
        return out

    def dense_probabilities(self, tiles: np.ndarray, *, window: int, stride: int) -> np.ndarray:
        """Tumour probability of every window of (B, H, W, 3) uint8 ``tiles`` at offsets that are
        multiples of ``stride``: (B, rows, cols), equal to :meth:`window_probabilities` per window."""
        import torch

        with torch.inference_mode(), self._autocast():
            logits = self.dense_logits(self._prepare_input(tiles), window=window, stride=stride)
            probs = torch.softmax(logits.float(), dim=1)[:, self.positive_index]
        return probs.cpu().numpy().astype(np.float32, copy=False)


_CLASSIFIERS: dict[tuple[str, float], Classifier] = {}


def fold_batch_norms(model: PatchClassifier) -> tuple[PatchClassifier, int]:
    """An eval-mode copy of ``model`` in which each BatchNorm2d that directly follows a Conv2d is
    folded into that convolution's weights and bias and replaced by the identity. Recognised
    pairs: attributes ``conv``/``bn``, ``convN``/``bnN``, ``X``/``X_bn``, and consecutive
    (Conv2d, BatchNorm2d) in an ``nn.Sequential``; any other batch norm is kept as it is.
    Returns the copy and how many batch norms were folded."""
    from torch import nn
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    fused = copy.deepcopy(model).eval()
    folded = 0
    for module in list(fused.modules()):
        if isinstance(module, nn.Sequential):
            items = list(module)
            for i in range(len(items) - 1):
                conv, bn = items[i], items[i + 1]
                if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                    module[i] = fuse_conv_bn_eval(conv, bn)
                    module[i + 1] = nn.Identity()
                    folded += 1
            continue
        children = dict(module.named_children())
        for name, conv in children.items():
            if not isinstance(conv, nn.Conv2d):
                continue
            for bn_name in (name.replace("conv", "bn"), f"{name}_bn"):
                bn = children.get(bn_name)
                if bn_name != name and isinstance(bn, nn.BatchNorm2d):
                    setattr(module, name, fuse_conv_bn_eval(conv, bn))
                    setattr(module, bn_name, nn.Identity())
                    children[bn_name] = None
                    folded += 1
                    break
    return fused, folded


def _fused_conv_activation_type() -> type:
    """The nn.Module class of a convolution and its clamp run as one oneDNN call (made on first
    use so that importing this module does not import torch)."""
    global _FUSED_TYPE  # noqa: PLW0603 - one class per process
    if _FUSED_TYPE is not None:
        return _FUSED_TYPE
    import torch
    from torch import nn

    class FusedConvClamp(nn.Module):
        """``clamp(conv(x), low, high)`` (ReLU: high = None; ReLU6: 0 .. 6) as oneDNN's
        convolution with a hardtanh / relu post-op: the same kernel as ``conv2d`` on CPU, the
        clamp applied to each output as it is written. Any other input (CUDA, not float32,
        autograd) takes the two-step path."""

        def __init__(self, conv: nn.Conv2d, low: float, high: float | None) -> None:
            super().__init__()
            self.conv = conv
            self.low, self.high = low, high
            self.attr = "relu" if high is None else "hardtanh"
            self.scalars = [] if high is None else [low, high]
            self.padding = list(conv.padding)  # type: ignore[arg-type]
            self.stride, self.dilation = list(conv.stride), list(conv.dilation)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            conv = self.conv
            if x.device.type == "cpu" and x.dtype == torch.float32 and not torch.is_grad_enabled():
                return torch.ops.mkldnn._convolution_pointwise(
                    x, conv.weight, conv.bias, self.padding, self.stride, self.dilation,
                    conv.groups, self.attr, self.scalars, "",
                )  # fmt: skip
            return torch.clamp(conv(x), self.low, self.high)

    _FUSED_TYPE = FusedConvClamp
    return _FUSED_TYPE


_FUSED_TYPE: type | None = None


def fuse_conv_activations(model: PatchClassifier) -> tuple[PatchClassifier, int]:
    """A copy of ``model`` in which every ``ConvBNAct`` whose batch norm is already folded
    (:func:`fold_batch_norms`) and whose activation is ReLU or ReLU6 runs as one oneDNN call
    (convolution with the clamp as a post-op) instead of a convolution and a second pass over its
    output (ReLU6 alone took ~10 % of a dense scan on CPU). Returns the copy and how many were
    merged; (model, 0) where PyTorch has no oneDNN (``torch.ops.mkldnn``) or nothing matches.
    The caller checks the copy on a probe."""
    import torch
    from torch import nn

    from inference.models.layers import ConvBNAct

    if not (
        torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise")
    ):
        return model, 0
    fused_type = _fused_conv_activation_type()
    merged = copy.deepcopy(model).eval()
    count = 0
    for module in list(merged.modules()):
        for name, child in list(module.named_children()):
            if not isinstance(child, ConvBNAct) or not isinstance(child.bn, nn.Identity):
                continue
            conv = child.conv
            if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
                continue
            if isinstance(child.act, nn.ReLU6):
                setattr(module, name, fused_type(conv, 0.0, 6.0))
            elif isinstance(child.act, nn.ReLU):
                setattr(module, name, fused_type(conv, 0.0, None))
            else:
                continue
            count += 1
    return (merged, count) if count else (model, 0)


def fold_normalisation(
    model: PatchClassifier, *, mean: tuple[float, ...], std: tuple[float, ...]
) -> PatchClassifier | None:
    """A copy of ``model`` whose first convolution also does the input normalisation
    ``(x / 255 - mean) / std``, so it takes pixels in 0..255: each input channel c is an affine
    map ``a_c x + b_c``, so ``W * (a x + b) + bias = (W a) * x + (bias + sum W b)`` - exact only
    without zero padding (a padded zero would stand for ``-mean / std``). The first convolution is
    the first ``Conv2d`` that takes the model's input channels; the caller checks the copy on a
    probe. None if there is none."""
    import torch
    from torch import nn

    fused = copy.deepcopy(model).eval()
    first = next(
        (
            m
            for m in fused.modules()
            if isinstance(m, nn.Conv2d) and m.in_channels == model.in_channels and m.groups == 1
        ),
        None,
    )
    if first is None:
        return None
    if first.padding != "valid" and (isinstance(first.padding, str) or any(first.padding)):
        return None  # zero padding: the border would change
    device = first.weight.device
    std_t = torch.tensor(std, dtype=torch.float64, device=device)
    scale = 1.0 / (255.0 * std_t)  # a_c
    shift = -torch.tensor(mean, dtype=torch.float64, device=device) / std_t  # b_c
    with torch.no_grad():
        weight = first.weight.double()
        bias = (
            first.bias.double()
            if first.bias is not None
            else torch.zeros(weight.shape[0], dtype=torch.float64, device=device)
        )
        bias = bias + (weight * shift.view(1, -1, 1, 1)).sum(dim=(1, 2, 3))
        first.weight.copy_((weight * scale.view(1, -1, 1, 1)).to(first.weight.dtype))
        if first.bias is None:
            first.bias = nn.Parameter(bias.to(first.weight.dtype))
        else:
            first.bias.copy_(bias.to(first.bias.dtype))
    return fused


def windows_of(image: np.ndarray, *, window: int, stride: int) -> np.ndarray:
    """All (window x window) patches of an (H, W, 3) image at multiples of ``stride``, as a
    strided view of shape (rows, cols, window, window, 3)."""
    view = np.lib.stride_tricks.sliding_window_view(image, (window, window), axis=(0, 1))
    return np.moveaxis(view[::stride, ::stride], 2, -1)


def naive_window_probabilities(
    classifier: Classifier, image: np.ndarray, *, window: int, stride: int, batch_size: int = 256
) -> np.ndarray:
    """The patch loop: crop every window of ``image`` and classify it on its own (reference for
    the exactness test and the baseline of the benchmark). Returns (rows, cols) probabilities."""
    patches = windows_of(image, window=window, stride=stride)
    rows, cols = patches.shape[:2]
    flat = np.ascontiguousarray(patches.reshape(rows * cols, window, window, 3))
    return classifier.window_probabilities(flat, batch_size=batch_size).reshape(rows, cols)


# ---- scanning ------------------------------------------------------------------------------


@dataclass
class ScanResult:
    """Everything one scan produced, on the window grid and on the cell grid (scan pixels at
    ``geometry.target_mpp``; one scan pixel is ``scale`` level-0 pixels)."""

    geometry: ScanGeometry
    scale: float
    width: int
    height: int
    tissue_cells: np.ndarray  # (cell rows, cell cols) bool
    tissue_windows: np.ndarray  # (window rows, window cols) bool
    primary: np.ndarray  # (window rows, window cols) float32, NaN where not computed
    secondary: np.ndarray  # float32, NaN where the secondary was not consulted
    decisions: np.ndarray  # bool: the cascade called the window tumour
    counts: np.ndarray  # (cell rows, cell cols) uint8: covering tumour windows, 0 ... n*n
    tiles_total: int = 0
    tiles_scanned: int = 0
    secondary_windows: int = 0
    seconds: float = 0.0
    read_seconds: float = 0.0  # spent reading tiles (in the reader thread)
    read_wait_seconds: float = 0.0  # of which the model waited for (all of it without prefetch)
    device: str = "cpu"

    @property
    def stride_px(self) -> float:
        """Level-0 px per cell."""
        return self.geometry.stride * self.scale

    @property
    def window_px(self) -> float:
        return self.geometry.window * self.scale

    @property
    def scores(self) -> np.ndarray:
        """Per-cell score in [0, 1] (multiples of 1/16)."""
        return self.counts.astype(np.float32) / self.geometry.denominator

    @property
    def max_score(self) -> float:
        return float(self.counts.max(initial=0)) / self.geometry.denominator

    def max_cell(self) -> tuple[int, int]:
        return max_cell(self.counts)

    def max_location(self) -> tuple[float, float]:
        """Level-0 (x, y) of the centre of the highest-scoring cell."""
        r, c = self.max_cell()
        return ((c + 0.5) * self.stride_px, (r + 0.5) * self.stride_px)

    def summary(self) -> dict[str, Any]:
        return {
            "geometry": self.geometry.to_dict(),
            "scale": self.scale,
            "cells": list(self.counts.shape),
            "windows": list(self.decisions.shape),
            "tissue_windows": int(self.tissue_windows.sum()),
            "tumour_windows": int(self.decisions.sum()),
            "secondary_windows": self.secondary_windows,
            "tiles_total": self.tiles_total,
            "tiles_scanned": self.tiles_scanned,
            "max_score": self.max_score,
            "seconds": round(self.seconds, 3),
            "read_seconds": round(self.read_seconds, 3),
            "read_wait_seconds": round(self.read_wait_seconds, 3),
            "device": self.device,
        }


def max_cell(counts: np.ndarray) -> tuple[int, int]:
    """The highest cell; among equal maxima the one deepest inside its plateau (farthest from any
    lower cell), so "jump to maximum" lands in the middle of a tumour rather than on its edge."""
    if counts.size == 0:
        return (0, 0)
    top = counts.max()
    plateau = counts == top
    if plateau.sum() == 1:
        r, c = np.unravel_index(int(np.argmax(counts)), counts.shape)
        return int(r), int(c)
    from scipy.ndimage import distance_transform_edt

    depth = distance_transform_edt(np.pad(plateau, 1))[1:-1, 1:-1]
    r, c = np.unravel_index(int(np.argmax(np.where(plateau, depth, -1))), counts.shape)
    return int(r), int(c)


def tile_plan(device: Any) -> tuple[int, int]:
    """(windows per tile side, tiles per batch) for ``device``. CPU: one tile of 24 x 24 windows
    (270 px) at a time, whose feature maps stay in cache: ~1.2-1.3x faster than batches of 4 and
    than 510 px tiles (benchmarks/scoring.py). GPU: big tiles and batches keep it busy."""
    return (64, 8) if str(device).startswith("cuda") else (24, 1)


def _tile_grid(n_rows: int, n_cols: int, per_tile: int) -> Iterator[tuple[int, int, int, int]]:
    for r0 in range(0, n_rows, per_tile):
        for c0 in range(0, n_cols, per_tile):
            yield r0, min(r0 + per_tile, n_rows), c0, min(c0 + per_tile, n_cols)


def _regions(
    boxes: Sequence[tuple[int, int, int, int]], g: ScanGeometry
) -> list[tuple[int, int, int, int]]:
    """The (x, y, w, h) pixel regions of window boxes (r0, r1, c0, c1): windows plus halo."""
    return [
        (c0 * g.stride, r0 * g.stride, (c1 - c0 - 1) * g.stride + g.window,
         (r1 - r0 - 1) * g.stride + g.window)
        for r0, r1, c0, c1 in boxes
    ]  # fmt: skip


def _read_tiles(
    reader: Reader,
    boxes: list[tuple[int, int, int, int]],
    g: ScanGeometry,
    ahead: Sequence[tuple[int, int, int, int]] = (),
) -> np.ndarray:
    """Read the tiles' pixels (windows plus halo) and pad them to the batch's largest tile so they
    stack; the padding only ever reaches windows that are discarded. A reader with a ``warm``
    method (:class:`SlideReader`) is first asked to decode, in parallel, what these boxes and the
    next ones (``ahead``) need: a few stored tiles at a time would mostly decode one by one."""
    warm = getattr(reader, "warm", None)
    if warm is not None:
        warm(_regions(boxes, g), _regions(ahead, g))
    images = []
    for r0, r1, c0, c1 in boxes:
        h, w = (r1 - r0 - 1) * g.stride + g.window, (c1 - c0 - 1) * g.stride + g.window
        pixels = np.asarray(reader(c0 * g.stride, r0 * g.stride, w, h))[..., :3]
        if pixels.shape[:2] != (h, w):
            raise ScoringError(f"reader returned {pixels.shape[:2]} for a {h}x{w} region")
        images.append(pixels)
    height = max(i.shape[0] for i in images)
    width = max(i.shape[1] for i in images)
    out = np.zeros((len(images), height, width, 3), np.uint8)
    for k, pixels in enumerate(images):
        out[k, : pixels.shape[0], : pixels.shape[1]] = pixels
    return out


class _Later:
    """A call made when its ``result()`` is asked for, like a future (reading without the
    background thread: the model waits for every read, and ``read_wait_seconds`` says so)."""

    def __init__(self, fn: Callable[..., Any], *args: Any) -> None:
        self.fn, self.args = fn, args

    def result(self) -> Any:
        return self.fn(*self.args)


class _PendingWindows:
    """Windows the secondary checks one by one, collected over tiles and classified in batches of
    at least ``batch_size`` (a tile holds a few dozen: classified per tile, the calls are small)."""

    def __init__(
        self,
        secondary: Classifier | None,
        *,
        out_secondary: np.ndarray,
        out_decisions: np.ndarray,
        batch_size: int = 256,
    ) -> None:
        self.secondary = secondary
        self.out_secondary = out_secondary
        self.out_decisions = out_decisions
        self.batch_size = batch_size
        self.crops: list[np.ndarray] = []
        self.rows: list[np.ndarray] = []
        self.cols: list[np.ndarray] = []
        self.count = 0

    def add(self, crops: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> None:
        self.crops.append(np.ascontiguousarray(crops))  # a copy: the tile's pixels move on
        self.rows.append(rows)
        self.cols.append(cols)
        self.count += len(rows)
        if self.count >= self.batch_size:
            self.flush()

    def flush(self) -> None:
        if not self.count or self.secondary is None:
            return
        # batches of 128 windows: faster per window than bigger ones (their maps stay in cache)
        sp = self.secondary.window_probabilities(np.concatenate(self.crops), batch_size=128)
        rows, cols = np.concatenate(self.rows), np.concatenate(self.cols)
        self.out_secondary[rows, cols] = sp
        self.out_decisions[rows, cols] = sp >= self.secondary.decision_threshold
        self.crops, self.rows, self.cols, self.count = [], [], [], 0


class _PendingBlocks:
    """Blocks of ``block`` x ``block`` windows the secondary runs densely, collected over tiles and
    run ``batch_size`` blocks to a call; only the called windows of each block are kept."""

    def __init__(
        self,
        secondary: Classifier | None,
        geometry: ScanGeometry,
        *,
        block: int,
        out_secondary: np.ndarray,
        out_decisions: np.ndarray,
        batch_size: int = 64,
    ) -> None:
        self.secondary = secondary
        self.geometry = geometry
        self.block = block
        self.px = (block - 1) * geometry.stride + geometry.window
        self.out_secondary = out_secondary
        self.out_decisions = out_decisions
        self.batch_size = batch_size
        self.crops: list[np.ndarray] = []
        self.index: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []

    def add(
        self, pixels: np.ndarray, by: int, bx: int, ii: np.ndarray, jj: np.ndarray, r0: int, c0: int
    ) -> None:
        """Block (by, bx) of a tile's window grid (``pixels``: the tile, origin window (r0, c0));
        ``ii``, ``jj``: its called windows, in tile coordinates."""
        g, px = self.geometry, self.px
        y, x = by * self.block * g.stride, bx * self.block * g.stride
        crop = pixels[y : y + px, x : x + px]
        if crop.shape[:2] != (px, px):  # a block past the tile's edge: padded, those windows unused
            crop = np.pad(crop, ((0, px - crop.shape[0]), (0, px - crop.shape[1]), (0, 0)))
        self.crops.append(np.ascontiguousarray(crop))
        k = np.full(len(ii), len(self.crops) - 1)
        self.index.append(
            (k, ii - by * self.block, jj - bx * self.block, np.stack([r0 + ii, c0 + jj]))
        )
        if len(self.crops) >= self.batch_size:
            self.flush()

    def flush(self) -> None:
        if not self.crops or self.secondary is None:
            return
        g = self.geometry
        probs = self.secondary.dense_probabilities(
            np.stack(self.crops), window=g.window, stride=g.stride
        )
        k, i, j, where = (np.concatenate(parts, axis=-1) for parts in zip(*self.index, strict=True))
        sp = probs[k, i, j]
        self.out_secondary[where[0], where[1]] = sp
        self.out_decisions[where[0], where[1]] = sp >= self.secondary.decision_threshold
        self.crops, self.index = [], []


def _block_counts(called: np.ndarray, block: int) -> np.ndarray:
    """Called windows per block of ``block`` x ``block`` windows of a tile's window grid."""
    return _block_sums(called.astype(np.int32), block)


def _block_sums(values: np.ndarray, block: int) -> np.ndarray:
    """Sums of ``values`` over blocks of ``block`` x ``block`` (zero-padded at the far edges)."""
    rows, cols = -(-values.shape[0] // block), -(-values.shape[1] // block)
    padded = np.zeros((rows * block, cols * block), values.dtype)
    padded[: values.shape[0], : values.shape[1]] = values
    return padded.reshape(rows, block, cols, block).sum(axis=(1, 3))


@dataclass
class _BlockPlan:
    """How the secondary checks a tile's called windows (:func:`_plan_blocks`)."""

    big: np.ndarray  # (n,) bool: in a block run densely as a whole
    small: np.ndarray  # (n,) bool: in a quarter run densely
    big_of: np.ndarray  # (n,) the window's block, as an index into the tile's block grid
    small_of: np.ndarray  # (n,) its quarter, in the quarter grid
    big_cols: int
    small_cols: int
    cost: float  # in windows checked one by one


def _plan_blocks(
    called: np.ndarray, ii: np.ndarray, jj: np.ndarray, big: int, small: int
) -> _BlockPlan:
    """For the called windows (ii, jj) of a tile: which run densely in a block of ``big`` x
    ``big`` windows, which in a quarter of ``small`` x ``small``, and which alone (neither), each
    block by the cheapest way (:data:`BLOCK_COST_IN_WINDOWS`, :data:`SMALL_BLOCK_COST_IN_WINDOWS`;
    every way gives the same probabilities)."""
    ratio = big // small
    by_small = _block_counts(called, small)
    small_cost = np.minimum(by_small, SMALL_BLOCK_COST_IN_WINDOWS)  # a lone window costs 1
    split_cost = _block_sums(small_cost, ratio)  # each block checked by its quarters
    dense_big = split_cost > BLOCK_COST_IN_WINDOWS
    big_of = (ii // big) * split_cost.shape[1] + jj // big
    small_of = (ii // small) * by_small.shape[1] + jj // small
    in_big = dense_big.ravel()[big_of]
    in_small = ~in_big & (by_small > SMALL_BLOCK_COST_IN_WINDOWS).ravel()[small_of]
    return _BlockPlan(
        big=in_big,
        small=in_small,
        big_of=big_of,
        small_of=small_of,
        big_cols=split_cost.shape[1],
        small_cols=by_small.shape[1],
        cost=float(np.minimum(split_cost, BLOCK_COST_IN_WINDOWS).sum()),
    )


def _classify_batch(
    pixels: np.ndarray,
    batch: list[tuple[int, int, int, int]],
    *,
    primary: Classifier,
    secondary: Classifier | None,
    geometry: ScanGeometry,
    secondary_mode: str,
    dense_secondary: bool,
    tissue_windows: np.ndarray,
    out_primary: np.ndarray,
    out_secondary: np.ndarray,
    out_decisions: np.ndarray,
    pending: _PendingWindows,
    blocks: tuple[_PendingBlocks, _PendingBlocks] | None = None,
) -> int:
    """The cascade over one batch of tiles: the dense primary, then the secondary where the
    primary says tumour (densely over a box; or in blocks and quarters of blocks handed to
    ``blocks``, the rest to ``pending`` to be checked one by one, each in big batches); writes
    the window maps in place, returns how many windows the secondary checks."""
    g = geometry
    secondary_windows = 0
    probs = primary.dense_probabilities(pixels, window=g.window, stride=g.stride)
    for b, (r0, r1, c0, c1) in enumerate(batch):
        p = probs[b, : r1 - r0, : c1 - c0]
        inside = tissue_windows[r0:r1, c0:c1]
        out_primary[r0:r1, c0:c1] = np.where(inside, p, np.nan)
        called = inside & (p >= primary.decision_threshold)
        out_decisions[r0:r1, c0:c1] = called
        if secondary is None or not called.any():
            continue
        ii, jj = np.nonzero(called)
        secondary_windows += len(ii)
        if secondary_mode == "dense":  # over the whole tile
            y0, y1, x0, x1 = 0, r1 - r0, 0, c1 - c0
        else:  # the box of the called windows
            y0, y1, x0, x1 = ii.min(), ii.max() + 1, jj.min(), jj.max() + 1
        box_cells = (y1 - y0 + g.n - 1) * (x1 - x0 + g.n - 1)  # halo included
        plan = None
        if dense_secondary and secondary_mode == "auto" and blocks is not None:
            plan = _plan_blocks(called, ii, jj, blocks[0].block, blocks[1].block)
            one_by_one_cost = plan.cost
        else:
            one_by_one_cost = float(len(ii))
        use_dense = secondary_mode == "dense" or (
            dense_secondary
            and secondary_mode == "auto"
            and box_cells + DENSE_CALL_COST_IN_CELLS < WINDOW_COST_IN_DENSE_CELLS * one_by_one_cost
        )
        if use_dense:
            # window offsets in the box stay multiples of the stride: exact as over the tile
            box = pixels[
                b : b + 1,
                y0 * g.stride : (y1 - 1) * g.stride + g.window,
                x0 * g.stride : (x1 - 1) * g.stride + g.window,
            ]
            sp = secondary.dense_probabilities(box, window=g.window, stride=g.stride)[
                0, ii - y0, jj - x0
            ]
            out_secondary[r0 + ii, c0 + jj] = sp
            out_decisions[r0 + ii, c0 + jj] = sp >= secondary.decision_threshold
            continue
        views = windows_of(pixels[b], window=g.window, stride=g.stride)
        if plan is None or blocks is None:
            pending.add(views[ii, jj], r0 + ii, c0 + jj)
            continue
        # blocks and quarters with several called windows run densely (exact: offsets stay
        # stride multiples)
        for dense, block_of, cols, pending_blocks in (
            (plan.big, plan.big_of, plan.big_cols, blocks[0]),
            (plan.small, plan.small_of, plan.small_cols, blocks[1]),
        ):
            for key in np.unique(block_of[dense]):
                here = block_of == key
                by, bx = divmod(int(key), cols)
                pending_blocks.add(pixels[b], by, bx, ii[here], jj[here], r0, c0)
        alone = ~(plan.big | plan.small)
        if alone.any():
            pending.add(views[ii[alone], jj[alone]], r0 + ii[alone], c0 + jj[alone])
    return secondary_windows


def scan(
    reader: Reader,
    *,
    width: int,
    height: int,
    primary: Classifier,
    secondary: Classifier | None = None,
    geometry: ScanGeometry = ScanGeometry(),
    tissue_cells: np.ndarray | None = None,
    scale: float = 1.0,
    tile_windows: int | None = None,
    batch_tiles: int | None = None,
    secondary_mode: Literal["auto", "gather", "dense"] = "auto",
    progress: Progress | None = None,
    prefetch: bool | None = None,
) -> ScanResult:
    """Scan a ``width`` x ``height`` px image (at the target mpp) read through ``reader(x, y, w,
    h)``: dense primary over tissue tiles, the secondary only on the windows the primary calls
    tumour, the box-sum count raster. ``tissue_cells`` (cell grid) defaults to all tissue.

    ``secondary_mode``: "gather" classifies exactly the primary's tumour windows, one by one in a
    batch; "dense" runs the secondary densely over tiles holding any of them (needs valid padding);
    "auto" runs the secondary densely over the box of a tile's called windows when that costs less
    than the alternative (:data:`WINDOW_COST_IN_DENSE_CELLS`) and the model allows; the
    alternative runs blocks of :data:`SECONDARY_BLOCK` x :data:`SECONDARY_BLOCK` windows, or
    their quarters, that hold several called windows densely (many blocks to a call) and checks
    the others one by one (:func:`_plan_blocks`). All
    modes decide the same (window offsets inside a box or block stay multiples of the stride).

    ``prefetch``: read the next tiles in a background thread while the model runs (default: on
    CUDA only). On CPU it gained nothing: the model's threads already keep the cores busy, and
    reading waits for the cores either way (1 cm² node, 2 cores: 4.3-4.8 s with, 4.3-4.6 s
    without). Stored tiles are decoded in parallel threads ahead of need
    (:meth:`SlideReader.warm`), which halves the reading the model waits for."""
    started = time.perf_counter()
    primary.check_dense(geometry)
    if secondary is not None:
        secondary.check_window(geometry)
        if secondary_mode == "dense":
            secondary.check_dense(geometry)
    if primary.device is None:
        primary.to()
    if secondary is not None and secondary.device is None:
        secondary.to(primary.device)
    g = geometry
    n_rows, n_cols = g.windows_along(height), g.windows_along(width)
    c_rows, c_cols = g.cells_along(height), g.cells_along(width)
    if tissue_cells is None:
        tissue_cells = np.ones((c_rows, c_cols), bool)
    tissue_cells = np.asarray(tissue_cells, bool)
    if tissue_cells.shape != (c_rows, c_cols):
        raise ScoringError(
            f"tissue cells {tissue_cells.shape} do not match the grid {(c_rows, c_cols)}"
        )
    tissue_windows = box_any_valid(tissue_cells, g.n)[:n_rows, :n_cols]
    primary_p = np.full((n_rows, n_cols), np.nan, np.float32)
    secondary_p = np.full((n_rows, n_cols), np.nan, np.float32)
    decisions = np.zeros((n_rows, n_cols), bool)
    default_tiles, default_batch = tile_plan(primary.device)
    tile_windows = tile_windows or default_tiles
    batch_tiles = batch_tiles or default_batch
    tiles = list(_tile_grid(n_rows, n_cols, tile_windows))
    todo = [t for t in tiles if tissue_windows[t[0] : t[1], t[2] : t[3]].any()]
    # tiles of one size batch together (edge tiles are smaller): little padding is computed
    todo.sort(key=lambda t: (t[1] - t[0], t[3] - t[2]), reverse=True)
    dense_secondary = (
        secondary is not None and secondary.can_scan_densely and secondary_mode != "gather"
    )
    if dense_secondary and secondary is not None:
        try:
            secondary.check_dense(g)
        except NotDenseScannable:
            dense_secondary = False
    if prefetch is None:
        prefetch = str(primary.device).startswith("cuda")
    secondary_windows = 0
    read_seconds = 0.0
    read_wait_seconds = 0.0
    done = 0
    batches = [todo[start : start + batch_tiles] for start in range(0, len(todo), batch_tiles)]

    def read_batch(k: int) -> tuple[np.ndarray, float]:
        read_started = time.perf_counter()
        ahead = [box for batch in batches[k + 1 : k + 1 + READ_AHEAD_BATCHES] for box in batch]
        pixels = _read_tiles(reader, batches[k], g, ahead)
        return pixels, time.perf_counter() - read_started

    # With prefetch the next batch's tiles are read while the model runs on this one; one reader
    # thread, so the reader is never called concurrently.
    one_by_one = _PendingWindows(secondary, out_secondary=secondary_p, out_decisions=decisions)
    dense_blocks = (
        (
            _PendingBlocks(
                secondary,
                g,
                block=SECONDARY_BLOCK,
                out_secondary=secondary_p,
                out_decisions=decisions,
            ),
            _PendingBlocks(
                secondary,
                g,
                block=SECONDARY_SMALL_BLOCK,
                out_secondary=secondary_p,
                out_decisions=decisions,
                batch_size=128,
            ),
        )  # fmt: skip
        if dense_secondary and secondary_mode == "auto"
        else None
    )
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="scan-reader") as pool:
        submit = pool.submit if prefetch else _Later
        pending = submit(read_batch, 0) if batches else None
        for k, batch in enumerate(batches):
            wait_started = time.perf_counter()
            assert pending is not None
            pixels, seconds = pending.result()
            read_wait_seconds += time.perf_counter() - wait_started
            read_seconds += seconds
            pending = submit(read_batch, k + 1) if k + 1 < len(batches) else None
            secondary_windows += _classify_batch(
                pixels,
                batch,
                primary=primary,
                secondary=secondary,
                geometry=g,
                secondary_mode=secondary_mode,
                dense_secondary=dense_secondary,
                tissue_windows=tissue_windows,
                out_primary=primary_p,
                out_secondary=secondary_p,
                out_decisions=decisions,
                pending=one_by_one,
                blocks=dense_blocks,
            )
            done += len(batch)
            if progress is not None and done < len(todo):
                progress(done, len(todo))
    one_by_one.flush()
    for pending_blocks in dense_blocks or ():
        pending_blocks.flush()
    if progress is not None and todo:
        progress(len(todo), len(todo))
    counts = np.zeros((c_rows, c_cols), np.uint8)
    if n_rows and n_cols:
        full_counts = box_sum_full(decisions, g.n)
        counts[: full_counts.shape[0], : full_counts.shape[1]] = full_counts[:c_rows, :c_cols]
    counts[~tissue_cells] = 0
    return ScanResult(
        geometry=g,
        scale=scale,
        width=width,
        height=height,
        tissue_cells=tissue_cells,
        tissue_windows=tissue_windows,
        primary=primary_p,
        secondary=secondary_p,
        decisions=decisions,
        counts=counts,
        tiles_total=len(tiles),
        tiles_scanned=len(todo),
        secondary_windows=secondary_windows,
        seconds=time.perf_counter() - started,
        read_seconds=read_seconds,
        read_wait_seconds=read_wait_seconds,
        device=str(primary.device),
    )


def scan_image(
    image: np.ndarray,
    *,
    primary: Classifier,
    secondary: Classifier | None = None,
    geometry: ScanGeometry = ScanGeometry(),
    tissue_cells: np.ndarray | None = None,
    **kw: Any,
) -> ScanResult:
    """:func:`scan` over an in-memory (H, W, 3) uint8 image already at the target mpp."""
    image = np.asarray(image)[..., :3]
    height, width = image.shape[:2]

    def reader(x: int, y: int, w: int, h: int) -> np.ndarray:
        return image[y : y + h, x : x + w]

    return scan(
        reader,
        width=width,
        height=height,
        primary=primary,
        secondary=secondary,
        geometry=geometry,
        tissue_cells=tissue_cells,
        **kw,
    )


class SlideReader:
    """Pixels of a slide at the target mpp.

    When a pyramid level has exactly the target scale (a power-of-two downsample of level 0:
    1.0 µm/px from a 1.0, 0.5 or 0.25 µm/px scan), regions are assembled from that level's tiles
    (large-image ``getTile``), each decoded once and kept in a small LRU while the scan passes
    (a scan tile's halo reaches into the next row of stored tiles): about 2.5x the throughput of
    ``getRegion``, which retiles every request, and the same pixels (tested). Otherwise large-image
    reads the region from the closest level and resizes it once."""

    def __init__(self, slide: Slide, *, target_mpp: float, tile_cache: int = 256) -> None:
        mpp = slide.mpp
        if not mpp:
            raise ScoringError(
                f"slide {slide.pk} ({slide.name}) has no µm per pixel; set it before scoring"
            )
        from slides.tiles import open_slide

        opened = open_slide(slide)
        self.source = opened.source
        self.native = opened.native  # stored JPEG tiles of tiled TIFFs, where they line up
        self.scale = target_mpp / mpp  # level-0 px per scan px
        self.target_mpp = target_mpp
        self.width = int(math.floor(slide.width / self.scale + 1e-9))
        self.height = int(math.floor(slide.height / self.scale + 1e-9))
        self.level = self._exact_level()
        self.tile_cache = tile_cache
        self._tiles: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()

    def _exact_level(self) -> int | None:
        """The large-image level z whose scale is the target scale, if any."""
        k = round(math.log2(self.scale)) if self.scale > 0 else -1
        levels = int(getattr(self.source, "levels", 0) or 0)
        if k < 0 or k >= levels or abs(self.scale - 2**k) > 1e-9 * self.scale:
            return None
        if not getattr(self.source, "tileWidth", 0) or not getattr(self.source, "tileHeight", 0):
            return None
        return levels - 1 - k

    def __call__(self, x: int, y: int, w: int, h: int) -> np.ndarray:
        inside = x >= 0 and y >= 0 and x + w <= self.width and y + h <= self.height
        if self.level is None or not inside or w <= 0 or h <= 0:
            return self._region(x, y, w, h)
        tw, th = int(self.source.tileWidth), int(self.source.tileHeight)
        out = np.empty((h, w, 3), np.uint8)
        for ty in range(y // th, (y + h - 1) // th + 1):
            for tx in range(x // tw, (x + w - 1) // tw + 1):
                tile = self._tile(tx, ty)
                # the part of this stored tile inside the region, in region coordinates
                y0, x0 = max(y, ty * th), max(x, tx * tw)
                y1, x1 = min(y + h, (ty + 1) * th), min(x + w, (tx + 1) * tw)
                if ty * th + tile.shape[0] < y1 or tx * tw + tile.shape[1] < x1:
                    return self._region(x, y, w, h)  # a short tile inside the region: ragged file
                out[y0 - y : y1 - y, x0 - x : x1 - x] = tile[
                    y0 - ty * th : y1 - ty * th, x0 - tx * tw : x1 - tx * tw
                ]
        return out

    def warm(
        self,
        regions: list[tuple[int, int, int, int]],
        ahead: Sequence[tuple[int, int, int, int]] = (),
    ) -> None:
        """When the (x, y, w, h) ``regions`` about to be read need stored tiles the LRU lacks,
        decode those and the ones the regions ``ahead`` will need, in parallel threads
        (libjpeg-turbo releases the GIL). The scan waits for its reads, so on two cores they take
        about half as long; decoding in chunks keeps both threads busy."""
        if self.level is None or self.native is None or not self.native.levels:
            return
        now = self._missing(regions)
        if not now:
            return
        keys = list({**now, **self._missing(ahead)})[: self.tile_cache // 2]
        decoded = _decode_pool().map(lambda k: self._decode_stored(*k), keys)
        for key, tile in zip(keys, decoded, strict=True):
            if tile is not None:
                self._tiles[key] = tile
        while len(self._tiles) > self.tile_cache:
            self._tiles.popitem(last=False)

    def _missing(self, regions: Sequence[tuple[int, int, int, int]]) -> dict[tuple[int, int], None]:
        """The stored tiles (tx, ty) that ``regions`` overlap and the LRU lacks, in order."""
        tw, th = int(self.source.tileWidth), int(self.source.tileHeight)
        wanted: dict[tuple[int, int], None] = {}
        for x, y, w, h in regions:
            if w <= 0 or h <= 0 or x < 0 or y < 0:
                continue
            for ty in range(y // th, (y + h - 1) // th + 1):
                for tx in range(x // tw, (x + w - 1) // tw + 1):
                    if (tx, ty) not in self._tiles:
                        wanted[(tx, ty)] = None
        return wanted

    def _tile(self, tx: int, ty: int) -> np.ndarray:
        key = (tx, ty)
        tile = self._tiles.get(key)
        if tile is not None:
            self._tiles.move_to_end(key)
            return tile
        tile = self._decode_stored(tx, ty)
        if tile is None:
            tile = _rgb_uint8(self.source.getTile(tx, ty, self.level, numpyAllowed="always"))
        self._tiles[key] = tile
        while len(self._tiles) > self.tile_cache:
            self._tiles.popitem(last=False)
        return tile

    def _decode_stored(self, tx: int, ty: int) -> np.ndarray | None:
        """An interior tile of a tiled TIFF, decoded from its stored JPEG by libjpeg-turbo
        (imagecodecs: ~2x large-image's path through PIL, same pixels); None where the stored
        tile is not a whole JPEG tile of this level (large-image reads it then)."""
        data = self.native.get(self.level, tx, ty) if self.native is not None else None
        if data is None:
            return None
        import imagecodecs

        try:
            tile = imagecodecs.jpeg8_decode(data)
        except Exception:  # noqa: BLE001 - anything libjpeg refuses: large-image decides
            return None
        if tile.ndim != 3 or tile.shape[2] != 3:
            return None
        return tile

    def _region(self, x: int, y: int, w: int, h: int) -> np.ndarray:
        from large_image.constants import TILE_FORMAT_NUMPY

        region = {
            "left": x * self.scale,
            "top": y * self.scale,
            "width": w * self.scale,
            "height": h * self.scale,
            "units": "base_pixels",
        }
        kw: dict[str, Any] = {}
        if abs(self.scale - 1.0) > 1e-9:
            kw["scale"] = {"mm_x": self.target_mpp / 1000, "mm_y": self.target_mpp / 1000}
        pixels, _ = self.source.getRegion(region=region, format=TILE_FORMAT_NUMPY, **kw)
        pixels = _rgb_uint8(pixels)
        if pixels.shape[:2] != (h, w):  # rounding at the resize: crop, or repeat the last row/col
            pixels = pixels[:h, :w]
            pad = ((0, h - pixels.shape[0]), (0, w - pixels.shape[1]), (0, 0))
            pixels = (
                np.pad(pixels, pad, mode="edge") if pixels.size else np.zeros((h, w, 3), np.uint8)
            )
        return pixels


_DECODE_POOL: ThreadPoolExecutor | None = None


def _decode_pool() -> ThreadPoolExecutor:
    """Threads that decode stored tiles for :meth:`SlideReader.warm`, one per core (at most 16:
    on a GPU worker the cores have nothing else to do while the GPU runs the model; on a CPU
    worker the scan waits for its reads, so the model never competes with them)."""
    global _DECODE_POOL  # noqa: PLW0603 - one pool per process, made on first use
    if _DECODE_POOL is None:
        workers = max(1, min(16, os.cpu_count() or 1))
        _DECODE_POOL = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="tile-decode")
    return _DECODE_POOL


def _rgb_uint8(pixels: Any) -> np.ndarray:
    """(H, W, 3) uint8 of what a tile source returned (grey, grey + alpha, RGBA, 16-bit)."""
    pixels = np.asarray(pixels)
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    if pixels.shape[-1] < 3:  # grey (+ alpha): the grey channel three times
        pixels = np.repeat(pixels[..., :1], 3, axis=-1)
    pixels = pixels[..., :3]
    if pixels.dtype != np.uint8:
        pixels = np.clip(pixels, 0, 255).astype(np.uint8)
    return pixels


def geometry_for(version: ModelVersion, *, stride: int | None = None) -> ScanGeometry:
    """The grid a model was trained for: its patch size, its dataset's mpp (1.0 µm/px when not
    recorded), and seed 002's stride of a quarter window unless given."""
    config = (version.hyperparameters or {}).get("model_kwargs") or {}
    grid = (version.dataset_summary or {}).get("grid") or {}
    window = int(grid.get("patch_px") or config.get("input_size") or 0)
    if not window:
        window = int(getattr(Classifier.from_version(version).model, "input_size", None) or 40)
    target_mpp = float(grid.get("target_mpp") or 1.0)
    return ScanGeometry(window=window, stride=stride or max(1, window // 4), target_mpp=target_mpp)


def scan_slide(
    slide: Slide,
    *,
    primary: Classifier,
    secondary: Classifier | None = None,
    geometry: ScanGeometry = ScanGeometry(),
    tissue: np.ndarray | None = None,
    **kw: Any,
) -> ScanResult:
    """Scan a registered slide. Tissue comes from its cached thumbnail mask
    (:func:`annotations.tissue.tissue_mask`) unless ``tissue`` (a boolean mask covering the whole
    slide, any resolution) is given."""
    reader = SlideReader(slide, target_mpp=geometry.target_mpp)
    if tissue is None:
        from annotations.tissue import tissue_mask

        tissue = tissue_mask(slide).mask
    cells = cells_from_mask(
        tissue,
        level0_width=slide.width,
        level0_height=slide.height,
        cell_px=geometry.stride * reader.scale,
        rows=geometry.cells_along(reader.height),
        cols=geometry.cells_along(reader.width),
    )
    return scan(
        reader,
        width=reader.width,
        height=reader.height,
        primary=primary,
        secondary=secondary,
        geometry=geometry,
        tissue_cells=cells,
        scale=reader.scale,
        **kw,
    )
