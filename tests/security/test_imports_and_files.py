"""Hostile files: XML entities in any encoding, oversized annotation imports, non-finite DSA
rectangles, arrays datasets that are not arrays, and training figures that are not numbers."""

from __future__ import annotations

import json
import math
import pickle

import numpy as np
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command
from django.test import Client

from annotations.formats import FormatError, read_asap
from annotations.models import Annotation, AnnotationImport
from inference.jobs import TrainingRequestError, read_patch_arrays
from inference.records import ModelVersion, TrainingRun
from inference.safe_json import json_safe, with_reasons
from slides.ingest import register_slide

ASAP_HEAD = '<?xml version="1.0"?>\n'
BILLION_LAUGHS = (
    '<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;">'
    '<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>'
)
EXTERNAL = '<!DOCTYPE x [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>'


def _asap(polygons: int, *, vertices: int = 4, prolog: str = "", name: str = "&lol3;") -> str:
    body = []
    for p in range(polygons):
        coords = "".join(  # a convex polygon, one beside the other
            f'<Coordinate Order="{i}" X="{100 + 50 * p + 20 * math.cos(2 * math.pi * i / vertices):.3f}"'
            f' Y="{300 + 20 * math.sin(2 * math.pi * i / vertices):.3f}"/>'
            for i in range(vertices)
        )
        body.append(
            f'<Annotation Name="{name if prolog else "a"}{p}" Type="Polygon" PartOfGroup="Tumor">'
            f"<Coordinates>{coords}</Coordinates></Annotation>"
        )
    return f"{ASAP_HEAD}{prolog}<ASAP_Annotations><Annotations>{''.join(body)}</Annotations></ASAP_Annotations>"


@pytest.fixture
def slide(case, tiny_tiff, label_classes):
    return register_slide(node=case.nodes.first(), path=tiny_tiff)


@pytest.fixture
def admin_client(people):
    client = Client()
    client.force_login(people.admin)
    return client


def _import(client, slide, data: bytes, name: str, **extra):
    upload = SimpleUploadedFile(name, data, content_type="application/octet-stream")
    return client.post(
        f"/api/slides/{slide.pk}/annotations/import/", {"file": upload, **extra}, format="multipart"
    )


# ---- XML: entities refused in every encoding ------------------------------------------------


@pytest.mark.parametrize("prolog", [BILLION_LAUGHS, EXTERNAL])
@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-be", "utf-8"])
def test_asap_entity_declarations_are_refused_in_any_encoding(prolog, encoding):
    text = _asap(1, prolog=prolog, name="&lol3;" if "lol" in prolog else "&xxe;")
    declared = text.replace('"1.0"?>', f'"1.0" encoding="{encoding.upper()}"?>')
    data = declared.encode(encoding)  # utf-16: with a BOM
    if encoding == "utf-16":
        assert data[:2] in (b"\xff\xfe", b"\xfe\xff")
        assert b"<!ENTITY" not in data.upper()  # what the old byte check looked for
    # UTF-16 without a BOM: expat cannot even read it; refused as well
    refusal = "DOCTYPE or entity declarations" if encoding != "utf-16-be" else "not an ASAP XML"
    with pytest.raises(FormatError, match=refusal):
        read_asap(data)


def test_a_utf16_asap_bomb_through_the_api_is_a_400_and_imports_nothing(admin_client, slide):
    data = _asap(2, prolog=BILLION_LAUGHS).encode("utf-16")
    response = _import(admin_client, slide, data, "bomb.xml")
    assert response.status_code == 400, response.content
    assert "DOCTYPE or entity declarations" in response.json()["file"][0]
    assert not Annotation.objects.exists() and not AnnotationImport.objects.exists()


def test_a_plain_utf16_asap_file_still_imports(admin_client, slide):
    response = _import(admin_client, slide, _asap(2).encode("utf-16"), "fine.xml")
    assert response.status_code == 201, response.content
    assert response.json()["imported"] == 2


# ---- import bounds --------------------------------------------------------------------------


