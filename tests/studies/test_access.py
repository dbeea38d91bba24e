"""Who reaches what in a reader study, and blindness: nothing a reader can reach carries the
model's output, other readers' answers, ground truth, case accession, node or image names."""

from __future__ import annotations

import re

from slides.models import Node, Role
from studies import services
from studies.models import ReaderAnswer, ReaderStudy, StudyImage, StudyReader
from tests.factories import make_case, make_user
from tests.review.factories import make_slide

from .conftest import create_study, model_probability, scripted_label

#: Strings that must not reach a reader (see conftest: accession, node labels, image names,
#: model version name and probability digits, another reader's name).
SECRETS = (
    "S26-SECRET-77",
    "tumor_hidden",
    "image-model-under-study",
    "0.9135",
    "0.0872",
    "probability",
    "truth",
    "positive",
    "negative",
    "reader3",
    "accession",
)


def _leaks(body: str) -> list[str]:
    lowered = body.lower()
    found = [s for s in SECRETS if s.lower() in lowered]
    return found + re.findall(r"level \d+ node", lowered)  # the node labels


def test_nothing_a_reader_can_reach_gives_the_answer_away(setup):
    sid = create_study(setup)["id"]
    assert setup.lead_client.post(f"/api/studies/{sid}/open/").status_code == 200
    study = ReaderStudy.objects.get(pk=sid)
    # the model's answers already stored, and another reader's answers given
    services.store_model_answers(
        study=study, probabilities={s.pk: model_probability(i) for i, s in enumerate(setup.slides)}
    )
    other = setup.client_for(setup.readers["reader3"])
    for pk in StudyReader.objects.get(study=study, user=setup.readers["reader3"]).order[:10]:
        index = setup.index_of_slide(StudyImage.objects.get(pk=pk).slide_id)
        assert (
            other.post(
                f"/api/studies/{sid}/reading/answers/",
                {"image": pk, "label": scripted_label("reader3", index)},
                content_type="application/json",
            ).status_code
            == 201
        )
    reader = setup.readers["reader2"]
    client = setup.client_for(reader)
    bodies: dict[str, str] = {}

    def grab(name, response, expected=200):
        assert response.status_code == expected, (name, response.status_code)
        bodies[name] = response.content.decode()

    grab("list page", client.get("/studies/"))
    grab("list api", client.get("/api/studies/"))
    grab("read page", client.get(f"/studies/{sid}/read/"))
    order = StudyReader.objects.get(study=study, user=reader).order
    for position, pk in enumerate(order[:3], start=1):
        grab(
            f"tilesource {position}",
            client.get(f"/api/studies/{sid}/reading/images/{pk}/tilesource/"),
        )
        grab(
            f"answer {position}",
            client.post(
                f"/api/studies/{sid}/reading/answers/",
                {"image": pk, "label": "metastatic", "confidence": 3},
                content_type="application/json",
            ),
            201,
        )
    grab("revisit page", client.get(f"/studies/{sid}/read/?image={order[0]}"))
    grab(
        "page answer",
        client.post(f"/studies/{sid}/read/", {"image": order[3], "label": "benign"}),
        302,
    )
    grab("page after", client.get(f"/studies/{sid}/read/"))
    grab("state", client.get(f"/api/studies/{sid}/reading/"))
    # the manager's routes answer a reader with a refusal only
    for name, url in (
        ("detail", f"/api/studies/{sid}/"),
        ("results", f"/api/studies/{sid}/results/"),
        ("csv", f"/api/studies/{sid}/answers.csv"),
        ("detail page", f"/studies/{sid}/"),
        ("results page", f"/studies/{sid}/results/"),
    ):
        grab(name, client.get(url), 403)
    for name, body in bodies.items():
        assert _leaks(body) == [], (name, _leaks(body), body[:500])
    # the reading state lists exactly the reader's own four answers
    import json

    state = json.loads(bodies["state"])
    assert state["answered"] == 4 and [a["image"] for a in state["answers"]] == order[:4]
    assert set(state["study"]) == {"id", "name", "instructions", "status"}
    assert "metastatic" in bodies["page after"]  # the buttons are there
    # the tile source still opens the image (dimensions and tile URL, no name)
    # through the study's own tile route: the slide's id never shows
    tiles = json.loads(bodies["tilesource 1"])
    assert (
        tiles["tileUrl"]
        == f"/api/studies/{sid}/reading/images/{order[0]}/tiles/{{z}}/{{x}}/{{y}}.jpg"
    )
    assert "name" not in tiles and "id" not in tiles


