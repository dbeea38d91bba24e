"""Registering slide files: read and check them with large-image, then create the Slide row.

A file is registered only when it is self-contained (or, imported from a manifest under an import
root, names only files inside that root: `slides.file_formats`), opens with an accepted
whole-slide source, its pyramid is readable at both ends (lowest and highest resolution) and lies
wholly inside the file (a truncated file is refused, not registered as what is left of it), and
its checksum is new to the node's lab. Anything else raises `SlideImportError` with the reason,
and nothing is written. Reasons never carry a server path (`SlideImportError.reason` is what users
see; the path is kept on the exception for logs).

Before any pixel is decoded, `check_declared_size` reads only the file's headers and refuses
decompression bombs: archives and plain images posing as slides, images declaring more pixels than
Pillow's `Image.MAX_IMAGE_PIXELS`, and TIFF pyramids whose declared sizes are absurd (a side beyond
`MAX_SLIDE_SIDE_PX`, an untiled page or a tile beyond Pillow's limit, or a lowest resolution so
large that a thumbnail would have to decode more than that limit).
"""

from __future__ import annotations

import csv
import hashlib
import logging
import struct
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import tifffile
from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Q
from PIL import Image

from .file_formats import (
    IMPORTABLE_MULTI_FILE_SUFFIXES,
    NotSelfContained,
    check_folder_inside,
    check_references_inside,
    check_self_contained,
    scrub_paths,
    sniff,
)
from .models import Case, Lab, Node, Slide
from .project_types import ProjectType, parse_project_type
from .sources import SLIDE_SUFFIXES, open_source, resolve_slide_file, vendor_of

Progress = Callable[[int, int], None]

logger = logging.getLogger(__name__)


class SlideImportError(Exception):
    """A slide file that cannot be registered. `reason` says what is wrong, with any absolute
    path cut to its last component (users see it); `str()` adds the path, for logs and admins."""

    def __init__(self, path: Path | str, reason: str):
        self.path = str(path)
        self.reason = scrub_paths(reason)
        super().__init__(f"{path}: {self.reason}")


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
        _check_first_directory(path)
        return
    with tif:
        check_tiff_complete(path, tif)
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


# Bytes per value of each TIFF field type (TIFF 6.0 and BigTIFF).
TIFF_TYPE_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4}
TIFF_TYPE_SIZES.update({16: 8, 17: 8, 18: 8})
SUBIFDS_TAG = 330


def check_tiff_complete(path: Path, tif: tifffile.TiffFile) -> None:
    """Refuse a truncated TIFF: every image directory (the chain and SubIFD levels), every value a
    directory points at (tile and strip offset tables, descriptions), and every tile or strip of
    every image (pyramid levels, label, macro, thumbnail) must lie inside the file.

    Only directories and offset tables are read, no pixel. A truncated SVS would otherwise open as
    a plain TIFF with its label and macro images gone; a pyramid cut short would fail tile by tile.
    """
    _check_first_directory(path)
    size = tif.filehandle.size
    _check_directories(path, tif, size)
    pages: list[tuple[str, object]] = []
    level = 0
    try:
        for index, page in enumerate(tif.pages):
            if page.is_tiled or index == 0:
                pages.append((f"level {level}'s tiles", page))
                level += 1
            else:
                pages.append((f"{_image_name(page, index)}'s strips", page))
            for sub, subifd in enumerate(getattr(page, "pages", None) or ()):
                pages.append((f"image {index + 1}'s sub-resolution {sub + 1}'s tiles", subifd))
        for what, page in pages:
            offsets = getattr(page, "dataoffsets", ()) or ()
            counts = getattr(page, "databytecounts", ()) or ()
            if int(getattr(page, "imagewidth", 0) or 0) > 0 and not len(offsets):
                raise SlideImportError(path, f"the file is corrupt: {what} have no offsets")
            end = max(
                (int(o) + int(c) for o, c in zip(offsets, counts, strict=False) if int(c)),
                default=0,
            )
            if end > size:
                raise SlideImportError(
                    path, f"the file is truncated: {what} end at byte {end:,} of {size:,}"
                )
    except tifffile.TiffFileError as exc:
        raise SlideImportError(
            path, f"the file is truncated or corrupt: its images cannot be read ({_short(exc)})"
        ) from exc


