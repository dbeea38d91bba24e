"""Upload bombs and tricks (issue 7): size, types, archives, path traversal, decompression bombs.

Every refusal must be a clear 4xx naming the problem, and leave nothing behind: no Slide row, no
file in the storage folder, nothing outside it. The bad files are real files written here:
headers of PNG/JPEG images claiming 100,000 px a side, TIFFs whose every tile points at one stored
tile (a 30 GB image in 1.4 MB), a ZIP of zeros.
"""

from __future__ import annotations

import io
import os
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from django.test import Client
from PIL import Image

from slides.ingest import SlideImportError, import_manifest, inspect_slide_file
from slides.models import Slide
from tests.factories import gradient_image, make_case, write_pyramid_tiff

URL = "/api/slides/"


@pytest.fixture
def node(case):
    return case.nodes.order_by("label").first()


@pytest.fixture
def client(people) -> Client:
    c = Client()
    c.force_login(people.pathologist)
    return c


def stored_files(settings) -> list[Path]:
    root = Path(settings.SLIDE_STORAGE_DIR)
    return [p for p in root.rglob("*") if p.is_file()]


def assert_nothing_stored(settings, tmp_path: Path) -> None:
    assert not Slide.objects.exists()
    assert stored_files(settings) == []
    assert not list(tmp_path.rglob("escape*")), "a file was written outside the storage folder"


def upload(client: Client, node, path: Path, name: str | None = None):
    with open(path, "rb") as fh:
        data = fh.read()
    return post_raw(client, node, name or path.name, data)


