"""Project types on cases: lymph node (default) or biopsy, in the API, the pages, the admin and
manifests; their defaults live in `slides.project_types`."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.test import Client
from django.urls import reverse

from slides.ingest import import_manifest
from slides.models import Case
from slides.project_types import ProjectType, defaults_for, parse_project_type
from tests.factories import gradient_image, make_case, write_pyramid_tiff


def _client(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_defaults_per_project_type():
    node = defaults_for("lymph-node")
    assert (node.patch_px, node.target_mpp, node.scoring_stride_px) == (40, 1.0, 10)
    assert node.training_classes == ("non-tumour", "tumour") and node.specimens == "nodes"
    biopsy = defaults_for(ProjectType.BIOPSY)
    assert (biopsy.patch_px, biopsy.target_mpp, biopsy.scoring_stride_px) == (256, 0.5, 64)
    assert biopsy.training_classes == ("benign", "tumour") and biopsy.specimens == "specimens"
    # The scoring stride divides the window, as dense scanning needs.
    assert all(d.patch_px % d.scoring_stride_px == 0 for d in (node, biopsy))
    assert parse_project_type(" Lymph node ") == parse_project_type("lymph_node") == "lymph-node"
    with pytest.raises(ValueError, match="unknown project type 'skin'.*'lymph-node', 'biopsy'"):
        parse_project_type("skin")


def test_a_case_is_a_lymph_node_case_unless_told(people):
    case = make_case(people.lab, "S26-LN")
    assert case.project_type == ProjectType.LYMPH_NODE and case.project.patch_px == 40
    case.project_type = ProjectType.BIOPSY
    case.full_clean()
    case.save()
    assert Case.objects.get(pk=case.pk).project.patch_px == 256
    case.project_type = "skin"
    with pytest.raises(Exception, match="not a valid choice"):
        case.full_clean()


def test_api_and_pages_show_the_project_type(people):
    make_case(people.lab, "S26-LN", nodes=("level II, node 1",))
    biopsy = make_case(people.lab, "S26-NP", nodes=("nasopharynx, left",))
    biopsy.project_type = ProjectType.BIOPSY
    biopsy.save()
    client = _client(people.pathologist)
    body = client.get("/api/cases/").json()["results"]
    assert {c["accession_number"]: c["project_type"] for c in body} == {
        "S26-LN": "lymph-node",
        "S26-NP": "biopsy",
    }
    assert client.get(f"/api/cases/{biopsy.pk}/").json()["project_type"] == "biopsy"

    listing = client.get(reverse("case-list")).content.decode()
    assert '<td data-project-type="biopsy">Biopsy</td>' in listing
    assert '<td data-project-type="lymph-node">Lymph node</td>' in listing
    assert "1 specimen<" in listing and "1 node<" in listing
    page = client.get(reverse("case-detail", args=[biopsy.pk])).content.decode()
    assert 'data-project-type="biopsy">Biopsy</span>' in page
    assert "256 px patches at 0.5 µm/px, tumour vs benign" in page


def test_admin_sets_the_project_type(people):
    case = make_case(people.lab, "S26-ADM", nodes=())
    client = Client()
    client.force_login(people.admin)
    people.admin.is_staff = people.admin.is_superuser = True
    people.admin.save()
    url = reverse("admin:slides_case_change", args=[case.pk])
    form = client.get(url).content.decode()
    assert 'name="project_type"' in form and 'value="biopsy"' in form
    response = client.post(
        url,
        {
            "lab": people.lab.pk,
            "accession_number": case.accession_number,
            "patient_pseudonym": case.patient_pseudonym,
            "status": case.status,
            "project_type": "biopsy",
            "nodes-TOTAL_FORMS": "0",
            "nodes-INITIAL_FORMS": "0",
            "nodes-MIN_NUM_FORMS": "0",
            "nodes-MAX_NUM_FORMS": "1000",
        },
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    case.refresh_from_db()
    assert case.project_type == "biopsy"
    listing = client.get(reverse("admin:slides_case_changelist") + "?project_type=biopsy")
    assert "S26-ADM" in listing.content.decode()


def _manifest(folder: Path, rows: list[str]) -> Path:
    for i in range(3):
        write_pyramid_tiff(folder / f"s{i}.tiff", gradient_image(300, 300, seed=i), mpp=0.5)
    path = folder / "manifest.csv"
    path.write_text("case,node,file,status,project_type\n" + "\n".join(rows) + "\n")
    return path


def test_manifest_sets_the_project_type_of_new_cases(people, tmp_path):
    manifest = _manifest(
        tmp_path,
        [
            "NP-1,biopsy 1,s0.tiff,positive,biopsy",
            "LN-1,level II node 1,s1.tiff,negative,",
            "NP-1,biopsy 1,s2.tiff,,lymph node",  # the case is a biopsy: refused
            "NP-2,biopsy 1,s2.tiff,,skin",  # no such type: refused, no case made
        ],
    )
    report = import_manifest(manifest=manifest, lab=people.lab, create_missing=True)
    assert len(report.imported) == 2
    reasons = {row: reason for row, _file, reason in report.failed}
    assert reasons == {
        4: "case 'NP-1' is a biopsy case, the row says lymph-node",
        5: "unknown project type 'skin' (use 'lymph-node', 'biopsy')",
    }
    assert dict(Case.objects.values_list("accession_number", "project_type")) == {
        "NP-1": "biopsy",
        "LN-1": "lymph-node",
    }
