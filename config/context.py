"""Template context shared by every page: what the navigation shows to the user's roles."""

from __future__ import annotations

from django.http import HttpRequest


def navigation(request: HttpRequest) -> dict:
    """`nav_lead` (triage, metrics, datasets) and `nav_admin`, from the user's roles."""
    from slides.access import has_role
    from slides.models import Role

    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return {"nav_lead": False, "nav_admin": False}
    return {"nav_lead": has_role(user, Role.LAB_LEAD), "nav_admin": has_role(user, Role.ADMIN)}
