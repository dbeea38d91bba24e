"""The access matrix of issue 7: every route (pages, API, admin site) x every kind of user.

Users: anonymous; the pathologist, lab lead and admin of lab A; and three outsiders, a
pathologist, a lab lead and an admin of lab B only. Every object a route names (case, node, slide,
annotation, heat map, lab) belongs to lab A. The rule (`slides/access.py`): roles come from
Django groups (admin > lab lead > pathologist); every role, the admin role included, sees only the
cases of its own labs. Only Django superusers, the platform operators who also run the admin site,
see every lab; none of the users here is one.

A cell is *allowed* when the answer is 2xx, a redirect that is not to a log-in page, or a 4xx that
judges the request itself (400 validation, 409 state, 413 size). It is *refused* when the answer is
401/403/404 or a redirect to a log-in page; an outsider who holds the route's role must get 404
for lab A's objects (never 403, which would confirm that the object exists).

`test_every_route_has_an_entry` walks Django's URL resolver: a new route without an entry here
fails it. The objects are built once per module inside a transaction that is rolled back at the
end (like `setUpTestData`), and each cell runs in its own savepoint, so a cell's writes never
reach the next one.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile
from django.conf import settings
from django.contrib.auth import get_user_model
from django.test import Client, TestCase
from django.urls import URLPattern, URLResolver, get_resolver, resolve
from rest_framework.authtoken.models import Token

from annotations import services as annotation_services
from annotations.models import Dataset
from inference.heatmaps import write_raster
from inference.image_classifier import IMAGE_STAGE
from inference.records import GradCam, HeatMap, ScoringRun, TrainingRun
from review.models import ReviewDecision
from slides.access import grant_role
from slides.ingest import register_slide
from slides.models import Case, Lab, Role
from studies.services import create_study, open_study
from tests.factories import gradient_image, make_case, write_pyramid_tiff
from tests.review.factories import make_model_version, score_node

pytestmark = pytest.mark.django_db  # every test, so the test database exists under -k too

# ---- who ----------------------------------------------------------------------------------------

INSIDERS = ("pathologist", "lab_lead", "admin")
OUTSIDERS = ("outsider_pathologist", "outsider_lead", "outsider_admin")
USERS = ("anonymous", *OUTSIDERS, *INSIDERS)
ROLE_OF = {
    "pathologist": Role.PATHOLOGIST,
    "lab_lead": Role.LAB_LEAD,
    "admin": Role.ADMIN,
    "outsider_pathologist": Role.PATHOLOGIST,
    "outsider_lead": Role.LAB_LEAD,
    "outsider_admin": Role.ADMIN,
}
RANK = {Role.PATHOLOGIST: 1, Role.LAB_LEAD: 2, Role.ADMIN: 3}

# What a call needs: "public" (anyone, logged in or not), "user" (any role), a role, "staff"
# (Django's admin site: is_staff, which none of the matrix users is), or "reader": the readers of
# the world's reader study (lab A's pathologist alone); everyone else, the study's managers
# included, must get 404.
PUBLIC, USER, STAFF, READER = "public", "user", "staff", "reader"
# "platform": platform operators only (superusers, the platform admin role; none of the matrix
# users): what changes the live models every lab screens with (slides.access.may_promote_models).
PLATFORM = "platform"
STUDY_READERS = {"pathologist"}
PATHOLOGIST, LAB_LEAD, ADMIN = Role.PATHOLOGIST, Role.LAB_LEAD, Role.ADMIN

SQUARE = {
    "type": "Polygon",
    "coordinates": [[[100, 100], [300, 100], [300, 300], [100, 300], [100, 100]]],
}
PATIENT_MARK = "PATIENT-DOE-JANE"  # in the slide file's folder: a file path leak shows it
PSEUDONYM = "PSEUDO-A-7731"


# ---- the objects ----------------------------------------------------------------------------------


@dataclass
class World:
    """Lab A's objects (by name, for URL templates), lab B's, and each user's credentials."""

    ids: dict[str, int]
    other: dict[str, int]
    root: Path
    users: dict[str, Any]
    cookies: dict[str, SimpleCookie] = field(default_factory=dict)
    tokens: dict[str, str] = field(default_factory=dict)

    def client(self, who: str, **kwargs) -> Client:
        client = Client(**kwargs)
        if who != "anonymous":
            client.cookies = SimpleCookie(self.cookies[who].output(header="", sep=";"))
        return client


