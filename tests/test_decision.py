from __future__ import annotations

import pytest

from replay_middleware import ReplayConfig, RequestInfo
from replay_middleware.decision import decide, response_skip_reason
from replay_middleware.identity import Identity
from replay_middleware.routes import RouteRules

IN = Identity("dev", 1735689600000, 1735689600000)  # hash % 1e6 = 1045: in sample at 0.01
OUT = Identity("dev", 1700000000001, 1700000000001)  # 570550: out at 0.5


def run(
    config: ReplayConfig,
    *,
    path: str = "/",
    headers: list[tuple[str, str]] | None = None,
    method: str = "GET",
    identity: Identity = IN,
    **kw: object,
):  # type: ignore[no-untyped-def]
    request = RequestInfo.from_pairs(method, path, headers or [])
    return decide(request, identity, config, RouteRules(config.exclude, config.include), **kw)  # type: ignore[arg-type]


def test_in_sample_is_recorded() -> None:
    ctx = run(ReplayConfig(sample_rate=0.01))
    assert (ctx.sampled, ctx.reason) == (True, "in_sample")
    assert ctx.properties() == {"[Amplitude] Session Replay ID": "dev/1735689600000"}


def test_not_in_sample_is_not_recorded() -> None:
    ctx = run(ReplayConfig(sample_rate=0.5), identity=OUT)
    assert (ctx.sampled, ctx.reason, ctx.properties()) == (False, "not_in_sample", {})


def test_remote_sample_rate_overrides_local() -> None:
    ctx = run(ReplayConfig(sample_rate=0.0), sample_rate=0.01)
    assert ctx.reason == "in_sample" and ctx.sample_rate == 0.01


@pytest.mark.parametrize(
    ("config", "path", "headers", "reason"),
    [
        pytest.param(
            ReplayConfig(sample_rate=1, exclude=("/admin/*",), opt_out=True),
            "/admin/x",
            [],
            "excluded_route",
            id="route-before-opt-out",
        ),
        pytest.param(
            ReplayConfig(sample_rate=1, opt_out=True),
            "/",
            [],
            "opted_out_config",
            id="config-opt-out",
        ),
        pytest.param(
            ReplayConfig(sample_rate=1),
            "/",
            [("cookie", "replay_id_optout=1")],
            "opted_out_user",
            id="user-opt-out",
        ),
        pytest.param(
            ReplayConfig(sample_rate=1), "/", [("sec-gpc", "1")], "opted_out_gpc", id="gpc"
        ),
        pytest.param(
            ReplayConfig(sample_rate=1, respect_gpc=False),
            "/",
            [("sec-gpc", "1")],
            "in_sample",
            id="gpc-ignored",
        ),
        pytest.param(
            ReplayConfig(sample_rate=1), "/", [("dnt", "1")], "in_sample", id="dnt-off-by-default"
        ),
        pytest.param(
            ReplayConfig(sample_rate=1, respect_dnt=True),
            "/",
            [("dnt", "1")],
            "opted_out_dnt",
            id="dnt",
        ),
        pytest.param(
            ReplayConfig(sample_rate=1, consent=lambda r: None),
            "/",
            [],
            "no_consent",
            id="consent-unknown",
        ),
        pytest.param(
            ReplayConfig(sample_rate=1, consent=lambda r: True),
            "/",
            [],
            "in_sample",
            id="consent-yes",
        ),
        pytest.param(
            ReplayConfig(sample_rate=1, should_record=lambda r: False),
            "/",
            [],
            "should_record_false",
            id="gate",
        ),
        pytest.param(
            ReplayConfig(sample_rate=0, force_sample=lambda r: True), "/", [], "forced", id="forced"
        ),
        pytest.param(
            ReplayConfig(sample_rate=0, force_sample=lambda r: True, opt_out=True),
            "/",
            [],
            "opted_out_config",
            id="opt-out-beats-forced",
        ),
        pytest.param(
            ReplayConfig(sample_rate=1, include=("/app/*",)),
            "/other",
            [],
            "not_included",
            id="include",
        ),
    ],
)
def test_d1_order(
    config: ReplayConfig, path: str, headers: list[tuple[str, str]], reason: str
) -> None:
    assert run(config, path=path, headers=headers).reason == reason


