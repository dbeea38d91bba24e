"""NodeScope settings, all read from the environment with safe defaults for the embedded demo.

`DATABASE_URL` picks the database (SQLite under `var/` by default, PostgreSQL via psycopg 3 in
production and CI); `CELERY_BROKER_URL` picks the broker (kombu's filesystem transport under
`var/broker/` by default, which needs no daemon; Redis in production and CI).
"""

from __future__ import annotations

import os
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from .env import env_bool, env_int, env_str

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(env_str("NODESCOPE_VAR_DIR", str(BASE_DIR / "var")))

DEBUG = env_bool("DEBUG", False)
SECRET_KEY = env_str("SECRET_KEY", "")
if not SECRET_KEY:
    if not DEBUG and env_bool("NODESCOPE_REQUIRE_SECRET_KEY", False):
        raise ImproperlyConfigured("SECRET_KEY must be set when DEBUG is off")
    # Embedded demo and tests only: production sets NODESCOPE_REQUIRE_SECRET_KEY=1.
    SECRET_KEY = "nodescope-insecure-demo-key-change-me"

ALLOWED_HOSTS = [
    h for h in env_str("ALLOWED_HOSTS", "localhost,127.0.0.1,[::1],testserver").split(",") if h
]
CSRF_TRUSTED_ORIGINS = [o for o in env_str("CSRF_TRUSTED_ORIGINS", "").split(",") if o]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "slides",
    "annotations",
    "inference",
    "review",
    "audit",
    "clinical",
    "studies",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # Content-Security-Policy on everything; Cache-Control: no-store on HTML and JSON.
    "config.headers.SecurityHeadersMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    # A NUL byte in a query parameter is a 400 naming it (PostgreSQL text cannot hold one).
    "config.params.RefuseNulBytesMiddleware",
    # A database or broker outage met by a view answers 503 with a message, not 500.
    "config.faults.ServiceUnavailableMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "frontend" / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "config.context.navigation",
            ]
        },
    }
]

DATABASES = {
    "default": dj_database_url.parse(
        env_str("DATABASE_URL", f"sqlite:///{VAR_DIR / 'nodescope.sqlite3'}"),
        conn_max_age=env_int("DATABASE_CONN_MAX_AGE", 60),
        # A persistent connection found dead (PostgreSQL restarted) is replaced before it is used.
        conn_health_checks=True,
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    # While PostgreSQL is unreachable a request fails in seconds (503), instead of hanging.
    DATABASES["default"].setdefault("OPTIONS", {}).setdefault(
        "connect_timeout", env_int("DATABASE_CONNECT_TIMEOUT", 5)
    )
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    VAR_DIR.mkdir(parents=True, exist_ok=True)
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    # A file (not in-memory) test database, so a real worker process can share it in tests.
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / f"test-nodescope-{os.getpid()}.sqlite3")}
    DATABASES["default"].setdefault("OPTIONS", {})["timeout"] = 30
    DATABASES["default"]["OPTIONS"]["transaction_mode"] = "IMMEDIATE"

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {
        "NAME": "django.contrib.auth.password_validation.MinimumLengthValidator",
        "OPTIONS": {"min_length": 10},
    },
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "case-list"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-gb"
TIME_ZONE = env_str("TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "/static/"
STATIC_ROOT = VAR_DIR / "staticfiles"
STATIC_ROOT.mkdir(parents=True, exist_ok=True)  # WhiteNoise serves from finders until collectstatic
STATICFILES_DIRS = [BASE_DIR / "frontend" / "static"]
WHITENOISE_USE_FINDERS = True

# Storage: where uploaded slides, heat maps and model weights live (shared between web and workers).
SLIDE_STORAGE_DIR = Path(env_str("NODESCOPE_SLIDE_DIR", str(VAR_DIR / "slides")))
RESULTS_DIR = Path(env_str("NODESCOPE_RESULTS_DIR", str(VAR_DIR / "results")))
# Folders that `import_slides` and manifests may read from (besides SLIDE_STORAGE_DIR); empty = any.
SLIDE_IMPORT_ROOTS = [Path(p) for p in env_str("NODESCOPE_IMPORT_ROOTS", "").split(":") if p]
MAX_UPLOAD_BYTES = env_int("NODESCOPE_MAX_UPLOAD_BYTES", 4 * 1024**3)
# Largest slide side accepted at import (px); larger declared sizes are decompression bombs.
MAX_SLIDE_SIDE_PX = env_int("NODESCOPE_MAX_SLIDE_SIDE_PX", 400_000)
DATA_UPLOAD_MAX_MEMORY_SIZE = 10 * 1024**2
FILE_UPLOAD_MAX_MEMORY_SIZE = 10 * 1024**2

# Tiles. A session's right to a slide is remembered this long, so hot tile requests need no query.
TILE_PERMISSION_SECONDS = env_int("NODESCOPE_TILE_PERMISSION_SECONDS", 30)
TILE_SOURCE_LRU_SIZE = env_int("NODESCOPE_TILE_SOURCE_LRU", 32)
TILE_CACHE_SECONDS = env_int("NODESCOPE_TILE_CACHE_SECONDS", 3600)
TILE_JPEG_QUALITY = env_int("NODESCOPE_TILE_JPEG_QUALITY", 85)
# Outlines simplified for zoomed-out views, cached per annotation, version and tolerance.
ANNOTATION_OUTLINE_CACHE_SECONDS = env_int("NODESCOPE_ANNOTATION_OUTLINE_CACHE_SECONDS", 24 * 3600)
# Bounds of one annotation import (file, polygons, vertices): over one, the import is refused
# (413) while the file is read, before any geometry is built, and nothing is written.
ANNOTATION_IMPORT_MAX_BYTES = env_int("NODESCOPE_ANNOTATION_IMPORT_MAX_BYTES", 256 * 1024**2)
ANNOTATION_IMPORT_MAX_POLYGONS = env_int("NODESCOPE_ANNOTATION_IMPORT_MAX_POLYGONS", 5000)
ANNOTATION_IMPORT_MAX_VERTICES = env_int("NODESCOPE_ANNOTATION_IMPORT_MAX_VERTICES", 2_000_000)

REDIS_CACHE_URL = env_str("REDIS_CACHE_URL", "")
if REDIS_CACHE_URL:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_CACHE_URL,
        },
    }
else:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.locmem.LocMemCache",
            "LOCATION": "nodescope",
            "OPTIONS": {"MAX_ENTRIES": env_int("NODESCOPE_LOCMEM_CACHE_ENTRIES", 20000)},
        }
    }
# Encoded tiles live in their own cache alias so they can be sized or moved to Redis separately.
CACHES["tiles"] = {
    "BACKEND": "django.core.cache.backends.redis.RedisCache"
    if REDIS_CACHE_URL
    else "django.core.cache.backends.locmem.LocMemCache",
    "LOCATION": REDIS_CACHE_URL or "nodescope-tiles",
    **(
        {}
        if REDIS_CACHE_URL
        else {"OPTIONS": {"MAX_ENTRIES": env_int("NODESCOPE_TILE_CACHE_ENTRIES", 50000)}}
    ),
    "TIMEOUT": TILE_CACHE_SECONDS,
}

# Celery: filesystem broker under var/ by default (no daemon), Redis where CELERY_BROKER_URL says so.
BROKER_DIR = VAR_DIR / "broker"
CELERY_BROKER_URL = env_str("CELERY_BROKER_URL", "filesystem://")
CELERY_RESULT_BACKEND = env_str("CELERY_RESULT_BACKEND", "")
if CELERY_BROKER_URL.startswith("filesystem"):
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(BROKER_DIR / "out"),
        "data_folder_out": str(BROKER_DIR / "out"),
        "processed_folder": str(BROKER_DIR / "processed"),
        "control_folder": str(BROKER_DIR / "control"),
        "store_processed": False,
    }
    if not CELERY_RESULT_BACKEND:
        CELERY_RESULT_BACKEND = f"file://{BROKER_DIR / 'results'}"
elif not CELERY_RESULT_BACKEND:
    CELERY_RESULT_BACKEND = CELERY_BROKER_URL
