"""Class activation maps of a whole-image classifier on one image, in plain PyTorch (no Django:
:mod:`inference.cam` keeps the records and requests, and experiments run this on any machine).

``"cam"`` (Zhou et al. 2016) weighs the last feature maps by the linear layer's weights of the
chosen class; ``"grad-cam"`` (Selvaraju et al. 2017) by the per-channel mean of the class score's
gradients; both ReLU, upsampled to the image with each feature cell on the pixel it is centred on
(:func:`upsample`), normalised to 0..1. See :mod:`inference.cam` for what they show and why.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from PIL import Image

    from .models.layers import PatchClassifier

METHODS: tuple[str, ...] = ("cam", "grad-cam")


# ---- the map ---------------------------------------------------------------------------------


@dataclass
class ClassActivationMap:
    """A class activation map over one image."""

    values: np.ndarray  # (H, W) float32 in [0, 1], at the image's size
    method: str
    class_index: int
    probability: float  # softmax probability of ``class_index``
    raw_max: float  # the map's maximum before normalisation (at feature resolution)
    feature_size: tuple[int, int]  # (h, w) of the last feature maps

    @property
    def peak(self) -> tuple[int, int]:
        """(row, col) of the map's maximum."""
        r, c = np.unravel_index(int(np.argmax(self.values)), self.values.shape)
        return int(r), int(c)


def class_activation_map(
    model: PatchClassifier,
    x: torch.Tensor,
    *,
    class_index: int,
    method: str = "cam",
    output_size: tuple[int, int] | None = None,
    contrast: bool = False,
) -> ClassActivationMap:
    """The ``method`` map of ``class_index`` for one normalised input ``x`` (1, C, h, w), upsampled
    to ``output_size`` (H, W; default the input's). The model is put in eval mode.

    The class score is the class's logit (Zhou et al.: CAM weighs the feature maps by the
    class's own weights ``w_c``; Grad-CAM differentiates that logit). With ``contrast`` it is the
    logit minus the mean of the other classes' logits (for two classes the log-odds, which alone
    sets the softmax probability; CAM then weighs by ``w_c - mean_k w_k``), removing what all
    classes share. On the 48 px test nets neither placed peaks on the focus more often across
    architectures (ResNet-50 0.92 vs 0.75 of peaks within 4 px, ResNet-18 0.58 vs 0.75), so the
    published form is the default."""
    import torch
    import torch.nn.functional as F

    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}: choose {' or '.join(map(repr, METHODS))}")
    if x.ndim != 4 or x.shape[0] != 1:
        raise ValueError(f"one image at a time: x must be (1, C, h, w), not {tuple(x.shape)}")
    if not 0 <= class_index < model.fc.out_features:
        raise ValueError(f"class {class_index} outside the model's {model.fc.out_features} outputs")
    model.eval()
    x = x.to(next(model.parameters()).device, torch.float32)
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)  # a graph even where the weights are frozen
        activations = model.forward_features(x)
        pooled = F.adaptive_avg_pool2d(activations, 1).flatten(1)
        logits = model.fc(model.dropout(pooled))
        n_classes = logits.shape[1]
        score = logits[0, class_index]
        if contrast and n_classes > 1:
            score = score - (logits[0].sum() - score) / (n_classes - 1)
        if method == "grad-cam":
            (gradients,) = torch.autograd.grad(score, activations)
    with torch.no_grad():
        if method == "cam":
            w = model.fc.weight
            weights = w[class_index]
            if contrast and n_classes > 1:
                weights = weights - (w.sum(0) - weights) / (n_classes - 1)
            weights = weights.view(1, -1, 1, 1).to(activations.dtype)
        else:
            weights = gradients.mean(dim=(2, 3), keepdim=True)
        cam = F.relu((weights * activations).sum(dim=1, keepdim=True)).float()
        raw_max = float(cam.max())
        size = output_size or tuple(x.shape[-2:])
        cam = upsample(cam, input_size=tuple(x.shape[-2:]), output_size=size, model=model)
        top = float(cam.max())  # after upsampling, so that the image's map spans 0..1
        cam = cam / top if top > 0 else torch.zeros_like(cam)
        probability = float(torch.softmax(logits.float(), dim=1)[0, class_index])
    values = cam[0, 0].clamp_(0.0, 1.0).cpu().numpy().astype(np.float32)
    return ClassActivationMap(
        values=values,
        method=method,
        class_index=class_index,
        probability=probability,
        raw_max=raw_max,
        feature_size=(int(activations.shape[-2]), int(activations.shape[-1])),
    )


