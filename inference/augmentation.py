"""Patch augmentation in plain torch, applied to whole batches (on the GPU when training there).

Seed 002 multiplies the training set eightfold by rotations of 0/90/180/270 degrees and flips: the
dihedral group D4 of the square. Here each patch gets one of the 8 transforms at random every
epoch, which sees the same eight variants without storing them. Colour jitter (brightness,
contrast, saturation, hue, as torchvision's ``ColorJitter`` defines them) is the colour
augmentation the paper's discussion calls for; its strengths are ours, not the paper's. HED
jitter (Tellez et al. 2018) varies the amount of each stain instead: pixels go to optical density,
are unmixed into haematoxylin, eosin and DAB (Ruifrok and Johnston's vectors), each stain is scaled
by ``1 +- hed`` and shifted by ``+- hed_bias`` (optical density, natural log) per patch, and mixed
back; it draws random numbers only when on, so recipes without it draw what they always drew.

All randomness comes from an explicit CPU ``torch.Generator``, so a seeded run draws the same
transforms on CPU and CUDA.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Augmenter",
    "adjust_hue",
    "colour_jitter",
    "dihedral",
    "dihedral_inverse",
    "hed_jitter",
    "normalize",
    "random_dihedral",
    "to_float",
]

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
N_DIHEDRAL = 8


def dihedral(x: torch.Tensor, k: int) -> torch.Tensor:
    """Transform ``k`` (0-7) of the dihedral group on the last two axes: ``k % 4`` quarter turns
    anticlockwise, then a left-right flip when ``k >= 4``. ``k = 0`` is the identity."""
    if not 0 <= k < N_DIHEDRAL:
        raise ValueError(f"dihedral index must be 0-7, not {k}")
    y = torch.rot90(x, k % 4, dims=(-2, -1)) if k % 4 else x
    return torch.flip(y, dims=(-1,)) if k >= 4 else y


def dihedral_inverse(x: torch.Tensor, k: int) -> torch.Tensor:
    """Undo :func:`dihedral` ``k`` (for test-time augmentation of dense outputs)."""
    if not 0 <= k < N_DIHEDRAL:
        raise ValueError(f"dihedral index must be 0-7, not {k}")
    y = torch.flip(x, dims=(-1,)) if k >= 4 else x
    return torch.rot90(y, -(k % 4), dims=(-2, -1)) if k % 4 else y


def random_dihedral(
    batch: torch.Tensor, *, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Apply an independently drawn dihedral transform to every patch of (N, C, H, W) ``batch``."""
    if batch.shape[-1] != batch.shape[-2]:
        raise ValueError(
            f"dihedral augmentation needs square patches, got {tuple(batch.shape[-2:])}"
        )
    ks = torch.randint(0, N_DIHEDRAL, (batch.shape[0],), generator=generator).to(batch.device)
    out = batch.clone()
    for k in range(1, N_DIHEDRAL):
        sel = ks == k
        if bool(sel.any()):
            out[sel] = dihedral(batch[sel], k)
    return out


def to_float(batch: torch.Tensor) -> torch.Tensor:
    """uint8 0-255 -> float32 0-1 (floats pass through)."""
    return batch.float().div_(255.0) if batch.dtype == torch.uint8 else batch.float()


def normalize(
    batch: torch.Tensor,
    *,
    mean: tuple[float, ...] = IMAGENET_MEAN,
    std: tuple[float, ...] = IMAGENET_STD,
) -> torch.Tensor:
    """Per-channel ``(x - mean) / std`` on (N, C, H, W) floats in 0-1."""
    m = torch.tensor(mean, dtype=batch.dtype, device=batch.device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=batch.dtype, device=batch.device).view(1, -1, 1, 1)
    return (batch - m) / s


