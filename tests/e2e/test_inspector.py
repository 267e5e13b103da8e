"""The local inspector replaying a real recording in chromium (SPEC L1, L2).

The app is written here: it serves a page that runs the real SDK bundle (same-origin, no
middleware), answers the SDK's config request as local mode does, stores every upload in a
``LocalStore`` and routes ``/_replay/inspect/...`` to an ``Inspector``. A browser records the
page (an ``autofocus`` input, typing, a click that adds text and another ``autofocus`` input,
a client-side navigation, a ``pagehide``: its tail arrives twice, by fetch and by beacon), then
the inspector's session page must replay it under its own CSP with zero violations and no
"Blocked autofocusing" console noise, and list both pages of the visit. The browser opens the
inspector as its user does: the URL with ``?token=`` once, then every page through the cookie. The session page's
screenshot is written to ``.cache/screenshots/``.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from playwright.sync_api import Browser, Page
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from replay_middleware.asgi import request_info
from replay_middleware.engine import LOCAL_REMOTE_CONFIG
from replay_middleware.inspector import INSPECTOR_CSP, Inspector
from replay_middleware.local_store import LocalStore

pytestmark = pytest.mark.e2e

PREFIX = "/_replay"
TOKEN = "e2e-inspector-token-0123456789"
WAIT_S = 15.0
SCREENSHOTS = Path(__file__).resolve().parents[2] / ".cache" / "screenshots"

RECORDED_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>Recorded shop</title>
<style>
  body { font-family: sans-serif; margin: 0; background: #fff; }
  .hero { background: rgb(30, 90, 200); color: #fff; padding: 40px; font-size: 28px; }
  .card { margin: 24px 40px; padding: 16px; border: 2px solid #333; }
</style>
<script src="/sdk.js"></script>
<script src="/app.js"></script>
</head><body>
<div class="hero">Checkout page of the recorded shop</div>
<div class="card"><p>Order summary: three items.</p>
<label>Card holder <input id="holder" name="holder" autofocus></label>
<button id="add" type="button">Add a note</button>
<div id="notes"></div></div>
</body></html>"""

# The init the middleware's loader would make in local mode (absolute URLs: PROTOCOL §1.7).
APP_JS = """
window.__ready = sessionReplay.init("local", {
  deviceId: %(device)s, sessionId: %(session)d, sampleRate: 1, serverZone: "US",
  trackServerUrl: location.origin + "/_replay/track",
  configServerUrl: location.origin + "/_replay/config",
  eagerFullSnapshotSend: true,
}).promise;
document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("add").addEventListener("click", () => {
    const p = document.createElement("p");
    p.className = "note";
    p.textContent = "Note added by a click";
    const more = document.createElement("input");
    more.className = "note-input";
    more.autofocus = true;
    document.getElementById("notes").append(p, more);
  });
});
"""
# A single-page app's navigation: the SDK's URL-tracking plugin reports it.
PAYMENT_PATH = "/checkout/payment"


class RecordingApp:
    """The app: a page recorded by the SDK, local /config and /track, and the inspector."""

    def __init__(self, store: LocalStore, sdk: bytes, device: str, session: int) -> None:
        self.store = store
        self.sdk = sdk
        self.device = device
        self.session = session
        self.inspector = Inspector(store, PREFIX, token=TOKEN)
        self.page_url = ""

    def app(self) -> Starlette:
        async def page(request: Request) -> Response:
            return HTMLResponse(RECORDED_PAGE, headers={"Cache-Control": "no-store"})

        async def sdk(request: Request) -> Response:
            return Response(self.sdk, media_type="text/javascript")

        async def app_js(request: Request) -> Response:
            body = APP_JS % {"device": json.dumps(self.device), "session": self.session}
            return Response(body, media_type="text/javascript")

        async def config(request: Request) -> Response:
            return Response(LOCAL_REMOTE_CONFIG, media_type="application/json")

        async def track(request: Request) -> Response:
            body = await request.body()
            info = request_info(request.scope)
            self.store.add(info.query_string, dict(info.headers), body, int(time.time() * 1000))
            return Response(b'{"code":200}', media_type="application/json")

        async def inspect(request: Request) -> Response:
            result = self.inspector.handle(request_info(request.scope))
            return Response(result.body, result.status, headers=dict(result.headers))

        return Starlette(
            routes=[
                Route("/sdk.js", sdk),
                Route("/app.js", app_js),
                Route(PREFIX + "/config/{key}", config),
                Route(PREFIX + "/track", track, methods=["POST"]),
                Route(PREFIX + "/inspect{rest:path}", inspect, methods=["GET", "HEAD", "POST"]),
                Route("/{path:path}", page),
            ]
        )


def wait_until(predicate: Callable[[], Any], what: str, timeout: float = WAIT_S) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[LocalStore]:
    with LocalStore(tmp_path / "store") as s:
        yield s


