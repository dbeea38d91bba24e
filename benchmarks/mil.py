#!/usr/bin/env python
"""Seed 001 attention MIL on CPU: feature extraction (patches/s) and MIL training (bags/s).

1. Features: a random-init backbone (``resnet-small``, the tests' extractor, and MobileNetV2
   width 0.5) embeds 40 px patches (``--patch``) with ``forward_features`` + global average pool,
   in batches of 256, against the same backbone called one patch at a time (baseline).
2. MIL training: generated bags (16-48 instances of 512 features, as from a ResNet-18 backbone;
   ``--dim``) through the gated-attention model with Adam, padded batches of 16 bags, against one
   bag per step as the original AMIL code trains (baseline), same bags, same epochs.
3. What they learn (a sanity check, not a benchmark): validation AUC of the image-only model
   (DL-CNB) and the +clinical one (DL-CNB+C) on generated bags whose label depends on both.

Torch runs on ``--threads`` CPU threads (1 by default, so figures compare on a shared machine).
The last line printed is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402


def features_per_second(name: str, *, n: int, patch: int, repeats: int, **kw) -> dict:
    from inference.mil import random_extractor

    extractor = random_extractor(architecture=name, patch_px=patch, seed=0, **kw)
    rng = np.random.default_rng(0)
    patches = rng.integers(0, 256, (n, patch, patch, 3), dtype=np.uint8)
    extractor(patches[:8])  # warm up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        batched = extractor(patches)
        best = min(best, time.perf_counter() - t0)
    n_single = max(8, n // 8)
    extractor.batch_size = 1
    t0 = time.perf_counter()
    single = extractor(patches[:n_single])
    single_s = time.perf_counter() - t0
    extractor.batch_size = 256
    assert np.allclose(single, batched[:n_single], atol=1e-4), "batched features differ"
    out = {
        "backbone": name,
        "patch_px": patch,
        "dim": int(batched.shape[1]),
        "patches_per_s": round(n / best, 1),
        "one_by_one_per_s": round(n_single / single_s, 1),
    }
    out["ratio"] = round(out["patches_per_s"] / out["one_by_one_per_s"], 2)
    print(
        f"  {name:<14} {patch} px -> {out['dim']} features: {out['patches_per_s']:9.1f} patches/s "
        f"batched, {out['one_by_one_per_s']:8.1f} one by one, {out['ratio']:.2f}x"
    )
    return out


def training_bags_per_second(*, n_bags: int, dim: int, epochs: int, batch: int) -> dict:
    from inference.mil import collate
    from inference.mil_synthetic import generated_bags
    from inference.models.mil import GatedAttentionMIL

    bags = generated_bags(n_bags, dim=dim, seed=0).bags

    def run(batch_size: int) -> float:
        torch.manual_seed(0)
        model = GatedAttentionMIL(in_features=dim, num_classes=2).train()
        optimizer = torch.optim.Adam(model.parameters(), lr=5e-4, weight_decay=1e-4)
        t0 = time.perf_counter()
        for epoch in range(epochs):
            order = np.random.default_rng(epoch).permutation(n_bags)
            for start in range(0, n_bags, batch_size):
                chunk = [bags[i] for i in order[start : start + batch_size]]
                if batch_size == 1:
                    x = torch.from_numpy(chunk[0].features).unsqueeze(0)
                    logits, _ = model(x)
                    y = torch.tensor([chunk[0].label])
                else:
                    x, mask, _, y = collate(chunk)
                    logits, _ = model(x, mask)
                loss = F.cross_entropy(logits, y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        return n_bags * epochs / (time.perf_counter() - t0)

    run(batch)  # warm up
    batched = run(batch)
    single = run(1)
    out = {
        "bags": n_bags,
        "dim": dim,
        "epochs": epochs,
        "batch": batch,
        "bags_per_s": round(batched, 1),
        "one_bag_per_step_per_s": round(single, 1),
        "ratio": round(batched / single, 2),
    }
    print(
        f"  {n_bags} bags x {epochs} epochs, {dim} features: {out['bags_per_s']:8.1f} bags/s in "
        f"batches of {batch}, {out['one_bag_per_step_per_s']:8.1f} one bag per step, "
        f"{out['ratio']:.2f}x"
    )
    return out


def learning(n_bags: int) -> dict:
    from inference.mil import MILRecipe, train_mil
    from inference.mil_synthetic import generated_bags

    data = generated_bags(n_bags, seed=1)
    cut = int(n_bags * 2 / 3)
    recipe = MILRecipe(max_epochs=30, early_stopping_patience=8, n_bootstrap=500)
    out = {}
    for label, clinical in (("image_only", False), ("with_clinical", True)):
        result = train_mil(
            train_bags=data.bags[:cut],
            val_bags=data.bags[cut:],
            classes=data.classes,
            recipe=recipe,
            use_clinical=clinical,
        )
        auc = result.metrics["n_plus_vs_n0"]["auc"]
        out[label] = {
            "auc": round(auc["value"], 4),
            "ci95": [round(v, 4) for v in auc["ci95"]],
            "accuracy": round(result.metrics["accuracy"], 4),
        }
        print(
            f"  {label:<14} validation AUC {auc['value']:.3f} "
            f"(95% CI {auc['ci95'][0]:.3f}-{auc['ci95'][1]:.3f}), "
            f"accuracy {result.metrics['accuracy']:.3f}"
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (CI)")
    parser.add_argument("--patch", type=int, default=40)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    n_patches = 512 if args.quick else 4096
    n_bags, epochs = (64, 2) if args.quick else (400, 5)
    print(f"MIL benchmark on CPU, {args.threads} torch thread(s){' (quick)' if args.quick else ''}")
    print("features:")
    feats = [
        features_per_second("resnet-small", n=n_patches, patch=args.patch, repeats=2),
        features_per_second(
            "mobilenetv2", n=n_patches, patch=args.patch, repeats=2, width_mult=0.5
        ),
    ]
    print("MIL training:")
    training = training_bags_per_second(n_bags=n_bags, dim=args.dim, epochs=epochs, batch=16)
    print("learning on generated bags (label from key instances and tumour size):")
    learned = learning(150 if args.quick else 600)
    print(
        json.dumps(
            {
                "benchmark": "mil",
                "quick": args.quick,
                "threads": args.threads,
                "features": feats,
                "training": training,
                "learning": learned,
            }
        )
    )


if __name__ == "__main__":
    main()
