"""An Inception-v3-style network (Szegedy et al. 2016) in plain PyTorch, seed 004's best model.

torchvision's layout and tensor names: a stem of 3x3 convolutions and two max pools; three
Inception-A blocks (1x1, 5x5, double 3x3 and pooled branches at 35x35); grid reduction B; four
Inception-C blocks whose 7x7 convolutions are factorised into 1x7 and 7x1; grid reduction D; two
Inception-E blocks with the 3x3s split into parallel 1x3 and 3x1; global average pooling,
dropout 0.5, linear. 23.8 M parameters at width 1 with 1000 classes, 299 px input by default.
ImageNet weights saved from torchvision's ``inception_v3`` load through
:func:`load_torchvision_state_dict` (the auxiliary head, which this net omits, is reported as
unexpected). Those weights were trained on inputs scaled to -1..1: ``transform_input=True`` turns
our ImageNet mean/std normalised input into that scale first, as torchvision's option of that name
does (off by default, for training from scratch).

Differences from torchvision, for small inputs:

* every convolution and pool is zero-padded ("same"), so a 299 px image gives a 10x10 final map
  (torchvision: 8x8) and small patches still fit;
* the five stride-2 places (first stem conv, both stem pools, both grid reductions) follow the
  ``output_stride`` plan of :mod:`inference.models.layers`: a 96 px patch keeps a 6x6 map.

``padding="valid"`` is refused: the parallel branches would need per-branch crops to line up.
``width_mult`` scales every width (rounded to multiples of 8, at least 8) for narrow test nets.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layers import (
    Padding,
    PatchClassifier,
    check_padding,
    default_output_stride,
    make_divisible,
    stride_plan,
)

__all__ = ["InceptionV3"]

BN_EPS = 1e-3  # torchvision's Inception uses 0.001


class BasicConv2d(nn.Module):
    """Conv (no bias, "same" padding, rectangular kernels allowed) -> BN -> ReLU."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        *,
        stride: int = 1,
    ) -> None:
        super().__init__()
        kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
        self.conv = nn.Conv2d(
            in_channels,
            out_channels,
            (kh, kw),
            stride=stride,
            padding=((kh - 1) // 2, (kw - 1) // 2),
            bias=False,
        )
        self.bn = nn.BatchNorm2d(out_channels, eps=BN_EPS)
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)), inplace=True)


def _pool(x: torch.Tensor) -> torch.Tensor:
    """The 3x3 average pool of the pooled branches (stride 1, padded, zeros counted as torchvision)."""
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1)


class InceptionA(nn.Module):
    """35x35 block: 1x1 | 1x1 -> 5x5 | 1x1 -> 3x3 -> 3x3 | avg pool -> 1x1."""

    def __init__(self, in_channels: int, pool_features: int, ch) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(in_channels, ch(64), 1)
        self.branch5x5_1 = BasicConv2d(in_channels, ch(48), 1)
        self.branch5x5_2 = BasicConv2d(ch(48), ch(64), 5)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, ch(64), 1)
        self.branch3x3dbl_2 = BasicConv2d(ch(64), ch(96), 3)
        self.branch3x3dbl_3 = BasicConv2d(ch(96), ch(96), 3)
        self.branch_pool = BasicConv2d(in_channels, ch(pool_features), 1)
        self.out_channels = ch(64) + ch(64) + ch(96) + ch(pool_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b1 = self.branch1x1(x)
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = self.branch_pool(_pool(x))
        return torch.cat([b1, b5, b3, bp], 1)


class InceptionB(nn.Module):
    """Grid reduction 35 -> 17: 3x3 (stride) | 1x1 -> 3x3 -> 3x3 (stride) | max pool (stride)."""

    def __init__(self, in_channels: int, ch, *, stride: int) -> None:
        super().__init__()
        self.branch3x3 = BasicConv2d(in_channels, ch(384), 3, stride=stride)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, ch(64), 1)
        self.branch3x3dbl_2 = BasicConv2d(ch(64), ch(96), 3)
        self.branch3x3dbl_3 = BasicConv2d(ch(96), ch(96), 3, stride=stride)
        self.stride = stride
        self.out_channels = ch(384) + ch(96) + in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3(x)
        bd = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = F.max_pool2d(x, kernel_size=3, stride=self.stride, padding=1)
        return torch.cat([b3, bd, bp], 1)