def test_polygons_over_the_bound_are_a_413_naming_it_and_nothing_is_written(
    admin_client, slide, settings
):
    settings.ANNOTATION_IMPORT_MAX_POLYGONS = 5
    response = _import(admin_client, slide, _asap(6).encode(), "many.xml")
    assert response.status_code == 413, response.content
    body = response.json()
    assert body["limit"] == {"setting": "ANNOTATION_IMPORT_MAX_POLYGONS", "value": 5}
    assert "more than 5 polygons" in body["file"][0]
    assert not Annotation.objects.exists() and not AnnotationImport.objects.exists()
    assert _import(admin_client, slide, _asap(5).encode(), "five.xml").status_code == 201


@pytest.mark.parametrize("fmt", ["asap", "qupath", "dsa"])
def test_vertices_over_the_bound_are_a_413_in_every_format(admin_client, slide, settings, fmt):
    settings.ANNOTATION_IMPORT_MAX_VERTICES = 30
    ring = [[10 + i, 10 + (i % 2) * 30] for i in range(16)]
    if fmt == "asap":
        data, name = _asap(2, vertices=16).encode(), "v.xml"
    elif fmt == "qupath":
        feature = {
            "type": "Feature",
            "geometry": {"type": "Polygon", "coordinates": [ring + [ring[0]]]},
            "properties": {"classification": {"name": "Tumor"}},
        }
        data, name = (
            json.dumps({"type": "FeatureCollection", "features": [feature] * 2}),
            "v.geojson",
        )
    else:
        element = {"type": "polyline", "closed": True, "points": ring, "label": {"value": "Tumor"}}
        data, name = json.dumps({"name": "x", "elements": [element] * 2}), "v.json"
    data = data.encode() if isinstance(data, str) else data
    response = _import(admin_client, slide, data, name)
    assert response.status_code == 413, response.content
    assert response.json()["limit"]["setting"] == "ANNOTATION_IMPORT_MAX_VERTICES"
    assert not Annotation.objects.exists()


def test_the_file_size_bound_is_a_setting(admin_client, slide, settings):
    settings.ANNOTATION_IMPORT_MAX_BYTES = 100
    response = _import(admin_client, slide, _asap(3).encode(), "big.xml")
    assert response.status_code == 413
    assert response.json()["limit"]["setting"] == "ANNOTATION_IMPORT_MAX_BYTES"


# ---- DSA rectangles with non-finite numbers -------------------------------------------------


@pytest.mark.parametrize("rotation", ["NaN", "Infinity", "-Infinity", "1e309", "1" + "0" * 400])
def test_a_non_finite_dsa_rotation_is_a_400_naming_it(admin_client, slide, rotation):
    text = (
        '{"name": "r", "elements": [{"type": "rectangle", "center": [100, 100, 0],'
        f' "width": 40, "height": 20, "rotation": {rotation}, "label": {{"value": "Tumor"}}}}]}}'
    )
    response = _import(admin_client, slide, text.encode(), "rect.json")
    assert response.status_code == 400, response.content
    assert not Annotation.objects.exists()
    if rotation != "1" + "0" * 400:
        assert "rotation" in json.dumps(response.json())


def test_a_finite_rotated_dsa_rectangle_imports(admin_client, slide):
    text = json.dumps(
        {
            "name": "r",
            "elements": [
                {
                    "type": "rectangle",
                    "center": [100, 100, 0],
                    "width": 40,
                    "height": 20,
                    "rotation": 0.5,
                    "label": {"value": "Tumor"},
                }
            ],
        }
    )
    assert _import(admin_client, slide, text.encode(), "rect.json").status_code == 201


# ---- arrays datasets that are not arrays ----------------------------------------------------


class _Boom:
    def __reduce__(self):  # what unpickling would run
        return (print, ("unpickled!",))


def _good(folder):
    folder.mkdir()
    np.save(folder / "images.npy", np.zeros((4, 8, 8, 3), np.uint8))
    np.save(folder / "labels.npy", np.array([0, 1, 0, 1]))


