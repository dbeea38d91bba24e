"""Dense scanning on CUDA: the same windows, the same decisions as on CPU.

CI has no GPU, so these run where a GPU is lent (they were run on an H100: see the README). On
CUDA the scanner computes in fp16 autocast with channels-last (``Classifier.to``), so it is
compared with the CPU patch loop within fp16's rounding (decisions equal away from the
threshold); with autocast off and TF32 off it must
match to the CPU bound of 1e-4.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from inference.scoring import Classifier, naive_window_probabilities, scan_image

from .test_scoring import TINY, G, random_dense_model

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


@pytest.fixture
def exact_fp32():
    """TF32 off for the fp32 comparison (it rounds convolutions to 10-bit mantissas)."""
    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


@pytest.mark.parametrize(
    ("name", "kw"),
    [
        ("mobilenetv2", TINY),
        ("mobilenetv2", {**TINY, "output_stride": 4}),
        ("resnet-small", {"blocks": (1, 1), "widths": (8, 16), "padding": "valid"}),
    ],
)
def test_cuda_dense_scan_equals_the_cpu_patch_loop(name, kw, exact_fp32):
    model = random_dense_model(name, seed=1, **kw)
    image = np.random.default_rng(2).integers(0, 256, (213, 187, 3), dtype=np.uint8)
    cpu = Classifier(model=random_dense_model(name, seed=1, **kw)).to("cpu")
    naive = naive_window_probabilities(cpu, image, window=40, stride=10)
    assert naive.std() > 0.05

    fp32 = Classifier(model=model).to("cuda", amp=False)
    exact = scan_image(image, primary=fp32, tile_windows=4, batch_tiles=3)
    assert np.abs(exact.primary - naive).max() <= 1e-4

    fp16 = Classifier(model=random_dense_model(name, seed=1, **kw)).to("cuda")
    assert fp16.amp
    fast = scan_image(image, primary=fp16, tile_windows=4, batch_tiles=3)
    assert fast.primary.shape == (G.windows_along(213), G.windows_along(187))
    # fp16 rounds each layer's activations to 11 significant bits: on these random weights (large
    # logits) probabilities moved by up to 0.025 on an H100
    assert np.abs(fast.primary - naive).max() <= 5e-2
    clear = np.abs(naive - 0.5) > 5e-2  # decisions agree wherever fp16 rounding cannot flip them
    assert np.array_equal((fast.primary >= 0.5)[clear], (naive >= 0.5)[clear])


def _between(p: np.ndarray, q: float) -> float:
    """A threshold halfway between two neighbouring probabilities near quantile ``q``: no window
    sits on it, so float rounding cannot flip a decision."""
    values = np.unique(p)
    i = int(q * (len(values) - 1))
    return float(values[i] + values[i + 1]) / 2


def test_cuda_cascade_equals_the_cpu_cascade(exact_fp32):
    image = np.random.default_rng(3).integers(0, 256, (260, 300, 3), dtype=np.uint8)
    p1 = naive_window_probabilities(
        Classifier(model=random_dense_model("mobilenetv2", seed=5)).to("cpu"),
        image,
        window=40,
        stride=10,
    )
    p2 = naive_window_probabilities(
        Classifier(model=random_dense_model("mobilenetv2", seed=6)).to("cpu"),
        image,
        window=40,
        stride=10,
    )
    t1, t2 = _between(p1, 0.6), _between(p2, 0.4)

    def cascade(device: str):
        primary = Classifier(model=random_dense_model("mobilenetv2", seed=5), decision_threshold=t1)
        secondary = Classifier(
            model=random_dense_model("mobilenetv2", seed=6), decision_threshold=t2
        )
        return scan_image(
            image, primary=primary.to(device, amp=False), secondary=secondary.to(device, amp=False)
        )

    on_cpu, on_gpu = cascade("cpu"), cascade("cuda")
    assert on_gpu.device.startswith("cuda")
    assert np.array_equal(on_cpu.decisions, (p1 >= t1) & (p2 >= t2))
    assert on_cpu.decisions.any() and not on_cpu.decisions.all()
    assert np.array_equal(on_cpu.decisions, on_gpu.decisions)
    assert np.array_equal(on_cpu.counts, on_gpu.counts)
    assert on_cpu.secondary_windows == on_gpu.secondary_windows > 0
