"""Fixtures shared by the viewer and annotation browser tests."""

from __future__ import annotations

import pytest


@pytest.fixture
def slide(transactional_db, people, case, tiny_tiff):
    from slides.ingest import register_slide

    node = case.nodes.order_by("label").first()
    return register_slide(node=node, path=tiny_tiff, user=people.pathologist)