@pytest.fixture
def recorded(
    store: LocalStore, sdk_bundle: bytes, live_server: Callable[[Any], str], browser: Browser
) -> tuple[str, RecordingApp]:
    """A session recorded by the real SDK; returns the base URL and the app."""
    lab = RecordingApp(store, sdk_bundle, str(uuid.uuid4()), int(time.time() * 1000) - 5_000)
    base = live_server(lab.app())
    context = browser.new_context(viewport={"width": 1000, "height": 640})
    try:
        page = context.new_page()
        # A hostile URL: its query must come back escaped in the inspector's pages.
        page.goto(base + "/checkout?q=%3C/script%3E%3Cb%3E%22x'")
        lab.page_url = page.url  # as the browser normalised it (the quote becomes %27)
        page.evaluate("() => window.__ready")
        wait_until(
            lambda: any(e["type"] == 2 for e in store.events(lab.device, str(lab.session))),
            "the full snapshot upload",
        )
        page.fill("#holder", "Jane Secret")
        page.click("#add")
        page.wait_for_timeout(300)
        page.evaluate(f"() => history.pushState({{}}, '', {PAYMENT_PATH!r})")
        page.wait_for_timeout(300)
        # Page exit sends the tail twice: keepalive fetch and v2 beacon (PROTOCOL §1.3). The
        # event is dispatched by hand so that the page lives until the fetch has left too.
        page.evaluate("() => window.dispatchEvent(new PageTransitionEvent('pagehide'))")
        wait_until(
            lambda: sum(u.duplicates for u in store.uploads(lab.device, str(lab.session))),
            "both page-exit uploads (the second one's events all duplicates)",
        )
    finally:
        context.close()
    return base, lab


def session_url(base: str, lab: RecordingApp) -> str:
    return f"{base}{PREFIX}/inspect/{quote(lab.device, safe='')}/{lab.session}"


def sign_in(page: Page, base: str) -> None:
    """Open the inspector with its token: the browser keeps the cookie for what follows."""
    response = page.goto(f"{base}{PREFIX}/inspect?token={TOKEN}")
    assert response is not None and response.status == 200


def test_recording_is_stored_once_with_its_page(
    recorded: tuple[str, RecordingApp], store: LocalStore
) -> None:
    _, lab = recorded
    uploads = store.uploads(lab.device, str(lab.session))
    events = store.events(lab.device, str(lab.session))

    assert {u.version for u in uploads} >= {1, 2}
    assert any(u.compressed for u in uploads), "the SDK gzips its fetch uploads"
    assert all(u.error is None for u in uploads)
    assert sum(u.duplicates for u in uploads) > 0, "the page-exit tail arrives twice"
    fingerprints = [json.dumps(e, sort_keys=True) for e in events]
    assert len(fingerprints) == len(set(fingerprints))
    assert [e["timestamp"] for e in events] == sorted(e["timestamp"] for e in events)
    assert [e["type"] for e in events[:2]] == [4, 2]
    [summary] = store.sessions()
    base, _ = recorded
    assert summary.pages == (lab.page_url, base + PAYMENT_PATH)
    assert "Jane Secret" not in json.dumps(events), "inputs are masked by default"
    assert '"autofocus"' in json.dumps(events), "stored as recorded; the player's copy is not"


