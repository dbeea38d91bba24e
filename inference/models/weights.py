"""Pretrained weights from a local file in torchvision's state-dict naming (nothing is downloaded).

Our modules use their own readable names (``stem``, ``blocks``, ``stages``, ``fc``); each model
knows the torchvision name of every tensor (``torchvision_key_map``), so a file written by
``torch.save(torchvision.models.mobilenet_v2(weights=...).state_dict(), path)`` on any machine
loads here. The classifier is skipped when its shape differs (ImageNet's 1000 classes vs our 2).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path

import torch
from torch import nn

log = logging.getLogger(__name__)

CLASSIFIER_PREFIXES = ("fc.",)
_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "weights")
_STRIP_PREFIXES = ("module.", "model.", "_orig_mod.")


@dataclass
class LoadReport:
    """What a pretrained-weights load did, in our key names (torchvision names for ``unexpected``)."""

    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    skipped_classifier: list[str] = field(default_factory=list)
    shape_mismatch: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every non-classifier tensor was loaded."""
        return not (self.missing or self.shape_mismatch)

    def summary(self) -> str:
        return (
            f"loaded {len(self.loaded)} tensors; missing {len(self.missing)}; "
            f"unexpected {len(self.unexpected)}; shape mismatch {len(self.shape_mismatch)}; "
            f"classifier skipped: {'yes' if self.skipped_classifier else 'no'}"
        )

    def to_dict(self) -> dict:
        return {
            "loaded": len(self.loaded),
            "missing": list(self.missing),
            "unexpected": list(self.unexpected),
            "skipped_classifier": list(self.skipped_classifier),
            "shape_mismatch": [[k, list(a), list(b)] for k, a, b in self.shape_mismatch],
        }


def read_state_dict(path: str | PathLike[str]) -> dict[str, torch.Tensor]:
    """Read a state dict from ``path`` (tensors only, ``weights_only``), unwrapping common wrappers
    (``{"state_dict": ...}``) and prefixes (``module.`` from DataParallel, ``_orig_mod.`` from
    torch.compile)."""
    obj = torch.load(Path(path), map_location="cpu", weights_only=True)
    for key in _WRAPPER_KEYS:
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path} does not hold a state dict")
    state = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    for prefix in _STRIP_PREFIXES:
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    return state


def torchvision_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Our model's state dict renamed to torchvision's keys (for export, and the round-trip test)."""
    mapping = model.torchvision_key_map()  # type: ignore[operator]
    return {mapping[k]: v.detach().clone() for k, v in model.state_dict().items()}


def load_torchvision_state_dict(
    model: nn.Module,
    path: str | PathLike[str] | Mapping[str, torch.Tensor],
    *,
    strict: bool = False,
) -> LoadReport:
    """Load torchvision-named weights from a local file (or a mapping) into ``model`` in place;
    a NodeScope weights file (our own key names) loads too, e.g. to fine-tune a trained model.

    Names are mapped with ``model.torchvision_key_map()``; tensors whose shape differs are left at
    their initial values and reported (the classifier quietly, as expected; anything else as a
    shape mismatch). With ``strict=True`` a missing or mismatched non-classifier tensor raises.
    """
    state = dict(path) if isinstance(path, Mapping) else read_state_dict(path)
    ours_to_tv = model.torchvision_key_map()  # type: ignore[operator]
    tv_to_ours = {tv: ours for ours, tv in ours_to_tv.items()}
    own = model.state_dict()
    report = LoadReport()
    new_values: dict[str, torch.Tensor] = {}
    for tv_key, tensor in state.items():
        # torchvision's names, or already ours (a NodeScope weights file: fine-tuning a model)
        ours = tv_to_ours.get(tv_key) or (tv_key if tv_key in own else None)
        if ours is None:
            report.unexpected.append(tv_key)
            continue
        target = own[ours]
        if tuple(tensor.shape) != tuple(target.shape):
            if ours.startswith(CLASSIFIER_PREFIXES):
                report.skipped_classifier.append(ours)
            else:
                report.shape_mismatch.append((ours, tuple(tensor.shape), tuple(target.shape)))
            continue
        new_values[ours] = tensor.to(dtype=target.dtype)
        report.loaded.append(ours)
    mismatched = {key for key, _, _ in report.shape_mismatch}
    for key in own:
        if key in new_values or key in mismatched or key in report.skipped_classifier:
            continue
        if key.startswith(CLASSIFIER_PREFIXES):
            report.skipped_classifier.append(key)
        else:
            report.missing.append(key)
    if strict and (report.missing or report.shape_mismatch):
        raise ValueError(f"pretrained weights do not fit the model: {report.summary()}")
    model.load_state_dict(new_values, strict=False)
    log.info("pretrained weights: %s", report.summary())
    return report
