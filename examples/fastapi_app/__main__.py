"""``python -m examples.fastapi_app [port]``: serve the example on 127.0.0.1."""

from __future__ import annotations

import sys

import uvicorn

port = int(sys.argv[1]) if len(sys.argv) > 1 else 8000
print(f"replay-middleware demo: open http://127.0.0.1:{port}/", flush=True)
uvicorn.run("examples.fastapi_app.app:app", host="127.0.0.1", port=port, log_level="info")
