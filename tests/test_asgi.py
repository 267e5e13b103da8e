"""The ASGI adapter, driven with hand-built scopes and a recording ``send`` (STYLE 19)."""

from __future__ import annotations

import gc
import gzip
import json
import logging
import re
import threading
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest

from replay_middleware import (
    ReplayConfig,
    ReplayMiddleware,
    current_replay,
    get_replay_properties,
    local_store,
)
from replay_middleware.asgi import Message, Receive, Scope, Send
from replay_middleware.identity import IdentityCodec

from .cases import CASES, Case, check

pytestmark = pytest.mark.anyio

PAGE = b"<!DOCTYPE html><html><head><title>t</title></head><body><p>hi</p></body></html>"
HTML = [(b"content-type", b"text/html; charset=utf-8")]


def scope(
    path: str = "/", method: str = "GET", headers: Sequence[tuple[bytes, bytes]] = (), **extra: Any
) -> Scope:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": list(headers),
        "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 80),
        **extra,
    }


def responder(*messages: Message, seen: list[Scope] | None = None) -> Any:
    async def app(s: Scope, receive: Receive, send: Send) -> None:
        if seen is not None:
            seen.append(s)
        for m in messages:
            await send(m)

    return app


def start(status: int = 200, headers: Sequence[tuple[bytes, bytes]] = HTML) -> Message:
    return {"type": "http.response.start", "status": status, "headers": list(headers)}


def body(data: bytes, more: bool = False) -> Message:
    return {"type": "http.response.body", "body": data, "more_body": more}


async def run(app: Any, s: Scope, *, config: ReplayConfig | None = None) -> list[Message]:
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(m: Message) -> None:
        sent.append(m)

    mw = ReplayMiddleware(app, config=config or ReplayConfig(sample_rate=1))
    await mw(s, receive, send)
    return sent


def headers_of(m: Message) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for k, v in m["headers"]:
        out.setdefault(k.decode().lower(), []).append(v.decode())
    return out


def whole_body(sent: list[Message]) -> bytes:
    return b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")


