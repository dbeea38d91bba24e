"""MobileNetV2 (Sandler et al. 2018) in plain PyTorch, the primary and secondary model of seed 002.

Inverted residual blocks (1x1 expansion by ``t``, 3x3 depthwise, linear 1x1 projection), ReLU6,
width multiplier, torchvision-compatible channel rounding, so ImageNet weights saved from
torchvision's ``mobilenet_v2`` load through :func:`load_torchvision_state_dict`.

Strides for small patches: the ImageNet layout downsamples 5 times (total stride 32), which turns
seed 002's 40x40 px patch into a 2x2 map after heavy zero padding. ``output_stride`` keeps only the
first ``log2(output_stride)`` stride-2 layers (stem first, then the stages in order); the default
is chosen from ``input_size`` so that the last feature map is at least 4 px: 224 px -> 32 (7x7),
96 px -> 16 (6x6), 40 px -> 8 (5x5). Strides do not change any weight shape, so pretrained
weights load whatever the stride plan.

``padding="valid"`` removes all zero padding (see :mod:`inference.models.layers`); a 40 px window
is then too small for the full 17-block depth, so a dense-scanning model needs a shorter
``inverted_residual_setting`` (``feature_size`` tells whether a window fits).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .layers import (
    ConvBNAct,
    Padding,
    PatchClassifier,
    check_padding,
    crop_to,
    default_output_stride,
    make_divisible,
    stride_plan,
)
from .weights import load_torchvision_state_dict

__all__ = [
    "DEFAULT_SETTING",
    "InvertedResidual",
    "MobileNetV2",
    "load_torchvision_state_dict",
]

#: (expansion t, channels c, repeats n, stride s) per stage, as in the paper and torchvision.
DEFAULT_SETTING: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


class InvertedResidual(nn.Module):
    """1x1 expand (skipped when t = 1) -> 3x3 depthwise (stride) -> 1x1 linear projection, with an
    identity shortcut when stride is 1 and the width is unchanged."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        stride: int,
        expand_ratio: int,
        padding: Padding = "same",
    ) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, not {stride}")
        hidden = int(round(in_channels * expand_ratio))
        self.stride = stride
        self.use_residual = stride == 1 and in_channels == out_channels
        self.expand = (
            ConvBNAct(in_channels, hidden, kernel_size=1, padding=padding)
            if expand_ratio != 1
            else None
        )
        self.depthwise = ConvBNAct(
            hidden, hidden, kernel_size=3, stride=stride, groups=hidden, padding=padding
        )
        self.project = nn.Conv2d(hidden, out_channels, 1, bias=False)
        self.project_bn = nn.BatchNorm2d(out_channels)
        # valid padding: the 3x3 depthwise conv eats one pixel on each side
        self.crop = 1 if padding == "valid" else 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x if self.expand is None else self.expand(x)
        out = self.project_bn(self.project(self.depthwise(out)))
        if self.use_residual:
            out = out + crop_to(x, out, self.crop)
        return out


