"""Model names -> constructors, so training runs and weight files name their architecture."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .inception import InceptionV3
from .layers import PatchClassifier
from .mobilenetv2 import MobileNetV2
from .resnet import ResNet

_PRESETS: dict[str, tuple[Callable[..., PatchClassifier], dict[str, Any]]] = {
    "mobilenetv2": (MobileNetV2, {}),
    "resnet18": (
        ResNet,
        {"blocks": (2, 2, 2, 2), "widths": (64, 128, 256, 512), "stem": "imagenet"},
    ),
    "resnet-small": (
        ResNet,
        {"blocks": (2, 2, 2, 2), "widths": (32, 64, 128, 256), "stem": "small"},
    ),
    "resnet50": (
        ResNet,
        {
            "blocks": (3, 4, 6, 3),
            "widths": (64, 128, 256, 512),
            "stem": "imagenet",
            "block": "bottleneck",
        },
    ),
    "inception-v3": (InceptionV3, {}),
}
_ALIASES = {
    "mobilenet_v2": "mobilenetv2",
    "mobilenet-v2": "mobilenetv2",
    "resnet-18": "resnet18",
    "resnet_small": "resnet-small",
    "resnet-50": "resnet50",
    "inception_v3": "inception-v3",
    "inceptionv3": "inception-v3",
}
MODEL_NAMES: tuple[str, ...] = tuple(_PRESETS)


def canonical_name(name: str) -> str:
    """The registry name for ``name`` (aliases such as ``mobilenet_v2`` accepted)."""
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in _PRESETS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}")
    return key


def build_model(name: str, *, num_classes: int, **kw: Any) -> PatchClassifier:
    """Build the named patch classifier with ``num_classes`` outputs; ``kw`` go to the constructor
    (``width_mult``, ``input_size``, ``output_stride``, ``padding``, ``widths`` ...) and override
    the preset. ``build_model(model.name, **model.config)`` rebuilds any model."""
    key = canonical_name(name)
    cls, preset = _PRESETS[key]
    model = cls(num_classes=num_classes, **{**preset, **kw})
    model.name = key
    return model
