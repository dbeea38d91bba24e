"""The annotation API: access, viewport listing, versioned writes (409), delete/restore/history, files."""

from __future__ import annotations

import json

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client

from annotations.models import Annotation, AnnotationImport
from slides.models import Role
from tests.factories import make_user

from .conftest import client_for, square


def post_json(client: Client, url: str, body: dict):
    return client.post(url, json.dumps(body), content_type="application/json")


def patch_json(client: Client, url: str, body: dict):
    return client.patch(url, json.dumps(body), content_type="application/json")


@pytest.fixture
def created(people, slide) -> dict:
    response = post_json(
        client_for(people.pathologist),
        f"/api/slides/{slide.pk}/annotations/",
        {"geometry": square(100, 100, 200, 200), "label_class": "tumour", "name": "focus 1"},
    )
    assert response.status_code == 201, response.content
    return response.json()


def test_label_classes_are_listed_in_order(people):
    body = client_for(people.pathologist).get("/api/label-classes/").json()
    assert [c["key"] for c in body] == [
        "tumour",
        "non-tumour",
        "lymphoid-follicle",
        "sinus",
        "histiocytes",
        "capsule",
        "necrosis",
        "stroma",
        "artefact",
        "ink",
        "out-of-focus",
    ]
    assert {c["kind"] for c in body} == {"tumour", "non-tumour", "hard-negative", "exclude"}
    assert body[0]["colour"].startswith("#") and body[0]["shortcut"] == "1"


def test_create_returns_the_annotation(people, slide, created):
    assert (
        created["label_class"] == "tumour"
        and created["author"] == "path"
        and created["version"] == 1
    )
    assert (
        created["bbox"] == [100, 100, 200, 200]
        and created["vertex_count"] == 4
        and created["area_px"] == 10000
    )
    assert created["geometry"] == square(100, 100, 200, 200) and created["name"] == "focus 1"


def test_bad_geometry_and_unknown_class_are_400_with_the_message(people, slide):
    client = client_for(people.pathologist)
    url = f"/api/slides/{slide.pk}/annotations/"
    bowtie = {"type": "Polygon", "coordinates": [[[0, 0], [100, 100], [100, 0], [0, 100], [0, 0]]]}
    response = post_json(client, url, {"geometry": bowtie, "label_class": "tumour"})
    assert response.status_code == 400
    assert response.json()["geometry"] == ["geometry is not valid: self-intersection at (50, 50)"]
    response = post_json(
        client, url, {"geometry": square(0, 0, 10, 10), "label_class": "carcinoma"}
    )
    assert (
        response.status_code == 400
        and "unknown label class 'carcinoma'" in response.json()["label_class"][0]
    )
    response = post_json(client, url, {"geometry": square(0, 0, 10, 800), "label_class": "tumour"})
    assert (
        response.status_code == 400
        and "outside the slide (0..1000 × 0..700 px)" in response.json()["geometry"][0]
    )
    response = post_json(client, url, {"label_class": "tumour"})
    assert response.status_code == 400 and "geometry" in response.json()
    assert not Annotation.objects.exists()


def test_viewport_listing_with_filters(people, slide, created):
    client = client_for(people.lab_lead)
    url = f"/api/slides/{slide.pk}/annotations/"
    other = post_json(
        client, url, {"geometry": square(600, 500, 700, 600), "label_class": "sinus"}
    ).json()

    def ids(query: str) -> list[int]:
        response = client.get(url + query)
        assert response.status_code == 200, response.content
        return [a["id"] for a in response.json()["results"]]

    assert ids("") == [created["id"], other["id"]]
    assert ids("?bbox=150,150,160,160") == [created["id"]]
    assert ids("?bbox=650,550,2000,2000") == [other["id"]]
    assert ids("?bbox=300,300,400,400") == []
    assert ids("?bbox=0,0,1000,700&class=sinus") == [other["id"]]
    assert ids("?author=lead") == [other["id"]]
    assert ids(f"?author={people.pathologist.pk}") == [created["id"]]
    assert client.get(url + "?bbox=1,2,3").status_code == 400
    assert client.get(url + "?bbox=5,5,1,1").status_code == 400
    assert client.get(url + "?bbox=a,b,c,d").status_code == 400
    assert client.get(url + "?class=nonsense").status_code == 400
    assert client.get(url + "?author=%C2%B2").json()["count"] == 0  # "²" is a digit to Python


