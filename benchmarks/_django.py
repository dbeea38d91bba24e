"""Set up Django for a benchmark: a throw-away SQLite database under a temporary folder."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def setup_django(var_dir: Path | None = None) -> Path:
    """Point settings at a private var/ folder, migrate, return the folder."""
    var = Path(var_dir or tempfile.mkdtemp(prefix="nodescope-bench-"))
    os.environ["NODESCOPE_VAR_DIR"] = str(var)
    os.environ.pop("DATABASE_URL", None)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    sys.path.insert(0, str(ROOT))
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0)
    return var
