"""Django app config: ``INSTALLED_APPS += ["replay_middleware"]``.

Only needed for the ``{% load replay %}`` template tag library and for the system checks to
run in ``manage.py check`` / ``runserver`` (they are registered when ``replay_middleware.django``
is imported, which ``ready()`` does). The middleware itself works without it.
"""

from __future__ import annotations

from django.apps import AppConfig


class ReplayMiddlewareConfig(AppConfig):
    name = "replay_middleware"
    label = "replay_middleware"
    verbose_name = "Session Replay (replay-middleware)"

    def ready(self) -> None:
        from . import django  # noqa: F401  (registers the system checks)
