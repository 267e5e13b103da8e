"""The apps ``benchmarks/servers.py`` serves from real servers: Starlette and Flask, bare or wrapped.

Both have the same two routes, whose bodies are built once at import (the app does no work of
its own per request, the worst case for the ratio to the bare app):

- ``/page``: a 30 KB HTML page with an ordinary ``<head>``, ``text/html; charset=utf-8``;
- ``/json``: 2 KB of JSON, ``application/json``.

``REPLAY_BENCH_VARIANT`` picks the variant: ``bare``, or ``replay`` (wrapped the way the README
documents: ``app.add_middleware(ReplayMiddleware, config=...)`` for Starlette,
``SessionReplay(app, config=...)`` for Flask). ``replay_middleware`` is whichever is first on
the path: servers.py sets ``PYTHONPATH`` to the tree being measured.

    uvicorn --factory server_apps:starlette_app      gunicorn 'server_apps:flask_app()'
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from types import FrameType
from typing import Any

VARIANT_ENV = "REPLAY_BENCH_VARIANT"
STORE_ENV = "REPLAY_BENCH_STORE"  # the local store's folder (never written: no uploads here)
PROFILE_ENV = "REPLAY_BENCH_PROFILE"  # a path: profile the server into it (servers.py --profile)
PROFILE_INTERVAL_S = 0.001  # of CPU time
SECRET = "bench-secret-key-0123456789abcdef"

_PARA = b"<p>" + b"Lorem ipsum dolor sit amet, consectetur adipiscing elit. " * 8 + b"</p>\n"
HTML_30K = (
    b'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
    b'<meta name="viewport" content="width=device-width, initial-scale=1">\n<title>Bench</title>\n'
    b'<link rel="stylesheet" href="/static/app.css">\n<script src="/static/app.js" defer></script>\n'
    b"</head>\n<body>\n" + _PARA * (30_000 // len(_PARA)) + b"</body>\n</html>\n"
)
JSON_2K = json.dumps(
    {"items": [{"id": i, "name": f"item {i}", "price": 9.99, "ok": True} for i in range(41)]},
    separators=(",", ":"),
).encode()


def replay_config() -> Any:
    """What a deployment would run: every session sampled, a secret key signing the identity
    cookie (several workers agree), local mode (no ``api_key``: no network, as in run.py), the
    debug header off as in production."""
    from replay_middleware import ReplayConfig

    return ReplayConfig(
        secret_key=SECRET,
        sample_rate=1.0,
        debug_header=False,
        local_store_dir=os.environ.get(STORE_ENV, ".replay-middleware"),
    )


def _variant() -> str:
    variant = os.environ.get(VARIANT_ENV, "bare")
    if variant not in ("bare", "replay"):
        raise ValueError(f"{VARIANT_ENV} must be 'bare' or 'replay' (got {variant!r})")
    return variant


class StackSampler:
    """A sampling profiler on the process's CPU clock: ``SIGPROF`` every ``interval`` seconds of
    CPU time (``ITIMER_PROF``; the kernel checks it once per scheduler tick, so in practice a
    sample per tick of CPU) records the main thread's Python stack. Its cost is per sample,
    not per call (pyinstrument's and cProfile's hooks slow the many small calls of h11 and
    uvicorn far more than the rest, which skews the shares), and a process waiting for a core on
    the shared machine is not sampled. Time in C code (hmac, socket writes) lands on the Python
    frame that called it. Both servers run requests in the main thread, where signals land.
    """

    def __init__(self, interval: float = PROFILE_INTERVAL_S) -> None:
        self.interval = interval
        self.counts: dict[tuple[tuple[str, str], ...], int] = {}

    def start(self) -> None:
        signal.signal(signal.SIGPROF, self._sample)
        signal.setitimer(signal.ITIMER_PROF, self.interval, self.interval)

    def _sample(self, signum: int, frame: FrameType | None) -> None:
        stack = []
        while frame is not None:  # bounded: the stack's depth
            stack.append((frame.f_code.co_filename, frame.f_code.co_name))
            frame = frame.f_back
        key = tuple(stack)  # innermost first
        self.counts[key] = self.counts.get(key, 0) + 1

    def stop(self, out: str) -> None:
        """Stop sampling and write ``{"interval": s, "stacks": [[[file, function], ...], n]}``."""
        signal.setitimer(signal.ITIMER_PROF, 0, 0)
        signal.signal(signal.SIGPROF, signal.SIG_IGN)
        stacks = [[list(map(list, stack)), n] for stack, n in self.counts.items()]
        Path(out).write_text(json.dumps({"interval": self.interval, "stacks": stacks}))


@contextlib.asynccontextmanager
async def _lifespan(app: Any) -> AsyncIterator[None]:
    """With ``REPLAY_BENCH_PROFILE`` set: sample the server from start-up complete to shutdown
    (the imports and start-up stay out of the profile) and save the samples to that path."""
    out = os.environ.get(PROFILE_ENV)
    if not out:
        yield
        return
    sampler = StackSampler()
    sampler.start()
    try:
        yield
    finally:
        sampler.stop(out)


def starlette_app() -> Any:
    """The Starlette app (a factory: ``uvicorn --factory``)."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    async def page(request: Request) -> Response:
        return Response(HTML_30K, media_type="text/html")  # Starlette adds "; charset=utf-8"

    async def data(request: Request) -> Response:
        return Response(JSON_2K, media_type="application/json")

    app = Starlette(routes=[Route("/page", page), Route("/json", data)], lifespan=_lifespan)
    if _variant() == "replay":
        from replay_middleware import ReplayMiddleware

        app.add_middleware(ReplayMiddleware, config=replay_config())
    return app


def flask_app() -> Any:
    """The Flask app (``gunicorn 'server_apps:flask_app()'``)."""
    from flask import Flask, Response

    app = Flask("bench")

    @app.get("/page")
    def page() -> Response:
        return Response(HTML_30K, mimetype="text/html")  # Flask adds "; charset=utf-8"

    @app.get("/json")
    def data() -> Response:
        return Response(JSON_2K, mimetype="application/json")

    if _variant() == "replay":
        from replay_middleware.flask import SessionReplay

        SessionReplay(app, config=replay_config())
    return app