class MobileNetV2(PatchClassifier):
    """MobileNetV2 patch classifier.

    Args (keyword-only):
        num_classes: outputs of the final linear layer (2 for tumour / non-tumour).
        width_mult: channel multiplier (0.35 ... 1.4); the 1280-wide head never shrinks below 1280,
            as in torchvision.
        input_size: patch size in pixels; only used to choose ``output_stride`` when not given and
            as the window of :meth:`window_logits`.
        output_stride: total downsampling (power of two, at most 32 with the default setting).
        padding: ``"same"`` (torchvision) or ``"valid"`` (dense scanning).
        inverted_residual_setting: (t, c, n, s) per stage; a stage with s = 2 is a place where
            ``output_stride`` may downsample.
        dropout: before the classifier (0.2 in torchvision).
        zero_init_residual: start every residual branch at zero (its last BN scale = 0), so each
            block begins as the identity; speeds up training from scratch (Goyal et al. 2017).
    """

    name = "mobilenetv2"

    def __init__(
        self,
        *,
        num_classes: int = 2,
        width_mult: float = 1.0,
        input_size: int | None = None,
        output_stride: int | None = None,
        padding: Padding = "same",
        inverted_residual_setting: Sequence[Sequence[int]] | None = None,
        round_nearest: int = 8,
        stem_channels: int = 32,
        last_channels: int = 1280,
        dropout: float = 0.2,
        in_channels: int = 3,
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        padding = check_padding(padding)
        setting = [
            tuple(int(v) for v in row) for row in (inverted_residual_setting or DEFAULT_SETTING)
        ]
        if not setting or any(len(row) != 4 for row in setting):
            raise ValueError("inverted_residual_setting needs rows of (t, c, n, s)")
        n_sites = 1 + sum(1 for _, _, _, s in setting if s == 2)
        if output_stride is None:
            output_stride = default_output_stride(input_size, max_stride=2**n_sites)
        plan = iter(stride_plan(n_sites, output_stride))

        self.config = {
            "num_classes": num_classes,
            "width_mult": width_mult,
            "input_size": input_size,
            "output_stride": output_stride,
            "padding": padding,
            "inverted_residual_setting": [list(row) for row in setting],
            "round_nearest": round_nearest,
            "stem_channels": stem_channels,
            "last_channels": last_channels,
            "dropout": dropout,
            "in_channels": in_channels,
            "zero_init_residual": zero_init_residual,
        }
        self.padding = padding
        self.output_stride = output_stride
        self.input_size = input_size
        self.in_channels = in_channels

        channels = make_divisible(stem_channels * width_mult, round_nearest)
        self.stem = ConvBNAct(
            in_channels, channels, kernel_size=3, stride=next(plan), padding=padding
        )
        blocks: list[nn.Module] = []
        for t, c, n, s in setting:
            out_channels = make_divisible(c * width_mult, round_nearest)
            for i in range(n):
                stride = next(plan) if (i == 0 and s == 2) else 1
                blocks.append(
                    InvertedResidual(
                        channels, out_channels, stride=stride, expand_ratio=t, padding=padding
                    )
                )
                channels = out_channels
        self.blocks = nn.Sequential(*blocks)
        head = make_divisible(last_channels * max(1.0, width_mult), round_nearest)
        self.head = ConvBNAct(channels, head, kernel_size=1, padding=padding)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(head, num_classes)
        self.init_weights()
        if zero_init_residual:
            for block in self.blocks:
                if block.use_residual:
                    nn.init.zeros_(block.project_bn.weight)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))

    def torchvision_key_map(self) -> dict[str, str]:
        """Ours -> torchvision: ``stem`` is ``features.0``, block i is ``features.{i+1}.conv``,
        ``head`` is ``features.{n+1}``, ``fc`` is ``classifier.1``."""
        prefixes: dict[str, str] = {"stem.conv.": "features.0.0.", "stem.bn.": "features.0.1."}
        for i, block in enumerate(self.blocks, start=1):
            assert isinstance(block, InvertedResidual)
            tv = f"features.{i}.conv."
            j = 0
            if block.expand is not None:
                prefixes[f"blocks.{i - 1}.expand.conv."] = f"{tv}0.0."
                prefixes[f"blocks.{i - 1}.expand.bn."] = f"{tv}0.1."
                j = 1
            prefixes[f"blocks.{i - 1}.depthwise.conv."] = f"{tv}{j}.0."
            prefixes[f"blocks.{i - 1}.depthwise.bn."] = f"{tv}{j}.1."
            prefixes[f"blocks.{i - 1}.project."] = f"{tv}{j + 1}."
            prefixes[f"blocks.{i - 1}.project_bn."] = f"{tv}{j + 2}."
        last = len(self.blocks) + 1
        prefixes["head.conv."] = f"features.{last}.0."
        prefixes["head.bn."] = f"features.{last}.1."
        prefixes["fc."] = "classifier.1."
        mapping: dict[str, str] = {}
        for key in self.state_dict():
            for ours, theirs in prefixes.items():
                if key.startswith(ours):
                    mapping[key] = theirs + key[len(ours) :]
                    break
            else:  # pragma: no cover - every parameter is covered above
                raise KeyError(f"no torchvision name for {key}")
        return mapping
