"""A reader study of 22 images (11 positive nodes, 10 negative, 1 without ground truth) in the
`people` lab, with three readers and a model version; scripted answers worked out by hand."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from django.test import Client

from slides.models import Node, Role
from tests.factories import PASSWORD, make_case, make_user
from tests.review.factories import make_model_version, make_slide

#: Index of each image → its node's truth: 0-9 positive, 10-19 negative, 20 unknown, 21 positive.
TRUTH = ["positive"] * 10 + ["negative"] * 10 + ["unknown", "positive"]

#: Images each party gets wrong (on 0-19), worked out so that against the truth:
#: reader1 TP 8 FN 2 TN 7 FP 3; reader2 TP 5 FN 5 TN 6 FP 4; reader3 perfect;
#: model TP 9 FN 1 TN 8 FP 2.
WRONG = {
    "reader1": {0, 1, 10, 11, 12},
    "reader2": {0, 1, 2, 3, 4, 10, 11, 12, 13},
    "reader3": set(),
    "model": {2, 13, 14},
}


#: Model probabilities: distinctive digits so that a leak is easy to find in a page.
def model_probability(index: int) -> float:
    metastatic = (TRUTH[index] == "positive") != (index in WRONG["model"])
    return (0.913571 if metastatic else 0.087243) + index * 1e-6


def scripted_label(who: str, index: int) -> str:
    positive = TRUTH[index] != "negative"  # image 20 (no truth): called metastatic by all
    if index in WRONG[who]:
        positive = not positive
    return "metastatic" if positive else "benign"


@dataclass
class StudySetup:
    people: object
    readers: dict  # username → user
    slides: list  # index → Slide
    version: object
    lead_client: Client

    def client_for(self, user) -> Client:
        client = Client()
        assert client.login(username=user.username, password=PASSWORD)
        return client

    def index_of_slide(self, slide_id: int) -> int:
        return next(i for i, s in enumerate(self.slides) if s.pk == slide_id)


@pytest.fixture
def setup(people) -> StudySetup:
    case = make_case(people.lab, "S26-SECRET-77", nodes=())
    slides = []
    for i, truth in enumerate(TRUTH):
        node = Node.objects.create(case=case, label=f"level {i} node", ground_truth=truth)
        slides.append(make_slide(node, name=f"tumor_hidden_{i:03d}"))
    readers = {
        "reader1": people.pathologist,
        "reader2": make_user("reader2", role=Role.PATHOLOGIST, lab=people.lab),
        "reader3": make_user("reader3", role=Role.PATHOLOGIST, lab=people.lab),
    }
    version = make_model_version("image-model-under-study", threshold=0.5, live=False)
    lead = Client()
    assert lead.login(username=people.lab_lead.username, password=PASSWORD)
    return StudySetup(
        people=people, readers=readers, slides=slides, version=version, lead_client=lead
    )


def create_study(setup: StudySetup, **extra) -> dict:
    body = {
        "name": "US axillary nodes",
        "lab": setup.people.lab.pk,
        "instructions": "Metastatic or benign?",
        "images": [s.pk for s in setup.slides],
        "readers": [u.pk for u in setup.readers.values()],
        "model_version": setup.version.pk,
        **extra,
    }
    response = setup.lead_client.post("/api/studies/", body, content_type="application/json")
    assert response.status_code == 201, response.content
    return response.json()
