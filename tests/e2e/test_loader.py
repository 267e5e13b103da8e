"""The browser loader (static/loader.js, SPEC N3) driving the real SDK bundle in chromium.

The server is a small Starlette app written here, not the project's middleware: it renders the
data block by hand, serves the loader and the vendored SDK, and plays the first-party endpoints
(config, track, session), recording what the browser sends. Every page gets
``eagerFullSnapshotSend`` so the SDK uploads its first snapshot right after init (notes/e2e.md
§2.5) instead of at page exit.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import hashlib
import json
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import BrowserContext, Page
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from replay_middleware.routes import RouteRules

pytestmark = pytest.mark.e2e

LOADER = Path(__file__).resolve().parents[2] / "static" / "loader.js"
API_KEY = "0123456789abcdef"
NONCE = "dGVzdC1ub25jZS0xMjM0NTY3OA"
COOKIE = "replay_id"
OPT_OUT_COOKIE = "replay_id_optout"
#: The rule "/account/billing" exactly as the server exports it (routes.py).
EXCLUDE_BILLING = RouteRules(("/account/billing",), None).to_js()["exclude"]
PROPS_KEY = "[Amplitude] Session Replay ID"
WAIT_S = 10.0

# Observes the loader's calls into the SDK: the IIFE's top-level `var sessionReplay = ...`
# assigns through this accessor, which wraps init/shutdown/setSessionId before anyone calls them.
SDK_SPY = """
window.__srCalls = [];
(() => {
  let sr;
  Object.defineProperty(window, "sessionReplay", {
    configurable: true,
    get() { return sr; },
    set(value) {
      sr = value;
      for (const name of ["init", "shutdown", "setSessionId"]) {
        const orig = value[name];
        value[name] = function (...args) {
          const o = name === "init" ? args[1] : {sessionId: args[0], deviceId: args[1]};
          window.__srCalls.push({name, deviceId: o && o.deviceId, sessionId: o && o.sessionId,
                                 trackServerUrl: o && o.trackServerUrl,
                                 configServerUrl: o && o.configServerUrl});
          return orig.apply(this, args);
        };
      }
    },
  });
})();
"""


def now_ms() -> int:
    return int(time.time() * 1000)


def identity_cookie(device_id: str, session_id: int, last_activity: int) -> str:
    # The signature is the server's business; the loader ignores it.
    return f"{device_id}.{session_id}.{last_activity}.c2lnbmF0dXJlLW5vdC1jaGVja2Vk"


def page_config(
    *,
    ids: dict[str, Any] | None,
    record: bool | None = True,
    exclude: list[dict[str, str]] | None = None,
    include: list[dict[str, str]] | None = None,
    options: dict[str, Any] | None = None,
    static_sdk: bool = False,
    integrity: str = "",
    timeout_ms: int = 1_800_000,
) -> dict[str, Any]:
    """The data block, in the shape the lead fixed for the middleware."""
    return {
        "v": 1,
        "apiKey": API_KEY,
        "sdk": {"url": "/_replay/sdk/1.51.6.js", "integrity": integrity, "static": static_sdk},
        "session": {"url": "/_replay/session", "cookie": COOKIE, "timeoutMs": timeout_ms},
        "ids": ids,
        "record": record,
        "endpoints": {"track": "/_replay/track", "config": "/_replay/config"},
        "options": {
            "sampleRate": 1,
            "serverZone": "US",
            "privacyConfig": {"defaultMaskLevel": "medium"},
            "eagerFullSnapshotSend": True,
            **(options or {}),
        },
        "routes": {"exclude": exclude or [], "include": include},
        "optOutCookie": OPT_OUT_COOKIE,
    }


def fresh_ids(*, session_age_ms: int = 60_000, idle_ms: int = 1_000) -> dict[str, Any]:
    now = now_ms()
    return {
        "deviceId": str(uuid.uuid4()),
        "sessionId": now - session_age_ms,
        "lastActivity": now - idle_ms,
    }


@dataclass
class Upload:
    query: dict[str, str]
    headers: dict[str, str]
    events: list[dict[str, Any]]


@dataclass
class Lab:
    """The test server's state: what it answers and what it saw."""

    sdk: bytes
    config: dict[str, Any] = field(default_factory=dict)
    csp: str | None = None
    copies: int = 1  # how many data blocks + loader tags the page carries
    session_answer: dict[str, Any] | None = None
    sdk_gate: threading.Event | None = None  # when set: the SDK is served once it is released
    sdk_requests: int = 0
    sdk_bytes: int = 0
    config_requests: list[str] = field(default_factory=list)
    session_calls: int = 0
    uploads: list[Upload] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def integrity(self) -> str:
        return "sha384-" + base64.b64encode(hashlib.sha384(self.sdk).digest()).decode()

    def render(self) -> str:
        data = json.dumps(self.config).replace("<", "\\u003c")
        snippet = (
            f'<script type="application/json" id="replay-middleware-config">{data}</script>'
            f'<script async src="/_replay/loader-test.js" nonce="{NONCE}"'
            ' id="replay-middleware-loader"></script>'
        ) * self.copies
        if self.config["sdk"]["static"]:
            snippet += (
                f'<script async src="/_replay/sdk/1.51.6.js" nonce="{NONCE}"'
                f' integrity="{self.config["sdk"]["integrity"]}" crossorigin="anonymous"'
                ' id="replay-middleware-sdk"></script>'
            )
        return (
            "<!doctype html><html><head><meta charset=utf-8><title>Replay lab</title>"
            f"{snippet}</head><body><h1>Replay lab</h1><p>Hello from the lab page.</p>"
            '<label>Name <input id="name"></label></body></html>'
        )

    def app(self) -> Starlette:
        async def page(request: Request) -> Response:
            headers = {"Cache-Control": "no-store"}
            if self.csp:
                headers["Content-Security-Policy"] = self.csp
            return HTMLResponse(self.render(), headers=headers)

        async def loader(request: Request) -> Response:
            return Response(LOADER.read_bytes(), media_type="text/javascript")

        async def sdk(request: Request) -> Response:
            deadline = time.monotonic() + WAIT_S
            while self.sdk_gate and not self.sdk_gate.is_set() and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            with self.lock:
                self.sdk_requests += 1
                self.sdk_bytes += len(self.sdk)
            return Response(self.sdk, media_type="text/javascript")

        async def remote_config(request: Request) -> Response:
            self.config_requests.append(str(request.url))
            return JSONResponse({"configs": {"sessionReplay": {}}})

        async def track(request: Request) -> Response:
            body = await request.body()
            if request.headers.get("content-encoding") == "gzip":
                body = gzip.decompress(body)
            payload = json.loads(body)
            events = [json.loads(e) if isinstance(e, str) else e for e in payload["events"]]
            with self.lock:
                self.uploads.append(
                    Upload(dict(request.query_params), dict(request.headers), events)
                )
            return Response(status_code=200)

        async def session(request: Request) -> Response:
            with self.lock:
                self.session_calls += 1
            answer = self.session_answer
            assert answer is not None, "the test did not expect a /session call"
            response = JSONResponse(answer, headers={"Cache-Control": "no-store"})
            value = identity_cookie(answer["deviceId"], answer["sessionId"], answer["lastActivity"])
            response.set_cookie(COOKIE, value, max_age=365 * 86400)
            return response

        return Starlette(
            routes=[
                Route("/_replay/loader-test.js", loader),
                Route("/_replay/sdk/1.51.6.js", sdk),
                Route("/_replay/config/{key}", remote_config),
                Route("/_replay/track", track, methods=["POST"]),
                Route("/_replay/session", session),
                Route("/{path:path}", page),
            ]
        )

    def uploads_for(self, session_id: int) -> list[Upload]:
        with self.lock:
            return [u for u in self.uploads if u.query.get("session_id") == str(session_id)]