def _slide_file(path: Path, *, seed: int) -> Path:
    """A small pyramidal TIFF with a label image (labels can show patient names)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_pyramid_tiff(path, gradient_image(1000, 700, seed=seed), mpp=0.5)
    with tifffile.TiffWriter(path, append=True) as tif:
        label = np.full((120, 240, 3), 230, np.uint8)
        tif.write(label, photometric="rgb", description="label", subfiletype=1, metadata=None)
    return path


def _build_world(root: Path) -> World:
    lab_a = Lab.objects.create(code="lab-a", name="Lab A")
    lab_b = Lab.objects.create(code="lab-b", name="Lab B")
    users = {}
    for who in (*INSIDERS, *OUTSIDERS):
        user = get_user_model().objects.create_user(username=who, password=None)
        grant_role(user, ROLE_OF[who])
        (lab_b if who.startswith("outsider") else lab_a).members.add(user)
        users[who] = user

    case = make_case(lab_a, "ACC-A-1", nodes=("node 1", "node 2"))
    case.patient_pseudonym = PSEUDONYM
    case.save()
    node, node2 = case.nodes.order_by("label")
    slide = register_slide(
        node=node, path=_slide_file(root / PATIENT_MARK / "slide-a.tiff", seed=1)
    )
    annotation = annotation_services.create_annotation(
        slide=slide, user=users["pathologist"], geometry=SQUARE, label_class="tumour"
    )
    version = make_model_version("access-primary", threshold=0.5)
    run = ScoringRun.objects.create(model_version=version, status=ScoringRun.Status.SUCCEEDED)
    folder = str(root / "training" / "patches")  # an admin trained from a folder on the server
    TrainingRun.objects.create(
        dataset_source={"kind": "image-folder", "path": folder, "csv": f"{folder}/labels.csv"},
        status=TrainingRun.Status.FAILED,
        status_reason=f"cannot read {folder}/tumour/0001.png: truncated",
    )
    counts = np.zeros((70, 100), np.uint8)
    counts[20:40, 30:60] = 14
    raster = write_raster(
        root / "heatmaps" / "slide-a.npz", counts=counts, denominator=16, stride_px=10, window_px=40
    )
    heatmap = HeatMap.objects.create(
        slide=slide,
        model_version=version,
        scoring_run=run,
        raster_path=str(raster),
        stride_px=10,
        window_px=40,
        rows=70,
        cols=100,
        max_score=14 / 16,
        max_x=450,
        max_y=300,
    )
    score_node(node, version, 14 / 16, heatmap=heatmap)
    overlay = root / "gradcam" / "gradcam-a.png"
    overlay.parent.mkdir(parents=True, exist_ok=True)
    overlay.write_bytes(b"\x89PNG\r\n\x1a\n")
    gradcam = GradCam.objects.create(
        slide=slide, model_version=version, x=0, y=0, width=40, height=40, window_px=40,
        status=GradCam.Status.SUCCEEDED, overlay_path=str(overlay),
    )  # fmt: skip
    score_node(node2, version, 0.1)
    image_version = make_model_version("access-image", stage=IMAGE_STAGE, live=False)
    # the study's image is a case of its own: its readers do not see the cases they read blind
    # (tests/studies/test_blinding.py), and the pathologist reads this one
    study_case = make_case(lab_a, "ACC-A-STUDY", nodes=("node 1",))
    study_slide = register_slide(
        node=study_case.nodes.get(), path=_slide_file(root / "study" / "study-a.tiff", seed=3)
    )
    study = create_study(
        user=users["lab_lead"],
        data={
            "name": "matrix study",
            "lab": lab_a.pk,
            "images": [study_slide.pk],
            "readers": [users["pathologist"].pk],
        },
    )
    open_study(study=study, user=users["lab_lead"])

    other_case = make_case(lab_b, "ACC-B-1", nodes=("node 1",))
    other_node = other_case.nodes.get()
    other_slide = register_slide(
        node=other_node, path=_slide_file(root / "lab-b" / "slide-b.tiff", seed=2)
    )
    other_annotation = annotation_services.create_annotation(
        slide=other_slide, user=users["outsider_pathologist"], geometry=SQUARE, label_class="tumour"
    )
    score_node(other_node, version, 0.1)
    ReviewDecision.objects.create(
        node=other_node,
        user=users["outsider_pathologist"],
        user_name="outsider_pathologist",
        status="confirmed_negative",
        model_version=version,
    )
    ReviewDecision.objects.create(
        node=node2,
        user=users["pathologist"],
        user_name="pathologist",
        status="needs_further_work",
        further_work="ihc",
        model_version=version,
    )

    dataset = Dataset.objects.create(name="matrix-snapshot", content_hash="m" * 64)
    dataset.slides.set([slide])

    world = World(
        ids={
            "lab": lab_a.pk,
            "case": case.pk,
            "node": node.pk,
            "slide": slide.pk,
            "annotation": annotation.pk,
            "version": version.pk,
            "run": version.training_run_id,
            "scoring_run": run.pk,
            "heatmap": heatmap.pk,
            "gradcam": gradcam.pk,
            "image_version": image_version.pk,
            "study": study.pk,
            "study_image": study.images.get().pk,
            "dataset": dataset.pk,
        },
        other={
            "lab": lab_b.pk,
            "case": other_case.pk,
            "node": other_node.pk,
            "slide": other_slide.pk,
            "annotation": other_annotation.pk,
        },
        root=root,
        users=users,
    )
    for who, user in users.items():
        client = Client()
        client.force_login(user)
        world.cookies[who] = client.cookies
        world.tokens[who] = Token.objects.create(user=user).key
    return world


class _ModuleAtomics(TestCase):
    """Only for its class methods: the transaction that holds the module's objects."""

    databases = {"default"}


@pytest.fixture(scope="module")
def world(django_db_setup, django_db_blocker, tmp_path_factory) -> Iterator[World]:
    with django_db_blocker.unblock():
        atomics = _ModuleAtomics._enter_atomics()
        try:
            built = _build_world(tmp_path_factory.mktemp("access-matrix"))
        except BaseException:
            _ModuleAtomics._rollback_atomics(atomics)
            raise
    yield built
    with django_db_blocker.unblock():
        _ModuleAtomics._rollback_atomics(atomics)