@pytest.fixture(autouse=True)
def fixed_nonce(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("replay_middleware.rewrite.new_nonce", lambda: "TESTNONCE")


async def test_html_page_gets_snippet_before_head_end_with_exact_length() -> None:
    app = responder(
        start(headers=[*HTML, (b"content-length", str(len(PAGE)).encode()), (b"etag", b'"abc"')]),
        body(PAGE),
    )
    sent = await run(app, scope())
    out = whole_body(sent)
    head, _, rest = out.partition(b"</head>")
    assert head.startswith(
        b'<!DOCTYPE html><html><head><title>t</title><script type="application/json" id="replay-middleware-config">'
    )
    assert head.endswith(b' nonce="TESTNONCE" id="replay-middleware-loader"></script>')
    assert rest == b"<body><p>hi</p></body></html>"
    h = headers_of(sent[0])
    assert h["content-length"] == [str(len(out))]
    assert h["etag"] == ['W/"abc"']
    assert h["x-replay-middleware"] == ["injected"]
    assert h["vary"] == ["Cookie"]
    assert h["set-cookie"][0].startswith("replay_id=")


async def test_json_response_is_byte_identical() -> None:
    original = [(b"content-type", b"application/json"), (b"content-length", b"2")]
    sent = await run(
        responder(start(headers=original), body(b"{}")),
        scope(),
        config=ReplayConfig(sample_rate=1, debug_header=False),
    )
    assert sent == [start(headers=original), body(b"{}")]


async def test_head_request_is_untouched() -> None:
    original = [*HTML, (b"content-length", b"80")]
    sent = await run(
        responder(start(headers=original), body(b"")),
        scope(method="HEAD"),
        config=ReplayConfig(sample_rate=1, debug_header=False),
    )
    assert sent == [start(headers=original), body(b"")]


async def test_streaming_without_length_forwards_chunks_and_adds_no_length() -> None:
    chunks = [
        b"<!doctype html><html><he",
        b"ad><title>x</title></he",
        b"ad><body>",
        b"<p>1</p>",
        b"</body></html>",
    ]
    app = responder(start(), *[body(c, more=True) for c in chunks], body(b""))
    sent = await run(app, scope())
    assert "content-length" not in headers_of(sent[0])
    bodies = [m for m in sent if m["type"] == "http.response.body"]
    # Nothing is held once the head has ended: the later chunks go out one by one, unchanged.
    assert [m["body"] for m in bodies[-3:]] == [b"<p>1</p>", b"</body></html>", b""]
    assert whole_body(sent).count(b"replay-middleware-config") == 1


async def test_unsampled_session_gets_no_snippet_but_keeps_its_cookie() -> None:
    sent = await run(
        responder(start(), body(PAGE)),
        scope(),
        config=ReplayConfig(sample_rate=0, debug_header=False),
    )
    assert whole_body(sent) == PAGE
    h = headers_of(sent[0])
    assert "x-replay-middleware" not in h
    assert h["set-cookie"][0].startswith("replay_id=")  # sticky sampling needs a stable session


async def test_excluded_route_gets_nothing() -> None:
    config = ReplayConfig(sample_rate=1, exclude=("/account/billing",))
    sent = await run(responder(start(), body(PAGE)), scope("/account/billing/x"), config=config)
    assert whole_body(sent) == PAGE
    h = headers_of(sent[0])
    assert "set-cookie" not in h
    assert h["x-replay-decision"] == ["excluded_route"]


async def test_gpc_visitor_gets_no_snippet_and_no_cookie() -> None:
    sent = await run(responder(start(), body(PAGE)), scope(headers=[(b"sec-gpc", b"1")]))
    assert whole_body(sent) == PAGE
    assert "set-cookie" not in headers_of(sent[0])


async def test_shared_cacheable_page_gets_user_agnostic_snippet_and_no_cookie() -> None:
    app = responder(start(headers=[*HTML, (b"cache-control", b"public, max-age=600")]), body(PAGE))
    sent = await run(app, scope())
    out = whole_body(sent)
    assert b'"ids":null' in out and b'"record":null' in out
    h = headers_of(sent[0])
    assert "set-cookie" not in h and "vary" not in h


async def test_non_http_scopes_pass_straight_through() -> None:
    seen: list[Scope] = []
    for kind in ("websocket", "lifespan"):
        s = {"type": kind}
        sent = await run(responder({"type": "x"}, seen=seen), s)
        assert sent == [{"type": "x"}]
    assert seen == [{"type": "websocket"}, {"type": "lifespan"}]


async def test_pathsend_passes_through_with_original_start() -> None:
    original = [*HTML, (b"content-length", b"100")]
    app = responder(
        start(headers=original), {"type": "http.response.pathsend", "path": "/tmp/x.html"}
    )
    sent = await run(app, scope(), config=ReplayConfig(sample_rate=1, debug_header=False))
    assert sent[0]["headers"] == original
    assert sent[1] == {"type": "http.response.pathsend", "path": "/tmp/x.html"}


async def test_trailers_pass_through_after_the_body() -> None:
    trailers = {
        "type": "http.response.trailers",
        "headers": [(b"x-checksum", b"1")],
        "more_trailers": False,
    }
    app = responder({**start(), "trailers": True}, body(PAGE), trailers)
    sent = await run(app, scope())
    assert sent[-1] == trailers
    assert b"replay-middleware-config" in whole_body(sent)


async def test_app_exception_propagates_unchanged() -> None:
    class Boom(Exception):
        pass

    async def app(s: Scope, receive: Receive, send: Send) -> None:
        await send(start())
        await send(body(b"<!doctype html><html><head>", more=True))
        raise Boom

    with pytest.raises(Boom):
        await run(app, scope())


async def test_client_disconnect_error_propagates_from_send() -> None:
    async def app(s: Scope, receive: Receive, send: Send) -> None:
        await send(start())
        await send(body(PAGE))

    async def broken_send(m: Message) -> None:
        raise OSError("client went away")

    async def receive() -> Message:
        return {"type": "http.disconnect"}

    with pytest.raises(OSError, match="client went away"):
        await ReplayMiddleware(app, config=ReplayConfig(sample_rate=1))(
            scope(), receive, broken_send
        )


async def test_fail_open_when_our_code_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*a: object, **k: object) -> str:
        raise RuntimeError("renderer bug")

    monkeypatch.setattr("replay_middleware.engine.ReplayEngine.render_snippet", broken)
    original = [*HTML, (b"content-length", str(len(PAGE)).encode())]
    chunks = [PAGE[:20], PAGE[20:]]
    sent = await run(
        responder(start(headers=original), body(chunks[0], True), body(chunks[1])), scope()
    )
    assert sent[0]["headers"] == original
    assert whole_body(sent) == PAGE