CELERY_TASK_ALWAYS_EAGER = env_bool("CELERY_TASK_ALWAYS_EAGER", False)
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_DEFAULT_QUEUE = "default"
CELERY_TASK_ROUTES = {"inference.*": {"queue": "gpu"}}
# The queue training and scoring jobs go to (GPU workers consume it).
TRAINING_QUEUE = env_str("NODESCOPE_TRAINING_QUEUE", "gpu")
# A running job whose worker has not written a heartbeat for this long is taken to be dead.
JOB_STALE_SECONDS = env_int("NODESCOPE_JOB_STALE_SECONDS", 300)
CELERY_TASK_TRACK_STARTED = True
# Broker outages (Redis restarted): workers keep trying to reconnect, however long it takes, and a
# job that is running carries on (its truth is its database row; a redelivered message finds the
# job claimed or finished and does nothing), rather than being cancelled on connection loss.
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BROKER_CONNECTION_MAX_RETRIES = None
CELERY_WORKER_CANCEL_LONG_RUNNING_TASKS_ON_CONNECTION_LOSS = False
if CELERY_BROKER_URL.startswith(("redis://", "rediss://")):
    # An unreachable broker host fails a connection attempt in seconds instead of hanging.
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "socket_connect_timeout": env_int("CELERY_BROKER_CONNECT_TIMEOUT", 5)
    }
    CELERY_REDIS_SOCKET_CONNECT_TIMEOUT = env_int("CELERY_BROKER_CONNECT_TIMEOUT", 5)

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.SessionAuthentication",
        # DRF tokens that expire after API_TOKEN_LIFETIME_HOURS (and die with the password).
        "slides.auth.ExpiringTokenAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_PAGINATION_CLASS": "config.pagination.BoundedLimitOffsetPagination",
    "PAGE_SIZE": 100,
    "DEFAULT_THROTTLE_RATES": {"login": env_str("NODESCOPE_LOGIN_THROTTLE", "10/min")},
}

SPECTACULAR_SETTINGS = {
    "TITLE": "NodeScope API",
    "DESCRIPTION": "Cases, nodes, slides, annotations, models and review of lymph-node screening.",
    "VERSION": "0.1.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SERVE_PERMISSIONS": ["rest_framework.permissions.IsAuthenticated"],
    # `check --deploy` is for deployment settings (and must pass clean in production, see
    # tests/security/test_sessions_and_headers.py); schema-generation notes are not for it.
    "ENABLE_DJANGO_DEPLOY_CHECK": False,
}

# Log-in throttling: this many failures per username and per client address in the window.
LOGIN_FAILURE_LIMIT = env_int("NODESCOPE_LOGIN_FAILURE_LIMIT", 5)
LOGIN_FAILURE_WINDOW_SECONDS = env_int("NODESCOPE_LOGIN_FAILURE_WINDOW", 300)
# API tokens (`Authorization: Token ...`) older than this many hours are refused (401) and deleted;
# 0: no expiry. A password change or deactivation always deletes a user's tokens.
API_TOKEN_LIFETIME_HOURS = env_int("NODESCOPE_API_TOKEN_LIFETIME_HOURS", 0)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
    "loggers": {
        "large_image": {"level": "WARNING"},
        "PIL": {"level": "WARNING"},
        "wsidicom": {"level": "ERROR"},
        "tifffile": {"level": "ERROR"},
    },
}

SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", False)
CSRF_COOKIE_SECURE = env_bool("CSRF_COOKIE_SECURE", False)
X_FRAME_OPTIONS = "DENY"
SECURE_REFERRER_POLICY = "same-origin"
SECURE_CONTENT_TYPE_NOSNIFF = True
# HTTPS (production: docker/compose.yaml turns these on; the embedded demo serves plain HTTP).
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", False)
SECURE_REDIRECT_EXEMPT = [r"^health/$"]  # probes from inside the container network
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", False)
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", False)
if env_bool("NODESCOPE_BEHIND_TLS_PROXY", False):
    # The TLS-terminating proxy in front says the request came over HTTPS (and strips the header
    # from clients): only set this behind such a proxy.
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
# No inline script anywhere (page scripts are static files); JSON data islands (json_script) are
# not executed, so they need no exception. Templates and OpenSeadragon use style attributes.
CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self' 'unsafe-inline'",
        "img-src 'self' data: blob:",
        "font-src 'self'",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'self'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)