# ---- the matrix -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    """One method on one route: what it needs, whether its object is lab A's, what to send."""

    method: str
    needs: str
    lab: bool = False
    body: Callable[[World], dict] | dict | None = None
    multipart: bool = False
    query: str = ""


@dataclass(frozen=True)
class Entry:
    url: str  # template filled from World.ids
    calls: tuple[Call, ...]
    suffix: bool = False  # a DRF router route: also `<url>.json`


def get(needs: str, lab: bool = False, query: str = "") -> Call:
    return Call("GET", needs, lab, query=query)


def post(
    needs: str, lab: bool = False, body=None, multipart: bool = False, query: str = ""
) -> Call:
    return Call("POST", needs, lab, body=body or {}, multipart=multipart, query=query)


MATRIX: tuple[Entry, ...] = (
    # public: log-in, health (static files are served by WhiteNoise, outside the resolver)
    Entry("/login/", (get(PUBLIC),)),
    Entry("/logout/", (post(PUBLIC),)),
    Entry("/health/", (get(PUBLIC),)),
    # pages
    Entry("/", (get(USER),)),
    Entry("/cases/{case}/", (get(PATHOLOGIST, lab=True),)),
    Entry("/slides/{slide}/view/", (get(PATHOLOGIST, lab=True),)),
    Entry("/models/", (get(USER),)),
    Entry("/models/{version}/", (get(USER),)),
    Entry("/scoring-runs/{scoring_run}/changes/", (get(USER),)),
    Entry("/review/cases/{case}/", (get(PATHOLOGIST, lab=True),)),
    Entry("/review/nodes/{node}/slides/{slide}/view/", (get(PATHOLOGIST, lab=True),)),
    Entry("/review/triage/", (get(LAB_LEAD),)),
    Entry("/datasets/", (get(LAB_LEAD),)),
    Entry("/review/metrics/", (get(LAB_LEAD, query="bootstrap=0"),)),
    # API: cases, nodes, slides, tiles
    Entry("/api/", (get(USER),), suffix=True),
    Entry("/api/schema/", (get(USER),)),
    Entry("/api/cases/", (get(USER),), suffix=True),
    Entry("/api/cases/{case}/", (get(PATHOLOGIST, lab=True),), suffix=True),
    Entry("/api/nodes/", (get(USER),), suffix=True),
    Entry("/api/nodes/{node}/", (get(PATHOLOGIST, lab=True),), suffix=True),
    # POST /api/slides/ names its node in the body (refused there with 400 "not in your labs",
    # tested in tests/test_uploads.py); an empty upload is a validation error for every role.
    Entry("/api/slides/", (get(USER), post(PATHOLOGIST, multipart=True)), suffix=True),
    Entry("/api/slides/{slide}/", (get(PATHOLOGIST, lab=True),), suffix=True),
    Entry("/api/slides/{slide}/tiles/0/0/0.jpg", (get(PATHOLOGIST, lab=True),)),
    Entry("/api/slides/{slide}/tilesource/", (get(PATHOLOGIST, lab=True),)),
    Entry("/api/slides/{slide}/thumbnail.jpg", (get(PATHOLOGIST, lab=True),)),
    Entry("/api/slides/{slide}/associated/label.jpg", (get(ADMIN, lab=True),)),
    # API: annotations
    Entry("/api/label-classes/", (get(USER),)),
    Entry(
        "/api/slides/{slide}/annotations/",
        (
            get(PATHOLOGIST, lab=True),
            post(PATHOLOGIST, lab=True, body={"geometry": SQUARE, "label_class": "non-tumour"}),
        ),
    ),
    Entry(
        "/api/slides/{slide}/annotations/export/",
        (get(PATHOLOGIST, lab=True, query="format=qupath"),),
    ),
    Entry(
        "/api/slides/{slide}/annotations/import/", (post(PATHOLOGIST, lab=True, multipart=True),)
    ),
    Entry(
        "/api/annotations/{annotation}/",
        (
            get(PATHOLOGIST, lab=True),
            Call("PATCH", PATHOLOGIST, True, body={"version": 1, "label_class": "non-tumour"}),
            Call("DELETE", PATHOLOGIST, True, query="version=1"),
        ),
    ),
    Entry("/api/annotations/{annotation}/restore/", (post(PATHOLOGIST, lab=True),)),
    Entry("/api/annotations/{annotation}/history/", (get(PATHOLOGIST, lab=True),)),
    # API: heat maps
    Entry("/api/slides/{slide}/heatmap/tilesource/", (get(PATHOLOGIST, lab=True),)),
    Entry("/api/slides/{slide}/heatmap/tiles/0/0/0.png", (get(PATHOLOGIST, lab=True),)),
    Entry("/api/slides/{slide}/heatmap/regions/", (get(PATHOLOGIST, lab=True),)),
    # API: Grad-CAM (the matrix's live model has no weights file: a request is a 409)
    Entry("/api/slides/{slide}/gradcam/", (post(PATHOLOGIST, lab=True, body={"x": 9, "y": 9}),)),
    Entry("/api/slides/{slide}/gradcam/{gradcam}/", (get(PATHOLOGIST, lab=True),)),
    Entry("/api/slides/{slide}/gradcam/{gradcam}/overlay.png", (get(PATHOLOGIST, lab=True),)),
    Entry("/api/slides/{slide}/mil-attention/", (get(PATHOLOGIST, lab=True),)),
    Entry("/api/slides/{slide}/mil-attention/tiles/0/0/0.png", (get(PATHOLOGIST, lab=True),)),
    # API: models (platform-wide: every role sees which version is live; admins change them)
    Entry(
        "/api/training-runs/", (get(USER), post(ADMIN, body={"dataset_source": {}})), suffix=True
    ),
    Entry("/api/training-runs/{run}/", (get(USER),), suffix=True),
    # another user's run (this one was launched on the server): its launcher or a platform operator
    Entry("/api/training-runs/{run}/cancel/", (post(PLATFORM),), suffix=True),
    Entry("/api/model-versions/", (get(USER),), suffix=True),
    Entry("/api/model-versions/{version}/", (get(USER),), suffix=True),
    Entry("/api/model-versions/{version}/promote/", (post(PLATFORM),), suffix=True),
    # thresholds: admins calibrate on the nodes of their own labs (a 400 names what is missing)
    Entry("/api/model-versions/{version}/threshold/", (get(ADMIN), post(ADMIN))),
    Entry("/api/model-versions/{version}/calibration-scoring/", (post(ADMIN),)),
    # dataset snapshots: lab leads read those of their labs, admins create (an empty name: 400)
    Entry("/api/datasets/", (get(LAB_LEAD), post(ADMIN, body={"name": ""}))),
    Entry("/api/datasets/{dataset}/", (get(LAB_LEAD, lab=True),)),
    Entry(
        "/api/model-versions/rollback/", (post(PLATFORM, body={"stage": "primary"}),), suffix=True
    ),
    Entry("/api/model-versions/{version}/train-secondary/", (post(ADMIN, body={"stride": 0}),)),
    Entry("/api/scoring-runs/{scoring_run}/", (get(USER),)),
    Entry("/api/scoring-runs/{scoring_run}/changes/", (get(USER),)),
    # API: review
    Entry(
        "/api/nodes/{node}/decisions/",
        (
            get(PATHOLOGIST, lab=True),
            post(PATHOLOGIST, lab=True, body={"status": "confirmed_positive", "based_on": None}),
        ),
    ),
    Entry(
        "/api/nodes/{node}/viewed-regions/",
        (
            get(PATHOLOGIST, lab=True),
            post(
                PATHOLOGIST, lab=True, body=lambda w: {"x": 450, "y": 300, "slide": w.ids["slide"]}
            ),
        ),
    ),
    Entry(
        "/api/nodes/{node}/corrections/",
        (
            get(PATHOLOGIST, lab=True),
            post(
                PATHOLOGIST,
                lab=True,
                body=lambda w: {
                    "label_class": "sinus",
                    "geometry": SQUARE,
                    "slide": w.ids["slide"],
                },
            ),
        ),
    ),
    Entry("/api/review/cases/{case}/queue/", (get(PATHOLOGIST, lab=True),)),
    Entry(
        "/api/review/cases/{case}/sign-off/", (post(LAB_LEAD, lab=True, body={"note": "matrix"}),)
    ),
    Entry(
        "/api/review/cases/{case}/reopen/", (post(LAB_LEAD, lab=True, body={"reason": "matrix"}),)
    ),
    Entry("/api/review/triage/", (get(LAB_LEAD),)),
    Entry("/api/review/metrics/", (get(LAB_LEAD, query="bootstrap=0"),)),
    Entry("/api/review/decisions.csv", (get(LAB_LEAD),)),
    Entry(
        "/api/review/labs/{lab}/settings/",
        (
            get(LAB_LEAD, lab=True),
            Call("PUT", ADMIN, True, body={"require_region_views": True, "reason": "matrix"}),
        ),
    ),
    # clinical data and the MIL node-status prediction (seed 001); the import names its cases in
    # the file, so an outsider's import of lab A's case is a 400 ("no case ... in your labs")
    Entry(
        "/cases/{case}/clinical/",
        (get(PATHOLOGIST, lab=True), post(PATHOLOGIST, lab=True, multipart=True)),
    ),
    Entry("/api/clinical-fields/", (get(USER),)),
    Entry(
        "/api/clinical/import/",
        (post(PATHOLOGIST, body={"csv": "accession_number,age\nACC-A-1,61\n"}),),
    ),
    Entry(
        "/api/cases/{case}/clinical/",
        (
            get(PATHOLOGIST, lab=True),
            Call("PUT", PATHOLOGIST, True, body={"values": {"age": 60}, "positive_nodes": 1}),
        ),
    ),
    Entry("/api/cases/{case}/clinical/history/", (get(PATHOLOGIST, lab=True),)),
    Entry("/api/cases/{case}/mil-prediction/", (get(PATHOLOGIST, lab=True),)),
    # CT / ultrasound node images (issue 9): class activation maps (the matrix's version is a
    # patch model: a 400 naming it), and whole-image classifiers (platform-wide like the models)
    Entry(
        "/api/slides/{slide}/cam/",
        (post(PATHOLOGIST, lab=True, body=lambda w: {"model_version": w.ids["version"]}),),
    ),
    Entry("/models/{image_version}/comparison/", (get(USER),)),
    Entry("/api/model-versions/{image_version}/comparison/", (get(USER),)),
    Entry(
        "/api/model-versions/{image_version}/operating-point/",
        (post(PLATFORM, body={"method": "youden"}),),
    ),
    # reader studies (issue 9): lab leads and admins of the study's lab manage them; only the
    # study's readers reach the reading routes (everyone else gets 404, managers included)
    Entry("/studies/", (get(USER),)),
    Entry("/studies/new/", (get(LAB_LEAD), post(LAB_LEAD, multipart=True))),
    Entry("/api/studies/", (get(USER), post(LAB_LEAD))),
    Entry(
        "/api/studies/{study}/",
        (get(LAB_LEAD, lab=True), Call("PATCH", LAB_LEAD, True, body={"name": "renamed"})),
    ),
    Entry("/api/studies/{study}/open/", (post(LAB_LEAD, lab=True),)),
    Entry("/api/studies/{study}/close/", (post(LAB_LEAD, lab=True),)),
    Entry("/api/studies/{study}/model-answers/", (post(LAB_LEAD, lab=True),)),
    Entry("/api/studies/{study}/results/", (get(LAB_LEAD, lab=True),)),
    Entry("/api/studies/{study}/answers.csv", (get(LAB_LEAD, lab=True),)),
    Entry(
        "/studies/{study}/",
        (get(LAB_LEAD, lab=True), post(LAB_LEAD, lab=True, multipart=True, body={"action": "x"})),
    ),
    Entry(
        "/studies/{study}/edit/",
        (get(LAB_LEAD, lab=True), post(LAB_LEAD, lab=True, multipart=True)),
    ),
    Entry("/studies/{study}/results/", (get(LAB_LEAD, lab=True),)),
    Entry("/studies/{study}/read/", (get(READER), post(READER, multipart=True))),
    Entry("/api/studies/{study}/reading/", (get(READER),)),
    Entry(
        "/api/studies/{study}/reading/answers/",
        (post(READER, body=lambda w: {"image": w.ids["study_image"], "label": "benign"}),),
    ),
    Entry("/api/studies/{study}/reading/images/{study_image}/tilesource/", (get(READER),)),
    Entry("/api/studies/{study}/reading/images/{study_image}/tiles/0/0/0.jpg", (get(READER),)),
)

