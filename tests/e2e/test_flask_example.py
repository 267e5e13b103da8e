"""The Flask example in a real browser: Debian chromium, the real SDK bundle, werkzeug."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import BrowserContext, Page, Request

from examples.flask_app.app import create_app
from replay_middleware import ReplayConfig

pytestmark = pytest.mark.e2e

WAIT_MS = 10_000
PROPS = "() => window.replayMiddleware && window.replayMiddleware.getSessionReplayProperties()"


@pytest.fixture
def serve(live_wsgi_server: Callable[[Any], str], tmp_path: Path) -> Callable[..., str]:
    """``serve(**config_overrides) -> base_url``: the example in local mode, store in tmp_path."""

    def start(**overrides: Any) -> str:
        defaults = {
            "sample_rate": 1.0,
            "exclude": ("/account/billing",),
            "local_store_dir": str(tmp_path),
        }
        return live_wsgi_server(create_app(ReplayConfig(**{**defaults, **overrides})))

    return start


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


def test_sdk_loads_first_party_with_the_cookie_session(
    serve: Callable[..., str], page: Page, context: BrowserContext
) -> None:
    base = serve()
    urls = record_requests(page)
    page.goto(base + "/")
    props = wait_recording(page)
    device, session = session_cookie(context)
    assert page.evaluate("() => window.sessionReplay.getSessionId()") == session
    assert props["[Amplitude] Session Replay ID"] == f"{device}/{session}"
    assert base + "/_replay/sdk/1.51.6.js" in urls
    assert not [u for u in urls if "amplitude.com" in u]


@pytest.mark.parametrize("path", ["/csp/strict", "/csp/inline", "/manual"])
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


def test_manual_placement_reuses_talisman_nonce(serve: Callable[..., str], page: Page) -> None:
    base = serve()
    response = page.goto(base + "/manual")
    assert response is not None
    loader_nonce = page.evaluate("() => document.getElementById('replay-middleware-loader').nonce")
    app_nonce = page.evaluate("() => document.querySelector('body script[nonce]').nonce")
    assert loader_nonce == app_nonce
    assert page.content().count('id="replay-middleware-config"') == 1
    assert response.headers["x-replay-decision"] == "manual"
    wait_recording(page)


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
    base = serve(sample_rate=0.0)
    urls = record_requests(page)
    page.goto(base + "/")
    page.wait_for_load_state("networkidle")
    assert not [u for u in urls if "/sdk/" in u or "amplitude.com" in u]
    assert page.evaluate("() => typeof window.sessionReplay") == "undefined"
    assert "replay-middleware-config" not in page.content()