def test_access_outsider_404_unauthenticated_403(people, slide, created):
    outsider = client_for(people.outsider)
    anonymous = Client()
    pk = created["id"]
    for url in (
        f"/api/slides/{slide.pk}/annotations/",
        f"/api/annotations/{pk}/",
        f"/api/annotations/{pk}/history/",
        f"/api/slides/{slide.pk}/annotations/export/?format=asap",
    ):
        assert outsider.get(url).status_code == 404, url
        assert anonymous.get(url).status_code == 403, url
    assert (
        patch_json(
            outsider, f"/api/annotations/{pk}/", {"version": 1, "label_class": "sinus"}
        ).status_code
        == 404
    )
    assert outsider.delete(f"/api/annotations/{pk}/").status_code == 404
    assert outsider.post(f"/api/annotations/{pk}/restore/").status_code == 404
    assert (
        post_json(
            outsider,
            f"/api/slides/{slide.pk}/annotations/",
            {"geometry": square(0, 0, 9, 9), "label_class": "tumour"},
        ).status_code
        == 404
    )
    assert (
        post_json(
            anonymous,
            f"/api/slides/{slide.pk}/annotations/",
            {"geometry": square(0, 0, 9, 9), "label_class": "tumour"},
        ).status_code
        == 403
    )
    assert Annotation.objects.get(pk=pk).version == 1 and Annotation.objects.count() == 1


def test_writing_needs_the_pathologist_role(people, slide, created):
    viewer = make_user("viewer", role=None, lab=people.lab)
    from slides.access import grant_role

    grant_role(viewer, Role.LAB_LEAD)  # lab leads hold the pathologist's rights
    assert (
        patch_json(
            client_for(viewer),
            f"/api/annotations/{created['id']}/",
            {"version": 1, "label_class": "sinus"},
        ).status_code
        == 200
    )
    nobody = make_user("norole", role=None, lab=people.lab)
    assert (
        client_for(nobody).get(f"/api/annotations/{created['id']}/").status_code == 404
    )  # no role: sees nothing


def test_patch_with_the_seen_version_then_stale_patch_is_409_and_unchanged(people, created):
    url = f"/api/annotations/{created['id']}/"
    first = patch_json(
        client_for(people.pathologist), url, {"version": 1, "geometry": square(100, 100, 300, 300)}
    )
    assert (
        first.status_code == 200
        and first.json()["version"] == 2
        and first.json()["bbox"] == [100, 100, 300, 300]
    )
    stale = patch_json(client_for(people.lab_lead), url, {"version": 1, "label_class": "capsule"})
    assert stale.status_code == 409
    body = stale.json()
    assert (
        body["version"] == 2
        and body["deleted"] is False
        and body["annotation"]["label_class"] == "tumour"
    )
    row = Annotation.objects.get(pk=created["id"])
    assert row.version == 2 and row.label_class.key == "tumour" and row.bbox == [100, 100, 300, 300]
    assert (
        patch_json(client_for(people.pathologist), url, {"label_class": "capsule"}).status_code
        == 400
    )  # no version
    bad = patch_json(
        client_for(people.pathologist),
        url,
        {"version": 2, "geometry": {"type": "Point", "coordinates": [1, 2]}},
    )
    assert bad.status_code == 400 and "got 'Point'" in bad.json()["geometry"][0]
    assert Annotation.objects.get(pk=created["id"]).version == 2


def test_delete_restore_and_history(people, created):
    client = client_for(people.pathologist)
    pk = created["id"]
    assert client.delete(f"/api/annotations/{pk}/?version=7").status_code == 409
    deleted = client.delete(f"/api/annotations/{pk}/?version=1")
    assert (
        deleted.status_code == 200
        and deleted.json()["deleted_at"]
        and deleted.json()["version"] == 2
    )
    listing = client.get(f"/api/slides/{created['slide']}/annotations/").json()
    assert listing["count"] == 0
    assert client.get(f"/api/slides/{created['slide']}/annotations/?deleted=1").json()["count"] == 1
    assert client.get(f"/api/annotations/{pk}/").json()["deleted_at"] is not None
    assert (
        patch_json(
            client, f"/api/annotations/{pk}/", {"version": 2, "label_class": "sinus"}
        ).status_code
        == 409
    )
    restored = post_json(client, f"/api/annotations/{pk}/restore/", {"version": 2})
    assert (
        restored.status_code == 200
        and restored.json()["deleted_at"] is None
        and restored.json()["version"] == 3
    )
    history = client.get(f"/api/annotations/{pk}/history/").json()
    assert [(h["version"], h["action"], h["user"]) for h in history] == [
        (1, "create", "path"),
        (2, "delete", "path"),
        (3, "restore", "path"),
    ]
    assert history[1]["before"]["deleted"] is False and history[1]["after"]["deleted"] is True
    assert history[0]["after"]["geometry"] == square(100, 100, 200, 200)


