"""Does each whole-image architecture learn the generated metastatic focus, and do its class
activation maps peak on it? (Not a test: sizes and epochs a CPU suite cannot afford.)

    python -m inference.experiments.cam_focus [--quick] [--device cuda] [--size 128]
        [--width 0.5] [--train 1024] [--epochs 12] [--models resnet18,resnet50,inception-v3]
        [--modality ultrasound|ct] [--benign filled|generated]

Images come from :func:`inference.synthetic_images.generate_node_image`. ``--benign filled`` (the
default) makes the focus the only difference between the classes: benign images are generated
metastatic ones with the focus filled with pixels of the node around it; ``generated`` uses the
generator's benign nodes (oval, with a fatty hilum), so shape separates the classes too and a net
may learn shape instead of the focus. CT is shown through the 40/400 soft-tissue window. Each net
(``width_mult`` ``--width``, ResNet-18 at widths x 64..512, total stride 8) trains with Adam and
horizontal flips, its batch-norm statistics are recomputed over the training set, and on held-out
metastatic images both maps (:mod:`inference.cam_maps`) are compared with the focus mask: the
share of peaks within half a feature cell of the focus, the median distance, and the share of
the map's brightest tenth that lies on the focus (dilated by half a cell). The last output line
is one JSON object.

Measured on 2 shared CPU cores, one torch thread (``--size 64 --width 0.25 --train 384 --epochs
10 --test 48``; ultrasound; held-out accuracy, then the share of peaks within 4 px of the focus,
the same for CAM and Grad-CAM):

=============  ======================  =======================
net            benign filled (focus    benign as generated
               the only difference)    (shape differs too)
=============  ======================  =======================
resnet18       1.00, 1.00 (39 s)       1.00, 0.58 (20 s)
resnet50       1.00, 1.00 (69 s)       1.00, 0.75 (55 s)
inception-v3   1.00, 0.79 (56 s)       1.00, 0.62 (68 s)
=============  ======================  =======================

Where shape separates the classes too, the nets learn it as well and the maps spread over the
node: they still peak near the focus more often than not.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from inference.cam_maps import class_activation_map, model_input  # noqa: E402
from inference.models import build_model  # noqa: E402
from inference.synthetic_images import CT_WINDOW, generate_node_image  # noqa: E402
from inference.training import recalibrate_batch_norm  # noqa: E402

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
STRIDE = 8


def windowed(hu: np.ndarray, center: float, width: float) -> np.ndarray:
    """8-bit display values through a linear DICOM window (as slides.node_images.apply_window)."""
    scaled = ((hu.astype(np.float32) - (center - 0.5)) / (width - 1) + 0.5) * 255.0
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def images(
    n: int, *, seed: int, size: int, modality: str, benign: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(n, size, size) uint8 images, their focus masks and labels (alternating benign,
    metastatic)."""
    rng = np.random.default_rng(seed)
    pixels, masks, labels = [], [], []
    for i in range(n):
        metastatic = i % 2 == 1
        make_metastatic = metastatic or benign == "filled"
        px, focus = generate_node_image(
            rng, metastatic=make_metastatic, modality=modality, size=size
        )
        if modality == "ct":
            px = windowed(px, *CT_WINDOW)
        if not metastatic and benign == "filled":
            inner = ndimage.binary_dilation(focus, iterations=max(1, size // 64))
            ring = ndimage.binary_dilation(focus, iterations=max(4, size // 16)) & ~inner
            px = px.copy()
            px[inner] = rng.choice(px[ring], size=int(inner.sum()))
            focus = np.zeros_like(focus)
        pixels.append(px)
        masks.append(focus)
        labels.append(int(metastatic))
    return np.stack(pixels), np.stack(masks), np.array(labels)


def net(name: str, *, size: int, width: float) -> torch.nn.Module:
    kw: dict = {"output_stride": STRIDE}
    if name == "resnet18":
        kw["widths"] = tuple(max(8, int(round(w * width))) for w in (64, 128, 256, 512))
    else:
        kw["width_mult"] = width
    if name == "inception-v3":
        kw["dropout"] = 0.0  # learns far faster from scratch on a few hundred images
    return build_model(name, num_classes=2, input_size=size, **kw)


def train(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    epochs: int,
    lr: float,
    batch: int,
    device: torch.device,
) -> float:
    model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(x), generator=generator).split(batch):
            xb, yb = x[idx].to(device), y[idx].to(device)
            if torch.rand(1, generator=generator) < 0.5:
                xb = xb.flip(3)
            loss = F.cross_entropy(model(xb), yb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    recalibrate_batch_norm(
        model, ((x[i].to(device), None) for i in torch.arange(len(x)).split(batch))
    )
    model.eval()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def evaluate(
    model: torch.nn.Module, pixels: np.ndarray, masks: np.ndarray, labels: np.ndarray, size: int
) -> dict:
    device = next(model.parameters()).device
    x = torch.cat([model_input(p, size=size, mean=MEAN, std=STD) for p in pixels])
    with torch.no_grad():
        predicted = torch.cat([model(b.to(device)).argmax(1).cpu() for b in x.split(64)]).numpy()
    out: dict = {"accuracy": round(float((predicted == labels).mean()), 3)}
    half_cell = STRIDE / 2
    for method in ("cam", "grad-cam"):
        distances, on_focus = [], []
        for i in np.nonzero(labels == 1)[0]:
            result = class_activation_map(model, x[i : i + 1], class_index=1, method=method)
            focus = masks[i]
            ys, xs = np.nonzero(focus)
            r, c = result.peak
            distances.append(float(np.sqrt((ys - r) ** 2 + (xs - c) ** 2).min()))
            near = ndimage.binary_dilation(focus, iterations=int(half_cell))
            top = result.values >= np.quantile(result.values, 0.9)
            on_focus.append(float(near[top].mean()) if top.any() else 0.0)
        distances_a = np.array(distances)
        out[method] = {
            "peaks_on_focus": round(float((distances_a <= half_cell).mean()), 3),
            "median_distance_px": round(float(np.median(distances_a)), 2),
            "top_tenth_on_focus": round(float(np.mean(on_focus)), 3),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="48 px, narrow, few images")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if any)")
    parser.add_argument("--models", default="resnet18,resnet50,inception-v3")
    parser.add_argument("--size", type=int)
    parser.add_argument("--width", type=float)
    parser.add_argument("--train", type=int, help="training images")
    parser.add_argument("--test", type=int, default=64, help="held-out images")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--modality", choices=("ultrasound", "ct"), default="ultrasound")
    parser.add_argument("--benign", choices=("filled", "generated"), default="filled")
    parser.add_argument("--threads", type=int)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    size = args.size or (48 if args.quick else 128)
    width = args.width or (0.25 if args.quick else 0.5)
    n_train = args.train or (192 if args.quick else 1024)
    epochs = args.epochs or (8 if args.quick else 15)
    print(
        f"CAM on the generated focus: {args.modality}, benign {args.benign}, {size} px, width"
        f" {width}, {n_train} training images, {epochs} epochs, on {device}",
        flush=True,
    )
    train_px, _, train_y = images(
        n_train, seed=0, size=size, modality=args.modality, benign=args.benign
    )
    test_px, test_masks, test_y = images(
        args.test, seed=99, size=size, modality=args.modality, benign=args.benign
    )
    x = torch.cat([model_input(p, size=size, mean=MEAN, std=STD) for p in train_px])
    y = torch.from_numpy(train_y)
    figures: dict = {
        "experiment": "cam_focus",
        "quick": args.quick,
        "device": str(device),
        "modality": args.modality,
        "benign": args.benign,
        "size": size,
        "width": width,
        "train": n_train,
        "epochs": epochs,
        "models": {},
    }
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        torch.manual_seed(0)
        model = net(name, size=size, width=width)
        seconds = train(model, x, y, epochs=epochs, lr=args.lr, batch=args.batch, device=device)
        result = {
            "train_seconds": round(seconds, 1),
            **evaluate(model, test_px, test_masks, test_y, size),
        }
        figures["models"][name] = result
        print(
            f"  {name:<13} accuracy {result['accuracy']:.2f}; peaks within {STRIDE // 2} px of the"
            f" focus: CAM {result['cam']['peaks_on_focus']:.2f}, Grad-CAM"
            f" {result['grad-cam']['peaks_on_focus']:.2f} (median"
            f" {result['cam']['median_distance_px']:.1f} px); brightest tenth on the focus"
            f" {result['cam']['top_tenth_on_focus']:.2f}; trained in {seconds:.0f} s",
            flush=True,
        )
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