def feature_centres(model: PatchClassifier, n: int, input_px: int) -> tuple[float, float]:
    """(first, step): feature cell ``i`` of ``n`` over ``input_px`` model-input pixels is centred on
    pixel ``first + step * i``. With "same" padding (odd kernels padded by (k - 1) // 2, as every
    registry net pads) a stride-2 layer's output ``i`` is centred on its input ``2 i``, so cell
    ``i`` sits on pixel ``S i`` for the total stride ``S``: a plain resize (which puts it on
    ``S i + (S - 1) / 2``) would shift the map by 3.5 px down and right at S = 8. Otherwise the
    cells are taken to tile the input evenly, as a resize assumes."""
    stride = getattr(model, "output_stride", None)
    if getattr(model, "padding", None) == "same" and stride and math.ceil(input_px / stride) == n:
        return 0.0, float(stride)
    step = input_px / n
    return (step - 1) / 2, step


def upsample(
    cam: torch.Tensor,
    *,
    input_size: tuple[int, int],
    output_size: tuple[int, int],
    model: PatchClassifier,
) -> torch.Tensor:
    """A (1, 1, h, w) map at feature resolution, bilinearly resampled to ``output_size`` pixels
    of the image that was resized to ``input_size`` for the model, each feature value placed on
    the pixel its cell is centred on (:func:`feature_centres`); beyond the outer centres the edge
    value is kept."""
    import torch
    import torch.nn.functional as F

    axes = []
    for n, input_px, out_px in zip(cam.shape[-2:], input_size, output_size, strict=True):
        first, step = feature_centres(model, int(n), int(input_px))
        q = torch.arange(out_px, dtype=torch.float32, device=cam.device)
        p = (q + 0.5) * (input_px / out_px) - 0.5  # model-input pixel of image pixel q
        u = (p - first) / step  # feature coordinate: cell i at u = i
        axes.append(2 * u / (n - 1) - 1 if n > 1 else torch.zeros_like(u))
    gy, gx = torch.meshgrid(axes[0], axes[1], indexing="ij")
    grid = torch.stack([gx, gy], dim=-1)[None].to(cam.dtype)
    return F.grid_sample(cam, grid, mode="bilinear", padding_mode="border", align_corners=True)


# ---- preprocessing ---------------------------------------------------------------------------


def as_rgb_array(image: Image.Image | np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 of an 8-bit image: grey repeated to three channels, alpha dropped."""
    pixels = np.asarray(image)
    if pixels.dtype != np.uint8:
        raise ValueError(f"an 8-bit image is needed, not {pixels.dtype}")
    if pixels.ndim == 2:
        pixels = np.repeat(pixels[..., None], 3, axis=2)
    elif pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = np.repeat(pixels, 3, axis=2)
    elif pixels.ndim != 3 or pixels.shape[2] < 3:
        raise ValueError(f"an image of shape {pixels.shape} is neither grey nor RGB")
    return np.ascontiguousarray(pixels[..., :3])


def model_input(
    image: Image.Image | np.ndarray,
    *,
    size: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
) -> torch.Tensor:
    """The (1, 3, size, size) float input of an 8-bit image exactly as the whole-image classifier
    saw it in training and sees it in :func:`inference.image_classifier.predict_images`: resized
    by ``to_model_input``, grey repeated to three channels, scaled to 0..1, normalised."""
    import torch

    from .augmentation import normalize, to_float
    from .image_classifier import to_model_input

    array = to_model_input(as_rgb_array(image), size)  # (3, size, size) uint8
    x = torch.from_numpy(np.ascontiguousarray(array))[None]
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    return normalize(to_float(x), mean=tuple(mean), std=tuple(std))


def image_map(
    model: PatchClassifier,
    image: Image.Image | np.ndarray,
    *,
    size: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    class_index: int,
    method: str = "cam",
) -> ClassActivationMap:
    """The map of a whole 8-bit image at its full resolution."""
    pixels = as_rgb_array(image)
    x = model_input(pixels, size=size, mean=mean, std=std)
    return class_activation_map(
        model, x, class_index=class_index, method=method, output_size=pixels.shape[:2]
    )
