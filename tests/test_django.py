"""replay_middleware.django: the Django middleware, template tag and system checks.

Django's own test clients drive a real middleware stack, once synchronously (``Client``,
WSGI-style handler) and once asynchronously (``AsyncClient``, ASGI-style handler). Settings
come from tests/django_settings.py (configured once per process when this module is imported);
each test varies them with ``override_settings``. Django 6's built-in CSP middleware needs
Python >= 3.12 and is not covered here (the venv is 3.11); django-csp 4 is.
"""

from __future__ import annotations

import asyncio
import gc
import gzip
import hashlib
import hmac
import json
import logging
import re
import threading
import weakref
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests import django_settings

django_settings.setup()

from csp.constants import NONCE, SELF  # noqa: E402
from django.core import checks  # noqa: E402
from django.core.exceptions import ImproperlyConfigured  # noqa: E402
from django.http import (  # noqa: E402
    FileResponse,
    HttpRequest,
    HttpResponse,
    JsonResponse,
    StreamingHttpResponse,
)
from django.template import engines  # noqa: E402
from django.test import AsyncClient, Client, RequestFactory, override_settings  # noqa: E402
from django.urls import path, re_path  # noqa: E402

from replay_middleware import current_replay, get_replay_properties, local_store  # noqa: E402
from replay_middleware.decision import MARKER_HEADER  # noqa: E402
from replay_middleware.django import (  # noqa: E402
    ReplayMiddleware,
    check_middleware_order,
    check_settings,
)

DATA_BLOCK = b'<script type="application/json" id="replay-middleware-config">'
HEAD = b"<!DOCTYPE html>\n<html><head><title>T</title>"
PAGE = HEAD + b"</head><body><p>hello</p></body></html>"
CSP_MIDDLEWARE = [
    "django.middleware.gzip.GZipMiddleware",
    "replay_middleware.django.ReplayMiddleware",
    "csp.middleware.CSPMiddleware",
    "django.middleware.common.CommonMiddleware",
]
CSP_POLICY = {"DIRECTIVES": {"default-src": [SELF], "script-src": [SELF, NONCE]}}

# -- views (ROOT_URLCONF is this module) --------------------------------------------------------

pulled: list[int] = []  # chunks the streaming views have produced so far


def home(request: HttpRequest) -> HttpResponse:
    return HttpResponse(PAGE)


async def async_home(request: HttpRequest) -> HttpResponse:
    return HttpResponse(PAGE)


def _chunks() -> list[bytes]:
    return [HEAD, b"</head><body>", b"<p>one</p>", b"<p>two</p>", b"</body></html>"]


def stream(request: HttpRequest) -> StreamingHttpResponse:
    def gen() -> Iterator[bytes]:
        for i, chunk in enumerate(_chunks()):
            pulled.append(i)
            yield chunk

    return StreamingHttpResponse(gen(), content_type="text/html; charset=utf-8")


def astream(request: HttpRequest) -> StreamingHttpResponse:
    async def gen() -> AsyncIterator[bytes]:
        for i, chunk in enumerate(_chunks()):
            pulled.append(i)
            yield chunk

    return StreamingHttpResponse(gen(), content_type="text/html; charset=utf-8")


def billing(request: HttpRequest) -> HttpResponse:
    return HttpResponse(PAGE)


def api(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"ok": True})


def whoami(request: HttpRequest) -> JsonResponse:
    ctx = current_replay()
    return JsonResponse(
        {"request": request.replay.reason, "current": ctx.reason if ctx else None}  # type: ignore[attr-defined]
    )


async def async_whoami(request: HttpRequest) -> JsonResponse:
    ctx = current_replay()
    return JsonResponse(
        {"request": request.replay.reason, "current": ctx.reason if ctx else None}  # type: ignore[attr-defined]
    )


def _render(request: HttpRequest, source: str) -> HttpResponse:
    template = engines["django"].from_string(source)
    return HttpResponse(template.render({}, request))


def manual(request: HttpRequest) -> HttpResponse:
    return _render(
        request,
        "{% load replay %}<!DOCTYPE html><html><head><title>M</title>{% replay_snippet %}"
        "{% replay_snippet %}</head><body>manual</body></html>",
    )


def csp_used(request: HttpRequest) -> HttpResponse:
    return _render(
        request,
        "<!DOCTYPE html><html><head><title>C</title></head><body>"
        '<script nonce="{{ request.csp_nonce }}">1</script></body></html>',
    )


def csp_own_header(request: HttpRequest) -> HttpResponse:
    response = HttpResponse(PAGE)
    response["Content-Security-Policy"] = "script-src 'nonce-QXBwTm9uY2U='"
    return response


