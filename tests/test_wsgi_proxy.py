"""ReplayWSGIMiddleware with an API key (the first-party proxy through ``UploadProxy``), and
``UploadProxy`` / ``AsyncUploadProxy.track_stream`` driven directly, against the fake Amplitude
over real sockets."""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import hashlib
import io
import json
import os
import re
import socket
import ssl
import threading
import time
import tracemalloc
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from typing import Any

import httpx
import pytest
from werkzeug.test import Client

from replay_middleware import ReplayConfig, ReplayWSGIMiddleware, RequestInfo
from replay_middleware.identity import Identity
from replay_middleware.upstream import (
    AsyncUploadProxy,
    NullCookieJar,
    ProxyReply,
    ResponseAborted,
    UploadProxy,
)
from replay_middleware.wsgi import Environ, StartResponse

from .fake_amplitude import FakeAmplitude, Reply, SlowClient

KEY = "0123456789abcdef0123456789abcdef"
PAGE = b"<!DOCTYPE html><html><head><title>t</title></head><body></body></html>"
QUERY = "device_id=dev-1&session_id=1735689600000&type=replay"
BODY = b'{"version":1,"events":["{\\"type\\":4,\\"timestamp\\":1}"]}'
SDK_HEADERS = {
    "content-type": "application/json",
    "authorization": f"Bearer {KEY}",
    "x-client-version": "1.51.6",
}


def page_app(env: Environ, start_response: StartResponse) -> Iterable[bytes]:
    start_response("200 OK", [("content-type", "text/html")])
    return [PAGE]


def middleware(fake: FakeAmplitude, **overrides: Any) -> ReplayWSGIMiddleware:
    config = ReplayConfig(
        **{"api_key": KEY, "secret_key": "s" * 32, "sample_rate": 1.0, **overrides}
    )
    return ReplayWSGIMiddleware(page_app, config, upstreams=fake.upstreams())


def data_block(html: bytes) -> dict[str, Any]:
    m = re.search(rb'id="replay-middleware-config">(\{.*?\})</script>', html)
    assert m is not None, html
    return dict(json.loads(m.group(1)))


def pool_busy(proxy: UploadProxy) -> int:
    """Connections in use or requests waiting, in the proxy's own upload pool and in its
    httpx client's (0 = nothing leaked)."""
    own = proxy._pool.busy if proxy._pool is not None else 0
    if proxy._client is None:
        return own
    pool = proxy._client._transport._pool  # type: ignore[attr-defined]
    busy = [c for c in pool.connections if not (c.is_idle() or c.is_closed())]
    return own + len(busy) + len(pool._requests)


def make_proxy(fake: FakeAmplitude | None, **kw: Any) -> UploadProxy:
    options = {
        k: kw.pop(k)
        for k in list(kw)
        if k
        in (
            "upstream_timeout",
            "max_upload_bytes",
            "client_body_timeout",
            "max_uploads_per_client",
            "upload_memory_bytes",
            "trusted_proxies",
            "config_cache_ttl",
            "http_client",
        )
    }
    config = ReplayConfig(api_key=KEY, secret_key="s" * 32, **options)
    if fake is not None:
        kw.setdefault("upstreams", fake.upstreams())
    return UploadProxy(config, **kw)


def track(
    headers: dict[str, str] | None = None, query: str = QUERY, *, client: str = "203.0.113.7"
) -> RequestInfo:
    pairs = list((SDK_HEADERS if headers is None else headers).items())
    return RequestInfo.from_pairs(
        "POST", "/_replay/track", pairs, query_string=query, client=client
    )


def reader(data: bytes) -> Callable[[int], bytes]:
    return io.BytesIO(data).read


def drain(reply: ProxyReply) -> bytes:
    try:
        return b"".join(reply.body)
    finally:
        reply.close()


# --- the middleware in proxy mode -------------------------------------------------------------


def test_snippet_points_the_sdk_at_first_party_endpoints(fake_amplitude: FakeAmplitude) -> None:
    mw = middleware(fake_amplitude)
    data = data_block(Client(mw).get("/").data)
    assert data["endpoints"] == {"track": "/_replay/track", "config": "/_replay/config"}
    mw.close()


