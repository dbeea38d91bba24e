"""Generated CT and ultrasound images of lymph nodes with a known answer (never real patients).

Tests and benchmarks need images where the class is a known visual feature, so that a classifier
can be checked to learn it and a class-activation map to point at it:

* benign: an oval node (long axis about 1.5-2.2 times the short axis) with a fatty hilum, an
  eccentric notch of fat (CT: about -90 HU; ultrasound: echogenic) in the node's long axis;
* metastatic: a rounded node (long/short 1.0-1.35) without a hilum and with a necrotic or cystic
  focus at a random place inside it: hypoattenuating on CT (about 0 HU against the node's +40) and
  anechoic on ultrasound. The focus is *the* feature; its mask is returned (benign: all False).

Shape overlaps between the classes only a little; the focus never appears in benign nodes.

CT pixels are Hounsfield units (int16): fat around -100, node soft tissue about +40, a muscle band
at about +55, Gaussian noise. Ultrasound pixels are uint8 B-mode: echogenic background, a
hypoechoic node cortex, multiplicative Rayleigh speckle smoothed to a grain, depth attenuation.

:func:`write_node_image_set` writes a set of files plus a ``manifest.csv`` in the columns the slide
importer reads (case, node, file, status, patient, modality): ultrasound as PNG, CT as single-frame
DICOM with rescale slope/intercept, pixel spacing and a 40/400 soft-tissue window.
"""

from __future__ import annotations

import csv
import datetime as dt
from pathlib import Path

import numpy as np
from scipy import ndimage

__all__ = [
    "CT_WINDOW",
    "MODALITIES",
    "generate_node_image",
    "write_node_image_set",
]

MODALITIES: tuple[str, ...] = ("ct", "ultrasound")
CT_WINDOW: tuple[float, float] = (40.0, 400.0)  # centre, width in HU (soft tissue)
CT_PIXEL_SPACING_MM = 0.5
US_PIXEL_SPACING_MM = 0.1
_CT_RESCALE_INTERCEPT = -1024.0  # stored value = HU + 1024, unsigned, as many scanners write


def _check_modality(modality: str) -> str:
    if modality not in MODALITIES:
        raise ValueError(f"modality must be one of {', '.join(MODALITIES)}, not {modality!r}")
    return modality


def _ellipse(
    yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, a: float, b: float, theta: float
) -> np.ndarray:
    """Normalised radius (1 on the border) of an ellipse with semi-axes a (along theta) and b."""
    c, s = np.cos(theta), np.sin(theta)
    u = (xx - cx) * c + (yy - cy) * s
    v = -(xx - cx) * s + (yy - cy) * c
    return np.sqrt((u / a) ** 2 + (v / b) ** 2)


