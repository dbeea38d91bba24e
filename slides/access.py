"""Who may see what: roles from Django groups, cases scoped to the user's labs.

Every endpoint (pages, API, tiles, thumbnails) narrows its queryset through these functions, so the
rule lives in one place. Superusers see every lab; everybody else sees only the labs they belong to.
"""

from __future__ import annotations

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser, Group
from django.db.models import QuerySet

from .models import Case, Node, Role, Slide

AnyUser = AbstractBaseUser | AnonymousUser


def roles_of(user: AnyUser) -> set[str]:
    """The role names a user holds (cached on the user object for the request)."""
    if not user.is_authenticated:
        return set()
    cached = getattr(user, "_nodescope_roles", None)
    if cached is None:
        cached = set(user.groups.values_list("name", flat=True)) & set(Role.values)
        if user.is_superuser:
            cached.add(Role.ADMIN)
        user._nodescope_roles = cached
    return cached


def has_role(user: AnyUser, *roles: str) -> bool:
    """True if the user holds any of `roles`. Admins hold every lesser role's rights too."""
    held = roles_of(user)
    if Role.ADMIN in held:
        return True
    if Role.LAB_LEAD in held and Role.PATHOLOGIST in roles:
        return True
    return bool(held & set(roles))


def grant_role(user: AbstractBaseUser, role: str) -> None:
    """Put a user in the group of a role (created on first use)."""
    group, _ = Group.objects.get_or_create(name=Role(role).value)
    user.groups.add(group)
    user.__dict__.pop("_nodescope_roles", None)


def cases_for(user: AnyUser) -> QuerySet[Case]:
    """Cases the user may see: those of their labs (every lab for superusers)."""
    if not user.is_authenticated or not roles_of(user):
        return Case.objects.none()
    if user.is_superuser:
        return Case.objects.all()
    return Case.objects.filter(lab__members=user)


def nodes_for(user: AnyUser) -> QuerySet[Node]:
    if not user.is_authenticated or not roles_of(user):
        return Node.objects.none()
    if user.is_superuser:
        return Node.objects.all()
    return Node.objects.filter(case__lab__members=user)


def slides_for(user: AnyUser) -> QuerySet[Slide]:
    """Slides the user may see; one indexed join, cheap enough for every tile request."""
    if not user.is_authenticated or not roles_of(user):
        return Slide.objects.none()
    if user.is_superuser:
        return Slide.objects.all()
    return Slide.objects.filter(node__case__lab__members=user)
