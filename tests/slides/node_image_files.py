"""Small node image files written at test time: PNG, JPEG, 8/16-bit TIFF and DICOM (pydicom)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile
from PIL import Image


def write_png(path: Path, *, size: tuple[int, int] = (96, 64), mode: str = "L", seed: int = 0):
    """A PNG of size (width, height); mode "L", "RGB" or "I;16" (16-bit grey)."""
    width, height = size
    rng = np.random.default_rng(seed)
    if mode == "I;16":
        array = rng.integers(0, 4096, (height, width), dtype=np.uint16)
        Image.fromarray(array).save(path)
    elif mode == "RGB":
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)
    else:
        Image.fromarray(rng.integers(0, 256, (height, width), dtype=np.uint8)).save(path)
    return path


def write_jpeg(path: Path, *, size: tuple[int, int] = (80, 48), seed: int = 0) -> Path:
    width, height = size
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(
        path, format="JPEG", quality=90
    )
    return path


def write_tiff(
    path: Path,
    *,
    size: tuple[int, int] = (72, 40),
    dtype=np.uint8,
    rgb: bool = False,
    px_per_cm: float | None = None,
    seed: int = 0,
) -> Path:
    width, height = size
    rng = np.random.default_rng(seed)
    high = 256 if dtype == np.uint8 else 65536
    shape = (height, width, 3) if rgb else (height, width)
    array = rng.integers(0, high, shape, dtype=np.int64).astype(dtype)
    kwargs = {}
    if px_per_cm:
        kwargs = {"resolution": (px_per_cm, px_per_cm), "resolutionunit": 3}
    tifffile.imwrite(path, array, photometric="rgb" if rgb else "minisblack", **kwargs)
    return path


def ct_values(size: tuple[int, int] = (64, 64)) -> np.ndarray:
    """HU values (int16): background -1000, with known pixels in the first row."""
    width, height = size
    hu = np.full((height, width), -1000, dtype=np.int16)
    hu[8:40, 8:40] = 40  # soft tissue
    hu[0, 0], hu[0, 1], hu[0, 2], hu[0, 3] = 40, -160, 240, 1000
    return hu


def write_dicom(
    path: Path,
    *,
    hu: np.ndarray | None = None,
    intercept: float = -1024.0,
    slope: float = 1.0,
    spacing_mm: tuple[float, float] | None = (0.7, 0.6),
    window: tuple[float, float] | None = (40.0, 400.0),
    frames: int = 1,
    modality: str = "CT",
    transfer_syntax: str | None = None,
    rows_cols: tuple[int, int] | None = None,
    photometric: str = "MONOCHROME2",
    rle: bool = False,
) -> Path:
    """A single-frame (or `frames`-frame) uncompressed CT DICOM whose stored values are
    (hu - intercept) / slope. `rows_cols` overrides the declared size (to fake a bomb); `rle`
    compresses it (RLE Lossless)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    hu = ct_values() if hu is None else hu
    stored = np.rint((hu.astype(np.float64) - intercept) / slope).astype(np.uint16)
    if frames > 1:
        stored = np.stack([stored] * frames)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = transfer_syntax or ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = modality
    ds.Manufacturer = "TestCo"
    ds.PatientID = "anon"
    rows, cols = rows_cols or hu.shape
    ds.Rows, ds.Columns = rows, cols
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.RescaleIntercept = intercept
    ds.RescaleSlope = slope
    if spacing_mm:
        ds.PixelSpacing = list(spacing_mm)
    if window:
        ds.WindowCenter, ds.WindowWidth = window
    if meta.TransferSyntaxUID.is_compressed:  # fake compressed frames (tests of refusals)
        from pydicom.encaps import encapsulate

        ds.PixelData = encapsulate([b"\xff\xd8\xff\xf7" + stored.tobytes()[:256]])
        ds["PixelData"].VR = "OB"
    else:
        ds.PixelData = stored.tobytes()
    if rle:  # RLE Lossless, which pydicom decodes without plugins
        from pydicom.uid import RLELossless

        ds.compress(RLELossless, stored)
    ds.save_as(path, enforce_file_format=True)
    return path
