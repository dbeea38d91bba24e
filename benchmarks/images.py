#!/usr/bin/env python
"""Whole-image classifiers (seeds 003 and 004): training and inference images/s of ResNet-50 at
224 px and Inception-v3 at 299 px, each against a baseline run in the same process.

For each network (``inference.models`` registry, two classes, random weights: speed does not
depend on them) and a batch of random images at its input size (``--batch-size``):

1. Inference, same inputs, same weights:
   - baseline: the model as trained, eval mode, float32, NCHW contiguous, under ``torch.no_grad``;
   - platform: what ``inference.scoring.Classifier`` runs: batch norms folded into the
     convolutions, channels-last, under ``torch.inference_mode``, and on CUDA float16 autocast
     (``--amp-dtype``). The largest difference of their softmax probabilities, and of their
     logits relative to the largest logit, is printed.
2. Training steps (forward, cross-entropy, backward, Adam step), same batches:
   - baseline: float32, NCHW contiguous;
   - platform: channels-last, and on CUDA mixed precision (autocast; a gradient scaler with
     float16), as ``inference.training.train`` does on CUDA.

Ratios are platform / baseline. Runs on CUDA when the machine has one, else on the CPU
(``--device`` picks). ``--quick`` (the suite): width 0.25 networks, batch 4 and three timed
iterations (the median counts), under a minute on two CPU cores; full mode: full-width networks. On the CPU torch uses
``--threads`` threads (default: torch's). The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

#: (registry name, input size in px): seed 003's ResNet-50 at ImageNet's 224, seed 004's
#: Inception-v3 at its 299.
NETWORKS: tuple[tuple[str, int], ...] = (("resnet50", 224), ("inception-v3", 299))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(step, *, device: torch.device, warmup: int, iters: int) -> float:
    """Median seconds per call of ``step`` over ``iters`` timed calls after ``warmup`` untimed
    ones (the median, not the mean: on a shared machine single calls can wait for a core)."""
    for _ in range(warmup):
        step()
    _sync(device)
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _autocast(device: torch.device, dtype: torch.dtype | None):
    if device.type == "cuda" and dtype is not None:
        return torch.autocast("cuda", dtype=dtype)
    return contextlib.nullcontext()


def build(name: str, size: int, *, width: float, device: torch.device):
    from inference.models import build_model

    torch.manual_seed(0)
    kw = {"width_mult": width} if width != 1.0 else {}
    return build_model(name, num_classes=2, input_size=size, **kw).to(device)


def inference_figures(
    name: str,
    size: int,
    *,
    width: float,
    batch: int,
    device: torch.device,
    amp_dtype: torch.dtype | None,
    warmup: int,
    iters: int,
) -> dict:
    from inference.scoring import fold_batch_norms

    model = build(name, size, width=width, device=device).eval()
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 3, size, size, generator=generator).to(device)
    fused, folded = fold_batch_norms(model)
    fused = fused.to(memory_format=torch.channels_last)
    x_cl = x.contiguous(memory_format=torch.channels_last)

    def baseline() -> torch.Tensor:
        with torch.no_grad():
            return model(x)

    def platform_path() -> torch.Tensor:
        with torch.inference_mode(), _autocast(device, amp_dtype):
            return fused(x_cl)

    base_s = _timed(baseline, device=device, warmup=warmup, iters=iters)
    fast_s = _timed(platform_path, device=device, warmup=warmup, iters=iters)
    want, got = baseline().float(), platform_path().float()
    diff = (torch.softmax(want, 1) - torch.softmax(got, 1)).abs().max()
    # random weights can saturate the softmax (an untrained Inception's logits reach 1e2), so
    # the logits are compared too, relative to their largest magnitude
    relative = (want - got).abs().max() / want.abs().max().clamp_min(1e-12)
    out = {
        "baseline_images_per_s": round(batch / base_s, 1),
        "platform_images_per_s": round(batch / fast_s, 1),
        "batch_norms_folded": folded,
        "max_abs_diff": float(diff),
        "max_rel_logit_diff": float(relative),
    }
    out["ratio"] = round(out["platform_images_per_s"] / out["baseline_images_per_s"], 2)
    return out


def training_figures(
    name: str,
    size: int,
    *,
    width: float,
    batch: int,
    device: torch.device,
    amp_dtype: torch.dtype | None,
    warmup: int,
    iters: int,
) -> dict:
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(batch, 3, size, size, generator=generator).to(device)
    y = torch.randint(0, 2, (batch,), generator=generator).to(device)

    def stepper(*, channels_last: bool, amp: torch.dtype | None):
        model = build(name, size, width=width, device=device).train()
        inputs = x
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
            inputs = x.contiguous(memory_format=torch.channels_last)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        use_scaler = device.type == "cuda" and amp == torch.float16
        scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)

        def step() -> None:
            optimizer.zero_grad(set_to_none=True)
            with _autocast(device, amp):
                loss = F.cross_entropy(model(inputs), y)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()

        return step

    base_s = _timed(
        stepper(channels_last=False, amp=None), device=device, warmup=warmup, iters=iters
    )
    fast_s = _timed(
        stepper(channels_last=True, amp=amp_dtype), device=device, warmup=warmup, iters=iters
    )
    out = {
        "baseline_images_per_s": round(batch / base_s, 1),
        "platform_images_per_s": round(batch / fast_s, 1),
    }
    out["ratio"] = round(out["platform_images_per_s"] / out["baseline_images_per_s"], 2)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="narrow nets, few iterations")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if any)")
    parser.add_argument("--batch-size", type=int, help="images per batch (default 64 / 16 / 4)")
    parser.add_argument("--width", type=float, help="width multiplier (default 1; --quick 0.25)")
    parser.add_argument("--iters", type=int, help="timed iterations per figure")
    parser.add_argument("--warmup", type=int, help="untimed iterations first")
    parser.add_argument(
        "--amp-dtype",
        choices=("float16", "bfloat16", "none"),
        default="float16",
        help="autocast type of the platform path on CUDA (the CPU runs float32)",
    )
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument(
        "--models", default=",".join(n for n, _ in NETWORKS), help="comma-separated subset"
    )
    args = parser.parse_args()

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    on_cuda = device.type == "cuda"
    if args.threads:
        torch.set_num_threads(args.threads)
    if on_cuda:
        torch.backends.cudnn.benchmark = True
    width = args.width or (0.25 if args.quick else 1.0)
    batch = args.batch_size or (4 if args.quick else (64 if on_cuda else 16))
    iters = args.iters or (3 if args.quick else (20 if on_cuda else 5))
    warmup = args.warmup if args.warmup is not None else 2
    amp_dtype = None if args.amp_dtype == "none" or not on_cuda else getattr(torch, args.amp_dtype)
    wanted = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = sorted(set(wanted) - {n for n, _ in NETWORKS})
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; choose from resnet50, inception-v3")

    print(
        f"Whole-image classifiers on {device}"
        + (f" ({torch.cuda.get_device_name(device)})" if on_cuda else f" ({platform.processor()})")
        + f", torch {torch.__version__}, {torch.get_num_threads()} CPU threads, batch {batch},"
        f" width {width}, {iters} timed iterations after {warmup}"
        + (f", platform path with {args.amp_dtype} autocast" if amp_dtype else "")
    )
    figures: dict = {
        "benchmark": "images",
        "quick": args.quick,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if on_cuda else "cpu",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "batch_size": batch,
        "width_mult": width,
        "iters": iters,
        "amp_dtype": args.amp_dtype if amp_dtype else None,
        "models": [],
    }
    common = {
        "width": width,
        "batch": batch,
        "device": device,
        "amp_dtype": amp_dtype,
        "warmup": warmup,
        "iters": iters,
    }
    for name, size in NETWORKS:
        if name not in wanted:
            continue
        params = sum(p.numel() for p in build(name, size, width=width, device=device).parameters())
        infer = inference_figures(name, size, **common)
        train = training_figures(name, size, **common)
        print(
            f"  {name:<13} {size} px, {params / 1e6:6.2f} M parameters\n"
            f"    inference {infer['baseline_images_per_s']:9.1f} images/s baseline (fp32, NCHW),"
            f" {infer['platform_images_per_s']:9.1f} platform: {infer['ratio']:.2f}x"
            f" (max |dp| {infer['max_abs_diff']:.1e}, logits {infer['max_rel_logit_diff']:.1e})\n"
            f"    training  {train['baseline_images_per_s']:9.1f} images/s baseline (fp32, NCHW),"
            f" {train['platform_images_per_s']:9.1f} channels-last"
            + (" + mixed precision" if amp_dtype else "")
            + f": {train['ratio']:.2f}x",
            flush=True,
        )
        figures["models"].append(
            {
                "model": name,
                "input_px": size,
                "parameters": params,
                "inference": infer,
                "training": train,
            }
        )
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