def test_export_formats_and_unknown_format(people, slide, created):
    client = client_for(people.pathologist)
    base = f"/api/slides/{slide.pk}/annotations/export/"
    qupath = client.get(base + "?format=qupath")
    assert qupath.status_code == 200 and "attachment" in qupath["Content-Disposition"]
    feature = json.loads(qupath.content)["features"][0]
    assert (
        feature["geometry"] == square(100, 100, 200, 200)
        and feature["properties"]["classification"]["name"] == "Tumour"
    )
    asap = client.get(base + "?format=asap")
    assert asap.status_code == 200 and b'PartOfGroup="Tumor"' in asap.content
    dsa = client.get(base + "?format=dsa")
    assert json.loads(dsa.content)["elements"][0]["points"][0] == [100, 100, 0]
    bad = client.get(base + "?format=svg")
    assert bad.status_code == 400 and "unknown format 'svg'" in bad.json()["file"][0]


def test_import_roundtrip_through_the_api_and_all_or_nothing(people, slide, created, case):
    from .conftest import make_slide

    client = client_for(people.pathologist)
    exported = client.get(f"/api/slides/{slide.pk}/annotations/export/?format=dsa").content
    target = make_slide(case.nodes.last())
    response = client.post(
        f"/api/slides/{target.pk}/annotations/import/",
        {"file": SimpleUploadedFile("a.json", exported), "format": "dsa"},
    )
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["imported"] == 1 and body["polygons_in_file"] == 1 and body["vertices_in_file"] == 4
    copy = Annotation.objects.get(pk=body["annotations"][0])
    assert (
        copy.slide == target
        and copy.geometry == square(100, 100, 200, 200)
        and copy.label_class.key == "tumour"
    )
    assert copy.author == people.pathologist and copy.source_import_id == body["import"]

    bad = json.loads(exported)
    bad["elements"].append(
        {
            **bad["elements"][0],
            "points": [[0, 0, 0], [50, 50, 0], [50, 0, 0], [0, 50, 0]],
            "user": {},
        }
    )
    bad["elements"].append(
        {**bad["elements"][0], "points": [[10, 10, 0], [20, 10, 0], [20, 20, 0]], "user": {}}
    )
    response = client.post(
        f"/api/slides/{target.pk}/annotations/import/",
        {"file": SimpleUploadedFile("bad.json", json.dumps(bad).encode())},
    )
    assert response.status_code == 400
    assert "bad.json" in response.json()["file"][0]
    (problem,) = response.json()["problems"]
    assert "#2" in problem and "self-intersection" in problem
    assert (
        Annotation.objects.filter(slide=target).count() == 1
        and AnnotationImport.objects.count() == 1
    )

    junk = client.post(
        f"/api/slides/{target.pk}/annotations/import/",
        {"file": SimpleUploadedFile("x.txt", b"hello")},
    )
    assert junk.status_code == 400 and "cannot tell the format" in junk.json()["file"][0]
    xml = client.post(
        f"/api/slides/{target.pk}/annotations/import/",
        {"file": SimpleUploadedFile("x.xml", b"<ASAP_Annotations><Annotations>"), "format": "asap"},
    )
    assert xml.status_code == 400 and "not well-formed XML" in xml.json()["file"][0]
    assert (
        client_for(people.outsider)
        .post(
            f"/api/slides/{target.pk}/annotations/import/",
            {"file": SimpleUploadedFile("a.json", exported)},
        )
        .status_code
        == 404
    )


def test_admin_edits_label_classes_and_shows_annotations_read_only(people, created):
    people.admin.is_staff = people.admin.is_superuser = True
    people.admin.save()
    client = client_for(people.admin)
    from annotations.models import LabelClass

    tumour = LabelClass.objects.get(key="tumour")
    page = client.get(f"/admin/annotations/labelclass/{tumour.pk}/change/")
    assert (
        page.status_code == 200
        and b'name="colour"' in page.content
        and b'name="key"' not in page.content
    )
    response = client.post(
        f"/admin/annotations/labelclass/{tumour.pk}/change/",
        {"name": "Tumour", "colour": "#ff0000", "kind": "tumour", "shortcut": "1", "order": 10},
    )
    assert response.status_code == 302
    tumour.refresh_from_db()
    assert tumour.colour == "#ff0000" and tumour.key == "tumour"
    detail = client.get(f"/admin/annotations/annotation/{created['id']}/change/")
    assert detail.status_code == 200 and b"create" in detail.content  # the history inline
    assert b'name="label_class"' not in detail.content  # read-only
    assert client.get("/admin/annotations/annotation/add/").status_code == 403