def _gray(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(dim=-3)
    return (0.299 * r + 0.587 * g + 0.114 * b).unsqueeze(-3)


def _rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(dim=-3)
    maxc, _ = x.max(dim=-3)
    minc, _ = x.min(dim=-3)
    delta = maxc - minc
    v = maxc
    s = torch.where(maxc > 0, delta / maxc.clamp_min(1e-12), torch.zeros_like(maxc))
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    rc, gc, bc = (maxc - r) / safe, (maxc - g) / safe, (maxc - b) / safe
    h = torch.where(maxc == r, bc - gc, torch.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    h = torch.where(delta > 0, (h / 6.0) % 1.0, torch.zeros_like(h))
    return torch.stack((h, s, v), dim=-3)


def _hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    h, s, v = x.unbind(dim=-3)
    i = torch.floor(h * 6.0)
    f = h * 6.0 - i
    i = i.to(torch.int64) % 6
    p, q, t = v * (1.0 - s), v * (1.0 - s * f), v * (1.0 - s * (1.0 - f))
    r = torch.stack((v, q, p, p, t, v), dim=-3).gather(-3, i.unsqueeze(-3)).squeeze(-3)
    g = torch.stack((t, v, v, q, p, p), dim=-3).gather(-3, i.unsqueeze(-3)).squeeze(-3)
    b = torch.stack((p, p, t, v, v, q), dim=-3).gather(-3, i.unsqueeze(-3)).squeeze(-3)
    return torch.stack((r, g, b), dim=-3)


def adjust_hue(batch: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate the hue of each (N, 3, H, W) patch by ``shift[n]`` turns (-0.5 ... 0.5)."""
    hsv = _rgb_to_hsv(batch)
    h = (hsv[:, 0] + shift.view(-1, 1, 1)) % 1.0
    return _hsv_to_rgb(torch.stack((h, hsv[:, 1], hsv[:, 2]), dim=1))


def _factors(n: int, strength: float, generator: torch.Generator | None) -> torch.Tensor:
    return 1.0 + (torch.rand(n, generator=generator) * 2.0 - 1.0) * strength


def colour_jitter(
    batch: torch.Tensor,
    *,
    brightness: float = 0.0,
    contrast: float = 0.0,
    saturation: float = 0.0,
    hue: float = 0.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Random brightness, contrast, saturation (factors in ``1 +- strength``) and hue (shift in
    ``+- hue`` turns) per patch of (N, 3, H, W) floats in 0-1; the result stays in 0-1.

    All factors are drawn every call (also for a strength of 0), so the random stream does not
    depend on which jitters are on.
    """
    if hue < 0 or hue > 0.5:
        raise ValueError("hue must be within 0-0.5")
    n, dev = batch.shape[0], batch.device
    fb = _factors(n, brightness, generator).to(dev).view(-1, 1, 1, 1)
    fc = _factors(n, contrast, generator).to(dev).view(-1, 1, 1, 1)
    fs = _factors(n, saturation, generator).to(dev).view(-1, 1, 1, 1)
    fh = ((torch.rand(n, generator=generator) * 2.0 - 1.0) * hue).to(dev)
    x = batch
    if brightness:
        x = (x * fb).clamp_(0.0, 1.0)
    if contrast:
        mean = _gray(x).mean(dim=(-3, -2, -1), keepdim=True)
        x = ((x - mean) * fc + mean).clamp_(0.0, 1.0)
    if saturation:
        gray = _gray(x)
        x = ((x - gray) * fs + gray).clamp_(0.0, 1.0)
    if hue:
        x = adjust_hue(x, fh).clamp_(0.0, 1.0)
    return x


# Ruifrok & Johnston's stain vectors (rows: haematoxylin, eosin, DAB), as scikit-image uses them
_RGB_FROM_HED = torch.tensor(
    [[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], dtype=torch.float64
)
_RGB_FROM_HED = _RGB_FROM_HED / _RGB_FROM_HED.norm(dim=1, keepdim=True)
_HED_FROM_RGB = torch.linalg.inv(_RGB_FROM_HED)
_OD_FLOOR = 1.0 / 255.0


def hed_jitter(
    batch: torch.Tensor,
    *,
    sigma: float,
    bias: float = 0.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Scale each stain of each (N, 3, H, W) patch (0-1 floats) by a factor in ``1 +- sigma``
    and shift it by ``+- bias`` optical density; the result stays in 0-1."""
    n, dev, dtype = batch.shape[0], batch.device, batch.dtype
    alpha = 1.0 + (torch.rand(n, 3, generator=generator) * 2.0 - 1.0) * sigma
    beta = (torch.rand(n, 3, generator=generator) * 2.0 - 1.0) * bias
    to_hed = _HED_FROM_RGB.to(dev, dtype)
    to_rgb = _RGB_FROM_HED.to(dev, dtype)
    od = -torch.log(batch.clamp(min=_OD_FLOOR))  # (N, 3, H, W)
    stains = torch.einsum("nchw,cs->nshw", od, to_hed)
    stains = stains * alpha.to(dev, dtype).view(n, 3, 1, 1) + beta.to(dev, dtype).view(n, 3, 1, 1)
    od = torch.einsum("nshw,sc->nchw", stains, to_rgb)
    return torch.exp(-od).clamp_(0.0, 1.0)


@dataclass(frozen=True)
class Augmenter:
    """The training augmentation: random dihedral transform, HED stain jitter (when on), then
    colour jitter, on 0-1 floats."""

    dihedral: bool = True
    brightness: float = 0.0
    contrast: float = 0.0
    saturation: float = 0.0
    hue: float = 0.0
    hed: float = 0.0
    hed_bias: float = 0.0

    def __call__(
        self, batch: torch.Tensor, *, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        x = random_dihedral(batch, generator=generator) if self.dihedral else batch
        if self.hed or self.hed_bias:
            x = hed_jitter(x, sigma=self.hed, bias=self.hed_bias, generator=generator)
        return colour_jitter(
            x,
            brightness=self.brightness,
            contrast=self.contrast,
            saturation=self.saturation,
            hue=self.hue,
            generator=generator,
        )