def test_session_page_replays_the_recording_without_csp_violations(
    recorded: tuple[str, RecordingApp],
    page: Page,
    csp_violations: Callable[[Page], list[dict[str, Any]]],
) -> None:
    base, lab = recorded
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    # Chromium's own messages too ("Blocked autofocusing on a <input> element because the
    # element's frame is sandboxed ...", logged by the replayer's iframe on every rebuild).
    console: list[str] = []
    page.on("console", lambda message: console.append(f"{message.type}: {message.text}"))
    page.set_viewport_size({"width": 1280, "height": 1000})

    # Without the token: the plain 404, as for anyone not allowed.
    refused = page.goto(base + PREFIX + "/inspect")
    assert refused is not None and refused.status == 404
    console.clear()  # chromium logs the 404; what follows must log nothing
    # The URL the start-up log prints: a 303 sets the cookie and drops the token from the URL.
    listing = page.goto(f"{base}{PREFIX}/inspect?token={TOKEN}")
    assert listing is not None and listing.status == 200
    assert page.url == base + PREFIX + "/inspect"
    redirect = listing.request.redirected_from
    assert redirect is not None and redirect.url.endswith("?token=" + TOKEN)
    [cookie] = [c for c in page.context.cookies() if c["name"] == lab.inspector.cookie_name]
    assert (cookie["value"], cookie["path"], cookie["httpOnly"], cookie["sameSite"]) == (
        TOKEN,
        PREFIX + "/inspect",
        True,
        "Strict",
    )
    assert page.evaluate("() => document.cookie").find(lab.inspector.cookie_name) == -1
    assert listing.headers["content-security-policy"] == INSPECTOR_CSP
    row = page.locator("table.sessions tbody tr")
    assert row.count() == 1
    assert row.locator(".url").first.inner_text() == lab.page_url
    assert csp_violations(page) == []
    row.locator("a").click()
    page.wait_for_url(session_url(base, lab))

    page.wait_for_function("() => window.__replayInspector", timeout=WAIT_S * 1000)
    assert page.evaluate("() => window.__replayInspector.error || null") is None
    frame = page.frame_locator(".replayer-wrapper iframe")
    frame.locator("text=Checkout page of the recorded shop").wait_for(timeout=WAIT_S * 1000)
    # Play it: the click's mutation is replayed once although its events came twice.
    page.evaluate("() => window.__replayInspector.player.goto(0, true)")
    frame.locator("p.note").first.wait_for(timeout=WAIT_S * 1000)
    assert frame.locator("p.note").count() == 1
    assert frame.locator("p.note").inner_text() == "Note added by a click"
    assert frame.locator("input.note-input").count() == 1
    assert frame.locator("#holder").get_attribute("autofocus") is None
    hero = frame.locator(".hero").evaluate("e => getComputedStyle(e).backgroundColor")
    assert hero == "rgb(30, 90, 200)", "the recorded page's <style> applies in the replay"
    assert "autofocus" not in json.dumps(page.evaluate("() => window.__replayInspector.events"))

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    shot = page.screenshot(path=str(SCREENSHOTS / "inspector-session.png"), full_page=True)
    assert len(shot) > 10_000
    assert csp_violations(page) == []
    assert errors == []
    assert [m for m in console if "autofocus" in m.lower() or m.startswith("error")] == []


def test_session_page_lists_the_pages_and_replays_from_one(
    recorded: tuple[str, RecordingApp], page: Page
) -> None:
    base, lab = recorded
    sign_in(page, base)
    page.goto(session_url(base, lab))
    page.wait_for_function("() => window.__replayInspector", timeout=WAIT_S * 1000)

    rows = page.locator("table.stays tbody tr")
    assert rows.locator(".page-url").all_inner_texts() == [lab.page_url, base + PAYMENT_PATH]
    offsets = rows.locator(".offset").all_inner_texts()
    assert offsets[0].startswith("+0:0"), offsets  # the page's load, seconds into the visit
    visit = page.locator("#visit").inner_text()
    assert "the session's start to its last known activity" in visit
    # The second page: the player jumps to the pushState.
    events = page.evaluate("() => window.__replayInspector.events")
    pushed = next(
        e["timestamp"]
        for e in events
        if e["type"] == 6 and e["data"]["payload"]["href"] == base + PAYMENT_PATH
    )
    rows.nth(1).locator("button.seek").click()
    now = page.evaluate("() => window.__replayInspector.player.getReplayer().getCurrentTime()")
    assert now >= pushed - events[0]["timestamp"] - 50
    page.frame_locator(".replayer-wrapper iframe").locator("p.note").wait_for(timeout=WAIT_S * 1000)


def test_events_json_is_one_click_away(recorded: tuple[str, RecordingApp], page: Page) -> None:
    base, lab = recorded
    sign_in(page, base)
    page.goto(session_url(base, lab))
    with page.expect_navigation():
        page.click("text=events.json")
    events = json.loads(page.locator("body").inner_text())
    assert [e["type"] for e in events[:2]] == [4, 2]


def test_missing_session_is_a_404_page(recorded: tuple[str, RecordingApp], page: Page) -> None:
    base, lab = recorded
    sign_in(page, base)
    response = page.goto(f"{base}{PREFIX}/inspect/{lab.device}/1")
    assert response is not None and response.status == 404
    assert "Session not found" in page.content()


def test_token_link_on_another_site_opens_the_inspector(
    store: LocalStore, sdk_bundle: bytes, live_server: Callable[[Any], str], page: Page
) -> None:
    # The start-up URL clicked on another site (a web chat, a CI log): the browser sends no
    # SameSite=Strict cookie on a redirect of that navigation, nor on reloads of it.
    lab = RecordingApp(store, sdk_bundle, str(uuid.uuid4()), int(time.time() * 1000))
    base = live_server(lab.app())
    other_site = base.replace("127.0.0.1", "localhost")  # another host: another site
    page.goto(other_site + "/sdk.js")  # a document with no recorder in it
    link = f"{base}{PREFIX}/inspect?token={TOKEN}"
    page.evaluate(
        "(url) => { const a = document.createElement('a'); a.href = url; a.id = 'open';"
        " a.textContent = 'inspector'; document.body.prepend(a); }",
        link,
    )
    page.click("#open")
    page.wait_for_url(base + PREFIX + "/inspect")
    assert "No sessions recorded yet" in page.content()
    reloaded = page.reload()
    assert reloaded is not None and reloaded.status == 200