def wait_until(predicate: Callable[[], Any], what: str, timeout: float = WAIT_S) -> Any:
    """Poll ``predicate`` (server-side state) until it is truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def properties(page: Page) -> dict[str, str]:
    return dict(page.evaluate("() => window.replayMiddleware.getSessionReplayProperties()"))


def wait_recording(page: Page) -> None:
    """Until the SDK reports this session as recorded (init has joined the remote config)."""
    page.wait_for_function(
        "() => window.replayMiddleware &&"
        " Object.keys(window.replayMiddleware.getSessionReplayProperties()).length > 0",
        polling=50,
        timeout=WAIT_S * 1000,
    )


def sr_calls(page: Page) -> list[str]:
    return [c["name"] for c in page.evaluate("() => window.__srCalls")]


@pytest.fixture
def lab(sdk_bundle: bytes) -> Lab:
    return Lab(sdk=sdk_bundle)


@pytest.fixture
def serve(lab: Lab, live_server: Callable[[Any], str]) -> str:
    return live_server(lab.app())


@pytest.fixture
def spy(context: BrowserContext) -> None:
    context.add_init_script(SDK_SPY)


@pytest.fixture
def page_errors(page: Page) -> list[str]:
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    return errors


def set_identity_cookie(context: BrowserContext, base: str, value: str) -> None:
    context.add_cookies([{"name": COOKIE, "value": value, "url": base}])


# --- starting: ids and the record decision ---------------------------------------------------


def test_inline_ids_start_recording_with_absolute_endpoints(
    lab: Lab, serve: str, page: Page, spy: None, page_errors: list[str]
) -> None:
    ids = fresh_ids()
    lab.config = page_config(ids=ids, integrity=lab.integrity)

    page.goto(serve + "/")
    upload = wait_until(lambda: lab.uploads_for(ids["sessionId"]), "the first upload")[0]

    assert upload.query["device_id"] == ids["deviceId"]
    assert upload.headers["authorization"] == f"Bearer {API_KEY}"
    assert [e["type"] for e in upload.events[:2]] == [4, 2]  # Meta, FullSnapshot
    assert page.evaluate("() => sessionReplay.getSessionId()") == ids["sessionId"]
    assert page.evaluate("() => replayMiddleware.getSessionId()") == ids["sessionId"]
    wait_recording(page)
    assert properties(page) == {PROPS_KEY: f"{ids['deviceId']}/{ids['sessionId']}"}
    # Absolute URLs: the upload came from the SDK's blob: worker, where a relative URL fails.
    [init] = page.evaluate("() => window.__srCalls")
    assert init["trackServerUrl"] == serve + "/_replay/track"
    assert init["configServerUrl"] == serve + "/_replay/config"
    assert page.workers, "the SDK should upload from its blob: worker"
    assert lab.config_requests == [f"{serve}/_replay/config/{API_KEY}?config_group=browser"]
    assert (lab.sdk_requests, lab.sdk_bytes, lab.session_calls) == (1, len(lab.sdk), 0)
    # The SDK tag the loader created carries the nonce and SRI of the data block.
    tag = page.evaluate(
        "() => { const s = document.getElementById('replay-middleware-sdk');"
        " return [s.nonce, s.integrity, s.crossOrigin, s.async]; }"
    )
    assert tag == [NONCE, lab.integrity, "anonymous", True]
    assert page_errors == []


def test_record_false_loads_no_sdk(lab: Lab, serve: str, page: Page) -> None:
    ids = fresh_ids()
    lab.config = page_config(ids=ids, record=False)

    page.goto(serve + "/", wait_until="networkidle")

    assert (lab.sdk_requests, lab.sdk_bytes, lab.session_calls) == (0, 0, 0)
    assert lab.config_requests == []
    assert lab.uploads == []
    assert properties(page) == {}
    assert page.evaluate("() => replayMiddleware.getSessionId()") == ids["sessionId"]
    assert page.evaluate("() => typeof window.sessionReplay") == "undefined"


@pytest.mark.parametrize("record", [True, False], ids=["recorded", "not-recorded"])
def test_user_agnostic_page_asks_the_session_endpoint(
    lab: Lab, serve: str, context: BrowserContext, page: Page, record: bool
) -> None:
    answer = {**fresh_ids(), "record": record}
    lab.session_answer = answer
    lab.config = page_config(ids=None, record=None)

    page.goto(serve + "/", wait_until="networkidle" if not record else "load")

    if record:
        upload = wait_until(lambda: lab.uploads_for(answer["sessionId"]), "an upload")[0]
        assert upload.query["device_id"] == answer["deviceId"]
        assert lab.sdk_requests == 1
    else:
        assert (lab.sdk_requests, lab.uploads) == (0, [])
    assert lab.session_calls == 1
    assert page.evaluate("() => replayMiddleware.getSessionId()") == answer["sessionId"]
    cookies = {c["name"]: c["value"] for c in context.cookies(serve)}
    assert cookies[COOKIE].startswith(f"{answer['deviceId']}.{answer['sessionId']}.")


@pytest.mark.parametrize(
    "cookie",
    [
        pytest.param(lambda ids: None, id="no-cookie"),
        pytest.param(
            lambda ids: identity_cookie(ids["deviceId"], ids["sessionId"], ids["lastActivity"]),
            id="same-session",
        ),
        pytest.param(lambda ids: "garbage.not-a-number", id="malformed"),
    ],
)
def test_inline_ids_are_used_when_the_cookie_agrees(
    lab: Lab,
    serve: str,
    context: BrowserContext,
    page: Page,
    spy: None,
    cookie: Callable[[dict[str, Any]], str | None],
) -> None:
    ids = fresh_ids()
    lab.config = page_config(ids=ids)
    value = cookie(ids)
    if value is not None:
        set_identity_cookie(context, serve, value)

    page.goto(serve + "/")
    page.wait_for_function("() => window.__srCalls.length > 0", polling=50)

    calls = page.evaluate("() => window.__srCalls")
    assert [(c["name"], c["deviceId"], c["sessionId"]) for c in calls] == [
        ("init", ids["deviceId"], ids["sessionId"])
    ]
    assert lab.session_calls == 0


@pytest.mark.parametrize(
    "kind",
    [
        # A page from bfcache or a 304, rendered before the session rolled; the cookie value
        # as written, double-quoted (Python's cookie writer) or URL-encoded (some stacks).
        "cookie-has-newer-session",
        "cookie-has-newer-session-quoted",
        "cookie-has-newer-session-url-encoded",
        "cookie-has-other-device",
        "inactive-past-timeout",
    ],
)
def test_outdated_inline_ids_are_replaced_by_the_session_endpoint(
    lab: Lab, serve: str, context: BrowserContext, page: Page, spy: None, kind: str
) -> None:
    # Timeout 30 min; the inline last activity is 1 s old, or 31 min in the last case.
    ids = fresh_ids(idle_ms=31 * 60_000 if kind == "inactive-past-timeout" else 1_000)
    answer = {**fresh_ids(session_age_ms=0, idle_ms=0), "record": True}
    if kind != "cookie-has-other-device":
        answer["deviceId"] = ids["deviceId"]
    if kind.startswith("cookie-has-newer-session"):
        value = identity_cookie(ids["deviceId"], answer["sessionId"], now_ms())
        if kind.endswith("quoted"):
            value = f'"{value}"'
        elif kind.endswith("url-encoded"):
            value = value.replace(".", "%2E")
        set_identity_cookie(context, serve, value)
    elif kind == "cookie-has-other-device":  # even with an older session id
        set_identity_cookie(
            context, serve, identity_cookie(answer["deviceId"], ids["sessionId"] - 1, now_ms())
        )
    lab.session_answer = answer
    lab.config = page_config(ids=ids)

    page.goto(serve + "/")
    upload = wait_until(lambda: lab.uploads_for(answer["sessionId"]), "an upload")[0]

    assert upload.query["device_id"] == answer["deviceId"]
    assert lab.session_calls == 1
    assert [(c["name"], c["sessionId"]) for c in page.evaluate("() => window.__srCalls")] == [
        ("init", answer["sessionId"])
    ]
    assert lab.uploads_for(ids["sessionId"]) == []


# --- route rules and client-side navigation ---------------------------------------------------


def test_excluded_page_loads_nothing_until_navigation_leaves_it(
    lab: Lab, serve: str, page: Page, spy: None
) -> None:
    ids = fresh_ids()
    lab.config = page_config(ids=ids, exclude=EXCLUDE_BILLING)

    page.goto(serve + "/account/billing/cards", wait_until="networkidle")
    assert (lab.sdk_requests, lab.config_requests, lab.uploads) == (0, [], [])
    assert properties(page) == {}

    page.evaluate("() => history.pushState({}, '', '/dashboard')")
    upload = wait_until(lambda: lab.uploads_for(ids["sessionId"]), "an upload after leaving")[0]

    assert upload.headers["x-client-url"] == serve + "/dashboard"
    assert sr_calls(page) == ["init"]
    assert lab.sdk_requests == 1


def test_include_list_limits_recording_to_matching_paths(
    lab: Lab, serve: str, page: Page, spy: None
) -> None:
    ids = fresh_ids()
    lab.config = page_config(
        ids=ids, include=[{"source": "^/app/", "flags": ""}], exclude=EXCLUDE_BILLING
    )

    page.goto(serve + "/marketing", wait_until="networkidle")
    assert lab.sdk_requests == 0

    page.evaluate("() => history.replaceState({}, '', '/app/projects')")
    wait_until(lambda: lab.uploads_for(ids["sessionId"]), "an upload on an included path")
    assert sr_calls(page) == ["init"]


def test_entering_an_excluded_route_shuts_down_and_leaving_starts_again(
    lab: Lab, serve: str, page: Page, spy: None, page_errors: list[str]
) -> None:
    ids = fresh_ids()
    lab.config = page_config(ids=ids, exclude=EXCLUDE_BILLING)
    page.goto(serve + "/dashboard")
    wait_recording(page)

    # pushState returns the original's value and keeps `this`.
    assert page.evaluate("() => history.pushState({n: 1}, '', '/account/billing')") is None
    assert page.evaluate("() => history.state") == {"n": 1}
    assert properties(page) == {}  # synchronously: before the app renders the restricted page
    assert sr_calls(page) == ["init", "shutdown"]

    # Moving inside the excluded area, or only changing the hash, calls nothing again.
    page.evaluate("() => history.pushState({}, '', '/account/billing/invoices')")
    page.evaluate(
        "() => new Promise((done) => {"
        " addEventListener('hashchange', () => done(), {once: true}); location.hash = 'top'; })"
    )
    assert sr_calls(page) == ["init", "shutdown"]

    seen = len(lab.uploads)
    page.evaluate("() => history.pushState({}, '', '/dashboard')")
    wait_recording(page)
    assert sr_calls(page) == ["init", "shutdown", "init"]
    # Recording again: the re-init sends a fresh full snapshot from the allowed page.
    wait_until(
        lambda: [u for u in lab.uploads[seen:] if any(e["type"] == 2 for e in u.events)],
        "a full snapshot after leaving the excluded route",
    )
    # Moving between allowed paths changes nothing.
    page.evaluate("() => history.pushState({}, '', '/projects')")
    page.evaluate("() => history.replaceState({}, '', '/projects?tab=2')")
    page.evaluate("() => new Promise((done) => setTimeout(done, 50))")  # let a stray init run
    assert sr_calls(page) == ["init", "shutdown", "init"]
    assert lab.sdk_requests == 1  # loaded once, initialised twice
    assert page_errors == []


def test_encoded_control_characters_and_doubled_slashes_do_not_dodge_an_excluded_route(
    lab: Lab, serve: str, page: Page, spy: None, page_errors: list[str]
) -> None:  # issue 8, item 4: the exported rule, in a real browser, as the server decides
    lab.config = page_config(ids=fresh_ids(), exclude=EXCLUDE_BILLING)
    page.goto(serve + "/dashboard")
    wait_recording(page)
    expected = ["init"]
    for inside in ("/account/billing%0A", "/account/billing/%0D%0Ax", "/account//billing"):
        page.evaluate(f"() => history.pushState({{}}, '', {json.dumps(inside)})")
        expected.append("shutdown")
        assert sr_calls(page) == expected, inside
        page.evaluate("() => history.pushState({}, '', '/dashboard')")
        expected.append("init")  # once the (cached) SDK promise has settled
        page.wait_for_function(f"() => window.__srCalls.length === {len(expected)}")
        assert sr_calls(page) == expected
    page.evaluate("() => history.pushState({}, '', '/account/billing%C3%A9')")  # a sibling
    assert sr_calls(page) == expected
    assert page_errors == []


def test_leaving_for_an_excluded_route_while_the_sdk_loads_never_starts_it(
    lab: Lab, serve: str, page: Page, spy: None
) -> None:
    lab.config = page_config(ids=fresh_ids(), exclude=EXCLUDE_BILLING)
    lab.sdk_gate = threading.Event()
    page.goto(serve + "/dashboard", wait_until="commit")
    page.wait_for_selector("#replay-middleware-sdk", state="attached")

    # Out, in and out again while the SDK is still on its way.
    page.evaluate("() => history.pushState({}, '', '/account/billing')")
    page.evaluate("() => history.pushState({}, '', '/dashboard')")
    page.evaluate("() => history.pushState({}, '', '/account/billing')")
    lab.sdk_gate.set()
    page.wait_for_function("() => window.sessionReplay", polling=20)
    page.evaluate("() => new Promise((done) => setTimeout(done, 50))")  # let a stray init run
    assert sr_calls(page) == []
    assert lab.config_requests == []

    page.evaluate("() => history.pushState({}, '', '/dashboard')")
    wait_recording(page)
    assert sr_calls(page) == ["init"]


def test_back_and_forward_buttons_apply_the_rules(
    lab: Lab, serve: str, page: Page, spy: None
) -> None:
    lab.config = page_config(ids=fresh_ids(), exclude=EXCLUDE_BILLING)
    page.goto(serve + "/dashboard")
    wait_recording(page)
    page.evaluate("() => history.pushState({}, '', '/account/billing')")

    page.go_back()  # popstate to /dashboard
    wait_recording(page)
    assert sr_calls(page) == ["init", "shutdown", "init"]

    page.go_forward()  # popstate into /account/billing
    page.wait_for_function("() => window.__srCalls.length === 4", polling=50)
    assert sr_calls(page) == ["init", "shutdown", "init", "shutdown"]
    assert properties(page) == {}


def test_a_route_rule_that_does_not_compile_is_ignored_with_one_warning(
    lab: Lab, serve: str, page: Page
) -> None:
    lab.config = page_config(
        ids=fresh_ids(),
        exclude=[{"source": "(", "flags": ""}, {"source": "[", "flags": ""}, *EXCLUDE_BILLING],
    )
    warnings: list[str] = []
    page.on("console", lambda m: m.type == "warning" and warnings.append(m.text))

    page.goto(serve + "/account/billing", wait_until="networkidle")

    assert lab.sdk_requests == 0  # the valid rule still applies
    assert len([w for w in warnings if w.startswith("[replay-middleware]")]) == 1


# --- one loader per page, opting out ----------------------------------------------------------


def test_a_second_snippet_does_not_start_a_second_recorder(
    lab: Lab, serve: str, page: Page, spy: None
) -> None:
    ids = fresh_ids()
    lab.config = page_config(ids=ids)
    lab.copies = 2

    page.goto(serve + "/", wait_until="networkidle")
    wait_until(lambda: lab.uploads_for(ids["sessionId"]), "an upload")

    assert lab.sdk_requests == 1
    assert sr_calls(page) == ["init"]
    assert page.evaluate("() => document.querySelectorAll('#replay-middleware-sdk').length") == 1


def test_opt_out_stops_recording_and_opt_in_resumes(
    lab: Lab, serve: str, context: BrowserContext, page: Page, spy: None
) -> None:
    ids = fresh_ids()
    lab.config = page_config(ids=ids)
    page.goto(serve + "/")
    wait_recording(page)

    page.evaluate("() => replayMiddleware.optOut()")

    assert properties(page) == {}
    assert sr_calls(page) == ["init", "shutdown"]
    [opt_out] = [c for c in context.cookies(serve) if c["name"] == OPT_OUT_COOKIE]
    assert (opt_out["value"], opt_out["path"], opt_out["sameSite"]) == ("1", "/", "Lax")
    assert opt_out["expires"] > time.time() + 364 * 86400

    seen = len(lab.uploads)
    page.evaluate("() => replayMiddleware.optIn()")
    wait_recording(page)
    assert sr_calls(page) == ["init", "shutdown", "init"]
    assert OPT_OUT_COOKIE not in {c["name"] for c in context.cookies(serve)}
    wait_until(lambda: len(lab.uploads) > seen, "an upload after opting back in")


def test_opted_out_visitor_loads_nothing_until_opting_in(
    lab: Lab, serve: str, context: BrowserContext, page: Page, spy: None
) -> None:
    ids = fresh_ids()
    lab.config = page_config(ids=ids)
    context.add_cookies([{"name": OPT_OUT_COOKIE, "value": "1", "url": serve}])

    page.goto(serve + "/", wait_until="networkidle")
    assert (lab.sdk_requests, lab.session_calls, lab.uploads) == (0, 0, [])

    page.evaluate("() => replayMiddleware.optIn()")
    wait_until(lambda: lab.uploads_for(ids["sessionId"]), "an upload after opting in")
    assert sr_calls(page) == ["init"]


# --- returning after inactivity --------------------------------------------------------------


def test_returning_after_the_session_timed_out_moves_the_recorder_to_the_new_session(
    lab: Lab, serve: str, page: Page, spy: None
) -> None:
    ids = fresh_ids()
    lab.config = page_config(ids=ids)
    page.goto(serve + "/")
    wait_recording(page)
    assert lab.session_calls == 0

    new = {"deviceId": ids["deviceId"], "sessionId": now_ms(), "lastActivity": now_ms()}
    lab.session_answer = {**new, "record": True}
    # The tab comes back 31 minutes later: move the page's clock, then signal visibility.
    page.evaluate(
        "() => { const real = Date.now; Date.now = () => real() + 31 * 60 * 1000;"
        " document.dispatchEvent(new Event('visibilitychange')); }"
    )

    wait_until(lambda: lab.uploads_for(new["sessionId"]), "an upload of the new session")
    assert lab.session_calls == 1
    calls = page.evaluate("() => window.__srCalls")
    assert [(c["name"], c["sessionId"], c["deviceId"]) for c in calls[1:]] == [
        ("setSessionId", new["sessionId"], new["deviceId"])
    ]
    assert page.evaluate("() => sessionReplay.getSessionId()") == new["sessionId"]


def test_returning_within_the_timeout_asks_nothing(lab: Lab, serve: str, page: Page) -> None:
    lab.config = page_config(ids=fresh_ids())
    page.goto(serve + "/")
    wait_recording(page)

    # The loader would call fetch synchronously from these handlers; count in the page.
    fetches = page.evaluate(
        "() => { const calls = []; const real = window.fetch;"
        " window.fetch = (...args) => { calls.push(String(args[0])); return real(...args); };"
        " document.dispatchEvent(new Event('visibilitychange'));"
        " window.dispatchEvent(new PageTransitionEvent('pageshow', {persisted: true}));"
        " return calls; }"
    )

    assert fetches == []
    assert lab.session_calls == 0


# --- CSP and Trusted Types ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "script_src",
    [
        pytest.param(f"'nonce-{NONCE}' 'strict-dynamic'", id="strict-dynamic"),
        # Without 'strict-dynamic' the SDK tag the loader creates runs only with the nonce.
        pytest.param(f"'nonce-{NONCE}'", id="nonce-only"),
    ],
)
def test_strict_nonce_csp_records_without_violations(
    lab: Lab,
    serve: str,
    page: Page,
    csp_violations: Callable[[Page], list[dict[str, Any]]],
    script_src: str,
) -> None:
    ids = fresh_ids()
    lab.config = page_config(ids=ids, integrity=lab.integrity)
    lab.csp = f"default-src 'self'; script-src {script_src}; worker-src 'self' blob:"

    page.goto(serve + "/")
    wait_until(lambda: lab.uploads_for(ids["sessionId"]), "an upload")
    wait_recording(page)

    assert csp_violations(page) == []
    assert page.workers  # the blob: workers were allowed and used


def test_trusted_types_page_records_with_the_server_placed_sdk_tag(
    lab: Lab,
    serve: str,
    page: Page,
    csp_violations: Callable[[Page], list[dict[str, Any]]],
) -> None:
    ids = fresh_ids()
    lab.config = page_config(
        ids=ids, static_sdk=True, integrity=lab.integrity, options={"useWebWorker": False}
    )
    lab.csp = (
        f"default-src 'self'; script-src 'nonce-{NONCE}'; object-src 'none';"
        " require-trusted-types-for 'script'"
    )

    page.goto(serve + "/")
    wait_until(lambda: lab.uploads_for(ids["sessionId"]), "an upload")
    wait_recording(page)

    assert csp_violations(page) == []
    assert lab.sdk_requests == 1
    assert page.evaluate("() => document.querySelectorAll('script[src]').length") == 2


def test_a_blocked_sdk_never_breaks_the_page(
    lab: Lab,
    serve: str,
    page: Page,
    page_errors: list[str],
) -> None:
    # Trusted Types without the server-placed tag: the loader's script.src is refused.
    lab.config = page_config(ids=fresh_ids())
    lab.csp = f"script-src 'nonce-{NONCE}'; require-trusted-types-for 'script'"
    warnings: list[str] = []
    page.on("console", lambda m: m.type == "warning" and warnings.append(m.text))

    page.goto(serve + "/", wait_until="networkidle")

    assert lab.sdk_requests == 0
    assert page_errors == []
    assert any(w.startswith("[replay-middleware] could not start the recorder") for w in warnings)
    assert properties(page) == {}
