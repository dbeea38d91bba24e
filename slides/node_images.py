"""Plain images of a node (CT, ultrasound, other): inspection, registration, windowing, rendering.

A node image is one 2-D picture: PNG, JPEG, an 8- or 16-bit TIFF (grey or RGB), or a single-frame
DICOM. It is registered as a `Slide` row with `source="node-image"` and a `modality` other than
"slide", so cases, nodes, the viewer, annotations and reader studies treat it like a slide. Its
pixels are served as a small pyramid of 256 px tiles computed from `render_node_image`, in the same
z/x/y scheme as large-image (z=0: the whole image in one tile), see `node_image_tile`.

- CT values are Hounsfield units: DICOM pixels go through RescaleSlope/RescaleIntercept.
- 16-bit and DICOM data are shown through a display window (centre, width): the request's, else
  the image's own (DICOM WindowCenter/WindowWidth or the manifest's), else the data's min..max.
  8-bit images pass through unchanged.
- PixelSpacing (mm) becomes mpp_x/mpp_y (µm); images without a physical scale keep mpp empty.
- Refused with `SlideImportError` naming the file, before anything is written: unsupported types,
  multi-frame DICOM, DICOM whose compressed transfer syntax no installed decoder reads, corrupt or
  truncated files, images whose headers declare more pixels than Pillow's limit (judged before any
  pixel is decoded), DICOM whose transfer syntax UID is no standard one (named in the refusal),
  and files already imported in the node's lab (same checksum; other labs may hold the file).
"""

from __future__ import annotations

import io
import math
import threading
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile
from django.conf import settings
from PIL import Image, ImageFile

from .ingest import (
    SlideImportError,
    _check_import_root,
    _short,
    create_slide_row,
    file_checksum,
    pillow_pixel_limit,
    refuse_duplicate,
)
from .models import Node, Slide

SOURCE = "node-image"
TILE_SIZE = 256
NODE_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".dcm", ".dicom"}
NODE_IMAGE_MODALITIES = (Slide.Modality.CT, Slide.Modality.ULTRASOUND, Slide.Modality.IMAGE)

# Standard CT display windows (centre, width) in HU, as tabulated by Radiopaedia, "Windowing (CT)"
# (https://radiopaedia.org/articles/windowing-ct): soft tissue W 350–400 / L 20–60 (neck soft
# tissue is commonly read at 40/400), mediastinum W 350 / L 50, lungs W 1500 / L -600,
# bone W 1800 / L 400.
WINDOW_PRESETS: dict[str, tuple[float, float]] = {
    "soft-tissue": (40.0, 400.0),
    "mediastinum": (50.0, 350.0),
    "lung": (-600.0, 1500.0),
    "bone": (400.0, 1800.0),
}

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"
TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


@dataclass(frozen=True)
class NodeImageInfo:
    """What is read from a node image file."""

    kind: str  # "PNG", "JPEG", "TIFF", "DICOM"
    width: int
    height: int
    channels: int
    bits: int  # 8, or 16 for 16-bit and DICOM data that need a window
    mpp_x: float | None
    mpp_y: float | None
    window_center: float | None
    window_width: float | None
    vendor: str
    inverted: bool = False  # DICOM MONOCHROME1: the lowest values are shown white


# ---- reading -------------------------------------------------------------------------------------


def file_kind(path: Path) -> str:
    """The format of a file from its first bytes: PNG, JPEG, TIFF or DICOM; else refused."""
    with open(path, "rb") as fh:
        head = fh.read(132)
    if head.startswith(PNG_MAGIC):
        return "PNG"
    if head.startswith(JPEG_MAGIC):
        return "JPEG"
    if head[:4] in TIFF_MAGIC:
        return "TIFF"
    if head[128:132] == b"DICM":
        return "DICOM"
    if path.suffix.lower() in {".dcm", ".dicom"} and len(head) >= 8:
        return "DICOM"  # DICOM without the 128-byte preamble; pydicom decides
    raise SlideImportError(
        path, "not a PNG, JPEG, TIFF or DICOM image (unrecognised or corrupt file header)"
    )


