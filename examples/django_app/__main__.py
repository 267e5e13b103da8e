"""``python -m examples.django_app [port]``: serve the example on 127.0.0.1 (Django's
development server, WSGI, no auto-reload), creating its database on first use.
``python -m examples.django_app seed`` only creates the database (examples/django_app/seed.py);
other ``manage.py``-style commands work too: ``python -m examples.django_app check``."""

from __future__ import annotations

import os
import sys

import django
from django.core.management import execute_from_command_line

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "examples.django_app.settings")
args = sys.argv[1:]
if not args or args[0].isdigit() or args[0] == "seed":
    django.setup()
    from examples.django_app.seed import is_seeded, seed

    if (args and args[0] == "seed") or not is_seeded():
        password = seed()
        if password:
            print(f"Django admin: user admin, password {password}", flush=True)
    if args and args[0] == "seed":
        sys.exit(0)
    port = args[0] if args else "8000"
    print(f"replay-middleware demo: open http://127.0.0.1:{port}/", flush=True)
    # --insecure: serve the admin's CSS although DEBUG is off (a demo on 127.0.0.1 only).
    args = ["runserver", f"127.0.0.1:{port}", "--noreload", "--insecure"]
execute_from_command_line(["examples.django_app", *args])
