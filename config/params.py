"""The one parser of integer query parameters, for every view (API and page).

Python's ``int()`` is too lenient for request input: it accepts Arabic-Indic and other Unicode
digits (``int("١٢٣") == 123``), ``str.isdigit()`` accepts superscripts that ``int()`` then refuses
(``"²"``), and neither bounds the value, so ``?case=99999999999999999999`` overflows a database
integer. `parse_int` accepts only ASCII digits with an optional leading ``-``, bounded, and raises
`BadParameter` naming the parameter: a 400 from a DRF view (it is a DRF ``ValidationError``) and
from a plain Django view (it is a Django ``BadRequest``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from django.core.exceptions import BadRequest
from django.http import HttpResponseBadRequest, JsonResponse
from django.views import defaults
from rest_framework import serializers
from rest_framework.exceptions import ValidationError

#: Largest value of a signed 32-bit database integer: the default upper bound.
INT32_MAX = 2**31 - 1
#: Largest value of a signed 64-bit database integer (a big auto id).
INT64_MAX = 2**63 - 1

_INTEGER = re.compile(r"-?[0-9]+")  # ASCII only; used with fullmatch, so no trailing "\n" either
_HUGE = 10**40  # what a longer run of digits counts as (never parsed: int() of a long text is slow)


class BadParameter(ValidationError, BadRequest):
    """A query parameter that is not an acceptable integer: a 400 naming it, in any view."""

    def __init__(self, name: str, message: str):
        self.name = name
        self.message = message
        ValidationError.__init__(self, {name: [message]})

    def __str__(self) -> str:
        return f"{self.name}: {self.message}"


def _bounds(minimum: int | None, maximum: int | None) -> str:
    if minimum is not None and maximum is not None:
        return f"between {minimum} and {maximum}"
    if minimum is not None:
        return f"at least {minimum}"
    if maximum is not None:
        return f"at most {maximum}"
    return "an integer"


def parse_int(
    raw: object,
    name: str,
    *,
    minimum: int | None = None,
    maximum: int | None = INT32_MAX,
    clamp: bool = False,
) -> int:
    """`raw` as an integer in [minimum, maximum]; `BadParameter` naming `name` otherwise.

    With `clamp`, a well-formed integer out of range is brought to the nearer bound instead."""
    text = raw if isinstance(raw, str) else None
    if text is None or not _INTEGER.fullmatch(text):
        shown = repr(raw) if not isinstance(raw, str) or len(raw) <= 40 else repr(raw[:40]) + "…"
        raise BadParameter(
            name, f"must be an integer (ASCII digits) {_bounds(minimum, maximum)}, not {shown}"
        )
    huge = -_HUGE if text.startswith("-") else _HUGE
    value = int(text) if len(text) <= 40 else huge
    low = minimum is not None and value < minimum
    high = maximum is not None and value > maximum
    if (low or high) and not clamp:
        shown = text if len(text) <= 40 else text[:40] + "…"
        raise BadParameter(name, f"must be {_bounds(minimum, maximum)}, not {shown}")
    return minimum if low else maximum if high else value  # type: ignore[return-value]


def _params(source) -> Mapping:
    """The query of a DRF request, a Django request, or a mapping given as is."""
    if hasattr(source, "query_params"):
        return source.query_params
    if hasattr(source, "GET"):
        return source.GET
    return source


def int_param(
    source,
    name: str,
    *,
    default: int | None = None,
    minimum: int | None = None,
    maximum: int | None = INT32_MAX,
    clamp: bool = False,
) -> int | None:
    """Integer query parameter `name` of a request (or a query mapping); `default` when absent or
    empty. Only ASCII digits with an optional leading "-", in [minimum, maximum] (or brought
    there, with `clamp`); anything else raises `BadParameter` (400) naming the parameter."""
    raw = _params(source).get(name)
    if raw is None or raw == "":
        return default
    return parse_int(raw, name, minimum=minimum, maximum=maximum, clamp=clamp)


def id_param(source, name: str, *, default: int | None = None) -> int | None:
    """A database id in a query parameter: a positive integer within a big auto id's range."""
    return int_param(source, name, default=default, minimum=1, maximum=INT64_MAX)


class QueryIntegerField(serializers.IntegerField):
    """DRF's IntegerField, refusing what `parse_int` refuses: a string must be ASCII digits (DRF
    itself passes the text to ``int()``, which reads Arabic-Indic and other Unicode digits)."""

    def to_internal_value(self, data):
        if isinstance(data, str) and not _INTEGER.fullmatch(data):
            self.fail("invalid")
        return super().to_internal_value(data)


def bad_request(request, exception=None):
    """handler400: a `BadParameter` from a page view says which parameter and why (JSON under
    /api/, plain text elsewhere); any other bad request gets Django's own answer."""
    if isinstance(exception, BadParameter):
        if request.path.startswith("/api/"):
            return JsonResponse(exception.detail, status=400)
        return HttpResponseBadRequest(
            f"Bad request: {exception}\n", content_type="text/plain; charset=utf-8"
        )
    return defaults.bad_request(request, exception)


class RefuseNulBytesMiddleware:
    """A NUL byte in a query parameter (name or value) is a 400 naming the parameter, for every
    route: no text field of PostgreSQL can hold one, so a filter on it would fail inside the
    database (a 500) instead of saying what is wrong. SQLite accepts it, which is why only the
    PostgreSQL run of the query-parameter sweep saw it. Raised as a `BadParameter`, so it is
    answered as every other bad parameter is (`bad_request`)."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        for name, values in request.GET.lists():
            if "\x00" in name or any("\x00" in value for value in values):
                raise BadParameter(name.replace("\x00", "\\x00"), "must not contain a NUL byte")
        return self.get_response(request)