class InceptionC(nn.Module):
    """17x17 block with factorised 7x7s: 1x1 | 1x1 -> 1x7 -> 7x1 | 1x1 -> (7x1 -> 1x7) x 2 |
    avg pool -> 1x1."""

    def __init__(self, in_channels: int, channels_7x7: int, ch) -> None:
        super().__init__()
        c7 = ch(channels_7x7)
        self.branch1x1 = BasicConv2d(in_channels, ch(192), 1)
        self.branch7x7_1 = BasicConv2d(in_channels, c7, 1)
        self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7))
        self.branch7x7_3 = BasicConv2d(c7, ch(192), (7, 1))
        self.branch7x7dbl_1 = BasicConv2d(in_channels, c7, 1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1))
        self.branch7x7dbl_5 = BasicConv2d(c7, ch(192), (1, 7))
        self.branch_pool = BasicConv2d(in_channels, ch(192), 1)
        self.out_channels = 4 * ch(192)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b1 = self.branch1x1(x)
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        bd = self.branch7x7dbl_1(x)
        for layer in (
            self.branch7x7dbl_2,
            self.branch7x7dbl_3,
            self.branch7x7dbl_4,
            self.branch7x7dbl_5,
        ):
            bd = layer(bd)
        bp = self.branch_pool(_pool(x))
        return torch.cat([b1, b7, bd, bp], 1)