# Django's admin site: every route needs is_staff, except its own log-in and log-out.
ADMIN_PUBLIC = {"admin:login", "admin:logout"}
ADMIN_KWARGS = {
    "app_label": "slides",
    "object_id": "1",
    "id": "1",
    "content_type_id": "1",
    "url": "nothing/",
}


# ---- walking the resolver -------------------------------------------------------------------------


def _walk(patterns, prefix: str = "", namespace: str = "") -> Iterator[tuple[str, str, URLPattern]]:
    """(route, namespaced name, pattern) of every URL pattern, depth first."""
    for p in patterns:
        if isinstance(p, URLResolver):
            ns = f"{namespace}:{p.namespace}".strip(":") if p.namespace else namespace
            yield from _walk(p.url_patterns, URLResolver._join_route(prefix, str(p.pattern)), ns)
        else:
            route = URLResolver._join_route(prefix, str(p.pattern))  # as ResolverMatch.route has it
            yield route, f"{namespace}:{p.name}".strip(":"), p


def all_routes() -> list[tuple[str, str]]:
    return [(route, name) for route, name, _ in _walk(get_resolver().url_patterns)]


def _fill(template: str, ids: dict[str, int]) -> str:
    return template.format(**ids)


def _suffixed(url: str) -> str:
    """The `.json` variant DRF's routers add: /api/cases.json, /api/cases/1.json, /api/.json."""
    return url + ".json" if url == "/api/" else url[:-1] + ".json"


