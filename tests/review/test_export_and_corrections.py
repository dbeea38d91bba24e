"""CSV export of decisions (audited) and reviewer "not tumour" corrections (hard negatives)."""

from __future__ import annotations

import csv
import io

import pytest

from annotations.models import Annotation, AnnotationHistory
from audit.models import AuditEvent
from review import services
from review.models import ReviewerCorrection
from review.views import EXPORT_COLUMNS

from .conftest import client_for

pytestmark = pytest.mark.django_db


def read_csv(response) -> list[dict]:
    return list(csv.DictReader(io.StringIO(response.content.decode())))


def test_csv_export_has_every_decision_and_is_audited(people, scored):
    node_b, node_c = scored.nodes["node B"], scored.nodes["node C"]
    for region in services.node_regions(node_b):
        services.record_viewed_region(node=node_b, user=people.pathologist, region=region.key)
    b = services.decide(
        node=node_b,
        user=people.pathologist,
        status="confirmed_negative",
        based_on=None,
        note="=HYPERLINK(evil)",
    )
    c1 = services.decide(
        node=node_c,
        user=people.pathologist,
        status="needs_further_work",
        based_on=None,
        further_work="second_opinion",
    )
    c2 = services.decide(
        node=node_c, user=people.lab_lead, status="confirmed_negative", based_on=c1.pk
    )
    response = client_for(people.lab_lead).get("/api/review/decisions.csv")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/csv")
    assert "attachment" in response["Content-Disposition"]
    rows = read_csv(response)
    assert list(rows[0]) == EXPORT_COLUMNS
    assert [int(r["decision_id"]) for r in rows] == [b.pk, c1.pk, c2.pk]
    row_b = rows[0]
    assert row_b["case"] == "S26-0100" and row_b["node"] == "node B" and row_b["lab"] == "h-lab"
    assert row_b["status"] == "confirmed_negative" and row_b["user"] == "path"
    assert row_b["model_version"] == "primary-v1" and float(row_b["score"]) == pytest.approx(0.92)
    assert float(row_b["threshold"]) == 0.5 and row_b["screened"] == "positive"
    assert (
        len(row_b["regions_required"].split()) == 2
        and row_b["regions_viewed"] == row_b["regions_required"]
    )
    assert row_b["note"] == "'=HYPERLINK(evil)"  # never a spreadsheet formula
    assert rows[1]["further_work"] == "second_opinion"
    assert rows[2]["based_on"] == str(c1.pk) and rows[2]["user"] == "lead"
    event = AuditEvent.objects.get(action="review decisions exported")
    assert event.actor == people.lab_lead and event.detail["rows"] == 3


def test_csv_export_is_for_lab_leads_and_only_their_labs(people, scored):
    services.decide(
        node=scored.nodes["node C"],
        user=people.pathologist,
        status="confirmed_negative",
        based_on=None,
    )
    assert client_for(people.pathologist).get("/api/review/decisions.csv").status_code == 403
    people.other_lab.members.remove(people.outsider)
    from slides.access import grant_role

    lead_elsewhere = people.outsider
    grant_role(lead_elsewhere, "lab lead")
    people.other_lab.members.add(lead_elsewhere)
    response = client_for(lead_elsewhere).get("/api/review/decisions.csv")
    assert response.status_code == 200 and read_csv(response) == []
    assert (
        client_for(people.lab_lead).get("/api/review/decisions.csv?lab=other-lab").status_code
        == 400
    )


def test_not_tumour_correction_becomes_a_hard_negative_annotation(people, scored):
    node = scored.nodes["node B"]
    region = services.node_regions(node)[0]
    client = client_for(people.pathologist)
    response = client.post(
        f"/api/nodes/{node.pk}/corrections/",
        {"region": region.key, "label_class": "lymphoid-follicle", "note": "germinal centre"},
        content_type="application/json",
    )
    assert response.status_code == 201, response.json()
    body = response.json()
    annotation = Annotation.objects.get(pk=body["annotation"])
    assert annotation.label_class.key == "lymphoid-follicle"
    assert annotation.label_class.kind == "hard-negative"
    assert annotation.author == people.pathologist and annotation.slide_id == region.slide_id
    assert annotation.name.startswith("reviewer correction")
    # A square of side twice the heat map's classifier window (2 x 160 px) centred on the region.
    assert annotation.bbox == [1040.0, 740.0, 1360.0, 1060.0]
    assert AnnotationHistory.objects.filter(annotation=annotation, action="create").exists()
    correction = ReviewerCorrection.objects.get()
    assert correction.annotation == annotation and correction.region_key == region.key
    assert correction.node_score.score == pytest.approx(0.92)
    assert (
        AuditEvent.objects.get(action="reviewer correction").detail["label_class"]
        == "lymphoid-follicle"
    )
    listed = client.get(f"/api/nodes/{node.pk}/corrections/").json()
    assert [c["id"] for c in listed["corrections"]] == [correction.pk]
    assert "sinus" in [c["key"] for c in listed["label_classes"]]
    assert "tumour" not in [c["key"] for c in listed["label_classes"]]


def test_correction_with_a_polygon_and_refusals(people, scored):
    node = scored.nodes["node B"]
    slide = node.slides.order_by("name").first()
    client = client_for(people.pathologist)
    url = f"/api/nodes/{node.pk}/corrections/"
    polygon = {
        "type": "Polygon",
        "coordinates": [[[10, 10], [200, 10], [200, 200], [10, 200], [10, 10]]],
    }
    ok = client.post(
        url,
        {"geometry": polygon, "slide": slide.pk, "label_class": "sinus"},
        content_type="application/json",
    )
    assert ok.status_code == 201
    refused = client.post(
        url,
        {"region": services.node_regions(node)[0].key, "label_class": "tumour"},
        content_type="application/json",
    )
    assert refused.status_code == 400 and refused.json()["code"] == "label_class"
    assert "lymphoid-follicle" in refused.json()["detail"]
    outside = {"type": "Polygon", "coordinates": [[[10, 10], [99999, 10], [99999, 200], [10, 10]]]}
    refused = client.post(
        url,
        {"geometry": outside, "slide": slide.pk, "label_class": "sinus"},
        content_type="application/json",
    )
    assert refused.status_code == 400 and refused.json()["code"] == "geometry"
    refused = client.post(
        url, {"geometry": polygon, "label_class": "sinus"}, content_type="application/json"
    )
    assert refused.status_code == 400 and refused.json()["code"] == "slide"
    assert (
        client.post(url, {"label_class": "sinus"}, content_type="application/json").status_code
        == 400
    )
    assert (
        client_for(people.outsider)
        .post(url, {"region": "x", "label_class": "sinus"}, content_type="application/json")
        .status_code
        == 404
    )
    assert ReviewerCorrection.objects.count() == 1 and Annotation.objects.count() == 1
