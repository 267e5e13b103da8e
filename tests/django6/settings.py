"""Django 6 settings for tests/django6/csp_builtin.py, applied once per process by ``setup()``.

The stack follows replay_middleware/django.py's docs: GZip, then ours, then Django's built-in
``ContentSecurityPolicyMiddleware`` (inside ours, so its header exists when we merge).
"""

from __future__ import annotations

from typing import Any

MIDDLEWARE = [
    "django.middleware.gzip.GZipMiddleware",
    "replay_middleware.django.ReplayMiddleware",
    "django.middleware.csp.ContentSecurityPolicyMiddleware",
    "django.middleware.common.CommonMiddleware",
]


def base() -> dict[str, Any]:
    from django.utils.csp import CSP

    return {
        "DEBUG": False,
        "SECRET_KEY": "tests-only-secret-key-django6-0123456789",
        "ALLOWED_HOSTS": ["testserver"],
        "ROOT_URLCONF": "tests.django6.csp_builtin",
        "INSTALLED_APPS": ["replay_middleware"],
        "DATABASES": {},
        "USE_TZ": True,
        "MIDDLEWARE": MIDDLEWARE,
        "TEMPLATES": [
            {
                "BACKEND": "django.template.backends.django.DjangoTemplates",
                "APP_DIRS": False,
                "OPTIONS": {
                    "context_processors": [
                        "django.template.context_processors.request",
                        "django.template.context_processors.csp",
                    ]
                },
            }
        ],
        "SECURE_CSP": {"default-src": [CSP.SELF], "script-src": [CSP.SELF, CSP.NONCE]},
        # The suite adds ``local_store_dir`` (a tmp_path) for every test.
        "REPLAY_MIDDLEWARE": {"sample_rate": 1.0},
    }


def setup() -> None:
    """Configure Django 6 with ``base()`` (once) and populate the app registry."""
    import django
    from django.conf import settings

    if django.VERSION < (6, 0):
        raise RuntimeError(f"tests/django6 needs Django >= 6.0 (got {django.get_version()})")
    if not settings.configured:
        settings.configure(**base())
        django.setup()