async def test_installed_twice_injects_once() -> None:
    config = ReplayConfig(sample_rate=1)
    inner = ReplayMiddleware(responder(start(), body(PAGE)), config=config)
    sent = await run(inner, scope(), config=config)
    assert whole_body(sent).count(b"replay-middleware-config") == 1
    assert len(headers_of(sent[0])["set-cookie"]) == 1


async def test_page_that_already_holds_the_snippet_is_not_injected_again() -> None:
    page = PAGE.replace(
        b"</head>",
        b'<script type="application/json" id="replay-middleware-config">{}</script></head>',
    )
    sent = await run(responder(start(), body(page)), scope())
    assert whole_body(sent) == page


async def test_context_is_on_request_state_and_in_current_replay() -> None:
    got: dict[str, Any] = {}

    async def app(s: Scope, receive: Receive, send: Send) -> None:
        got["state"] = s["state"]["replay"]
        got["current"] = current_replay()
        got["props"] = get_replay_properties()
        await send(start(headers=[(b"content-type", b"application/json")]))
        await send(body(b"{}"))

    await run(app, scope("/api"))
    ctx = got["state"]
    assert got["current"] is ctx and ctx.sampled
    assert got["props"] == {"[Amplitude] Session Replay ID": f"{ctx.device_id}/{ctx.session_id}"}
    assert current_replay() is None


async def test_unknown_path_under_prefix_is_404_and_never_reaches_the_app() -> None:
    seen: list[Scope] = []
    sent = await run(responder(start(), body(b""), seen=seen), scope("/_replay/../admin"))
    assert sent[0]["status"] == 404 and seen == []


async def test_loader_is_served_with_immutable_caching() -> None:
    mw = ReplayMiddleware(responder(), config=ReplayConfig())
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=mw), base_url="http://test"
    ) as client:
        r = await client.get(mw.engine.loader_path)
        assert r.status_code == 200
        assert r.headers["cache-control"] == "public, max-age=31536000, immutable"
        assert r.headers["content-type"].startswith("text/javascript")
        assert b"replayMiddleware" in r.content
        again = await client.get(
            mw.engine.loader_path, headers={"if-none-match": r.headers["etag"]}
        )
        assert again.status_code == 304
        assert (await client.post(mw.engine.loader_path)).status_code == 405


async def test_sdk_bundle_is_served_first_party() -> None:
    mw = ReplayMiddleware(responder(), config=ReplayConfig())
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=mw), base_url="http://test"
    ) as client:
        r = await client.get("/_replay/sdk/1.51.6.js")
        assert r.status_code == 200
        assert len(r.content) == 472_630
        assert r.headers["cache-control"].endswith("immutable")
        assert (await client.get("/_replay/sdk/1.0.0.js")).status_code == 404


async def test_session_endpoint_returns_ids_and_sets_cookie() -> None:
    mw = ReplayMiddleware(responder(), config=ReplayConfig(sample_rate=1))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=mw), base_url="http://test"
    ) as client:
        r = await client.get("/_replay/session")
        data = r.json()
        assert r.headers["cache-control"] == "no-store"
        assert data["record"] is True
        cookie = client.cookies["replay_id"]
        assert cookie.startswith(f"{data['deviceId']}.{data['sessionId']}.")
        again = (await client.get("/_replay/session")).json()
        assert (again["deviceId"], again["sessionId"]) == (data["deviceId"], data["sessionId"])


