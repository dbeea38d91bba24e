"""Which slide files are self-contained, and where the others point.

Some whole-slide formats are several files: a Hamamatsu VMS/VMU is an INI text naming its JPEG
tiles (`ImageFile=...`), a map, an optimisation file and a macro image; a MIRAX `.mrxs` reads a
sidecar folder whose `Slidedat.ini` names its data files; an NDP image set (`.ndpis`) names NDPI
files; large-image's multi-source YAML/JSON names any files by `path`; an OME-TIFF may keep its
metadata or planes in companion files. OpenSlide and large-image follow those names wherever they
point, `../../` included, so such a file could show any image on the server as a slide.

- Uploads accept only an allow-list of self-contained files, judged by their bytes, not their
  name (`check_self_contained`): TIFF/BigTIFF (SVS, NDPI, SCN, BIF, Philips and generic pyramidal
  TIFF, OME-TIFF without external references), one DICOM file with a known transfer syntax, and a
  Sakura SVSLIDE (an SQLite database). A VMS renamed `.tiff` is refused all the same.
- Multi-file formats are imported only from manifests under `SLIDE_IMPORT_ROOTS`, and only when
  every file they name resolves (symlinks followed) inside that root
  (`check_references_inside`). A refusal names the key, never a server path.

`scrub_paths` takes absolute paths out of messages (a library's error text often quotes the file):
users see what is wrong, admins find the path in the logs.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

# Suffixes of formats made of several files (or naming other files): refused as uploads.
MULTI_FILE_SUFFIXES = {
    ".vms": "a Hamamatsu VMS index",
    ".vmu": "a Hamamatsu VMU index",
    ".mrxs": "a MIRAX slide (its pixels live in a sidecar folder)",
    ".ndpis": "a Hamamatsu NDP image set",
    ".yml": "a large-image multi-source file",
    ".yaml": "a large-image multi-source file",
    ".json": "a large-image multi-source file",
    ".xml": "an XML metadata file",
    ".ome": "an OME companion file",
    ".companion": "an OME companion file",
    ".ini": "an INI index",
    ".dat": "a slide data file",
}
# Of those, what `import_slides` may read from a manifest under an import root.
IMPORTABLE_MULTI_FILE_SUFFIXES = {".vms", ".vmu", ".mrxs"}

TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
SQLITE_MAGIC = b"SQLite format 3\x00"

VMS_GROUPS = ("[Virtual Microscope Specimen]", "[Uncompressed Virtual Microscope Specimen]")
# Keys of a VMS/VMU or Slidedat.ini whose value names a file (ImageFile, ImageFile(1,0),
# MapFile, OptimisationFile, MacroImage, FILE_0, INDEXFILE, ...).
REFERENCE_KEY = re.compile(r"(?i)file|image")


class NotSelfContained(Exception):
    """A file that names other files, or whose format is not on the allow-list; the message says
    which, without any path."""


def scrub_paths(text: str) -> str:
    """`text` with every absolute path cut down to its last component ("/srv/x/y.svs" -> "y.svs")."""
    return _ABSOLUTE_PATH.sub(lambda m: m.group(0).rstrip("/").rsplit("/", 1)[-1] or "…", text)


_ABSOLUTE_PATH = re.compile(r"(?<![\w.~\-/])(?:/[^\s'\"<>()\[\]{},;:|/]+){2,}/?")


# ---- sniffing ------------------------------------------------------------------------------------


def sniff(path: Path) -> str | None:
    """The kind of a slide file from its bytes: "tiff", "dicom", "sqlite", "vms", "mrxs",
    "multi-source", "ndpis", "xml", or None for anything else."""
    with open(path, "rb") as fh:
        head = fh.read(4096)
    if head[:4] in TIFF_MAGIC:
        return "tiff"
    if head[128:132] == b"DICM":
        return "dicom"
    if head.startswith(SQLITE_MAGIC):
        return "sqlite"
    text = head.decode("utf-8", errors="replace").lstrip("\ufeff \t\r\n")
    if any(group in text for group in VMS_GROUPS):
        return "vms"
    upper = text.upper()
    if "[GENERAL]" in upper and ("SLIDE_ID" in upper or "SLIDE_VERSION" in upper):
        return "mrxs"
    if re.search(r"(?im)^\s*(\[NanoZoomer Digital Pathology Image Set\]|NoImages\s*=)", text):
        return "ndpis"
    if text.startswith("<"):
        return "xml"
    if re.search(r"(?m)[\"']?\b(sources|path)\b[\"']?\s*:", text):
        return "multi-source"
    return None


KIND_WORDS = {
    "vms": "a Hamamatsu VMS/VMU index that names other files (ImageFile, MapFile, ...)",
    "mrxs": "a MIRAX index that names other files (Slidedat.ini)",
    "ndpis": "an NDP image set that names other files",
    "multi-source": "a multi-source file that names other files (path)",
    "xml": "an XML file (OME companion or metadata), which names other files",
}

SELF_CONTAINED_HELP = (
    "accepted: TIFF-based slides (SVS, NDPI, SCN, BIF, OME-TIFF, pyramidal TIFF), "
    "single DICOM files and Sakura SVSLIDE"
)
MULTI_FILE_HELP = (
    "formats made of several files are not accepted as uploads; an admin imports them with "
    "import_slides from a manifest under an import root"
)


def check_self_contained(path: Path, *, name: str | None = None) -> str:
    """The kind of a slide file on the upload allow-list (see `sniff`); `NotSelfContained` for
    formats that name other files (by suffix or by content) and for anything not on the list.

    `name` is the file's own name, used to tell an OME-TIFF's own UUID from other files'."""
    suffix = path.suffix.lower()
    if suffix in MULTI_FILE_SUFFIXES:
        raise NotSelfContained(f"is {MULTI_FILE_SUFFIXES[suffix]}; {MULTI_FILE_HELP}")
    kind = sniff(path)
    if kind in KIND_WORDS:
        raise NotSelfContained(f"is {KIND_WORDS[kind]}; {MULTI_FILE_HELP}")
    if kind == "tiff":
        check_ome_self_contained(path, name=name or path.name)
        return kind
    if kind == "dicom":
        check_dicom_transfer_syntax(path)
        return kind
    if kind == "sqlite" and suffix == ".svslide":
        return kind
    raise NotSelfContained(
        f"is not a readable whole-slide image: its bytes are no self-contained slide format "
        f"({SELF_CONTAINED_HELP})"
    )


