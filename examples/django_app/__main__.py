"""``python -m examples.django_app [port]``: serve the example on 127.0.0.1 (Django's
development server, WSGI, no auto-reload). ``manage.py``-style commands work too:
``python -m examples.django_app check``."""

from __future__ import annotations

import os
import sys

from django.core.management import execute_from_command_line

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "examples.django_app.settings")
args = sys.argv[1:]
if not args or args[0].isdigit():
    port = args[0] if args else "8000"
    print(f"replay-middleware demo: open http://127.0.0.1:{port}/", flush=True)
    args = ["runserver", f"127.0.0.1:{port}", "--noreload"]
execute_from_command_line(["examples.django_app", *args])