def test_roles(setup):
    people = setup.people
    sid = create_study(setup)["id"]
    bystander = make_user("bystander", role=Role.PATHOLOGIST, lab=people.lab)
    other_lead = make_user("otherlead", role=Role.LAB_LEAD, lab=people.other_lab)
    reader = setup.client_for(setup.readers["reader1"])  # the lab's pathologist, a reader
    manager_urls = [
        f"/api/studies/{sid}/",
        f"/api/studies/{sid}/results/",
        f"/api/studies/{sid}/answers.csv",
        f"/studies/{sid}/",
        f"/studies/{sid}/results/",
    ]
    reader_urls = [f"/api/studies/{sid}/reading/", f"/studies/{sid}/read/"]
    # a pathologist creates nothing and sees no results, even as a reader
    body = {"name": "x", "lab": people.lab.pk}
    assert reader.post("/api/studies/", body, content_type="application/json").status_code == 403
    assert reader.get("/studies/new/").status_code == 403
    for url in manager_urls:
        assert reader.get(url).status_code == 403, url
    assert reader.post(f"/api/studies/{sid}/open/").status_code == 403
    # not a reader, not a manager: 404 everywhere; other labs too (lead or not)
    for user in (bystander, people.outsider, other_lead):
        client = setup.client_for(user)
        for url in manager_urls + reader_urls:
            assert client.get(url).status_code == 404, (user.username, url)
        assert client.post(f"/api/studies/{sid}/close/").status_code == 404
    # the lab lead (not a reader) manages but cannot read; so does the lab's admin
    for user in (people.lab_lead, people.admin):
        client = setup.client_for(user)
        for url in manager_urls:
            assert client.get(url).status_code == 200, (user.username, url)
        for url in reader_urls:
            assert client.get(url).status_code == 404, (user.username, url)
    # anonymous: 403 on the API, the login page for pages
    from django.test import Client

    assert Client().get(f"/api/studies/{sid}/reading/").status_code == 403
    assert Client().get(f"/studies/{sid}/read/").status_code == 302


def test_a_manager_who_reads_sees_results_only_after_closing(setup):
    readers = [setup.people.lab_lead.pk, setup.readers["reader2"].pk]
    sid = create_study(setup, readers=readers)["id"]
    assert setup.lead_client.post(f"/api/studies/{sid}/open/").status_code == 200
    detail = setup.lead_client.get(f"/api/studies/{sid}/").json()
    assert detail["images"] and all(set(i) == {"image", "slide"} for i in detail["images"])
    assert setup.lead_client.get(f"/api/studies/{sid}/results/").status_code == 403
    assert setup.lead_client.get(f"/api/studies/{sid}/answers.csv").status_code == 403
    assert setup.lead_client.get(f"/api/studies/{sid}/reading/").status_code == 200
    assert setup.lead_client.post(f"/api/studies/{sid}/close/").status_code == 200
    assert setup.lead_client.get(f"/api/studies/{sid}/results/").status_code == 200
    assert "truth" in setup.lead_client.get(f"/api/studies/{sid}/").json()["images"][0]


