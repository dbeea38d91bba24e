"""Patch classifiers: shapes, stride plans, torchvision-format weights, valid padding."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from inference.models import (
    MODEL_NAMES,
    build_model,
    load_torchvision_state_dict,
    torchvision_state_dict,
)

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.parametrize("size", [40, 96, 224])
def test_output_shape_for_seed_and_imagenet_sizes(name, size):
    torch.manual_seed(0)
    kw = {"width_mult": 0.35} if name == "mobilenetv2" else {}
    model = build_model(name, num_classes=2, input_size=size, **kw).eval()
    with torch.no_grad():
        out = model(torch.rand(2, 3, size, size))
    assert out.shape == (2, 2)
    fh, fw = model.feature_size(size)
    assert fh == fw >= 4  # the stride plan leaves a usable final map, 40 px included


def test_output_stride_defaults_and_override():
    assert build_model("mobilenetv2", num_classes=2, input_size=40).output_stride == 8
    assert build_model("mobilenetv2", num_classes=2, input_size=96).output_stride == 16
    assert build_model("mobilenetv2", num_classes=2, input_size=224).output_stride == 32
    assert build_model("mobilenetv2", num_classes=2).output_stride == 32
    m = build_model("mobilenetv2", num_classes=3, input_size=96, output_stride=32, width_mult=0.5)
    assert m.feature_size(96) == (3, 3) and m.num_classes == 3
    with pytest.raises(ValueError, match="power of two"):
        build_model("resnet-small", num_classes=2, output_stride=6)
    with pytest.raises(ValueError, match="unknown model"):
        build_model("inception", num_classes=2)


def test_config_rebuilds_the_same_model():
    m = build_model("resnet-small", num_classes=2, input_size=40, widths=(8, 16, 32, 64))
    again = build_model(m.name, **m.config)
    again.load_state_dict(m.state_dict())
    assert again.config == m.config


# torchvision key names and shapes, as torchvision.models.mobilenet_v2() / resnet18() have them
TV_MOBILENET = {
    "features.0.0.weight": (32, 3, 3, 3),
    "features.0.1.running_mean": (32,),
    "features.1.conv.0.0.weight": (32, 1, 3, 3),
    "features.1.conv.1.weight": (16, 32, 1, 1),
    "features.1.conv.2.bias": (16,),
    "features.2.conv.0.0.weight": (96, 16, 1, 1),
    "features.2.conv.1.0.weight": (96, 1, 3, 3),
    "features.2.conv.2.weight": (24, 96, 1, 1),
    "features.2.conv.3.running_var": (24,),
    "features.17.conv.2.weight": (320, 960, 1, 1),
    "features.18.0.weight": (1280, 320, 1, 1),
    "features.18.1.weight": (1280,),
    "classifier.1.weight": (1000, 1280),
    "classifier.1.bias": (1000,),
}
TV_RESNET18 = {
    "conv1.weight": (64, 3, 7, 7),
    "bn1.running_mean": (64,),
    "layer1.0.conv1.weight": (64, 64, 3, 3),
    "layer2.0.downsample.0.weight": (128, 64, 1, 1),
    "layer2.0.downsample.1.weight": (128,),
    "layer4.1.bn2.running_var": (512,),
    "fc.weight": (1000, 512),
}


@pytest.mark.parametrize(
    ("name", "expected", "n_keys"),
    [("mobilenetv2", TV_MOBILENET, 314), ("resnet18", TV_RESNET18, 122)],
)
def test_torchvision_names_and_shapes(name, expected, n_keys):
    tv = torchvision_state_dict(build_model(name, num_classes=1000))
    assert len(tv) == n_keys  # torchvision's state dicts have 314 and 122 entries
    for key, shape in expected.items():
        assert tuple(tv[key].shape) == shape, key


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_torchvision_state_dict_round_trip_through_a_file(name, tmp_path):
    torch.manual_seed(1)
    kw = {"width_mult": 0.5} if name == "mobilenetv2" else {}
    source = build_model(name, num_classes=2, input_size=40, **kw)
    # make batch-norm statistics non-trivial so they are checked too
    with torch.no_grad():
        for m in source.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    path = tmp_path / "tv.pth"
    torch.save(torchvision_state_dict(source), path)

    torch.manual_seed(2)
    fresh = build_model(name, num_classes=2, input_size=40, **kw)
    report = load_torchvision_state_dict(fresh, path, strict=True)
    assert report.ok and not report.unexpected and not report.skipped_classifier
    x = torch.rand(3, 3, 40, 40)
    with torch.no_grad():
        assert torch.equal(source.eval()(x), fresh.eval()(x))


def test_imagenet_classifier_is_skipped_and_problems_reported(tmp_path):
    imagenet = build_model("mobilenetv2", num_classes=1000)
    state = torchvision_state_dict(imagenet)
    state["features.99.extra"] = torch.zeros(1)
    path = tmp_path / "mobilenet_v2.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, path)

    ours = build_model("mobilenetv2", num_classes=2, input_size=40)
    report = load_torchvision_state_dict(ours, path)
    assert report.ok
    assert sorted(report.skipped_classifier) == ["fc.bias", "fc.weight"]
    assert report.unexpected == ["features.99.extra"]
    assert torch.equal(ours.stem.conv.weight, imagenet.stem.conv.weight)
    assert "classifier skipped: yes" in report.summary()

    narrow = build_model("mobilenetv2", num_classes=2, width_mult=0.5)
    report = load_torchvision_state_dict(narrow, path)
    assert report.shape_mismatch and not report.ok
    with pytest.raises(ValueError, match="do not fit"):
        load_torchvision_state_dict(narrow, path, strict=True)


@pytest.mark.parametrize(
    ("name", "kw", "window"),
    [
        ("resnet-small", {"blocks": (1, 1), "widths": (8, 16)}, 24),
        (
            "mobilenetv2",
            {
                "inverted_residual_setting": [(1, 8, 1, 1), (6, 16, 2, 2), (6, 24, 1, 2)],
                "last_channels": 64,
            },
            40,
        ),
    ],
)
def test_valid_padding_dense_run_equals_per_window_classification(name, kw, window):
    torch.manual_seed(3)
    model = build_model(name, num_classes=2, input_size=window, padding="valid", **kw)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    model.eval()
    s = model.output_stride
    rows, cols = 4, 3
    tile = torch.rand(1, 3, window + s * (rows - 1), window + s * (cols - 1))
    with torch.no_grad():
        dense = model.window_logits(tile)
        assert dense.shape == (1, 2, rows, cols)
        naive = torch.stack(
            [
                torch.stack(
                    [
                        model(tile[..., i * s : i * s + window, j * s : j * s + window])[0]
                        for j in range(cols)
                    ],
                    dim=-1,
                )
                for i in range(rows)
            ],
            dim=-2,
        )
    assert float((dense[0] - naive).abs().max()) <= 1e-4


def test_window_logits_needs_valid_padding_and_room():
    same = build_model("resnet-small", num_classes=2, input_size=40)
    with pytest.raises(ValueError, match="padding='valid'"):
        same.window_logits(torch.rand(1, 3, 64, 64))
    valid = build_model("mobilenetv2", num_classes=2, input_size=40, padding="valid")
    with pytest.raises(ValueError, match="too small"):
        valid.feature_size(40)  # full depth does not fit a 40 px window without padding


def test_importing_the_package_does_not_import_torch():
    # Django imports inference.models at start-up; it must stay light
    code = "import sys, inference.models as m; print('torch' in sys.modules, m.MODEL_NAMES)"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    assert out.startswith("False")
