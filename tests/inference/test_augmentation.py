"""Dihedral transforms (seed 002's eightfold rotations and flips) and colour jitter."""

from __future__ import annotations

import pytest
import torch

from inference.augmentation import (
    Augmenter,
    adjust_hue,
    colour_jitter,
    dihedral,
    dihedral_inverse,
    normalize,
    random_dihedral,
    to_float,
)


def _patch() -> torch.Tensor:
    return torch.arange(2 * 3 * 5 * 5, dtype=torch.float32).view(2, 3, 5, 5)


def test_eight_dihedral_transforms_are_distinct_and_invertible():
    x = _patch()
    outs = [dihedral(x, k) for k in range(8)]
    for k, y in enumerate(outs):
        assert y.shape == x.shape
        assert torch.equal(dihedral_inverse(y, k), x)
    flat = {tuple(y[0, 0].flatten().tolist()) for y in outs}
    assert len(flat) == 8  # all distinct on an asymmetric patch
    assert torch.equal(outs[0], x)
    assert torch.equal(outs[1], torch.rot90(x, 1, dims=(-2, -1)))
    assert torch.equal(outs[4], torch.flip(x, dims=(-1,)))
    with pytest.raises(ValueError):
        dihedral(x, 8)


def test_dihedral_group_closed_under_composition():
    x = _patch()
    images = {tuple(dihedral(x, k)[0, 0].flatten().tolist()) for k in range(8)}
    for a in range(8):
        for b in range(8):
            assert tuple(dihedral(dihedral(x, a), b)[0, 0].flatten().tolist()) in images


def test_random_dihedral_is_seeded_and_uses_several_transforms():
    x = torch.rand(64, 3, 8, 8)
    a = random_dihedral(x, generator=torch.Generator().manual_seed(1))
    b = random_dihedral(x, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    changed = (a != x).flatten(1).any(dim=1)
    assert 0 < int(changed.sum()) < 64  # about 1 in 8 keep the identity
    # every output is one of the 8 transforms of its input
    for i in range(64):
        assert any(torch.equal(a[i], dihedral(x[i], k)) for k in range(8))
    with pytest.raises(ValueError, match="square"):
        random_dihedral(torch.rand(2, 3, 4, 6))


def test_colour_jitter_keeps_range_and_changes_colour():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(16, 3, 12, 12, generator=g)
    y = colour_jitter(x, brightness=0.5, contrast=0.5, saturation=0.5, hue=0.2, generator=g)
    assert y.shape == x.shape
    assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0
    assert not torch.allclose(x, y)
    # zero strengths: identity
    assert torch.equal(colour_jitter(x, generator=g), x)


def test_hue_round_trip_and_full_turn():
    x = torch.rand(4, 3, 6, 6, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(adjust_hue(x, torch.zeros(4)), x, atol=1e-5, rtol=0)
    torch.testing.assert_close(adjust_hue(x, torch.ones(4)), x, atol=1e-5, rtol=0)
    red = torch.zeros(1, 3, 1, 1)
    red[0, 0] = 1.0
    green = adjust_hue(red, torch.tensor([1 / 3]))
    torch.testing.assert_close(green.flatten(), torch.tensor([0.0, 1.0, 0.0]), atol=1e-5, rtol=0)


def test_augmenter_and_normalisation():
    x = to_float(torch.randint(0, 256, (8, 3, 10, 10), dtype=torch.uint8))
    assert float(x.max()) <= 1.0
    aug = Augmenter(dihedral=True, brightness=0.2, contrast=0.2, saturation=0.2, hue=0.05)
    a = aug(x, generator=torch.Generator().manual_seed(5))
    b = aug(x, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    n = normalize(torch.full((1, 3, 2, 2), 0.5), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    assert torch.count_nonzero(n) == 0
