"""Slide files that point elsewhere, duplicates across labs, truncated slides, paths in messages
(issue 16, items 2, 3, 7, 11, 12).

- A Hamamatsu VMS is an INI text naming its JPEGs (`ImageFile=...`); OpenSlide follows the names
  wherever they point. Uploads accept only self-contained files judged by their bytes; multi-file
  formats come in only through manifests under an import root, every named file inside it.
- Duplicates are judged within a lab; messages never name another lab's rows.
- A truncated SVS is refused instead of registering as a plain TIFF without label and macro.
- Refusals say what is wrong without server paths; an unknown DICOM transfer syntax is a 400.

Every refused upload leaves nothing behind: no Slide row, no file in storage.
"""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile
from django.db import IntegrityError, transaction
from django.test import Client
from PIL import Image

from slides.file_formats import (
    NotSelfContained,
    check_references_inside,
    check_self_contained,
    scrub_paths,
)
from slides.ingest import SlideImportError, import_manifest, register_slide
from slides.models import Slide
from slides.node_images import register_node_image
from slides.tasks import register_slide_task
from tests.conftest import CMU_DIR, needs_shared_data
from tests.factories import gradient_image, make_case, write_pyramid_tiff

URL = "/api/slides/"


@pytest.fixture
def node(case):
    return case.nodes.order_by("label").first()