class InceptionD(nn.Module):
    """Grid reduction 17 -> 8: 1x1 -> 3x3 (stride) | 1x1 -> 1x7 -> 7x1 -> 3x3 (stride) |
    max pool (stride)."""

    def __init__(self, in_channels: int, ch, *, stride: int) -> None:
        super().__init__()
        self.branch3x3_1 = BasicConv2d(in_channels, ch(192), 1)
        self.branch3x3_2 = BasicConv2d(ch(192), ch(320), 3, stride=stride)
        self.branch7x7x3_1 = BasicConv2d(in_channels, ch(192), 1)
        self.branch7x7x3_2 = BasicConv2d(ch(192), ch(192), (1, 7))
        self.branch7x7x3_3 = BasicConv2d(ch(192), ch(192), (7, 1))
        self.branch7x7x3_4 = BasicConv2d(ch(192), ch(192), 3, stride=stride)
        self.stride = stride
        self.out_channels = ch(320) + ch(192) + in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_1(x)
        for layer in (self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
            b7 = layer(b7)
        bp = F.max_pool2d(x, kernel_size=3, stride=self.stride, padding=1)
        return torch.cat([b3, b7, bp], 1)


class InceptionE(nn.Module):
    """8x8 block with expanded filter banks: 1x1 | 1x1 -> (1x3, 3x1) | 1x1 -> 3x3 -> (1x3, 3x1)
    | avg pool -> 1x1."""

    def __init__(self, in_channels: int, ch) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(in_channels, ch(320), 1)
        self.branch3x3_1 = BasicConv2d(in_channels, ch(384), 1)
        self.branch3x3_2a = BasicConv2d(ch(384), ch(384), (1, 3))
        self.branch3x3_2b = BasicConv2d(ch(384), ch(384), (3, 1))
        self.branch3x3dbl_1 = BasicConv2d(in_channels, ch(448), 1)
        self.branch3x3dbl_2 = BasicConv2d(ch(448), ch(384), 3)
        self.branch3x3dbl_3a = BasicConv2d(ch(384), ch(384), (1, 3))
        self.branch3x3dbl_3b = BasicConv2d(ch(384), ch(384), (3, 1))
        self.branch_pool = BasicConv2d(in_channels, ch(192), 1)
        self.out_channels = ch(320) + 4 * ch(384) + ch(192)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b1 = self.branch1x1(x)
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        bd = torch.cat([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], 1)
        bp = self.branch_pool(_pool(x))
        return torch.cat([b1, b3, bd, bp], 1)


class InceptionV3(PatchClassifier):
    """Inception-v3 without the auxiliary head (see the module docstring).

    Args (keyword-only):
        num_classes: outputs of the final linear layer.
        width_mult: scales every width; 1.0 is the published net.
        input_size: the image size it is trained at (default 299); picks the default
            ``output_stride``.
        output_stride: total stride, a power of two up to 32.
        padding: ``"same"`` only.
        dropout: before the classifier (0.5 as published).
        transform_input: rescale ImageNet-normalised input to -1..1 (for torchvision's weights).
    """

    name = "inception-v3"

    def __init__(
        self,
        *,
        num_classes: int = 2,
        width_mult: float = 1.0,
        input_size: int | None = 299,
        output_stride: int | None = None,
        padding: Padding = "same",
        dropout: float = 0.5,
        in_channels: int = 3,
        transform_input: bool = False,
    ) -> None:
        super().__init__()
        if check_padding(padding) != "same":
            raise ValueError(
                "inception-v3 supports padding='same' only: with valid padding its parallel "
                "branches would need separate crops to line up"
            )
        if width_mult <= 0:
            raise ValueError(f"width_mult must be positive, not {width_mult}")
        if output_stride is None:
            output_stride = default_output_stride(input_size, max_stride=32)
        s_conv, s_pool1, s_pool2, s_red1, s_red2 = stride_plan(5, output_stride)
        self.config = {
            "num_classes": num_classes,
            "width_mult": width_mult,
            "input_size": input_size,
            "output_stride": output_stride,
            "padding": padding,
            "dropout": dropout,
            "in_channels": in_channels,
            "transform_input": transform_input,
        }
        self.padding = padding
        self.output_stride = output_stride
        self.input_size = input_size
        self.in_channels = in_channels
        self.pool_strides = (s_pool1, s_pool2)
        self.transform_input = transform_input
        if transform_input and in_channels != 3:
            raise ValueError("transform_input needs three input channels")

        def ch(c: int) -> int:
            return c if width_mult == 1.0 else make_divisible(c * width_mult)

        self.Conv2d_1a_3x3 = BasicConv2d(in_channels, ch(32), 3, stride=s_conv)
        self.Conv2d_2a_3x3 = BasicConv2d(ch(32), ch(32), 3)
        self.Conv2d_2b_3x3 = BasicConv2d(ch(32), ch(64), 3)
        self.Conv2d_3b_1x1 = BasicConv2d(ch(64), ch(80), 1)
        self.Conv2d_4a_3x3 = BasicConv2d(ch(80), ch(192), 3)
        self.Mixed_5b = InceptionA(ch(192), 32, ch)
        self.Mixed_5c = InceptionA(self.Mixed_5b.out_channels, 64, ch)
        self.Mixed_5d = InceptionA(self.Mixed_5c.out_channels, 64, ch)
        self.Mixed_6a = InceptionB(self.Mixed_5d.out_channels, ch, stride=s_red1)
        self.Mixed_6b = InceptionC(self.Mixed_6a.out_channels, 128, ch)
        self.Mixed_6c = InceptionC(self.Mixed_6b.out_channels, 160, ch)
        self.Mixed_6d = InceptionC(self.Mixed_6c.out_channels, 160, ch)
        self.Mixed_6e = InceptionC(self.Mixed_6d.out_channels, 192, ch)
        self.Mixed_7a = InceptionD(self.Mixed_6e.out_channels, ch, stride=s_red2)
        self.Mixed_7b = InceptionE(self.Mixed_7a.out_channels, ch)
        self.Mixed_7c = InceptionE(self.Mixed_7b.out_channels, ch)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(self.Mixed_7c.out_channels, num_classes)
        self.init_weights()

    def _transform_input(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet mean/std normalised -> (pixel - 0.5) / 0.5, channel by channel."""
        from ..augmentation import IMAGENET_MEAN, IMAGENET_STD

        mean = torch.tensor(IMAGENET_MEAN, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        return (x * std + mean - 0.5) / 0.5

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if self.transform_input:
            x = self._transform_input(x)
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=self.pool_strides[0], padding=1)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, kernel_size=3, stride=self.pool_strides[1], padding=1)
        for block in (
            self.Mixed_5b,
            self.Mixed_5c,
            self.Mixed_5d,
            self.Mixed_6a,
            self.Mixed_6b,
            self.Mixed_6c,
            self.Mixed_6d,
            self.Mixed_6e,
            self.Mixed_7a,
            self.Mixed_7b,
            self.Mixed_7c,
        ):
            x = block(x)
        return x

    def torchvision_key_map(self) -> dict[str, str]:
        """Ours -> torchvision: the same names (``Conv2d_1a_3x3.conv.weight``, ``Mixed_5b...``,
        ``fc``)."""
        return {key: key for key in self.state_dict()}