def test_upload_is_forwarded_without_cookies_and_slides_the_session(
    fake_amplitude: FakeAmplitude,
) -> None:
    mw = middleware(fake_amplitude)
    now = mw.engine.now_ms()
    ident = Identity("0b6a3c1e-5d7f-4a2b-9c8d-112233445566", now - 60_000, now - 60_000)
    query = f"device_id={ident.device_id}&session_id={ident.session_id}&type=replay"
    r = Client(mw, use_cookies=False).post(
        f"/_replay/track?{query}",
        data=b'{"version":1,"events":[]}',
        headers={
            "authorization": f"Bearer {KEY}",
            "content-type": "application/json",
            "cookie": f"replay_id={mw.engine.codec.dumps(ident)}; sessionid=site-secret",
        },
    )
    assert r.status_code == 200
    [rec] = fake_amplitude.requests_for("track")
    assert rec.query == query
    assert rec.header("authorization") == f"Bearer {KEY}"
    assert rec.header("cookie") is None
    assert rec.header("content-length") == str(len(b'{"version":1,"events":[]}'))
    slid = r.headers["set-cookie"]
    assert slid.startswith(f"replay_id={ident.device_id}.{ident.session_id}.")
    assert int(slid.split(".")[2]) >= now
    mw.close()


def test_upload_over_the_cap_gets_413_in_the_sdk_wording(fake_amplitude: FakeAmplitude) -> None:
    mw = middleware(fake_amplitude, max_upload_bytes=1000)
    r = Client(mw).post(f"/_replay/track?{QUERY}", data=b"{" + b"x" * 2000, headers=SDK_HEADERS)
    assert r.status_code == 413 and re.search(r"payload.*exceed", r.text, re.I)
    assert fake_amplitude.requests == []
    mw.close()


def test_proxy_errors_never_set_cookies(fake_amplitude: FakeAmplitude) -> None:
    fake_amplitude.script("track", Reply.error(500))
    mw = middleware(fake_amplitude)
    now = mw.engine.now_ms()
    ident = Identity("0b6a3c1e-5d7f-4a2b-9c8d-112233445566", now, now)
    r = Client(mw, use_cookies=False).post(
        f"/_replay/track?device_id={ident.device_id}&session_id={now}&type=replay",
        data=b"{}",
        headers={
            "authorization": f"Bearer {KEY}",
            "cookie": f"replay_id={mw.engine.codec.dumps(ident)}",
        },
    )
    assert r.status_code == 500 and "set-cookie" not in r.headers
    mw.close()


def test_unknown_key_is_refused_without_contacting_upstream(fake_amplitude: FakeAmplitude) -> None:
    mw = middleware(fake_amplitude)
    client = Client(mw)
    r = client.post(f"/_replay/track?{QUERY}", headers={"authorization": "Bearer other"})
    cfg = client.get("/_replay/config/other?config_group=browser")
    assert (r.status_code, cfg.status_code) == (403, 403)
    assert fake_amplitude.requests == []
    mw.close()


def test_config_is_proxied_and_cached(fake_amplitude: FakeAmplitude) -> None:
    body = b'{"configs":{"sessionReplay":{"sr_sampling_config":{"sample_rate":0.5,"capture_enabled":true}}}}'
    fake_amplitude.set_default("config", Reply.config(body))
    mw = middleware(fake_amplitude)
    client = Client(mw)
    first = client.get(f"/_replay/config/{KEY}?config_group=browser")
    second = client.get(f"/_replay/config/{KEY}?config_group=browser")
    assert (first.status_code, first.data) == (200, body)
    assert second.data == body and second.headers["cache-control"] == "no-store"
    assert len(fake_amplitude.requests_for("config")) == 1
    mw.close()


