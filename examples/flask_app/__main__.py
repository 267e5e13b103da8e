"""``python -m examples.flask_app [port]``: serve the example on 127.0.0.1 with werkzeug."""

from __future__ import annotations

import sys

from werkzeug.serving import run_simple

from .app import app

port = int(sys.argv[1]) if len(sys.argv) > 1 else 8000
print(f"replay-middleware demo: open http://127.0.0.1:{port}/", flush=True)
run_simple("127.0.0.1", port, app, threaded=True)
