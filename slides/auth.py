"""Authentication helpers: session-or-token users for plain views, and a throttled login view."""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth.views import LoginView
from django.core.cache import cache
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