async def test_local_mode_config_and_track_endpoints(tmp_path: Path) -> None:
    token = "asgi-inspector-token-0123456789"
    config = ReplayConfig(
        sample_rate=1, max_upload_bytes=1000, local_store_dir=str(tmp_path), inspector_token=token
    )
    mw = ReplayMiddleware(responder(), config=config)
    events = [json.dumps({"type": 4, "timestamp": 1735689600000, "data": {"href": "http://t/"}})]
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=mw), base_url="http://127.0.0.1"
    ) as client:
        r = await client.get("/_replay/config/local?config_group=browser")
        assert r.json() == {"configs": {"sessionReplay": {}}}
        ok = await client.post(
            "/_replay/track?device_id=d&session_id=1735689600000&type=replay",
            content=json.dumps({"version": 1, "events": events}).encode(),
            headers={"cookie": "secret=1", "authorization": "Bearer local"},
        )
        assert ok.status_code == 200
        # Framed by its length and without "no-store": with it, chromium lists a worker's
        # upload as failed (net::ERR_ABORTED) when the page is left (docs/page-exit.md).
        assert ok.headers["content-length"] == str(len(ok.content))
        assert "cache-control" not in ok.headers
        big = await client.post("/_replay/track", content=b"x" * 2000)
        assert big.status_code == 413 and re.search(r"payload.*exceed", big.text, re.I)
        assert (await client.get("/_replay/inspect")).status_code == 404  # no token yet
        sign_in = await client.get(f"/_replay/inspect?token={token}")
        assert sign_in.status_code == 303 and sign_in.headers["location"] == "/_replay/inspect"
        assert "SameSite=Strict" in sign_in.headers["set-cookie"]
        listing = await client.get("/_replay/inspect")  # the cookie, from now on
        assert listing.status_code == 200 and b"1735689600000" in listing.content
    assert mw.engine.store is not None
    [upload] = mw.engine.store.uploads("d", "1735689600000")
    assert "cookie" not in upload.headers and "authorization" not in upload.headers
    assert [e["type"] for e in mw.engine.store.events("d", "1735689600000")] == [4]
    await mw.aclose()


async def test_example_app_through_asgi_transport(tmp_path: Path) -> None:
    from examples.fastapi_app.app import create_app

    app = create_app(ReplayConfig(sample_rate=1, exclude=("/account/billing",)))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://test"
    ) as client:
        home = await client.get("/")
        assert home.status_code == 200 and b"replay-middleware-config" in home.content
        data = json.loads(
            re.search(rb'id="replay-middleware-config">(\{.*?\})</script>', home.content).group(1)
        )  # type: ignore[union-attr]
        assert str(data["ids"]["sessionId"]) in client.cookies["replay_id"]
        billing = await client.get("/account/billing")
        assert b"replay-middleware" not in billing.content
        who = (await client.get("/api/whoami")).json()
        assert who["replay"] == {
            "[Amplitude] Session Replay ID": f"{data['ids']['deviceId']}/{data['ids']['sessionId']}"
        }


@pytest.mark.parametrize("case", CASES)
async def test_injection_cases(case: Case) -> None:
    config = ReplayConfig(**{"sample_rate": 1.0, "debug_header": False, **case.config})
    messages: list[Message] = [
        start(case.status, [(k.encode(), v.encode()) for k, v in case.app_headers()])
    ]
    chunks = [c.replace(b"|", b"") for c in case.body]
    messages += [body(c, more=True) for c in chunks[:-1]] + [body(chunks[-1])]
    request_headers = [(k.encode(), v.encode()) for k, v in case.request_headers]
    sent = await run(
        responder(*messages), scope(case.asgi_path, case.method, request_headers), config=config
    )
    headers = [(k.decode(), v.decode()) for k, v in sent[0]["headers"]]
    out = whole_body(sent)
    if case.method == "HEAD":
        out = b""
    check(case, sent[0]["status"], headers, out)


