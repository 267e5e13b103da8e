"""The Django example in a real browser: Debian chromium, the real SDK bundle, real servers.

The example runs in a subprocess (Django can be configured once per process, and
tests/test_django.py configures it for its own settings): under uvicorn (Django's ASGI
handler, so the middleware runs in async mode) and under gunicorn (WSGI, sync mode).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import BrowserContext, Page, Request

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
WAIT_MS = 10_000
START_S = 20.0
PROPS = "() => window.replayMiddleware && window.replayMiddleware.getSessionReplayProperties()"
SERVERS = {
    "uvicorn-asgi": ["uvicorn", "examples.django_app.asgi:application", "--host", "127.0.0.1"],
    "gunicorn-wsgi": ["gunicorn", "examples.django_app.wsgi:application", "--threads", "4"],
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


@pytest.fixture(params=sorted(SERVERS))
def serve(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[..., str]]:
    """``serve(**REPLAY_env) -> base_url``: the example in a subprocess, store in tmp_path."""
    procs: list[subprocess.Popen[bytes]] = []
    kind: str = request.param

    def start(**env: str) -> str:
        port = _free_port()
        command = [sys.executable, "-m", *SERVERS[kind]]
        command += (
            ["--port", str(port)] if kind == "uvicorn-asgi" else ["--bind", f"127.0.0.1:{port}"]
        )
        environment = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "DJANGO_SECRET_KEY": "e2e-only-secret-key-0123456789abcdef",
            "REPLAY_LOCAL_STORE_DIR": str(tmp_path / "store"),
            **{f"REPLAY_{k.upper()}": v for k, v in env.items()},
        }
        with (tmp_path / f"{kind}.log").open("wb") as log:  # the child keeps its own handle
            proc = subprocess.Popen(command, cwd=ROOT, env=environment, stdout=log, stderr=log)
        procs.append(proc)
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + START_S
        while True:
            assert proc.poll() is None, (tmp_path / f"{kind}.log").read_text()
            try:
                if httpx.get(base + "/api/whoami", timeout=1.0).status_code == 200:
                    return base
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"{kind} did not start")
            time.sleep(0.1)

    yield start
    for proc in procs:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def record_requests(page: Page) -> list[str]:
    urls: list[str] = []

    def on_request(request: Request) -> None:
        urls.append(request.url)

    page.on("request", on_request)
    return urls


def wait_recording(page: Page) -> dict[str, str]:
    page.wait_for_function(
        "() => { const p = window.replayMiddleware && window.replayMiddleware.getSessionReplayProperties();"
        " return p && p['[Amplitude] Session Replay ID']; }",
        timeout=WAIT_MS,
    )
    return dict(page.evaluate(PROPS))


def session_cookie(context: BrowserContext) -> tuple[str, int]:
    [cookie] = [c for c in context.cookies() if c["name"] == "replay_id"]
    device, session, _last, _sig = cookie["value"].split(".")
    return device, int(session)


@pytest.mark.parametrize("path", ["/", "/manual"])
def test_sdk_loads_first_party_with_the_cookie_session(
    serve: Callable[..., str], page: Page, context: BrowserContext, path: str
) -> None:
    base = serve()
    urls = record_requests(page)
    page.goto(base + path)
    props = wait_recording(page)
    device, session = session_cookie(context)
    assert page.evaluate("() => window.sessionReplay.getSessionId()") == session
    assert props["[Amplitude] Session Replay ID"] == f"{device}/{session}"
    assert base + "/_replay/sdk/1.51.6.js" in urls
    assert not [u for u in urls if "amplitude.com" in u]


def test_uploads_arrive_in_the_local_store(serve: Callable[..., str], page: Page) -> None:
    base = serve(
        sdk_options='{"flushIntervalConfig": {"minIntervalMs": 200, "maxIntervalMs": 1000}}'
    )
    page.goto(base + "/signin")
    wait_recording(page)
    with page.expect_response(lambda r: "/_replay/track" in r.url, timeout=WAIT_MS) as info:
        page.fill("#email", "someone@example.com")
        page.type("#password", "hunter2-secret", delay=5)
        page.click("h1")
        page.evaluate("() => window.dispatchEvent(new Event('blur'))")
    assert info.value.status == 200


@pytest.mark.parametrize("path", ["/csp/strict", "/csp/inline"])
def test_csp_pages_run_with_zero_violations(
    serve: Callable[..., str],
    page: Page,
    csp_violations: Callable[[Page], list[dict[str, Any]]],
    path: str,
) -> None:
    base = serve()
    page.goto(base + path)
    wait_recording(page)
    assert page.text_content("#app-script") == "app script ran"
    page.wait_for_timeout(300)  # let late worker/connect violations surface
    assert csp_violations(page) == []


def test_restricted_page_loads_no_sdk(serve: Callable[..., str], page: Page) -> None:
    base = serve()
    urls = record_requests(page)
    page.goto(base + "/account/billing")
    page.wait_for_load_state("networkidle")
    assert not [u for u in urls if "/_replay/" in u]
    assert page.evaluate("() => typeof window.sessionReplay") == "undefined"
    assert "replay-middleware" not in page.content()


def test_pushstate_into_restricted_area_shuts_down_and_leaving_restarts(
    serve: Callable[..., str], page: Page
) -> None:
    base = serve()
    page.goto(base + "/spa")
    first = wait_recording(page)
    page.click("text=Billing (client-side)")
    page.wait_for_function(f"() => JSON.stringify({PROPS[6:]}) === '{{}}'", timeout=WAIT_MS)
    assert page.evaluate("() => location.pathname") == "/account/billing"
    page.click("text=Settings")
    assert wait_recording(page) == first
    page.go_back()  # popstate back into the restricted area
    page.wait_for_function(f"() => JSON.stringify({PROPS[6:]}) === '{{}}'", timeout=WAIT_MS)


def test_unsampled_session_downloads_zero_sdk_bytes(serve: Callable[..., str], page: Page) -> None:
    base = serve(sample_rate="0")
    urls = record_requests(page)
    page.goto(base + "/")
    page.wait_for_load_state("networkidle")
    assert not [u for u in urls if "/sdk/" in u or "amplitude.com" in u]
    assert page.evaluate("() => typeof window.sessionReplay") == "undefined"
    assert "replay-middleware-config" not in page.content()
