"""Set up Django for a benchmark: a throw-away SQLite database under a temporary folder."""

from __future__ import annotations

import io
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


class WSGIClient:
    """Calls Django's WSGI application directly, as gunicorn would: the full middleware stack,
    URL routing, session authentication and the view, without a socket or the test client."""

    def __init__(self, cookie: str, *, accept: str = "*/*"):
        from django.core.handlers.wsgi import WSGIHandler

        self.app = WSGIHandler()
        self.cookie = cookie
        self.accept = accept

    @classmethod
    def logged_in(cls, user, *, accept: str = "*/*") -> WSGIClient:
        """A client carrying the session cookie of `user`."""
        from django.conf import settings
        from django.test import Client

        login = Client()
        login.force_login(user)
        name = settings.SESSION_COOKIE_NAME
        return cls(f"{name}={login.cookies[name].value}", accept=accept)

    def get(self, path: str, query: str = "") -> tuple[str, dict[str, str], bytes]:
        """GET `path` (which may carry its own ?query); returns status line, headers and body."""
        if not query:
            path, _, query = path.partition("?")
        environ = {
            "REQUEST_METHOD": "GET",
            "PATH_INFO": path,
            "QUERY_STRING": query,
            "SERVER_NAME": "127.0.0.1",
            "SERVER_PORT": "8000",
            "HTTP_HOST": "127.0.0.1",
            "HTTP_COOKIE": self.cookie,
            "HTTP_ACCEPT": self.accept,
            "wsgi.input": io.BytesIO(b""),
            "wsgi.url_scheme": "http",
            "wsgi.errors": sys.stderr,
            "wsgi.version": (1, 0),
            "wsgi.multithread": True,
            "wsgi.multiprocess": False,
            "wsgi.run_once": False,
        }
        seen: list = []
        body = b"".join(
            self.app(environ, lambda status, headers, exc_info=None: seen.append((status, headers)))
        )
        status, headers = seen[0]
        return status, dict(headers), body