async def test_session_endpoint_applies_privacy_signals_not_page_rules() -> None:
    mw = ReplayMiddleware(responder(), config=ReplayConfig(sample_rate=1))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=mw), base_url="http://test"
    ) as client:
        fetched = await client.get("/_replay/session", headers={"sec-fetch-dest": "empty"})
        assert fetched.json()["record"] is True
        gpc = await client.get("/_replay/session", headers={"sec-gpc": "1", "cookie": ""})
        assert gpc.json()["record"] is False
        assert gpc.headers["x-replay-decision"] == "opted_out_gpc"
        assert "set-cookie" not in gpc.headers


async def test_route_mask_level_overrides_privacy_for_that_route() -> None:
    config = ReplayConfig(
        sample_rate=1,
        privacy={"defaultMaskLevel": "light", "blockSelector": ".secret"},
        route_mask_levels={"/checkout/*": "conservative"},
    )
    checkout = whole_body(
        await run(responder(start(), body(PAGE)), scope("/checkout/pay"), config=config)
    )
    home = whole_body(await run(responder(start(), body(PAGE)), scope("/"), config=config))
    assert (
        b'"privacyConfig":{"defaultMaskLevel":"conservative","blockSelector":".secret"}' in checkout
    )
    assert b'"privacyConfig":{"defaultMaskLevel":"light","blockSelector":".secret"}' in home


async def test_endpoint_failure_answers_503_not_500(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*a: object, **k: object) -> None:
        raise RuntimeError("bug")

    monkeypatch.setattr("replay_middleware.engine.ReplayEngine._session", broken)
    sent = await run(responder(), scope("/_replay/session"))
    assert sent[0]["status"] == 503


async def test_lifespan_shutdown_releases_our_resources(monkeypatch: pytest.MonkeyPatch) -> None:
    closed: list[bool] = []
    monkeypatch.setattr(
        "replay_middleware.engine.ReplayEngine.close", lambda self: closed.append(True)
    )

    async def app(s: Scope, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return

    inbox = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    sent: list[Message] = []

    async def receive() -> Message:
        return inbox.pop(0)

    async def send(m: Message) -> None:
        sent.append(m)

    await ReplayMiddleware(app, config=ReplayConfig())({"type": "lifespan"}, receive, send)
    assert [m["type"] for m in sent] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert closed == [True]


# -- start-up: local-mode default rate, warnings on the first request (issue 7) --------------


def _replay_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "replay_middleware" and r.levelno == logging.WARNING
    ]


async def test_local_mode_records_every_session_when_sample_rate_is_unset(
    tmp_path: Path,
) -> None:
    mw = ReplayMiddleware(
        responder(start(), body(PAGE)), config=ReplayConfig(local_store_dir=str(tmp_path))
    )
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=mw), base_url="http://test"
    ) as client:
        r = await client.get("/")
    assert r.headers["x-replay-decision"] == "in_sample"
    assert r.headers["x-replay-middleware"] == "injected"


async def test_explicit_zero_in_local_mode_records_nothing_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "replay_middleware")
    config = ReplayConfig(sample_rate=0, local_store_dir=str(tmp_path))
    mw = ReplayMiddleware(responder(start(), body(PAGE)), config=config)
    assert _replay_warnings(caplog) == []  # nothing at construction
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=mw), base_url="http://test"
    ) as client:
        r = await client.get("/")
        assert r.headers["x-replay-decision"] == "not_in_sample"
        assert r.content == PAGE
        first = _replay_warnings(caplog)
        assert [m for m in first if "RECORDS NOTHING" in m]
        await client.get("/")
        await client.get(mw.engine.loader_path)
    assert _replay_warnings(caplog) == first  # once, not per request


async def test_lifespan_alone_logs_no_startup_warning(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "replay_middleware")

    async def app(s: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "lifespan.startup.complete"})

    async def receive() -> Message:
        return {"type": "lifespan.startup"}

    async def send(m: Message) -> None:
        pass

    mw = ReplayMiddleware(app, config=ReplayConfig(sample_rate=0))
    await mw({"type": "lifespan"}, receive, send)
    assert _replay_warnings(caplog) == []


