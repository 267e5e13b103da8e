"""ReplayMiddleware with an API key: the first-party proxy and remote-config awareness,
against the fake Amplitude over real sockets."""

from __future__ import annotations

import json
import re
from typing import Any

import httpx
import pytest

from replay_middleware import ReplayConfig, ReplayMiddleware
from replay_middleware.identity import Identity

from .fake_amplitude import FakeAmplitude, Reply

pytestmark = pytest.mark.anyio

KEY = "0123456789abcdef0123456789abcdef"
PAGE = b"<!DOCTYPE html><html><head><title>t</title></head><body></body></html>"


async def page_app(scope: Any, receive: Any, send: Any) -> None:
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/html")]}
    )
    await send({"type": "http.response.body", "body": PAGE})


def middleware(fake: FakeAmplitude, **overrides: Any) -> ReplayMiddleware:
    config = ReplayConfig(
        **{"api_key": KEY, "secret_key": "s" * 32, "sample_rate": 1.0, **overrides}
    )
    return ReplayMiddleware(page_app, config=config, upstreams=fake.upstreams())


def client(mw: ReplayMiddleware) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=mw), base_url="http://shop.test")


def data_block(html: bytes) -> dict[str, Any]:
    m = re.search(rb'id="replay-middleware-config">(\{.*?\})</script>', html)
    assert m is not None, html
    return dict(json.loads(m.group(1)))


async def test_snippet_points_the_sdk_at_first_party_endpoints(
    fake_amplitude: FakeAmplitude,
) -> None:
    mw = middleware(fake_amplitude)
    async with client(mw) as c:
        data = data_block((await c.get("/")).content)
    assert data["endpoints"] == {"track": "/_replay/track", "config": "/_replay/config"}
    assert data["apiKey"] == KEY
    await mw.aclose()


async def test_direct_mode_keeps_amplitude_hosts(fake_amplitude: FakeAmplitude) -> None:
    mw = middleware(fake_amplitude, upload_mode="direct")
    async with client(mw) as c:
        r = await c.get("/")
        assert data_block(r.content)["endpoints"] is None
        # The proxy endpoints do not exist in direct mode.
        assert (
            await c.post("/_replay/track?device_id=d&session_id=1&type=replay")
        ).status_code == 404
    await mw.aclose()


async def test_upload_is_forwarded_without_cookies_and_slides_the_session(
    fake_amplitude: FakeAmplitude,
) -> None:
    mw = middleware(fake_amplitude)
    now = mw.engine.now_ms()
    ident = Identity("0b6a3c1e-5d7f-4a2b-9c8d-112233445566", now - 60_000, now - 60_000)
    cookie = f"replay_id={mw.engine.codec.dumps(ident)}; sessionid=site-secret"
    query = f"device_id={ident.device_id}&session_id={ident.session_id}&type=replay"
    async with client(mw) as c:
        r = await c.post(
            f"/_replay/track?{query}",
            content=b'{"version":1,"events":[]}',
            headers={
                "authorization": f"Bearer {KEY}",
                "content-type": "application/json",
                "cookie": cookie,
            },
        )
    assert r.status_code == 200
    [rec] = fake_amplitude.requests_for("track")
    assert rec.query == query
    assert rec.header("authorization") == f"Bearer {KEY}"
    assert rec.header("cookie") is None
    slid = r.headers["set-cookie"]
    assert slid.startswith(f"replay_id={ident.device_id}.{ident.session_id}.")
    assert int(slid.split(".")[2]) >= now
    await mw.aclose()


async def test_proxy_errors_never_set_cookies(fake_amplitude: FakeAmplitude) -> None:
    fake_amplitude.script("track", Reply.error(500))
    mw = middleware(fake_amplitude)
    now = mw.engine.now_ms()
    ident = Identity("0b6a3c1e-5d7f-4a2b-9c8d-112233445566", now, now)
    async with client(mw) as c:
        r = await c.post(
            f"/_replay/track?device_id={ident.device_id}&session_id={now}&type=replay",
            content=b"{}",
            headers={
                "authorization": f"Bearer {KEY}",
                "cookie": f"replay_id={mw.engine.codec.dumps(ident)}",
            },
        )
    assert r.status_code == 500 and "set-cookie" not in r.headers
    await mw.aclose()


