"""Building blocks shared by the patch classifiers: conv + batch norm + activation, stride plans,
residual cropping for "valid" padding, and the common classifier base class.

Padding modes
-------------
``"same"``  torchvision's symmetric zero padding ``(k - 1) // 2``: the output of a stride-1 layer has
            the size of its input. Needed to reuse ImageNet weights at their usual depth, and the
            default.
``"valid"`` no padding at all. Every output pixel then depends only on input pixels inside the
            window, so running the network fully convolutionally over a large tile gives, at each
            window position that is a multiple of the total stride, exactly the features of that
            window classified on its own. Residual branches are centre-cropped by a fixed,
            structurally computed offset so the network stays translation-equivariant. This is what
            the dense scanner needs (see :meth:`PatchClassifier.window_logits`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

Padding = Literal["same", "valid"]
PADDING_MODES: tuple[str, ...] = ("same", "valid")


def check_padding(padding: str) -> Padding:
    """Return ``padding`` if it is a known mode, else raise with the choices."""
    if padding not in PADDING_MODES:
        raise ValueError(f"padding must be one of {PADDING_MODES}, not {padding!r}")
    return padding  # type: ignore[return-value]


def pad_for(kernel_size: int, padding: Padding) -> int:
    """Zero padding of a ``kernel_size`` convolution in ``padding`` mode."""
    return (kernel_size - 1) // 2 if padding == "same" else 0


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round a channel count to a multiple of ``divisor`` the way torchvision (and TF slim) do, so
    that widths match torchvision's for any width multiplier."""
    min_value = divisor if min_value is None else min_value
    new = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if new < 0.9 * value:
        new += divisor
    return new


def default_output_stride(
    input_size: int | None, *, max_stride: int, min_feature_size: int = 4
) -> int:
    """The largest power-of-two total stride (at most ``max_stride``) that still leaves a final
    feature map of at least ``min_feature_size`` pixels for an ``input_size`` patch.

    224 px -> 32 (7x7, the ImageNet layout); 96 px -> 16 (6x6); 40 px (seed 002) -> 8 (5x5);
    unknown size -> ``max_stride``.
    """
    if input_size is None:
        return max_stride
    stride = max_stride
    while stride > 1 and math.ceil(input_size / stride) < min_feature_size:
        stride //= 2
    return stride


def stride_plan(n_sites: int, output_stride: int) -> list[int]:
    """Strides for ``n_sites`` places that downsample by 2 in the ImageNet layout: the first
    ``log2(output_stride)`` keep stride 2, later ones become stride 1.

    Downsampling is dropped at the *end* of the network (as DeepLab's output stride does, without
    dilation): early layers stay cheap, and the last stages see more positions of a small patch.
    """
    if output_stride < 1 or output_stride & (output_stride - 1):
        raise ValueError(f"output_stride must be a power of two, not {output_stride}")
    n_two = int(math.log2(output_stride))
    if n_two > n_sites:
        raise ValueError(
            f"output_stride {output_stride} needs {n_two} stride-2 layers; this net has {n_sites}"
        )
    return [2] * n_two + [1] * (n_sites - n_two)


def crop_to(identity: torch.Tensor, like: torch.Tensor, offset: int) -> torch.Tensor:
    """Crop ``identity`` to the spatial size of ``like`` starting ``offset`` pixels in (valid
    padding); a no-op when the sizes already agree."""
    h, w = like.shape[-2:]
    if identity.shape[-2:] == (h, w):
        return identity
    cropped = identity[..., offset : offset + h, offset : offset + w]
    if cropped.shape[-2:] != (h, w):
        raise RuntimeError(
            f"residual crop failed: {tuple(identity.shape[-2:])} at offset {offset} "
            f"cannot give {(h, w)}; the input is too small for valid padding"
        )
    return cropped


