"""The admin role in Django's admin site: users, roles, label classes, its labs, the audit log;
never superusers, staff flags, other labs or case data."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group

from audit.log import record
from slides.access import grant_role
from slides.models import Role

pytestmark = pytest.mark.django_db


def test_admins_manage_users_label_classes_and_read_the_audit_log(client, people):
    assert people.admin.is_staff and not people.pathologist.is_staff
    record(actor=people.admin, action="test event", obj=people.lab)
    client.force_login(people.admin)
    for url in (
        "/admin/",
        "/admin/auth/user/",
        "/admin/auth/user/add/",
        "/admin/annotations/labelclass/",
        "/admin/audit/auditevent/",
    ):
        assert client.get(url).status_code == 200, url
    assert "test event" in client.get("/admin/audit/auditevent/").content.decode()
    for url in (
        "/admin/slides/case/",
        "/admin/slides/slide/",
        "/admin/review/reviewdecision/",
        "/admin/audit/auditevent/add/",
    ):
        assert client.get(url).status_code == 403, url


def test_admins_never_see_or_make_superusers(client, people):
    root = get_user_model().objects.create_superuser("operator", password=None)
    client.force_login(people.admin)
    listing = client.get("/admin/auth/user/").content.decode()
    assert "operator" not in listing and "path" in listing
    assert client.get(f"/admin/auth/user/{root.pk}/change/").status_code == 302  # no such user
    target = people.pathologist
    page = client.get(f"/admin/auth/user/{target.pk}/change/").content.decode()
    assert 'name="is_superuser"' not in page and 'name="username"' in page
    admin_group = Group.objects.get(name=Role.ADMIN.value)
    form = {
        "username": target.username,
        "is_active": "on",
        "is_superuser": "on",  # read-only for admins: ignored
        "groups": [admin_group.pk],  # promoting a user to admin is an admin's job
        "last_login_0": "",
        "last_login_1": "",
        "date_joined_0": "2026-01-01",
        "date_joined_1": "00:00:00",
    }
    answer = client.post(f"/admin/auth/user/{target.pk}/change/", form)
    assert answer.status_code == 302, answer.content.decode()[-2000:]
    target.refresh_from_db()
    assert not target.is_superuser
    assert target.is_staff  # the admin role brings the admin site with it
    assert target.groups.filter(name=Role.ADMIN.value).exists()


def test_admins_see_only_their_own_labs(client, people):
    client.force_login(people.admin)
    listing = client.get("/admin/slides/lab/").content.decode()
    assert people.lab.code in listing and people.other_lab.code not in listing
    other = client.get(f"/admin/slides/lab/{people.other_lab.pk}/change/")
    assert other.status_code == 302  # not found for this admin


def test_granting_the_admin_role_makes_staff_and_nothing_else_does(people):
    user = get_user_model().objects.create_user("newcomer", password=None)
    grant_role(user, Role.LAB_LEAD)
    user.refresh_from_db()
    assert not user.is_staff
    grant_role(user, Role.ADMIN)
    user.refresh_from_db()
    assert user.is_staff and not user.is_superuser
    assert user.has_perm("auth.change_user") and not user.has_perm("slides.change_case")