def test_remote_capture_disabled_means_no_recorder(fake_amplitude: FakeAmplitude) -> None:
    fake_amplitude.set_default(
        "config",
        Reply.config(
            b'{"configs":{"sessionReplay":{"sr_sampling_config":{"capture_enabled":false}}}}'
        ),
    )
    mw = middleware(fake_amplitude)
    assert mw.upstream is not None
    mw.upstream.refresh_config()
    client = Client(mw)
    page = client.get("/")
    assert b"replay-middleware-config" not in page.data
    assert client.get("/_replay/session").get_json()["record"] is False
    mw.close()


def test_request_path_never_waits_for_remote_config(fake_amplitude: FakeAmplitude) -> None:
    fake_amplitude.set_default("config", Reply.hang())
    mw = middleware(fake_amplitude)
    started = time.perf_counter()
    page = Client(mw).get("/")
    assert time.perf_counter() - started < 0.5
    assert b"replay-middleware-config" in page.data  # the local rate until the remote is known
    mw.close()


def test_proxy_bug_before_the_response_answers_503(
    fake_amplitude: FakeAmplitude, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: object) -> None:
        raise RuntimeError("bug")

    mw = middleware(fake_amplitude)
    assert mw.upstream is not None
    monkeypatch.setattr(mw.upstream, "track", broken)
    r = Client(mw).post(f"/_replay/track?{QUERY}", headers=SDK_HEADERS, data=b"{}")
    assert r.status_code == 503
    mw.close()


def test_the_reply_is_released_when_the_server_closes_the_iterable(
    fake_amplitude: FakeAmplitude,
) -> None:
    mw = middleware(fake_amplitude)
    assert mw.upstream is not None
    env = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": "/_replay/track",
        "QUERY_STRING": QUERY,
        "CONTENT_LENGTH": str(len(BODY)),
        "CONTENT_TYPE": "application/json",
        "HTTP_AUTHORIZATION": f"Bearer {KEY}",
        "REMOTE_ADDR": "127.0.0.1",
        "wsgi.input": io.BytesIO(BODY),
        "wsgi.url_scheme": "http",
    }
    statuses: list[str] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        statuses.append(status)
        return lambda data: None

    result = mw(env, start_response)
    assert mw.upstream.in_flight == 1
    close = getattr(result, "close", None)
    assert close is not None
    close()  # the client went away without reading the body
    assert statuses == ["200 OK"]
    assert (mw.upstream.in_flight, pool_busy(mw.upstream)) == (0, 0)
    mw.close()


# --- UploadProxy directly ---------------------------------------------------------------------


def chunked(data: bytes, size: int = 64 * 1024) -> Iterator[bytes]:
    view = memoryview(data)
    for i in range(0, len(data), size):
        yield bytes(view[i : i + size])


@pytest.mark.parametrize("memory", [256 * 1024, 1024 * 1024], ids=["256KiB", "1MiB"])
def test_9_5_mb_gzip_upload_arrives_byte_identical_in_bounded_memory(memory: int) -> None:
    body = gzip.compress(os.urandom(9_500_000), compresslevel=1)
    assert 9_400_000 < len(body) < 10 * 1024 * 1024
    digest = hashlib.sha256(body).hexdigest()
    headers = {**SDK_HEADERS, "content-encoding": "gzip", "content-length": str(len(body))}
    source = io.BytesIO(body)  # the client's socket: not counted (allocated before tracing)
    with (
        FakeAmplitude(keep_bodies_up_to=0) as fake,
        make_proxy(fake, upload_memory_bytes=memory) as proxy,
    ):
        proxy.client  # noqa: B018 - create the client outside the measure
        tracemalloc.start()
        try:
            baseline = tracemalloc.get_traced_memory()[0]
            reply = proxy.track(track(headers), source.read)
            answer = drain(reply)
            peak = tracemalloc.get_traced_memory()[1] - baseline
        finally:
            tracemalloc.stop()
        busy = pool_busy(proxy)
        [seen] = fake.requests
    assert reply.status == 200 and answer == b'{"code":200}'
    assert (seen.size, seen.sha256) == (len(body), digest)
    assert seen.header("content-encoding") == "gzip"
    assert seen.header("content-length") == str(len(body))
    assert seen.header("transfer-encoding") is None
    # Held in memory up to `upload_memory_bytes`, the rest in a temporary file: the peak is
    # that much plus the chunks in flight (~0.4 MiB when bodies were streamed through
    # unbuffered, before slow clients could hold upstream connections), never the body.
    assert peak < memory + 1024 * 1024, f"peak {peak} bytes for a {len(body)}-byte body"
    assert busy == 0


