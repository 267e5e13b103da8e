"""The real SDK in Debian chromium records each example, and its uploads reach a fake Amplitude
through the first-party proxy (and, in local mode, the FastAPI example's inspector).

The proxy-mode tests run over the three examples, each under a real server on 127.0.0.1:
FastAPI under uvicorn (ASGI), Flask under werkzeug (WSGI), Django under gunicorn (WSGI, in a
subprocess: ``REPLAY_API_KEY`` and ``REPLAY_TEST_UPSTREAM`` point it at the fake).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page

from examples.article import END_MARKER
from examples.fastapi_app.app import create_app as create_fastapi_app
from examples.flask_app.app import create_app as create_flask_app
from replay_middleware import ReplayConfig
from replay_middleware.payloads import DecodedPayload, decode_payload
from tests.e2e.django_server import DjangoServers
from tests.e2e.real_pages import (
    ADMIN_LAST_ROW,
    ARTICLE_KB,
    INSPECTOR_TOKEN,
    STAYS,
    admin_sign_in,
    article_path,
    seed_django_db,
    snapshot_holds,
    stay_and_leave,
)
from tests.fake_amplitude import FakeAmplitude, Recorded, Reply

pytestmark = pytest.mark.e2e

KEY = "0123456789abcdef0123456789abcdef"
PASSWORD = "hunter2-Sup3rSecret"
WAIT_S = 15.0


SDK_OPTIONS = {"flushIntervalConfig": {"minIntervalMs": 200, "maxIntervalMs": 1000}}


@pytest.fixture(scope="module")
def django_db(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The Django example's database, seeded once for the module (the admin and 200 users)."""
    return seed_django_db(tmp_path_factory.mktemp("django-db") / "db.sqlite3")


@pytest.fixture
def django_servers(tmp_path: Path) -> Iterator[DjangoServers]:
    servers = DjangoServers(tmp_path)
    try:
        yield servers
    finally:
        servers.stop_all()


EXAMPLES = ["fastapi-uvicorn", "flask-werkzeug", "django-gunicorn"]


@pytest.fixture(params=EXAMPLES)
def proxied(request: pytest.FixtureRequest, fake_amplitude: FakeAmplitude) -> str:
    """The example in proxy mode (API key ``KEY``), its upload proxy on the fake, flushing
    often (``SDK_OPTIONS``)."""
    return start_proxied(request, fake_amplitude, SDK_OPTIONS)


@pytest.fixture(params=EXAMPLES)
def proxied_defaults(request: pytest.FixtureRequest, fake_amplitude: FakeAmplitude) -> str:
    """As ``proxied``, with the SDK options a user gets by default (the real cadence)."""
    return start_proxied(request, fake_amplitude, {})


def start_proxied(
    request: pytest.FixtureRequest, fake_amplitude: FakeAmplitude, sdk_options: dict[str, Any]
) -> str:
    # A project config with no sampling settings: the SDK records with the local rate (1.0).
    fake_amplitude.set_default("config", Reply.config(b'{"configs":{"sessionReplay":{}}}'))
    if request.param == "django-gunicorn":
        servers: DjangoServers = request.getfixturevalue("django_servers")
        db: dict[str, str] = request.getfixturevalue("django_db")
        return servers.start(
            "gunicorn-wsgi",
            REPLAY_API_KEY=KEY,
            REPLAY_SECRET_KEY="e2e-secret-key-0123456789",
            REPLAY_SDK_OPTIONS=json.dumps(sdk_options),
            REPLAY_TEST_UPSTREAM=fake_amplitude.url,
            **db,
        )
    config = ReplayConfig(
        api_key=KEY,
        secret_key="e2e-secret-key-0123456789",
        sample_rate=1.0,
        exclude=("/account/billing",),
        sdk_options=sdk_options,
    )
    if request.param == "flask-werkzeug":
        serve_wsgi: Callable[[Any], str] = request.getfixturevalue("live_wsgi_server")
        return serve_wsgi(create_flask_app(config, upstreams=fake_amplitude.upstreams()))
    serve: Callable[[Any], str] = request.getfixturevalue("live_server")
    return serve(create_fastapi_app(config, upstreams=fake_amplitude.upstreams()))


