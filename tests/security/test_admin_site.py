"""Django's admin site, lab by lab (issue 16): a lab's admin manages the users, roles, members and
records of their own labs only; superusers (the platform operators) manage everything.

The rule lives in `slides.access` (`users_managed_by`, `LAB_PATHS`, `admin_site_rows`) and is
applied by `slides.admin` (`NodeScopeUserAdmin`, `LabScopedAdmin`) to every model admin. The
matrix below is parametrised over `admin.site._registry` as it stands when the module is
imported: a newly registered model fails `test_every_registered_model_is_classified` until it is
given a lab A object in `LAB_OBJECTS` or a reason in `NO_LAB_DATA`.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import pytest
from django.contrib import admin
from django.contrib.admin.utils import quote
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group, Permission
from django.test import Client
from django.urls import reverse
from rest_framework.authtoken.models import Token

from annotations.models import Annotation, AnnotationImport, Dataset, LabelClass
from audit.log import record
from audit.models import AuditEvent
from clinical.models import ClinicalRecord
from review.models import (
    CaseSignOff,
    ReviewDecision,
    ReviewerCorrection,
    ReviewSettings,
    ViewedRegion,
)
from slides.access import lab_id_of, users_managed_by
from slides.models import Lab, Role, Slide
from tests.factories import PASSWORD, make_case, make_user

pytestmark = pytest.mark.django_db

User = get_user_model()
_SERIAL = itertools.count(1)
SQUARE = {"type": "Polygon", "coordinates": [[[0, 0], [10, 0], [10, 10], [0, 10], [0, 0]]]}


@dataclass
class Site:
    lab_a: Lab
    lab_b: Lab
    admin_a: object
    admin_b: object
    user_a: object
    user_b: object
    both: object  # a user of lab A and lab B: the operators' alone
    root: object  # a superuser

    def client(self, user) -> Client:
        client = Client()
        client.force_login(user)
        return client


@pytest.fixture
def site(db) -> Site:
    lab_a = Lab.objects.create(code="lab-a", name="Lab A")
    lab_b = Lab.objects.create(code="lab-b", name="Lab B")
    both = make_user("both-labs", role=Role.PATHOLOGIST, lab=lab_a)
    lab_b.members.add(both)
    return Site(
        lab_a=lab_a,
        lab_b=lab_b,
        admin_a=make_user("admin-a", role=Role.ADMIN, lab=lab_a),
        admin_b=make_user("admin-b", role=Role.ADMIN, lab=lab_b),
        user_a=make_user("path-a", role=Role.PATHOLOGIST, lab=lab_a),
        user_b=make_user("path-b", role=Role.PATHOLOGIST, lab=lab_b),
        both=both,
        root=User.objects.create_superuser("operator", password=PASSWORD),
    )


def _url(model, name: str, *args) -> str:
    return reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_{name}", args=args)


def _user_form(user, **changes) -> dict:
    """The fields the user change form posts (as a lab admin sees it)."""
    form = {
        "username": user.username,
        "first_name": "",
        "last_name": "",
        "email": "",
        "is_active": "on",
        "groups": list(user.groups.values_list("pk", flat=True)),
        "last_login_0": "",
        "last_login_1": "",
        "date_joined_0": "2026-01-01",
        "date_joined_1": "00:00:00",
    }
    form.update(changes)
    return form


# ---- (a) users, roles and memberships ------------------------------------------------------------


def test_the_other_labs_admin_cannot_see_or_take_over_lab_a_users(site):
    client = site.client(site.admin_b)
    listing = client.get("/admin/auth/user/").content.decode()
    assert "path-b" in listing  # the positive control: their own lab's user
    for name in ("path-a", "admin-a", "both-labs", "operator"):
        assert name not in listing, name

    victim = site.user_a
    change = f"/admin/auth/user/{victim.pk}/change/"
    password = f"/admin/auth/user/{victim.pk}/password/"
    assert client.get(change).status_code in (302, 403, 404)
    assert client.get(password).status_code in (302, 403, 404)
    assert client.get(f"/admin/auth/user/{victim.pk}/history/").status_code in (302, 403, 404)

    admin_group = Group.objects.get(name=Role.ADMIN.value)
    groups_before = set(victim.groups.all())
    answer = client.post(change, _user_form(victim, groups=[admin_group.pk]))
    assert answer.status_code in (302, 403, 404)
    if answer.status_code == 302:
        assert answer["Location"] == "/admin/"  # "no such user", not the saved user's page
    answer = client.post(password, {"password1": "taken-over-123!", "password2": "taken-over-123!"})
    assert answer.status_code in (302, 403, 404)
    victim.refresh_from_db()
    assert victim.check_password(PASSWORD) and not victim.check_password("taken-over-123!")
    assert set(victim.groups.all()) == groups_before
    assert not Client().login(username=victim.username, password="taken-over-123!")


def test_own_labs_users_stay_manageable(site):
    """The positive control: lab B's admin sets their own user's password and roles."""
    client = site.client(site.admin_b)
    target = site.user_b
    assert client.get(f"/admin/auth/user/{target.pk}/change/").status_code == 200
    lead = Group.objects.get_or_create(name=Role.LAB_LEAD.value)[0]
    answer = client.post(
        f"/admin/auth/user/{target.pk}/change/", _user_form(target, groups=[lead.pk])
    )
    assert answer.status_code == 302 and answer["Location"] != "/admin/"
    answer = client.post(
        f"/admin/auth/user/{target.pk}/password/",
        {"password1": "new-pass-word-77", "password2": "new-pass-word-77"},
    )
    assert answer.status_code == 302
    target.refresh_from_db()
    assert target.check_password("new-pass-word-77")
    assert set(target.groups.values_list("name", flat=True)) == {Role.LAB_LEAD.value}


def test_role_choices_are_the_roles_only_and_other_groups_are_kept(site):
    operators = Group.objects.create(name="operators")
    site.user_b.groups.add(operators)
    client = site.client(site.admin_b)
    page = client.get(f"/admin/auth/user/{site.user_b.pk}/change/").content.decode()
    assert f'value="{operators.pk}"' not in page
    answer = client.post(
        f"/admin/auth/user/{site.user_b.pk}/change/",
        _user_form(site.user_b, groups=[operators.pk]),
    )
    assert answer.status_code == 200 and "Select a valid choice" in answer.content.decode()
    pathologist = Group.objects.get(name=Role.PATHOLOGIST.value)
    answer = client.post(
        f"/admin/auth/user/{site.user_b.pk}/change/",
        _user_form(site.user_b, groups=[pathologist.pk]),
    )
    assert answer.status_code == 302
    assert site.user_b.groups.filter(pk=operators.pk).exists()  # not the lab admin's to remove


def _new_user(**extra) -> dict:
    return {
        "username": "newcomer",
        "usable_password": "true",
        "password1": "new-pass-word-77",
        "password2": "new-pass-word-77",
        **extra,
    }


def test_a_lab_admin_adds_users_into_their_own_labs_only(site):
    client = site.client(site.admin_b)
    page = client.get("/admin/auth/user/add/").content.decode()
    assert 'name="lab"' in page and "Lab A" not in page
    into_a = client.post("/admin/auth/user/add/", _new_user(lab=site.lab_a.pk))
    assert into_a.status_code == 200 and "Select a valid choice" in into_a.content.decode()
    without = client.post("/admin/auth/user/add/", _new_user())
    assert without.status_code == 200 and "This field is required" in without.content.decode()
    assert not User.objects.filter(username="newcomer").exists()

    answer = client.post("/admin/auth/user/add/", _new_user(lab=site.lab_b.pk))
    assert answer.status_code == 302, answer.content.decode()[-1500:]
    newcomer = User.objects.get(username="newcomer")
    assert list(newcomer.labs.all()) == [site.lab_b]
    assert client.get(answer["Location"]).status_code == 200  # theirs to finish setting up


def test_superusers_may_add_users_of_no_lab(site):
    answer = site.client(site.root).post("/admin/auth/user/add/", _new_user())
    assert answer.status_code == 302
    assert not User.objects.get(username="newcomer").labs.exists()


def test_lab_members_widget_holds_only_managed_users_and_keeps_the_rest(site):
    client = site.client(site.admin_b)
    change = f"/admin/slides/lab/{site.lab_b.pk}/change/"
    page = client.get(change).content.decode()
    assert "path-b" in page and "path-a" not in page and "both-labs" not in page
    # pulling lab A's user into lab B: refused
    answer = client.post(
        change,
        {
            "code": "lab-b",
            "name": "Lab B",
            "members": [site.admin_b.pk, site.user_b.pk, site.user_a.pk],
        },
    )
    assert answer.status_code == 200 and "Select a valid choice" in answer.content.decode()
    assert not site.lab_b.members.filter(pk=site.user_a.pk).exists()
    # saving without the members it does not show keeps them (it can push nobody out)
    answer = client.post(change, {"code": "lab-b", "name": "Lab B", "members": [site.admin_b.pk]})
    assert answer.status_code == 302
    members = set(site.lab_b.members.all())
    assert members == {site.admin_b, site.both}  # path-b removed (theirs), both-labs kept
    # lab A's page is not theirs at all
    a_change = f"/admin/slides/lab/{site.lab_a.pk}/change/"
    assert client.get(a_change).status_code in (302, 403, 404)
    client.post(a_change, {"code": "lab-a", "name": "Lab A", "members": [site.admin_b.pk]})
    assert set(site.lab_a.members.all()) == {site.admin_a, site.user_a, site.both}


# ---- (e) users of several labs, or none, are the operators' --------------------------------------


def test_users_of_several_labs_or_none_are_managed_by_operators_only(site):
    lonely = make_user("no-lab", role=Role.PATHOLOGIST, lab=None)
    for lab_admin in (site.admin_a, site.admin_b):
        managed = set(users_managed_by(lab_admin))
        assert site.both not in managed and lonely not in managed and site.root not in managed
        client = site.client(lab_admin)
        for user in (site.both, lonely):
            assert client.get(f"/admin/auth/user/{user.pk}/change/").status_code in (302, 403, 404)
            assert client.get(f"/admin/auth/user/{user.pk}/password/").status_code in (
                302,
                403,
                404,
            )
    assert set(users_managed_by(site.admin_a)) == {site.admin_a, site.user_a}
    assert set(users_managed_by(site.admin_b)) == {site.admin_b, site.user_b}
    assert set(users_managed_by(site.user_a)) == set()  # no admin role: nobody
    assert site.both in set(users_managed_by(site.root)) and lonely in set(
        users_managed_by(site.root)
    )


# ---- (b) the matrix: every registered model x the other lab's admin ------------------------------


def _slide(site: Site) -> Slide:
    accession = f"ACC-A-S{next(_SERIAL)}"
    case = make_case(site.lab_a, accession, nodes=("node 1",))
    return Slide.objects.create(
        node=case.nodes.get(),
        name=f"slide of {accession}",
        file_path=f"/data/{accession}.tiff",
        source="tiff",
        checksum=accession.ljust(64, "0"),
        file_size=1,
        width=100,
        height=100,
        levels=1,
        tile_width=256,
        tile_height=256,
    )


def _annotation(site: Site) -> Annotation:
    label = LabelClass.objects.create(key="matrix", name="Matrix", colour="#ff0000", kind="tumour")
    return Annotation.objects.create(
        slide=_slide(site), label_class=label, author=site.user_a, geometry=SQUARE,
        min_x=0, min_y=0, max_x=10, max_y=10, vertex_count=4, area_px=100,
    )  # fmt: skip


def _dataset(site: Site) -> Dataset:
    dataset = Dataset.objects.create(name="matrix set", content_hash="0" * 64)
    dataset.slides.add(_slide(site))
    return dataset


def _decision(site: Site) -> ReviewDecision:
    node = _slide(site).node
    return ReviewDecision.objects.create(
        node=node, user=site.user_a, user_name="path-a", status="confirmed_negative"
    )


def _correction(site: Site) -> ReviewerCorrection:
    annotation = _annotation(site)
    return ReviewerCorrection.objects.create(
        annotation=annotation, node=annotation.slide.node, user=site.user_a
    )


def _token(site: Site):
    token = Token.objects.create(user=site.user_a)
    return token, site.user_a.pk  # the token admin's URLs name the user


#: model label -> a builder of a lab A object (and the id its change URL names, when not its pk)
LAB_OBJECTS = {
    "slides.lab": lambda s: s.lab_a,
    "auth.user": lambda s: s.user_a,
    "authtoken.tokenproxy": _token,
    "slides.case": lambda s: make_case(s.lab_a, "ACC-A-1"),
    "slides.slide": _slide,
    "annotations.annotation": _annotation,
    "annotations.annotationimport": lambda s: AnnotationImport.objects.create(
        slide=_slide(s), file_name="matrix.geojson", format="geojson", imported_by=s.user_a
    ),
    "annotations.dataset": _dataset,
    "review.reviewdecision": _decision,
    "review.viewedregion": lambda s: ViewedRegion.objects.create(
        node=_slide(s).node, region_key="r1", user=s.user_a
    ),
    "review.casesignoff": lambda s: CaseSignOff.objects.create(
        case=make_case(s.lab_a, "ACC-A-1"), action="signed_off", user=s.user_a, user_name="path-a"
    ),
    "review.reviewercorrection": _correction,
    "review.reviewsettings": lambda s: ReviewSettings.objects.create(lab=s.lab_a),
    "clinical.clinicalrecord": lambda s: ClinicalRecord.objects.create(
        case=make_case(s.lab_a, "ACC-A-1"), entered_by=s.user_a
    ),
    "audit.auditevent": lambda s: record(
        actor=s.admin_a, action="matrix event", obj=make_case(s.lab_a, "ACC-A-1")
    ),
}

#: Registered models without lab data, and why.
NO_LAB_DATA = {
    "auth.group": "the roles are platform-wide groups; no lab's data",
    "annotations.labelclass": "label classes are shared by every lab",
    "clinical.clinicalfield": "the clinical variables are shared by every lab",
}

REGISTERED = sorted(m._meta.label_lower for m in admin.site._registry)
MODELS = {m._meta.label_lower: m for m in admin.site._registry}


def test_every_registered_model_is_classified():
    unclassified = set(REGISTERED) - set(LAB_OBJECTS) - set(NO_LAB_DATA)
    assert not unclassified, f"give these a lab A object in LAB_OBJECTS or a reason: {unclassified}"
    assert not set(LAB_OBJECTS) & set(NO_LAB_DATA)
    assert not (set(LAB_OBJECTS) | set(NO_LAB_DATA)) - set(REGISTERED), "stale entries"


def _grant_everything(user) -> None:
    """Every view and change permission of every registered model: what is left to keep lab A's
    rows from lab B's admin is the admin site's scoping, not the permissions of the role."""
    codenames = [
        f"{action}_{model._meta.model_name}"
        for model in admin.site._registry
        for action in ("view", "change")
    ]
    user.user_permissions.add(*Permission.objects.filter(codename__in=codenames))


def _build(site: Site, label: str):
    built = LAB_OBJECTS[label](site)
    obj, url_id = built if isinstance(built, tuple) else (built, built.pk)
    return obj, _url(MODELS[label], "change", quote(url_id))


@pytest.mark.parametrize("permissions", ["admin role", "every permission"])
@pytest.mark.parametrize("label", sorted(LAB_OBJECTS))
def test_the_other_labs_admin_never_sees_lab_a_rows(site, label, permissions):
    if permissions == "every permission":
        _grant_everything(site.admin_b)
    obj, change = _build(site, label)
    client = site.client(site.admin_b)
    changelist = client.get(_url(MODELS[label], "changelist"))
    assert changelist.status_code in (200, 403), changelist.status_code
    if permissions == "every permission":
        assert changelist.status_code == 200
    assert change not in changelist.content.decode()
    answer = client.get(change)
    assert answer.status_code in (302, 403, 404), f"{change}: {answer.status_code}"
    if answer.status_code == 302:
        assert answer["Location"] == "/admin/"  # "no such object"


@pytest.mark.parametrize("label", sorted(LAB_OBJECTS))
def test_lab_as_own_admin_sees_lab_a_rows(site, label):
    """The positive control of the matrix (so it can fail): lab A's admin, given the same
    permissions, lists and opens each object."""
    _grant_everything(site.admin_a)
    obj, change = _build(site, label)
    client = site.client(site.admin_a)
    assert change in client.get(_url(MODELS[label], "changelist")).content.decode()
    assert client.get(change).status_code == 200


@pytest.mark.parametrize("label", sorted(LAB_OBJECTS))
def test_superusers_see_every_labs_rows(site, label):
    obj, change = _build(site, label)
    client = site.client(site.root)
    assert change in client.get(_url(MODELS[label], "changelist")).content.decode()
    assert client.get(change).status_code == 200


def test_foreign_key_choices_hold_only_the_admins_labs(site):
    _grant_everything(site.admin_b)
    add = Permission.objects.get(codename="add_reviewsettings")
    site.admin_b.user_permissions.add(add)
    client = site.client(site.admin_b)
    page = client.get("/admin/review/reviewsettings/add/").content.decode()
    assert "Lab B" in page and "Lab A" not in page
    answer = client.post(
        "/admin/review/reviewsettings/add/", {"lab": site.lab_a.pk, "require_region_views": ""}
    )
    assert answer.status_code == 200 and "Select a valid choice" in answer.content.decode()
    assert not ReviewSettings.objects.filter(lab=site.lab_a).exists()


def test_the_other_labs_admin_cannot_change_lab_a_review_settings(site):
    _grant_everything(site.admin_b)
    settings_a = ReviewSettings.objects.create(lab=site.lab_a, require_region_views=True)
    client = site.client(site.admin_b)
    answer = client.post(
        f"/admin/review/reviewsettings/{settings_a.pk}/change/", {"require_region_views": ""}
    )
    assert answer.status_code in (302, 403, 404)
    settings_a.refresh_from_db()
    assert settings_a.require_region_views


# ---- (c) superusers ------------------------------------------------------------------------------


def test_superusers_manage_every_user(site):
    client = site.client(site.root)
    listing = client.get("/admin/auth/user/").content.decode()
    for name in ("path-a", "path-b", "admin-a", "admin-b", "both-labs", "operator"):
        assert name in listing, name
    answer = client.post(
        f"/admin/auth/user/{site.both.pk}/password/",
        {"password1": "operator-set-99", "password2": "operator-set-99"},
    )
    assert answer.status_code == 302
    site.both.refresh_from_db()
    assert site.both.check_password("operator-set-99")
    page = client.get(f"/admin/slides/lab/{site.lab_a.pk}/change/").content.decode()
    assert "path-b" in page and "both-labs" in page  # every user may join any lab


# ---- (d) the audit log ---------------------------------------------------------------------------


def test_audit_events_carry_their_objects_lab(site):
    case = make_case(site.lab_a, "ACC-A-1")
    annotation = _annotation(site)
    assert record(actor=None, action="x", obj=site.lab_a).lab_id == site.lab_a.pk
    assert record(actor=None, action="x", obj=case).lab_id == site.lab_a.pk
    assert record(actor=None, action="x", obj=case.nodes.get()).lab_id == site.lab_a.pk
    assert record(actor=None, action="x", obj=annotation).lab_id == site.lab_a.pk
    assert record(actor=None, action="x", obj=_decision_on(case, site)).lab_id == site.lab_a.pk
    assert record(actor=None, action="x", obj=site.user_a).lab_id is None  # users: no lab
    assert record(actor=None, action="x").lab_id is None
    assert record(actor=None, action="x", obj=case, lab=site.lab_b).lab_id == site.lab_b.pk
    assert record(actor=None, action="x", lab=site.lab_b.pk).lab_id == site.lab_b.pk
    assert lab_id_of(object()) is None


def _decision_on(case, site) -> ReviewDecision:
    return ReviewDecision.objects.create(
        node=case.nodes.get(), user=site.user_a, user_name="path-a", status="confirmed_negative"
    )


def test_the_audit_log_shows_each_lab_admin_their_labs_events_only(site):
    event_a = record(actor=site.admin_a, action="lab a event", obj=make_case(site.lab_a, "A-1"))
    event_b = record(actor=site.admin_b, action="lab b event", obj=make_case(site.lab_b, "B-1"))
    platform = record(actor=None, action="platform event")
    Client().login(username="path-a", password=PASSWORD)  # a log-in: an event of no lab
    login = AuditEvent.objects.get(action="login")
    assert login.lab_id is None and platform.lab_id is None

    def listed(user) -> set[int]:
        page = site.client(user).get("/admin/audit/auditevent/").content.decode()
        return {
            e.pk
            for e in (event_a, event_b, platform, login)
            if f"/admin/audit/auditevent/{e.pk}/change/" in page
        }

    assert listed(site.admin_a) == {event_a.pk}
    assert listed(site.admin_b) == {event_b.pk}
    assert listed(site.root) == {event_a.pk, event_b.pk, platform.pk, login.pk}
    client = site.client(site.admin_b)
    assert client.get(f"/admin/audit/auditevent/{event_a.pk}/change/").status_code in (302, 404)
    assert client.get(f"/admin/audit/auditevent/{login.pk}/change/").status_code in (302, 404)
    assert client.get(f"/admin/audit/auditevent/{event_b.pk}/change/").status_code == 200
