"""Injection cases per H rule, shared by the adapter test suites (ASGI now, WSGI later).

Each case is a request (method, path, headers), the app's response (status, headers, body
chunks) and a config; the expectation is either "identical" (H2: the app's headers and bytes,
untouched) or "injected" with ``|`` marking where the snippet must land in the body, plus
header expectations. Adapters run every case and check it with ``check``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

import pytest

SNIPPET_RE = re.compile(
    rb'<script type="application/json" id="replay-middleware-config">\{.*?\}</script>'
    rb'<script async src="/_replay/loader-[0-9a-f]+\.js"( nonce="[^"]+")? id="replay-middleware-loader"></script>'
    rb'(<script async src="[^"]+" nonce="[^"]+" integrity="[^"]+" crossorigin="anonymous" id="replay-middleware-sdk"></script>)?'
)

HTML = ("content-type", "text/html; charset=utf-8")
LAST_MODIFIED = ("last-modified", "Mon, 01 Jan 2024 00:00:00 GMT")
PAGE = b"<!DOCTYPE html><html><head><title>t</title>|</head><body><p>hi</p></body></html>"


@dataclass(frozen=True)
class Case:
    body: tuple[bytes, ...]
    expect: str  # "identical" | "injected"
    headers: tuple[tuple[str, str], ...] = (HTML,)
    status: int = 200
    method: str = "GET"
    path: str = "/"  # the request target as sent, percent-encoded (see asgi_path)
    request_headers: tuple[tuple[str, str], ...] = ()
    config: dict[str, Any] = field(default_factory=dict)
    set_length: bool = True  # add a correct Content-Length to the app's headers
    expect_headers: dict[str, str | None] = field(default_factory=dict)  # None: absent
    # For "injected": True, the snippet carries the visitor's ids; False, the user-agnostic
    # form (H10); None, not checked.
    per_user: bool | None = None

    @property
    def asgi_path(self) -> str:
        """``scope["path"]`` as an ASGI server fills it: percent-decoded (UTF-8); WSGI's
        ``PATH_INFO`` is decoded the same way by werkzeug's EnvironBuilder."""
        return unquote(self.path)

    @property
    def source(self) -> bytes:
        return b"".join(self.body).replace(b"|", b"")

    def app_headers(self) -> list[tuple[str, str]]:
        headers = list(self.headers)
        if self.set_length:
            headers.append(("content-length", str(len(self.source))))
        return headers


def split(doc: bytes, *points: int) -> tuple[bytes, ...]:
    out, last = [], 0
    for p in points:
        out.append(doc[last:p])
        last = p
    out.append(doc[last:])
    return tuple(out)


def _c(id: str, case: Case) -> Any:
    return pytest.param(case, id=id)