def _check_pixels_declared(path: Path, width: int, height: int, what: str) -> None:
    limit = pillow_pixel_limit()
    if width <= 0 or height <= 0:
        raise SlideImportError(path, f"{what} declares an empty image ({width} × {height} px)")
    if width * height > limit:
        raise SlideImportError(
            path,
            f"decompression bomb refused: {what} declaring {width:,} × {height:,} px "
            f"({width * height:,} pixels), more than the limit of {limit:,} "
            "(Pillow's MAX_IMAGE_PIXELS)",
        )


def _read_pillow(path: Path, kind: str) -> tuple[np.ndarray, dict]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            img = Image.open(path)
        except Image.DecompressionBombError as exc:
            raise SlideImportError(path, f"decompression bomb refused: {exc}") from exc
        except Exception as exc:  # noqa: BLE001
            raise SlideImportError(path, f"corrupt {kind} header ({_short(exc)})") from exc
        with img:
            _check_pixels_declared(path, *img.size, f"a {kind} image")
            if getattr(img, "n_frames", 1) > 1:
                raise SlideImportError(
                    path, f"holds {img.n_frames} frames; a node image is a single frame"
                )
            if ImageFile.LOAD_TRUNCATED_IMAGES:  # never accept a half-decoded image
                raise SlideImportError(path, "truncated images are accepted by Pillow's settings")
            try:
                img.load()
            except Exception as exc:  # noqa: BLE001 - truncated data, bad CRC, broken huffman
                raise SlideImportError(
                    path,
                    f"{kind} is truncated or corrupt: pixels cannot be decoded ({_short(exc)})",
                ) from exc
            if img.mode in {"I;16", "I;16B", "I;16L", "I"}:
                array = np.asarray(img, dtype=np.float32)
                bits = 16
            else:
                if img.mode not in {"L", "RGB"}:
                    img = img.convert("RGB" if img.mode not in {"1", "LA"} else "L")
                array = np.asarray(img)
                bits = 8
    return array, {"bits": bits}


def _read_tiff(path: Path) -> tuple[np.ndarray, dict]:
    try:
        tif = tifffile.TiffFile(path, _multifile=False)
    except Exception as exc:  # noqa: BLE001
        raise SlideImportError(path, f"corrupt TIFF header ({_short(exc)})") from exc
    with tif:
        if len(tif.pages) > 1:
            raise SlideImportError(
                path,
                f"holds {len(tif.pages)} images; a node image is a single image "
                "(import whole slides as slides)",
            )
        page = tif.pages[0]
        _check_pixels_declared(path, int(page.imagewidth), int(page.imagelength), "a TIFF image")
        try:
            array = page.asarray()
        except Exception as exc:  # noqa: BLE001
            raise SlideImportError(
                path, f"TIFF is truncated or corrupt: pixels cannot be decoded ({_short(exc)})"
            ) from exc
        mpp = _tiff_mpp(page)
    if array.ndim == 3 and array.shape[0] in (3, 4) and array.shape[-1] not in (3, 4):
        array = np.moveaxis(array, 0, -1)  # planar configuration
    if array.ndim == 3 and array.shape[-1] == 4:
        array = array[..., :3]
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] != 3):
        raise SlideImportError(path, f"TIFF of shape {array.shape} is neither grey nor RGB")
    if array.dtype == np.uint8:
        return array, {"bits": 8, "mpp": mpp}
    if array.dtype == bool:
        return (array.astype(np.uint8) * 255), {"bits": 8, "mpp": mpp}
    if array.dtype.kind in "uif":
        return array.astype(np.float32), {"bits": 16, "mpp": mpp}
    raise SlideImportError(path, f"TIFF sample type {array.dtype} is not supported")


def _tiff_mpp(page) -> tuple[float, float] | None:
    """µm per pixel from the resolution tags, only when the unit is the centimetre."""
    try:
        tags = page.tags
        unit = tags["ResolutionUnit"].value if "ResolutionUnit" in tags else None
        if int(unit or 0) != 3:  # 3 = centimetre; inches default to a meaningless 72 dpi
            return None
        xres = tags["XResolution"].value
        yres = tags["YResolution"].value
        px_per_cm_x = xres[0] / xres[1]
        px_per_cm_y = yres[0] / yres[1]
        return 10_000 / px_per_cm_x, 10_000 / px_per_cm_y
    except Exception:  # noqa: BLE001
        return None