async def test_missing_sdk_bundle_is_announced_once_and_pages_still_injected(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    missing = tmp_path / "vendor" / "session-replay-browser-1.51.6-min.js"
    monkeypatch.setattr("replay_middleware.engine.vendor_path", lambda version: missing)
    caplog.set_level(logging.WARNING, "replay_middleware")
    mw = ReplayMiddleware(
        responder(start(), body(PAGE)), config=ReplayConfig(local_store_dir=str(tmp_path))
    )
    assert _replay_warnings(caplog) == []
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=mw), base_url="http://test"
    ) as client:
        r = await client.get("/")
        await client.get("/")
    assert r.headers["x-replay-middleware"] == "injected"
    [message] = [m for m in _replay_warnings(caplog) if "SDK bundle" in m]
    assert str(missing) in message
    assert "/_replay/sdk/1.51.6.js" in message and "cdn.amplitude.com" in message
    assert "make setup" in message


async def test_sdk_from_the_cdn_needs_no_bundle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(
        "replay_middleware.engine.vendor_path", lambda version: tmp_path / "missing.js"
    )
    caplog.set_level(logging.WARNING, "replay_middleware")
    config = ReplayConfig(sdk_source="cdn", local_store_dir=str(tmp_path))
    await run(responder(start(), body(PAGE)), scope(), config=config)
    assert _replay_warnings(caplog)  # the local-mode ones
    assert not [m for m in _replay_warnings(caplog) if "SDK bundle" in m]


def snippet_data(html: bytes) -> dict[str, Any]:
    match = re.search(rb'id="replay-middleware-config">(\{.*?\})</script>', html)
    assert match is not None
    data: dict[str, Any] = json.loads(match.group(1))
    return data


@pytest.mark.parametrize(
    ("sdk_options", "eager"),
    [
        pytest.param({}, True, id="default-eager"),
        pytest.param({"eagerFullSnapshotSend": False}, False, id="user-turns-it-off"),
        pytest.param({"logLevel": 4}, True, id="other-options-keep-it"),
    ],
)
async def test_full_snapshot_is_sent_eagerly_unless_the_user_says_otherwise(
    sdk_options: dict[str, Any], eager: bool
) -> None:
    config = ReplayConfig(sample_rate=1, sdk_options=sdk_options)
    mw = ReplayMiddleware(
        responder(start(), body(b"<html><head></head><body>x</body></html>")), config=config
    )
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=mw), base_url="http://test"
    ) as client:
        page = await client.get("/")
    options = snippet_data(page.content)["options"]
    assert options["eagerFullSnapshotSend"] is eager
    assert {k: options[k] for k in sdk_options} == sdk_options


# -- local mode: hostile uploads and who may upload (issue 8) ------------------------------------

TRACK = "/_replay/track?device_id=d&session_id=1735689600000&type=replay"
# Issue 8's shape: a little gzip inflating to a million tiny events (3 MB; the real one, 50 MB).
BOMB = gzip.compress(b'{"version":1,"events":[' + b"{}," * 1_000_000 + b"{}]}")


async def test_local_track_answers_a_decompression_bomb_413_off_the_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads: list[int] = []
    decode = local_store.decode_payload

    def recording_decode(*args: Any, **kwargs: Any) -> Any:
        threads.append(threading.get_ident())
        return decode(*args, **kwargs)

    monkeypatch.setattr(local_store, "decode_payload", recording_decode)
    mw = ReplayMiddleware(responder(), config=ReplayConfig(local_store_dir=str(tmp_path)))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=mw), base_url="http://127.0.0.1"
    ) as client:
        r = await client.post(TRACK, content=BOMB, headers={"content-encoding": "gzip"})
    # The SDK splits a batch answered 413 with this wording (PROTOCOL §2); never a 500.
    assert r.status_code == 413 and re.search(r"payload.*exceed", r.text, re.I)
    assert mw.engine.store is not None and mw.engine.store.sessions() == []
    assert threads and threading.get_ident() not in threads  # decoded in a worker thread
    await mw.aclose()