def _cells() -> Iterator[tuple[str, str, Call]]:
    """(url template, who, call) for the whole matrix, the `.json` variants of router routes too."""
    for entry in MATRIX:
        for call in entry.calls:
            for who in USERS:
                yield entry.url, who, call
                if entry.suffix:
                    yield _suffixed(entry.url), who, call


def _example_url(route: str, values: dict[str, str]) -> str:
    """A concrete URL for a route string (path converters and the admin site's regex groups)."""
    url = re.sub(r"\(\?P<(\w+)>[^)]*\)", lambda m: values[m.group(1)], route)
    url = re.sub(r"<(?:\w+:)?(\w+)>", lambda m: values[m.group(1)], url)
    return "/" + url.replace("^", "").replace("$", "").replace("\\Z", "")


def _admin_routes() -> list[tuple[str, str]]:
    """(url, route) of every admin-site route, with placeholder kwargs."""
    found = []
    for route, name, _pattern in _walk(get_resolver().url_patterns):
        if name.startswith("admin:"):
            found.append((_example_url(route, ADMIN_KWARGS), route))
    return sorted(set(found))


# ---- judging an answer ----------------------------------------------------------------------------


def expected(who: str, call: Call) -> str:
    """'allowed', 'refused' or 'hidden' (refused with exactly 404) for `who` on `call`."""
    if call.needs == PUBLIC:
        return "allowed"
    if who == "anonymous" or call.needs in (STAFF, PLATFORM):
        return "refused"
    if call.needs == READER:
        return "allowed" if who in STUDY_READERS else "hidden"
    if call.needs != USER and RANK[ROLE_OF[who]] < RANK[call.needs]:
        return "refused"
    if call.lab and who in OUTSIDERS:
        return "hidden"
    return "allowed"


