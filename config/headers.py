"""Response headers every page and API answer carries: a Content-Security-Policy, and
`Cache-Control: no-store` on HTML and JSON (they carry patient data) unless the view chose its
own caching (tiles and thumbnails answer `private, max-age` with an ETag; static files are
WhiteNoise's). HSTS, the SSL redirect, `Referrer-Policy` and `X-Content-Type-Options` come from
Django's SecurityMiddleware and the SECURE_* settings.
"""

from __future__ import annotations

from collections.abc import Callable

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.utils.cache import patch_cache_control

_NO_STORE_TYPES = ("text/html", "application/json", "application/vnd.oai.openapi")


class SecurityHeadersMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        policy = getattr(settings, "CONTENT_SECURITY_POLICY", "")
        if policy and "Content-Security-Policy" not in response:
            response["Content-Security-Policy"] = policy
        content_type = response.get("Content-Type", "").split(";")[0].strip().lower()
        if "Cache-Control" not in response and (
            content_type.startswith(_NO_STORE_TYPES) or content_type.endswith("+json")
        ):
            patch_cache_control(response, no_store=True)
        return response
