"""What a training run may read: its launcher's labs and the import roots.

The live models are platform-wide (one per stage, every lab screens with it), so putting one live
is for platform operators (:func:`slides.access.may_promote_models`). Training is a lab admin's
business, bounded by their labs: a run launched by a user reads only the cases, slides, node
images and dataset snapshots of that user's labs (every lab for a superuser), and files only under
``NODESCOPE_IMPORT_ROOTS`` (``settings.SLIDE_IMPORT_ROOTS``; none configured: no files at all).
A path outside the roots, a path that does not exist and a ``..`` or symlink escape get the same
refusal, so the answer never tells whether a path exists.

The bound is applied when the run is launched and again on the worker, from the run's launcher
as they are then (their labs, their admin role, whether their account still exists). Runs started
on the server with no user (``manage.py train``, ``train_images``, ``train_mil``) are
:data:`UNRESTRICTED`: whoever runs manage.py can read the files anyway.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db.models import QuerySet

#: The one answer to a path that is outside the import roots, missing, or escapes them.
FOLDER_REFUSAL = "image folder must be a folder under the import roots"
FILE_REFUSAL = "{what} must be a file under the import roots"
ARRAYS_REFUSAL = "patch arrays must be a file or folder under the import roots"


class ScopeError(ValueError):
    """A training input outside what the run's launcher may read."""


class TrainingScope:
    """The labs and folders one run may read. ``user`` None with ``unrestricted`` False: a run
    whose launcher no longer exists, which reads nothing."""

    def __init__(self, user=None, *, unrestricted: bool = False) -> None:
        self.user = user
        self.unrestricted = unrestricted

    def __repr__(self) -> str:
        if self.unrestricted:
            return "TrainingScope(unrestricted)"
        return f"TrainingScope({getattr(self.user, 'username', None)!r})"

    # ---- who -----------------------------------------------------------------------------------

    @classmethod
    def of_user(cls, user) -> TrainingScope:
        """The scope of a launch by ``user``; None (server-side code) is unrestricted."""
        if user is None:
            return UNRESTRICTED
        return cls(user if user.is_authenticated else None)

    @classmethod
    def of_run(cls, run) -> TrainingScope:
        """The scope of a run on the worker: its launcher as they are now."""
        if run.server_side:
            return UNRESTRICTED
        return cls(run.created_by)

    @property
    def every_lab(self) -> bool:
        return self.unrestricted or bool(self.user is not None and self.user.is_superuser)

    def check_launcher(self) -> None:
        """Refuse a run whose launcher is gone, inactive or no longer an admin."""
        if self.unrestricted:
            return
        from slides.access import has_role
        from slides.models import Role

        user = self.user
        if user is None or not user.is_active or not has_role(user, Role.ADMIN):
            raise ScopeError("the run's launcher no longer exists or may no longer train models")

    def labs(self) -> list[str] | str:
        """What the run reads, for its dataset summary: lab codes, or "every lab"."""
        if self.every_lab:
            return "every lab"
        if self.user is None:
            return []
        return sorted(self.user.labs.values_list("code", flat=True))

    # ---- rows ----------------------------------------------------------------------------------

    def narrow(self, queryset: QuerySet, case_path: str = "") -> QuerySet:
        """``queryset`` narrowed to the scope's labs; ``case_path`` leads from a row to its case
        (``""`` for cases, ``"node__case__"`` for slides)."""
        if self.every_lab:
            return queryset
        if self.user is None:
            return queryset.none()
        return queryset.filter(**{f"{case_path}lab__members": self.user}).distinct()

    def snapshot_readable(self, dataset) -> bool:
        """True if every slide of an annotation dataset snapshot is of the scope's labs."""
        if self.every_lab:
            return True
        if self.user is None:
            return False
        return not dataset.slides.exclude(node__case__lab__members=self.user).exists()

    # ---- files ---------------------------------------------------------------------------------

    def roots(self) -> list[Path]:
        return [Path(r).resolve() for r in settings.SLIDE_IMPORT_ROOTS]

    def inside(self, path: Path) -> bool:
        """True if ``path`` (symlinks followed, ``..`` normalised, existing or not) is under
        an import root (always, unrestricted)."""
        if self.unrestricted:
            return True
        try:
            resolved = Path(path).resolve()
        except (OSError, RuntimeError, ValueError):
            return False
        return any(resolved.is_relative_to(root) for root in self.roots())

    def path(self, raw: Any, *, refusal: str, folder: bool | None) -> Path:
        """The path a run names, checked: under the import roots and a folder (``folder``
        True), a file (False) or either (None). Anything else, existing or not, raises
        :class:`ScopeError` with ``refusal``. Unrestricted: the path as given."""
        if self.unrestricted:
            return Path(str(raw))
        if not isinstance(raw, str) or not raw or "\x00" in raw or not Path(raw).is_absolute():
            raise ScopeError(refusal)
        if not self.inside(Path(raw)):
            raise ScopeError(refusal)
        path = Path(raw).resolve()
        kind_ok = {True: path.is_dir, False: path.is_file, None: path.exists}[folder]()
        if not kind_ok:
            raise ScopeError(refusal)
        return path

    def files_inside(self, paths: Iterable[Path], *, refusal: str) -> None:
        """Refuse (with ``refusal``) if any of ``paths`` leads outside the import roots."""
        if not self.unrestricted and not all(self.inside(p) for p in paths):
            raise ScopeError(refusal)

    def weights(self, raw: Any) -> None:
        """A recipe's ``pretrained_weights``: a file under the import roots, or the weights of a
        model version (under RESULTS_DIR/models)."""
        if self.unrestricted or raw in (None, ""):
            return
        refusal = FILE_REFUSAL.format(what="pretrained_weights")
        models_dir = (Path(settings.RESULTS_DIR) / "models").resolve()
        if isinstance(raw, str) and Path(raw).is_absolute():
            try:
                resolved = Path(raw).resolve()
            except (OSError, RuntimeError, ValueError):
                raise ScopeError(refusal) from None
            if resolved.is_relative_to(models_dir) and resolved.is_file():
                return
        self.path(raw, refusal=refusal, folder=False)


UNRESTRICTED = TrainingScope(unrestricted=True)