def test_unframed_body_goes_up_with_its_length(fake_amplitude: FakeAmplitude) -> None:
    headers = {**SDK_HEADERS, "transfer-encoding": "chunked"}
    with make_proxy(fake_amplitude) as proxy:
        reply = proxy.track(track(headers), reader(BODY))
        assert (reply.status, drain(reply)) == (200, b'{"code":200}')
    [seen] = fake_amplitude.requests
    # Read whole before going up, so its length is known: never chunked upstream.
    assert seen.header("transfer-encoding") is None
    assert seen.header("content-length") == str(len(BODY))
    assert seen.body == BODY


def test_chunked_body_crossing_the_cap_gets_413_and_never_reaches_upstream(
    fake_amplitude: FakeAmplitude,
) -> None:
    body = b"{" + b"x" * (3 * 64 * 1024)
    with make_proxy(fake_amplitude, max_upload_bytes=100_000) as proxy:
        reply = proxy.track(track(), reader(body))
        text = drain(reply)
        busy = pool_busy(proxy)
    assert reply.status == 413 and re.search(rb"payload.*exceed", text, re.I)
    assert busy == 0
    assert fake_amplitude.requests == []


def test_declared_length_over_the_cap_is_refused_before_reading(
    fake_amplitude: FakeAmplitude,
) -> None:
    def never(n: int) -> bytes:
        raise AssertionError("the body must not be read")

    with make_proxy(fake_amplitude, max_upload_bytes=1000) as proxy:
        reply = proxy.track(track({**SDK_HEADERS, "content-length": "5000"}), never)
        assert reply.status == 413
        reply.close()
        reply.close()  # idempotent
    assert fake_amplitude.requests == []


def test_client_abort_never_reaches_the_upstream_and_leaks_nothing(
    fake_amplitude: FakeAmplitude,
) -> None:
    body = b"{" + b"x" * (1024 * 1024)
    parts = chunked(body)
    given = 0

    def read(n: int) -> bytes:
        nonlocal given
        given += 1
        if given > 3:
            raise OSError("client went away")  # what wsgi.input raises on a reset
        return next(parts)

    with make_proxy(fake_amplitude) as proxy:
        reply = proxy.track(track({**SDK_HEADERS, "content-length": str(len(body))}), read)
        reply.close()
        busy, flying = pool_busy(proxy), proxy.in_flight
    assert reply.reason == "client_abort"
    assert (busy, flying, proxy.client_slots.in_flight()) == (0, 0, 0)
    assert fake_amplitude.requests == []


def test_short_body_gets_400(fake_amplitude: FakeAmplitude) -> None:
    with make_proxy(fake_amplitude) as proxy:
        reply = proxy.track(track({**SDK_HEADERS, "content-length": "100"}), reader(b"{}"))
        assert reply.status == 400
        reply.close()
        assert pool_busy(proxy) == 0


def test_body_neither_json_nor_gzip_gets_415(fake_amplitude: FakeAmplitude) -> None:
    with make_proxy(fake_amplitude) as proxy:
        reply = proxy.track(track(), reader(b"<html>"))
        assert reply.status == 415
        reply.close()
    assert fake_amplitude.requests == []


def test_pool_is_not_leaked_over_many_uploads(fake_amplitude: FakeAmplitude) -> None:
    fake_amplitude.script("track", Reply.error(503), Reply.rate_limited())
    with make_proxy(fake_amplitude, limits=httpx.Limits(max_connections=1)) as proxy:
        statuses = []
        for _ in range(6):
            reply = proxy.track(track(), reader(BODY))
            statuses.append(reply.status)
            drain(reply)
        # A reply the caller never reads is still released by close().
        proxy.track(track(), reader(BODY)).close()
        busy, flying = pool_busy(proxy), proxy.in_flight
    assert statuses == [503, 429, 200, 200, 200, 200]
    assert (busy, flying) == (0, 0)


