"""ResNet-50 and Inception-v3: published shapes and sizes, torchvision names, narrow variants."""

from __future__ import annotations

import pytest
import torch

from inference.models import build_model, load_torchvision_state_dict, torchvision_state_dict


def _n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    ("name", "size", "published_m"),
    [("resnet50", 224, 25.6), ("inception-v3", 299, 23.8)],
)
def test_full_size_forward_and_parameter_count(name, size, published_m):
    torch.manual_seed(0)
    imagenet = build_model(name, num_classes=1000)
    assert abs(_n_params(imagenet) / 1e6 - published_m) < 0.1
    model = build_model(name, num_classes=2, input_size=size).eval()
    with torch.no_grad():
        logits = model(torch.rand(1, 3, size, size))
    assert logits.shape == (1, 2) and torch.isfinite(logits).all()
    assert model.output_stride == 32
    # features -> global average pool -> linear: what class-activation maps need
    assert model.fc.in_features == 2048
    assert model.feature_size(size) == ((7, 7) if name == "resnet50" else (10, 10))


def test_torchvision_names_and_shapes():
    resnet = torchvision_state_dict(build_model("resnet50", num_classes=1000))
    assert tuple(resnet["conv1.weight"].shape) == (64, 3, 7, 7)
    assert tuple(resnet["layer1.0.conv3.weight"].shape) == (256, 64, 1, 1)
    assert tuple(resnet["layer1.0.downsample.0.weight"].shape) == (256, 64, 1, 1)
    assert tuple(resnet["layer4.2.conv2.weight"].shape) == (512, 512, 3, 3)
    assert tuple(resnet["fc.weight"].shape) == (1000, 2048)
    assert sum(k.startswith("layer3.") and k.endswith("conv1.weight") for k in resnet) == 6
    inception = torchvision_state_dict(build_model("inception-v3", num_classes=1000))
    assert tuple(inception["Conv2d_1a_3x3.conv.weight"].shape) == (32, 3, 3, 3)
    assert tuple(inception["Mixed_6b.branch7x7_2.conv.weight"].shape) == (128, 128, 1, 7)
    assert tuple(inception["Mixed_7c.branch3x3dbl_3b.conv.weight"].shape) == (384, 384, 3, 1)
    assert tuple(inception["Mixed_7c.branch_pool.bn.running_var"].shape) == (192,)
    assert tuple(inception["fc.weight"].shape) == (1000, 2048)


@pytest.mark.parametrize("name", ["resnet50", "inception-v3"])
def test_width_multiplier_narrows_and_config_rebuilds(name):
    narrow = build_model(name, num_classes=2, input_size=64, width_mult=0.125)
    assert _n_params(narrow) < 0.02 * _n_params(build_model(name, num_classes=2))
    again = build_model(narrow.name, **narrow.config)
    again.load_state_dict(narrow.state_dict())
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(narrow.eval()(x), again.eval()(x))
    assert narrow.feature_size(64) == (4, 4)


def test_bottleneck_valid_padding_dense_run_equals_per_window():
    torch.manual_seed(3)
    model = build_model(
        "resnet50",
        num_classes=2,
        input_size=24,
        padding="valid",
        blocks=(1, 1),
        widths=(8, 16),
        stem="small",
    )
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    model.eval()
    s, window = model.output_stride, 24
    tile = torch.rand(1, 3, window + 3 * s, window + 2 * s)
    with torch.no_grad():
        dense = model.window_logits(tile)
        naive = torch.stack(
            [
                torch.stack(
                    [
                        model(tile[..., i * s : i * s + window, j * s : j * s + window])[0]
                        for j in range(3)
                    ],
                    dim=-1,
                )
                for i in range(4)
            ],
            dim=-2,
        )
    assert float((dense[0] - naive).abs().max()) <= 1e-4


def test_inception_refuses_valid_padding_and_bad_widths():
    with pytest.raises(ValueError, match="padding='same' only"):
        build_model("inception-v3", num_classes=2, padding="valid")
    with pytest.raises(ValueError, match="width_mult"):
        build_model("inception-v3", num_classes=2, width_mult=0)
    with pytest.raises(ValueError, match="block must be"):
        build_model("resnet50", num_classes=2, block="wide")


def test_torchvision_inception_weights_load_without_the_auxiliary_head(tmp_path):
    torch.manual_seed(4)
    source = build_model("inception-v3", num_classes=2, input_size=75, width_mult=0.125)
    state = torchvision_state_dict(source)
    state["AuxLogits.fc.weight"] = torch.zeros(1000, 768)  # torchvision's file has the aux head
    path = tmp_path / "inception_v3.pth"
    torch.save(state, path)
    fresh = build_model(
        "inception-v3", num_classes=2, input_size=75, width_mult=0.125, transform_input=True
    )
    report = load_torchvision_state_dict(fresh, path)
    assert report.ok and report.unexpected == ["AuxLogits.fc.weight"]
    # transform_input: ImageNet-normalised input seen as (pixel - 0.5) / 0.5
    pixels = torch.rand(2, 3, 75, 75)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    source.eval(), fresh.eval()
    with torch.no_grad():
        assert torch.allclose(fresh((pixels - mean) / std), source((pixels - 0.5) / 0.5), atol=1e-5)