@pytest.mark.parametrize(
    ("what", "write"),
    [
        ("pickle", lambda p: p.write_bytes(pickle.dumps(_Boom()))),
        ("text", lambda p: p.write_text("images,labels\n1,2\n")),
        ("object array", lambda p: np.save(p, np.array([{"a": 1}], dtype=object))),
        ("wrong shape", lambda p: np.save(p, np.zeros((4, 8, 8), np.uint8))),
        ("an npz", lambda p: p.write_bytes((lambda b: b)(_npz_bytes()))),
        ("empty", lambda p: p.write_bytes(b"")),
    ],
)
def test_an_images_npy_that_is_not_an_array_is_refused(tmp_path, capsys, what, write):
    folder = tmp_path / "arrays"
    _good(folder)
    write(folder / "images.npy")
    with pytest.raises(TrainingRequestError, match="images.npy is not a patch array"):
        read_patch_arrays(folder)
    assert "unpickled!" not in capsys.readouterr().out


def _npz_bytes() -> bytes:
    import io

    buffer = io.BytesIO()
    np.savez(buffer, images=np.zeros((2, 8, 8, 3), np.uint8))
    return buffer.getvalue()


@pytest.mark.parametrize(
    "content",
    [
        pickle.dumps({"images": 1}),
        b"not an archive",
        _npz_bytes(),  # no labels
    ],
)
def test_an_npz_that_is_not_a_patch_archive_is_refused(tmp_path, content):
    path = tmp_path / "patches.npz"
    path.write_bytes(content)
    with pytest.raises(TrainingRequestError, match="patches.npz is not a patch array"):
        read_patch_arrays(path)


def test_an_npz_with_pickled_members_is_refused(tmp_path):
    path = tmp_path / "patches.npz"
    np.savez(
        path,
        images=np.zeros((2, 8, 8, 3), np.uint8),
        labels=np.array([{"x": 1}, {"y": 2}], dtype=object),
    )
    with pytest.raises(TrainingRequestError, match="not a patch array"):
        read_patch_arrays(path)


def test_a_good_arrays_folder_still_reads(tmp_path):
    _good(tmp_path / "ok")
    images, labels, groups, classes = read_patch_arrays(tmp_path / "ok")
    assert images.shape == (4, 8, 8, 3) and list(labels) == [0, 1, 0, 1] and groups is None


# ---- NaN figures in JSON ---------------------------------------------------------------------


def test_json_safe_and_reasons():
    figures = {"val_auc": float("nan"), "loss": np.float32(0.5), "curve": [1.0, float("inf")]}
    out = with_reasons(figures, {"val_auc": "one class only"})
    assert out == {
        "val_auc": None,
        "val_auc_missing": "one class only",
        "loss": 0.5,
        "curve": [1.0, None],
    }
    assert json_safe({1: (np.int64(2), np.array([np.nan]))}) == {"1": [2, [None]]}
    json.dumps(out, allow_nan=False)


@pytest.mark.timeout(600)
def test_a_node_image_run_with_too_few_images_fails_truthfully(tmp_path, people, settings):
    from tests.inference.test_image_classifier import _import as import_images

    settings.SLIDE_IMPORT_ROOTS = []
    import_images(tmp_path, people, modality="ct", n_patients=2)  # validation: one patient
    call_command(
        "train_images",
        "--modality=ct",
        "--architectures=resnet-small",
        "--size=32",
        "--epochs=1",
        "--batch-size=4",
        "--width-mult=0.125",
        "--here",
    )
    run = TrainingRun.objects.get()
    assert run.status == TrainingRun.Status.FAILED
    assert "validation set holds one class only" in run.status_reason
    assert run.progress["val_auc"] is None  # not NaN: PostgreSQL's jsonb refuses NaN
    assert "one class only" in run.progress["val_auc_missing"]
    json.dumps(run.progress, allow_nan=False)
    assert not ModelVersion.objects.exists()