def _node_layout(
    rng: np.random.Generator, *, metastatic: bool, size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Node, hilum (benign) and focus (metastatic) masks on a ``size`` x ``size`` grid."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    cy = size / 2 + rng.uniform(-0.08, 0.08) * size
    cx = size / 2 + rng.uniform(-0.08, 0.08) * size
    theta = rng.uniform(0, np.pi)
    if metastatic:
        b = rng.uniform(0.2, 0.27) * size
        a = b * rng.uniform(1.0, 1.35)
    else:
        b = rng.uniform(0.13, 0.19) * size
        a = b * rng.uniform(1.5, 2.2)
    a = min(a, 0.4 * size)
    # a slightly lobulated border, so the outline is not a perfect ellipse
    angle = np.arctan2(yy - cy, xx - cx)
    wobble = 1 + 0.04 * np.sin(3 * angle + rng.uniform(0, 2 * np.pi))
    node = _ellipse(yy, xx, cy, cx, a, b, theta) <= wobble
    hilum = np.zeros_like(node)
    focus = np.zeros_like(node)
    c, s = np.cos(theta), np.sin(theta)
    if metastatic:
        # a focus at a random place well inside the node
        r = rng.uniform(0.32, 0.46) * b
        for _ in range(50):
            u, v = rng.uniform(-1, 1, size=2)
            if u * u + v * v <= 1:
                break
        reach_u, reach_v = max(a - 1.3 * r, 0), max(b - 1.3 * r, 0)
        fy = cy + u * reach_u * s + v * reach_v * c
        fx = cx + u * reach_u * c - v * reach_v * s
        squash = rng.uniform(0.75, 1.0)
        focus = (_ellipse(yy, xx, fy, fx, r, r * squash, rng.uniform(0, np.pi)) <= 1) & node
    else:
        # the hilum: fat entering the node at one end of its short axis
        side = rng.choice([-1.0, 1.0])
        hy = cy + side * b * 0.75 * c
        hx = cx - side * b * 0.75 * s
        hilum = (_ellipse(yy, xx, hy, hx, a * 0.45, b * 0.5, theta) <= 1) & node
    return node, hilum, focus


def generate_node_image(
    rng: np.random.Generator, *, metastatic: bool, modality: str, size: int = 256
) -> tuple[np.ndarray, np.ndarray]:
    """One generated node image and the bool mask of its class feature (the metastatic focus;
    all False for a benign node).

    ``modality="ct"`` gives int16 Hounsfield units, ``"ultrasound"`` uint8 B-mode pixels; both
    ``size`` x ``size``.
    """
    _check_modality(modality)
    if size < 32:
        raise ValueError(f"size must be at least 32 px, not {size}")
    node, hilum, focus = _node_layout(rng, metastatic=metastatic, size=size)
    smooth = size / 256
    if modality == "ct":
        hu = np.full((size, size), -100.0, dtype=np.float32)
        # a band of muscle along one edge, so the background is not uniform
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
        ang = rng.uniform(0, 2 * np.pi)
        dist = (xx - size / 2) * np.cos(ang) + (yy - size / 2) * np.sin(ang)
        hu[dist > size * rng.uniform(0.38, 0.46)] = 55.0
        hu[node] = 40.0 + rng.normal(0, 3)
        hu[hilum] = -90.0
        hu[focus] = rng.uniform(-15.0, 5.0)
        hu = ndimage.gaussian_filter(hu, 1.2 * smooth)  # partial-volume edges
        hu += rng.normal(0, rng.uniform(8, 12), size=hu.shape).astype(np.float32)
        return np.clip(np.round(hu), -1024, 3071).astype(np.int16), focus
    # ultrasound: echo amplitude map, then speckle
    echo = np.full((size, size), rng.uniform(0.45, 0.6), dtype=np.float32)
    echo[node] = rng.uniform(0.22, 0.3)
    echo[hilum] = rng.uniform(0.7, 0.85)
    echo[focus] = 0.02
    echo = ndimage.gaussian_filter(echo, 1.0 * smooth)
    speckle = rng.rayleigh(1.0, size=echo.shape).astype(np.float32)
    speckle = ndimage.gaussian_filter(speckle, 0.8 * smooth) / 1.0
    depth = np.linspace(1.0, rng.uniform(0.7, 0.85), size, dtype=np.float32)[:, None]
    gain = rng.uniform(180, 230)
    pixels = echo * speckle * depth * gain
    return np.clip(np.round(pixels), 0, 255).astype(np.uint8), focus


def _write_ct_dicom(
    path: Path, hu: np.ndarray, *, patient: str, index: int, seed: int, name: str
) -> None:
    """One single-frame CT DICOM: stored = HU - intercept (uint16), slope 1, a 40/400 window."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    def uid(*parts: object) -> str:
        return generate_uid(entropy_srcs=["nodescope-synthetic", str(seed), *map(str, parts)])

    sop_uid = uid(patient, index, "sop")
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = uid(patient, "study")
    ds.SeriesInstanceUID = uid(patient, "series")
    ds.FrameOfReferenceUID = uid(patient, "frame")
    ds.Modality = "CT"
    ds.PatientID = patient
    ds.PatientName = "Synthetic^" + patient
    ds.StudyDate = ds.SeriesDate = dt.date(2026, 1, 1).strftime("%Y%m%d")
    ds.SeriesDescription = "Generated node image (synthetic)"
    ds.ImageComments = name
    ds.InstanceNumber = index + 1
    ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
    ds.Rows, ds.Columns = hu.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.RescaleIntercept = _CT_RESCALE_INTERCEPT
    ds.RescaleSlope = 1.0
    ds.RescaleType = "HU"
    ds.PixelSpacing = [CT_PIXEL_SPACING_MM, CT_PIXEL_SPACING_MM]
    ds.SliceThickness = 1.0
    ds.WindowCenter, ds.WindowWidth = CT_WINDOW
    stored = (hu.astype(np.int32) - int(_CT_RESCALE_INTERCEPT)).clip(0, 65535).astype(np.uint16)
    ds.PixelData = stored.tobytes()
    ds.save_as(path, enforce_file_format=True)


def write_node_image_set(
    folder: Path | str,
    *,
    modality: str,
    n_patients: int,
    images_per_patient: int = 1,
    seed: int = 0,
    size: int = 256,
) -> Path:
    """Write generated node images for ``n_patients`` patients and a ``manifest.csv``; return the
    manifest's path.

    Half the patients (rounded down) are metastatic, in a seeded random order. Each patient is one
    case (``IMG-<modality>-<n>``) and each of its ``images_per_patient`` images is a node of its
    own ("node 1", "node 2", ...) sharing the patient's status (positive/negative). Ultrasound
    images are PNG, CT images DICOM (``.dcm``). Reproducible for a seed.
    """
    from PIL import Image

    _check_modality(modality)
    if n_patients < 1 or images_per_patient < 1:
        raise ValueError("n_patients and images_per_patient must be at least 1")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    n_pos = n_patients // 2
    status = rng.permutation([True] * n_pos + [False] * (n_patients - n_pos))
    rows: list[dict[str, str]] = []
    short = "CT" if modality == "ct" else "US"
    for p in range(n_patients):
        patient = f"PT-{short}-{seed}-{p + 1:04d}"
        case = f"IMG-{short}-{seed}-{p + 1:04d}"
        metastatic = bool(status[p])
        for i in range(images_per_patient):
            pixels, _ = generate_node_image(
                rng, metastatic=metastatic, modality=modality, size=size
            )
            stem = f"{case}-node{i + 1}"
            if modality == "ct":
                file = f"{stem}.dcm"
                _write_ct_dicom(
                    folder / file, pixels, patient=patient, index=i, seed=seed, name=stem
                )
            else:
                file = f"{stem}.png"
                Image.fromarray(pixels, mode="L").save(folder / file)
            rows.append(
                {
                    "case": case,
                    "node": f"node {i + 1}",
                    "file": file,
                    "status": "positive" if metastatic else "negative",
                    "patient": patient,
                    "modality": modality,
                }
            )
    manifest = folder / "manifest.csv"
    with open(manifest, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(
            fh, fieldnames=["case", "node", "file", "status", "patient", "modality"]
        )
        writer.writeheader()
        writer.writerows(rows)
    return manifest