def post_raw(client: Client, node, file_name: str, data: bytes, *, extra_field: bytes = b""):
    """A multipart POST written by hand, so the file name goes out exactly as given
    (Django's test client would cut it down to its last component)."""
    boundary = "----nodescope-test-boundary"
    body = (
        (
            f"--{boundary}\r\n"
            'Content-Disposition: form-data; name="node"\r\n\r\n'
            f"{node.pk}\r\n"
            f"--{boundary}\r\n"
            f'Content-Disposition: form-data; name="file"; filename="{file_name}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
        + extra_field
    )
    return client.post(URL, data=body, content_type=f"multipart/form-data; boundary={boundary}")


def message(response) -> str:
    body = response.json()
    return " ".join(str(v) for v in (body.get("file") or [body.get("detail", body)]))


# ---- files that lie about their size --------------------------------------------------------------


def png_header(width: int, height: int) -> bytes:
    """A valid PNG signature and IHDR declaring width x height, with a few bytes of pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def jpeg_header(width: int, height: int) -> bytes:
    """A JPEG start (SOF0 declaring width x height, then a scan header) with no real pixels."""
    sof = struct.pack(">BHHB", 8, height, width, 3) + b"\x01\x11\x00\x02\x11\x00\x03\x11\x00"
    sos = b"\x03\x01\x00\x02\x00\x03\x00\x00\x3f\x00"
    return (
        b"\xff\xd8\xff\xc0" + struct.pack(">H", len(sof) + 2) + sof
        + b"\xff\xda" + struct.pack(">H", len(sos) + 2) + sos + b"\0" * 16 + b"\xff\xd9"
    )  # fmt: skip


def write_tile_bomb(
    path: Path, levels: list[tuple[int, int]], *, tile: int = 256, tiled: bool = True
) -> Path:
    """A TIFF whose every tile (or strip), at every level, points at the same stored 256 x 256 block:
    declared gigapixels in a file of a megabyte or so."""
    raw = np.full((tile, tile, 3), 200, np.uint8).tobytes()
    out = bytearray(b"II*\0\0\0\0\0")
    block_at = len(out)
    out += raw
    bits_at = len(out)
    out += struct.pack("<3H", 8, 8, 8)
    ifds, next_fields = [], []
    for i, (width, height) in enumerate(levels):
        if tiled:
            n = -(-width // tile) * -(-height // tile)
            layout = [(322, 4, 1, tile), (323, 4, 1, tile)]
            offsets_tag, counts_tag = 324, 325
        else:  # strips of `tile` rows, each claiming to be the stored block
            n = -(-height // tile)
            layout = [(278, 4, 1, tile)]
            offsets_tag, counts_tag = 273, 279
        offsets_at = len(out)
        out += struct.pack(f"<{n}I", *([block_at] * n))
        counts_at = len(out)
        out += struct.pack(f"<{n}I", *([len(raw)] * n))
        entries = sorted(
            [
                (254, 4, 1, 1 if i else 0),
                (256, 4, 1, width),
                (257, 4, 1, height),
                (258, 3, 3, bits_at),
                (259, 3, 1, 1),
                (262, 3, 1, 2),
                (277, 3, 1, 3),
                (284, 3, 1, 1),
                (offsets_tag, 4, n, offsets_at),
                (counts_tag, 4, n, counts_at),
                *layout,
            ]
        )
        ifds.append(len(out))
        out += struct.pack("<H", len(entries))
        for tag, kind, count, value in entries:
            if kind == 3 and count == 1:
                out += struct.pack("<HHIHH", tag, kind, count, value, 0)
            else:
                out += struct.pack("<HHII", tag, kind, count, value)
        next_fields.append(len(out))
        out += b"\0\0\0\0"
    struct.pack_into("<I", out, 4, ifds[0])
    for field_at, ifd in zip(next_fields, ifds[1:], strict=False):
        struct.pack_into("<I", out, field_at, ifd)
    path.write_bytes(bytes(out))
    return path


def zip_of_zeros(path: Path, megabytes: int = 64) -> Path:
    """A ZIP whose one member inflates to `megabytes` MB of zeros (about 1000:1)."""
    block = b"\0" * (1024 * 1024)
    with (
        zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf,
        zf.open("slide.svs", "w") as member,
    ):
        for _ in range(megabytes):
            member.write(block)
    return path


# ---- size -----------------------------------------------------------------------------------------


def test_upload_over_the_limit_is_413_before_the_body_is_read(client, node, tmp_path, settings):
    settings.MAX_UPLOAD_BYTES = 50_000
    path = write_pyramid_tiff(tmp_path / "big.tiff", gradient_image(700, 700), mpp=0.5)
    assert path.stat().st_size > 50_000 + 64 * 1024
    response = upload(client, node, path)
    assert response.status_code == 413
    assert "the limit is 50000 bytes" in message(response)
    assert_nothing_stored(settings, tmp_path)


def test_upload_just_over_the_limit_is_413_from_the_file_size(client, node, tmp_path, settings):
    path = write_pyramid_tiff(tmp_path / "slide.tiff", gradient_image(600, 500), mpp=0.5)
    settings.MAX_UPLOAD_BYTES = path.stat().st_size - 1  # within the envelope's allowance
    response = upload(client, node, path)
    assert response.status_code == 413 and f"is {path.stat().st_size} bytes" in message(response)
    assert_nothing_stored(settings, tmp_path)


# ---- types and archives ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "data", "says"),
    [
        ("tool.exe", b"MZ" + b"\0" * 100, "unsupported file type '.exe'"),
        ("photo.png", png_header(64, 64), "unsupported file type '.png'"),
        ("photo.jpg", jpeg_header(64, 64), "unsupported file type '.jpg'"),
        ("noext", b"\0" * 100, "unsupported file type '(none)'"),
        ("slides.zip", b"PK\x03\x04" + b"\0" * 100, "archives are not accepted"),
        ("slides.tar.gz", b"\x1f\x8b" + b"\0" * 100, "archives are not accepted"),
        ("renamed.svs", b"PK\x03\x04" + b"\0" * 100, "is a ZIP archive, not a slide"),
        ("renamed.tiff", png_header(64, 64), "is a PNG image, not a whole-slide image"),
        ("renamed.tif", jpeg_header(64, 64), "is a JPEG image, not a whole-slide image"),
    ],
    ids=lambda v: v if isinstance(v, str) and len(v) < 40 else "",
)
def test_refused_types(client, node, tmp_path, settings, name, data, says):
    response = post_raw(client, node, name, data)
    assert response.status_code == 400, response.content
    assert says in message(response)
    assert_nothing_stored(settings, tmp_path)


@pytest.mark.parametrize("name", ["bomb.zip", "bomb.svs"])
def test_zip_bomb_is_refused_without_unpacking(client, node, tmp_path, settings, name):
    bomb = zip_of_zeros(tmp_path / "bomb.zip")
    assert bomb.stat().st_size < 1024 * 1024  # 64 MB of zeros in well under 1 MB
    response = upload(client, node, bomb, name=name)
    assert response.status_code == 400
    assert "archive" in message(response)
    assert_nothing_stored(settings, tmp_path)


# ---- path traversal -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "../../escape.tiff",
        "..\\..\\escape.tiff",
        "/etc/escape.tiff",
        "uploads/../../escape.tiff",
        "C:\\Windows\\escape.tiff",
        "&#46;&#46;&#47;escape.tiff",  # "../" as HTML entities, which Django unescapes
        "..",
        "escape\x07.tiff",
    ],
)
def test_file_names_with_a_directory_part_are_refused(client, node, tmp_path, settings, name):
    good = write_pyramid_tiff(tmp_path / "good.tiff", gradient_image(300, 300), mpp=0.5)
    response = upload(client, node, good, name=name)
    assert response.status_code == 400, response.content
    text = message(response)
    assert "file name" in text and ("directory" in text or "control" in text), text
    assert_nothing_stored(settings, tmp_path)


def test_a_plain_name_is_stored_inside_the_upload_folder(client, node, tmp_path, settings):
    good = write_pyramid_tiff(tmp_path / "good.tiff", gradient_image(300, 300), mpp=0.5)
    response = upload(client, node, good, name="level II node 1.tiff")
    assert response.status_code == 201, response.content
    slide = Slide.objects.get()
    stored = Path(slide.file_path).resolve()
    assert stored.is_relative_to(Path(settings.SLIDE_STORAGE_DIR).resolve() / "uploads")
    assert stored.name == "level II node 1.tiff" and slide.name == "level II node 1.tiff"


def test_manifest_paths_may_not_leave_its_folder(people, tmp_path, settings):
    """Relative paths climbing out, symlinks pointing out, and absolute paths outside the import
    roots are refused row by row; the good row still imports."""
    settings.SLIDE_IMPORT_ROOTS = [tmp_path / "batch"]
    batch = tmp_path / "batch"
    batch.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    for i, folder in enumerate((batch, outside)):
        write_pyramid_tiff(folder / "slide.tiff", gradient_image(300, 300, seed=i), mpp=0.5)
    (batch / "link.tiff").symlink_to(outside / "slide.tiff")
    make_case(people.lab, "S26-0001", nodes=("n1", "n2", "n3", "n4"))
    manifest = batch / "manifest.csv"
    manifest.write_text(
        "case,node,file\n"
        "S26-0001,n1,../outside/slide.tiff\n"
        "S26-0001,n2,link.tiff\n"
        f"S26-0001,n3,{outside / 'slide.tiff'}\n"
        "S26-0001,n4,slide.tiff\n"
    )
    report = import_manifest(manifest=manifest)
    reasons = {row: reason for row, _file, reason in report.failed}
    assert reasons[2] == "relative path leaves the manifest's folder"
    assert reasons[3] == "relative path leaves the manifest's folder"
    assert "outside the folders slides may be imported from" in reasons[4]
    assert [s.node.label for s in report.imported] == ["n4"]
    assert Slide.objects.count() == 1


# ---- decompression bombs --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "data", "declared"),
    [
        ("bomb.tiff", png_header(100_000, 100_000), "PNG image declaring 100,000 × 100,000 px"),
        ("bomb.svs", jpeg_header(60_000, 60_000), "JPEG image declaring 60,000 × 60,000 px"),
        # Between Pillow's warning and error thresholds: refused all the same.
        ("bomb.tif", png_header(10_000, 10_000), "(100,000,000 pixels)"),
    ],
    ids=["png-100k", "jpeg-60k", "png-10k"],
)
def test_image_headers_claiming_too_many_pixels_are_refused(
    client, node, tmp_path, settings, name, data, declared
):
    response = post_raw(client, node, name, data)
    assert response.status_code == 400, response.content
    text = message(response)
    assert "decompression bomb refused" in text and declared in text, text
    assert_nothing_stored(settings, tmp_path)


def test_pillows_limit_is_the_one_enforced(client, node, tmp_path, settings, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000_000)
    response = post_raw(client, node, "small-bomb.tiff", png_header(1001, 1000))
    assert response.status_code == 400 and "more than the limit of 1,000,000" in message(response)


@pytest.mark.parametrize(
    ("levels", "tiled", "says"),
    [
        # 100,000 px a side, one level: a thumbnail would decode 10^10 pixels (30 GB).
        (
            [(100_000, 100_000)],
            True,
            "absurd pyramid refused: its lowest resolution is 100,000 × 100,000 px",
        ),
        # A pyramid that stops at 50,000 px: still 2.5 × 10^9 pixels at its lowest resolution.
        ([(100_000, 100_000), (50_000, 50_000)], True, "lowest resolution is 50,000 × 50,000 px"),
        # Beyond any scanner: 2,000,000 px wide.
        ([(2_000_000, 256)], True, "claims 2,000,000 × 256 px; the largest slide accepted"),
        # An untiled 20,000 x 20,000 image is decoded in one piece.
        ([(20_000, 20_000)], False, "20,000 × 20,000 px in one piece (not tiled)"),
    ],
    ids=["one-level-100k", "pyramid-stops-at-50k", "2M-wide", "untiled-20k"],
)
def test_tiffs_with_absurd_declared_pyramids_are_refused(
    client, node, tmp_path, settings, levels, tiled, says
):
    bomb = write_tile_bomb(tmp_path / "bomb.tiff", levels, tiled=tiled)
    assert bomb.stat().st_size < 2 * 1024 * 1024
    response = upload(client, node, bomb)
    assert response.status_code == 400, response.content
    assert says in message(response), message(response)
    assert_nothing_stored(settings, tmp_path)


def test_a_sane_pyramid_built_the_same_way_is_accepted(tmp_path):
    """The control for the bombs above: the same writer with a real pyramid passes the checks."""
    path = write_tile_bomb(
        tmp_path / "fine.tiff", [(4096, 4096), (2048, 2048), (1024, 1024), (512, 512)]
    )
    info = inspect_slide_file(path)
    assert (info.width, info.height) == (4096, 4096)


def test_the_declared_size_cap_is_a_setting(tmp_path, settings):
    settings.MAX_SLIDE_SIDE_PX = 800
    path = write_pyramid_tiff(tmp_path / "wide.tiff", gradient_image(1000, 300), mpp=0.5)
    with pytest.raises(SlideImportError, match="the largest slide accepted is 800 px a side"):
        inspect_slide_file(path)


def test_nothing_is_left_in_the_temporary_upload_folder(client, node, tmp_path, settings):
    """Bodies over FILE_UPLOAD_MAX_MEMORY_SIZE spill to a temporary file; a refusal removes it."""
    settings.FILE_UPLOAD_MAX_MEMORY_SIZE = 1024
    settings.FILE_UPLOAD_TEMP_DIR = str(tmp_path / "spill")
    os.makedirs(settings.FILE_UPLOAD_TEMP_DIR)
    bomb = write_tile_bomb(tmp_path / "bomb.tiff", [(100_000, 100_000)])
    response = upload(client, node, bomb)
    assert response.status_code == 400
    assert list(Path(settings.FILE_UPLOAD_TEMP_DIR).iterdir()) == []
    assert_nothing_stored(settings, tmp_path)


def test_io_sanity_of_the_headers():
    """The crafted headers are what they claim to be (Pillow reads their sizes)."""
    with Image.open(io.BytesIO(png_header(640, 480))) as img:
        assert img.size == (640, 480)
    with Image.open(io.BytesIO(jpeg_header(800, 600))) as img:
        assert img.size == (800, 600)
