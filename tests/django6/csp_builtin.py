"""replay_middleware.django under Django 6's built-in CSP (``ContentSecurityPolicyMiddleware``).

Run in .venv-django6 by tests/test_django6.py (Django 6 needs Python >= 3.12); the main run
does not collect this file. Django 6 keeps the request's nonce as a ``LazyNonce`` in
``request._csp_nonce`` (``django.middleware.csp.get_nonce``); templates see it as
``csp_nonce`` (the ``csp`` context processor). Unlike django-csp 4, ``str()`` of a nonce
nobody generated silently mints one *after* the header is written, a nonce the header does
not carry (notes/csp.md (c)): the tests check that every nonce we put on a script is in the
header's script-src, and that we never generated the app's nonce.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.django6 import settings as django6_settings

django6_settings.setup()

from django.http import HttpRequest, HttpResponse  # noqa: E402
from django.middleware.csp import get_nonce  # noqa: E402
from django.template import engines  # noqa: E402
from django.test import override_settings  # noqa: E402
from django.urls import path  # noqa: E402
from django.utils.csp import CSP, LazyNonce  # noqa: E402

from replay_middleware.decision import MARKER_HEADER  # noqa: E402
from replay_middleware.django import check_middleware_order  # noqa: E402

DATA_BLOCK = b'<script type="application/json" id="replay-middleware-config">'
PAGE = b"<!DOCTYPE html>\n<html><head><title>T</title></head><body><p>hello</p></body></html>"
APP_SCRIPT = (
    "<!DOCTYPE html><html><head><title>C</title></head><body>"
    '<script nonce="{{ csp_nonce }}">1</script></body></html>'
)
MANUAL = (
    "{% load replay %}<!DOCTYPE html><html><head><title>M</title>{% replay_snippet %}"
    "</head><body>manual</body></html>"
)
ENFORCE = "Content-Security-Policy"
REPORT_ONLY = "Content-Security-Policy-Report-Only"

# -- views (ROOT_URLCONF is this module) -------------------------------------------------------


def _render(request: HttpRequest, source: str) -> HttpResponse:
    return HttpResponse(engines["django"].from_string(source).render({}, request))


def plain(request: HttpRequest) -> HttpResponse:
    return HttpResponse(PAGE)


async def async_plain(request: HttpRequest) -> HttpResponse:
    return HttpResponse(PAGE)


def nonce_used(request: HttpRequest) -> HttpResponse:
    return _render(request, APP_SCRIPT)


async def async_nonce_used(request: HttpRequest) -> HttpResponse:
    return _render(request, APP_SCRIPT)


def manual(request: HttpRequest) -> HttpResponse:
    return _render(request, MANUAL)


urlpatterns = [
    path("", plain),
    path("async", async_plain),
    path("used", nonce_used),
    path("async-used", async_nonce_used),
    path("manual", manual),
]

# -- helpers ------------------------------------------------------------------------------------


def policy(header: str) -> dict[str, list[str]]:
    """Directive name -> source tokens (first occurrence wins, as browsers do)."""
    out: dict[str, list[str]] = {}
    for part in header.split(";"):
        if part.strip():
            name, *values = part.split()
            out.setdefault(name.lower(), values)
    return out


def nonces(tokens: list[str]) -> list[str]:
    return [t[len("'nonce-") : -1] for t in tokens if t.startswith("'nonce-")]


def script_nonces(body: bytes) -> list[str]:
    """The nonce of every ``<script>`` in the page (ours and the app's)."""
    return [m.decode() for m in re.findall(rb'<script\b[^>]*\bnonce="([^"]*)"', body)]


def request_nonce(response: Any) -> LazyNonce:
    request = getattr(response, "wsgi_request", None) or response.asgi_request
    nonce = get_nonce(request)
    assert isinstance(nonce, LazyNonce)
    return nonce


def injected(response: Any) -> bytes:
    body = bytes(response.content)
    assert body.count(DATA_BLOCK) == 1, body
    return body


# -- the nonce ----------------------------------------------------------------------------------


@pytest.mark.parametrize("url", ["/used", "/async-used"])
def test_the_nonce_the_view_rendered_is_reused(driver: Any, url: str) -> None:
    response = driver.get(url)
    body = injected(response)
    app_nonce = re.search(rb'<script nonce="([^"]+)">1<', body).group(1).decode()  # type: ignore[union-attr]
    script_src = policy(response[ENFORCE])["script-src"]
    assert nonces(script_src) == [app_nonce]  # reused: no second nonce in the header
    assert set(script_nonces(body)) == {app_nonce}
    assert str(request_nonce(response)) == app_nonce
    assert response[MARKER_HEADER] == "injected"


@pytest.mark.parametrize("url", ["/", "/async"])
def test_ours_is_added_when_the_view_rendered_no_nonce(driver: Any, url: str) -> None:
    response = driver.get(url)
    body = injected(response)
    script_src = policy(response[ENFORCE])["script-src"]
    [ours] = nonces(script_src)
    assert script_src == ["'self'", f"'nonce-{ours}'"]
    assert set(script_nonces(body)) == {ours}
    # The LazyNonce pitfall: we never generated the app's nonce after its header was
    # written (Django would mint one that no header carries).
    assert not request_nonce(response)
    assert response[MARKER_HEADER] == "injected"


@pytest.mark.parametrize("url", ["/", "/used", "/manual"])
def test_every_nonce_on_a_script_is_in_the_header(driver: Any, url: str) -> None:
    response = driver.get(url)
    body = bytes(response.content)
    allowed = set(nonces(policy(response[ENFORCE])["script-src"]))
    assert script_nonces(body) and set(script_nonces(body)) <= allowed


def test_template_tag_reuses_the_request_nonce(driver: Any) -> None:
    response = driver.get("/manual")
    body = injected(response)
    nonce = request_nonce(response)
    assert nonce, "{% replay_snippet %} forces the request's nonce (before the header)"
    assert nonces(policy(response[ENFORCE])["script-src"]) == [str(nonce)]
    assert set(script_nonces(body)) == {str(nonce)}
    assert body.index(DATA_BLOCK) < body.index(b"</head>")  # where the tag is
    assert MARKER_HEADER not in response  # no second, automatic injection


# -- connect-src, worker-src, report-only --------------------------------------------------------


def test_worker_src_created_from_script_src(driver: Any) -> None:
    merged = policy(driver.get("/")[ENFORCE])
    assert merged["default-src"] == ["'self'"]  # never appended to (G4)
    assert merged["worker-src"] == ["'self'", "blob:"]
    assert "connect-src" not in merged  # 'self' already covers our first-party endpoints


@override_settings(
    SECURE_CSP={
        "default-src": [CSP.NONE],
        "script-src": [CSP.SELF, CSP.NONCE],
        "connect-src": ["https://api.example.com"],
    }
)
def test_connect_src_and_worker_src_merged(driver: Any) -> None:
    response = driver.get("/")
    body = injected(response)
    merged = policy(response[ENFORCE])
    assert merged["default-src"] == ["'none'"]
    assert merged["connect-src"] == ["https://api.example.com", "'self'"]
    assert merged["worker-src"] == ["'self'", "blob:"]
    [ours] = nonces(merged["script-src"])
    assert set(script_nonces(body)) == {ours}


@override_settings(
    SECURE_CSP_REPORT_ONLY={
        "default-src": [CSP.NONE],
        "script-src": [CSP.SELF, CSP.NONCE],
        "connect-src": ["https://api.example.com"],
    }
)
@pytest.mark.parametrize("url", ["/", "/used", "/manual"])
def test_report_only_policy_merged_too(driver: Any, url: str) -> None:
    response = driver.get(url)
    body = injected(response)
    enforced = policy(response[ENFORCE])
    report_only = policy(response[REPORT_ONLY])
    assert report_only["default-src"] == ["'none'"]
    assert report_only["connect-src"] == ["https://api.example.com", "'self'"]
    assert report_only["worker-src"] == ["'self'", "blob:"]
    in_both = set(nonces(enforced["script-src"])) & set(nonces(report_only["script-src"]))
    assert set(script_nonces(body)) <= in_both
    assert enforced["default-src"] == ["'self'"]


@override_settings(SECURE_CSP={}, SECURE_CSP_REPORT_ONLY={})
def test_no_policy_no_header(driver: Any) -> None:
    response = driver.get("/")
    injected(response)
    assert ENFORCE not in response and REPORT_ONLY not in response  # G1


# -- system check -------------------------------------------------------------------------------


def test_order_check_knows_the_built_in_middleware() -> None:
    assert check_middleware_order() == []
    reversed_stack = list(reversed(django6_settings.MIDDLEWARE))
    with override_settings(MIDDLEWARE=reversed_stack):
        ids = [m.id for m in check_middleware_order()]
    assert ids == ["replay_middleware.W001", "replay_middleware.W002"]