def file_page(request: HttpRequest) -> FileResponse:
    return FileResponse(iter([PAGE]), content_type="text/html")


def account_area(request: HttpRequest) -> HttpResponse:
    """Any path under /account/ (control characters too), with its replay properties (R1)."""
    response = HttpResponse(PAGE)
    response["X-Replay-Properties"] = json.dumps(get_replay_properties())
    return response


#: Issue 8: response headers that make a page cacheable by a shared cache, or sandboxed.
PAGE_HEADERS = {
    "private-qualified": {"Cache-Control": 'max-age=600, private="Set-Cookie"'},
    "cdn": {"Cache-Control": "private", "CDN-Cache-Control": "max-age=600"},
    "last-modified": {"Last-Modified": "Mon, 01 Jan 2024 00:00:00 GMT"},
    "sandbox-opaque": {"Content-Security-Policy": "sandbox allow-scripts"},
}


def page_with_headers(request: HttpRequest, kind: str) -> HttpResponse:
    response = HttpResponse(PAGE)
    for name, value in PAGE_HEADERS[kind].items():
        response[name] = value
    return response


urlpatterns = [
    path("", home),
    path("async", async_home),
    path("stream", stream),
    path("astream", astream),
    path("account/billing", billing),
    path("api", api),
    path("whoami", whoami),
    path("async-whoami", async_whoami),
    path("manual", manual),
    path("csp", csp_used),
    path("csp-unused", home),
    path("csp-own", csp_own_header),
    path("file", file_page),
    re_path(r"^account/(?s:.*)\Z", account_area),
    path("headers/<str:kind>", page_with_headers),
]

# -- harness ---------------------------------------------------------------------------------