CASES = [
    _c(
        "plain-page",
        Case(
            (PAGE,),
            "injected",
            expect_headers={"x-replay-middleware": "injected", "vary": "Cookie"},
        ),
    ),
    _c(
        "uppercase-head",
        Case(
            (b"<!DOCTYPE html><HTML><HEAD><TITLE>t</TITLE>|</HEAD><BODY></BODY></HTML>",),
            "injected",
        ),
    ),
    _c(
        "head-end-with-space",
        Case((b"<!doctype html><html><head>|</head ><body></body></html>",), "injected"),
    ),
    _c(
        "comment-with-fake-anchor",
        Case(
            (b"<!doctype html><html><head><!-- </head><body> -->|</head><body></body></html>",),
            "injected",
        ),
    ),
    _c(
        "script-with-fake-anchor",
        Case(
            (
                b"<!doctype html><html><head><script>var s='</head><body>';</script>|</head><body></body></html>",
            ),
            "injected",
        ),
    ),
    _c(
        "style-textarea-title",
        Case(
            (
                b"<!doctype html><html><head><style>a::after{content:'</head>'}</style><title></head></title>|</head><body><textarea></head></textarea></body></html>",
            ),
            "injected",
        ),
    ),
    _c(
        "attribute-with-gt",
        Case(
            (
                b'<!doctype html><html><head><meta name="x" content="a > </head>">|</head><body></body></html>',
            ),
            "injected",
        ),
    ),
    _c(
        "header-element-is-not-head",
        Case(
            (
                b"<!doctype html><html><head><title>x</title>|</head><body><header>h</header></body></html>",
            ),
            "injected",
        ),
    ),
    _c("implied-head-end", Case((b"<!doctype html><title>x</title>|<p>hi</p>",), "injected")),
    _c(
        "bodyguard-is-body-content",
        Case(
            (b"<!doctype html><html><head><title>x</title>|<bodyguard></bodyguard></html>",),
            "injected",
        ),
    ),
    _c("doctype-only", Case((b"<!DOCTYPE html>|",), "injected")),
    _c(
        "utf8-bom",
        Case((b"\xef\xbb\xbf<!DOCTYPE html><html><head>|</head><body></body></html>",), "injected"),
    ),
    _c(
        "utf16-bom",
        Case(("\ufeff<!DOCTYPE html><html><head></head></html>".encode("utf-16-le"),), "identical"),
    ),
    _c("fragment", Case((b"<div>partial</div>",), "identical")),
    _c("anchor-split-across-chunks", Case(split(PAGE, 40, 43, 44), "injected")),
    _c("one-byte-chunks", Case(tuple(PAGE[i : i + 1] for i in range(len(PAGE))), "injected")),
    _c(
        "etag-weakened",
        Case(
            (PAGE,), "injected", headers=(HTML, ("etag", '"v1"')), expect_headers={"etag": 'W/"v1"'}
        ),
    ),
    _c(
        "digest-and-ranges-dropped",
        Case(
            (PAGE,),
            "injected",
            headers=(HTML, ("content-md5", "x"), ("accept-ranges", "bytes")),
            expect_headers={"content-md5": None, "accept-ranges": None},
        ),
    ),
    _c(
        "streaming-without-length",
        Case(
            split(PAGE, 10, 50),
            "injected",
            set_length=False,
            expect_headers={"content-length": None},
        ),
    ),
    _c(
        "vary-appended",
        Case(
            (PAGE,),
            "injected",
            headers=(HTML, ("vary", "Accept-Encoding")),
            expect_headers={"vary": "Accept-Encoding, Cookie"},
        ),
    ),
    _c(
        "partial-206",
        Case((PAGE,), "identical", status=206, headers=(HTML, ("content-range", "bytes 0-79/200"))),
    ),
    _c("head-request", Case((PAGE,), "identical", method="HEAD")),
    _c("post-request", Case((PAGE,), "identical", method="POST")),
    _c(
        "attachment",
        Case(
            (PAGE,),
            "identical",
            headers=(HTML, ("content-disposition", "attachment; filename=a.html")),
        ),
    ),
    _c("gzip-encoded", Case((PAGE,), "identical", headers=(HTML, ("content-encoding", "gzip")))),
    _c(
        "no-transform",
        Case((PAGE,), "identical", headers=(HTML, ("cache-control", "private, no-transform"))),
    ),
    _c(
        "json",
        Case((b'{"a": "</head>"}',), "identical", headers=(("content-type", "application/json"),)),
    ),
    _c(
        "svg",
        Case(
            (b"<svg><head></head></svg>",),
            "identical",
            headers=(("content-type", "image/svg+xml"),),
        ),
    ),
    _c("no-content-204", Case((b"",), "identical", status=204)),
    _c("redirect-302", Case((PAGE,), "identical", status=302, headers=(HTML, ("location", "/x")))),
    _c("error-page-404", Case((PAGE,), "injected", status=404)),
    _c("error-page-500", Case((PAGE,), "injected", status=500)),
    _c(
        "duplicate-lengths",
        Case(
            (PAGE,),
            "identical",
            headers=(HTML, ("content-length", "1"), ("content-length", "2")),
            set_length=False,
        ),
    ),
    _c(
        "scan-limit-reached",
        Case(
            (
                b"<!doctype html><html><head><style>"
                + b"x" * 600
                + b"</style></head><body></body></html>",
            ),
            "identical",
            config={"max_scan_bytes": 256},
        ),
    ),
    _c(
        "already-has-snippet",
        Case(
            (
                b'<!doctype html><html><head><script type="application/json" id="replay-middleware-config">{}</script></head></html>',
            ),
            "identical",
        ),
    ),
    _c(
        "htmx-fragment-request",
        Case((PAGE,), "identical", request_headers=(("hx-request", "true"),)),
    ),
    _c(
        "iframe-request",
        Case((PAGE,), "identical", request_headers=(("sec-fetch-dest", "iframe"),)),
    ),
    _c(
        "iframe-request-allowed",
        Case(
            (PAGE,),
            "injected",
            request_headers=(("sec-fetch-dest", "iframe"),),
            config={"inject_into_iframes": True},
        ),
    ),
    _c(
        "excluded-route",
        Case((PAGE,), "identical", path="/admin/x", config={"exclude": ("/admin/*",)}),
    ),
    _c(
        "csp-forbids-scripts",
        Case(
            (PAGE,), "identical", headers=(HTML, ("content-security-policy", "script-src 'none'"))
        ),
    ),
    _c(
        "csp-merged-nonce",
        Case(
            (PAGE,), "injected", headers=(HTML, ("content-security-policy", "default-src 'self'"))
        ),
    ),
    _c(
        "shared-cacheable",
        Case(
            (PAGE,),
            "injected",
            headers=(HTML, ("cache-control", "public, max-age=300")),
            expect_headers={"vary": None, "set-cookie": None},
        ),
    ),
    # Item 4 of issue 8: route rules see the decoded path, every character alike, and a control
    # character ends the path for them ($-anchored routers serve "/account/billing%0A").
    _c(
        "excluded-route-encoded-newline",
        Case(
            (PAGE,),
            "identical",
            path="/account/billing%0A",
            config={"exclude": ("/account/billing",)},
        ),
    ),
    _c(
        "excluded-route-encoded-crlf-below",
        Case(
            (PAGE,),
            "identical",
            path="/account/billing/%0D%0Ax",
            config={"exclude": ("/account/billing",)},
        ),
    ),
    _c(
        "excluded-route-encoded-nul",
        Case(
            (PAGE,),
            "identical",
            path="/account/billing%00.html",
            config={"exclude": ("/account/billing",)},
        ),
    ),
    _c(
        "excluded-star-encoded-newline",
        Case((PAGE,), "identical", path="/admin/%0A/x", config={"exclude": ("/admin/*",)}),
    ),
    _c(
        "excluded-route-non-ascii",
        Case(
            (PAGE,),
            "identical",
            path="/caf%C3%A9/%E2%80%A8",
            config={"exclude": ("/café/*",)},
        ),
    ),
    _c(
        "excluded-regex-encoded-newline",
        Case(
            (PAGE,),
            "identical",
            path="/secret/%0A/edit",
            config={"exclude": (re.compile(r"^/secret/.*/edit$"),)},
        ),
    ),
    _c(
        "not-excluded-sibling-non-ascii",
        Case(
            (PAGE,),
            "injected",
            path="/account/billing%C3%A9",
            config={"exclude": ("/account/billing",)},
            per_user=True,
        ),
    ),
    # Item 5 of issue 8 (H10): responses a shared cache may store get the user-agnostic snippet.
    _c(
        "cacheable-private-field-qualified",
        Case(
            (PAGE,),
            "injected",
            headers=(HTML, ("cache-control", 'max-age=600, private="Set-Cookie"')),
            expect_headers={"vary": None, "set-cookie": None},
            per_user=False,
        ),
    ),
    _c(
        "cacheable-private-qualified-list",
        Case(
            (PAGE,),
            "injected",
            headers=(HTML, ("cache-control", 'private="Set-Cookie, X-User", max-age=600')),
            expect_headers={"vary": None, "set-cookie": None},
            per_user=False,
        ),
    ),
    _c(
        "cacheable-no-cache-qualified-expires",
        Case(
            (PAGE,),
            "injected",
            headers=(
                HTML,
                ("cache-control", 'no-cache="Set-Cookie"'),
                ("expires", "Thu, 01 Jan 2099 00:00:00 GMT"),
            ),
            expect_headers={"vary": None, "set-cookie": None},
            per_user=False,
        ),
    ),
    _c(
        "cacheable-cdn-cache-control",
        Case(
            (PAGE,),
            "injected",
            headers=(HTML, ("cache-control", "private"), ("cdn-cache-control", "max-age=600")),
            expect_headers={"vary": None, "set-cookie": None},
            per_user=False,
        ),
    ),
    _c(
        "cacheable-cloudflare-cdn-cache-control",
        Case(
            (PAGE,),
            "injected",
            headers=(HTML, ("Cloudflare-CDN-Cache-Control", "max-age=600")),
            expect_headers={"vary": None, "set-cookie": None},
            per_user=False,
        ),
    ),
    _c(
        "cacheable-heuristic-last-modified",
        Case(
            (PAGE,),
            "injected",
            headers=(HTML, LAST_MODIFIED),
            expect_headers={"vary": None, "set-cookie": None},
            per_user=False,
        ),
    ),
    _c(
        "cacheable-heuristic-404",
        Case(
            (PAGE,),
            "injected",
            status=404,
            headers=(HTML, LAST_MODIFIED),
            expect_headers={"vary": None, "set-cookie": None},
            per_user=False,
        ),
    ),
    _c(
        "per-user-last-modified-500",
        Case(
            (PAGE,),
            "injected",
            status=500,
            headers=(HTML, LAST_MODIFIED),
            expect_headers={"vary": "Cookie"},
            per_user=True,
        ),
    ),
    _c(
        "per-user-last-modified-no-cache",
        Case(
            (PAGE,),
            "injected",
            headers=(HTML, ("cache-control", "no-cache"), LAST_MODIFIED),
            expect_headers={"vary": "Cookie"},
            per_user=True,
        ),
    ),
    _c(
        "per-user-cdn-cache-control-no-store",
        Case(
            (PAGE,),
            "injected",
            headers=(HTML, ("cdn-cache-control", "no-store")),
            expect_headers={"vary": "Cookie"},
            per_user=True,
        ),
    ),
    _c(
        "per-user-invalid-cdn-cache-control-ignored",
        Case(
            (PAGE,),
            "injected",
            headers=(HTML, ("cache-control", "no-store"), ("cdn-cache-control", "Max-Age=600")),
            expect_headers={"vary": "Cookie"},
            per_user=True,
        ),
    ),
    _c(
        "per-user-past-expires",
        Case(
            (PAGE,),
            "injected",
            headers=(HTML, ("expires", "0"), LAST_MODIFIED),
            expect_headers={"vary": "Cookie"},
            per_user=True,
        ),
    ),
    # Item 7 of issue 8: a sandbox that lets scripts run in an opaque origin.
    _c(
        "csp-sandbox-opaque-origin",
        Case(
            (PAGE,),
            "identical",
            headers=(HTML, ("content-security-policy", "sandbox allow-scripts")),
        ),
    ),
    _c(
        "csp-sandbox-opaque-report-only",
        Case(
            (PAGE,),
            "injected",
            headers=(HTML, ("content-security-policy-report-only", "sandbox allow-scripts")),
        ),
    ),
    _c(
        "csp-off-leaves-policy",
        Case(
            (PAGE,),
            "injected",
            headers=(HTML, ("content-security-policy", "default-src 'self'")),
            config={"csp": "off"},
            expect_headers={"content-security-policy": "default-src 'self'"},
        ),
    ),
]


