"""Patch and image classifiers in plain PyTorch (no torchvision): MobileNetV2, ResNet (18, 50 and
a small variant) and Inception-v3, a name registry,
and loading of torchvision-format pretrained weights from a local file.

Importing this package does not import torch until a name below is first used (PEP 562 lazy
attributes), so code that only needs ``MODEL_NAMES`` (forms, validation) stays light. The app's
database models live in ``inference/records.py`` (see ``InferenceConfig.import_models``).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

MODEL_NAMES: tuple[str, ...] = (
    "mobilenetv2",
    "resnet18",
    "resnet-small",
    "resnet50",
    "inception-v3",
)

_LAZY = {
    "build_model": "registry",
    "canonical_name": "registry",
    "MobileNetV2": "mobilenetv2",
    "ResNet": "resnet",
    "InceptionV3": "inception",
    "PatchClassifier": "layers",
    "LoadReport": "weights",
    "load_torchvision_state_dict": "weights",
    "read_state_dict": "weights",
    "torchvision_state_dict": "weights",
}

__all__ = [
    "MODEL_NAMES",
    "InceptionV3",
    "LoadReport",
    "MobileNetV2",
    "PatchClassifier",
    "ResNet",
    "build_model",
    "canonical_name",
    "load_torchvision_state_dict",
    "read_state_dict",
    "torchvision_state_dict",
]

if TYPE_CHECKING:  # pragma: no cover
    from .inception import InceptionV3
    from .layers import PatchClassifier
    from .mobilenetv2 import MobileNetV2
    from .registry import build_model, canonical_name
    from .resnet import ResNet
    from .weights import (
        LoadReport,
        load_torchvision_state_dict,
        read_state_dict,
        torchvision_state_dict,
    )


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module = importlib.import_module(f".{_LAZY[name]}", __name__)
        value = getattr(module, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
