"""The example's database: Django's tables, an ``admin`` superuser and 199 more users, so the
admin's user changelist (``/admin/auth/user/?all=``) shows 200 rows.

``python -m examples.django_app seed`` runs it; serving the example runs it once when the
database is new. The admin's password is ``DJANGO_EXAMPLE_ADMIN_PASSWORD``, or a random one
that is printed (the example only listens on 127.0.0.1).
"""

from __future__ import annotations

import os
import secrets

from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.db import connection

USERS = 200
FIRST = ("Ada", "Brian", "Chiara", "Dmitri", "Eun-ji", "Farah", "Gustavo", "Hana", "Ivo", "Jun")
LAST = ("Okafor", "Lindqvist", "Moreau", "Tanaka", "Rossi", "Novak", "Silva", "Kowalski")


def is_seeded() -> bool:
    return "auth_user" in connection.introspection.table_names()


def seed() -> str | None:
    """Create the tables and users when missing; returns the admin password it set, if any."""
    call_command("migrate", verbosity=0, interactive=False)
    user_model = get_user_model()
    password = None
    if not user_model.objects.filter(username="admin").exists():
        password = os.environ.get("DJANGO_EXAMPLE_ADMIN_PASSWORD") or secrets.token_urlsafe(12)
        user_model.objects.create_superuser("admin", "admin@example.com", password)
    existing = user_model.objects.count()
    user_model.objects.bulk_create(
        user_model(
            username=f"user{i:03d}",
            email=f"user{i:03d}@example.com",
            first_name=FIRST[i % len(FIRST)],
            last_name=LAST[i % len(LAST)],
        )
        for i in range(existing, USERS)
    )
    return password