def _login_redirect(response) -> bool:
    location = response.get("Location", "")
    return response.status_code in (301, 302) and (
        location.startswith(settings.LOGIN_URL) or "/login/" in location.split("?")[0]
    )


def outcome(response, call: Call) -> str:
    code = response.status_code
    if call.needs == PUBLIC:
        return "allowed" if code < 400 else "refused"
    if _login_redirect(response) or code in (401, 403, 404):
        return "refused"
    if code < 400 or code in (400, 409, 413):
        return "allowed"
    return f"unexpected {code}"


def send(client: Client, method: str, url: str, call: Call, world: World, **extra):
    body = call.body(world) if callable(call.body) else call.body
    if call.query:
        url = f"{url}?{call.query}"
    if method == "GET":
        return client.get(url, **extra)
    if call.multipart:  # only POSTs are multipart here
        return client.post(url, body or {}, **extra)
    return client.generic(
        method, url, json.dumps(body or {}), content_type="application/json", **extra
    )


# ---- the tests ------------------------------------------------------------------------------------


def test_every_route_has_an_entry(world):
    """Each route of config.urls is exercised by an entry of MATRIX (or the admin-site rule)."""
    covered: set[str] = set()
    for template, _who, _call in _cells():
        covered.add(resolve(_fill(template, world.ids)).route)
    missing = []
    for route, name in all_routes():
        if name.startswith("admin:"):
            continue  # every admin-site route is exercised by test_admin_site_needs_staff
        if route not in covered:
            missing.append(f"route {route!r} ({name}) has no entry in the access matrix")
    assert not missing, "\n".join(missing)


@pytest.mark.parametrize(
    ("template", "who", "call"),
    [pytest.param(t, w, c, id=f"{c.method} {t} as {w}") for t, w, c in _cells()],
)
def test_cell(world, db, template, who, call):
    url = _fill(template, world.ids)
    response = send(world.client(who), call.method, url, call, world)
    want = expected(who, call)
    got = outcome(response, call)
    detail = f"{call.method} {url} as {who}: {response.status_code} {response.content[:300]!r}"
    if want == "hidden":
        assert response.status_code == 404, f"expected 404 (lab A's object hidden): {detail}"
    else:
        assert got == want, f"expected {want}, got {got}: {detail}"


ADMIN_VIEW_NEEDS = {
    "changelist": ("view", "change"),
    "history": ("view", "change"),
    "change": ("view", "change"),
    "add": ("add",),
    "delete": ("delete",),
    "password_change": ("change",),
}


def admin_role_verdict(name: str) -> str | None:
    """For an admin-role user (staff with `slides.access.ADMIN_SITE_PERMISSIONS`): 'allowed' or
    'refused' for a model's admin view, None for the site's own pages (index, jsi18n, ...)."""
    from django.contrib import admin as django_admin

    from slides.access import ADMIN_SITE_PERMISSIONS

    granted = set(ADMIN_SITE_PERMISSIONS)
    for model in django_admin.site._registry:
        app, model_name = model._meta.app_label, model._meta.model_name
        prefix = f"admin:{app}_{model_name}_"
        if name.startswith(prefix) and name[len(prefix) :] in ADMIN_VIEW_NEEDS:
            needs = ADMIN_VIEW_NEEDS[name[len(prefix) :]]
            ok = any(f"{app}.{action}_{model_name}" in granted for action in needs)
            return "allowed" if ok else "refused"
    return None


@pytest.mark.parametrize("who", USERS)
@pytest.mark.parametrize(("url", "route"), [pytest.param(u, r, id=u) for u, r in _admin_routes()])
def test_admin_site_needs_the_admin_role(world, db, who, url, route):
    """Only admins are staff: for everybody else every admin-site route but its log-in and
    log-out sends them to the admin log-in page. Admins reach exactly the models their role's
    permissions name (users, label classes, their labs, clinical variables, the audit log) and
    are refused the rest (case data stays in the lab-scoped app)."""
    assert resolve(url).route == route
    client = world.client(who)
    match = resolve(url)
    name = f"admin:{match.url_name}"
    if name in ADMIN_PUBLIC:
        response = client.post(url) if name == "admin:logout" else client.get(url)
        assert response.status_code < 400, (url, who, response.status_code)
        return
    response = client.get(url)
    detail = f"{url} as {who}: {response.status_code} {response.get('Location')}"
    to_login = response.status_code == 302 and response["Location"].startswith("/admin/login/")
    if ROLE_OF.get(who) != Role.ADMIN:
        assert to_login, detail
        return
    assert not to_login and response.status_code < 500, detail
    verdict = admin_role_verdict(name)
    if verdict == "allowed":
        # 404: an object this admin may not see (a superuser, another lab) is not found
        ok = (200, 302, 404) if {"object_id", "id"} & set(match.kwargs) else (200, 302)
        assert response.status_code in ok, detail
    elif verdict == "refused":
        # 403, or Django's "no such object" redirect to the index (history of a missing object)
        refused = response.status_code in (403, 404) or (
            response.status_code == 302 and response["Location"] == "/admin/"
        )
        assert refused, detail