class ConvBNAct(nn.Module):
    """Convolution (no bias) -> BatchNorm -> activation, with explicit stride and padding mode."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        kernel_size: int = 3,
        stride: int = 1,
        groups: int = 1,
        padding: Padding = "same",
        activation: type[nn.Module] | None = nn.ReLU6,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=pad_for(kernel_size, padding),
            groups=groups,
            bias=False,
        )
        self.bn = nn.BatchNorm2d(out_channels)
        self.act = activation(inplace=True) if activation is not None else nn.Identity()
        self.stride = stride
        self.kernel_size = kernel_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class PatchClassifier(nn.Module):
    """Base of the patch classifiers: ``forward_features`` -> global average pool -> dropout -> fc.

    Subclasses set ``name``, ``config`` (the keyword arguments that rebuild them through
    :func:`inference.models.build_model`), ``padding``, ``output_stride``, ``input_size``, and
    implement ``forward_features`` and ``torchvision_key_map``.

    Dense scanning (a later issue) needs, and this class provides:

    * ``padding="valid"`` so that no output depends on zeros outside the window;
    * ``output_stride`` (total stride S): window positions on a tile are multiples of S; a scoring
      stride that S does not divide (seed 002: 10 px) needs shift-and-stitch, i.e. one run per
      offset in ``{0, g, 2g, ...} < S`` with ``g = gcd(stride, S)``;
    * :meth:`feature_size` for the window, and :meth:`window_logits`, which runs the net once over
      a tile and returns one logit vector per window position; in valid mode it equals classifying
      each window on its own up to float rounding (tested).
    """

    name: str = ""
    config: dict
    in_channels: int
    padding: Padding
    output_stride: int
    input_size: int | None
    fc: nn.Linear
    dropout: nn.Module

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def torchvision_key_map(self) -> dict[str, str]:  # pragma: no cover - abstract
        """Our state-dict key -> the same tensor's key in torchvision's model."""
        raise NotImplementedError

    @property
    def num_classes(self) -> int:
        return self.fc.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_features(x)
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.fc(self.dropout(x))

    def feature_size(self, input_size: int | Sequence[int]) -> tuple[int, int]:
        """Spatial size of ``forward_features`` for an input of ``input_size`` pixels (a shape
        probe in eval mode; raises if the input is too small, e.g. for valid padding)."""
        h, w = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
        param = next(self.parameters())
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                probe = torch.zeros(
                    1, self.in_channels, h, w, dtype=param.dtype, device=param.device
                )
                out = self.forward_features(probe)
        except RuntimeError as exc:
            raise ValueError(
                f"a {h}x{w} input is too small for {self.name} with padding={self.padding!r}, "
                f"output_stride={self.output_stride}: {exc}"
            ) from exc
        finally:
            self.train(was_training)
        return int(out.shape[-2]), int(out.shape[-1])

    def window_logits(self, tile: torch.Tensor, *, window: int | None = None) -> torch.Tensor:
        """Logits of every ``window``-pixel window of ``tile`` at offsets that are multiples of
        ``output_stride``, from one fully convolutional run: shape (N, classes, rows, cols).

        Only defined for ``padding="valid"``; call ``eval()`` first (batch norm must use its running
        statistics for the result to match per-window classification).
        """
        if self.padding != "valid":
            raise ValueError(
                "window_logits needs padding='valid': with zero padding a window's features "
                "depend on where it sits, so a dense run cannot equal per-window classification"
            )
        window = window or self.input_size
        if window is None:
            raise ValueError("pass window= (the model was built without input_size)")
        fh, fw = self.feature_size(window)
        feats = self.forward_features(tile)
        pooled = F.avg_pool2d(feats, kernel_size=(fh, fw), stride=1)
        return torch.einsum("nchw,kc->nkhw", pooled, self.fc.weight) + self.fc.bias.view(
            1, -1, 1, 1
        )

    def init_weights(self) -> None:
        """torchvision's initialisation: Kaiming (fan-out) convs, unit BN, small-normal fc."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)