def decoded(rec: Recorded) -> DecodedPayload:
    assert rec.body is not None
    result = decode_payload(
        rec.body, query_string=rec.query, content_encoding=rec.header("content-encoding")
    )
    assert isinstance(result, DecodedPayload), result
    return result


def uploads(fake: FakeAmplitude) -> list[Recorded]:
    return [r for r in fake.requests_for("track") if r.complete]


def flush(page: Page) -> None:
    page.evaluate("() => window.dispatchEvent(new Event('blur'))")


def leave_page(page: Page) -> None:
    """Fire ``pagehide`` with events still queued (a fresh DOM mutation, recorded after one
    task), so the SDK has something to send by beacon even if its timer flushed just before."""
    page.evaluate(
        "async () => { document.querySelector('h1').append(' '); "
        "await new Promise((r) => setTimeout(r, 0)); "
        "window.dispatchEvent(new Event('pagehide')); }"
    )


def record_sign_in(page: Page, base: str) -> None:
    page.goto(base + "/signin")
    page.wait_for_function(
        "() => { const p = window.replayMiddleware && window.replayMiddleware.getSessionReplayProperties();"
        " return p && p['[Amplitude] Session Replay ID']; }",
        timeout=10_000,
    )
    page.fill("#email", "alice@example.com")
    page.type("#password", PASSWORD, delay=5)
    page.click("h1")
    flush(page)


def test_uploads_reach_amplitude_through_the_proxy(
    proxied: str, page: Page, fake_amplitude: FakeAmplitude
) -> None:
    record_sign_in(page, proxied)
    assert fake_amplitude.wait_until(lambda: len(uploads(fake_amplitude)) >= 1, WAIT_S)
    [cookie] = [c for c in page.context.cookies() if c["name"] == "replay_id"]
    device, session = cookie["value"].split(".")[:2]
    for rec in uploads(fake_amplitude):
        assert rec.path.endswith("/sessions/v2/track")
        assert f"device_id={device}" in rec.query and f"session_id={session}" in rec.query
        assert rec.header("cookie") is None
        if "api_key=" not in rec.query:
            assert rec.header("authorization") == f"Bearer {KEY}"
    [config_fetch, *_] = fake_amplitude.requests_for("config")
    assert config_fetch.path.endswith(f"/config/{KEY}") and config_fetch.header("cookie") is None


def test_typed_password_never_leaves_the_browser(
    proxied: str, page: Page, fake_amplitude: FakeAmplitude
) -> None:
    record_sign_in(page, proxied)
    leave_page(page)
    assert fake_amplitude.wait_until(lambda: len(uploads(fake_amplitude)) >= 2, WAIT_S)
    seen = b""
    for rec in uploads(fake_amplitude):
        payload = decoded(rec)
        seen += b"".join(e.json.encode() for e in payload.events)
    assert PASSWORD.encode() not in seen
    assert b"*" in seen  # the typed input was recorded, masked


def test_page_exit_beacon_is_accepted(
    proxied: str, page: Page, fake_amplitude: FakeAmplitude
) -> None:
    record_sign_in(page, proxied)
    leave_page(page)
    assert fake_amplitude.wait_until(
        lambda: any("api_key=" in r.query for r in uploads(fake_amplitude)), WAIT_S
    )
    [beacon, *_] = [r for r in uploads(fake_amplitude) if "api_key=" in r.query]
    assert re.search(rf"api_key={KEY}", beacon.query)
    assert beacon.header("authorization") is None and beacon.header("cookie") is None
    assert decoded(beacon).version == 2