def _check_directories(path: Path, tif: tifffile.TiffFile, size: int) -> None:
    """Walk the image directories (IFD chain and SubIFDs) from the raw bytes; refuse one that
    starts or ends past the end of the file, or whose values (offset tables, descriptions) do."""
    fmt, fh = tif.tiff, tif.filehandle
    big = fmt.tagsize == 20
    entry_format = fmt.byteorder + ("HHQ8s" if big else "HHI4s")
    inline = 8 if big else 4
    try:
        first = int(tif.pages.first.offset)
    except (IndexError, AttributeError):
        return
    queue: list[tuple[str, int, int | None]] = [("image 1", first, 1)]  # name, offset, chain no.
    seen: set[int] = set()
    while queue and len(seen) < 4 * MAX_TIFF_PAGES:
        name, offset, number = queue.pop(0)
        if offset in seen:
            continue
        seen.add(offset)
        if offset + fmt.tagnosize > size:
            raise SlideImportError(
                path,
                f"the file is truncated: {name}'s directory starts at byte {offset:,} of {size:,}",
            )
        fh.seek(offset)
        count = struct.unpack(fmt.tagnoformat, fh.read(fmt.tagnosize))[0]
        end = offset + fmt.tagnosize + count * fmt.tagsize + fmt.offsetsize
        if count > 4096 or end > size:
            raise SlideImportError(
                path, f"the file is truncated: {name}'s directory ends at byte {end:,} of {size:,}"
            )
        entries = fh.read(count * fmt.tagsize)
        for i in range(count):
            tag, kind, n, value = struct.unpack_from(entry_format, entries, i * fmt.tagsize)
            nbytes = n * TIFF_TYPE_SIZES.get(kind, 1)
            if nbytes <= inline:
                at, values = None, value[:nbytes]
            else:
                at = struct.unpack(fmt.byteorder + ("Q" if big else "I"), value)[0]
                if at + nbytes > size:
                    tag_name = tifffile.TIFF.TAGS.get(tag, f"tag {tag}")
                    raise SlideImportError(
                        path,
                        f"the file is truncated: {name}'s {tag_name} ends at byte "
                        f"{at + nbytes:,} of {size:,}",
                    )
                values = None
            if tag == SUBIFDS_TAG and kind in (4, 13, 16, 18):
                if values is None:
                    fh.seek(at)
                    values = fh.read(nbytes)
                wide = kind in (16, 18)
                subs = struct.unpack(f"{fmt.byteorder}{n}{'Q' if wide else 'I'}", values)
                queue += [
                    (f"{name}'s sub-resolution {k + 1}", int(sub), None)
                    for k, sub in enumerate(subs)
                    if sub
                ]
        if number is not None:
            fh.seek(end - fmt.offsetsize)
            following = struct.unpack(fmt.offsetformat, fh.read(fmt.offsetsize))[0]
            if following:
                queue.append((f"image {number + 1}", int(following), number + 1))


