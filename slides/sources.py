"""Opening slide files with large-image: which file to open, which sources are accepted, vendor."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import large_image

# Whole-slide sources only: a plain PNG/JPEG would open through the PIL source, but it is not a
# pyramidal slide and cannot be screened at a known physical scale.
ACCEPTED_SOURCES = ("openslide", "tiff", "dicom")
SLIDE_SUFFIXES = {".svs", ".tif", ".tiff", ".ndpi", ".scn", ".bif", ".svslide", ".vms", ".dcm"}

# Our own LRU (slides.tiles) caches open sources, so large-image's own caches are switched off.
large_image.config.setConfig("cache_backend", "python")
large_image.config.setConfig("cache_python_memory_portion", 64)


def resolve_slide_file(path: Path) -> Path:
    """The file large-image opens: the path itself, or for a DICOM folder its largest .dcm file."""
    if path.is_dir():
        dcm = sorted(path.glob("*.dcm"), key=lambda p: p.stat().st_size, reverse=True)
        if not dcm:
            raise FileNotFoundError(f"{path} is a folder without .dcm files")
        return dcm[0]
    return path


def preferred_sources(path: Path) -> tuple[str, ...]:
    """Accepted sources in the order to try them for this file: the format's own reader first."""
    if path.is_dir() or path.suffix.lower() == ".dcm":
        return ("dicom",)
    if path.suffix.lower() in {".tif", ".tiff"}:
        return ("tiff", "openslide")
    return ("openslide", "tiff")


def open_source(path: Path, *, sources: tuple[str, ...] | None = None, **kwargs: Any):
    """Open a slide with the first accepted large-image source that can read it.

    Edge tiles come back cropped to the image (what OpenSeadragon expects); interior tiles whose
    stored encoding is JPEG come back as the stored bytes, undecoded.
    """
    target = resolve_slide_file(path)
    if not large_image.tilesource.AvailableTileSources:
        large_image.tilesource.loadTileSources()
    errors = []
    for name in sources or preferred_sources(path):
        cls = large_image.tilesource.AvailableTileSources.get(name)
        if cls is None:
            continue
        try:
            return cls(str(target), edge="crop", encoding="JPEG", noCache=True, **kwargs)
        except Exception as exc:  # noqa: BLE001 - each source raises its own error types
            errors.append(f"{name}: {exc}")
    raise large_image.exceptions.TileSourceError("; ".join(errors) or "no accepted source")


def vendor_of(source) -> str:
    """Scanner vendor or container kind, best effort from the source's internal metadata."""
    try:
        internal = source.getInternalMetadata() or {}
    except Exception:  # noqa: BLE001
        internal = {}
    if source.name == "openslide":
        props = internal.get("openslide") or {}
        return str(props.get("openslide.vendor") or "openslide")
    if source.name == "dicom":
        dicom = internal.get("dicom_meta") or internal.get("dicom") or {}
        manufacturer = dicom.get("Manufacturer") if isinstance(dicom, dict) else None
        return f"DICOM ({manufacturer})" if manufacturer else "DICOM"
    if source.name == "tiff":
        return "generic tiled TIFF"
    return source.name
