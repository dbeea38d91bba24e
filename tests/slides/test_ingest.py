"""Registering slides: real files from ../shared/data and tifffile-written pyramids; bad input."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from slides.ingest import SlideImportError, file_checksum, import_manifest, register_slide
from slides.models import Case, Node, Slide
from tests.conftest import CMU_DIR, needs_shared_data
from tests.factories import gradient_image, write_pyramid_tiff


@needs_shared_data
@pytest.mark.parametrize(
    ("relpath", "source", "levels", "tile"),
    [
        ("CMU-1-Small-Region.svs", "openslide", 5, 240),
        ("CMU-1-Small-Region.pyramid.tiff", "tiff", 5, 256),
        ("dicom", "dicom", 4, 500),
    ],
)
def test_real_cmu_slide_registers_with_its_metadata(case, people, relpath, source, levels, tile):
    node = case.nodes.first()
    slide = register_slide(node=node, path=CMU_DIR / relpath, user=people.pathologist)
    slide.refresh_from_db()
    assert (slide.width, slide.height) == (2220, 2967)
    assert slide.source == source
    assert slide.levels == levels
    assert slide.tile_width == tile
    assert slide.mpp_x == pytest.approx(0.499, abs=1e-4)
    assert slide.magnification == pytest.approx(20, abs=0.1)
    assert len(slide.checksum) == 64
    assert slide.imported_by == people.pathologist
    if source == "openslide":
        assert slide.vendor == "aperio"
        assert set(slide.associated_images) >= {"label", "macro"}
        assert slide.file_size == (CMU_DIR / relpath).stat().st_size


@needs_shared_data
def test_svs_checksum_matches_published_md5_file(tmp_path):
    import hashlib

    data = (CMU_DIR / "CMU-1-Small-Region.svs").read_bytes()
    assert hashlib.md5(data).hexdigest() == "1ad6e35c9d17e4d85fb7e3143b328efe"
    assert file_checksum(CMU_DIR / "CMU-1-Small-Region.svs")[0] == hashlib.sha256(data).hexdigest()


def test_generated_pyramid_registers(case, tiny_tiff):
    slide = register_slide(node=case.nodes.first(), path=tiny_tiff)
    assert (slide.width, slide.height, slide.levels) == (1000, 700, 3)
    assert slide.mpp == pytest.approx(0.5, rel=1e-3)
    assert slide.source == "tiff"


def test_duplicate_import_is_refused_and_nothing_added(case, tiny_tiff, tmp_path):
    node = case.nodes.first()
    first = register_slide(node=node, path=tiny_tiff)
    copy = tmp_path / "copy.tiff"
    shutil.copy(tiny_tiff, copy)
    with pytest.raises(SlideImportError, match=f"already imported as slide {first.pk}"):
        register_slide(node=node, path=copy)
    assert Slide.objects.count() == 1


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("notes.txt", b"hello", "unsupported file type '.txt'"),
        ("empty.svs", b"", "file is empty"),
        ("fake.svs", b"this is not a slide at all" * 100, "not a readable whole-slide image"),
    ],
)
def test_bad_files_are_refused_with_a_reason(case, tmp_path, name, content, reason):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(SlideImportError) as err:
        register_slide(node=case.nodes.first(), path=path)
    assert reason in err.value.reason
    assert name in str(err.value)
    assert not Slide.objects.exists()


def test_truncated_tiff_is_refused(case, tmp_path):
    full = write_pyramid_tiff(tmp_path / "full.tiff", gradient_image(2048, 2048, seed=3), mpp=0.25)
    data = full.read_bytes()
    truncated = tmp_path / "truncated.tiff"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(SlideImportError) as err:
        register_slide(node=case.nodes.first(), path=truncated)
    assert "truncated.tiff" in str(err.value)
    assert not Slide.objects.exists()


def test_missing_file_is_refused(case, tmp_path):
    with pytest.raises(SlideImportError, match="file not found"):
        register_slide(node=case.nodes.first(), path=tmp_path / "gone.svs")


def _manifest(tmp_path: Path, rows: list[str]) -> Path:
    path = tmp_path / "manifest.csv"
    path.write_text("case,node,file,status\n" + "\n".join(rows) + "\n")
    return path


def test_manifest_imports_good_rows_and_reports_bad_ones(people, tmp_path):
    for i in range(3):
        write_pyramid_tiff(tmp_path / f"s{i}.tiff", gradient_image(600, 400, seed=i), mpp=0.5)
    (tmp_path / "bad.tiff").write_bytes(b"II*\x00garbage")
    manifest = _manifest(
        tmp_path,
        [
            "S26-1,level II node 1,s0.tiff,positive",
            "S26-1,level II node 2,s1.tiff,negative",
            "S26-2,level IV node 1,s2.tiff,",
            "S26-2,level IV node 1,bad.tiff,",
            "S26-2,level IV node 1,missing.tiff,",
            "S26-2,level IV node 1,../escape.tiff,",
            "S26-2,level IV node 1,s0.tiff,",  # duplicate
        ],
    )
    report = import_manifest(manifest=manifest, lab=people.lab, create_missing=True)
    assert len(report.imported) == 3
    reasons = {row: reason for row, _file, reason in report.failed}
    assert set(reasons) == {5, 6, 7, 8}
    assert "not a readable whole-slide image" in reasons[5]
    assert "file not found" in reasons[6]
    assert "leaves the manifest's folder" in reasons[7]
    assert "already imported" in reasons[8]
    assert Node.objects.get(label="level II node 1").ground_truth == "positive"
    assert Node.objects.get(label="level II node 2").ground_truth == "negative"
    assert Case.objects.count() == 2


def test_manifest_row_naming_unknown_node_is_an_error(case, tmp_path):
    write_pyramid_tiff(tmp_path / "s.tiff", gradient_image(300, 300), mpp=0.5)
    manifest = _manifest(tmp_path, [f"{case.accession_number},level IX node 9,s.tiff,"])
    report = import_manifest(manifest=manifest)
    assert report.imported == []
    assert report.failed == [
        (2, "s.tiff", f"unknown node 'level IX node 9' in case '{case.accession_number}'")
    ]
    assert not Slide.objects.exists()
    assert case.nodes.count() == 2  # nothing half-created


def test_import_slides_command_with_manifest_folder(people, tmp_path, capsys):
    write_pyramid_tiff(tmp_path / "a.tiff", gradient_image(500, 500), mpp=0.5)
    (tmp_path / "b.tiff").write_text("not a tiff")
    _manifest(tmp_path, ["C-1,node 1,a.tiff,negative", "C-1,node 1,b.tiff,"])
    call_command("import_slides", str(tmp_path), "--lab", people.lab.code, "--create-missing")
    out = capsys.readouterr()
    assert "1 imported, 1 failed" in out.out
    assert "b.tiff" in out.err
    assert Slide.objects.get().node.case.lab == people.lab


def test_import_slides_command_refuses_unknown_lab(db, tmp_path):
    with pytest.raises(CommandError, match="unknown lab"):
        call_command("import_slides", str(tmp_path), "--lab", "nope", "--create-missing")
