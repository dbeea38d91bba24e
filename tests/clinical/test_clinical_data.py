"""Clinical data per case: validation naming the field, append-only history, node status, CSV
import (all rows or none, errors per row), the form page, and lab scoping."""

from __future__ import annotations

import io

import pytest
from django.test import Client

from clinical.models import ClinicalField, ClinicalRecord, NodeStatus
from clinical.services import (
    ClinicalDataError,
    import_csv,
    save_clinical_record,
    status_from_count,
    validate_values,
)
from tests.factories import make_case

pytestmark = pytest.mark.django_db


def _client(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def _put(client, case, body):
    return client.put(f"/api/cases/{case.pk}/clinical/", body, content_type="application/json")


def test_the_seed_variables_are_there():
    keys = list(ClinicalField.objects.values_list("key", flat=True))
    assert keys == [
        "age",
        "tumour_size",
        "er",
        "pr",
        "her2",
        "ki67",
        "histological_type",
        "tumour_foci",
    ]


def test_values_are_cleaned_to_canonical_form():
    clean = validate_values(
        {"age": "54", "tumour_size": "23,5", "er": "Positive", "ki67": 30, "tumour_foci": 2.0}
    )
    assert clean == {"age": 54, "tumour_size": 23.5, "er": "positive", "ki67": 30, "tumour_foci": 2}
    assert validate_values({"age": "", "er": None}) == {}  # blank means not entered


@pytest.mark.parametrize(
    ("values", "field", "words"),
    [
        ({"age": "old"}, "age", "must be a number"),
        ({"age": 54.5}, "age", "whole number"),
        ({"age": 7}, "age", "at least 18"),
        ({"ki67": 130}, "ki67", "at most 100"),
        ({"er": "weak"}, "er", "must be one of positive, negative"),
        ({"tumour_size": True}, "tumour_size", "not true/false"),
        ({"tumour_size": "nan"}, "tumour_size", "finite"),
        ({"grade": 3}, "grade", "unknown clinical variable"),
    ],
)
def test_bad_values_name_the_field(values, field, words):
    with pytest.raises(ClinicalDataError) as caught:
        validate_values(values)
    assert set(caught.value.errors) == {field}
    assert words in caught.value.errors[field]


def test_node_status_from_the_count_and_contradictions_refused(people, case):
    assert [status_from_count(n) for n in (0, 1, 2, 3, 12)] == [
        "N0",
        "N+(1-2)",
        "N+(1-2)",
        "N+(>2)",
        "N+(>2)",
    ]
    entry = save_clinical_record(case=case, values={}, positive_nodes=4, user=people.pathologist)
    assert entry.node_status == NodeStatus.N_PLUS_GT_2
    entry = save_clinical_record(case=case, values={}, node_status="n0", user=people.pathologist)
    assert (entry.positive_nodes, entry.node_status) == (None, "N0")
    with pytest.raises(ClinicalDataError) as caught:
        save_clinical_record(case=case, values={}, positive_nodes=1, node_status="N0")
    assert "contradicts positive_nodes=1" in caught.value.errors["node_status"]


def test_an_admin_added_field_is_validated_like_the_others(case):
    ClinicalField.objects.create(key="menopausal", label="Postmenopausal", kind="boolean", order=90)
    ClinicalField.objects.create(
        key="grade",
        label="Grade",
        kind="categorical",
        allowed_values=["1", "2", "3"],
        required=True,
    )
    assert validate_values({"menopausal": "yes", "grade": 2}) == {"menopausal": True, "grade": "2"}
    with pytest.raises(ClinicalDataError) as caught:
        validate_values({"menopausal": "maybe"})
    assert caught.value.errors == {
        "menopausal": "must be yes or no, got 'maybe'",
        "grade": "is required",
    }


def test_api_put_writes_a_new_record_and_keeps_history(people, case):
    client = _client(people.pathologist)
    first = _put(client, case, {"values": {"age": 61, "er": "positive"}, "positive_nodes": 0})
    assert first.status_code == 200, first.content
    assert first.json()["node_status"] == "N0"
    second = _put(client, case, {"values": {"age": 61, "er": "negative"}, "positive_nodes": 2})
    assert second.status_code == 200
    current = client.get(f"/api/cases/{case.pk}/clinical/").json()
    assert current["values"] == {"age": 61, "er": "negative"}
    assert current["node_status"] == "N+(1-2)" and current["entered_by"] == "path"
    history = client.get(f"/api/cases/{case.pk}/clinical/history/").json()["records"]
    assert [r["node_status"] for r in history] == ["N+(1-2)", "N0"]
    record = ClinicalRecord.objects.get(pk=history[1]["id"])
    record.values = {"age": 1}
    with pytest.raises(ValueError, match="append-only"):
        record.save()


def test_api_put_refuses_bad_values_with_400_naming_each_field(people, case):
    client = _client(people.pathologist)
    response = _put(
        client, case, {"values": {"age": 12, "her2": "3+", "colour": "red"}, "positive_nodes": -1}
    )
    assert response.status_code == 400
    body = response.json()
    assert set(body) == {"age", "her2", "colour", "positive_nodes"}
    assert "at least 18" in str(body["age"]) and "one of positive, negative" in str(body["her2"])
    assert not ClinicalRecord.objects.exists()
    assert _put(client, case, {"value": {}}).status_code == 400  # a misspelt key is not ignored
    assert _put(client, case, ["not", "an", "object"]).status_code == 400


def test_lab_scoping(people, case):
    outsider = _client(people.outsider)
    assert outsider.get(f"/api/cases/{case.pk}/clinical/").status_code == 404
    assert _put(outsider, case, {"values": {"age": 50}}).status_code == 404
    assert outsider.get(f"/cases/{case.pk}/clinical/").status_code == 404
    assert Client().get(f"/api/cases/{case.pk}/clinical/").status_code == 403
    assert not ClinicalRecord.objects.exists()


CSV_GOOD = """accession_number,age,tumour_size,er,pr,her2,ki67,histological_type,tumour_foci,positive_nodes
S26-0001,54,21.5,positive,positive,negative,15,invasive ductal,1,0
S26-0002,47,35,negative,negative,positive,60,Invasive Lobular,2,4
"""


def test_csv_import_good_file(people, case):
    other = make_case(people.lab, "S26-0002")
    report = import_csv(CSV_GOOD, user=people.lab_lead)
    assert report.ok and report.imported == 2
    first = ClinicalRecord.objects.get(case=case)
    assert first.values["tumour_size"] == 21.5 and first.node_status == "N0"
    assert first.source == "csv" and first.entered_by == people.lab_lead
    second = ClinicalRecord.objects.get(case=other)
    assert second.values["histological_type"] == "invasive lobular"
    assert second.node_status == "N+(>2)"


def test_csv_import_is_all_or_nothing_and_lists_every_bad_row(people, case):
    make_case(people.lab, "S26-0002")
    make_case(people.lab, "S26-0004")
    make_case(people.other_lab, "S26-9999")  # exists, but in a lab the importer is not in
    text = (
        CSV_GOOD
        + "S26-0001,60,,,,,,,,\n"  # a second row for one case
        + "S26-9999,50,,,,,,,,\n"
        + "S26-0003,50,,,,,,,,\n"
        + ",50,,,,,,,,\n"
        + "S26-0004,50,,maybe,,,,,,1\n"
    )
    report = import_csv(text, user=people.pathologist)
    assert report.imported == 0 and not ClinicalRecord.objects.exists()
    by_row = {e["row"]: e["errors"] for e in report.errors}
    assert set(by_row) == {4, 5, 6, 7, 8}
    assert "already on row 2" in by_row[4]["accession_number"]
    assert by_row[5] == {"accession_number": "no case 'S26-9999' in your labs"}
    assert by_row[6] == {"accession_number": "no case 'S26-0003' in your labs"}
    assert by_row[7] == {"accession_number": "is empty"}
    assert set(by_row[8]) == {"er"}


def test_csv_import_refuses_unknown_columns_and_missing_accession(people, case):
    report = import_csv("accession_number,age,grade\nS26-0001,50,2\n", user=people.pathologist)
    assert report.errors == [
        {"row": 1, "errors": {"grade": "unknown column (not a clinical variable)"}}
    ]
    report = import_csv("case,age\nS26-0001,50\n", user=people.pathologist)
    assert report.errors[0]["errors"] == {"accession_number": "missing column"}


def test_csv_import_api(people, case):
    client = _client(people.pathologist)
    upload = io.BytesIO(b"accession_number,age,positive_nodes\nS26-0001,70,3\n")
    upload.name = "clinical.csv"
    response = client.post("/api/clinical/import/", {"file": upload})
    assert response.status_code == 201, response.content
    assert response.json() == {"imported": 1, "errors": []}
    assert ClinicalRecord.objects.get(case=case).node_status == "N+(>2)"
    bad = client.post(
        "/api/clinical/import/",
        {"csv": "accession_number,age\nS26-0001,abc\n"},
        content_type="application/json",
    )
    assert bad.status_code == 400
    assert bad.json()["errors"] == [
        {"row": 2, "accession_number": "S26-0001", "errors": {"age": "must be a number, got 'abc'"}}
    ]
    outsider = _client(people.outsider).post(
        "/api/clinical/import/",
        {"csv": "accession_number,age\nS26-0001,50\n"},
        content_type="application/json",
    )
    assert outsider.status_code == 400 and "in your labs" in str(outsider.json())
    assert ClinicalRecord.objects.count() == 1


def test_form_page_saves_and_shows_errors(people, case):
    client = _client(people.pathologist)
    page = client.get(f"/cases/{case.pk}/clinical/")
    assert page.status_code == 200 and b"Tumour size" in page.content
    bad = client.post(f"/cases/{case.pk}/clinical/", {"age": "200", "positive_nodes": "1"})
    assert bad.status_code == 400 and b"must be at most 110" in bad.content
    assert not ClinicalRecord.objects.exists()
    good = client.post(
        f"/cases/{case.pk}/clinical/", {"age": "58", "er": "negative", "positive_nodes": "1"}
    )
    assert good.status_code == 302
    entry = ClinicalRecord.objects.get(case=case)
    assert entry.values == {"age": 58, "er": "negative"} and entry.node_status == "N+(1-2)"
    assert entry.source == "form"
    case_page = client.get(f"/cases/{case.pk}/")
    assert b"Node status: <strong>N+(1-2)</strong>" in case_page.content


def test_csv_import_of_a_malformed_file_is_a_clear_error(people, case):
    huge = 'accession_number,age\n"' + "x" * 200_000 + '",1\n'
    report = import_csv(huge, user=people.pathologist)
    assert report.imported == 0 and "not readable as CSV" in report.errors[0]["errors"]["file"]
    report = import_csv("accession_number,age\r\nS26-0001,50\r\n", user=people.pathologist)
    assert report.ok and report.imported == 1  # Windows line ends are fine
    client = _client(people.pathologist)
    response = client.post("/api/clinical/import/", {"csv": huge}, content_type="application/json")
    assert response.status_code == 400 and "not readable as CSV" in str(response.json())