def test_superuser_reaches_the_admin_site_and_every_lab(world, db):
    """Platform operators (superusers) are the one exception to lab scoping."""
    root = get_user_model().objects.create_superuser("operator", password=None)
    client = Client()
    client.force_login(root)
    assert client.get("/admin/").status_code == 200
    cases = client.get("/api/cases/").json()["results"]
    assert {c["accession_number"] for c in cases} == {"ACC-A-1", "ACC-A-STUDY", "ACC-B-1"}


# ---- lists: only your labs' objects ---------------------------------------------------------------


def _ids(response) -> set[int]:
    body = response.json()
    rows = body["results"] if isinstance(body, dict) else body
    return {row["id"] for row in rows}


@pytest.mark.parametrize("who", [*INSIDERS, *OUTSIDERS])
@pytest.mark.parametrize("kind", ["case", "node", "slide"])
def test_lists_hold_only_your_labs_objects(world, db, who, kind):
    response = world.client(who).get(f"/api/{kind}s/")
    assert response.status_code == 200
    own, other = (world.ids, world.other) if who in INSIDERS else (world.other, world.ids)
    listed = _ids(response)
    assert own[kind] in listed and other[kind] not in listed, f"{who} listed {kind}s {listed}"
    if kind == "node":
        cases = {row["case"] for row in response.json()["results"]}
        assert own["case"] in cases and other["case"] not in cases
        lab = own["lab"]
        assert all(Case.objects.get(pk=pk).lab_id == lab for pk in cases), cases


@pytest.mark.parametrize("who", ["lab_lead", "admin", "outsider_lead", "outsider_admin"])
def test_triage_and_export_hold_only_your_labs_nodes(world, db, who):
    client = world.client(who)
    own = world.ids if who in INSIDERS else world.other
    other = world.other if who in INSIDERS else world.ids
    triage = client.get("/api/review/triage/?status=any")
    assert triage.status_code == 200
    cases = {row["case"]["id"] for row in triage.json()["results"]}
    assert own["case"] in cases and other["case"] not in cases
    export = client.get("/api/review/decisions.csv")
    rows = list(csv.DictReader(io.StringIO(export.content.decode())))
    assert rows and {r["lab"] for r in rows} == {"lab-a" if who in INSIDERS else "lab-b"}
    page = client.get("/review/triage/?status=any").content.decode()
    assert ("ACC-A-1" in page) == (who in INSIDERS) and ("ACC-B-1" in page) == (who in OUTSIDERS)


@pytest.mark.parametrize("who", ["pathologist", "outsider_pathologist"])
def test_case_list_page_shows_only_your_labs_cases(world, db, who):
    page = world.client(who).get("/").content.decode()
    assert ("ACC-A-1" in page) == (who == "pathologist")
    assert ("ACC-B-1" in page) == (who == "outsider_pathologist")


def test_a_user_without_a_role_sees_nothing(world, db):
    """A lab member whose role has not been granted yet lists no case and opens none."""
    user = get_user_model().objects.create_user("no-role", password=None)
    Lab.objects.get(pk=world.ids["lab"]).members.add(user)
    client = Client()
    client.force_login(user)
    assert _ids(client.get("/api/cases/")) == set()
    assert client.get(f"/api/cases/{world.ids['case']}/").status_code == 404
    assert client.get(f"/api/slides/{world.ids['slide']}/tiles/0/0/0.jpg").status_code == 404
    assert client.get(f"/cases/{world.ids['case']}/").status_code == 404


# ---- credentials: tokens for the API, CSRF for sessions -------------------------------------------


def test_token_authentication_works_for_the_api_and_tiles(world, db):
    token = {"HTTP_AUTHORIZATION": f"Token {world.tokens['pathologist']}"}
    client = Client()
    assert client.get(f"/api/cases/{world.ids['case']}/", **token).status_code == 200
    tile = client.get(f"/api/slides/{world.ids['slide']}/tiles/0/0/0.jpg", **token)
    assert tile.status_code == 200 and tile["Content-Type"] == "image/jpeg"
    created = client.post(
        f"/api/slides/{world.ids['slide']}/annotations/",
        json.dumps({"geometry": SQUARE, "label_class": "tumour"}),
        content_type="application/json",
        **token,
    )
    assert created.status_code == 201, created.content  # tokens need no CSRF token
    outsider = {"HTTP_AUTHORIZATION": f"Token {world.tokens['outsider_pathologist']}"}
    assert client.get(f"/api/cases/{world.ids['case']}/", **outsider).status_code == 404
    bad = {"HTTP_AUTHORIZATION": "Token not-a-real-token"}
    assert client.get("/api/cases/", **bad).status_code in (401, 403)
    assert client.get(f"/api/slides/{world.ids['slide']}/tiles/0/0/0.jpg", **bad).status_code == 403


