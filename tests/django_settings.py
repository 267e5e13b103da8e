"""Django settings for tests/test_django.py, applied once per process by ``setup()``.

Django can be configured only once per process, so the settings live here and the test
module calls ``setup()`` when it is imported; no other test module imports Django. Per-test
variations use ``django.test.override_settings``.
"""

from __future__ import annotations

BASE: dict[str, object] = {
    "DEBUG": False,
    "SECRET_KEY": "tests-only-secret-key-0123456789abcdef",
    "ALLOWED_HOSTS": ["testserver", "127.0.0.1", "localhost"],
    "ROOT_URLCONF": "tests.test_django",
    "INSTALLED_APPS": ["replay_middleware"],
    "DATABASES": {},
    "USE_TZ": True,
    "MIDDLEWARE": [
        "django.middleware.gzip.GZipMiddleware",
        "replay_middleware.django.ReplayMiddleware",
        "django.middleware.common.CommonMiddleware",
    ],
    "TEMPLATES": [
        {
            "BACKEND": "django.template.backends.django.DjangoTemplates",
            "APP_DIRS": False,
            "OPTIONS": {"context_processors": ["django.template.context_processors.request"]},
        }
    ],
    # tests/test_django.py adds ``local_store_dir`` (a tmp_path) for every test.
    "REPLAY_MIDDLEWARE": {
        "sample_rate": 1.0,
        "exclude": ["/account/*"],
    },
    "DATA_UPLOAD_MAX_MEMORY_SIZE": 1024,
}


def setup() -> None:
    """Configure Django with ``BASE`` (once) and populate the app registry."""
    import django
    from django.conf import settings

    if not settings.configured:
        settings.configure(**BASE)
        django.setup()