def _first(value) -> float | None:
    """The first value of a possibly multi-valued DICOM number."""
    from pydicom.multival import MultiValue

    if isinstance(value, list | tuple | MultiValue):
        value = value[0] if len(value) else None
    if value is None or value == "":
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _read_dicom(path: Path) -> tuple[np.ndarray, dict]:
    import pydicom
    from pydicom.pixels import apply_rescale

    try:
        with warnings.catch_warnings():  # pydicom warns on every odd element; we judge below
            warnings.simplefilter("ignore", UserWarning)
            ds = pydicom.dcmread(path, force=True)
    except Exception as exc:  # noqa: BLE001
        raise SlideImportError(path, f"corrupt DICOM header ({_short(exc)})") from exc
    if "PixelData" not in ds:
        raise SlideImportError(path, "DICOM file holds no image (no Pixel Data)")
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    _check_pixels_declared(path, cols, rows, "a DICOM image")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise SlideImportError(
            path, f"multi-frame DICOM ({frames} frames) refused: import single frames"
        )
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if syntax is not None and not pydicom.uid.UID(str(syntax)).is_transfer_syntax:
        raise SlideImportError(
            path,
            f"unknown DICOM transfer syntax {str(syntax)!r} (not a transfer syntax UID of the "
            "DICOM standard); export uncompressed (Explicit VR Little Endian)",
        )
    try:
        raw = ds.pixel_array
    except Exception as exc:  # noqa: BLE001
        if syntax is not None and pydicom.uid.UID(str(syntax)).is_compressed:
            raise SlideImportError(
                path,
                f"compressed DICOM transfer syntax {syntax.name} ({syntax}) cannot be decoded "
                f"here ({_short(exc)}); export uncompressed (Explicit VR Little Endian)",
            ) from exc
        raise SlideImportError(
            path, f"DICOM is truncated or corrupt: pixels cannot be decoded ({_short(exc)})"
        ) from exc
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if raw.ndim == 3 and samples == 1:
        raise SlideImportError(path, "multi-frame DICOM refused: import single frames")
    meta: dict = {"photometric": photometric}
    if samples == 3:
        if raw.dtype != np.uint8:
            array = raw.astype(np.float32)
            meta["bits"] = 16
        else:
            array = raw
            meta["bits"] = 8
    else:
        array = np.asarray(apply_rescale(raw, ds), dtype=np.float32)
        meta["bits"] = 16
        meta["window"] = (_first(ds.get("WindowCenter")), _first(ds.get("WindowWidth")))
        if meta["window"][1] is not None and meta["window"][1] <= 0:
            meta["window"] = (None, None)
    meta["mpp"] = _dicom_mpp(ds)
    manufacturer = str(ds.get("Manufacturer", "") or "").strip()
    meta["vendor"] = f"DICOM ({manufacturer})" if manufacturer else "DICOM"
    return array, meta


def _dicom_mpp(ds) -> tuple[float, float] | None:
    """µm per pixel: PixelSpacing (mm, row spacing then column spacing), else the first
    ultrasound region's PhysicalDeltaX/Y when its unit is cm (code 3)."""
    spacing = ds.get("PixelSpacing") or ds.get("ImagerPixelSpacing")
    if spacing is not None and len(spacing) == 2:
        row_mm, col_mm = float(spacing[0]), float(spacing[1])
        if row_mm > 0 and col_mm > 0:
            return col_mm * 1000, row_mm * 1000
    regions = ds.get("SequenceOfUltrasoundRegions")
    if regions:
        region = regions[0]
        if (
            int(region.get("PhysicalUnitsXDirection", 0) or 0) == 3
            and int(region.get("PhysicalUnitsYDirection", 0) or 0) == 3
        ):
            dx, dy = abs(float(region.PhysicalDeltaX)), abs(float(region.PhysicalDeltaY))
            if dx > 0 and dy > 0:
                return dx * 10_000, dy * 10_000
    return None


