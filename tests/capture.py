"""A local HTTP capture for analytics clients' transports: a real server on 127.0.0.1 that
records each POSTed JSON body and answers ``{"code": 200}`` (what Amplitude's HTTP V2 API and
Segment's batch API both accept as success), and ``in_request``, which runs code in the handler
of a request through ReplayMiddleware."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from replay_middleware import ReplayConfig, ReplayContext, ReplayMiddleware, current_replay


class Capture:
    def __init__(self, server: ThreadingHTTPServer) -> None:
        self._server = server
        self._lock = threading.Lock()
        self.posts: list[tuple[str, dict[str, Any]]] = []

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def record(self, path: str, body: dict[str, Any]) -> None:
        with self._lock:
            self.posts.append((path, body))

    def wait_for(
        self, count: int, items: Callable[[dict[str, Any]], list[Any]], timeout: float = 5.0
    ) -> list[Any]:
        """The ``items`` of every body so far, once there are at least ``count`` of them;
        waits at most ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        found: list[Any] = []
        while time.monotonic() < deadline:
            with self._lock:
                found = [item for _, body in self.posts for item in items(body)]
            if len(found) >= count:
                return found
            time.sleep(0.01)
        raise AssertionError(f"expected {count} items, got {len(found)}: {found!r}")


@contextmanager
def capture_server() -> Iterator[Capture]:
    capture: Capture

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("content-length", "0"))
            capture.record(self.path, json.loads(self.rfile.read(length)))
            body = b'{"code": 200}'
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    capture = Capture(server)
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        yield capture
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


async def in_request(action: Callable[[], None], *, sample_rate: float = 1.0) -> ReplayContext:
    """Run ``action`` in the handler of a request through ReplayMiddleware; the request's
    ReplayContext."""
    seen: list[ReplayContext] = []

    async def endpoint(request: Request) -> PlainTextResponse:
        ctx = current_replay()
        assert ctx is not None
        seen.append(ctx)
        action()
        return PlainTextResponse("ok")

    app = ReplayMiddleware(
        Starlette(routes=[Route("/checkout", endpoint, methods=["POST"])]),
        config=ReplayConfig(sample_rate=sample_rate),
    )
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://test"
    ) as http:
        assert (await http.post("/checkout")).status_code == 200
    return seen[0]
