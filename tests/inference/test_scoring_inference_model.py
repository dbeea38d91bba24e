"""The speed-ups of dense scanning compute what the trained model computes: batch norms folded
into the convolutions (channels-last), and tiles read in a background thread."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from inference.scoring import (
    SECONDARY_BLOCK,
    SECONDARY_SMALL_BLOCK,
    Classifier,
    ScoringError,
    fold_batch_norms,
    fuse_conv_activations,
    scan_image,
)

from .test_scoring import TINY, random_dense_model


@pytest.mark.parametrize(
    ("name", "kw"),
    [
        ("mobilenetv2", TINY),
        ("resnet-small", {"blocks": (1, 1), "widths": (8, 16), "padding": "valid"}),
    ],
)
def test_folded_model_computes_what_the_trained_model_computes(name, kw):
    model = random_dense_model(name, seed=4, **kw)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fused, folded = fold_batch_norms(model)
    n_bn = sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert folded == n_bn > 0  # every batch norm of these nets follows a convolution
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    windows = torch.rand(16, 3, 40, 40, generator=torch.Generator().manual_seed(5)) * 4 - 2
    with torch.inference_mode():
        want = torch.softmax(model(windows), 1)
        got = torch.softmax(fused(windows), 1)
    assert (want - got).abs().max() <= 1e-5
    assert want.std() > 0.05  # the probabilities are spread, so the comparison means something
    # the classifier runs the folded copy; the trained model's weights are untouched
    classifier = Classifier(model=model).to("cpu")
    pixels = np.random.default_rng(6).integers(0, 256, (16, 40, 40, 3), dtype=np.uint8)
    with torch.inference_mode():
        reference = torch.softmax(model(classifier._prepare(pixels).contiguous()), 1)[:, 1]
    assert np.abs(classifier.window_probabilities(pixels) - reference.numpy()).max() <= 1e-5
    assert classifier.inference_model is not model
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


@pytest.mark.parametrize(
    ("name", "kw"),
    [
        ("mobilenetv2", TINY),
        ("resnet-small", {"blocks": (1, 1), "widths": (8, 16), "padding": "valid"}),
    ],
)
def test_the_normalisation_is_folded_into_the_first_convolution_only_without_padding(name, kw):
    """A valid-padded network takes the pixels as they are (its first convolution normalises);
    its probabilities are the trained model's on normalised pixels. A zero-padded one is not
    folded: a padded zero stands for -mean/std there, so its border would change."""
    pixels = np.random.default_rng(8).integers(0, 256, (32, 40, 40, 3), dtype=np.uint8)
    valid = Classifier(model=random_dense_model(name, seed=5, **kw)).to("cpu")
    assert valid.inference_model is not None and valid._raw_input
    first = next(m for m in valid.inference_model.modules() if isinstance(m, torch.nn.Conv2d))
    original = next(m for m in valid.model.modules() if isinstance(m, torch.nn.Conv2d))
    assert not torch.allclose(first.weight, original.weight)  # it did change: it normalises
    with torch.inference_mode():
        want = torch.softmax(valid.model(valid._prepare(pixels).contiguous()), 1)[:, 1].numpy()
    assert want.std() > 0.05
    assert np.abs(valid.window_probabilities(pixels) - want).max() <= 1e-5
    same = Classifier(model=random_dense_model(name, seed=5, **{**kw, "padding": "same"}))
    same.to("cpu")
    assert same.inference_model is not None and not same._raw_input
    with torch.inference_mode():
        want = torch.softmax(same.model(same._prepare(pixels).contiguous()), 1)[:, 1].numpy()
    assert np.abs(same.window_probabilities(pixels) - want).max() <= 1e-5


@pytest.mark.parametrize(
    ("name", "kw", "expected"),
    [
        # stem, 4 expansions, 5 depthwise, head: every ConvBNAct of the tiny MobileNetV2
        ("mobilenetv2", TINY, 11),
        ("resnet-small", {"blocks": (1, 1), "widths": (8, 16), "padding": "valid"}, 1),  # stem
    ],
)
def test_convolutions_and_their_clamps_run_as_one_call_with_the_same_result(name, kw, expected):
    """On CPU the inference copy runs each convolution with its ReLU / ReLU6 as one oneDNN call:
    the same probabilities as the trained model, densely and window by window; with autograd on
    (nothing scores that way, but the module must not lie) it takes the two-step path."""
    from inference.models.layers import ConvBNAct

    classifier = Classifier(model=random_dense_model(name, seed=12, **kw)).to("cpu")
    merged = [
        m for m in classifier.inference_model.modules() if type(m).__name__ == "FusedConvClamp"
    ]
    assert len(merged) == expected
    assert not any(isinstance(m, ConvBNAct) for m in classifier.inference_model.modules())
    pixels = np.random.default_rng(13).integers(0, 256, (24, 40, 40, 3), dtype=np.uint8)
    with torch.inference_mode():
        want = torch.softmax(classifier.model(classifier._prepare(pixels).contiguous()), 1)[:, 1]
    assert want.std() > 0.05
    assert np.abs(classifier.window_probabilities(pixels) - want.numpy()).max() <= 1e-5
    # the merged modules against the folded copy before merging, on a tile (dense feature maps)
    folded, _ = fold_batch_norms(classifier.model)
    again, count = fuse_conv_activations(folded)
    assert count == expected
    tile = torch.rand(2, 3, 110, 110, generator=torch.Generator().manual_seed(14)) * 4 - 2
    with torch.inference_mode():
        assert (again.forward_features(tile) - folded.forward_features(tile)).abs().max() <= 1e-5
    with torch.enable_grad():
        grad_input = tile.clone().requires_grad_(True)
        again.forward_features(grad_input).sum().backward()
    assert grad_input.grad is not None and grad_input.grad.abs().sum() > 0
    # a model whose batch norms are not folded is left alone (a clamp would skip the affine map)
    assert fuse_conv_activations(classifier.model) == (classifier.model, 0)


@pytest.mark.parametrize("prefetch", [True, False])
def test_a_failing_tile_read_stops_the_scan_with_its_reason(prefetch):
    classifier = Classifier(model=random_dense_model()).to("cpu")
    image = np.random.default_rng(7).integers(0, 256, (300, 300, 3), dtype=np.uint8)
    calls = []

    def reader(x: int, y: int, w: int, h: int) -> np.ndarray:
        calls.append((x, y))
        if len(calls) == 3:
            raise ScoringError(f"tile at ({x}, {y}) is truncated")
        return image[y : y + h, x : x + w]

    from inference.scoring import scan

    with pytest.raises(ScoringError, match="is truncated"):
        scan(
            reader,
            width=300,
            height=300,
            primary=classifier,
            tile_windows=8,
            batch_tiles=1,
            prefetch=prefetch,
        )
    # without the failure the scan reads every tile once and equals the in-memory scan
    calls.clear()
    whole = scan_image(image, primary=classifier, tile_windows=8, batch_tiles=1)
    result = scan(
        lambda x, y, w, h: image[y : y + h, x : x + w],
        width=300,
        height=300,
        primary=classifier,
        tile_windows=8,
        batch_tiles=1,
        prefetch=prefetch,
    )
    assert result.tiles_scanned == whole.tiles_scanned == 16
    assert np.array_equal(result.primary, whole.primary)


def auto_against_one_by_one(image: np.ndarray, *, seeds: tuple[int, int], quantile: float, **kw):
    """The cascade over ``image`` with the secondary checking every called window on its own
    ("gather") and in "auto" mode (``kw``): both must decide the same. Returns the shapes of the
    secondary's dense calls in auto mode and the two results."""
    primary = Classifier(model=random_dense_model(seed=seeds[0])).to("cpu")
    secondary = Classifier(model=random_dense_model(seed=seeds[1])).to("cpu")
    probs = scan_image(image, primary=primary).primary
    primary.decision_threshold = float(np.quantile(probs, quantile))
    shapes = []
    original = secondary.dense_probabilities

    def recording(tiles, **kw):
        shapes.append(tiles.shape)
        return original(tiles, **kw)

    secondary.dense_probabilities = recording
    one_by_one = scan_image(image, primary=primary, secondary=secondary, secondary_mode="gather")
    assert shapes == []
    auto = scan_image(image, primary=primary, secondary=secondary, **kw)
    checked = ~np.isnan(one_by_one.secondary)
    assert checked.sum() == auto.secondary_windows == one_by_one.secondary_windows > 0
    assert np.array_equal(checked, ~np.isnan(auto.secondary))
    assert np.abs(auto.secondary[checked] - one_by_one.secondary[checked]).max() <= 1e-4
    assert np.array_equal(auto.decisions, one_by_one.decisions)
    assert np.array_equal(auto.counts, one_by_one.counts)
    return shapes, auto, one_by_one