async def test_unknown_key_is_refused_without_contacting_upstream(
    fake_amplitude: FakeAmplitude,
) -> None:
    mw = middleware(fake_amplitude)
    async with client(mw) as c:
        r = await c.post(
            "/_replay/track?device_id=d&session_id=1&type=replay",
            headers={"authorization": "Bearer other"},
        )
        cfg = await c.get("/_replay/config/other?config_group=browser")
    assert (r.status_code, cfg.status_code) == (403, 403)
    assert fake_amplitude.requests == []
    await mw.aclose()


async def test_config_is_proxied(fake_amplitude: FakeAmplitude) -> None:
    body = b'{"configs":{"sessionReplay":{"sr_sampling_config":{"sample_rate":0.5,"capture_enabled":true}}}}'
    fake_amplitude.set_default("config", Reply.config(body))
    mw = middleware(fake_amplitude)
    async with client(mw) as c:
        r = await c.get(f"/_replay/config/{KEY}?config_group=browser")
    assert r.status_code == 200 and r.content == body
    await mw.aclose()


async def test_remote_capture_disabled_means_no_recorder(fake_amplitude: FakeAmplitude) -> None:
    fake_amplitude.set_default(
        "config",
        Reply.config(
            b'{"configs":{"sessionReplay":{"sr_sampling_config":{"capture_enabled":false}}}}'
        ),
    )
    mw = middleware(fake_amplitude)
    assert mw.upstream is not None
    await mw.upstream.refresh_config()
    async with client(mw) as c:
        r = await c.get("/")
        session = (await c.get("/_replay/session")).json()
    assert b"replay-middleware-config" not in r.content
    assert session["record"] is False
    await mw.aclose()


async def test_remote_sample_rate_wins_over_local(fake_amplitude: FakeAmplitude) -> None:
    fake_amplitude.set_default(
        "config",
        Reply.config(
            b'{"configs":{"sessionReplay":{"sr_sampling_config":{"sample_rate":0,"capture_enabled":true}}}}'
        ),
    )
    mw = middleware(fake_amplitude, sample_rate=1.0)
    assert mw.upstream is not None
    await mw.upstream.refresh_config()
    async with client(mw) as c:
        r = await c.get("/")
    assert b"replay-middleware-config" not in r.content
    assert r.headers.get("x-replay-decision") is None  # debug header off outside local mode
    await mw.aclose()


async def test_request_path_never_waits_for_remote_config(fake_amplitude: FakeAmplitude) -> None:
    fake_amplitude.set_default("config", Reply.hang())
    mw = middleware(fake_amplitude)
    async with client(mw) as c:
        with anyio_fail_after(0.5):
            r = await c.get("/")
    assert b"replay-middleware-config" in r.content  # local rate until the remote config is known
    await mw.aclose()


def anyio_fail_after(seconds: float) -> Any:
    import anyio

    return anyio.fail_after(seconds)