def check_ome_self_contained(path: Path, *, name: str) -> None:
    """Refuse an OME-TIFF whose OME-XML keeps metadata or planes in other files."""
    import tifffile

    try:
        with tifffile.TiffFile(path, _multifile=False) as tif:
            description = tif.pages.first.description or ""
    except Exception:  # noqa: BLE001 - unreadable TIFFs are refused later with their own reason
        return
    if "<OME" not in description[:4096]:
        return
    from defusedxml import ElementTree

    try:
        root = ElementTree.fromstring(description.encode("utf-8", errors="replace"))
    except Exception as exc:  # noqa: BLE001 - entity tricks, broken XML
        raise NotSelfContained("its OME-XML metadata cannot be read safely") from exc

    def local(tag: str) -> str:
        return tag.rsplit("}", 1)[-1]

    own_uuid = (root.get("UUID") or "").strip()
    for element in root.iter():
        tag = local(element.tag)
        if tag in {"BinaryOnly", "MetadataFile"}:
            raise NotSelfContained(
                f"is an OME-TIFF whose metadata lives in another file ({tag}); {MULTI_FILE_HELP}"
            )
        if tag == "UUID":
            other = (
                (element.text or "").strip() != own_uuid
                if own_uuid
                else element.get("FileName", name) != name
            )
            if other:
                raise NotSelfContained(
                    f"is an OME-TIFF whose planes live in other files (TiffData UUID); "
                    f"{MULTI_FILE_HELP}"
                )


