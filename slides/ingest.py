"""Registering slide files: read and check them with large-image, then create the Slide row.

A file is registered only when it opens with an accepted whole-slide source, its pyramid is
readable at both ends (lowest and highest resolution), and its checksum is new. Anything else
raises `SlideImportError` naming the file and the reason, and nothing is written.

Before any pixel is decoded, `check_declared_size` reads only the file's headers and refuses
decompression bombs: archives and plain images posing as slides, images declaring more pixels than
Pillow's `Image.MAX_IMAGE_PIXELS`, and TIFF pyramids whose declared sizes are absurd (a side beyond
`MAX_SLIDE_SIDE_PX`, an untiled page or a tile beyond Pillow's limit, or a lowest resolution so
large that a thumbnail would have to decode more than that limit).
"""

from __future__ import annotations

import csv
import hashlib
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import tifffile
from django.conf import settings
from django.db import IntegrityError, transaction
from PIL import Image

from .models import Case, Lab, Node, Slide
from .project_types import ProjectType, parse_project_type
from .sources import SLIDE_SUFFIXES, open_source, resolve_slide_file, vendor_of

Progress = Callable[[int, int], None]


class SlideImportError(Exception):
    """A slide file that cannot be registered; the message names the file and the reason."""

    def __init__(self, path: Path | str, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


@dataclass(frozen=True)
class SlideFileInfo:
    """What large-image reads from a slide file."""

    source: str
    vendor: str
    width: int
    height: int
    levels: int
    tile_width: int
    tile_height: int
    mpp_x: float | None
    mpp_y: float | None
    magnification: float | None
    associated_images: list[str]


def file_checksum(path: Path, *, chunk: int = 8 * 1024 * 1024) -> tuple[str, int]:
    """SHA-256 and size in bytes of a file, or of a DICOM folder's .dcm files in name order."""
    digest = hashlib.sha256()
    size = 0
    files = sorted(path.glob("*.dcm")) if path.is_dir() else [path]
    for file in files:
        with open(file, "rb") as fh:
            while block := fh.read(chunk):
                digest.update(block)
                size += len(block)
    return digest.hexdigest(), size


# ---- decompression bombs -------------------------------------------------------------------------

# The largest slide side accepted (level 0). Whole-slide scans are up to about 200,000 px a side.
DEFAULT_MAX_SLIDE_SIDE_PX = 400_000
# More images than this in one TIFF is no slide (a pyramid has tens at most).
MAX_TIFF_PAGES = 512

MAGIC = (
    (b"PK\x03\x04", "a ZIP archive"),
    (b"PK\x05\x06", "a ZIP archive"),
    (b"\x1f\x8b", "a gzip archive"),
    (b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive"),
    (b"Rar!", "a RAR archive"),
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF8", "a GIF image"),
    (b"BM", "a BMP image"),
)
TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def pillow_pixel_limit() -> int:
    """Pillow's decompression-bomb limit (`Image.MAX_IMAGE_PIXELS`; its default when unset)."""
    return int(Image.MAX_IMAGE_PIXELS or 89_478_485)


def max_slide_side() -> int:
    return int(getattr(settings, "MAX_SLIDE_SIDE_PX", DEFAULT_MAX_SLIDE_SIDE_PX))


def _px(width: int, height: int) -> str:
    return f"{width:,} × {height:,} px"


def check_declared_size(path: Path) -> None:
    """Refuse, from headers alone, files whose declared pixels would be a decompression bomb.

    Nothing here decodes pixels: Pillow reads only a plain image's header, tifffile only a TIFF's
    directories (tile offsets are not even loaded).
    """
    with open(path, "rb") as fh:
        head = fh.read(16)
    for magic, kind in MAGIC:
        if head.startswith(magic):
            _refuse_not_a_slide(path, kind)
    if head[:4] in TIFF_MAGIC:
        _check_tiff(path)


def _refuse_not_a_slide(path: Path, kind: str) -> None:
    if "archive" in kind:
        raise SlideImportError(
            path,
            f"is {kind}, not a slide: archives are not unpacked; upload each slide file on its own",
        )
    limit = pillow_pixel_limit()
    try:
        with warnings.catch_warnings():  # between 1x and 2x the limit Pillow only warns
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:  # reads the header only
                width, height = img.size
    except Image.DecompressionBombError as exc:
        raise SlideImportError(path, f"decompression bomb refused: {exc}") from exc
    except Exception:  # noqa: BLE001 - a broken header is refused below all the same
        width = height = 0
    if width * height > limit:
        raise SlideImportError(
            path,
            f"decompression bomb refused: {kind} declaring {_px(width, height)} "
            f"({width * height:,} pixels), more than the limit of {limit:,} (Pillow's MAX_IMAGE_PIXELS)",
        )
    raise SlideImportError(
        path, f"is {kind}, not a whole-slide image (no pyramid, no physical scale)"
    )


def _check_tiff(path: Path) -> None:
    limit, side = pillow_pixel_limit(), max_slide_side()
    try:
        tif = tifffile.TiffFile(path, _multifile=False)
    except Exception:  # noqa: BLE001 - large-image reports unreadable files with its own reason
        return
    with tif:
        ndpi = (
            tif.is_ndpi
        )  # NDPI stores level 0 as one restartable JPEG strip; OpenSlide reads it in parts
        tiled_sizes: list[tuple[int, int]] = []
        for index, page in enumerate(tif.pages):
            if index >= MAX_TIFF_PAGES:
                raise SlideImportError(
                    path, f"holds more than {MAX_TIFF_PAGES} images; no slide has that many"
                )
            size = _check_tiff_page(
                path, page, f"image {index + 1} of the file", limit=limit, side=side, ndpi=ndpi
            )
            if size:
                tiled_sizes.append(size)
        try:  # pyramid levels kept in SubIFDs (OME-TIFF) are levels of a series, not pages
            levels = [level.keyframe for series in tif.series for level in series.levels]
        except Exception:  # noqa: BLE001
            levels = []
        for level in levels:
            size = _check_tiff_page(
                path, level, "a pyramid level", limit=limit, side=side, ndpi=ndpi
            )
            if size:
                tiled_sizes.append(size)
        if tiled_sizes and not ndpi:
            width, height = min(tiled_sizes, key=lambda wh: wh[0] * wh[1])
            if width * height > limit:
                raise SlideImportError(
                    path,
                    f"absurd pyramid refused: its lowest resolution is {_px(width, height)}; "
                    f"a thumbnail would decode {width * height:,} pixels, more than the limit of "
                    f"{limit:,} (Pillow's MAX_IMAGE_PIXELS). Write the slide with a full pyramid",
                )


def _check_tiff_page(
    path: Path, page, where: str, *, limit: int, side: int, ndpi: bool
) -> tuple[int, int] | None:
    """Refuse one TIFF image whose declared size is a bomb; its size if it is tiled."""
    width, height = int(page.imagewidth), int(page.imagelength)
    if width > side or height > side:
        raise SlideImportError(
            path,
            f"declared size refused: {where} claims {_px(width, height)}; "
            f"the largest slide accepted is {side:,} px a side",
        )
    if page.is_tiled:
        if int(page.tilewidth) * int(page.tilelength) > limit:
            raise SlideImportError(
                path,
                f"decompression bomb refused: {where} has tiles of {_px(page.tilewidth, page.tilelength)}, "
                f"more than the limit of {limit:,} pixels (Pillow's MAX_IMAGE_PIXELS)",
            )
        return width, height
    if width * height > limit and not ndpi:
        raise SlideImportError(
            path,
            f"decompression bomb refused: {where} is {_px(width, height)} in one piece (not tiled): "
            f"{width * height:,} pixels, more than the limit of {limit:,} (Pillow's MAX_IMAGE_PIXELS)",
        )
    return None


def inspect_slide_file(path: Path) -> SlideFileInfo:
    """Open a slide with large-image and read its metadata, checking that pixels decode."""
    path = Path(path)
    if not path.exists():
        raise SlideImportError(path, "file not found")
    if path.is_file() and path.suffix.lower() not in SLIDE_SUFFIXES:
        raise SlideImportError(
            path,
            f"unsupported file type {path.suffix or '(none)'!r}; expected one of {sorted(SLIDE_SUFFIXES)}",
        )
    if path.is_file() and path.stat().st_size == 0:
        raise SlideImportError(path, "file is empty")
    try:
        target = resolve_slide_file(path)
    except FileNotFoundError as exc:
        raise SlideImportError(path, str(exc)) from exc
    check_declared_size(target)
    try:
        source = open_source(path)
    except Exception as exc:  # noqa: BLE001 - large-image and its libraries raise many types
        raise SlideImportError(path, f"not a readable whole-slide image ({_short(exc)})") from exc
    meta = source.getMetadata()
    side = max_slide_side()
    if int(meta["sizeX"]) > side or int(meta["sizeY"]) > side:
        raise SlideImportError(
            path,
            f"declared size refused: {_px(int(meta['sizeX']), int(meta['sizeY']))}; "
            f"the largest slide accepted is {side:,} px a side",
        )
    try:
        _check_pixels(source, meta)
    except Exception as exc:  # noqa: BLE001
        raise SlideImportError(
            path, f"slide is truncated or corrupt: pixels cannot be decoded ({_short(exc)})"
        ) from exc
    mm_x, mm_y = meta.get("mm_x"), meta.get("mm_y")
    try:
        associated = list(source.getAssociatedImagesList())
    except Exception:  # noqa: BLE001
        associated = []
    return SlideFileInfo(
        source=source.name,
        vendor=vendor_of(source),
        width=int(meta["sizeX"]),
        height=int(meta["sizeY"]),
        levels=int(meta["levels"]),
        tile_width=int(meta["tileWidth"]),
        tile_height=int(meta["tileHeight"]),
        mpp_x=mm_x * 1000 if mm_x else None,
        mpp_y=mm_y * 1000 if mm_y else None,
        magnification=float(meta["magnification"]) if meta.get("magnification") else None,
        associated_images=associated,
    )


def _check_pixels(source, meta: dict) -> None:
    """Decode the lowest-resolution tile and the last tiles of the full-resolution level.

    Truncated files lose their tail first, and the last full-resolution tiles are stored there.
    """
    top = meta["levels"] - 1
    source.getTile(0, 0, 0, numpyAllowed="always")
    nx = -(-meta["sizeX"] // meta["tileWidth"])
    ny = -(-meta["sizeY"] // meta["tileHeight"])
    for x, y in {(nx - 1, ny - 1), (0, ny - 1), (nx // 2, ny // 2), (0, 0)}:
        source.getTile(x, y, top, numpyAllowed="always")


def _short(exc: Exception) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:300]


def register_slide(
    *, node: Node, path: Path, name: str | None = None, user=None, synthetic: bool = False
) -> Slide:
    """Inspect `path` and register it as a slide of `node`. Refuses duplicates by checksum."""
    path = Path(path).resolve()
    _check_import_root(path)
    info = inspect_slide_file(path)
    checksum, size = file_checksum(path)
    refuse_duplicate(path, checksum, what="slide")
    return create_slide_row(
        path,
        checksum=checksum,
        size=size,
        node=node,
        name=name,
        user=user,
        synthetic=synthetic,
        source=info.source,
        vendor=info.vendor,
        width=info.width,
        height=info.height,
        levels=info.levels,
        tile_width=info.tile_width,
        tile_height=info.tile_height,
        mpp_x=info.mpp_x,
        mpp_y=info.mpp_y,
        magnification=info.magnification,
        associated_images=info.associated_images,
    )


def refuse_duplicate(path: Path, checksum: str, *, what: str) -> None:
    """Refuse a file whose checksum is already registered, saying as what and where."""
    existing = Slide.objects.filter(checksum=checksum).select_related("node__case").first()
    if existing:
        raise SlideImportError(
            path, f"already imported as {what} {existing.pk} ({existing.name}) of {existing.node}"
        )


def create_slide_row(
    path: Path,
    *,
    checksum: str,
    size: int,
    node: Node,
    name: str | None,
    user,
    synthetic: bool,
    **fields,
) -> Slide:
    """The Slide row of a newly imported file (whole slide or node image); a concurrent import
    of the same file that won the race (the checksum is unique) is refused, nothing written."""
    try:
        with transaction.atomic():
            return Slide.objects.create(
                node=node,
                name=name or path.name,
                file_path=str(path),
                checksum=checksum,
                file_size=size,
                imported_by=user if user is not None and user.is_authenticated else None,
                synthetic=synthetic,
                **fields,
            )
    except IntegrityError as exc:  # a concurrent import of the same file won the race
        raise SlideImportError(path, "already imported (same checksum)") from exc


def _check_import_root(path: Path) -> None:
    roots = [
        Path(settings.SLIDE_STORAGE_DIR).resolve(),
        *(Path(r).resolve() for r in settings.SLIDE_IMPORT_ROOTS),
    ]
    if settings.SLIDE_IMPORT_ROOTS and not any(path.is_relative_to(r) for r in roots):
        raise SlideImportError(path, "outside the folders slides may be imported from")


# ---- manifests ---------------------------------------------------------------------------------

MANIFEST_COLUMNS = ("case", "node", "file")
GROUND_TRUTH_WORDS = {
    "": Node.GroundTruth.UNKNOWN,
    "unknown": Node.GroundTruth.UNKNOWN,
    "negative": Node.GroundTruth.NEGATIVE,
    "neg": Node.GroundTruth.NEGATIVE,
    "0": Node.GroundTruth.NEGATIVE,
    "positive": Node.GroundTruth.POSITIVE,
    "pos": Node.GroundTruth.POSITIVE,
    "1": Node.GroundTruth.POSITIVE,
}


@dataclass
class ImportReport:
    """Outcome of a batch: what was registered and, per failed row, the file and the reason."""

    imported: list[Slide] = field(default_factory=list)
    failed: list[tuple[int, str, str]] = field(default_factory=list)  # (row, file, reason)

    @property
    def ok(self) -> bool:
        return not self.failed


def read_manifest(manifest: Path) -> list[dict[str, str]]:
    """Rows of a CSV manifest with columns case, node, file and optional status, patient,
    project_type ("lymph-node", the default for new cases, or "biopsy"), modality ("slide", the
    default, or ct, ultrasound, image for node images) and window_center, window_width."""
    with open(manifest, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        header = [h.strip().lower() for h in reader.fieldnames or []]
        missing = [c for c in MANIFEST_COLUMNS if c not in header]
        if missing:
            raise SlideImportError(manifest, f"manifest lacks column(s) {', '.join(missing)}")
        return [
            {k.strip().lower(): (v or "").strip() for k, v in row.items() if k} for row in reader
        ]


def import_manifest(
    *,
    manifest: Path,
    lab: Lab | None = None,
    create_missing: bool = False,
    user=None,
    synthetic: bool = False,
    progress: Progress | None = None,
) -> ImportReport:
    """Import every row of a manifest; a bad row is reported and the rest still import.

    Relative file paths resolve against the manifest's folder and may not leave it. Unknown cases
    and nodes are errors unless `create_missing` (then they are created in `lab`).
    """
    manifest = Path(manifest).resolve()
    base = manifest.parent
    rows = read_manifest(manifest)
    report = ImportReport()
    for i, row in enumerate(rows, start=2):  # row 1 is the header
        file_field = row.get("file", "")
        try:
            report.imported.append(
                _import_row(
                    row,
                    base=base,
                    lab=lab,
                    create_missing=create_missing,
                    user=user,
                    synthetic=synthetic,
                )
            )
        except SlideImportError as exc:
            report.failed.append((i, file_field, exc.reason))
        if progress:
            progress(i - 1, len(rows))
    return report


def _import_row(
    row: dict[str, str], *, base: Path, lab: Lab | None, create_missing: bool, user, synthetic: bool
) -> Slide:
    file_field = row.get("file", "")
    if not file_field or not row.get("case") or not row.get("node"):
        raise SlideImportError(file_field or "(no file)", "row needs case, node and file")
    raw = Path(file_field)
    path = (raw if raw.is_absolute() else base / raw).resolve()
    if not raw.is_absolute() and not path.is_relative_to(base):
        raise SlideImportError(file_field, "relative path leaves the manifest's folder")
    status_word = row.get("status", "").lower()
    if status_word not in GROUND_TRUTH_WORDS:
        raise SlideImportError(
            file_field, f"unknown status {row.get('status')!r} (use positive, negative or unknown)"
        )
    truth = GROUND_TRUTH_WORDS[status_word]
    node_image = _node_image_options(row, file_field)
    project_type = None
    if row.get("project_type"):
        try:
            project_type = parse_project_type(row["project_type"])
        except ValueError as exc:
            raise SlideImportError(file_field, str(exc)) from exc
    with transaction.atomic():
        node = _find_node(
            row,
            lab=lab,
            create_missing=create_missing,
            file_field=file_field,
            project_type=project_type,
        )
        if truth != Node.GroundTruth.UNKNOWN and node.ground_truth != truth:
            node.ground_truth = truth
            node.save(update_fields=["ground_truth"])
        if node_image is not None:
            from .node_images import register_node_image

            return register_node_image(
                node=node, path=path, user=user, synthetic=synthetic, **node_image
            )
        return register_slide(node=node, path=path, user=user, synthetic=synthetic)


def _node_image_options(row: dict[str, str], file_field: str) -> dict | None:
    """The modality and window of a node-image row (modality ct, ultrasound or image); None for
    a whole slide (no modality, or "slide")."""
    from .node_images import check_window, parse_modality

    word = row.get("modality", "").strip().lower()
    window = {}
    for column in ("window_center", "window_width"):
        text = row.get(column, "").strip()
        if text:
            try:
                window[column] = float(text)
            except ValueError:
                raise SlideImportError(file_field, f"{column} {text!r} is not a number") from None
    if word in {"", "slide", "wsi"}:
        if window:
            raise SlideImportError(
                file_field, "window_center/window_width apply to node images (modality ct, ...)"
            )
        return None
    try:
        modality = parse_modality(word)
        check_window(window.get("window_center"), window.get("window_width"))
    except ValueError as exc:
        raise SlideImportError(file_field, str(exc)) from exc
    return {"modality": modality, **window}


def _find_node(
    row: dict[str, str],
    *,
    lab: Lab | None,
    create_missing: bool,
    file_field: str,
    project_type: str | None = None,
) -> Node:
    """The row's node; a new case gets the row's project type (lymph node when none is given),
    an existing case of another type is an error (a row never changes a case's type)."""
    accession, label = row["case"], row["node"]
    case = Case.objects.filter(accession_number=accession).first()
    if case is None:
        if not create_missing or lab is None:
            raise SlideImportError(file_field, f"unknown case {accession!r}")
        case = Case.objects.create(
            lab=lab,
            accession_number=accession,
            patient_pseudonym=row.get("patient", ""),
            project_type=project_type or ProjectType.LYMPH_NODE,
        )
    elif lab is not None and case.lab_id != lab.pk:
        raise SlideImportError(file_field, f"case {accession!r} belongs to another lab")
    elif project_type and case.project_type != project_type:
        raise SlideImportError(
            file_field,
            f"case {accession!r} is a {case.project_type} case, the row says {project_type}",
        )
    node = Node.objects.filter(case=case, label=label).first()
    if node is None:
        if not create_missing:
            raise SlideImportError(file_field, f"unknown node {label!r} in case {accession!r}")
        node = Node.objects.create(case=case, label=label)
    return node


def import_files(
    *,
    node: Node,
    paths: Iterable[Path],
    user=None,
    progress: Progress | None = None,
    modality: str | None = None,
) -> ImportReport:
    """Register several files as slides of one node (or, with `modality` ct, ultrasound or image,
    as node images), reporting failures per file."""
    from .node_images import register_node_image

    paths = list(paths)
    report = ImportReport()
    for i, path in enumerate(paths, start=1):
        try:
            if modality and modality != Slide.Modality.SLIDE:
                slide = register_node_image(node=node, path=path, user=user, modality=modality)
            else:
                slide = register_slide(node=node, path=path, user=user)
            report.imported.append(slide)
        except SlideImportError as exc:
            report.failed.append((i, str(path), exc.reason))
        if progress:
            progress(i, len(paths))
    return report