async def test_proxy_bug_before_the_response_answers_503(
    fake_amplitude: FakeAmplitude, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(*args: object) -> None:
        raise RuntimeError("bug")

    mw = middleware(fake_amplitude)
    assert mw.upstream is not None
    monkeypatch.setattr(mw.upstream, "handle_track", broken)
    async with client(mw) as c:
        r = await c.post(
            "/_replay/track?device_id=d&session_id=1&type=replay",
            headers={"authorization": f"Bearer {KEY}"},
        )
    assert r.status_code == 503
    await mw.aclose()


# --- slow clients (notes/proxy.md cases 43-45) ------------------------------------------------

TRACK = "/_replay/track?device_id=dev-1&session_id=1735689600000&type=replay"
UPLOAD = b'{"version":1,"events":["{\\"type\\":4,\\"timestamp\\":1}"]}'
AUTH = {"authorization": f"Bearer {KEY}", "content-type": "application/json"}


async def admitted(mw: ReplayMiddleware) -> None:
    """Wait (5 s at most) until the proxy holds an upload in flight."""
    import anyio

    assert mw.upstream is not None
    with anyio.fail_after(5):
        while not mw.upstream.client_slots.in_flight():
            await anyio.sleep(0.01)


async def test_a_trickling_upload_holds_no_upstream_connection(
    fake_amplitude: FakeAmplitude,
) -> None:
    import anyio

    async def trickle() -> Any:
        yield b"{"
        for _ in range(30):  # bounded: 3 s at most
            await anyio.sleep(0.1)
            yield b" "

    # One upstream connection in all: before, the trickling upload took it as soon as its
    # first byte passed the sniff, and the honest one got "503 pool_exhausted".
    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=1)) as one:
        mw = middleware(fake_amplitude, client_body_timeout=3.0, http_client=one)
        slow: list[httpx.Response] = []
        async with client(mw) as c, anyio.create_task_group() as tg:

            async def slow_upload() -> None:
                headers = {**AUTH, "content-length": "100000"}
                slow.append(await c.post(TRACK, content=trickle(), headers=headers))

            tg.start_soon(slow_upload)
            await admitted(mw)  # the slow body is trickling
            honest = await c.post(TRACK, content=UPLOAD, headers=AUTH)
            meanwhile = len(fake_amplitude.requests)
        await mw.aclose()
    assert honest.status_code == 200 and meanwhile == 1
    assert slow[0].status_code == 408 and slow[0].json() == {"error": "client_timeout"}
    assert len(fake_amplitude.requests) == 1  # the slow body never went up


async def test_a_client_over_its_cap_gets_429(fake_amplitude: FakeAmplitude) -> None:
    import anyio

    release = anyio.Event()

    async def held() -> Any:
        yield b"{"
        with anyio.fail_after(5):
            await release.wait()
        yield b"}"

    mw = middleware(fake_amplitude, max_uploads_per_client=1)
    async with client(mw) as c, anyio.create_task_group() as tg:
        first: list[httpx.Response] = []

        async def held_upload() -> None:
            headers = {**AUTH, "content-length": "2"}
            first.append(await c.post(TRACK, content=held(), headers=headers))

        tg.start_soon(held_upload)
        await admitted(mw)
        over = await c.post(TRACK, content=UPLOAD, headers=AUTH)
        release.set()
    async with client(mw) as c:
        after = await c.post(TRACK, content=UPLOAD, headers=AUTH)
    await mw.aclose()
    assert over.status_code == 429 and over.headers["retry-after"] == "1"
    assert "set-cookie" not in over.headers
    assert (first[0].status_code, after.status_code) == (200, 200)


def test_a_slow_loris_under_uvicorn_gets_408_and_never_reaches_amplitude(
    fake_amplitude: FakeAmplitude,
) -> None:  # a real server: its receive(), its http.disconnect
    import socket
    import threading
    import time

    import uvicorn

    from .fake_amplitude import SlowClient

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "lifespan":
            return await page_app(scope, receive, send)
        while True:  # until lifespan.shutdown, where the middleware closes its client
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return

    config = ReplayConfig(
        api_key=KEY, secret_key="s" * 32, sample_rate=1.0, client_body_timeout=3.0
    )
    mw = ReplayMiddleware(app, config=config, upstreams=fake_amplitude.upstreams())
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(mw, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started:
            assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
            time.sleep(0.02)
        with SlowClient(port, TRACK, {"Authorization": f"Bearer {KEY}"}) as slow:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", trust_env=False) as c:
                honest = c.post(TRACK, content=UPLOAD, headers=AUTH)
            meanwhile = [r.route for r in fake_amplitude.requests]
            status = slow.status()
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
    assert honest.status_code == 200 and meanwhile.count("track") == 1
    assert status == 408
    assert len(fake_amplitude.requests_for("track")) == 1
