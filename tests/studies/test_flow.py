"""A reader study end to end through the API: scripted readers, the model's answers, results
(hand-computed), CSV export, reading orders, closing."""

from __future__ import annotations

import csv
import io

import pytest

from audit.models import AuditEvent
from studies import services
from studies.models import ReaderAnswer, ReaderStudy, StudyImage, StudyReader

from .conftest import TRUTH, create_study, model_probability, scripted_label


def _answer_in_order(client, study_id: int, setup, who: str) -> int:
    """Follow the reader's own order (GET next, POST its answer) until nothing is left."""
    done = 0
    while True:
        state = client.get(f"/api/studies/{study_id}/reading/").json()
        if state["next"] is None:
            return done
        image = StudyImage.objects.get(pk=state["next"]["image"])
        index = setup.index_of_slide(image.slide_id)
        response = client.post(
            f"/api/studies/{study_id}/reading/answers/",
            {"image": image.pk, "label": scripted_label(who, index), "confidence": 1 + index % 5},
            content_type="application/json",
        )
        assert response.status_code == 201, response.content
        done += 1


def _run_study(setup, django_capture_on_commit_callbacks) -> ReaderStudy:
    created = create_study(setup)
    sid = created["id"]
    assert created["status"] == "draft" and len(created["images"]) == 22
    assert setup.lead_client.post(f"/api/studies/{sid}/open/").status_code == 200
    clients = {who: setup.client_for(user) for who, user in setup.readers.items()}
    assert _answer_in_order(clients["reader1"], sid, setup, "reader1") == 22
    assert _answer_in_order(clients["reader2"], sid, setup, "reader2") == 22
    # reader3 jumps between images (as the page's ?image= allows) and never answers image 21
    order = StudyReader.objects.get(study_id=sid, user=setup.readers["reader3"]).order
    for pk in order:
        index = setup.index_of_slide(StudyImage.objects.get(pk=pk).slide_id)
        if index == 21:
            continue
        response = clients["reader3"].post(
            f"/api/studies/{sid}/reading/answers/",
            {"image": pk, "label": scripted_label("reader3", index)},
            content_type="application/json",
        )
        assert response.status_code == 201
    progress = setup.lead_client.get(f"/api/studies/{sid}/").json()["progress"]
    assert [(p["username"], p["answered"]) for p in progress] == [
        ("path", 22),
        ("reader2", 22),
        ("reader3", 21),
    ]
    with django_capture_on_commit_callbacks(execute=True):
        closed = setup.lead_client.post(f"/api/studies/{sid}/close/")
    assert closed.status_code == 200
    study = ReaderStudy.objects.get(pk=sid)
    assert study.status == "closed"
    # the model's answers were queued on close (eager here): this version has no weights on
    # disk, so the job fails with its reason; the answers are then stored as rows
    assert study.model_status == "failed" and study.model_status_reason
    services.store_model_answers(
        study=study, probabilities={s.pk: model_probability(i) for i, s in enumerate(setup.slides)}
    )
    return study