def check_dicom_transfer_syntax(path: Path) -> None:
    """Refuse a DICOM file whose transfer syntax UID is not a known transfer syntax."""
    import warnings

    import pydicom

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            meta = pydicom.filereader.read_file_meta_info(path)
    except Exception:  # noqa: BLE001 - a broken header is refused later with its own reason
        return
    syntax = meta.get("TransferSyntaxUID")
    if syntax is not None and not pydicom.uid.UID(str(syntax)).is_transfer_syntax:
        raise NotSelfContained(
            f"has an unknown DICOM transfer syntax {str(syntax)!r} (not a transfer syntax UID "
            "of the DICOM standard); export with a standard one, e.g. JPEG Baseline "
            "1.2.840.10008.1.2.4.50 or Explicit VR Little Endian 1.2.840.10008.1.2.1"
        )


# ---- references of multi-file formats ------------------------------------------------------------


def ini_entries(path: Path) -> Iterator[tuple[str, str]]:
    """Every `key=value` of an INI/GKeyFile text, in every group, duplicates included."""
    text = path.read_bytes().decode("utf-8", errors="replace").lstrip("\ufeff")
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")) or "=" not in line:
            continue
        key, value = line.split("=", 1)
        yield key.strip(), value.strip()


def _names_a_file(key: str, value: str) -> bool:
    return bool(value) and (
        bool(REFERENCE_KEY.search(key)) or "/" in value or "\\" in value or ".." in value
    )


def _inside(target: Path, root: Path) -> bool:
    try:
        return target.resolve().is_relative_to(root)
    except (OSError, RuntimeError):  # symlink loops
        return False


def check_references_inside(path: Path, root: Path) -> None:
    """Refuse (`NotSelfContained`) a multi-file slide unless every file it names, and every file
    of its sidecar folder, resolves (symlinks followed) inside `root`. Messages name the key."""
    root = root.resolve()
    if not _inside(path, root):
        raise NotSelfContained("lies outside the import root")
    kind = sniff(path) if path.is_file() else None
    suffix = path.suffix.lower()
    if kind == "vms" or suffix in {".vms", ".vmu"}:
        _check_ini_references(path, path.parent, root, what="the VMS/VMU index")
    elif kind == "mrxs" or suffix == ".mrxs":
        sidecar = path.with_suffix("")
        if not sidecar.exists():
            raise NotSelfContained("is a MIRAX slide without its sidecar folder")
        if not _inside(sidecar, root):
            raise NotSelfContained("its MIRAX sidecar folder resolves outside the import root")
        slidedat = sidecar / "Slidedat.ini"
        if not slidedat.is_file() or not _inside(slidedat, root):
            raise NotSelfContained("its MIRAX Slidedat.ini is missing or outside the import root")
        _check_ini_references(slidedat, sidecar, root, what="Slidedat.ini")
        for entry in sidecar.iterdir():
            if not _inside(entry, root):
                raise NotSelfContained(
                    f"its MIRAX sidecar folder holds {entry.name!r}, which resolves outside "
                    "the import root"
                )
    else:
        raise NotSelfContained(
            f"is a format whose references cannot be checked; importable multi-file formats: "
            f"{', '.join(sorted(IMPORTABLE_MULTI_FILE_SUFFIXES))}"
        )


def _check_ini_references(index: Path, base: Path, root: Path, *, what: str) -> None:
    for key, value in ini_entries(index):
        if not _names_a_file(key, value):
            continue
        if "\x00" in value or not _inside(base / value, root):
            raise NotSelfContained(
                f"{what}'s key {key} names a file outside the import root; every file a "
                "multi-file slide names must lie inside the import root"
            )


def check_folder_inside(folder: Path, root: Path) -> None:
    """Refuse a DICOM folder any of whose files resolves (symlinks followed) outside `root`."""
    root = root.resolve()
    for entry in folder.iterdir():
        if not _inside(entry, root):
            raise NotSelfContained(
                f"the folder holds {entry.name!r}, which resolves outside "
                f"{'the folder' if root == folder.resolve() else 'the import root'}"
            )
