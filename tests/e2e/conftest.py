"""Real-browser harness: Debian's chromium driven by Playwright, apps served by uvicorn.

Fixtures:

- ``browser`` (session): a Playwright ``Browser`` on ``/usr/bin/chromium`` (no
  ``playwright install``; notes/e2e.md). Missing chromium fails the run: "run make setup".
- ``live_server`` (function): ``serve(app) -> base_url``; serves an ASGI app with uvicorn on
  127.0.0.1 in a background thread, stopped at teardown.
- ``context`` / ``page`` (function): a fresh browser context (empty cookies and storage) that
  records CSP violations, and a page in it.
- ``csp_violations`` (function): ``read(page) -> list[dict]``, the ``securitypolicyviolation``
  events the current document has seen so far.
- ``sdk_bundle`` (session): the vendored SDK bundle's bytes; fails with "run make setup" if absent.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from playwright.sync_api import Browser, BrowserContext, Page, sync_playwright

CHROMIUM = Path("/usr/bin/chromium")
SDK_VERSION = "1.51.6"
SDK_BUNDLE = (
    Path(__file__).resolve().parents[2]
    / "static"
    / "vendor"
    / f"session-replay-browser-{SDK_VERSION}-min.js"
)
# Keep chromium from talking to Google during tests: only our 127.0.0.1 traffic.
CHROMIUM_ARGS = [
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]
# Bounded waits: a server that does not start or stop in this time is a failure, not a hang.
SERVER_WAIT_S = 10.0

# Installed in every context before any page script: collects CSP violations of the document
# (the event bubbles to document; capture so a page's own handler cannot stop it).
_CSP_RECORDER = """
window.__cspViolations = [];
document.addEventListener("securitypolicyviolation", (e) => {
  window.__cspViolations.push({
    directive: e.effectiveDirective,
    violated: e.violatedDirective,
    blocked: e.blockedURI,
    sample: e.sample,
    source: e.sourceFile,
    disposition: e.disposition,
  });
}, true);
"""

ASGIApp = Callable[..., Any]


@pytest.fixture(scope="session")
def sdk_bundle() -> bytes:
    """The pinned SDK bundle as vendored by ``make setup`` (static/vendor/, not in git)."""
    if not SDK_BUNDLE.is_file():
        pytest.fail(f"{SDK_BUNDLE} is missing: run make setup", pytrace=False)
    return SDK_BUNDLE.read_bytes()


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    """Headless Debian chromium (Playwright's own browsers are never downloaded)."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: run make setup", pytrace=False)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


class _ThreadedServer:
    """uvicorn on a socket we bound ourselves (so the port is known before it starts)."""

    def __init__(self, app: ASGIApp) -> None:
        # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on sockets it sees as TCP, and
        # without it every response waits ~40 ms for a delayed ACK.
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        config = uvicorn.Config(
            app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="auto"
        )
        self.server = uvicorn.Server(config)
        # uvicorn installs signal handlers only in the main thread, so a thread is safe here.
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )

    def start(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + SERVER_WAIT_S
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(SERVER_WAIT_S)
        self.sock.close()
        if self.thread.is_alive():
            raise RuntimeError("uvicorn did not stop")


@pytest.fixture
def live_server() -> Iterator[Callable[[ASGIApp], str]]:
    """Factory: ``base_url = live_server(app)``; every server started is stopped at teardown."""
    servers: list[_ThreadedServer] = []

    def serve(app: ASGIApp) -> str:
        server = _ThreadedServer(app)
        servers.append(server)
        return server.start()

    yield serve
    for server in servers:
        server.stop()


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    """A fresh context (cookies, storage and cache empty) recording CSP violations."""
    ctx = browser.new_context()
    ctx.add_init_script(_CSP_RECORDER)
    try:
        yield ctx
    finally:
        ctx.close()


@pytest.fixture
def page(context: BrowserContext) -> Page:
    return context.new_page()


@pytest.fixture
def csp_violations() -> Callable[[Page], list[dict[str, Any]]]:
    """``read(page)``: the CSP violations the page's current document reported so far."""

    def read(page: Page) -> list[dict[str, Any]]:
        return list(page.evaluate("() => window.__cspViolations || []"))

    return read


# -- WSGI apps: werkzeug's threaded server ------------------------------------------------------


class _ThreadedWSGIServer:
    """werkzeug's ``make_server`` on port 0 (bound before it starts), in a thread."""

    def __init__(self, app: Callable[..., Any]) -> None:
        from werkzeug.serving import make_server

        self.server = make_server("127.0.0.1", 0, app, threaded=True)
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def start(self) -> str:
        # make_server already listens: connections queue until the loop picks them up.
        self.thread.start()
        return f"http://127.0.0.1:{self.server.port}"

    def stop(self) -> None:
        if self.thread.is_alive():
            # serve_forever checks the flag every poll_interval, so this returns promptly.
            self.server.shutdown()
        self.thread.join(SERVER_WAIT_S)
        self.server.server_close()
        if self.thread.is_alive():
            raise RuntimeError("werkzeug did not stop")


def _replay_middlewares(app: Any) -> list[Any]:
    """The replay middlewares an app holds: itself, or a Flask app's extension's."""
    if hasattr(app, "engine") and hasattr(app, "close"):
        return [app]
    extensions = getattr(app, "extensions", {})
    replay = extensions.get("replay_middleware")
    return [] if replay is None else [replay.middleware_for(app)]


@pytest.fixture
def live_wsgi_server() -> Iterator[Callable[[Callable[..., Any]], str]]:
    """Factory: ``base_url = live_wsgi_server(app)`` for a WSGI app (a Flask app, or a
    ``ReplayWSGIMiddleware``) served by werkzeug on 127.0.0.1; at teardown every server is
    stopped and the app's replay middleware closed (its local store, its HTTP client)."""
    started: list[tuple[_ThreadedWSGIServer, Any]] = []

    def serve(app: Callable[..., Any]) -> str:
        server = _ThreadedWSGIServer(app)
        started.append((server, app))
        return server.start()

    yield serve
    for server, app in started:
        server.stop()
        for middleware in _replay_middlewares(app):
            middleware.close()