@pytest.mark.parametrize(
    ("client", "base_url"),
    [
        pytest.param(("10.0.0.5", 50000), "http://127.0.0.1", id="remote-client"),
        pytest.param(("127.0.0.1", 50000), "http://shop.test", id="loopback-foreign-host"),
    ],
)
async def test_local_track_and_config_answer_only_the_inspectors_clients(
    tmp_path: Path, client: tuple[str, int], base_url: str
) -> None:
    mw = ReplayMiddleware(responder(), config=ReplayConfig(local_store_dir=str(tmp_path)))
    upload = json.dumps({"version": 1, "events": []}).encode()
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=mw, client=client), base_url=base_url
    ) as http:
        track = await http.post(TRACK, content=upload)
        config = await http.get("/_replay/config/local?config_group=browser")
    assert (track.status_code, config.status_code) == (404, 404)
    assert mw.engine.store is not None and mw.engine.store.sessions() == []
    await mw.aclose()


# -- O4 warnings that need a request to see -------------------------------------------------


async def _get_twice(mw: ReplayMiddleware, base_url: str = "http://test") -> httpx.Response:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=mw), base_url=base_url) as c:
        first = await c.get("/")
        await c.get("/other")
    return first


async def test_already_compressed_html_is_warned_once_with_the_fix(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    gz = gzip.compress(PAGE)
    headers = [*HTML, (b"content-encoding", b"gzip"), (b"content-length", str(len(gz)).encode())]
    mw = ReplayMiddleware(
        responder(start(headers=headers), body(gz)),
        config=ReplayConfig(local_store_dir=str(tmp_path)),
    )
    caplog.set_level(logging.WARNING, "replay_middleware")
    r = await _get_twice(mw)
    assert r.content == PAGE  # httpx decodes it: the page went out as the app made it
    [message] = [m for m in _replay_warnings(caplog) if "already compressed" in m]
    assert "first on /" in message and "GZipMiddleware" in message


async def test_uncompressed_html_gives_no_compression_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    mw = ReplayMiddleware(
        responder(start(), body(PAGE)), config=ReplayConfig(local_store_dir=str(tmp_path))
    )
    caplog.set_level(logging.WARNING, "replay_middleware")
    await _get_twice(mw)
    assert not [m for m in _replay_warnings(caplog) if "already compressed" in m]


@pytest.mark.parametrize(
    ("origin", "base_url", "warned"),
    [
        pytest.param("https://shop.example", "http://test", True, id="https-origin-http-request"),
        pytest.param("http://shop.example", "https://test", True, id="http-origin-https-request"),
        pytest.param("https://shop.example", "https://test", False, id="same-scheme"),
    ],
)
async def test_public_origin_scheme_differing_from_requests_is_warned_once(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    origin: str,
    base_url: str,
    warned: bool,
) -> None:
    mw = ReplayMiddleware(
        responder(start(), body(PAGE)),
        config=ReplayConfig(public_origin=origin, local_store_dir=str(tmp_path)),
    )
    caplog.set_level(logging.WARNING, "replay_middleware")
    await _get_twice(mw, base_url)
    found = [m for m in _replay_warnings(caplog) if "but a request arrived as" in m]
    assert len(found) == (1 if warned else 0)
    if warned:
        assert origin in found[0] and "X-Forwarded-Proto" in found[0]


@pytest.mark.parametrize(
    ("web_concurrency", "secret", "warned"),
    [
        pytest.param("4", None, True, id="workers-random-key"),
        pytest.param("4", "k" * 32, False, id="workers-with-secret"),
        pytest.param("1", None, False, id="one-worker"),
        pytest.param("", None, False, id="unset"),
    ],
)
async def test_no_secret_key_with_several_workers_is_warned_once(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    web_concurrency: str,
    secret: str | None,
    warned: bool,
) -> None:
    monkeypatch.setenv("WEB_CONCURRENCY", web_concurrency)
    mw = ReplayMiddleware(
        responder(start(), body(PAGE)),
        config=ReplayConfig(secret_key=secret, local_store_dir=str(tmp_path)),
    )
    caplog.set_level(logging.WARNING, "replay_middleware")
    await _get_twice(mw)
    found = [m for m in _replay_warnings(caplog) if "each worker process signs" in m]
    assert len(found) == (1 if warned else 0)


# -- secret rotation (issue 9) ---------------------------------------------------------------

OLD_KEY, NEW_KEY = "old-secret-key-0123456789", "new-secret-key-0123456789"


async def _cookie_after_get(
    secret_key: str | tuple[str, ...],
    tmp_path: Path,
    cookie: str | None = None,
    headers: Sequence[tuple[bytes, bytes]] = HTML,
) -> str | None:
    config = ReplayConfig(secret_key=secret_key, local_store_dir=str(tmp_path))
    mw = ReplayMiddleware(responder(start(200, headers), body(PAGE)), config=config)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=mw), base_url="http://test"
    ) as client:
        if cookie is not None:
            client.cookies.set("replay_id", cookie)
        r = await client.get("/")
        assert r.status_code == 200
        return r.cookies.get("replay_id")


