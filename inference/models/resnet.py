"""A configurable ResNet (He et al. 2016): ResNet-18 and a small variant with BasicBlocks,
ResNet-50 with Bottleneck blocks.

``resnet18`` is torchvision's layout (7x7 stride-2 stem, max pool, stages of 64/128/256/512 with
2 blocks each), so ImageNet weights saved from torchvision's ``resnet18`` load through
:func:`load_torchvision_state_dict`. ``resnet-small`` is meant for small patches trained from
scratch: a 3x3 stem, no max pool, widths 32/64/128/256. ``resnet50`` (seed 003's best network)
stacks 3-4-6-3 Bottleneck blocks (1x1 reduce, 3x3 with the stage's stride as torchvision's
"v1.5", 1x1 expand by 4) on the same stem, so torchvision's ``resnet50`` weights load too
(25.6 M parameters with 1000 classes). ``width_mult`` scales every width (narrow nets for tests).

Stride-2 places, in order: the stem conv, the max pool (ImageNet stem only), then the first block
of every stage after the first. ``output_stride`` keeps the first ``log2(output_stride)`` of them
(default chosen from ``input_size`` as in :mod:`inference.models.mobilenetv2`: 40 px -> 8).
``padding="valid"`` removes all zero padding for dense scanning; shortcuts are cropped by a fixed
offset (1 + stride) // stride so the net stays translation-equivariant.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

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
    pad_for,
    stride_plan,
)
from .weights import load_torchvision_state_dict

__all__ = ["BasicBlock", "Bottleneck", "ResNet", "load_torchvision_state_dict"]

Stem = Literal["imagenet", "small"]
Block = Literal["basic", "bottleneck"]


class BasicBlock(nn.Module):
    """Two 3x3 conv + BN layers with a shortcut (1x1 conv + BN when the shape changes)."""

    def __init__(
        self, in_channels: int, out_channels: int, *, stride: int, padding: Padding = "same"
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(
            in_channels, out_channels, 3, stride=stride, padding=pad_for(3, padding), bias=False
        )
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(
            out_channels, out_channels, 3, padding=pad_for(3, padding), bias=False
        )
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )
        # valid padding: conv1 shifts by 1 input pixel, conv2 by `stride`; in output pixels
        self.crop = (1 + stride) // stride if padding == "valid" else 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + crop_to(identity, out, self.crop))


class Bottleneck(nn.Module):
    """1x1 reduce -> 3x3 (carries the stride) -> 1x1 expand by ``expansion``, each with BN, and a
    shortcut (1x1 conv + BN when the shape changes). ``width`` is the inner width; the block puts
    out ``width * expansion`` channels."""

    expansion = 4

    def __init__(
        self, in_channels: int, width: int, *, stride: int, padding: Padding = "same"
    ) -> None:
        super().__init__()
        out_channels = width * self.expansion
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(
            width, width, 3, stride=stride, padding=pad_for(3, padding), bias=False
        )
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )
        # valid padding: only the 3x3 shifts, by 1 input pixel; in output pixels that is 1 at
        # stride 1 and (rounded down) 0 at stride 2
        self.crop = 1 // stride if padding == "valid" else 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + crop_to(identity, out, self.crop))


class ResNet(PatchClassifier):
    """ResNet with BasicBlocks or Bottleneck blocks.

    Args (keyword-only):
        num_classes: outputs of the final linear layer.
        blocks: blocks per stage (ResNet-18: 2, 2, 2, 2).
        widths: channels per stage (ResNet-18: 64, 128, 256, 512); for Bottleneck blocks the
            inner width (a stage puts out 4 times as many).
        block: ``"basic"`` (two 3x3 convs) or ``"bottleneck"`` (1x1, 3x3, 1x1 by 4).
        width_mult: scales ``widths`` and ``stem_channels`` (rounded to multiples of 8, at
            least 8); 1.0 is the published net.
        stem: ``"imagenet"`` (7x7 stride 2 + 3x3 max pool) or ``"small"`` (3x3 conv).
        stem_channels: defaults to ``widths[0]``.
        input_size, output_stride, padding: as for :class:`~inference.models.mobilenetv2.MobileNetV2`.
        dropout: before the classifier (torchvision's ResNet has none: 0).
        zero_init_residual: start every block's residual branch at zero (last BN scale = 0), as
            torchvision's option of that name; helps training from scratch.
    """

    name = "resnet"

    def __init__(
        self,
        *,
        num_classes: int = 2,
        blocks: Sequence[int] = (2, 2, 2, 2),
        widths: Sequence[int] = (64, 128, 256, 512),
        stem: Stem = "imagenet",
        stem_channels: int | None = None,
        input_size: int | None = None,
        output_stride: int | None = None,
        padding: Padding = "same",
        dropout: float = 0.0,
        in_channels: int = 3,
        zero_init_residual: bool = False,
        block: Block = "basic",
        width_mult: float = 1.0,
    ) -> None:
        super().__init__()
        padding = check_padding(padding)
        blocks, widths = [int(b) for b in blocks], [int(w) for w in widths]
        if len(blocks) != len(widths) or not blocks:
            raise ValueError("blocks and widths need one entry per stage")
        if stem not in ("imagenet", "small"):
            raise ValueError(f"stem must be 'imagenet' or 'small', not {stem!r}")
        if block not in ("basic", "bottleneck"):
            raise ValueError(f"block must be 'basic' or 'bottleneck', not {block!r}")
        if width_mult <= 0:
            raise ValueError(f"width_mult must be positive, not {width_mult}")
        stem_channels = stem_channels or widths[0]
        n_sites = (2 if stem == "imagenet" else 1) + len(blocks) - 1
        if output_stride is None:
            output_stride = default_output_stride(input_size, max_stride=2**n_sites)
        plan = iter(stride_plan(n_sites, output_stride))
        self.config = {
            "num_classes": num_classes,
            "blocks": blocks,
            "widths": widths,
            "stem": stem,
            "stem_channels": stem_channels,
            "input_size": input_size,
            "output_stride": output_stride,
            "padding": padding,
            "dropout": dropout,
            "in_channels": in_channels,
            "zero_init_residual": zero_init_residual,
            "block": block,
            "width_mult": width_mult,
        }
        if width_mult != 1.0:
            widths = [make_divisible(w * width_mult) for w in widths]
            stem_channels = make_divisible(stem_channels * width_mult)
        unit: type[BasicBlock] | type[Bottleneck] = (
            Bottleneck if block == "bottleneck" else BasicBlock
        )
        expansion = Bottleneck.expansion if block == "bottleneck" else 1
        self.padding = padding
        self.output_stride = output_stride
        self.input_size = input_size
        self.in_channels = in_channels

        kernel = 7 if stem == "imagenet" else 3
        self.stem = ConvBNAct(
            in_channels,
            stem_channels,
            kernel_size=kernel,
            stride=next(plan),
            padding=padding,
            activation=nn.ReLU,
        )
        self.pool: nn.Module = nn.Identity()
        if stem == "imagenet":
            pool_stride = next(plan)
            self.pool = nn.MaxPool2d(3, stride=pool_stride, padding=pad_for(3, padding))
        stages: list[nn.Module] = []
        channels = stem_channels
        for s, (n, width) in enumerate(zip(blocks, widths, strict=True)):
            stride = next(plan) if s > 0 else 1
            out = width * expansion
            layer = [unit(channels, width, stride=stride, padding=padding)]
            layer += [unit(out, width, stride=1, padding=padding) for _ in range(n - 1)]
            stages.append(nn.Sequential(*layer))
            channels = out
        self.stages = nn.Sequential(*stages)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(channels, num_classes)
        self.init_weights()
        if zero_init_residual:
            for module in self.modules():
                if isinstance(module, BasicBlock):
                    nn.init.zeros_(module.bn2.weight)
                elif isinstance(module, Bottleneck):
                    nn.init.zeros_(module.bn3.weight)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.pool(self.stem(x)))

    def torchvision_key_map(self) -> dict[str, str]:
        """Ours -> torchvision: ``stem.conv``/``stem.bn`` are ``conv1``/``bn1``, ``stages.{s}`` is
        ``layer{s+1}``, ``fc`` is ``fc``."""
        mapping: dict[str, str] = {}
        for key in self.state_dict():
            if key.startswith("stem.conv."):
                mapping[key] = "conv1." + key[len("stem.conv.") :]
            elif key.startswith("stem.bn."):
                mapping[key] = "bn1." + key[len("stem.bn.") :]
            elif key.startswith("stages."):
                stage, rest = key[len("stages.") :].split(".", 1)
                mapping[key] = f"layer{int(stage) + 1}.{rest}"
            else:
                mapping[key] = key
        return mapping