def read_node_image(path: Path) -> tuple[np.ndarray, NodeImageInfo]:
    """Decode a node image file: its pixels (uint8 for 8-bit data, float32 values otherwise,
    HU for CT) and what was read from it. Refuses with `SlideImportError`."""
    path = Path(path)
    if not path.is_file():
        raise SlideImportError(path, "file not found")
    if path.stat().st_size == 0:
        raise SlideImportError(path, "file is empty")
    kind = file_kind(path)
    if kind in {"PNG", "JPEG"}:
        array, meta = _read_pillow(path, kind)
    elif kind == "TIFF":
        array, meta = _read_tiff(path)
    else:
        array, meta = _read_dicom(path)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    height, width = array.shape[:2]
    if meta["bits"] != 8 and not np.isfinite(array).all():
        raise SlideImportError(path, "image holds values that are not finite numbers")
    mpp = meta.get("mpp")
    center, width_w = meta.get("window") or (None, None)
    array = np.ascontiguousarray(array)
    array.setflags(write=False)  # shared through the LRU: nobody may change it in place
    info = NodeImageInfo(
        kind=kind,
        width=int(width),
        height=int(height),
        channels=1 if array.ndim == 2 else 3,
        bits=meta["bits"],
        mpp_x=mpp[0] if mpp else None,
        mpp_y=mpp[1] if mpp else None,
        window_center=center if width_w else None,
        window_width=width_w if center is not None else None,
        vendor=meta.get("vendor", kind),
        inverted=meta.get("photometric") == "MONOCHROME1",
    )
    return array, info


def inspect_node_image(path: Path) -> NodeImageInfo:
    """Check that a node image file decodes and read its size, scale and window."""
    path = Path(path)
    _check_suffix(path)
    _array, info = read_node_image(path)
    return info


def _check_suffix(path: Path) -> None:
    if path.suffix.lower() not in NODE_IMAGE_SUFFIXES:
        raise SlideImportError(
            path,
            f"unsupported file type {path.suffix or '(none)'!r} for a node image; "
            f"expected one of {sorted(NODE_IMAGE_SUFFIXES)}",
        )


# ---- registering ---------------------------------------------------------------------------------


def pyramid_levels(width: int, height: int, tile: int = TILE_SIZE) -> int:
    """Levels of large-image's pyramid for this size: the top level fits in one tile."""
    return max(1, math.ceil(math.log2(max(width / tile, height / tile, 1))) + 1)


def parse_modality(value: str) -> str:
    """A node-image modality from a word ("ct", "ultrasound"/"us", "image"); ValueError if not."""
    word = (value or "").strip().lower()
    aliases = {"us": "ultrasound", "ultrasonography": "ultrasound", "other": "image"}
    word = aliases.get(word, word)
    if word not in NODE_IMAGE_MODALITIES:
        raise ValueError(
            f"unknown modality {value!r} for a node image; use one of "
            f"{', '.join(m.value for m in NODE_IMAGE_MODALITIES)}"
        )
    return word


def check_window(center: float | None, width: float | None) -> None:
    """Refuse (ValueError) a window with only one of its two numbers, or a width that is not > 0."""
    if (center is None) != (width is None):
        raise ValueError("window needs both window_center and window_width")
    if width is not None and not (math.isfinite(width) and width > 0):
        raise ValueError(f"window_width must be a number > 0, not {width!r}")
    if center is not None and not math.isfinite(center):
        raise ValueError(f"window_center must be a finite number, not {center!r}")