@pytest.mark.parametrize(
    ("method", "template", "body"),
    [
        ("POST", "/api/slides/{slide}/annotations/", {"geometry": SQUARE, "label_class": "tumour"}),
        ("PATCH", "/api/annotations/{annotation}/", {"version": 1, "label_class": "non-tumour"}),
        (
            "POST",
            "/api/nodes/{node}/decisions/",
            {"status": "confirmed_positive", "based_on": None},
        ),
        ("POST", "/api/model-versions/{version}/promote/", {}),
        ("POST", "/logout/", {}),
    ],
)
def test_session_writes_without_csrf_token_are_refused(world, db, method, template, body):
    url = _fill(template, world.ids)
    client = world.client("admin", enforce_csrf_checks=True)
    response = client.generic(method, url, json.dumps(body), content_type="application/json")
    assert response.status_code == 403, response.content[:300]
    assert b"CSRF" in response.content


def test_session_write_with_csrf_token_is_accepted(world, db):
    client = world.client("pathologist", enforce_csrf_checks=True)
    page = client.get(f"/slides/{world.ids['slide']}/view/")
    assert page.status_code == 200
    token = client.cookies[settings.CSRF_COOKIE_NAME].value
    response = client.post(
        f"/api/slides/{world.ids['slide']}/annotations/",
        json.dumps({"geometry": SQUARE, "label_class": "tumour"}),
        content_type="application/json",
        HTTP_X_CSRFTOKEN=token,
    )
    assert response.status_code == 201, response.content[:300]


# ---- leaks: paths, label images, patient identifiers ----------------------------------------------

# Field names that would carry a patient's identity (the pseudonym is the only patient field).
IDENTIFIER_KEYS = re.compile(
    r"^(patient(_?(name|id|number|dob))?|mrn|nhs_?number|date_of_birth|dob|birth_?date|ssn)$", re.I
)
PATH_KEYS = re.compile(r"(^|_)(path|file_path|raster_path|weights_path|filename)$", re.I)


def _strings(value: Any, key: str = "") -> Iterator[tuple[str, str]]:
    """(key, string) of every string (and key) in a JSON document."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield k, k
            yield from _strings(v, k)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v, key)
    elif isinstance(value, str):
        yield key, value


def _api_gets() -> list[str]:
    return sorted(
        {
            template
            for template, _who, call in _cells()
            if call.method == "GET"
            and template.startswith("/api/")
            and template != "/api/schema/"
            and ".json" not in template  # the same answers as without the suffix
        }
    )


def leaks(document: Any, world: World, who: str) -> list[str]:
    """What a response shows that `who` should not see.

    Admins may see file paths and label/macro image names, of their own labs' slides only.
    """
    found = []
    admin = ROLE_OF.get(who) == Role.ADMIN
    server = {str(world.root), str(settings.BASE_DIR), str(Path(settings.SLIDE_STORAGE_DIR))}
    for key, text in _strings(document):
        if key == text and IDENTIFIER_KEYS.match(key) and key != "patient_pseudonym":
            found.append(f"identifier field {key!r}")
        if who in OUTSIDERS and (PATIENT_MARK in text or PSEUDONYM in text):
            found.append(f"{key}: {text!r} belongs to lab A")
        if admin:
            continue
        if key == text and (PATH_KEYS.search(key) or key == "associated_images"):
            found.append(f"field {key!r}")
        if any(s in text for s in server) or PATIENT_MARK in text:
            found.append(f"{key}: {text!r} names a file on the server")
        elif text.startswith("/") and not text.startswith(APP_URLS) and Path(text).exists():
            found.append(f"{key}: {text!r} is an absolute path")
        if "/associated/" in text:
            found.append(f"{key}: {text!r} links a label/macro image")
    return found


APP_URLS = ("/api/", "/slides/", "/cases/", "/review/", "/models/", "/scoring-runs/")


@pytest.mark.parametrize("who", [*INSIDERS, *OUTSIDERS])
@pytest.mark.parametrize("template", _api_gets())
def test_no_leak_in_api_answers(world, db, template, who):
    url = _fill(template, world.ids)
    response = world.client(who).get(url)
    if (
        not response.get("Content-Type", "").startswith("application/json")
        or response.status_code != 200
    ):
        return
    assert not leaks(response.json(), world, who), f"GET {url} as {who}"


def test_admins_do_see_file_paths_so_the_leak_walk_can_fail(world, db):
    """The positive control: the walk above finds the path an admin is shown."""
    body = world.client("admin").get(f"/api/slides/{world.ids['slide']}/").json()
    assert PATIENT_MARK in body["file_path"] and body["associated_images"] == ["label"]
    assert leaks(body, world, "pathologist")


def test_static_files_are_public(world):
    """The third public thing besides log-in and health: the built bundle (served by WhiteNoise,
    outside the URL resolver). Skips only when the bundle has not been built."""
    built = sorted((Path(settings.BASE_DIR) / "frontend" / "static").rglob("*.css"))
    if not built:
        pytest.skip("frontend bundle not built (cd frontend && npm run build)")
    name = built[0].relative_to(Path(settings.BASE_DIR) / "frontend" / "static").as_posix()
    response = Client().get(f"{settings.STATIC_URL}{name}")
    assert response.status_code == 200
