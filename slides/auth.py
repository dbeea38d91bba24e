"""Authentication for the plain (non-DRF) tile views: session first, then an API token."""

from __future__ import annotations

from django.http import HttpRequest
from rest_framework.authentication import TokenAuthentication
from rest_framework.exceptions import AuthenticationFailed


def api_user(request: HttpRequest):
    """The authenticated user of a request (session or `Authorization: Token ...`), else None."""
    if request.user.is_authenticated:
        return request.user
    if request.headers.get("Authorization", "").startswith("Token "):
        try:
            result = TokenAuthentication().authenticate(request)
        except AuthenticationFailed:
            return None
        if result:
            return result[0]
    return None