def register_node_image(
    *,
    node: Node,
    path: Path,
    modality: str,
    name: str | None = None,
    user=None,
    synthetic: bool = False,
    window_center: float | None = None,
    window_width: float | None = None,
) -> Slide:
    """Inspect `path` and register it as an image of `node` (modality ct, ultrasound or image).

    A window given here overrides the file's own; refuses duplicates by checksum.
    """
    path = Path(path).resolve()
    try:
        modality = parse_modality(modality)
        check_window(window_center, window_width)
    except ValueError as exc:
        raise SlideImportError(path, str(exc)) from exc
    _check_import_root(path)
    _check_suffix(path)
    array, info = read_node_image(path)
    checksum, size = file_checksum(path)
    refuse_duplicate(path, checksum, what="image", node=node, user=user)
    if window_center is None and info.bits != 8:
        window_center, window_width = info.window_center, info.window_width
    slide = create_slide_row(
        path,
        checksum=checksum,
        size=size,
        node=node,
        name=name,
        user=user,
        synthetic=synthetic,
        source=SOURCE,
        vendor=info.vendor,
        width=info.width,
        height=info.height,
        levels=pyramid_levels(info.width, info.height),
        tile_width=TILE_SIZE,
        tile_height=TILE_SIZE,
        mpp_x=info.mpp_x,
        mpp_y=info.mpp_y,
        magnification=None,
        associated_images=[],
        modality=modality,
        window_center=window_center,
        window_width=window_width,
    )
    _decoded.put(checksum, (array, info))
    return slide


# ---- decoded pixels, windowing, rendering ----------------------------------------------------------


class _ByteLRU:
    """A thread-safe LRU bounded by the total bytes of the numpy arrays it holds."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._items: OrderedDict = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    @staticmethod
    def _size(value) -> int:
        array = value[0] if isinstance(value, tuple) else value
        return int(getattr(array, "nbytes", 0))

    def get(self, key):
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key, value) -> None:
        size = self._size(value)
        if size > self.max_bytes:
            return
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._bytes -= self._size(old)
            self._items[key] = value
            self._bytes += size
            while self._bytes > self.max_bytes and self._items:
                _k, dropped = self._items.popitem(last=False)
                self._bytes -= self._size(dropped)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0

    def __len__(self) -> int:
        return len(self._items)


_decoded = _ByteLRU(int(getattr(settings, "NODE_IMAGE_CACHE_BYTES", 256 * 1024 * 1024)))
_rendered = _ByteLRU(int(getattr(settings, "NODE_IMAGE_RENDER_CACHE_BYTES", 128 * 1024 * 1024)))


def decoded_pixels(slide: Slide) -> tuple[np.ndarray, NodeImageInfo]:
    """The decoded pixels of a node image (HU for CT), from a per-process LRU keyed by checksum."""
    cached = _decoded.get(slide.checksum)
    if cached is None:
        cached = read_node_image(Path(slide.file_path))
        _decoded.put(slide.checksum, cached)
    return cached


def apply_window(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """8-bit display values through a linear window, as DICOM PS3.3 C.11.2.1.2.1 defines it:
    values at or below c - 0.5 - (w-1)/2 are 0, above c - 0.5 + (w-1)/2 are 255, linear between.
    E.g. window 40/400: HU -160 → 0, HU 40 → 128, HU 240 → 255."""
    if width <= 1:
        return np.where(values > center - 0.5, 255, 0).astype(np.uint8)
    scaled = ((values - (center - 0.5)) / (width - 1) + 0.5) * 255.0
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def default_window(slide: Slide, values: np.ndarray) -> tuple[float, float]:
    """The slide's own window, else one spanning the data's min..max."""
    if slide.window_center is not None and slide.window_width:
        return float(slide.window_center), float(slide.window_width)
    low, high = float(values.min()), float(values.max())
    # A window whose ends map exactly onto low → 0 and high → 255.
    return (low + high + 1) / 2, max(high - low + 1, 1.0)


def is_windowed(slide: Slide) -> bool:
    """True when the image's values need a display window (16-bit data, DICOM CT/MR values)."""
    _values, info = decoded_pixels(slide)
    return info.bits != 8


def effective_window(
    slide: Slide, window: tuple[float, float] | None
) -> tuple[float, float] | None:
    """The window used for rendering (None for 8-bit images, which pass through)."""
    values, info = decoded_pixels(slide)
    if info.bits == 8:
        return None
    return window if window is not None else default_window(slide, values)