def test_upstream_reset_mid_response_aborts_the_client(fake_amplitude: FakeAmplitude) -> None:
    fake_amplitude.set_default("track", Reply.reset_response(after_bytes=2))
    with make_proxy(fake_amplitude) as proxy:
        reply = proxy.track(track(), reader(BODY))
        assert reply.status == 200
        with pytest.raises(ResponseAborted):
            drain(reply)
        assert pool_busy(proxy) == 0


def test_connection_refused_gets_502_fast() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    from replay_middleware.proxy import Upstreams

    with make_proxy(None, upstreams=Upstreams.at(f"http://127.0.0.1:{port}")) as proxy:
        started = time.perf_counter()
        reply = proxy.track(track(), reader(BODY))
        reply.close()
    assert reply.status == 502 and time.perf_counter() - started < 1.0


def test_upstream_redirect_is_not_followed(fake_amplitude: FakeAmplitude) -> None:
    fake_amplitude.set_default("track", Reply.redirect("http://evil.test/"))
    with make_proxy(fake_amplitude) as proxy:
        reply = proxy.track(track(), reader(BODY))
        assert reply.status == 502 and json.loads(drain(reply)) == {"error": "upstream_redirect"}


def test_config_failure_serves_the_fallback_within_the_budget(
    fake_amplitude: FakeAmplitude,
) -> None:
    fake_amplitude.set_default("config", Reply.hang())
    request = RequestInfo.from_pairs(
        "GET", f"/_replay/config/{KEY}", [], query_string="config_group=browser"
    )
    with make_proxy(fake_amplitude) as proxy:
        started = time.perf_counter()
        reply = proxy.config(request, KEY)
        body = drain(reply)
        elapsed = time.perf_counter() - started
    assert reply.status == 200 and body == b'{"configs":{"sessionReplay":{}}}'
    assert elapsed < 1.0


def test_current_sampling_never_blocks_and_refreshes_in_one_background_thread(
    fake_amplitude: FakeAmplitude,
) -> None:
    fake_amplitude.set_default("config", dataclasses.replace(Reply.config(), delay=0.3))
    with make_proxy(fake_amplitude) as proxy:
        started = time.perf_counter()
        assert [proxy.current_sampling() for _ in range(5)] == [None] * 5
        assert time.perf_counter() - started < 0.1
        assert fake_amplitude.wait_until(lambda: proxy.current_sampling() is not None)
        sampling = proxy.current_sampling()
    assert sampling is not None and sampling.sample_rate == 0.5
    assert len(fake_amplitude.requests_for("config")) == 1


def test_the_created_client_has_safe_defaults() -> None:
    with make_proxy(None) as proxy:
        client = proxy.client
        pool = client._transport._pool  # type: ignore[attr-defined]
        assert client.follow_redirects is False
        assert client._trust_env is False
        assert isinstance(client.cookies.jar, NullCookieJar)
        assert (pool._max_connections, pool._keepalive_expiry) == (100, 5.0)
        assert (pool._http1, pool._http2) == (True, False)
        assert client.timeout == httpx.Timeout(connect=2.0, read=8.0, write=8.0, pool=1.0)
    assert client.is_closed


def test_uploads_use_the_proxys_own_pool_with_the_same_limits(
    fake_amplitude: FakeAmplitude,
) -> None:
    with make_proxy(fake_amplitude) as proxy:
        for _ in range(3):
            reply = proxy.track(track(), reader(BODY))
            assert reply.status == 200
            drain(reply)
        pool = proxy._pool
        assert pool is not None and pool.busy == 0
        assert proxy._client is None  # no httpx client made: config fetches would make one
        assert (pool.max_connections, pool.max_keepalive, pool.keepalive_expiry) == (100, 20, 5.0)
        context = pool.ssl_context
        assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert fake_amplitude.connections_opened == 1  # one kept-alive connection for all three


