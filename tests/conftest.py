"""Shared fixtures: a lab with one user per role plus an outsider from another lab; slide files."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from slides.models import Lab, Role

from .factories import gradient_image, make_case, make_user, write_pyramid_tiff

# The `browser` fixture (Debian's Chromium through Playwright) for the browser tests.
pytest_plugins = ["tests.browser"]

SHARED_DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
CMU_DIR = SHARED_DATA / "cmu-1-small-region"

needs_shared_data = pytest.mark.skipif(
    not CMU_DIR.exists(), reason="../shared/data is not beside this clone (real slides live there)"
)


@dataclass
class People:
    lab: Lab
    other_lab: Lab
    pathologist: object
    lab_lead: object
    admin: object
    outsider: object


@pytest.fixture(autouse=True)
def _storage(settings, tmp_path):
    """Every test writes slides and results under its own temporary folder; fast password hashing."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    settings.SLIDE_STORAGE_DIR = tmp_path / "storage" / "slides"
    settings.RESULTS_DIR = tmp_path / "storage" / "results"
    settings.SLIDE_STORAGE_DIR.mkdir(parents=True)
    settings.RESULTS_DIR.mkdir(parents=True)
    from django.core.cache import caches

    caches["tiles"].clear()
    # Remembered slide grants are keyed by user and slide ids, which a new test database reuses.
    caches["default"].clear()
    from slides.tiles import source_cache

    source_cache.clear()


@pytest.fixture
def people(db) -> People:
    lab = Lab.objects.create(code="h-lab", name="Head and Neck Lab")
    other = Lab.objects.create(code="other-lab", name="Other Lab")
    return People(
        lab=lab,
        other_lab=other,
        pathologist=make_user("path", role=Role.PATHOLOGIST, lab=lab),
        lab_lead=make_user("lead", role=Role.LAB_LEAD, lab=lab),
        admin=make_user("admin", role=Role.ADMIN, lab=lab),
        outsider=make_user("outsider", role=Role.PATHOLOGIST, lab=other),
    )


@pytest.fixture
def case(people):
    return make_case(people.lab, "S26-0001", nodes=("level II, node 1", "level III, node 2"))


@pytest.fixture
def tiny_tiff(tmp_path) -> Path:
    """A 1000 x 700 px three-level pyramidal JPEG TIFF at 0.5 µm/px."""
    return write_pyramid_tiff(tmp_path / "tiny.tiff", gradient_image(1000, 700), mpp=0.5)


@pytest.fixture
def eager_tasks(settings, monkeypatch):
    """Celery tasks run in the calling process (no broker) for this test only.

    The Celery app reads its configuration from Django's settings once, on first use. It is
    loaded here before the setting changes; loading it while the setting said "eager" would keep
    every later test of the session eager (real workers would then never see a task)."""
    from config.celery import app

    _ = app.conf.task_always_eager  # load the configuration from the real settings now
    monkeypatch.setitem(app.conf, "task_always_eager", True)
    settings.CELERY_TASK_ALWAYS_EAGER = True


#: Data migrations that seed rows the app needs (label classes, clinical variables).
SEEDING_MIGRATIONS = (
    "annotations.migrations.0002_seed_label_classes",
    "clinical.migrations.0002_seed_fields",
)


@pytest.fixture
def seeded(db):
    """The rows the data migrations write, written again. A transactional test's flush removes
    them, so a later test in the session may otherwise find no label classes or clinical
    variables; each migration's own `seed` runs against the live app registry."""
    import importlib

    from django.apps import apps

    for name in SEEDING_MIGRATIONS:
        importlib.import_module(name).seed(apps, None)


@pytest.fixture
def label_classes(seeded):
    """The seeded label classes, by key."""
    from annotations.models import LabelClass

    return {c.key: c for c in LabelClass.objects.all()}