def check(case: Case, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
    """Assert the adapter's output for ``case`` (headers as str pairs, body joined)."""
    original = case.app_headers()
    if case.expect == "identical":
        assert status == case.status
        assert headers == original
        assert body == (b"" if case.method == "HEAD" else case.source)
        return
    assert status == case.status
    matches = list(SNIPPET_RE.finditer(body))
    assert len(matches) == 1, body
    m = matches[0]
    expected_at = b"".join(case.body).index(b"|")
    assert m.start() == expected_at, (m.start(), expected_at, body)
    assert body[: m.start()] + body[m.end() :] == case.source
    lower: dict[str, list[str]] = {}
    for k, v in headers:
        lower.setdefault(k.lower(), []).append(v)
    if case.set_length:
        assert lower["content-length"] == [str(len(body))]
    nonce = m.group(1)
    if "content-security-policy" in lower and case.config.get("csp") != "off":
        # The merged policy allows our tag by its nonce (C3).
        assert nonce is not None
        assert f"'nonce-{nonce[8:-1].decode()}'" in lower["content-security-policy"][0]
    for name, value in case.expect_headers.items():
        if value is None:
            assert name not in lower, (name, lower.get(name))
        else:
            assert lower.get(name) == [value], (name, lower.get(name))
    if case.per_user is not None:
        data = json.loads(re.search(rb">(\{.*?\})</script>", m.group(0)).group(1))  # type: ignore[union-attr]
        assert (data["ids"] is not None) is case.per_user, data
        # H10: a cookie only where the snippet is per-visitor (a fresh visitor gets one).
        assert ("set-cookie" in lower) is case.per_user, lower.get("set-cookie")
