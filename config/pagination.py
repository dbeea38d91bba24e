"""The API's pagination: limit/offset with bounds, so no request can overflow a database integer."""

from __future__ import annotations

from rest_framework.pagination import LimitOffsetPagination, _positive_int

MAX_OFFSET = 10**9


class BoundedLimitOffsetPagination(LimitOffsetPagination):
    """Limit/offset pages; limit capped at `max_limit`, offset at one billion (bad values → defaults)."""

    default_limit = 100
    max_limit = 1000

    def get_offset(self, request) -> int:
        try:
            return _positive_int(request.query_params[self.offset_query_param], cutoff=MAX_OFFSET)
        except (KeyError, ValueError):
            return 0