@pytest.mark.parametrize(
    "path",
    [
        pytest.param("/account/billing\n", id="encoded-newline"),  # /account/billing%0A
        pytest.param("/account/billing/\r\nx", id="encoded-crlf-below"),  # .../%0D%0Ax
        pytest.param("/account/billing\r\n", id="encoded-crlf"),
        pytest.param("/account/billing\x00.html", id="encoded-nul"),
        pytest.param("/account/billing/\u2028", id="line-separator"),
    ],
)
def test_restricted_route_with_control_characters_is_excluded(path: str) -> None:
    ctx = run(ReplayConfig(sample_rate=1, exclude=("/account/billing",)), path=path)
    assert (ctx.sampled, ctx.reason, ctx.properties()) == (False, "excluded_route", {})


def test_remote_capture_disabled_beats_forced() -> None:
    ctx = run(ReplayConfig(sample_rate=1, force_sample=lambda r: True), capture_enabled=False)
    assert (ctx.sampled, ctx.reason) == (False, "capture_disabled")


def test_raising_consent_callable_means_no() -> None:
    def broken(r: RequestInfo) -> bool:
        raise RuntimeError("db down")

    assert run(ReplayConfig(sample_rate=1, consent=broken)).reason == "no_consent"


@pytest.mark.parametrize(
    ("method", "headers", "reason"),
    [
        pytest.param("POST", [], "method_not_get", id="post"),
        pytest.param("HEAD", [], "method_not_get", id="head"),
        pytest.param("GET", [("hx-request", "true")], "fragment_request", id="htmx"),
        pytest.param(
            "GET", [("hx-request", "true"), ("hx-boosted", "true")], "in_sample", id="htmx-boosted"
        ),
        pytest.param("GET", [("turbo-frame", "x")], "fragment_request", id="turbo"),
        pytest.param("GET", [("sec-fetch-dest", "empty")], "fragment_request", id="fetch"),
        pytest.param("GET", [("sec-fetch-dest", "iframe")], "iframe_request", id="iframe"),
    ],
)
def test_request_eligibility_reason_keeps_session_decision(
    method: str, headers: list[tuple[str, str]], reason: str
) -> None:
    ctx = run(ReplayConfig(sample_rate=1), method=method, headers=headers)
    assert ctx.reason == reason
    assert ctx.sampled  # an API call of a recorded session still carries the replay id (R1)


HTML = [("content-type", "text/html; charset=utf-8")]


@pytest.mark.parametrize(
    ("status", "headers", "reason"),
    [
        pytest.param(200, HTML, None, id="html"),
        pytest.param(
            200, [("Content-Type", "Text/HTML ; Charset=UTF-8")], None, id="case-and-spaces"
        ),
        pytest.param(404, HTML, None, id="404-page"),
        pytest.param(204, HTML, "status", id="204"),
        pytest.param(304, HTML, "status", id="304"),
        pytest.param(302, HTML, "status", id="302"),
        pytest.param(200, [("content-type", "application/json")], "not_html", id="json"),
        pytest.param(200, [("content-type", "application/xhtml+xml")], "not_html", id="xhtml"),
        pytest.param(200, [], "not_html", id="no-type"),
        pytest.param(200, [*HTML, ("content-type", "text/html")], "not_html", id="two-types"),
        pytest.param(200, [("content-type", "text/html; charset=utf-16")], "charset", id="utf16"),
        pytest.param(200, [*HTML, ("content-encoding", "gzip")], "encoded", id="gzip"),
        pytest.param(200, [*HTML, ("content-encoding", "identity")], None, id="identity"),
        pytest.param(
            200,
            [*HTML, ("content-disposition", 'Attachment; filename="a.html"')],
            "attachment",
            id="attachment",
        ),
        pytest.param(200, [*HTML, ("content-disposition", "inline")], None, id="inline"),
        pytest.param(
            200,
            [*HTML, ("cache-control", "public, no-transform")],
            "no_transform",
            id="no-transform",
        ),
        pytest.param(206, HTML, "status", id="206"),
        pytest.param(
            200, [*HTML, ("content-range", "bytes 0-9/100")], "partial", id="content-range"
        ),
        pytest.param(
            200,
            [*HTML, ("content-length", "10"), ("content-length", "11")],
            "bad_length",
            id="two-lengths",
        ),
        pytest.param(200, [*HTML, ("content-length", "ten")], "bad_length", id="bad-length"),
        pytest.param(200, [*HTML, ("content-length", "\u00b2")], "bad_length", id="unicode-digit"),
        pytest.param(
            200, [*HTML, ("x-replay-middleware", "injected")], "already_injected", id="marker"
        ),
    ],
)
def test_response_skip_reason(
    status: int, headers: list[tuple[str, str]], reason: str | None
) -> None:
    assert response_skip_reason(status, headers, ReplayConfig()) == reason