def test_upstream_500_once_is_retried_and_nothing_is_lost(
    proxied: str, page: Page, fake_amplitude: FakeAmplitude
) -> None:
    fake_amplitude.script("track", Reply.error(500))
    record_sign_in(page, proxied)
    assert fake_amplitude.wait_until(lambda: len(uploads(fake_amplitude)) >= 1, WAIT_S)
    first = uploads(fake_amplitude)[0]
    lost = {e.fingerprint for e in decoded(first).events}
    assert lost, "the failed batch carried events"

    def retried() -> bool:
        later = uploads(fake_amplitude)[1:]
        return lost <= set().union(*({e.fingerprint for e in decoded(r).events} for r in later))

    # The SDK retries a 5xx after random() x attempt x 1 s (PROTOCOL §2).
    assert fake_amplitude.wait_until(retried, WAIT_S)


def test_local_mode_session_appears_in_the_inspector(
    live_server: Callable[[Any], str], page: Page, tmp_path: Path
) -> None:
    config = ReplayConfig(
        sample_rate=1.0,
        exclude=("/account/billing",),
        local_store_dir=str(tmp_path),
        inspector_token=INSPECTOR_TOKEN,
    )
    base = live_server(create_fastapi_app(config))
    record_sign_in(page, base)
    leave_page(page)
    session = page.evaluate("() => window.replayMiddleware.getSessionId()")
    deadline_ok = False
    for _ in range(60):
        page.wait_for_timeout(250)
        # ?token= redirects without it and leaves the cookie in the browser context.
        listing = page.request.get(f"{base}/_replay/inspect?token={INSPECTOR_TOKEN}")
        if str(session).encode() in listing.body():
            deadline_ok = True
            break
    assert deadline_ok, "the session never appeared in the inspector"
    viewer = page.context.new_page()
    viewer.goto(base + "/_replay/inspect")
    viewer.click(f"a:has-text('{session}')")
    # The player replays the recorded page: its iframe holds the sign-in form's heading.
    frame = viewer.frame_locator("iframe").first
    frame.locator("h1:has-text('Sign in')").wait_for(timeout=10_000)
    assert PASSWORD not in viewer.content()


# -- real-size pages (issue 7) ---------------------------------------------------------------


def snapshot_upload(fake: FakeAmplitude, text: str) -> Recorded | None:
    """The upload whose full snapshot holds ``text``, if one arrived."""
    for rec in uploads(fake):
        events = [json.loads(e.json) for e in decoded(rec).events]
        if snapshot_holds(events, text):
            return rec
    return None


def assert_snapshot_reached_amplitude(fake: FakeAmplitude, text: str) -> None:
    assert fake.wait_until(lambda: snapshot_upload(fake, text) is not None, WAIT_S), [
        (r.query, r.header("content-encoding"), len(r.body or b"")) for r in uploads(fake)
    ]
    rec = snapshot_upload(fake, text)
    assert rec is not None
    # A regular upload, gzip'd by the SDK (not the page-exit beacon, cut to 64 KiB and plain).
    assert rec.header("content-encoding") == "gzip"
    assert "api_key=" not in rec.query
    assert rec.header("authorization") == f"Bearer {KEY}"


@pytest.mark.parametrize("stay", STAYS)
@pytest.mark.parametrize("kb", ARTICLE_KB)
def test_long_page_reaches_amplitude_with_its_content(
    proxied_defaults: str, page: Page, fake_amplitude: FakeAmplitude, kb: int, stay: str
) -> None:
    page.goto(proxied_defaults + article_path(kb))
    stay_and_leave(page, proxied_defaults, stay)
    assert_snapshot_reached_amplitude(fake_amplitude, END_MARKER)


@pytest.mark.parametrize("stay", STAYS)
@pytest.mark.parametrize("proxied_defaults", ["django-gunicorn"], indirect=True)
def test_django_admin_changelist_reaches_amplitude_with_its_rows(
    proxied_defaults: str, page: Page, fake_amplitude: FakeAmplitude, stay: str
) -> None:
    admin_sign_in(page, proxied_defaults)
    stay_and_leave(page, proxied_defaults, stay)
    assert_snapshot_reached_amplitude(fake_amplitude, ADMIN_LAST_ROW)