class Driver:
    """One Django test client, sync or async, with a blocking ``request`` either way."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.loop: asyncio.AbstractEventLoop | None = None
        if mode == "async":
            self.loop = asyncio.new_event_loop()
            self.aclient = AsyncClient()
        else:
            self.client = Client()

    def request(self, method: str, url: str, **kwargs: Any) -> Any:
        if self.loop is None:
            return getattr(self.client, method)(url, **kwargs)
        return self.loop.run_until_complete(getattr(self.aclient, method)(url, **kwargs))

    def get(self, url: str, **kwargs: Any) -> Any:
        return self.request("get", url, **kwargs)

    def post(self, url: str, **kwargs: Any) -> Any:
        return self.request("post", url, **kwargs)

    def body(self, response: Any) -> bytes:
        """The whole body, streamed or not, consumed the way the response holds it."""
        if not response.streaming:
            return bytes(response.content)
        if response.is_async:

            async def collect() -> bytes:
                return b"".join([bytes(c) async for c in response.streaming_content])

            loop = self.loop or asyncio.new_event_loop()
            try:
                return loop.run_until_complete(collect())
            finally:
                if loop is not self.loop:
                    loop.close()
        return b"".join(response.streaming_content)

    def close(self) -> None:
        if self.loop is not None:
            self.loop.close()


@pytest.fixture(autouse=True)
def replay_settings(tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """Every test gets its own local store; ``replay_settings(**options)`` overrides more."""
    base = dict(django_settings.BASE["REPLAY_MIDDLEWARE"])  # type: ignore[call-overload]
    base["local_store_dir"] = str(tmp_path / "store")
    active: list[Any] = []

    def apply(**options: Any) -> None:
        override = override_settings(REPLAY_MIDDLEWARE={**base, **options})
        override.enable()
        active.append(override)

    apply()
    pulled.clear()
    yield apply
    for override in reversed(active):
        override.disable()


@pytest.fixture(params=["sync", "async"])
def driver(request: pytest.FixtureRequest) -> Iterator[Driver]:
    d = Driver(request.param)
    yield d
    d.close()


def injected_part(body: bytes) -> bytes:
    """The bytes inserted before ``</head>`` of a page whose head ends ``<title>…</title>``."""
    start = body.index(b"</title>") + len(b"</title>")
    return body[start : body.index(b"</head>")]


# -- HTML injection ----------------------------------------------------------------------------


@pytest.mark.parametrize("url", ["/", "/async"])
def test_html_response_injected_with_exact_content_length(driver: Driver, url: str) -> None:
    response = driver.get(url)
    body = driver.body(response)
    snippet = injected_part(body)
    assert snippet.startswith(DATA_BLOCK) and body.count(DATA_BLOCK) == 1
    assert body.replace(snippet, b"", 1) == PAGE
    assert response["Content-Length"] == str(len(body))
    assert response[MARKER_HEADER] == "injected"
    assert "Cookie" in response["Vary"]


def test_identity_cookie_is_set_and_kept(driver: Driver) -> None:
    first = driver.get("/")
    cookie = first.cookies["replay_id"]
    assert cookie["samesite"] == "Lax" and cookie["path"] == "/" and cookie["max-age"]
    device, session = cookie.value.split(".")[:2]
    second = driver.body(driver.get("/"))
    assert f'"{device}"'.encode() in second and session.encode() in second


@pytest.mark.parametrize("url", ["/stream", "/astream"])
def test_streaming_response_injected_while_streaming(driver: Driver, url: str) -> None:
    response = driver.get(url)
    if driver.mode == "sync" and url == "/astream":
        # Under WSGI Django reads an async iterator whole anyway; the middleware does it in
        # the same single event loop (an async generator cannot outlive its loop).
        assert pulled == [0, 1, 2, 3, 4]
    else:
        # Only the head was read ahead; the rest is still the app's iterator, untouched.
        assert pulled == [0, 1]
    assert response[MARKER_HEADER] == "injected"
    body = driver.body(response)
    assert pulled == [0, 1, 2, 3, 4]
    snippet = injected_part(body)
    assert snippet.startswith(DATA_BLOCK)
    assert body.replace(snippet, b"", 1) == b"".join(_chunks())
    assert not response.has_header("Content-Length")


@pytest.mark.parametrize(
    "url",
    [
        pytest.param("/account/billing", id="excluded-route"),
        pytest.param("/api", id="json"),
        pytest.param("/file", id="file-response"),
    ],
)
def test_untouched_responses(driver: Driver, url: str) -> None:
    reference = Driver("sync")
    stack = [m for m in django_settings.BASE["MIDDLEWARE"] if "replay" not in m]  # type: ignore[attr-defined]
    with override_settings(MIDDLEWARE=stack):
        expected = reference.get(url)
        expected_body = reference.body(expected)
    response = driver.get(url)
    assert driver.body(response) == expected_body
    assert MARKER_HEADER not in response
    assert "replay_id" not in response.cookies
    dropped = {"x-replay-decision"}  # O2: on in local mode
    assert {k: v for k, v in response.items() if k.lower() not in dropped} == dict(expected.items())


@pytest.mark.parametrize(
    "url",
    [
        pytest.param("/account/%0Ax", id="newline"),
        pytest.param("/account/%0D%0A", id="crlf"),
        pytest.param("/account/x%00.html", id="nul"),
        pytest.param("/account/caf%C3%A9/%E2%80%A8", id="non-ascii-line-separator"),
    ],
)
def test_restricted_area_with_encoded_control_characters_gets_nothing(
    driver: Driver, url: str
) -> None:  # issue 8, item 4: the rule "/account/*" covers them all
    response = driver.get(url)
    assert response.status_code == 200
    assert driver.body(response) == PAGE
    assert MARKER_HEADER not in response and "replay_id" not in response.cookies
    assert json.loads(response["X-Replay-Properties"]) == {}


@pytest.mark.parametrize("kind", ["private-qualified", "cdn", "last-modified"])
def test_shared_cacheable_pages_get_the_user_agnostic_snippet(driver: Driver, kind: str) -> None:
    response = driver.get(f"/headers/{kind}")  # issue 8, item 5 (H10)
    body = driver.body(response)
    block = re.search(rb'id="replay-middleware-config">(\{.*?\})</script>', body)
    assert block is not None and json.loads(block.group(1))["ids"] is None
    assert "replay_id" not in response.cookies
    assert "Cookie" not in response.get("Vary", "")


def test_opaque_origin_sandbox_is_not_injected(driver: Driver) -> None:
    response = driver.get("/headers/sandbox-opaque")  # issue 8, item 7
    assert driver.body(response) == PAGE
    assert MARKER_HEADER not in response and "replay_id" not in response.cookies
    assert response["x-replay-decision"] == "csp_sandbox_opaque"  # O2: on in local mode


def test_head_request_untouched(driver: Driver) -> None:
    response = driver.request("head", "/")
    assert MARKER_HEADER not in response and DATA_BLOCK not in response.content


def test_fragment_request_untouched(driver: Driver) -> None:
    response = driver.get("/", headers={"HX-Request": "true"})
    assert driver.body(response) == PAGE


# -- request.replay and current_replay() ---------------------------------------------------


@pytest.mark.parametrize("url", ["/whoami", "/async-whoami"])
def test_decision_on_request_and_current_replay(driver: Driver, url: str) -> None:
    assert driver.get(url).json() == {"request": "in_sample", "current": "in_sample"}
    assert current_replay() is None


def test_decision_is_lazy(replay_settings: Callable[..., Any]) -> None:
    replay_settings(debug_header=False)  # O2's header would need the decision
    calls: list[str] = []

    def view(request: HttpRequest) -> JsonResponse:
        return JsonResponse({})

    middleware = ReplayMiddleware(view)
    original = middleware.engine.begin

    def begin(*args: Any, **kwargs: Any) -> Any:
        calls.append("begin")
        return original(*args, **kwargs)

    middleware.engine.begin = begin  # type: ignore[method-assign]
    request = RequestFactory().get("/api")
    middleware(request)
    assert calls == []
    assert request.replay.sampled and calls == ["begin"]  # type: ignore[attr-defined]


@pytest.mark.parametrize("kind", ["api", "page"])
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_request_and_what_it_holds_are_freed_without_the_garbage_collector(
    kind: str, mode: str
) -> None:
    """Issue 10: the request holds its decision (``request.replay``) and the decision refers to
    the request only weakly, so a request leaves no cyclic garbage: before, every API
    response left 17 objects (the request, its environ and body) to the collector, every page
    32, where bare Django leaves none. The decision answers while the request lives."""

    def view(request: HttpRequest) -> HttpResponse:
        if kind == "api":
            return JsonResponse({"ok": True})
        return HttpResponse(
            b"<!DOCTYPE html><html><head><title>t</title></head><body></body></html>"
        )

    async def async_view(request: HttpRequest) -> HttpResponse:
        return view(request)

    request = RequestFactory().get(f"/{kind}")
    held = weakref.ref(request.META["wsgi.input"])
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        if mode == "sync":
            response = ReplayMiddleware(view)(request)
        else:
            response = asyncio.run(ReplayMiddleware(async_view)(request))
        assert request.replay.sampled  # type: ignore[attr-defined]
        content = response.content
        response.close()
        del request, response
        assert held() is None  # freed by its reference count, at once
    finally:
        if was_enabled:
            gc.enable()
    assert (b"replay-middleware-config" in content) is (kind == "page")


def test_installed_twice_injects_once(driver: Driver) -> None:
    stack = ["replay_middleware.django.ReplayMiddleware", *django_settings.BASE["MIDDLEWARE"]]  # type: ignore[misc]
    with override_settings(MIDDLEWARE=stack):
        body = driver.body(Driver(driver.mode).get("/"))
    assert body.count(DATA_BLOCK) == 1


# -- template tag ------------------------------------------------------------------------------


def test_template_tag_renders_once_and_auto_injection_skips(driver: Driver) -> None:
    response = driver.get("/manual")
    body = driver.body(response)
    assert body.count(DATA_BLOCK) == 1
    assert injected_part(body).startswith(DATA_BLOCK)  # where the tag is
    assert MARKER_HEADER not in response  # no second, automatic injection
    assert "replay_id" in response.cookies


def test_template_tag_outside_the_middleware_renders_nothing() -> None:
    template = engines["django"].from_string("{% load replay %}[{% replay_snippet %}]")
    assert template.render({}, RequestFactory().get("/")) == "[]"


# -- CSP nonces --------------------------------------------------------------------------------


def _nonces(policy: str) -> list[str]:
    return re.findall(r"'nonce-([^']+)'", policy)


def _script_nonce(body: bytes) -> str:
    match = re.search(rb'<script async src="[^"]*loader[^"]*" nonce="([^"]+)"', body)
    if match is None:
        match = re.search(rb'<script[^>]*loader[^>]*nonce="([^"]+)"', body)
    assert match, body
    return match.group(1).decode()


@override_settings(MIDDLEWARE=CSP_MIDDLEWARE, CONTENT_SECURITY_POLICY=CSP_POLICY)
def test_django_csp_nonce_reused_when_the_page_uses_it(driver: Driver) -> None:
    response = driver.get("/csp")
    body = driver.body(response)
    app_nonce = re.search(rb'<script nonce="([^"]+)">1', body).group(1).decode()  # type: ignore[union-attr]
    assert _nonces(response["Content-Security-Policy"]) == [app_nonce]
    assert _script_nonce(body) == app_nonce
    assert response[MARKER_HEADER] == "injected"


@override_settings(MIDDLEWARE=CSP_MIDDLEWARE, CONTENT_SECURITY_POLICY=CSP_POLICY)
def test_django_csp_nonce_never_forced(driver: Driver) -> None:
    response = driver.get("/csp-unused")
    body = driver.body(response)
    # django-csp wrote no nonce (the page used none); ours was added and used.
    [ours] = _nonces(response["Content-Security-Policy"])
    assert _script_nonce(body) == ours


@override_settings(MIDDLEWARE=CSP_MIDDLEWARE, CONTENT_SECURITY_POLICY=CSP_POLICY)
def test_template_tag_uses_the_django_csp_nonce(driver: Driver) -> None:
    response = driver.get("/manual")
    body = driver.body(response)
    [nonce] = _nonces(response["Content-Security-Policy"])
    assert _script_nonce(body) == nonce


def test_without_django_csp_the_nonce_of_the_app_header_is_reused(driver: Driver) -> None:
    response = driver.get("/csp-own")
    body = driver.body(response)
    assert _nonces(response["Content-Security-Policy"]) == ["QXBwTm9uY2U="]
    assert _script_nonce(body) == "QXBwTm9uY2U="


def test_template_tag_without_django_csp_mints_a_nonce(driver: Driver) -> None:
    body = driver.body(driver.get("/manual"))
    assert re.fullmatch(r"[A-Za-z0-9+/_-]+={0,2}", _script_nonce(body))


# -- first-party endpoints -------------------------------------------------------------------


def _upload(size: int) -> bytes:
    event = json.dumps({"type": 4, "timestamp": 1735689600000, "data": {"href": "http://t/"}})
    body = json.dumps({"version": 1, "events": [event]})
    return body.encode() + b" " * (size - len(body))


TRACK = "/_replay/track?device_id=d&session_id=1735689600000&type=replay"


def test_track_accepts_a_body_over_django_upload_limit(
    driver: Driver, replay_settings: Callable[..., Any]
) -> None:
    # (the inspector answers loopback Hosts only, unless the client is allow-listed)
    token = "django-inspector-token-0123456789"
    replay_settings(max_upload_bytes=4096, inspector_allow=["127.0.0.1"], inspector_token=token)
    response = driver.post(TRACK, data=_upload(3000), content_type="application/json")
    assert response.status_code == 200, response.content
    assert response["Content-Length"] == str(len(response.content))
    assert not response.has_header("Cache-Control")  # docs/page-exit.md: no net::ERR_ABORTED
    assert driver.get("/_replay/inspect").status_code == 404  # no token yet
    sign_in = driver.get(f"/_replay/inspect?token={token}")
    assert sign_in.status_code == 303 and sign_in["Location"] == "/_replay/inspect"
    [morsel] = [m for name, m in sign_in.cookies.items() if name.startswith("replay_inspect_")]
    assert (morsel.value, morsel["path"], morsel["httponly"], morsel["samesite"]) == (
        token,
        "/_replay/inspect",
        True,
        "Strict",
    )
    listing = driver.get("/_replay/inspect")  # the test client sends the cookie back
    assert listing.status_code == 200 and b"1735689600000" in listing.content


def test_track_over_our_cap_is_413_with_the_sdk_wording(
    driver: Driver, replay_settings: Callable[..., Any]
) -> None:
    replay_settings(max_upload_bytes=4096, inspector_allow=["127.0.0.1"])
    response = driver.post(TRACK, data=_upload(5000), content_type="application/json")
    assert response.status_code == 413
    assert re.search(rb"payload.*exceed", response.content, re.I)


def test_loader_served_before_any_view(driver: Driver) -> None:
    body = driver.body(driver.get("/"))
    loader = re.search(rb'src="(/_replay/loader-[0-9a-f]+\.js)"', body)
    assert loader
    response = driver.get(loader.group(1).decode())
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/javascript")
    assert response["Content-Length"] == str(len(response.content))


def test_unknown_endpoint_is_ours_not_the_apps(driver: Driver) -> None:
    response = driver.get("/_replay/nope")
    assert response.status_code == 404 and response.content == b"Not Found"


# -- settings and system checks --------------------------------------------------------------


def test_bad_setting_is_improperly_configured(replay_settings: Callable[..., Any]) -> None:
    replay_settings(sample_rat=1)
    with pytest.raises(ImproperlyConfigured, match="unknown option 'sample_rat'"):
        ReplayMiddleware(home)


def test_check_reports_a_bad_key(replay_settings: Callable[..., Any]) -> None:
    replay_settings(sample_rat=1)
    [error] = check_settings()
    assert error.id == "replay_middleware.E001" and error.level == checks.ERROR
    assert str(error.msg).startswith("ReplayConfig: unknown option 'sample_rat'")


def test_check_reports_a_bad_value(replay_settings: Callable[..., Any]) -> None:
    replay_settings(sample_rate=2)
    [error] = check_settings()
    assert "sample_rate must be a number from 0 to 1" in error.msg


def test_checks_pass_with_the_test_settings() -> None:
    assert check_settings() == [] and check_middleware_order() == []
    found = checks.run_checks(tags=[checks.Tags.compatibility])
    assert [m for m in found if str(m.id).startswith("replay_middleware")] == []


@override_settings(
    MIDDLEWARE=[
        "replay_middleware.django.ReplayMiddleware",
        "django.middleware.gzip.GZipMiddleware",
    ]
)
def test_check_warns_when_gzip_is_inside() -> None:
    [warning] = check_middleware_order()
    assert warning.id == "replay_middleware.W001" and warning.level == checks.WARNING
    assert "after django.middleware.gzip.GZipMiddleware" in (warning.hint or "")


@override_settings(
    MIDDLEWARE=["csp.middleware.CSPMiddleware", "replay_middleware.django.ReplayMiddleware"]
)
def test_check_warns_when_csp_is_outside() -> None:
    [warning] = check_middleware_order()
    assert warning.id == "replay_middleware.W002"


# -- the upload proxy (an API key) ---------------------------------------------------------

KEY = "0123456789abcdef0123456789abcdef"


@pytest.fixture
def amplitude(replay_settings: Callable[..., Any]) -> list[httpx.Request]:
    """Proxy mode against an ``httpx.MockTransport`` standing in for Amplitude."""
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if "/config" in request.url.path:
            return httpx.Response(
                200, json={"configs": {"sessionReplay": {"sr_sampling_config": {}}}}
            )
        return httpx.Response(200, json={"code": 200})

    replay_settings(api_key=KEY, max_upload_bytes=4096, http_client=httpx.MockTransport(handle))
    return seen


def test_proxy_forwards_a_body_over_django_upload_limit(
    driver: Driver, amplitude: list[httpx.Request]
) -> None:
    body = _upload(3000)
    response = driver.post(
        "/_replay/track?device_id=d&session_id=1&type=replay",
        data=body,
        content_type="application/json",
        headers={"authorization": f"Bearer {KEY}"},
    )
    assert response.status_code == 200
    assert json.loads(driver.body(response)) == {"code": 200}
    [upstream] = amplitude
    assert upstream.content == body
    assert upstream.headers["authorization"] == f"Bearer {KEY}"


def test_proxy_over_our_cap_is_413(driver: Driver, amplitude: list[httpx.Request]) -> None:
    response = driver.post(
        "/_replay/track?device_id=d&session_id=1&type=replay",
        data=_upload(5000),
        content_type="application/json",
        headers={"authorization": f"Bearer {KEY}"},
    )
    assert response.status_code == 413
    assert re.search(rb"payload.*exceed", driver.body(response), re.I)
    assert amplitude == []


def test_proxy_frees_the_client_slot_after_every_failure(
    driver: Driver, replay_settings: Callable[..., Any]
) -> None:  # notes/proxy.md case 45: a leaked slot would turn the last upload into a 429
    answers = iter([500, 200])
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(next(answers, 200), json={"code": 200})

    replay_settings(
        api_key=KEY,
        max_uploads_per_client=1,
        upload_memory_bytes=1024,
        http_client=httpx.MockTransport(handle),
    )
    url = "/_replay/track?device_id=d&session_id=1&type=replay"
    auth = {"authorization": f"Bearer {KEY}"}
    codes = []
    for body, content_type in (
        (b"<html>", "text/html"),  # 415
        (_upload(3000), "application/json"),  # upstream 500
        (_upload(3000), "application/json"),  # 200, not 429
    ):
        response = driver.post(url, data=body, content_type=content_type, headers=auth)
        driver.body(response)  # a streamed reply releases its slots when closed, as servers do
        codes.append(response.status_code)
    assert codes == [415, 500, 200]
    # Over upload_memory_bytes: spilled to a temporary file, sent with its length.
    assert seen[-1].content == _upload(3000)
    assert seen[-1].headers["content-length"] == "3000"


def test_proxy_answers_the_config_endpoint(driver: Driver, amplitude: list[httpx.Request]) -> None:
    response = driver.get(f"/_replay/config/{KEY}?config_group=browser")
    assert response.status_code == 200
    assert "sessionReplay" in json.loads(driver.body(response))["configs"]


def test_pages_still_injected_with_an_api_key(
    driver: Driver, amplitude: list[httpx.Request]
) -> None:
    body = driver.body(driver.get("/"))
    assert body.count(DATA_BLOCK) == 1 and f'"apiKey":"{KEY}"'.encode() in body


# -- start-up: local-mode default rate, warnings on the first request (issue 7) --------------


def _replay_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "replay_middleware" and r.levelno == logging.WARNING
    ]


def test_local_mode_records_every_session_when_sample_rate_is_unset(
    driver: Driver, tmp_path: Path
) -> None:
    with override_settings(REPLAY_MIDDLEWARE={"local_store_dir": str(tmp_path / "store")}):
        response = driver.get("/")
    assert response["x-replay-decision"] == "in_sample"
    assert driver.body(response).count(DATA_BLOCK) == 1


def test_explicit_zero_records_nothing(driver: Driver, replay_settings: Callable[..., Any]) -> None:
    replay_settings(sample_rate=0)
    response = driver.get("/")
    assert response["x-replay-decision"] == "not_in_sample"
    assert driver.body(response) == PAGE


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_startup_warnings_wait_for_the_first_request_and_come_once(
    replay_settings: Callable[..., Any], caplog: pytest.LogCaptureFixture, mode: str
) -> None:
    replay_settings(sample_rate=0)
    caplog.set_level(logging.WARNING, "replay_middleware")
    if mode == "sync":
        middleware = ReplayMiddleware(home)

        def call() -> None:
            middleware(RequestFactory().get("/"))

    else:
        middleware = ReplayMiddleware(async_home)

        def call() -> None:
            asyncio.run(middleware(RequestFactory().get("/")))

    assert _replay_warnings(caplog) == []  # building the middleware logs nothing
    call()
    first = _replay_warnings(caplog)
    assert [m for m in first if "RECORDS NOTHING" in m]
    call()
    assert _replay_warnings(caplog) == first


def test_secret_key_is_derived_from_django_secret_key() -> None:
    from django.conf import settings

    from replay_middleware.django import config_from_settings
    from replay_middleware.identity import derive_secret_key

    secret = settings.SECRET_KEY
    derived = config_from_settings().signing_key
    assert derived == derive_secret_key(secret)
    # The derivation Django deployments have used so far: their cookies stay valid.
    legacy = hmac.new(secret.encode(), b"replay_middleware.identity-cookie", hashlib.sha256)
    assert derived == legacy.hexdigest()


# -- secret rotation (issue 9) ---------------------------------------------------------------

OLD_SECRET, NEW_SECRET = "old-django-secret-0123456789", "new-django-secret-0123456789"


@override_settings(SECRET_KEY=NEW_SECRET, SECRET_KEY_FALLBACKS=["older-one", OLD_SECRET])
def test_secret_key_fallbacks_are_derived_as_older_keys() -> None:
    from replay_middleware.django import config_from_settings
    from replay_middleware.identity import derive_secret_key

    keys = ("older-one", OLD_SECRET, NEW_SECRET)
    assert config_from_settings().secret_keys == tuple(derive_secret_key(k) for k in keys)


def test_explicit_secret_key_list_wins_over_django_keys(
    replay_settings: Callable[..., Any],
) -> None:
    from replay_middleware.django import config_from_settings

    replay_settings(secret_key=["o" * 16, "n" * 16])
    with override_settings(SECRET_KEY_FALLBACKS=[OLD_SECRET]):
        assert config_from_settings().secret_keys == ("o" * 16, "n" * 16)


def test_rotating_django_secret_key_keeps_device_ids(driver: Driver) -> None:
    from replay_middleware.identity import Identity, IdentityCodec, derive_secret_key

    now = 1_735_689_600_000  # an old last activity: the session rolls, the device stays
    device = "0b6f6a3e-4c1d-4e2f-8a9b-0c1d2e3f4a5b"
    old = IdentityCodec(derive_secret_key(OLD_SECRET)).dumps(Identity(device, now, now))
    client = driver.aclient if driver.mode == "async" else driver.client
    client.cookies["replay_id"] = old
    with override_settings(SECRET_KEY=NEW_SECRET, SECRET_KEY_FALLBACKS=[OLD_SECRET]):
        response = driver.get("/")
    reissued = response.cookies["replay_id"].value
    assert f'"{device}"'.encode() in driver.body(response)
    ids = IdentityCodec(derive_secret_key(NEW_SECRET)).loads(reissued)
    assert ids is not None and ids.device_id == device
    assert IdentityCodec(derive_secret_key(OLD_SECRET)).loads(reissued) is None


def test_cookie_of_an_unknown_django_secret_gets_new_ids(driver: Driver) -> None:
    from replay_middleware.identity import Identity, IdentityCodec, derive_secret_key

    device = "0b6f6a3e-4c1d-4e2f-8a9b-0c1d2e3f4a5b"
    now = 1_735_689_600_000
    foreign = IdentityCodec(derive_secret_key("unknown-secret")).dumps(Identity(device, now, now))
    client = driver.aclient if driver.mode == "async" else driver.client
    client.cookies["replay_id"] = foreign
    with override_settings(SECRET_KEY=NEW_SECRET, SECRET_KEY_FALLBACKS=[OLD_SECRET]):
        response = driver.get("/")
    assert not response.cookies["replay_id"].value.startswith(device)


# -- local mode: hostile uploads and who may upload (issue 8) ------------------------------------

# Issue 8's shape: a little gzip inflating to a million tiny events (3 MB; the real one, 50 MB).
BOMB = gzip.compress(b'{"version":1,"events":[' + b"{}," * 1_000_000 + b"{}]}")


def test_local_track_answers_a_decompression_bomb_413(
    driver: Driver,
    replay_settings: Callable[..., Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    threads: list[int] = []
    decode = local_store.decode_payload

    def recording_decode(*args: Any, **kwargs: Any) -> Any:
        threads.append(threading.get_ident())
        return decode(*args, **kwargs)

    monkeypatch.setattr(local_store, "decode_payload", recording_decode)
    replay_settings(inspector_allow=["127.0.0.1"])  # the test client's Host is "testserver"

    response = driver.post(
        TRACK, data=BOMB, content_type="application/json", HTTP_CONTENT_ENCODING="gzip"
    )

    # The SDK splits a batch answered 413 with this wording (PROTOCOL §2); never a 500.
    assert response.status_code == 413
    assert re.search(rb"payload.*exceed", response.content, re.I)
    with local_store.LocalStore(tmp_path / "store") as store:
        assert store.sessions() == []
    if driver.mode == "async":  # decoded off the event loop (the test's main thread)
        assert threads and threading.main_thread().ident not in threads


@pytest.mark.parametrize(
    ("remote_addr", "host"),
    [
        pytest.param("10.0.0.5", "127.0.0.1", id="remote-client"),
        pytest.param("127.0.0.1", "testserver", id="loopback-foreign-host"),
    ],
)
def test_local_track_and_config_answer_only_the_inspectors_clients(
    driver: Driver, tmp_path: Path, remote_addr: str, host: str
) -> None:
    where = {"REMOTE_ADDR": remote_addr, "HTTP_HOST": host}

    track = driver.post(TRACK, data=_upload(100), content_type="application/json", **where)
    config = driver.get(f"/_replay/config/{KEY}?config_group=browser", **where)

    assert (track.status_code, config.status_code) == (404, 404)
    with local_store.LocalStore(tmp_path / "store") as store:
        assert store.sessions() == []


def test_gzipped_page_from_inside_is_warned_once_beside_the_system_check(
    replay_settings: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    """W001 catches GZipMiddleware listed inside ours; this catches any other compressor."""
    replay_settings(sample_rate=1)
    caplog.set_level(logging.WARNING, "replay_middleware")
    gz = gzip.compress(PAGE)

    def compressed(request: Any) -> HttpResponse:
        response = HttpResponse(gz, content_type="text/html; charset=utf-8")
        response["Content-Encoding"] = "gzip"
        return response

    middleware = ReplayMiddleware(compressed)
    for _ in range(2):
        response = middleware(RequestFactory().get("/shop"))
        assert response.content == gz
    found = [m for m in _replay_warnings(caplog) if "already compressed" in m]
    assert len(found) == 1
    assert "first on /shop" in found[0] and "GZipMiddleware above ReplayMiddleware" in found[0]


@pytest.mark.parametrize(("secure", "warned"), [(False, True), (True, False)])
def test_public_origin_scheme_is_compared_with_django_request_scheme(
    replay_settings: Callable[..., Any],
    caplog: pytest.LogCaptureFixture,
    secure: bool,
    warned: bool,
) -> None:
    replay_settings(sample_rate=1, public_origin="https://shop.example")
    caplog.set_level(logging.WARNING, "replay_middleware")
    middleware = ReplayMiddleware(home)
    for _ in range(2):
        middleware(RequestFactory().get("/", secure=secure))
    found = [m for m in _replay_warnings(caplog) if "but a request arrived as http" in m]
    assert len(found) == (1 if warned else 0)


@pytest.mark.parametrize("multiprocess", [True, False])
def test_multiprocess_wsgi_server_without_a_stable_key_is_warned_once(
    replay_settings: Callable[..., Any], caplog: pytest.LogCaptureFixture, multiprocess: bool
) -> None:
    replay_settings(sample_rate=1)
    caplog.set_level(logging.WARNING, "replay_middleware")
    middleware = ReplayMiddleware(home)
    # Only an empty SECRET_KEY leads here, which Django itself refuses to read: simulate it.
    middleware.engine.random_secret = True
    for _ in range(2):
        middleware(RequestFactory().get("/", **{"wsgi.multiprocess": multiprocess}))
    found = [m for m in _replay_warnings(caplog) if "each worker process signs" in m]
    assert len(found) == (1 if multiprocess else 0)