def test_an_async_client_is_refused() -> None:
    with pytest.raises(ValueError, match=r"httpx\.Client"):
        make_proxy(None, http_client=httpx.AsyncClient())


def test_an_injected_transport_is_used(fake_amplitude: FakeAmplitude) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(202, json={"code": 202})

    with make_proxy(fake_amplitude, http_client=httpx.MockTransport(handler)) as proxy:
        reply = proxy.track(track(), reader(BODY))
        assert (reply.status, json.loads(drain(reply))) == (202, {"code": 202})
    assert len(seen) == 1 and fake_amplitude.requests == []
    assert seen[0].url.query.decode() == QUERY


# --- slow clients (cases 43-45) ------------------------------------------------------------------


class Drip:
    """The client side of a socket pair: ``{`` at once, then a byte every 50 ms for at most
    3 s (bounded), as a slow-loris does; stops when the other side stops reading."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.stop = threading.Event()
        sock.sendall(b"{")
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        for _ in range(60):
            if self.stop.wait(0.05):
                return
            try:
                self.sock.sendall(b" ")
            except OSError:
                return

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)


def test_a_read_blocked_past_the_body_deadline_is_cut_short(fake_amplitude: FakeAmplitude) -> None:
    # read(n) of a buffered socket file blocks until n bytes are in, as wsgi.input does under
    # gunicorn: a byte every 50 ms keeps every recv() in time, so only the deadline ends it.
    server_side, client_side = socket.socketpair()
    stream = server_side.makefile("rb")
    headers = {**SDK_HEADERS, "content-length": "100000"}
    with (
        server_side,
        client_side,
        stream,
        make_proxy(fake_amplitude, client_body_timeout=0.3) as proxy,
    ):
        drip = Drip(client_side)
        started = time.perf_counter()
        reply = proxy.track(track(headers), stream.read, client_socket=server_side)
        elapsed = time.perf_counter() - started
        text = drain(reply)
        drip.close()
        busy, flying = pool_busy(proxy), proxy.in_flight
        slots = proxy.client_slots.in_flight()
    assert reply.status == 408 and json.loads(text) == {"error": "client_timeout"}
    assert elapsed < 2.5  # the deadline cut it, not the end of the 3 s drip
    assert fake_amplitude.requests == []  # the upstream was never contacted
    assert (busy, flying, slots) == (0, 0, 0)


def test_a_body_in_time_leaves_its_connection_alone(fake_amplitude: FakeAmplitude) -> None:
    server_side, client_side = socket.socketpair()
    stream = server_side.makefile("rb")
    with (
        server_side,
        client_side,
        stream,
        make_proxy(fake_amplitude, client_body_timeout=0.2) as proxy,
    ):
        client_side.sendall(BODY)
        headers = {**SDK_HEADERS, "content-length": str(len(BODY))}
        reply = proxy.track(track(headers), stream.read, client_socket=server_side)
        assert (reply.status, drain(reply)) == (200, b'{"code":200}')
        time.sleep(0.4)  # past the deadline: the reaper must not touch a finished upload
        client_side.sendall(b"next request")
        assert stream.read(12) == b"next request"  # the server can serve the next one


def test_without_a_socket_the_deadline_is_checked_between_reads(
    fake_amplitude: FakeAmplitude,
) -> None:
    calls = 0

    def slow(n: int) -> bytes:
        nonlocal calls
        calls += 1
        time.sleep(0.05)
        return b"{" if calls == 1 else (b" " if calls < 100 else b"")

    headers = {**SDK_HEADERS, "content-length": "1000"}
    with make_proxy(fake_amplitude, client_body_timeout=0.3) as proxy:
        reply = proxy.track(track(headers), slow)
        assert reply.status == 408
        reply.close()
    assert calls < 20 and fake_amplitude.requests == []


def test_a_client_over_its_cap_gets_429_before_its_body_is_read(
    fake_amplitude: FakeAmplitude,
) -> None:  # 45
    release = threading.Event()
    reading = threading.Semaphore(0)

    def held_reader() -> Callable[[int], bytes]:
        parts = [b"{", b"}"]

        def read(n: int) -> bytes:
            if len(parts) == 2:
                reading.release()
            else:
                release.wait(5)
            return parts.pop(0) if parts else b""

        return read

    def never(n: int) -> bytes:
        raise AssertionError("the body of a refused upload must not be read")

    statuses: list[int] = []

    def held_upload(proxy: UploadProxy) -> None:
        reply = proxy.track(track({**SDK_HEADERS, "content-length": "2"}), held_reader())
        drain(reply)
        statuses.append(reply.status)

    with make_proxy(fake_amplitude, max_uploads_per_client=2) as proxy:
        threads = [threading.Thread(target=held_upload, args=(proxy,)) for _ in range(2)]
        for thread in threads:
            thread.start()
        assert reading.acquire(timeout=5) and reading.acquire(timeout=5)  # both reading
        over = proxy.track(track(), never)
        other = proxy.track(track(client="198.51.100.20"), reader(BODY))
        answers = (over.status, dict(over.headers).get("retry-after"), drain(over))
        other_status = other.status
        drain(other)
        release.set()
        for thread in threads:
            thread.join(10)
        slots = proxy.client_slots.in_flight()
    assert answers == (429, "1", b'{"error": "client_busy"}')
    assert (statuses, other_status, slots) == ([200, 200], 200, 0)


def test_the_client_slot_is_freed_after_every_kind_of_failure(
    fake_amplitude: FakeAmplitude,
) -> None:  # 45
    fake_amplitude.script("track", Reply.error(500), Reply.reset_response(after_bytes=2))

    def gone(n: int) -> bytes:
        raise OSError("client went away")

    def slow(n: int) -> bytes:
        time.sleep(0.4)
        return b"{"

    cases = [
        (track(), reader(BODY)),  # upstream 500
        (track(), reader(BODY)),  # upstream reset mid-response
        (track(), reader(b"{" + b"x" * 300_000)),  # 413
        (track(), reader(b"<html>")),  # 415
        (track({**SDK_HEADERS, "content-length": "100"}), gone),  # the client goes away
        (track({**SDK_HEADERS, "content-length": "100"}), slow),  # 408
    ]
    statuses, held_after = [], []
    with make_proxy(
        fake_amplitude, max_uploads_per_client=1, max_upload_bytes=100_000, client_body_timeout=0.3
    ) as proxy:
        for request, read in cases:
            reply = proxy.track(request, read)
            statuses.append(reply.status)
            with contextlib.suppress(ResponseAborted):
                drain(reply)
            held_after.append(proxy.client_slots.in_flight())
        last = proxy.track(track(), reader(BODY))
        drain(last)
    assert statuses == [500, 200, 413, 415, 400, 408]
    assert held_after == [0] * len(cases) and last.status == 200


def test_a_body_over_the_memory_threshold_spills_and_arrives_byte_identical(
    fake_amplitude: FakeAmplitude,
) -> None:
    body = gzip.compress(os.urandom(300_000), compresslevel=1)
    headers = {**SDK_HEADERS, "content-encoding": "gzip", "transfer-encoding": "chunked"}
    with make_proxy(fake_amplitude, upload_memory_bytes=64 * 1024) as proxy:
        reply = proxy.track(track(headers), reader(body))
        assert (reply.status, drain(reply)) == (200, b'{"code":200}')
    [seen] = fake_amplitude.requests
    assert (seen.size, seen.sha256) == (len(body), hashlib.sha256(body).hexdigest())
    assert seen.header("content-length") == str(len(body))


def test_a_slow_loris_under_werkzeug_gets_408_and_holds_no_upstream_connection(
    fake_amplitude: FakeAmplitude,
) -> None:  # 43, under a real threaded server
    from werkzeug.serving import make_server

    # One upstream connection in all: a slow upload holding it would starve the honest one
    # ("503 pool_exhausted"). Before the body deadline, the slow one also pinned its server
    # thread for good (read(n) blocked until 64 KiB came in) and was never answered.
    with httpx.Client(limits=httpx.Limits(max_connections=1), trust_env=False) as one:
        mw = middleware(fake_amplitude, client_body_timeout=3.0, http_client=one)
        server = make_server("127.0.0.1", 0, mw, threaded=True)
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
        thread.start()
        try:
            target = f"/_replay/track?{QUERY}"
            auth = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
            with SlowClient(server.port, target, auth) as slow:
                with httpx.Client(base_url=f"http://127.0.0.1:{server.port}", trust_env=False) as c:
                    honest = c.post(target, content=BODY, headers=auth)
                requests_meanwhile = len(fake_amplitude.requests)
                slow_status = slow.status()
        finally:
            server.shutdown()
            thread.join(10)
            server.server_close()
            mw.close()
    assert honest.status_code == 200 and requests_meanwhile == 1  # only the honest upload
    assert slow_status == 408 and len(fake_amplitude.requests) == 1


# --- AsyncUploadProxy.track_stream (Django under ASGI) ------------------------------------------


async def agen(*chunks: bytes) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


@pytest.mark.anyio
async def test_track_stream_forwards_and_streams_the_reply(fake_amplitude: FakeAmplitude) -> None:
    config = ReplayConfig(api_key=KEY, secret_key="s" * 32)
    async with AsyncUploadProxy(config, upstreams=fake_amplitude.upstreams()) as proxy:
        reply = await proxy.track_stream(track(), agen(BODY[:5], BODY[5:]))
        try:
            body = b"".join([chunk async for chunk in reply.body])
        finally:
            await reply.aclose()
            await reply.aclose()
        assert proxy.in_flight == 0
    assert (reply.status, body) == (200, b'{"code":200}')
    [seen] = fake_amplitude.requests
    assert seen.body == BODY and seen.query == QUERY


@pytest.mark.anyio
async def test_track_stream_over_the_cap_gets_413(fake_amplitude: FakeAmplitude) -> None:
    config = ReplayConfig(api_key=KEY, secret_key="s" * 32, max_upload_bytes=100_000)
    async with AsyncUploadProxy(config, upstreams=fake_amplitude.upstreams()) as proxy:
        reply = await proxy.track_stream(track(), agen(*chunked(b"{" + b"x" * 300_000)))
        body = b"".join([chunk async for chunk in reply.body])
        await reply.aclose()
        assert proxy.in_flight == 0
    assert reply.status == 413 and re.search(rb"payload.*exceed", body, re.I)


@pytest.mark.anyio
async def test_track_stream_rejects_unknown_keys(fake_amplitude: FakeAmplitude) -> None:
    config = ReplayConfig(api_key=KEY, secret_key="s" * 32)
    async with AsyncUploadProxy(config, upstreams=fake_amplitude.upstreams()) as proxy:
        reply = await proxy.track_stream(
            track({**SDK_HEADERS, "authorization": "Bearer other"}), agen(BODY)
        )
        await reply.aclose()
    assert reply.status == 403 and fake_amplitude.requests == []


@pytest.mark.anyio
async def test_track_stream_reads_the_body_whole_within_its_deadline(
    fake_amplitude: FakeAmplitude,
) -> None:
    import anyio

    async def slow() -> AsyncIterator[bytes]:
        yield b"{"
        for _ in range(50):  # bounded: 5 s at most
            await anyio.sleep(0.1)
            yield b" "

    config = ReplayConfig(
        api_key=KEY, secret_key="s" * 32, client_body_timeout=0.3, max_uploads_per_client=1
    )
    async with AsyncUploadProxy(config, upstreams=fake_amplitude.upstreams()) as proxy:
        reply = await proxy.track_stream(track(), slow())
        body = b"".join([chunk async for chunk in reply.body])
        await reply.aclose()
        again = await proxy.track_stream(track(), agen(BODY))  # the slot is back
        await reply.aclose()
        await again.aclose()
        slots = proxy.client_slots.in_flight()
    assert reply.status == 408 and json.loads(body) == {"error": "client_timeout"}
    assert again.status == 200 and slots == 0
    [seen] = fake_amplitude.requests  # only the second one
    assert seen.body == BODY and seen.header("content-length") == str(len(BODY))