def test_auto_cascade_runs_the_secondary_densely_over_boxes_with_the_same_result():
    image = np.random.default_rng(10).integers(0, 256, (330, 330, 3), dtype=np.uint8)
    image[100:220, 60:200] //= 3  # a darker patch: the primary's calls cluster on one side
    shapes, _, _ = auto_against_one_by_one(image, seeds=(8, 9), quantile=0.6, tile_windows=12)
    assert shapes, "no box was dense enough for a dense secondary run"


def test_scattered_calls_run_the_secondary_in_dense_blocks_with_the_same_decisions():
    """Calls in small groups over a tile: "auto" runs blocks of 4 x 4 windows that hold many of
    them densely, and quarters of 2 x 2 windows that hold two or more, several to a call, and
    checks the rest one by one."""
    rng = np.random.default_rng(33)
    image = rng.integers(0, 256, (490, 490, 3), dtype=np.uint8)
    for y, x in rng.integers(0, 440, (12, 2)):  # small dark spots: calls cluster in small groups
        image[y : y + 45, x : x + 45] //= 4
    shapes, auto, _ = auto_against_one_by_one(image, seeds=(31, 32), quantile=0.85)
    block_px = (SECONDARY_BLOCK - 1) * 10 + 40
    assert any(s[1:3] == (block_px, block_px) and s[0] > 1 for s in shapes), shapes
    # and quarters of blocks (2 x 2 windows, 50 px) holding two or more called windows
    quarter_px = (SECONDARY_SMALL_BLOCK - 1) * 10 + 40
    assert any(s[1:3] == (quarter_px, quarter_px) and s[0] > 1 for s in shapes), shapes
    assert auto.secondary_windows > 200
