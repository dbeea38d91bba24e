"""The API's pagination: limit/offset with bounds, so no request can overflow a database integer.

Both are read by `config.params.int_param`: text that is not an integer in ASCII digits ("²",
"١٢", "1.5") is a 400 naming the parameter; an integer out of range is brought into it (limit
1..max_limit, offset 0..one billion), so an absurd page is an empty page, not an error.
"""

from __future__ import annotations

from rest_framework.pagination import LimitOffsetPagination

from .params import INT32_MAX, int_param

MAX_OFFSET = 10**9


class BoundedLimitOffsetPagination(LimitOffsetPagination):
    """Limit/offset pages; limit capped at `max_limit`, offset at most one billion."""

    default_limit = 100
    max_limit = 1000

    def get_limit(self, request) -> int:
        return int_param(
            request,
            self.limit_query_param,
            default=self.default_limit,
            minimum=1,
            maximum=self.max_limit or INT32_MAX,
            clamp=True,
        )

    def get_offset(self, request) -> int:
        return int_param(
            request, self.offset_query_param, default=0, minimum=0, maximum=MAX_OFFSET, clamp=True
        )
