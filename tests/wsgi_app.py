"""A tiny WSGI app wrapped in ReplayWSGIMiddleware, served by gunicorn in tests/test_gunicorn.py.

Configured from the environment so the test process can point it at its fake Amplitude:
``REPLAY_TEST_UPSTREAM`` (base URL of the fake), ``REPLAY_TEST_API_KEY``,
``REPLAY_TEST_BODY_TIMEOUT`` (``client_body_timeout``).
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable, Iterator

from replay_middleware import ReplayConfig, ReplayWSGIMiddleware
from replay_middleware.proxy import Upstreams
from replay_middleware.wsgi import Environ, StartResponse

PAGE = b"<!DOCTYPE html><html><head><title>shop</title></head><body><h1>Shop</h1></body></html>"


def shop(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    path = environ.get("PATH_INFO", "/")
    if path == "/stream":

        def chunks() -> Iterator[bytes]:
            yield b"<!DOCTYPE html><html><head>"
            yield b"<title>s</title></head><body>"
            for i in range(3):
                yield b"<p>%d</p>" % i
            yield b"</body></html>"

        start_response("200 OK", [("Content-Type", "text/html; charset=utf-8")])
        return chunks()
    if path == "/file":
        # A file wrapper: handed back untouched so the server can sendfile it.
        start_response(
            "200 OK",
            [("Content-Type", "text/html; charset=utf-8"), ("Content-Length", str(len(PAGE)))],
        )
        wrapper = environ["wsgi.file_wrapper"]
        result: Iterable[bytes] = wrapper(io.BytesIO(PAGE))
        return result
    if path == "/api":
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", "2")])
        return [b"{}"]
    start_response(
        "200 OK",
        [("Content-Type", "text/html; charset=utf-8"), ("Content-Length", str(len(PAGE)))],
    )
    return [PAGE]


def create_app() -> ReplayWSGIMiddleware:
    upstream = os.environ.get("REPLAY_TEST_UPSTREAM")
    config = ReplayConfig(
        api_key=os.environ.get("REPLAY_TEST_API_KEY", "0123456789abcdef0123456789abcdef"),
        secret_key="s" * 32,
        sample_rate=1.0,
        client_body_timeout=float(os.environ.get("REPLAY_TEST_BODY_TIMEOUT", "5")),
    )
    return ReplayWSGIMiddleware(
        shop, config, upstreams=Upstreams.at(upstream) if upstream else None
    )


app = create_app()
