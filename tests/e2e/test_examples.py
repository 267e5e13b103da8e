"""The browser suite over every example: Debian chromium, the real SDK bundle, real servers.

Each test runs against each example in local mode (``sample_rate=1``, ``/account/billing``
excluded, the store in a temporary directory), served as it would be in production:

- ``fastapi-uvicorn``: the FastAPI example under uvicorn (``live_server``, in a thread);
- ``flask-werkzeug``: the Flask example under werkzeug (``live_wsgi_server``, in a thread);
- ``django-uvicorn-asgi`` / ``django-gunicorn-wsgi``: the Django example in a subprocess
  (Django can be configured once per process, and tests/test_django.py configures it for its
  own settings) under uvicorn (Django's ASGI handler: the middleware runs in async mode) and
  under gunicorn (WSGI, sync mode). With the default config one server per kind serves the
  whole module; ``example.restart(...)`` starts a fresh one for the test.

Only Flask and Django have a ``/manual`` page (the template places the snippet itself); which
of its checks apply is part of each example's ``Spec``.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import BrowserContext, Page, Request

from examples.article import END_MARKER
from examples.fastapi_app.app import create_app as create_fastapi_app
from examples.flask_app.app import create_app as create_flask_app
from replay_middleware import ReplayConfig
from tests.e2e.django_server import DjangoServers
from tests.e2e.real_pages import (
    ADMIN_LAST_ROW,
    ARTICLE_KB,
    INSPECTOR_TOKEN,
    STAYS,
    admin_sign_in,
    article_path,
    assert_player_shows,
    failed_uploads,
    ids,
    seed_django_db,
    stay_and_leave,
    wait_for_stored_snapshot,
)

pytestmark = pytest.mark.e2e

WAIT_MS = 10_000
PROPS = "() => window.replayMiddleware && window.replayMiddleware.getSessionReplayProperties()"
NOT_RECORDING = f"() => JSON.stringify({PROPS[6:]}) === '{{}}'"
DEFAULTS: dict[str, Any] = {
    "sample_rate": 1.0,
    "exclude": ("/account/billing",),
    "inspector_token": INSPECTOR_TOKEN,
}

# Checks of the ``/manual`` page (the snippet placed by the app's template):
SESSION = "session"  # the SDK records there with the cookie's session id
SNIPPET_ONCE = "snippet-once"  # one config script, decision header ``manual``
APP_SCRIPT_CSP = "app-script-csp"  # the page's own script runs under its CSP, zero violations
NONCE_REUSE = "nonce-reuse"  # the loader carries the nonce the app's CSP already allows


@dataclass(frozen=True)
class Spec:
    name: str
    manual: frozenset[str] = frozenset()


SPECS = [
    Spec("fastapi-uvicorn"),
    Spec("flask-werkzeug", frozenset({SESSION, SNIPPET_ONCE, APP_SCRIPT_CSP, NONCE_REUSE})),
    # Django's /manual page sets no CSP and runs no app script of its own.
    Spec("django-uvicorn-asgi", frozenset({SESSION, SNIPPET_ONCE})),
    Spec("django-gunicorn-wsgi", frozenset({SESSION, SNIPPET_ONCE})),
]


def examples(manual: str | None = None) -> pytest.MarkDecorator:
    """Parametrize ``example`` over every example, or those whose ``/manual`` page ``manual``
    check applies to."""
    names = [s.name for s in SPECS if manual is None or manual in s.manual]
    return pytest.mark.parametrize("example", names, indirect=True)


@dataclass
class Example:
    """One example under one server: ``base`` serves the default config;
    ``restart(**overrides)`` serves ``ReplayConfig`` overrides and returns (and keeps) the new
    base URL."""

    spec: Spec
    base: str
    _start: Callable[..., str]

    def restart(self, **overrides: Any) -> str:
        self.base = self._start(**overrides)
        return self.base


def fresh_dir(parent: Path) -> Path:
    """A new directory under ``parent``: each server started keeps its own local store."""
    return Path(tempfile.mkdtemp(prefix="store-", dir=parent))


def _django_env(store: Path, overrides: dict[str, Any]) -> dict[str, str]:
    """``REPLAY_*`` variables for ``overrides`` (coerced by the example's settings)."""
    env = {"REPLAY_LOCAL_STORE_DIR": str(store), "REPLAY_INSPECTOR_TOKEN": INSPECTOR_TOKEN}
    for key, value in overrides.items():
        text = value if isinstance(value, str) else json.dumps(value)
        env[f"REPLAY_{key.upper()}"] = text
    return env


@pytest.fixture(scope="module")
def django_db(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The Django example's database, seeded once for the module (the admin and 200 users)."""
    return seed_django_db(tmp_path_factory.mktemp("django-db") / "db.sqlite3")


@pytest.fixture(scope="module")
def django_default_servers(
    tmp_path_factory: pytest.TempPathFactory, django_db: dict[str, str]
) -> Iterator[Callable[[str], str]]:
    """``base(kind)``: the Django example with its default config under ``kind``, started on
    first use and shared by the module's tests."""
    root = tmp_path_factory.mktemp("django-default")
    servers = DjangoServers(root)
    started: dict[str, str] = {}

    def base(kind: str) -> str:
        if kind not in started:
            started[kind] = servers.start(kind, **_django_env(root / "store", {}), **django_db)
        return started[kind]

    try:
        yield base
    finally:
        servers.stop_all()


@pytest.fixture(params=[s.name for s in SPECS])
def example(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Example]:
    spec = next(s for s in SPECS if s.name == request.param)
    if spec.name.startswith("django-"):
        kind = spec.name.removeprefix("django-")
        servers = DjangoServers(tmp_path)
        db: dict[str, str] = request.getfixturevalue("django_db")

        def start_django(**overrides: Any) -> str:
            return servers.start(kind, **_django_env(fresh_dir(tmp_path), overrides), **db)

        default: Callable[[str], str] = request.getfixturevalue("django_default_servers")
        try:
            yield Example(spec, default(kind), start_django)
        finally:
            servers.stop_all()
        return

    if spec.name == "flask-werkzeug":
        serve: Callable[[Any], str] = request.getfixturevalue("live_wsgi_server")
        create_app: Callable[[ReplayConfig], Any] = create_flask_app
    else:
        serve = request.getfixturevalue("live_server")
        create_app = create_fastapi_app

    def start_in_process(**overrides: Any) -> str:
        config = {**DEFAULTS, "local_store_dir": str(fresh_dir(tmp_path)), **overrides}
        return serve(create_app(ReplayConfig(**config)))

    yield Example(spec, start_in_process(), start_in_process)


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


def assert_records_first_party_with_the_cookie_session(
    page: Page, context: BrowserContext, base: str, path: str
) -> None:
    urls = record_requests(page)
    page.goto(base + path)
    props = wait_recording(page)
    device, session = session_cookie(context)
    assert page.evaluate("() => window.sessionReplay.getSessionId()") == session
    assert props["[Amplitude] Session Replay ID"] == f"{device}/{session}"
    assert base + "/_replay/sdk/1.51.6.js" in urls
    assert not [u for u in urls if "amplitude.com" in u]


def assert_app_script_runs_with_zero_violations(
    page: Page, csp_violations: Callable[[Page], list[dict[str, Any]]], url: str
) -> None:
    page.goto(url)
    wait_recording(page)
    assert page.text_content("#app-script") == "app script ran"
    page.wait_for_timeout(300)  # let late worker/connect violations surface
    assert csp_violations(page) == []


def test_sdk_loads_first_party_with_the_cookie_session(
    example: Example, page: Page, context: BrowserContext
) -> None:
    assert_records_first_party_with_the_cookie_session(page, context, example.base, "/")


@pytest.mark.parametrize("path", ["/csp/strict", "/csp/inline"])
def test_csp_pages_run_with_zero_violations(
    example: Example,
    page: Page,
    csp_violations: Callable[[Page], list[dict[str, Any]]],
    path: str,
) -> None:
    assert_app_script_runs_with_zero_violations(page, csp_violations, example.base + path)


def test_restricted_page_loads_no_sdk(example: Example, page: Page) -> None:
    urls = record_requests(page)
    page.goto(example.base + "/account/billing")
    page.wait_for_load_state("networkidle")
    assert not [u for u in urls if "/_replay/" in u]
    assert page.evaluate("() => typeof window.sessionReplay") == "undefined"
    assert "replay-middleware" not in page.content()


def test_pushstate_into_restricted_area_shuts_down_and_leaving_restarts(
    example: Example, page: Page
) -> None:
    page.goto(example.base + "/spa")
    first = wait_recording(page)
    page.click("text=Billing (client-side)")
    page.wait_for_function(NOT_RECORDING, timeout=WAIT_MS)
    assert page.evaluate("() => location.pathname") == "/account/billing"
    page.click("text=Settings")
    assert wait_recording(page) == first
    page.go_back()  # popstate back into the restricted area
    page.wait_for_function(NOT_RECORDING, timeout=WAIT_MS)


def test_unsampled_session_downloads_zero_sdk_bytes(example: Example, page: Page) -> None:
    base = example.restart(sample_rate=0)
    urls = record_requests(page)
    page.goto(base + "/")
    page.wait_for_load_state("networkidle")
    assert not [u for u in urls if "/sdk/" in u or "amplitude.com" in u]
    assert page.evaluate("() => typeof window.sessionReplay") == "undefined"
    assert "replay-middleware-config" not in page.content()


def test_uploads_arrive_in_the_local_store(example: Example, page: Page) -> None:
    base = example.restart(
        sdk_options={"flushIntervalConfig": {"minIntervalMs": 200, "maxIntervalMs": 1000}}
    )
    page.goto(base + "/signin")
    wait_recording(page)
    with page.expect_response(lambda r: "/_replay/track" in r.url, timeout=WAIT_MS) as info:
        page.fill("#email", "someone@example.com")
        page.type("#password", "hunter2-secret", delay=5)
        page.click("h1")
        page.evaluate("() => window.dispatchEvent(new Event('blur'))")
    assert info.value.status == 200


# -- /manual: the app's template places the snippet itself --------------------------------------


@examples(manual=SESSION)
def test_manual_page_records_first_party_with_the_cookie_session(
    example: Example, page: Page, context: BrowserContext
) -> None:
    assert_records_first_party_with_the_cookie_session(page, context, example.base, "/manual")


@examples(manual=SNIPPET_ONCE)
def test_manual_page_holds_one_snippet_and_says_manual(example: Example, page: Page) -> None:
    response = page.goto(example.base + "/manual")
    assert response is not None
    assert page.content().count('id="replay-middleware-config"') == 1
    assert response.headers["x-replay-decision"] == "manual"
    wait_recording(page)


@examples(manual=APP_SCRIPT_CSP)
def test_manual_page_runs_with_zero_violations(
    example: Example, page: Page, csp_violations: Callable[[Page], list[dict[str, Any]]]
) -> None:
    assert_app_script_runs_with_zero_violations(page, csp_violations, example.base + "/manual")


@examples(manual=NONCE_REUSE)
def test_manual_placement_reuses_the_app_nonce(example: Example, page: Page) -> None:
    page.goto(example.base + "/manual")
    loader_nonce = page.evaluate("() => document.getElementById('replay-middleware-loader').nonce")
    app_nonce = page.evaluate("() => document.querySelector('body script[nonce]').nonce")
    assert loader_nonce
    assert loader_nonce == app_nonce
    wait_recording(page)


# -- real-size pages (issue 7): the replay holds the page, whatever its size and the stay -------


@pytest.mark.parametrize("stay", STAYS)
@pytest.mark.parametrize("kb", ARTICLE_KB)
def test_long_page_replays_with_its_content(
    example: Example, page: Page, kb: int, stay: str
) -> None:
    failed = failed_uploads(page)
    page.goto(example.base + article_path(kb))
    stay_and_leave(page, example.base, stay)
    device, session = ids(page)
    wait_for_stored_snapshot(example.base, device, session, END_MARKER)
    assert failed == []
    assert_player_shows(page, example.base, device, session, END_MARKER)


@pytest.mark.parametrize("stay", STAYS)
@pytest.mark.parametrize("example", ["django-uvicorn-asgi", "django-gunicorn-wsgi"], indirect=True)
def test_django_admin_changelist_replays_with_its_rows(
    example: Example, page: Page, stay: str
) -> None:
    failed = failed_uploads(page)
    admin_sign_in(page, example.base)
    stay_and_leave(page, example.base, stay)
    device, session = ids(page)
    wait_for_stored_snapshot(example.base, device, session, ADMIN_LAST_ROW)
    assert failed == []
    assert_player_shows(
        page, example.base, device, session, ADMIN_LAST_ROW, from_page="/admin/auth/user/"
    )