def client_for(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def post_file(client: Client, node, name: str, data: bytes, **fields):
    """A multipart upload written by hand: the file name goes out exactly as given."""
    boundary = "----nodescope-slide-files"
    parts = [("node", str(node.pk)), *((k, str(v)) for k, v in fields.items())]
    body = b"".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n{value}\r\n'.encode()
        for key, value in parts
    )
    body += (
        f"--{boundary}\r\n"
        f'Content-Disposition: form-data; name="file"; filename="{name}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    body += data + f"\r\n--{boundary}--\r\n".encode()
    return client.post(URL, data=body, content_type=f"multipart/form-data; boundary={boundary}")


def message(response) -> str:
    body = response.json()
    return " ".join(str(v) for v in (body.get("file") or [body.get("detail", body)]))


def stored_files(settings) -> list[Path]:
    return [p for p in Path(settings.SLIDE_STORAGE_DIR).rglob("*") if p.is_file()]


def assert_refused_cleanly(response, settings, tmp_path, *, says: str) -> str:
    """400, naming `says`, no server path in the body, nothing written."""
    assert response.status_code == 400, response.content
    text = message(response)
    assert says in text, text
    assert_no_paths(response.content.decode(), settings, tmp_path)
    assert not Slide.objects.exists()
    assert stored_files(settings) == []
    return text


def assert_no_paths(text: str, settings, tmp_path: Path) -> None:
    for secret in (str(settings.SLIDE_STORAGE_DIR), str(tmp_path), "/uploads/", "/tmp/"):
        assert secret not in text, f"{secret!r} in {text!r}"


def restart_jpeg(path: Path, width: int, height: int, seed: int = 0) -> Path:
    """A baseline JPEG with restart markers every MCU row (OpenSlide's VMS reader needs them)."""
    Image.fromarray(gradient_image(width, height, seed=seed)).save(
        path, quality=90, restart_marker_rows=1
    )
    return path


def write_vms(folder: Path, *, image: str, map_file: str = "map.jpg", extra: str = "") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    vms = folder / "slide.vms"
    vms.write_text(
        "[Virtual Microscope Specimen]\n"
        "NoLayers=1\nNoJpegColumns=1\nNoJpegRows=1\n"
        f"ImageFile={image}\nMapFile={map_file}\n"
        "PhysicalWidth=384000\nPhysicalHeight=256000\nSourceLens=20\n" + extra
    )
    return vms


def vms_text(image: str) -> bytes:
    return (
        "[Virtual Microscope Specimen]\nNoLayers=1\nNoJpegColumns=1\nNoJpegRows=1\n"
        f"ImageFile={image}\nMapFile={image}\n"
    ).encode()


# ---- item 2: formats that name other files -----------------------------------------------------


def test_uploaded_vms_pointing_outside_its_folder_is_refused(people, node, tmp_path, settings):
    """The reported attack: a VMS naming ../../ JPEGs. The target JPEGs exist and would open."""
    secret_dir = Path(settings.SLIDE_STORAGE_DIR).parent  # storage/, beside the upload root
    restart_jpeg(secret_dir / "secret.jpg", 768, 512)
    restart_jpeg(secret_dir / "map.jpg", 96, 64)
    data = vms_text("../../../secret.jpg").replace(
        b"MapFile=../../../secret.jpg", b"MapFile=../../../map.jpg"
    )
    response = post_file(client_for(people.pathologist), node, "slide.vms", data)
    text = assert_refused_cleanly(response, settings, tmp_path, says="Hamamatsu VMS")
    assert "not accepted as uploads" in text
    assert "secret" not in text


@pytest.mark.parametrize(
    ("name", "data", "says"),
    [
        # VMS text under a TIFF name: judged by its bytes, not its name.
        ("innocent.tiff", vms_text("../../etc/x.jpg"), "Hamamatsu VMS/VMU index"),
        ("innocent.svs", vms_text("img.jpg"), "Hamamatsu VMS/VMU index"),
        ("slide.mrxs", b"[GENERAL]\nSLIDE_VERSION=01.02\nSLIDE_ID=x\n", "unsupported file type"),
        ("renamed.svs", b"[GENERAL]\nSLIDE_VERSION=01.02\nSLIDE_ID=x\n", "MIRAX index"),
        ("slide.vmu", b"[Uncompressed Virtual Microscope Specimen]\nImageFile=a.raw\n", "type"),
        ("multi.yml", b"sources:\n  - path: /etc/passwd\n", "unsupported file type"),
        ("multi.tiff", b"sources:\n  - path: ../../x.svs\n    z: 0\n", "multi-source"),
        ("multi.svs", b'{"sources": [{"path": "../x.svs"}]}', "multi-source"),
        ("set.ndpi", b"[NanoZoomer Digital Pathology Image Set]\nNoImages=1\n", "NDP image set"),
        ("companion.tiff", b'<?xml version="1.0"?><OME><BinaryOnly/></OME>', "XML file"),
        ("random.svs", b"\x00\x01 definitely not a slide" * 40, "no self-contained slide format"),
    ],
    ids=lambda v: v if isinstance(v, str) and len(v) < 30 else "",
)
def test_uploads_naming_other_files_are_refused(people, node, tmp_path, settings, name, data, says):
    response = post_file(client_for(people.pathologist), node, name, data)
    assert_refused_cleanly(response, settings, tmp_path, says=says)


def test_ome_tiff_with_planes_in_other_files_is_refused(tmp_path):
    path = tmp_path / "planes.ome.tif"
    tifffile.imwrite(path, gradient_image(64, 64), photometric="rgb", ome=True)
    assert check_self_contained(path) == "tiff"  # tifffile's own OME-TIFF names only itself
    xml = tifffile.TiffFile(path).pages.first.description
    foreign = xml.replace(
        "<TiffData",
        '<TiffData IFD="0" PlaneCount="1"><UUID FileName="other.ome.tif">'
        "urn:uuid:00000000-0000-0000-0000-000000000001</UUID></TiffData><TiffData",
        1,
    )
    tifffile.tiffcomment(path, foreign.encode())
    with pytest.raises(NotSelfContained, match="planes live in other files"):
        check_self_contained(path)
    binary_only = tmp_path / "binary.ome.tif"
    tifffile.imwrite(
        binary_only,
        gradient_image(64, 64),
        photometric="rgb",
        description='<?xml version="1.0"?><OME xmlns="http://www.openmicroscopy.org/Schemas/OME/'
        '2016-06"><BinaryOnly MetadataFile="meta.companion.ome" UUID="urn:uuid:1"/></OME>',
        metadata=None,
    )
    with pytest.raises(NotSelfContained, match="BinaryOnly"):
        check_self_contained(binary_only)


@pytest.fixture
def import_root(settings, tmp_path) -> Path:
    root = tmp_path / "imports"
    root.mkdir()
    settings.SLIDE_IMPORT_ROOTS = [root]
    return root


def test_vms_reference_check_refuses_outside_and_passes_inside(import_root, tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    restart_jpeg(outside / "secret.jpg", 64, 64)
    bad = write_vms(import_root / "bad", image="../../elsewhere/secret.jpg")
    with pytest.raises(NotSelfContained, match="key ImageFile names a file outside") as err:
        check_references_inside(bad, import_root)
    assert str(tmp_path) not in str(err.value) and "secret" not in str(err.value)
    absolute = write_vms(import_root / "abs", image=str(outside / "secret.jpg"))
    with pytest.raises(NotSelfContained, match="ImageFile"):
        check_references_inside(absolute, import_root)
    macro = write_vms(import_root / "macro", image="img.jpg", extra="MacroImage=/etc/hostname\n")
    with pytest.raises(NotSelfContained, match="key MacroImage"):
        check_references_inside(macro, import_root)
    # A symlink inside the folder pointing out is followed, and refused.
    linked = import_root / "linked"
    linked.mkdir()
    (linked / "img.jpg").symlink_to(outside / "secret.jpg")
    with pytest.raises(NotSelfContained, match="ImageFile"):
        check_references_inside(write_vms(linked, image="img.jpg"), import_root)
    good = write_vms(import_root / "good", image="img.jpg")
    check_references_inside(good, import_root)  # every name inside: no refusal


def test_vms_through_a_manifest_imports_only_when_every_file_is_inside(
    people, import_root, tmp_path
):
    make_case(people.lab, "S26-0100", nodes=("n1", "n2", "n3"))
    good = import_root / "good"
    good.mkdir()
    restart_jpeg(good / "img.jpg", 768, 512)
    restart_jpeg(good / "map.jpg", 96, 64)
    write_vms(good, image="img.jpg")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    restart_jpeg(outside / "secret.jpg", 768, 512)
    bad = import_root / "bad"
    shutil.copytree(good, bad)
    write_vms(bad, image="../../elsewhere/secret.jpg")
    manifest = import_root / "manifest.csv"
    manifest.write_text("case,node,file\nS26-0100,n1,good/slide.vms\nS26-0100,n2,bad/slide.vms\n")
    report = import_manifest(manifest=manifest)
    assert [s.node.label for s in report.imported] == ["n1"]
    slide = report.imported[0]
    assert slide.source == "openslide" and slide.vendor == "hamamatsu"
    ((row, _file, reason),) = report.failed
    assert row == 3 and "key ImageFile names a file outside the import root" in reason
    assert str(tmp_path) not in reason


def test_multi_file_formats_need_an_import_root(people, tmp_path, settings):
    """Without SLIDE_IMPORT_ROOTS a manifest may name any file, but never a multi-file format."""
    settings.SLIDE_IMPORT_ROOTS = []
    folder = tmp_path / "batch"
    folder.mkdir()
    restart_jpeg(folder / "img.jpg", 768, 512)
    restart_jpeg(folder / "map.jpg", 96, 64)
    write_vms(folder, image="img.jpg")
    make_case(people.lab, "S26-0101", nodes=("n1",))
    (folder / "manifest.csv").write_text("case,node,file\nS26-0101,n1,slide.vms\n")
    report = import_manifest(manifest=folder / "manifest.csv")
    assert not report.imported
    assert "not accepted as uploads" in report.failed[0][2]


def test_mrxs_sidecar_references_are_checked(import_root, tmp_path):
    mrxs = import_root / "slide.mrxs"
    mrxs.write_text("[GENERAL]\nSLIDE_VERSION=01.02\nSLIDE_ID=x\n")
    with pytest.raises(NotSelfContained, match="without its sidecar folder"):
        check_references_inside(mrxs, import_root)
    sidecar = import_root / "slide"
    sidecar.mkdir()
    (sidecar / "Slidedat.ini").write_text(
        "[GENERAL]\nSLIDE_VERSION=01.02\n[DATAFILE]\nFILE_COUNT=1\nFILE_0=../../outside.dat\n"
    )
    with pytest.raises(NotSelfContained, match="Slidedat.ini's key FILE_0"):
        check_references_inside(mrxs, import_root)
    (sidecar / "Slidedat.ini").write_text(
        "[GENERAL]\nSLIDE_VERSION=01.02\n[DATAFILE]\nFILE_COUNT=1\nFILE_0=Data0000.dat\n"
    )
    check_references_inside(mrxs, import_root)
    (tmp_path / "outside.dat").write_bytes(b"x")
    (sidecar / "Data0001.dat").symlink_to(tmp_path / "outside.dat")
    with pytest.raises(NotSelfContained, match="sidecar folder holds 'Data0001.dat'"):
        check_references_inside(mrxs, import_root)


def test_dicom_folder_with_a_file_linked_from_outside_is_refused(case, tmp_path):
    folder = tmp_path / "series"
    folder.mkdir()
    (tmp_path / "other.dcm").write_bytes(b"\0" * 128 + b"DICM")
    (folder / "a.dcm").write_bytes(b"\0" * 128 + b"DICM")
    (folder / "b.dcm").symlink_to(tmp_path / "other.dcm")
    with pytest.raises(SlideImportError, match="resolves outside the folder") as err:
        register_slide(node=case.nodes.first(), path=folder)
    assert str(tmp_path) not in err.value.reason


# ---- item 3: duplicates are per lab ---------------------------------------------------------------


def test_duplicates_are_refused_within_a_lab_and_accepted_across_labs(
    people, node, tmp_path, settings, tiny_tiff
):
    other_case = make_case(people.other_lab, "OTHER-0001", nodes=("their secret node",))
    data = tiny_tiff.read_bytes()
    theirs = post_file(
        client_for(people.outsider), other_case.nodes.first(), "their-secret-name.tiff", data
    )
    assert theirs.status_code == 201, theirs.content
    # Our lab may register the file the other lab holds, and learns nothing about it.
    ours = post_file(client_for(people.pathologist), node, "ours.tiff", data)
    assert ours.status_code == 201, ours.content
    assert Slide.objects.count() == 2
    assert {s.lab for s in Slide.objects.all()} == {people.lab, people.other_lab}
    # Within our lab the same file again is refused, naming only our own slide.
    again = post_file(client_for(people.lab_lead), node, "again.tiff", data)
    assert again.status_code == 400, again.content
    text = message(again)
    assert "already imported" in text and "ours.tiff" in text
    for secret in ("OTHER-0001", "their-secret-name", "their secret node", "Other Lab"):
        assert secret not in again.content.decode()
    assert_no_paths(again.content.decode(), settings, tmp_path)
    assert Slide.objects.count() == 2
    assert len(stored_files(settings)) == 2


def test_duplicate_node_images_are_per_lab(people, node, tmp_path):
    png = tmp_path / "us.png"
    Image.fromarray(gradient_image(64, 48)).save(png)
    other_node = make_case(people.other_lab, "OTHER-0002", nodes=("n",)).nodes.first()
    register_node_image(node=other_node, path=png, modality="ultrasound", user=people.outsider)
    mine = register_node_image(node=node, path=png, modality="ultrasound", user=people.pathologist)
    with pytest.raises(SlideImportError, match=f"already imported as image {mine.pk}") as err:
        register_node_image(node=node, path=png, modality="ultrasound", user=people.pathologist)
    assert "OTHER-0002" not in err.value.reason


def test_duplicate_not_visible_to_the_user_is_not_named(people, node, tiny_tiff):
    from slides.models import Lab

    first = register_slide(node=node, path=tiny_tiff, name="hidden-name.tiff")
    stranger = people.outsider  # not a member of the lab: sees none of its slides
    with pytest.raises(SlideImportError) as err:
        register_slide(node=node, path=tiny_tiff, user=stranger)
    assert "hidden-name" not in err.value.reason and str(first.pk) not in err.value.reason
    assert "already imported in this lab" in err.value.reason
    assert Lab.objects.count() == 2


def test_checksums_are_unique_per_lab_in_the_database(people, node, tiny_tiff):
    slide = register_slide(node=node, path=tiny_tiff)
    other_node = make_case(people.other_lab, "OTHER-0003", nodes=("n",)).nodes.first()
    fields = {
        f.name: getattr(slide, f.name)
        for f in Slide._meta.concrete_fields
        if f.name not in {"id", "node", "lab", "imported_at", "imported_by"}
    }
    Slide.objects.create(node=other_node, **fields)  # another lab: allowed, lab filled in
    assert Slide.objects.filter(lab=people.other_lab).count() == 1
    second_node = node.case.nodes.exclude(pk=node.pk).first()
    with pytest.raises(IntegrityError), transaction.atomic():
        Slide.objects.create(node=second_node, **fields)


# ---- item 11: truncated slides ---------------------------------------------------------------------


@needs_shared_data
@pytest.mark.parametrize("fraction", [0.9, 0.5, 0.99])
def test_truncated_svs_is_refused_with_the_reason(people, node, tmp_path, settings, fraction):
    """The first 90 % of the SVS used to register as a plain TIFF without label and macro."""
    data = (CMU_DIR / "CMU-1-Small-Region.svs").read_bytes()
    cut = tmp_path / "cut.svs"
    kept = int(len(data) * fraction)
    cut.write_bytes(data[:kept])
    with pytest.raises(SlideImportError, match="the file is truncated: ") as err:
        register_slide(node=node, path=cut)
    assert f"of {kept:,}" in err.value.reason
    assert str(tmp_path) not in err.value.reason
    response = post_file(client_for(people.pathologist), node, "cut.svs", cut.read_bytes())
    assert_refused_cleanly(response, settings, tmp_path, says="the file is truncated")


@needs_shared_data
def test_complete_real_slides_pass_the_truncation_check(case):
    nodes = list(case.nodes.all())
    for node, name in zip(
        nodes, ["CMU-1-Small-Region.svs", "CMU-1-Small-Region.pyramid.tiff"], strict=True
    ):
        register_slide(node=node, path=CMU_DIR / name)
    svs = Slide.objects.get(name="CMU-1-Small-Region.svs")
    assert {"label", "macro"} <= set(svs.associated_images)


def test_truncated_pyramid_tiff_names_the_level(node, tmp_path):
    whole = write_pyramid_tiff(tmp_path / "whole.tiff", gradient_image(1200, 900), mpp=0.5)
    data = whole.read_bytes()
    with tifffile.TiffFile(whole) as tif:
        page = tif.pages[1]
        cut_at = int(page.dataoffsets[-1]) + 1  # level 1's last tile loses all but a byte
    cut = tmp_path / "cut.tiff"
    cut.write_bytes(data[:cut_at])
    with pytest.raises(SlideImportError, match="the file is truncated") as err:
        register_slide(node=node, path=cut)
    assert "level" in err.value.reason or "directory" in err.value.reason
    assert not Slide.objects.exists()


def test_truncated_ome_pyramid_names_the_sub_resolution(tmp_path):
    """OME-TIFF keeps its levels in SubIFDs: their directories and tiles are checked too."""
    from slides.ingest import check_tiff_complete

    image = gradient_image(1400, 1000)
    whole = tmp_path / "whole.ome.tif"
    with tifffile.TiffWriter(whole, bigtiff=True, ome=True) as tif:
        tif.write(image, tile=(256, 256), photometric="rgb", compression="jpeg", subifds=1)
        tif.write(image[::2, ::2], tile=(256, 256), photometric="rgb", compression="jpeg")
    with tifffile.TiffFile(whole) as tif:
        check_tiff_complete(whole, tif)  # complete: no refusal
        sub = tif.pages[0].pages[0]
        cut_at = int(sub.dataoffsets[-1]) + 1
    cut = tmp_path / "cut.ome.tif"
    cut.write_bytes(whole.read_bytes()[:cut_at])
    with (
        pytest.raises(SlideImportError, match="the file is truncated: image 1's") as err,
        tifffile.TiffFile(cut) as tif,
    ):
        check_tiff_complete(cut, tif)
    assert f"of {cut_at:,}" in err.value.reason


# ---- item 12: no server paths in messages -----------------------------------------------------------


def test_refusals_carry_no_server_paths(people, node, tmp_path, settings):
    client = client_for(people.pathologist)
    broken_tiff = b"II*\x00" + b"\xff" * 200  # a TIFF header large-image cannot open
    bad = {
        "garbage.svs": b"not a slide " * 50,
        "broken.tiff": broken_tiff,
        "empty.svs": b"",
        "slide.vms": vms_text("../../x.jpg"),
    }
    for name, data in bad.items():
        response = post_file(client, node, name, data)
        assert response.status_code == 400, (name, response.content)
        assert_no_paths(response.content.decode(), settings, tmp_path)
    assert not Slide.objects.exists() and stored_files(settings) == []
    # The background task reports the file by name and the reason without a path.
    path = tmp_path / "garbage.svs"
    path.write_bytes(broken_tiff)
    result = register_slide_task(node.pk, str(path))
    assert result["ok"] is False and result["file"] == "garbage.svs"
    assert_no_paths(result["reason"], settings, tmp_path)


def test_scrub_paths_keeps_the_file_name_only():
    text = "tiff: File /srv/slides/uploads/abc/a.svs didn't meet: Could not open '/x/y/b.tiff'"
    assert scrub_paths(text) == "tiff: File a.svs didn't meet: Could not open 'b.tiff'"
    assert scrub_paths("0.5 µm/px, tiles z/x/y") == "0.5 µm/px, tiles z/x/y"


# ---- item 7: DICOM with an unknown transfer syntax ----------------------------------------------------


def dicom_with_syntax(syntax: str) -> bytes:
    pydicom = pytest.importorskip("pydicom")
    from pydicom.dataset import Dataset, FileMetaDataset

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    meta.TransferSyntaxUID = syntax
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "CT"
    ds.Rows, ds.Columns = 4, 4
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = np.zeros((4, 4), np.uint16).tobytes()
    out = io.BytesIO()
    ds.save_as(out, implicit_vr=False, little_endian=True, enforce_file_format=True)
    return out.getvalue()


@pytest.mark.parametrize("modality", ["slide", "ct"])
def test_unknown_dicom_transfer_syntax_is_a_400_naming_it(
    people, node, tmp_path, settings, modality
):
    data = dicom_with_syntax("1.2.3.4.5")
    fields = {} if modality == "slide" else {"modality": modality}
    response = post_file(client_for(people.pathologist), node, "scan.dcm", data, **fields)
    text = assert_refused_cleanly(response, settings, tmp_path, says="1.2.3.4.5")
    assert "transfer syntax" in text