def _check_first_directory(path: Path) -> None:
    """Refuse a TIFF whose header points past the end of the file (a pyramid cut before its
    first directory, which SVS writers put at the end)."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(16)
    order = "<" if head[:2] == b"II" else ">"
    try:
        if head[2:4] in (b"*\x00", b"\x00*"):
            offset = struct.unpack(order + "I", head[4:8])[0]
        else:
            offset = struct.unpack(order + "Q", head[8:16])[0]
    except struct.error:
        return
    if offset >= 2 * size:  # far beyond the end: more likely garbage than a cut-off file
        raise SlideImportError(
            path,
            f"not a readable whole-slide image: its TIFF header points at byte {offset:,} of a "
            f"{size:,}-byte file (corrupt or truncated)",
        )
    if offset >= size:
        raise SlideImportError(
            path,
            f"the file is truncated: its first image directory starts at byte {offset:,} "
            f"of {size:,}",
        )


def _image_name(page, index: int) -> str:
    """An untiled TIFF image by what it shows, where its description says (SVS: label, macro)."""
    description = (getattr(page, "description", "") or "").lower()
    for word in ("label", "macro", "thumbnail"):
        if word in description:
            return f"the {word} image"
    return f"image {index + 1}"


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


def inspect_slide_file(path: Path, *, import_root: Path | None = None) -> SlideFileInfo:
    """Open a slide with large-image and read its metadata, checking that pixels decode.

    Only self-contained files are accepted (`check_file_format`); with `import_root` (a manifest
    row under one of `SLIDE_IMPORT_ROOTS`) also multi-file formats that name only files inside it.
    """
    path = Path(path)
    if not path.exists():
        raise SlideImportError(path, "file not found")
    suffixes = SLIDE_SUFFIXES | (IMPORTABLE_MULTI_FILE_SUFFIXES if import_root else set())
    if path.is_file() and path.suffix.lower() not in suffixes:
        raise SlideImportError(
            path,
            f"unsupported file type {path.suffix or '(none)'!r}; expected one of {sorted(suffixes)}",
        )
    if path.is_file() and path.stat().st_size == 0:
        raise SlideImportError(path, "file is empty")
    try:
        target = resolve_slide_file(path)
    except FileNotFoundError as exc:
        raise SlideImportError(path, "the folder holds no .dcm files") from exc
    check_declared_size(target)
    check_file_format(path, target, import_root=import_root)
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


def check_file_format(path: Path, target: Path, *, import_root: Path | None = None) -> None:
    """Refuse a file that is not self-contained (see `slides.file_formats`).

    A DICOM file is read with the DICOM files beside it, so every file of its folder must resolve
    inside `import_root` (or, without one, inside that folder). A VMS/VMU/MRXS is accepted only
    with `import_root`, when every file it names resolves inside it.
    """
    try:
        kind = check_self_contained(target)
        if kind == "dicom":
            folder = target.parent
            check_folder_inside(folder, import_root or folder)
        return
    except NotSelfContained as exc:
        refusal = exc
    if import_root is not None and path.is_file():
        kind = sniff(path)
        suffix = path.suffix.lower()
        if (suffix in {".vms", ".vmu"} and kind == "vms") or (suffix == ".mrxs" and kind == "mrxs"):
            try:
                check_references_inside(path, import_root)
            except NotSelfContained as exc:
                raise SlideImportError(path, str(exc)) from exc
            return
    raise SlideImportError(path, str(refusal)) from refusal


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
    *,
    node: Node,
    path: Path,
    name: str | None = None,
    user=None,
    synthetic: bool = False,
    multi_file: bool = False,
) -> Slide:
    """Inspect `path` and register it as a slide of `node`. Refuses files already registered in
    the node's lab (same checksum).

    Only self-contained files are accepted, unless `multi_file` (manifest imports): then a
    VMS/VMU/MRXS under one of `SLIDE_IMPORT_ROOTS` whose every named file lies inside that root.
    """
    path = Path(path).resolve()
    try:
        _check_import_root(path)
        info = inspect_slide_file(path, import_root=multi_file_root(path) if multi_file else None)
        checksum, size = file_checksum(path)
        refuse_duplicate(path, checksum, what="slide", node=node, user=user)
    except SlideImportError as exc:
        logger.info("slide file refused: %s", exc)  # the path, for admins; users get the reason
        raise
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


def multi_file_root(path: Path) -> Path | None:
    """The import root (one of `SLIDE_IMPORT_ROOTS`) holding `path`, where multi-file formats may
    be imported from; None when there is none (they are then refused)."""
    path = Path(path).resolve()
    for root in settings.SLIDE_IMPORT_ROOTS:
        root = Path(root).resolve()
        if path.is_relative_to(root):
            return root
    return None


def refuse_duplicate(path: Path, checksum: str, *, what: str, node: Node, user=None) -> None:
    """Refuse a file whose checksum is already registered in `node`'s lab.

    Another lab may hold the same file: labs are separate, and a lab is never told what another
    holds. The existing row is named only when `user` may see it (or for server-side imports,
    `user` None); otherwise the message says only that the lab has it.
    """
    from .access import slides_for

    lab_id = node.case.lab_id
    existing = (
        Slide.objects.filter(checksum=checksum)
        .filter(Q(lab_id=lab_id) | Q(node__case__lab_id=lab_id))
        .select_related("node__case")
        .first()
    )
    if existing is None:
        return
    if user is None or slides_for(user).filter(pk=existing.pk).exists():
        raise SlideImportError(
            path, f"already imported as {what} {existing.pk} ({existing.name}) of {existing.node}"
        )
    raise SlideImportError(path, f"already imported in this lab (same checksum) as another {what}")


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
    of the same file into the same lab that won the race (checksums are unique per lab) is
    refused, nothing written."""
    try:
        with transaction.atomic():
            return Slide.objects.create(
                node=node,
                lab_id=node.case.lab_id,
                name=name or path.name,
                file_path=str(path),
                checksum=checksum,
                file_size=size,
                imported_by=user if user is not None and user.is_authenticated else None,
                synthetic=synthetic,
                **fields,
            )
    except IntegrityError as exc:  # a concurrent import of the same file won the race
        raise SlideImportError(path, "already imported in this lab (same checksum)") from exc


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
        return register_slide(node=node, path=path, user=user, synthetic=synthetic, multi_file=True)


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
                slide = register_slide(node=node, path=path, user=user, multi_file=True)
            report.imported.append(slide)
        except SlideImportError as exc:
            report.failed.append((i, str(path), exc.reason))
        if progress:
            progress(i, len(paths))
    return report
