"""Authentication helpers: session-or-token users for plain views, and a throttled login view."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from django.conf import settings
from django.contrib.auth.views import LoginView
from django.core.cache import cache, caches
from django.http import Http404, HttpRequest, JsonResponse
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


def credential_of(request: HttpRequest) -> str | None:
    """The session key or API token a request carries (not yet checked)."""
    auth = request.headers.get("Authorization", "")
    if auth.startswith("Token "):
        return "t:" + auth[6:].strip()
    key = request.COOKIES.get(settings.SESSION_COOKIE_NAME)
    return "s:" + key if key else None


def visible_slide_fields(request: HttpRequest, pk: int, *, fields: Sequence[str], purpose: str):
    """The slide (only ``fields`` loaded) if the requester may see it; 403 without login, 404
    otherwise. A granted (credential, slide) pair is remembered for TILE_PERMISSION_SECONDS under
    ``purpose``, so the tiles of a viewer session cost no query after the first; refusals are
    never cached."""
    from .access import slides_for
    from .models import Slide

    credential = credential_of(request)
    key = (
        f"{purpose}:{hashlib.sha256(f'{credential}:{pk}'.encode()).hexdigest()}"
        if credential
        else None
    )
    if key:
        cached = caches["default"].get(key)
        if cached is not None:
            return Slide(**cached)
    user = api_user(request)
    if user is None:
        return JsonResponse({"detail": "Authentication credentials were not provided."}, status=403)
    found = slides_for(user).filter(pk=pk).values(*fields).first()
    if found is None:
        raise Http404("No such slide")
    if key:
        caches["default"].set(key, found, settings.TILE_PERMISSION_SECONDS)
    return Slide(**found)


class ThrottledLoginView(LoginView):
    """Django's login view, refusing further attempts (429) after repeated failures.

    Failures are counted per username and per client address in the cache; a success clears the
    username's count.
    """

    redirect_authenticated_user = True

    def _keys(self, request: HttpRequest) -> list[str]:
        username = (request.POST.get("username") or "").strip().lower()
        address = request.META.get("REMOTE_ADDR", "")
        return [f"loginfail:u:{username}", f"loginfail:a:{address}"]

    def post(self, request: HttpRequest, *args, **kwargs):
        limit = settings.LOGIN_FAILURE_LIMIT
        if any((cache.get(key) or 0) >= limit for key in self._keys(request)):
            form = self.get_form()
            form.errors.clear()
            response = self.render_to_response(self.get_context_data(form=form, throttled=True))
            response.status_code = 429
            return response
        return super().post(request, *args, **kwargs)

    def form_invalid(self, form):
        for key in self._keys(self.request):
            try:
                cache.incr(key)
            except ValueError:
                cache.set(key, 1, settings.LOGIN_FAILURE_WINDOW_SECONDS)
        return super().form_invalid(form)

    def form_valid(self, form):
        cache.delete(self._keys(self.request)[0])
        return super().form_valid(form)