async def test_old_key_cookie_is_reissued_with_the_newest_key(tmp_path: Path) -> None:
    old = await _cookie_after_get(OLD_KEY, tmp_path)
    assert old is not None
    new = await _cookie_after_get((OLD_KEY, NEW_KEY), tmp_path, old)
    assert new is not None
    assert IdentityCodec(OLD_KEY).loads(new) is None
    reissued, kept = IdentityCodec(NEW_KEY).loads(new), IdentityCodec(OLD_KEY).loads(old)
    assert reissued is not None and kept is not None
    # The device and session survive the rotation.
    assert (reissued.device_id, reissued.session_id) == (kept.device_id, kept.session_id)


async def test_unknown_key_cookie_gets_a_fresh_identity(tmp_path: Path) -> None:
    old = await _cookie_after_get("unknown-secret-key-0123", tmp_path)
    assert old is not None
    new = await _cookie_after_get((OLD_KEY, NEW_KEY), tmp_path, old)
    assert new is not None and new.split(".")[0] != old.split(".")[0]


async def test_old_key_cookie_is_not_reissued_on_a_shared_cacheable_page(tmp_path: Path) -> None:
    old = await _cookie_after_get(OLD_KEY, tmp_path)
    cacheable = [*HTML, (b"cache-control", b"public, max-age=60")]
    assert await _cookie_after_get((OLD_KEY, NEW_KEY), tmp_path, old, cacheable) is None


class _Held:
    """Something a server or framework keeps in the scope (weakly referenceable)."""


@pytest.mark.parametrize(
    ("headers", "asked"),
    [
        pytest.param([(b"content-type", b"application/json")], False, id="api"),
        pytest.param(HTML, True, id="page"),
    ],
)
async def test_the_scope_and_what_it_holds_are_freed_without_the_garbage_collector(
    headers: list[tuple[bytes, bytes]], asked: bool
) -> None:
    """Issue 10: what the middleware puts in the scope (``scope["state"]``, the lazy decision)
    never refers back to the scope, so a request leaves no cyclic garbage whether or not its
    decision was asked for; the decision still answers after the response."""
    held = _Held()
    s = scope("/api/items", headers=[(b"x-trace", b"t1")], app=held)
    gone = weakref.ref(held)
    del held
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        sent = await run(
            responder(start(headers=headers), body(b"{}")),
            s,
            config=ReplayConfig(sample_rate=1, debug_header=False),
        )
        state, lazy = s["state"], s["replay_middleware"]
        assert (lazy._state is not None) is asked
        del s
        assert gone() is None  # freed by its reference count, at once
        assert state["replay"].reason == "in_sample"
    finally:
        if was_enabled:
            gc.enable()
    assert whole_body(sent) == b"{}"
