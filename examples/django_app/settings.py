"""Settings of the Django example: replay-middleware in local mode, every session recorded.

The ``REPLAY_MIDDLEWARE`` dict is read once when Django builds the middleware; its keys are
``ReplayConfig`` options. ``REPLAY_*`` environment variables override it here (the example
only; a project writes its settings as it likes).

The Django admin is on, as in a fresh ``startproject``: its pages are real-size documents (a
changelist of 200 users), the kind a replay must hold. Its SQLite database is
``DJANGO_EXAMPLE_DB`` (default: a file in the temporary directory); ``python -m
examples.django_app seed`` creates it with an ``admin`` user and 199 others.
"""

from __future__ import annotations

import os
import secrets
import tempfile
from pathlib import Path
from typing import Any

DEBUG = False
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY") or secrets.token_urlsafe(32)
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "[::1]"]
ROOT_URLCONF = "examples.django_app.urls"
WSGI_APPLICATION = "examples.django_app.wsgi.application"
DATABASES: dict[str, object] = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("DJANGO_EXAMPLE_DB")
        or str(Path(tempfile.gettempdir()) / "replay-middleware-django-example.sqlite3"),
    }
}
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
STATIC_URL = "/static/"
USE_TZ = True

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",  # the admin's CSS (runserver --insecure serves it)
    "replay_middleware",  # the {% replay_snippet %} tag and the system checks
]

MIDDLEWARE = [
    "django.middleware.gzip.GZipMiddleware",  # compresses what we produce: listed before us
    "django.middleware.security.SecurityMiddleware",
    "replay_middleware.django.ReplayMiddleware",
    "csp.middleware.CSPMiddleware",  # sets the CSP header we merge into: listed after us
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.template.context_processors.csrf",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]

# django-csp 4: no site-wide policy; the two CSP pages set theirs with @csp(...).
CONTENT_SECURITY_POLICY = None

# Local mode (no api_key), every session recorded, the billing area excluded. String values
# are coerced like REPLAY_* environment variables, which override these (the example only).
REPLAY_MIDDLEWARE: dict[str, object] = {
    "sample_rate": 1.0,
    "exclude": ["/account/billing"],
    **{
        k[len("REPLAY_") :].lower(): v
        for k, v in os.environ.items()
        if k.startswith("REPLAY_") and k != "REPLAY_TEST_UPSTREAM"
    },
}

# Tests only (as tests/wsgi_app.py): ``REPLAY_TEST_UPSTREAM`` is the base URL of a fake
# Amplitude that the upload proxy talks to instead of Amplitude. Unset, nothing changes.
TEST_UPSTREAM = os.environ.get("REPLAY_TEST_UPSTREAM")
if TEST_UPSTREAM:
    MIDDLEWARE[MIDDLEWARE.index("replay_middleware.django.ReplayMiddleware")] = (
        "examples.django_app.settings.replay_middleware_on_test_upstream"
    )


def replay_middleware_on_test_upstream(get_response: Any) -> Any:
    """``ReplayMiddleware`` whose upload proxy is pointed at ``REPLAY_TEST_UPSTREAM``."""
    from replay_middleware.django import ReplayMiddleware
    from replay_middleware.proxy import Upstreams
    from replay_middleware.upstream import AsyncUploadProxy, UploadProxy

    middleware = ReplayMiddleware(get_response)
    upstreams = Upstreams.at(os.environ["REPLAY_TEST_UPSTREAM"])
    # The proxies do no I/O until first used, so replacing them here is safe.
    if middleware.upstream is not None:
        middleware.upstream = UploadProxy(middleware.config, upstreams=upstreams)
    if middleware.async_upstream is not None:
        middleware.async_upstream = AsyncUploadProxy(middleware.config, upstreams=upstreams)
    return middleware


# Django asks the factory whether it handles sync and async requests, as it asks a class.
replay_middleware_on_test_upstream.sync_capable = True  # type: ignore[attr-defined]
replay_middleware_on_test_upstream.async_capable = True  # type: ignore[attr-defined]