def test_bad_set_up_is_refused_with_the_reason_and_nothing_written(setup):
    people = setup.people
    foreign_case = make_case(people.other_lab, "OTHER-1", nodes=())
    foreign = make_slide(Node.objects.create(case=foreign_case, label="n1"), name="foreign")
    before = ReaderStudy.objects.count()
    good = {
        "name": "study",
        "lab": people.lab.pk,
        "images": [setup.slides[0].pk],
        "readers": [setup.readers["reader2"].pk],
    }
    for change, field in (
        ({"images": [setup.slides[0].pk, foreign.pk]}, "images"),
        ({"readers": [people.outsider.pk]}, "readers"),
        ({"lab": people.other_lab.pk}, "lab"),
        ({"name": ""}, "name"),
        ({"name": "a\x00b"}, "name"),
        ({"instructions": "\x00"}, "instructions"),
        ({"lab": 10**25}, "lab"),
        ({"threshold": 1.5}, "threshold"),
        ({"model_version": 10**9}, "model_version"),
        ({"images": "all"}, "images"),
        ({"colour": "red"}, "colour"),
    ):
        response = setup.lead_client.post(
            "/api/studies/", {**good, **change}, content_type="application/json"
        )
        assert response.status_code == 400, change
        assert field in response.json(), (change, response.json())
    assert ReaderStudy.objects.count() == before
    # opening an empty study, or a model without any threshold, is refused (409)
    empty = setup.lead_client.post(
        "/api/studies/", {**good, "images": []}, content_type="application/json"
    ).json()["id"]
    response = setup.lead_client.post(f"/api/studies/{empty}/open/")
    assert response.status_code == 409 and "no images" in response.json()["detail"]
    # a draft can be changed: images and readers replaced
    patched = setup.lead_client.patch(
        f"/api/studies/{empty}/",
        {"images": [s.pk for s in setup.slides[:3]], "readers": [setup.readers["reader3"].pk]},
        content_type="application/json",
    )
    assert patched.status_code == 200
    assert [r["username"] for r in patched.json()["readers"]] == ["reader3"]
    assert len(patched.json()["images"]) == 3
    assert not ReaderAnswer.objects.exists()


def test_page_flow_create_open_read(setup):
    """The pages: create through the form, open, read with the buttons, close."""
    people = setup.people
    form = setup.lead_client.get("/studies/new/")  # one lab: its images and users at once
    assert form.status_code == 200
    html = form.content.decode()
    assert html.count('name="images"') == 22 and html.count('name="readers"') == 5
    assert "S26-SECRET-77" in html and "image-model-under-study" in html
    response = setup.lead_client.post(
        "/studies/new/",
        {
            "lab": people.lab.pk,
            "name": "Form study",
            "images": [str(s.pk) for s in setup.slides[:2]],
            "readers": [str(setup.readers["reader2"].pk)],
            "model_version": str(setup.version.pk),
            "threshold": "0.4",
        },
    )
    assert response.status_code == 302
    study = ReaderStudy.objects.get(name="Form study")
    assert study.threshold == 0.4 and study.images.count() == 2
    # the draft is changed through the same form (readers, threshold)
    edit = setup.lead_client.get(f"/studies/{study.pk}/edit/")
    assert edit.status_code == 200 and b'value="Form study"' in edit.content
    changed = setup.lead_client.post(
        f"/studies/{study.pk}/edit/",
        {
            "name": "Form study",
            "images": [str(s.pk) for s in setup.slides[:2]],
            "readers": [str(setup.readers["reader2"].pk), str(setup.readers["reader3"].pk)],
            "model_version": str(setup.version.pk),
            "threshold": "0.45",
        },
    )
    assert changed.status_code == 302
    study.refresh_from_db()
    assert study.threshold == 0.45 and study.readers.count() == 2
    bad = setup.lead_client.post(f"/studies/{study.pk}/edit/", {"name": "", "threshold": "2"})
    assert bad.status_code == 400 and b"threshold" in bad.content
    assert (
        setup.client_for(setup.readers["reader2"]).get(f"/studies/{study.pk}/edit/").status_code
        == 403
    )
    assert setup.lead_client.post(f"/studies/{study.pk}/", {"action": "open"}).status_code == 302
    assert setup.lead_client.get(f"/studies/{study.pk}/edit/").status_code == 409
    client = setup.client_for(setup.readers["reader2"])
    for _ in range(2):
        page = client.get(f"/studies/{study.pk}/read/")
        assert page.status_code == 200 and b'id="viewer"' in page.content
        image = page.context["current"]["image"]
        answered = client.post(
            f"/studies/{study.pk}/read/", {"image": image, "label": "benign", "confidence": "5"}
        )
        assert answered.status_code == 302
    done = client.get(f"/studies/{study.pk}/read/")
    assert b"answered all 2 images" in done.content and b'id="viewer"' not in done.content
    bad = client.post(f"/studies/{study.pk}/read/", {"image": image, "label": "unsure"})
    assert bad.status_code == 400 and b"label" in bad.content
    progress = setup.lead_client.get(f"/studies/{study.pk}/")
    assert b"2 of 2" in progress.content
    assert setup.lead_client.post(f"/studies/{study.pk}/", {"action": "close"}).status_code == 302
    study.refresh_from_db()
    assert study.status == "closed"