def render_array(slide: Slide, *, window: tuple[float, float] | None = None) -> np.ndarray:
    """The full-resolution image as uint8 (H×W or H×W×3), windowed where the data need it."""
    values, info = decoded_pixels(slide)
    if info.bits == 8:
        return values
    center, width = effective_window(slide, window)
    key = (slide.checksum, float(center), float(width))
    out = _rendered.get(key)
    if out is None:
        out = apply_window(values, float(center), float(width))
        if info.inverted:
            out = 255 - out
        out.setflags(write=False)
        _rendered.put(key, out)
    return out


def render_node_image(slide: Slide, *, window: tuple[float, float] | None = None) -> Image.Image:
    """The full-resolution node image as an 8-bit PIL image ("L" or "RGB").

    For 16-bit and DICOM data `window` (centre, width) is applied, by default the slide's own
    window, else the data's min..max; 8-bit images pass through.
    """
    array = render_array(slide, window=window)
    return Image.fromarray(array, mode="L" if array.ndim == 2 else "RGB")


# ---- windows from requests, tiles ------------------------------------------------------------------


def display_window(slide: Slide) -> dict:
    """What a viewer needs to window a node image: the default window and, for CT, the presets
    (``{"windowed": False}`` for whole slides and images shown as they are)."""
    if slide.source != SOURCE:
        return {"windowed": False}
    try:
        window = effective_window(slide, None)
    except SlideImportError:  # the file went missing or broke since import; tiles will 404/500
        window = None
    if window is None:
        return {"windowed": False}
    presets = WINDOW_PRESETS if slide.modality == Slide.Modality.CT else {}
    return {
        "windowed": True,
        "window": {"center": window[0], "width": window[1]},
        "windowPresets": [
            {"name": name, "center": c, "width": w} for name, (c, w) in presets.items()
        ],
    }


def parse_window_query(
    window: str | None, preset: str | None
) -> tuple[tuple[float, float] | None, str]:
    """A window from query parameters `window=centre,width` or `preset=name`, and a short tag
    for cache keys and ETags. ValueError naming what is wrong."""
    if window and preset:
        raise ValueError("give either window or preset, not both")
    if preset:
        key = preset.strip().lower()
        if key not in WINDOW_PRESETS:
            raise ValueError(
                f"unknown window preset {preset!r}; use one of {', '.join(WINDOW_PRESETS)}"
            )
        center, width = WINDOW_PRESETS[key]
    elif window:
        parts = window.split(",")
        try:
            if len(parts) != 2:
                raise ValueError
            center, width = float(parts[0]), float(parts[1])
        except ValueError:
            raise ValueError(
                f"window {window!r} must be two numbers 'centre,width', e.g. 40,400"
            ) from None
        if not (math.isfinite(center) and math.isfinite(width)) or width <= 0:
            raise ValueError(f"window {window!r}: centre must be finite and width > 0")
        if abs(center) > 1e6 or width > 1e6:
            raise ValueError(f"window {window!r}: centre and width must be within ±1,000,000")
    else:
        return None, "default"
    return (center, width), f"{center:g},{width:g}"


def node_image_tile(
    slide: Slide, z: int, x: int, y: int, *, window: tuple[float, float] | None = None
) -> bytes:
    """JPEG bytes of one tile of the node image's pyramid (large-image's z/x/y, edge tiles cropped).

    Level z shows the image downscaled by 2**(levels-1-z); tiles are 256 px.
    """
    scale = 2 ** (slide.levels - 1 - z)
    tile = slide.tile_width
    left, top = x * tile * scale, y * tile * scale
    right, bottom = min(left + tile * scale, slide.width), min(top + tile * scale, slide.height)
    image = render_node_image(slide, window=window).crop((left, top, right, bottom))
    if scale > 1:
        size = (max(1, -(-(right - left) // scale)), max(1, -(-(bottom - top) // scale)))
        image = image.resize(size, Image.Resampling.BOX)
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=90)
    return out.getvalue()


def node_image_thumbnail(slide: Slide, *, max_size: int = 256) -> bytes:
    """A JPEG of the whole image (default window) no larger than `max_size` on its longer side."""
    image = render_node_image(slide)
    image.thumbnail((max_size, max_size), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=90)
    return out.getvalue()