@pytest.mark.usefixtures("eager_tasks")
def test_scripted_readers_and_model_give_the_hand_computed_statistics(
    setup, django_capture_on_commit_callbacks
):
    study = _run_study(setup, django_capture_on_commit_callbacks)
    results = setup.lead_client.get(f"/api/studies/{study.pk}/results/").json()
    # images 0-19: image 20 has no ground truth, image 21 was not answered by reader3
    assert results["compared_images"] == 20
    assert (results["positives"], results["negatives"]) == (10, 10)
    assert results["images_without_truth"] == 1
    assert results["ci_method"].startswith("Wilson")
    parties = {p["name"]: p["metrics"] for p in results["parties"]}
    expected = {
        "path": (8, 2, 7, 3),
        "reader2": (5, 5, 6, 4),
        "reader3": (10, 0, 10, 0),
        "image-model-under-study": (9, 1, 8, 2),
    }
    assert {k: (m["tp"], m["fn"], m["tn"], m["fp"]) for k, m in parties.items()} == expected
    r1 = parties["path"]
    assert r1["sensitivity"]["value"] == pytest.approx(0.8)
    assert (r1["sensitivity"]["low"], r1["sensitivity"]["high"]) == pytest.approx(
        (0.490, 0.943), abs=5e-4
    )
    assert (r1["specificity"]["low"], r1["specificity"]["high"]) == pytest.approx(
        (0.397, 0.892), abs=5e-4
    )
    assert r1["accuracy"]["value"] == pytest.approx(0.75)
    # reader2: 5/10 → [0.2366, 0.7634]; 6/10 → [0.3127, 0.8318]
    r2 = parties["reader2"]
    assert (r2["sensitivity"]["low"], r2["sensitivity"]["high"]) == pytest.approx(
        (0.2366, 0.7634), abs=5e-4
    )
    assert (r2["specificity"]["low"], r2["specificity"]["high"]) == pytest.approx(
        (0.3127, 0.8318), abs=5e-4
    )
    # McNemar, model versus each reader (b: model right & reader wrong, c: the other way):
    # reader1 b=5 c=3 → 2·(1+8+28+56)/256; reader2 b=7 c=1 → 2·9/256; reader3 b=0 c=3 → 2/8
    mc = {m["name"]: m for m in results["mcnemar"]}
    assert (mc["path"]["accuracy"]["b"], mc["path"]["accuracy"]["c"]) == (5, 3)
    assert mc["path"]["accuracy"]["p"] == pytest.approx(186 / 256)
    assert (mc["reader2"]["accuracy"]["b"], mc["reader2"]["accuracy"]["c"]) == (7, 1)
    assert mc["reader2"]["accuracy"]["p"] == pytest.approx(0.0703125)
    assert (mc["reader2"]["sensitivity"]["b"], mc["reader2"]["sensitivity"]["c"]) == (4, 0)
    assert mc["reader2"]["sensitivity"]["p"] == pytest.approx(0.125)
    assert mc["reader2"]["specificity"]["p"] == pytest.approx(0.625)
    assert (mc["reader3"]["accuracy"]["b"], mc["reader3"]["accuracy"]["c"]) == (0, 3)
    assert mc["reader3"]["accuracy"]["p"] == pytest.approx(0.25)
    assert mc["reader3"]["specificity"]["p"] == pytest.approx(0.5)

    page = setup.lead_client.get(f"/studies/{study.pk}/results/")
    assert page.status_code == 200
    html = page.content.decode()
    assert "Wilson score interval" in html and "McNemar" in html
    assert "0.7266" in html and "0.0703" in html and "0.2500" in html
    assert "[0.490, 0.943]" in html

    # CSV: every reader answer (22 + 22 + 21) and every model answer (22)
    response = setup.lead_client.get(f"/api/studies/{study.pk}/answers.csv")
    assert response.status_code == 200 and response["Content-Type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(response.content.decode())))
    assert list(rows[0]) == services.CSV_COLUMNS
    assert len(rows) == 22 + 22 + 21 + 22
    by = {(r["reader"], int(r["slide"])): r for r in rows}
    s0, s2 = setup.slides[0].pk, setup.slides[2].pk
    row = by[("reader2", s0)]
    assert (row["case"], row["node"], row["truth"], row["label"], row["confidence"]) == (
        "S26-SECRET-77",
        "level 0 node",
        "positive",
        "benign",
        "1",
    )
    assert row["probability"] == "" and row["study"] == str(study.pk)
    model_row = by[("model:image-model-under-study", s2)]
    assert model_row["label"] == "benign" and model_row["truth"] == TRUTH[2]
    assert float(model_row["probability"]) == pytest.approx(0.087245)
    assert float(model_row["threshold"]) == 0.5
    assert ("reader3", setup.slides[21].pk) not in by


def test_each_reader_has_a_stable_order_of_their_own(setup):
    sid = create_study(setup)["id"]
    image_ids = sorted(StudyImage.objects.filter(study_id=sid).values_list("pk", flat=True))
    assert setup.lead_client.post(f"/api/studies/{sid}/open/").status_code == 200
    orders = {r.user_id: r.order for r in StudyReader.objects.filter(study_id=sid)}
    assert all(sorted(o) == image_ids for o in orders.values())
    assert len({tuple(o) for o in orders.values()}) == 3
    reader = setup.readers["reader2"]
    order = orders[reader.pk]
    client = setup.client_for(reader)
    first = client.get(f"/api/studies/{sid}/reading/").json()
    again = setup.client_for(reader).get(f"/api/studies/{sid}/reading/").json()
    assert first["next"] == again["next"] == {"image": order[0], "position": 1}
    page = client.get(f"/studies/{sid}/read/")
    assert f"/reading/images/{order[0]}/tilesource/" in page.content.decode()
    response = client.post(f"/studies/{sid}/read/", {"image": order[0], "label": "benign"})
    assert response.status_code == 302
    assert client.get(f"/api/studies/{sid}/reading/").json()["next"] == {
        "image": order[1],
        "position": 2,
    }
    # reopening the page later, and re-reading the stored order, changes nothing
    assert StudyReader.objects.get(study_id=sid, user=reader).order == order


def test_answers_change_with_an_audit_trail_and_stop_at_closing(setup):
    sid = create_study(setup)["id"]
    reader = setup.readers["reader3"]
    client = setup.client_for(reader)
    image = StudyImage.objects.filter(study_id=sid).first().pk
    url = f"/api/studies/{sid}/reading/answers/"
    body = {"image": image, "label": "benign", "confidence": 2}
    # a draft takes no answers yet
    assert client.post(url, body, content_type="application/json").status_code == 409
    assert setup.lead_client.post(f"/api/studies/{sid}/open/").status_code == 200
    assert setup.lead_client.post(f"/api/studies/{sid}/open/").status_code == 409
    assert client.post(url, body, content_type="application/json").status_code == 201
    # bad input: named, nothing written
    for bad, field in (
        ({"image": image, "label": "maybe"}, "label"),
        ({"image": image, "label": "benign", "confidence": 7}, "confidence"),
        ({"image": 10**9, "label": "benign"}, "image"),
        ({"image": True, "label": "benign"}, "image"),
        ({"image": image, "label": "benign", "confidence": 1.5}, "confidence"),
    ):
        response = client.post(url, bad, content_type="application/json")
        assert response.status_code == 400 and field in response.json()
    changed = client.post(
        url,
        {"image": image, "label": "metastatic", "confidence": 4},
        content_type="application/json",
    )
    assert changed.status_code == 200
    answer = ReaderAnswer.objects.get(study_id=sid, reader=reader, image_id=image)
    assert (answer.label, answer.confidence, answer.changes) == ("metastatic", 4, 1)
    event = AuditEvent.objects.get(action="reader study answer changed", object_id=str(answer.pk))
    assert event.actor == reader
    assert event.detail["before"] == {"label": "benign", "confidence": 2}
    assert event.detail["after"] == {"label": "metastatic", "confidence": 4}

    assert setup.lead_client.post(f"/api/studies/{sid}/close/").status_code == 200
    assert setup.lead_client.post(f"/api/studies/{sid}/close/").status_code == 409
    late = client.post(url, {"image": image, "label": "benign"}, content_type="application/json")
    assert late.status_code == 409 and "closed" in late.json()["detail"]
    page = client.post(f"/studies/{sid}/read/", {"image": image, "label": "benign"})
    assert page.status_code == 409
    answer.refresh_from_db()
    assert answer.label == "metastatic"
    # a closed study cannot be edited either
    edit = setup.lead_client.patch(
        f"/api/studies/{sid}/", {"name": "renamed"}, content_type="application/json"
    )
    assert edit.status_code == 409


@pytest.mark.usefixtures("eager_tasks")
def test_a_patch_model_answers_with_each_slides_latest_heat_map(
    setup, django_capture_on_commit_callbacks
):
    """Whole slides and a patch classifier: the model's probability is the slide's heat-map
    maximum from that version's latest scoring; a slide it never scored fails the job, named."""
    from tests.review.factories import make_heatmap

    slides = setup.slides[:3]
    sid = create_study(setup, images=[s.pk for s in slides])["id"]
    make_heatmap(slides[0], setup.version, max_score=0.2)
    make_heatmap(slides[0], setup.version, max_score=0.75)  # rescored later: this one counts
    make_heatmap(slides[1], setup.version, max_score=0.3)
    assert setup.lead_client.post(f"/api/studies/{sid}/open/").status_code == 200
    with django_capture_on_commit_callbacks(execute=True):
        assert setup.lead_client.post(f"/api/studies/{sid}/close/").status_code == 200
    study = ReaderStudy.objects.get(pk=sid)
    assert study.model_status == "failed"
    assert f"slide [{slides[2].pk}]" in study.model_status_reason
    make_heatmap(slides[2], setup.version, max_score=0.5)
    with django_capture_on_commit_callbacks(execute=True):
        again = setup.lead_client.post(f"/api/studies/{sid}/model-answers/")
    assert again.status_code == 202
    study.refresh_from_db()
    assert study.model_status == "done", study.model_status_reason
    answers = {m.image.slide_id: (m.probability, m.label) for m in study.model_answers.all()}
    assert answers == {
        slides[0].pk: (0.75, "metastatic"),
        slides[1].pk: (0.3, "benign"),
        slides[2].pk: (0.5, "metastatic"),  # at the threshold counts as metastatic
    }
    # done: not queued again
    assert setup.lead_client.post(f"/api/studies/{sid}/model-answers/").status_code == 409


def test_a_reader_without_answers_is_listed_but_not_compared(setup):
    sid = create_study(setup, model_version=None)["id"]
    assert setup.lead_client.post(f"/api/studies/{sid}/open/").status_code == 200
    client = setup.client_for(setup.readers["reader2"])
    for pk in StudyReader.objects.get(study_id=sid, user=setup.readers["reader2"]).order[:5]:
        index = setup.index_of_slide(StudyImage.objects.get(pk=pk).slide_id)
        body = {"image": pk, "label": scripted_label("reader2", index)}
        response = client.post(
            f"/api/studies/{sid}/reading/answers/", body, content_type="application/json"
        )
        assert response.status_code == 201
    results = setup.lead_client.get(f"/api/studies/{sid}/results/").json()
    parties = {p["name"]: p for p in results["parties"]}
    assert parties["path"]["metrics"] is None and parties["path"]["answered"] == 0
    assert parties["reader2"]["answered"] == 5
    truth_known = sum(
        1
        for pk in StudyReader.objects.get(study_id=sid, user=setup.readers["reader2"]).order[:5]
        if TRUTH[setup.index_of_slide(StudyImage.objects.get(pk=pk).slide_id)] != "unknown"
    )
    assert results["compared_images"] == parties["reader2"]["metrics"]["images"] == truth_known
    assert results["mcnemar"] == []  # no model
    page = setup.lead_client.get(f"/studies/{sid}/results/")
    assert page.status_code == 200 and b"no answers yet" in page.content
