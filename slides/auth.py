"""Authentication helpers: session-or-token users for plain views, API tokens that expire and are
revoked with the password, and a throttled login view."""

from __future__ import annotations

import contextlib
import hashlib
import unicodedata
import uuid
from collections.abc import Sequence
from datetime import timedelta

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.views import LoginView
from django.core.cache import cache, caches
from django.http import Http404, HttpRequest, JsonResponse
from django.utils import timezone
from rest_framework.authentication import TokenAuthentication
from rest_framework.exceptions import APIException, AuthenticationFailed


class TokenExpired(APIException):
    """401 with `WWW-Authenticate: Token`: the client should fetch a new token. (Not an
    AuthenticationFailed, which DRF turns into 403 when session authentication comes first.)"""

    status_code = 401
    default_detail = "Token has expired."
    default_code = "token_expired"
    auth_header = "Token"


class ExpiringTokenAuthentication(TokenAuthentication):
    """DRF's token authentication, refusing (401) tokens older than API_TOKEN_LIFETIME_HOURS
    (0: tokens do not expire). An expired token is deleted."""

    def authenticate_credentials(self, key):
        user, token = super().authenticate_credentials(key)
        hours = settings.API_TOKEN_LIFETIME_HOURS
        if hours > 0 and token.created < timezone.now() - timedelta(hours=hours):
            token.delete()
            raise TokenExpired()
        return user, token


def api_user(request: HttpRequest):
    """The authenticated user of a request (session or `Authorization: Token ...`), else None."""
    if request.user.is_authenticated:
        return request.user
    if request.headers.get("Authorization", "").startswith("Token "):
        try:
            result = ExpiringTokenAuthentication().authenticate(request)
        except (AuthenticationFailed, TokenExpired):
            return None
        if result:
            return result[0]
    return None


def _grant_generation_key(user_id: int) -> str:
    return f"slidegrants:gen:{user_id}"


def forget_slide_grants(user_id: int) -> None:
    """Drop every slide access remembered for the user (at log-out)."""
    caches["default"].set(_grant_generation_key(user_id), uuid.uuid4().hex, None)


def visible_slide_fields(request: HttpRequest, pk: int, *, fields: Sequence[str], purpose: str):
    """The slide (only ``fields`` loaded) if the requester may see it; 403 without login, 404
    otherwise. The requester is authenticated first (session or token); a granted (user, slide)
    pair is then remembered for TILE_PERMISSION_SECONDS under ``purpose``, so the tiles of a viewer
    session cost no access query after the first. Refusals are never cached, and a log-out drops
    the user's grants."""
    from .access import slides_for
    from .models import Slide

    user = api_user(request)
    if user is None:
        return JsonResponse({"detail": "Authentication credentials were not provided."}, status=403)
    store = caches["default"]
    generation = store.get(_grant_generation_key(user.pk)) or "0"
    key = f"{purpose}:{user.pk}:{generation}:{pk}"
    cached = store.get(key)
    if cached is not None:
        return Slide(**cached)
    found = slides_for(user).filter(pk=pk).values(*fields).first()
    if found is None:
        raise Http404("No such slide")
    store.set(key, found, settings.TILE_PERMISSION_SECONDS)
    return Slide(**found)


# ---- signal receivers (connected in slides.apps) ------------------------------------------------


def on_logged_out(sender, request, user, **kwargs) -> None:
    if user is not None:
        forget_slide_grants(user.pk)


def note_credential_change(sender, instance, update_fields=None, **kwargs) -> None:
    """Before a user is saved: mark it if its password changes or it is deactivated."""
    if instance.pk is None or (
        update_fields is not None and not {"password", "is_active"} & set(update_fields)
    ):
        return
    before = sender._default_manager.filter(pk=instance.pk).values("password", "is_active").first()
    if before is None:
        return
    if before["password"] != instance.password or (before["is_active"] and not instance.is_active):
        instance._revoke_api_tokens = True


def revoke_api_tokens(sender, instance, **kwargs) -> None:
    """After a user is saved with a new password or deactivated: delete its API tokens."""
    if getattr(instance, "_revoke_api_tokens", False):
        from rest_framework.authtoken.models import Token

        Token.objects.filter(user=instance).delete()
        instance._revoke_api_tokens = False
        forget_slide_grants(instance.pk)


def connect_signals() -> None:
    from django.contrib.auth.signals import user_logged_out
    from django.db.models.signals import post_save, pre_save

    user_model = get_user_model()
    user_logged_out.connect(on_logged_out, dispatch_uid="slides.auth.logged_out")
    pre_save.connect(note_credential_change, sender=user_model, dispatch_uid="slides.auth.pre")
    post_save.connect(revoke_api_tokens, sender=user_model, dispatch_uid="slides.auth.post")


# ---- log-in throttling ------------------------------------------------------------------------


def throttle_username(raw: str) -> str:
    """The username as the log-in form will look it up (NFKC, as Django's UsernameField does),
    case-folded so that no spelling of a name escapes its count."""
    return unicodedata.normalize("NFKC", raw.strip()).casefold()


class ThrottledLoginView(LoginView):
    """Django's login view, refusing further attempts (429) after repeated failures.

    Attempts are counted per username (normalised as the form normalises it) and per client
    address in the cache. The count is taken atomically *before* the password is checked
    (`cache.add` then `cache.incr`), so parallel attempts cannot all pass the check: at most
    LOGIN_FAILURE_LIMIT attempts per key reach authentication in the window. A success clears
    the username's count and gives back its address slot.
    """

    redirect_authenticated_user = True

    def _keys(self, request: HttpRequest) -> list[str]:
        username = throttle_username(request.POST.get("username") or "")
        digest = hashlib.sha256(username.encode()).hexdigest()
        address = request.META.get("REMOTE_ADDR", "")
        return [f"loginfail:u:{digest}", f"loginfail:a:{address}"]

    def _take(self, key: str) -> int:
        cache.add(key, 0, settings.LOGIN_FAILURE_WINDOW_SECONDS)
        try:
            return cache.incr(key)
        except ValueError:  # expired between add and incr
            cache.add(key, 0, settings.LOGIN_FAILURE_WINDOW_SECONDS)
            return cache.incr(key)

    def post(self, request: HttpRequest, *args, **kwargs):
        limit = settings.LOGIN_FAILURE_LIMIT
        counts = [self._take(key) for key in self._keys(request)]
        if any(count > limit for count in counts):
            # An unbound form: validating the posted one would check the password after all.
            form = self.get_form_class()(request=request)
            response = self.render_to_response(self.get_context_data(form=form, throttled=True))
            response.status_code = 429
            return response
        return super().post(request, *args, **kwargs)

    def form_valid(self, form):
        user_key, address_key = self._keys(self.request)
        cache.delete(user_key)
        with contextlib.suppress(ValueError):  # the window ran out meanwhile
            cache.decr(address_key)
        return super().form_valid(form)
