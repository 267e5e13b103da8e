"""AsyncUploadProxy over real sockets, against tests/fake_amplitude.py (STYLE 19).

The handlers are driven at the ASGI level with a hand-built ``receive``/``send``
(:class:`Conversation`), so every case of notes/proxy.md §5 that concerns the I/O runs end to
end: real TCP, real HTTP/1.1 framing, real httpx pool. Case numbers are in the test names'
comments; the cases that do not apply are listed in docs/proxy.md.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import logging
import os
import re
import socket
import ssl
import tempfile
import time
import tracemalloc
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import anyio
import httpx
import pytest

from replay_middleware import ReplayConfig, RequestInfo
from replay_middleware.proxy import (
    CONFIG_FALLBACK_BODY,
    DROPPED_IP,
    KeyMap,
    RemoteSampling,
    Upstreams,
    key_id,
)
from replay_middleware.upstream import AsyncUploadProxy, Message, NullCookieJar, ResponseAborted

from .fake_amplitude import DEFAULT_CONFIG, FakeAmplitude, Reply

pytestmark = pytest.mark.anyio

KEY = "0123456789abcdef0123456789abcdef"
EU_KEY = "fedcba9876543210fedcba9876543210"
QUERY = "device_id=dev-1&session_id=1735689600000&type=replay"
BODY = b'{"version":1,"events":["{\\"type\\":4,\\"timestamp\\":1}"]}'
SDK_SPLIT_RULE = re.compile(r"payload.*exceed", re.IGNORECASE)
SDK_HEADERS = {
    "content-type": "application/json",
    "accept": "*/*",
    "authorization": f"Bearer {KEY}",
    "x-client-version": "1.51.6",
    "x-client-library": "standalone/1.51.6",
    "x-client-url": "https://shop.example/cart",
    "x-client-sample-rate": "1",
    "x-sampling-hash-alg": "xxhash32",
}


class Conversation:
    """A hand-built ASGI client for one request.

    ``receive()`` hands out ``chunks`` (``more_body`` on all but the last), waiting ``pause``
    seconds before each chunk after the first; after ``disconnect_after`` chunks it reports
    ``http.disconnect``. Once the body is out it behaves like uvicorn: it blocks until the
    response is complete or :meth:`disconnect` is called, then reports ``http.disconnect``.
    """

    def __init__(
        self,
        chunks: Iterable[bytes] = (BODY,),
        *,
        disconnect_after: int | None = None,
        pause: float = 0.0,
    ) -> None:
        self._chunks: Iterator[bytes] = iter(chunks)
        self._next: bytes | None = next(self._chunks, None)
        self.disconnect_after = disconnect_after
        self.pause = pause
        self.given = 0
        self.receive_calls = 0
        self.sent: list[Message] = []
        self.left = anyio.Event()  # response complete or client gone

    async def receive(self) -> Message:
        self.receive_calls += 1
        if self.disconnect_after is not None and self.given >= self.disconnect_after:
            return {"type": "http.disconnect"}
        if self._next is not None or self.given == 0:
            if self.given and self.pause:
                await anyio.sleep(self.pause)
            chunk = self._next or b""
            self._next = next(self._chunks, None)
            self.given += 1
            return {"type": "http.request", "body": chunk, "more_body": self._next is not None}
        await self.left.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        self.sent.append(message)
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            self.left.set()

    def disconnect(self) -> None:
        self.left.set()

    @property
    def status(self) -> int | None:
        starts = [m for m in self.sent if m["type"] == "http.response.start"]
        assert len(starts) <= 1
        return starts[0]["status"] if starts else None

    @property
    def headers(self) -> dict[str, str]:
        start = next(m for m in self.sent if m["type"] == "http.response.start")
        return {k.decode(): v.decode() for k, v in start["headers"]}

    @property
    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.sent if m["type"] == "http.response.body")

    @property
    def complete(self) -> bool:
        return any(
            m["type"] == "http.response.body" and not m.get("more_body", False) for m in self.sent
        )


def track(
    headers: Mapping[str, str] | None = None,
    *,
    query: str = QUERY,
    client: str | None = "203.0.113.7",
    method: str = "POST",
    extra: Iterable[tuple[str, str]] = (),
) -> RequestInfo:
    pairs = [*(SDK_HEADERS if headers is None else headers).items(), *extra]
    return RequestInfo.from_pairs(
        method, "/_replay/track", pairs, query_string=query, client=client
    )


def config_request(
    key: str = KEY, *, method: str = "GET", query: str = "config_group=browser"
) -> RequestInfo:
    pairs = [("accept", "*/*"), ("cookie", "sessionid=secret")]
    return RequestInfo.from_pairs(
        method, f"/_replay/config/{key}", pairs, query_string=query, client="203.0.113.7"
    )


_CONFIG_FIELDS = {
    "upstream_timeout",
    "max_upload_bytes",
    "client_body_timeout",
    "max_uploads_per_client",
    "upload_memory_bytes",
    "trusted_proxies",
    "forward_client_ip",
    "config_cache_ttl",
    "http_client",
    "server_zone",
}


def make_proxy(fake: FakeAmplitude | None, **kw: Any) -> AsyncUploadProxy:
    options = {k: kw.pop(k) for k in list(kw) if k in _CONFIG_FIELDS}
    config = ReplayConfig(api_key=KEY, secret_key="s" * 32, **options)
    if fake is not None:
        kw.setdefault("upstreams", fake.upstreams())
    return AsyncUploadProxy(config, **kw)


async def upload(
    proxy: AsyncUploadProxy, request: RequestInfo | None = None, conv: Conversation | None = None
) -> Conversation:
    conv = conv or Conversation()
    await proxy.handle_track(request or track(), conv.receive, conv.send)
    return conv


async def fetch_config(proxy: AsyncUploadProxy, key: str = KEY, **kw: Any) -> Conversation:
    conv = Conversation(())
    await proxy.handle_config(config_request(key, **kw), key, conv.receive, conv.send)
    return conv


def pool_busy(proxy: AsyncUploadProxy) -> int:
    """Connections in use or requests waiting, in the proxy's own upload pool and in its
    httpx client's (0 = nothing leaked)."""
    own = proxy._pool.busy if proxy._pool is not None else 0
    if proxy._client is None:
        return own
    pool = proxy._client._transport._pool  # type: ignore[attr-defined]
    busy = [c for c in pool.connections if not (c.is_idle() or c.is_closed())]
    return own + len(busy) + len(pool._requests)


def upstream_aborted(fake: FakeAmplitude, timeout: float = 1.0) -> bool:
    """The fake saw its (first) request's connection go away before answering it."""
    return fake.wait_until(
        lambda: bool(fake.requests) and fake.requests[0].disconnected_at is not None, timeout
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# --- routing, methods, keys (cases 1-8) ---------------------------------------------------------


async def test_upload_is_forwarded_once_with_the_identical_query(
    fake_amplitude: FakeAmplitude,
) -> None:  # 1
    async with make_proxy(fake_amplitude) as proxy:
        conv = await upload(proxy)
    assert (conv.status, conv.body) == (200, b'{"code":200}')
    assert conv.headers == {"content-type": "application/json", "content-length": "12"}
    [seen] = fake_amplitude.requests
    assert (seen.method, seen.path, seen.query, seen.zone) == (
        "POST",
        "/sessions/v2/track",
        QUERY,
        "US",
    )
    assert seen.body == BODY and seen.complete
    for name, value in SDK_HEADERS.items():
        assert seen.header(name) == value


async def test_eu_key_goes_to_the_eu_host_whatever_the_client_says(
    fake_amplitude: FakeAmplitude,
) -> None:  # 2
    keys = KeyMap({KEY: "US", EU_KEY: "EU"})
    async with make_proxy(fake_amplitude, keys=keys) as proxy:
        conv = await upload(
            proxy, track({**SDK_HEADERS, "authorization": f"Bearer {EU_KEY}", "x-region": "us"})
        )
        hinted = await upload(proxy, track(query=f"{QUERY}&region=us"))
    assert conv.status == 200 and hinted.status == 400
    [seen] = fake_amplitude.requests
    assert (seen.path, seen.zone) == ("/eu/sessions/v2/track", "EU")
    assert seen.header("authorization") == f"Bearer {EU_KEY}"
    assert seen.header("x-region") is None


@pytest.mark.parametrize(
    ("authorization", "query", "status"),
    [
        pytest.param(None, QUERY, 403, id="3-absent"),
        pytest.param("Bearer not-a-configured-key", QUERY, 403, id="3-unknown"),
        pytest.param(None, f"{QUERY}&api_key=nope", 403, id="4-unknown-beacon-key"),
        pytest.param(f"Bearer {KEY}", f"{QUERY}&api_key={EU_KEY}", 400, id="5-ambiguous"),
        pytest.param("Bearer eyJhbGciOi.site.jwt", QUERY, 403, id="13-site-jwt"),
        pytest.param("Bearer eyJhbGciOi.site.jwt", f"{QUERY}&api_key={KEY}", 400, id="13-jwt+key"),
    ],
)
async def test_key_failures_never_reach_upstream(
    fake_amplitude: FakeAmplitude, authorization: str | None, query: str, status: int
) -> None:
    headers = {k: v for k, v in SDK_HEADERS.items() if k != "authorization"}
    if authorization:
        headers["authorization"] = authorization
    async with make_proxy(fake_amplitude) as proxy:
        conv = await upload(proxy, track(headers, query=query))
    assert conv.status == status
    if status == 403:
        assert json.loads(conv.body) == {"error": "forbidden"}
    assert fake_amplitude.requests == []


async def test_beacon_with_key_in_query_is_forwarded_without_authorization(
    fake_amplitude: FakeAmplitude,
) -> None:  # 4
    beacon_query = f"{QUERY}&api_key={KEY}"
    headers = {"content-type": "application/json", "accept": "*/*"}
    async with make_proxy(fake_amplitude) as proxy:
        conv = await upload(proxy, track(headers, query=beacon_query))
    assert conv.status == 200
    [seen] = fake_amplitude.requests
    assert seen.query == beacon_query
    assert seen.header("authorization") is None
    assert seen.header("content-encoding") is None and seen.body == BODY


async def test_config_is_fetched_from_the_keys_zone(fake_amplitude: FakeAmplitude) -> None:  # 6
    async with make_proxy(fake_amplitude, keys=KeyMap({KEY: "US", EU_KEY: "EU"})) as proxy:
        us = await fetch_config(proxy)
        eu = await fetch_config(proxy, EU_KEY)
        unknown = await fetch_config(proxy, "unknown-key")
    assert (us.status, us.body) == (200, DEFAULT_CONFIG)
    assert eu.status == 200 and unknown.status == 403
    first, second = fake_amplitude.requests
    assert (first.method, first.target) == ("GET", f"/config/{KEY}?config_group=browser")
    assert second.target == f"/eu/config/{EU_KEY}?config_group=browser"
    assert first.header("accept") == "*/*"
    assert first.header("cookie") is None and first.header("x-forwarded-for") is None


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH", "OPTIONS"])
async def test_other_methods_on_track_get_405(
    fake_amplitude: FakeAmplitude, method: str
) -> None:  # 7
    async with make_proxy(fake_amplitude) as proxy:
        conv = await upload(proxy, track(method=method))
    assert conv.status == 405 and conv.headers["allow"] == "POST"
    assert conv.receive_calls == 0
    assert fake_amplitude.requests == []


async def test_post_on_config_gets_405(fake_amplitude: FakeAmplitude) -> None:  # 7
    async with make_proxy(fake_amplitude) as proxy:
        conv = await fetch_config(proxy, method="POST")
    assert conv.status == 405 and conv.headers["allow"] == "GET, HEAD"
    assert fake_amplitude.requests == []


async def test_config_head_answers_headers_only(fake_amplitude: FakeAmplitude) -> None:
    async with make_proxy(fake_amplitude) as proxy:
        conv = await fetch_config(proxy, method="HEAD", query="")
    assert conv.status == 200 and conv.body == b""
    assert conv.headers["content-length"] == str(len(DEFAULT_CONFIG))


# --- URL tricks (cases 9-11) -------------------------------------------------------------------


@pytest.mark.parametrize(
    "key",
    ["..%2F..%2Fadmin", "../../admin", "%2e%2e", "%252e%252e%252f", f"{KEY}%5c", f"{KEY};a=b", ""],
)
async def test_config_path_tricks_never_reach_upstream(
    fake_amplitude: FakeAmplitude, key: str
) -> None:  # 9
    async with make_proxy(fake_amplitude) as proxy:
        conv = await fetch_config(proxy, key)
    assert conv.status == 403
    assert fake_amplitude.requests == []


async def test_host_and_forwarded_host_do_not_change_the_upstream(
    fake_amplitude: FakeAmplitude,
) -> None:  # 10
    extra = [("host", "169.254.169.254"), ("x-forwarded-host", "evil.example")]
    async with make_proxy(fake_amplitude) as proxy:
        conv = await upload(proxy, track(extra=extra))
    assert conv.status == 200
    [seen] = fake_amplitude.requests
    assert seen.header("host") == f"127.0.0.1:{fake_amplitude.port}"
    assert seen.header("x-forwarded-host") is None


async def test_upstream_redirect_is_not_followed(fake_amplitude: FakeAmplitude) -> None:  # 11
    fake_amplitude.script("track", Reply.redirect(f"{fake_amplitude.url}/latest/meta-data"))
    async with make_proxy(fake_amplitude, breaker_threshold=0) as proxy:
        conv = await upload(proxy)
        busy = pool_busy(proxy)
    assert conv.status == 502
    assert json.loads(conv.body) == {"error": "upstream_redirect"}
    assert "location" not in conv.headers
    assert [r.path for r in fake_amplitude.requests] == ["/sessions/v2/track"]
    assert busy == 0


# --- header hygiene (cases 12-18) ---------------------------------------------------------------


async def test_site_cookies_csrf_and_forwarding_headers_never_reach_upstream(
    fake_amplitude: FakeAmplitude,
) -> None:  # 12, 17
    extra = [
        ("cookie", "sessionid=abc; csrftoken=def"),
        ("x-csrftoken", "def"),
        ("forwarded", "for=1.2.3.4"),
        ("x-forwarded-for", "1.2.3.4"),
        ("x-forwarded-proto", "https"),
        ("x-real-ip", "1.2.3.4"),
        ("true-client-ip", "1.2.3.4"),
        ("cf-connecting-ip", "1.2.3.4"),
        ("origin", "https://shop.example"),
        ("referer", "https://shop.example/cart"),
        ("accept-encoding", "gzip, br"),
    ]
    async with make_proxy(fake_amplitude) as proxy:
        conv = await upload(proxy, track(extra=extra))
    assert conv.status == 200
    [seen] = fake_amplitude.requests
    names = seen.header_names()
    assert not names & {
        "cookie",
        "x-csrftoken",
        "forwarded",
        "x-forwarded-proto",
        "x-real-ip",
        "true-client-ip",
        "cf-connecting-ip",
        "origin",
        "referer",
    }
    assert seen.header("x-forwarded-for") == "203.0.113.0"  # the peer, masked
    assert seen.header("accept-encoding") == "identity"


async def test_connection_header_cannot_strip_proxy_set_headers(
    fake_amplitude: FakeAmplitude,
) -> None:  # 14
    extra = [
        ("connection", "close, X-Forwarded-For, Authorization"),
        ("keep-alive", "timeout=5"),
        ("te", "trailers"),
        ("upgrade", "websocket"),
        ("proxy-authorization", "Basic eA=="),
    ]
    async with make_proxy(fake_amplitude) as proxy:
        conv = await upload(proxy, track(extra=extra))
    assert conv.status == 200
    [seen] = fake_amplitude.requests
    assert seen.header("x-forwarded-for") == "203.0.113.0"
    assert seen.header("authorization") == f"Bearer {KEY}"
    assert not seen.header_names() & {"keep-alive", "te", "upgrade", "proxy-authorization"}
    assert seen.header("connection") in (None, "keep-alive")


@pytest.mark.parametrize("value", ["https://x/\r\nX-Evil: 1", "https://x/\x00", "https://x/\n"])
async def test_control_characters_get_400(fake_amplitude: FakeAmplitude, value: str) -> None:  # 15
    async with make_proxy(fake_amplitude) as proxy:
        conv = await upload(proxy, track({**SDK_HEADERS, "x-client-url": value}))
    assert conv.status == 400 and json.loads(conv.body) == {"error": "bad_header"}
    assert fake_amplitude.requests == []


@pytest.mark.parametrize(
    "extra",
    [
        pytest.param([("content-length", "5"), ("transfer-encoding", "chunked")], id="cl+te"),
        pytest.param([("content-length", "5"), ("content-length", "7")], id="two-cl"),
        pytest.param([("content-length", "5"), ("content-length", "5")], id="dup-cl"),
        pytest.param([("content-length", "abc")], id="bad-cl"),
    ],
)
async def test_ambiguous_framing_gets_400(
    fake_amplitude: FakeAmplitude, extra: list[tuple[str, str]]
) -> None:  # 16
    async with make_proxy(fake_amplitude) as proxy:
        conv = await upload(proxy, track(extra=extra))
    assert conv.status == 400 and json.loads(conv.body) == {"error": "bad_framing"}
    assert conv.receive_calls == 0 and fake_amplitude.requests == []


async def test_response_headers_are_allowlisted_and_cookies_never_stored(
    fake_amplitude: FakeAmplitude,
) -> None:  # 18
    hostile = Reply.ok(
        headers=(
            ("Content-Type", "application/json"),
            ("Set-Cookie", "AWSALB=sticky; Path=/"),
            ("Strict-Transport-Security", "max-age=63072000; includeSubDomains; preload"),
            ("Alt-Svc", 'h3=":443"'),
            ("Clear-Site-Data", '"*"'),
            ("Access-Control-Allow-Origin", "*"),
            ("Content-Security-Policy", "default-src 'none'"),
            ("Retry-After", "5"),
            ("X-Session-Replay-Event-Skipped", "429"),
            ("Cache-Control", "no-store"),
        )
    )
    fake_amplitude.set_default("track", hostile)
    async with make_proxy(fake_amplitude) as proxy:
        first = await upload(proxy)
        second = await upload(proxy)
        jar = proxy.client.cookies.jar
    assert first.headers == {
        "content-type": "application/json",
        "retry-after": "5",
        "x-session-replay-event-skipped": "429",
        "cache-control": "no-store",
        "content-length": "12",
    }
    assert second.status == 200
    assert isinstance(jar, NullCookieJar) and len(jar) == 0
    assert [r.header("cookie") for r in fake_amplitude.requests] == [None, None]


# --- client IP (cases 19-21) --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("peer", "xff", "options", "expected"),
    [
        pytest.param("203.0.113.7", "1.2.3.4", {}, "203.0.113.0", id="19-spoof-discarded"),
        pytest.param(
            "203.0.113.7", "1.2.3.4", {"forward_client_ip": "full"}, "203.0.113.7", id="19-full"
        ),
        pytest.param(
            "10.0.0.2",
            "1.2.3.4, 198.51.100.9",
            {"trusted_proxies": ("10.0.0.0/8",), "forward_client_ip": "full"},
            "198.51.100.9",
            id="20-trusted-lb-single-value",
        ),
        pytest.param(
            "10.0.0.2",
            "2001:db8:abcd:12::1",
            {"trusted_proxies": ("10.0.0.0/8",)},
            "2001:db8:abcd::",
            id="21-mask-v6",
        ),
        pytest.param("::ffff:198.51.100.7", None, {}, "198.51.100.0", id="21-mapped"),
        pytest.param("203.0.113.7", None, {"forward_client_ip": "drop"}, DROPPED_IP, id="21-drop"),
        pytest.param(None, None, {}, DROPPED_IP, id="unknown-peer"),
    ],
)
async def test_forwarded_client_ip(
    fake_amplitude: FakeAmplitude,
    peer: str | None,
    xff: str | None,
    options: dict[str, Any],
    expected: str,
) -> None:
    extra = [("x-forwarded-for", xff)] if xff else []
    async with make_proxy(fake_amplitude, **options) as proxy:
        conv = await upload(proxy, track(client=peer, extra=extra))
    assert conv.status == 200
    [seen] = fake_amplitude.requests
    assert [v for k, v in seen.headers if k.lower() == "x-forwarded-for"] == [expected]


# --- bodies, compression, size (cases 22-29) ----------------------------------------------------


def chunked(data: bytes, size: int = 64 * 1024) -> Iterator[bytes]:
    view = memoryview(data)
    for i in range(0, len(data), size):
        yield bytes(view[i : i + size])


@pytest.mark.parametrize("memory", [256 * 1024, 1024 * 1024], ids=["256KiB", "1MiB"])
async def test_9_5_mb_gzip_upload_arrives_byte_identical_in_bounded_memory(
    memory: int,
) -> None:  # 22
    body = gzip.compress(os.urandom(9_500_000), compresslevel=1)
    assert 9_400_000 < len(body) < 10 * 1024 * 1024
    digest = hashlib.sha256(body).hexdigest()
    headers = {**SDK_HEADERS, "content-encoding": "gzip", "content-length": str(len(body))}
    # The fake keeps no body bytes (only their hash): what is measured is the proxy's memory.
    with FakeAmplitude(keep_bodies_up_to=0) as fake:
        async with make_proxy(fake, upload_memory_bytes=memory) as proxy:
            proxy.client  # noqa: B018 - create the client (and its TLS context) outside the measure
            conv = Conversation(chunked(body))
            tracemalloc.start()
            try:
                baseline = tracemalloc.get_traced_memory()[0]
                await proxy.handle_track(track(headers), conv.receive, conv.send)
                peak = tracemalloc.get_traced_memory()[1] - baseline
            finally:
                tracemalloc.stop()
            busy = pool_busy(proxy)
        [seen] = fake.requests
    assert conv.status == 200
    assert (seen.size, seen.sha256) == (len(body), digest)
    assert seen.header("content-encoding") == "gzip"
    assert seen.header("content-length") == str(len(body))
    assert seen.header("transfer-encoding") is None
    # Held in memory up to `upload_memory_bytes`, the rest in a temporary file: the peak is
    # that much plus the chunks in flight (~0.4 MiB when bodies were streamed through
    # unbuffered, before slow clients could hold upstream connections), never the body.
    assert peak < memory + 1024 * 1024, f"peak {peak} bytes for a {len(body)}-byte body"
    assert busy == 0


async def test_declared_length_over_the_cap_gets_413_before_the_body_is_read(
    fake_amplitude: FakeAmplitude,
) -> None:  # 23
    headers = {**SDK_HEADERS, "content-length": "12000000"}
    async with make_proxy(fake_amplitude) as proxy:
        conv = await upload(proxy, track(headers))
    assert conv.status == 413
    assert SDK_SPLIT_RULE.search(conv.body.decode())
    assert conv.receive_calls == 0
    assert fake_amplitude.requests == []


async def test_chunked_body_crossing_the_cap_gets_413_and_never_reaches_upstream(
    fake_amplitude: FakeAmplitude,
) -> None:  # 24
    conv = Conversation(chunked(b"{" + b"x" * (640 * 1024 - 1)))
    async with make_proxy(fake_amplitude, max_upload_bytes=256 * 1024) as proxy:
        await upload(proxy, conv=conv)
        busy = pool_busy(proxy)
    assert conv.status == 413 and SDK_SPLIT_RULE.search(conv.body.decode())
    assert conv.given == 5  # stopped at the chunk that crossed 256 KiB
    assert fake_amplitude.requests == []  # the body is read whole before going up
    assert busy == 0


async def test_body_longer_than_declared_gets_400_and_never_reaches_upstream(
    fake_amplitude: FakeAmplitude,
) -> None:  # 25
    conv = Conversation([b'{"a":', b"1, too much"])
    async with make_proxy(fake_amplitude) as proxy:
        await upload(proxy, track({**SDK_HEADERS, "content-length": "8"}), conv)
        busy = pool_busy(proxy)
    assert conv.status == 400 and json.loads(conv.body) == {"error": "body_longer_than_declared"}
    assert fake_amplitude.requests == []
    assert busy == 0


async def test_body_shorter_than_declared_gets_400(fake_amplitude: FakeAmplitude) -> None:  # 25
    conv = Conversation([b'{"a":', b"1}"])
    async with make_proxy(fake_amplitude) as proxy:
        await upload(proxy, track({**SDK_HEADERS, "content-length": "100"}), conv)
    assert conv.status == 400 and json.loads(conv.body) == {"error": "body_shorter_than_declared"}
    assert fake_amplitude.requests == []


async def test_invalid_gzip_is_forwarded_as_is(fake_amplitude: FakeAmplitude) -> None:  # 26
    body = b"\x1f\x8b\x08\x00not really gzip"
    async with make_proxy(fake_amplitude) as proxy:
        conv = await upload(
            proxy, track({**SDK_HEADERS, "content-encoding": "gzip"}), Conversation([body])
        )
    assert conv.status == 200
    assert fake_amplitude.requests[0].body == body


async def test_plain_json_and_text_plain_beacons_are_forwarded_unchanged(
    fake_amplitude: FakeAmplitude,
) -> None:  # 27
    scroll = b'{"version":1,"events":[{"type":"scroll"}]}'
    headers = {"content-type": "text/plain;charset=UTF-8", "accept": "*/*"}
    async with make_proxy(fake_amplitude) as proxy:
        conv = await upload(
            proxy,
            track(headers, query=f"device_id=d&session_id=1&type=interaction&api_key={KEY}"),
            Conversation([scroll]),
        )
    assert conv.status == 200
    [seen] = fake_amplitude.requests
    assert seen.body == scroll and seen.header("content-encoding") is None
    assert seen.header("content-type") == "text/plain;charset=UTF-8"


@pytest.mark.parametrize("body", [b"<html>hi</html>", b"PK\x03\x04zip", b"   \n"])
async def test_body_neither_json_nor_gzip_gets_415(
    fake_amplitude: FakeAmplitude, body: bytes
) -> None:  # 27
    async with make_proxy(fake_amplitude) as proxy:
        conv = await upload(proxy, conv=Conversation([body]))
    assert conv.status == 415 and json.loads(conv.body) == {"error": "unsupported_payload"}
    assert fake_amplitude.requests == []


async def test_json_split_at_the_first_byte_is_sniffed_across_chunks(
    fake_amplitude: FakeAmplitude,
) -> None:
    conv = Conversation([b"", b"  ", b'{"version":1,"events":[]}'])
    async with make_proxy(fake_amplitude) as proxy:
        await upload(proxy, conv=conv)
    assert conv.status == 200
    assert fake_amplitude.requests[0].body == b'  {"version":1,"events":[]}'


async def test_empty_body_is_forwarded_and_upstream_decides(
    fake_amplitude: FakeAmplitude,
) -> None:  # 28
    fake_amplitude.script("track", Reply(status=400, body=b'{"error":"empty"}'))
    async with make_proxy(fake_amplitude) as proxy:
        conv = await upload(
            proxy, track({**SDK_HEADERS, "content-length": "0"}), Conversation([b""])
        )
    assert (conv.status, conv.body) == (400, b'{"error":"empty"}')
    [seen] = fake_amplitude.requests
    assert seen.size == 0 and seen.header("content-length") == "0"


async def test_compressed_response_passes_raw_with_its_length(
    fake_amplitude: FakeAmplitude,
) -> None:  # 29
    packed = gzip.compress(b'{"code":200}')
    fake_amplitude.set_default(
        "track",
        Reply.ok(
            body=packed,
            headers=(("Content-Type", "application/json"), ("Content-Encoding", "gzip")),
        ),
    )
    async with make_proxy(fake_amplitude) as proxy:
        conv = await upload(proxy)
    assert conv.body == packed  # never decoded bytes under the compressed length
    assert conv.headers["content-encoding"] == "gzip"
    assert conv.headers["content-length"] == str(len(packed))
    assert fake_amplitude.requests[0].header("accept-encoding") == "identity"


# --- upstream faults (cases 30-40) --------------------------------------------------------------


async def test_connection_refused_gets_502_fast() -> None:  # 30
    port = free_port()
    async with make_proxy(None, upstreams=Upstreams.at(f"http://127.0.0.1:{port}")) as proxy:
        started = time.perf_counter()
        conv = await upload(proxy)
        elapsed = time.perf_counter() - started
    assert conv.status == 502 and json.loads(conv.body) == {"error": "upstream_connect"}
    assert conv.headers["content-type"] == "application/json"
    assert elapsed < 2.0


async def test_upstream_that_never_answers_gets_504_within_the_budget(
    fake_amplitude: FakeAmplitude,
) -> None:  # 31
    fake_amplitude.set_default("track", Reply.hang())
    async with make_proxy(fake_amplitude, upstream_timeout=0.5) as proxy:
        started = time.perf_counter()
        conv = await upload(proxy)
        elapsed = time.perf_counter() - started
        busy = pool_busy(proxy)
    assert conv.status == 504 and json.loads(conv.body) == {"error": "upstream_timeout"}
    assert 0.4 < elapsed < 1.5
    assert upstream_aborted(fake_amplitude)
    assert len(fake_amplitude.requests) == 1  # a streamed POST is never retried
    assert busy == 0


async def test_dripping_response_aborts_the_client_connection(
    fake_amplitude: FakeAmplitude,
) -> None:  # 32
    fake_amplitude.set_default("track", Reply.drip(interval=0.2, body=b"x" * 50))
    async with make_proxy(fake_amplitude, upstream_timeout=0.5) as proxy:
        conv = Conversation()
        with pytest.raises(ResponseAborted):
            await proxy.handle_track(track(), conv.receive, conv.send)
        busy = pool_busy(proxy)
    assert conv.status == 200 and not conv.complete  # no truncated "success"
    assert busy == 0


async def test_upstream_5xx_passes_through_then_the_breaker_opens(
    fake_amplitude: FakeAmplitude,
) -> None:  # 33
    fake_amplitude.set_default("track", Reply.error(503))
    async with make_proxy(fake_amplitude, breaker_threshold=2, breaker_open_for=30) as proxy:
        first = await upload(proxy)
        second = await upload(proxy)
        third = await upload(proxy)
        eu = await upload(proxy, track({**SDK_HEADERS, "authorization": "Bearer x"}))
    assert (first.status, first.body) == (503, b'{"error":"internal"}')
    assert second.status == 503
    assert third.status == 503 and json.loads(third.body) == {"error": "breaker_open"}
    assert third.headers["retry-after"] == "30"
    assert len(fake_amplitude.requests) == 2
    assert eu.status == 403


async def test_breaker_closes_after_its_window(fake_amplitude: FakeAmplitude) -> None:  # 33
    clock = Clock()
    fake_amplitude.script("track", Reply.error(500))
    async with make_proxy(
        fake_amplitude, breaker_threshold=1, breaker_open_for=10, clock=clock
    ) as proxy:
        assert (await upload(proxy)).status == 500
        assert (await upload(proxy)).status == 503
        clock.now += 10
        assert (await upload(proxy)).status == 200


async def test_429_passes_through_with_retry_after_and_is_not_retried(
    fake_amplitude: FakeAmplitude,
) -> None:  # 34
    fake_amplitude.script("track", Reply.rate_limited("30"))
    async with make_proxy(fake_amplitude) as proxy:
        conv = await upload(proxy)
    assert (conv.status, conv.headers["retry-after"]) == (429, "30")
    assert len(fake_amplitude.requests) == 1


@pytest.mark.parametrize("code", ["429", "4004", "4005"])
async def test_event_skipped_header_reaches_the_client(
    fake_amplitude: FakeAmplitude, code: str
) -> None:  # 35
    fake_amplitude.set_default("track", Reply.skipped(code))
    async with make_proxy(fake_amplitude) as proxy:
        conv = await upload(proxy)
    assert conv.status == 200 and conv.headers["x-session-replay-event-skipped"] == code


@pytest.mark.parametrize("waf", [True, False])
async def test_upstream_413_passes_verbatim(fake_amplitude: FakeAmplitude, waf: bool) -> None:  # 36
    reply = Reply.too_large(waf=waf)
    fake_amplitude.set_default("track", reply)
    async with make_proxy(fake_amplitude) as proxy:
        conv = await upload(proxy)
    assert (conv.status, conv.body) == (413, reply.body)
    assert bool(SDK_SPLIT_RULE.search(conv.body.decode())) is waf


async def test_reset_during_upload_gets_502_and_releases_the_connection(
    fake_amplitude: FakeAmplitude,
) -> None:  # 37
    fake_amplitude.set_default("track", Reply.reset_upload(after_bytes=64 * 1024))
    body = b"{" + b"x" * (1024 * 1024)
    headers = {**SDK_HEADERS, "content-length": str(len(body))}
    async with make_proxy(fake_amplitude) as proxy:
        conv = await upload(proxy, track(headers), Conversation(chunked(body)))
        busy = pool_busy(proxy)
        again = await upload(proxy)  # the next upload gets a fresh connection
    assert conv.status == 502 and json.loads(conv.body) == {"error": "upstream_reset"}
    assert busy == 0
    assert again.status == 502  # the fake resets every upload by default here
    assert len(fake_amplitude.requests) == 2  # the streamed body was never replayed


async def test_reset_during_response_aborts_the_client_connection(
    fake_amplitude: FakeAmplitude,
) -> None:  # 38
    fake_amplitude.script("track", Reply.reset_response(after_bytes=10))
    async with make_proxy(fake_amplitude) as proxy:
        conv = Conversation()
        with pytest.raises(ResponseAborted):
            await proxy.handle_track(track(), conv.receive, conv.send)
        busy = pool_busy(proxy)
    assert conv.status == 200 and not conv.complete
    assert conv.body == b"x" * 10
    assert busy == 0


async def test_tls_failure_gets_502_and_verification_is_on(
    fake_amplitude: FakeAmplitude,
) -> None:  # 39
    # An https URL on a plain-HTTP server: the handshake fails, as with a bad certificate.
    async with make_proxy(
        None, upstreams=Upstreams.at(f"https://127.0.0.1:{fake_amplitude.port}")
    ) as proxy:
        conv = await upload(proxy)
        assert proxy._pool is not None  # uploads: the proxy's own connections
        contexts = [
            proxy._pool.ssl_context,
            proxy.client._transport._pool._ssl_context,  # type: ignore[attr-defined]
        ]
    assert conv.status == 502 and json.loads(conv.body) == {"error": "upstream_connect"}
    assert all(c.verify_mode == ssl.CERT_REQUIRED and c.check_hostname for c in contexts)


async def test_stale_keepalive_connection_is_replaced_without_an_error(
    fake_amplitude: FakeAmplitude,
) -> None:  # 40
    fake_amplitude.script("track", Reply.close_after())
    async with make_proxy(fake_amplitude) as proxy:
        first = await upload(proxy)
        assert fake_amplitude.wait_until(lambda: fake_amplitude.open_connections == 0)
        second = await upload(proxy)
    assert (first.status, second.status) == (200, 200)
    assert fake_amplitude.connections_opened == 2


# --- client faults and load (cases 41-44) -----------------------------------------------------


async def test_client_disconnect_during_upload_never_reaches_upstream(
    fake_amplitude: FakeAmplitude, caplog: pytest.LogCaptureFixture
) -> None:  # 41
    caplog.set_level(logging.DEBUG, logger="replay_middleware")
    body = b"{" + b"x" * (1024 * 1024)
    conv = Conversation(chunked(body), disconnect_after=3)
    async with make_proxy(fake_amplitude) as proxy:
        await upload(proxy, track({**SDK_HEADERS, "content-length": str(len(body))}), conv)
        busy, flying = pool_busy(proxy), proxy.in_flight
        slots = proxy.client_slots.in_flight()
    assert conv.sent == []
    assert fake_amplitude.requests == []
    assert (busy, flying, slots) == (0, 0, 0)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert "reason=client_abort" in caplog.text


async def test_client_disconnect_while_waiting_for_upstream_cancels_it(
    fake_amplitude: FakeAmplitude, caplog: pytest.LogCaptureFixture
) -> None:  # 42
    caplog.set_level(logging.INFO, logger="replay_middleware")
    fake_amplitude.set_default("track", Reply.hang())
    conv = Conversation()
    async with make_proxy(fake_amplitude) as proxy:
        started = time.perf_counter()
        async with anyio.create_task_group() as tg:
            tg.start_soon(proxy.handle_track, track(), conv.receive, conv.send)
            assert await anyio.to_thread.run_sync(
                fake_amplitude.wait_until, lambda: len(fake_amplitude.requests) == 1
            )
            conv.disconnect()  # the SDK's 10 s abort, or the tab closing
        elapsed = time.perf_counter() - started
        busy = pool_busy(proxy)
    assert conv.sent == [] and elapsed < 1.0
    assert upstream_aborted(fake_amplitude)
    assert busy == 0
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.parametrize(
    "options",
    [
        pytest.param({"client_body_timeout": 0.4}, id="client_body_timeout"),
        pytest.param({"upstream_timeout": 0.4}, id="capped-by-upstream_timeout"),
    ],
)
async def test_slow_client_body_gets_408_and_never_reaches_upstream(
    fake_amplitude: FakeAmplitude, options: dict[str, float]
) -> None:  # 43
    conv = Conversation([b'{"a":', b"1}"], pause=5.0)
    async with make_proxy(fake_amplitude, **options) as proxy:
        started = time.perf_counter()
        await upload(proxy, conv=conv)
        elapsed = time.perf_counter() - started
        busy, slots = pool_busy(proxy), proxy.client_slots.in_flight()
    assert conv.status == 408 and json.loads(conv.body) == {"error": "client_timeout"}
    assert elapsed < 1.0  # the deadline, not the client's 5 s pause, ended it
    assert fake_amplitude.requests == []  # its first bytes passed the sniff: still not sent up
    assert (busy, slots) == (0, 0)


async def test_a_trickling_body_takes_no_upstream_connection_until_complete(
    fake_amplitude: FakeAmplitude,
) -> None:  # 43
    parts = [b"{", b'"a"', b":", b"1", b"}"]
    conv = Conversation(parts, pause=0.1)
    while_trickling: set[int] = set()
    async with make_proxy(fake_amplitude) as proxy:
        async with anyio.create_task_group() as tg:
            tg.start_soon(upload, proxy, track(), conv)
            with anyio.fail_after(5):
                while conv.given < len(parts):
                    while_trickling.add(len(fake_amplitude.requests) + pool_busy(proxy))
                    await anyio.sleep(0.02)
        busy = pool_busy(proxy)
    assert while_trickling == {0}  # no request upstream, no pooled connection taken
    assert conv.status == 200
    [seen] = fake_amplitude.requests
    assert seen.body == b'{"a":1}' and seen.header("content-length") == "7"
    assert seen.header("transfer-encoding") is None and busy == 0


async def test_a_body_over_the_memory_threshold_spills_and_arrives_byte_identical(
    fake_amplitude: FakeAmplitude, monkeypatch: pytest.MonkeyPatch
) -> None:  # 22, 43
    made: list[Any] = []
    temporary_file = tempfile.TemporaryFile

    def recorded(*args: Any, **kwargs: Any) -> Any:
        made.append(temporary_file(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(tempfile, "TemporaryFile", recorded)
    body = gzip.compress(os.urandom(300_000), compresslevel=1)
    headers = {**SDK_HEADERS, "content-encoding": "gzip"}  # unframed: no Content-Length
    async with make_proxy(fake_amplitude, upload_memory_bytes=64 * 1024) as proxy:
        small = await upload(proxy)
        kept_in_memory = len(made)
        big = await upload(proxy, track(headers), Conversation(chunked(body, 10_000)))
    assert (small.status, big.status, kept_in_memory) == (200, 200, 0)
    assert len(made) == 1 and made[0].closed  # spilled once; the file is gone after the upload
    seen = fake_amplitude.requests[-1]
    assert (seen.size, seen.sha256) == (len(body), hashlib.sha256(body).hexdigest())
    assert seen.header("content-length") == str(len(body))
    assert seen.header("transfer-encoding") is None


async def test_a_client_over_its_cap_gets_429_before_its_body_is_read(
    fake_amplitude: FakeAmplitude,
) -> None:  # 45
    held = [Conversation([b"{", b"}"], pause=0.5) for _ in range(2)]
    over, other = Conversation(), Conversation()
    async with make_proxy(fake_amplitude, max_uploads_per_client=2) as proxy:
        async with anyio.create_task_group() as tg:
            for conv in held:
                tg.start_soon(upload, proxy, track(), conv)
            with anyio.fail_after(5):
                while not all(conv.given for conv in held):  # both admitted, bodies trickling
                    await anyio.sleep(0.01)
            await upload(proxy, track(), over)  # a third from the same address
            await upload(proxy, track(client="198.51.100.20"), other)  # another address
        after = await upload(proxy)  # the two slow ones are over: their slots are back
        slots = proxy.client_slots.in_flight()
    assert over.status == 429 and over.headers["retry-after"] == "1"
    assert json.loads(over.body) == {"error": "client_busy"}
    assert over.receive_calls == 0  # refused before its body was read
    assert [c.status for c in (*held, other, after)] == [200, 200, 200, 200]
    assert len(fake_amplitude.requests) == 4 and slots == 0


async def test_the_cap_counts_the_address_behind_trusted_proxies(
    fake_amplitude: FakeAmplitude,
) -> None:  # 45, P6
    def via_lb(visitor: str) -> RequestInfo:
        return track(client="10.0.0.2", extra=[("x-forwarded-for", visitor)])

    held = Conversation([b"{", b"}"], pause=0.5)
    same, other = Conversation(), Conversation()
    async with (
        make_proxy(
            fake_amplitude, max_uploads_per_client=1, trusted_proxies=("10.0.0.0/8",)
        ) as proxy,
        anyio.create_task_group() as tg,
    ):
        tg.start_soon(upload, proxy, via_lb("198.51.100.7"), held)
        with anyio.fail_after(5):
            while not held.given:
                await anyio.sleep(0.01)
        await upload(proxy, via_lb("198.51.100.7"), same)
        await upload(proxy, via_lb("198.51.100.8"), other)
    assert (held.status, same.status, other.status) == (200, 429, 200)


async def test_the_client_slot_is_freed_after_every_kind_of_failure(
    fake_amplitude: FakeAmplitude,
) -> None:  # 45
    fake_amplitude.script("track", Reply.error(500), Reply.reset_response(after_bytes=2))
    failures = [
        Conversation(),  # upstream 500
        Conversation(),  # upstream reset mid-response: ResponseAborted
        Conversation(chunked(b"{" + b"x" * 300_000)),  # over max_upload_bytes: 413
        Conversation([b"<html>"]),  # sniffed: 415
        Conversation([b"{", b"}"], disconnect_after=1),  # the client goes away
        Conversation([b"{", b"}"], pause=5.0),  # too slow: 408
    ]
    async with make_proxy(
        fake_amplitude,
        max_uploads_per_client=1,
        max_upload_bytes=100_000,
        client_body_timeout=0.3,
    ) as proxy:
        held_after: list[int] = []
        for conv in failures:
            with contextlib.suppress(ResponseAborted):
                await upload(proxy, conv=conv)
            held_after.append(proxy.client_slots.in_flight())
        last = await upload(proxy)
        flying = proxy.in_flight
    assert [c.status for c in failures] == [500, 200, 413, 415, None, 408]
    assert held_after == [0] * len(failures)
    assert last.status == 200 and flying == 0


async def test_pool_exhaustion_sheds_load_fast_and_leaks_nothing(
    fake_amplitude: FakeAmplitude,
) -> None:  # 44
    fake_amplitude.set_default("track", Reply.slow(0.8))
    convs = [Conversation() for _ in range(5)]
    timings: list[float] = []

    async def one(proxy: AsyncUploadProxy, conv: Conversation) -> None:
        started = time.perf_counter()
        await upload(proxy, conv=conv)
        timings.append(time.perf_counter() - started)

    async with make_proxy(
        fake_amplitude, limits=httpx.Limits(max_connections=2), pool_timeout=0.2
    ) as proxy:
        async with anyio.create_task_group() as tg:
            for conv in convs:
                tg.start_soon(one, proxy, conv)
        busy, flying = pool_busy(proxy), proxy.in_flight
        fake_amplitude.set_default("track", Reply.ok())
        after = await upload(proxy)
    statuses = sorted(c.status or 0 for c in convs)
    assert statuses == [200, 200, 503, 503, 503]
    shed = [c for c in convs if c.status == 503]
    assert all(c.headers["retry-after"] == "1" for c in shed)
    assert sorted(timings)[2] < 0.6  # the 503s came at the pool timeout, not after the upload
    assert (busy, flying) == (0, 0)
    assert after.status == 200


# --- config endpoint (cases 46-48) --------------------------------------------------------------


async def test_config_is_cached_per_key_and_zone(fake_amplitude: FakeAmplitude) -> None:  # 46
    async with make_proxy(fake_amplitude, keys=KeyMap({KEY: "US", EU_KEY: "EU"})) as proxy:
        replies = [await fetch_config(proxy) for _ in range(3)]
        eu = await fetch_config(proxy, EU_KEY)
    assert {(c.status, c.body) for c in replies} == {(200, DEFAULT_CONFIG)}
    assert eu.body == DEFAULT_CONFIG
    assert [r.path for r in fake_amplitude.requests] == [f"/config/{KEY}", f"/eu/config/{EU_KEY}"]


async def test_only_good_json_is_cached(fake_amplitude: FakeAmplitude) -> None:  # 46
    fake_amplitude.script("config", Reply.ok(body=b"<html>maintenance</html>"))
    async with make_proxy(fake_amplitude, config_failure_backoff=0) as proxy:
        first = await fetch_config(proxy)
        second = await fetch_config(proxy)
        third = await fetch_config(proxy)
    assert first.body == CONFIG_FALLBACK_BODY
    assert second.body == third.body == DEFAULT_CONFIG
    assert len(fake_amplitude.requests) == 2


@pytest.mark.parametrize(
    "failure",
    [
        pytest.param(Reply.error(500), id="500"),
        pytest.param(Reply.error(503), id="503"),
        pytest.param(Reply.rate_limited("5"), id="429"),
        pytest.param(Reply(status=401, body=b"{}"), id="401"),
        pytest.param(Reply(status=403, body=b"{}"), id="403"),
        pytest.param(Reply.redirect("http://169.254.169.254/"), id="redirect"),
        pytest.param(Reply.hang(), id="hang"),
        pytest.param(Reply.reset_response(), id="reset"),
    ],
)
async def test_config_failure_serves_the_stale_copy_fast(
    fake_amplitude: FakeAmplitude, failure: Reply
) -> None:  # 47
    clock = Clock()
    async with make_proxy(fake_amplitude, clock=clock) as proxy:
        good = await fetch_config(proxy)
        clock.now += 61  # past config_cache_ttl
        fake_amplitude.script("config", failure)
        started = time.perf_counter()
        stale = await fetch_config(proxy)
        elapsed = time.perf_counter() - started
    assert good.body == DEFAULT_CONFIG
    assert (stale.status, stale.body) == (200, DEFAULT_CONFIG)
    assert elapsed < 1.0
    assert len(fake_amplitude.requests) == 2


@pytest.mark.parametrize(
    "failure",
    [
        pytest.param(Reply.error(500), id="500"),
        pytest.param(Reply(status=403, body=b"{}"), id="403"),
        pytest.param(Reply.hang(), id="hang"),
    ],
)
async def test_config_failure_without_a_copy_serves_the_fallback_fast(
    fake_amplitude: FakeAmplitude, failure: Reply
) -> None:  # 47
    fake_amplitude.set_default("config", failure)
    async with make_proxy(fake_amplitude) as proxy:
        started = time.perf_counter()
        conv = await fetch_config(proxy)
        elapsed = time.perf_counter() - started
        again = await fetch_config(proxy)  # within the failure back-off: no upstream call
    assert (conv.status, conv.body) == (200, CONFIG_FALLBACK_BODY)  # never 401/403/5xx
    assert conv.headers["cache-control"] == "no-store"
    assert elapsed < 1.0
    assert again.body == CONFIG_FALLBACK_BODY
    assert len(fake_amplitude.requests) == 1


async def test_connection_refused_config_serves_the_fallback() -> None:  # 47
    async with make_proxy(None, upstreams=Upstreams.at(f"http://127.0.0.1:{free_port()}")) as proxy:
        conv = await fetch_config(proxy)
    assert (conv.status, conv.body) == (200, CONFIG_FALLBACK_BODY)


async def test_concurrent_config_requests_share_one_upstream_fetch(
    fake_amplitude: FakeAmplitude,
) -> None:
    fake_amplitude.set_default("config", Reply.slow(0.3, body=DEFAULT_CONFIG))
    convs: list[Conversation] = []

    async def one(proxy: AsyncUploadProxy) -> None:
        convs.append(await fetch_config(proxy))

    async with make_proxy(fake_amplitude) as proxy, anyio.create_task_group() as tg:
        for _ in range(5):
            tg.start_soon(one, proxy)
    assert [c.body for c in convs] == [DEFAULT_CONFIG] * 5
    assert len(fake_amplitude.requests) == 1


async def test_ttl_zero_refetches_every_time(fake_amplitude: FakeAmplitude) -> None:
    async with make_proxy(fake_amplitude, config_cache_ttl=0) as proxy:
        for _ in range(3):
            assert (await fetch_config(proxy)).body == DEFAULT_CONFIG
    assert len(fake_amplitude.requests) == 3


async def test_config_query_other_than_config_group_is_rejected(
    fake_amplitude: FakeAmplitude,
) -> None:  # 48
    async with make_proxy(fake_amplitude) as proxy:
        conv = await fetch_config(proxy, query="config_group=browser&debug=1")
    assert conv.status == 400 and fake_amplitude.requests == []


# --- remote sampling in the background (SPEC S2) ------------------------------------------------


async def test_current_sampling_never_waits_and_refreshes_in_the_background(
    fake_amplitude: FakeAmplitude,
) -> None:
    clock = Clock()
    async with make_proxy(fake_amplitude, clock=clock) as proxy:
        assert proxy.current_sampling() is None  # nothing known yet: the local rate applies
        assert proxy.current_sampling() is None  # one refresh in flight, not two
        assert await anyio.to_thread.run_sync(
            fake_amplitude.wait_until, lambda: len(fake_amplitude.requests) == 1
        )
        for _ in range(100):
            if proxy.current_sampling() is not None:
                break
            await anyio.sleep(0.01)
        assert proxy.current_sampling() == RemoteSampling(0.5, True)
        assert await proxy.remote_sampling() == RemoteSampling(0.5, True)
        assert len(fake_amplitude.requests) == 1  # fresh: no more fetches
        assert proxy.current_sampling("unknown") is None


async def test_background_failures_are_logged_once_and_keep_the_last_value(
    fake_amplitude: FakeAmplitude, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="replay_middleware.proxy")
    clock = Clock()
    async with make_proxy(fake_amplitude, clock=clock, config_failure_backoff=0) as proxy:
        assert await proxy.refresh_config() == RemoteSampling(0.5, True)
        fake_amplitude.set_default("config", Reply.error(500))
        for _ in range(3):
            clock.now += 61
            assert proxy.current_sampling() == RemoteSampling(0.5, True)  # answers at once
            while proxy._flights:  # let the background refresh finish
                await anyio.sleep(0.01)
        assert proxy.current_sampling() == RemoteSampling(0.5, True)  # the last good copy
    warnings = [
        r
        for r in caplog.records
        if r.levelno == logging.WARNING and "remote config" in r.getMessage()
    ]
    assert len(warnings) == 1
    assert len(fake_amplitude.requests) >= 3


async def test_aclose_cancels_background_refreshes(fake_amplitude: FakeAmplitude) -> None:
    fake_amplitude.set_default("config", Reply.hang())
    proxy = make_proxy(fake_amplitude)
    assert proxy.current_sampling() is None
    assert await anyio.to_thread.run_sync(
        fake_amplitude.wait_until, lambda: len(fake_amplitude.requests) == 1
    )
    await proxy.aclose()
    assert proxy._tasks == set()
    assert proxy.client.is_closed
    assert proxy.current_sampling() is None  # closed: schedules nothing


# --- the client (P7) and logs (case 50) ----------------------------------------------------------


async def test_the_created_client_has_safe_defaults() -> None:
    async with make_proxy(None) as proxy:
        client = proxy.client
        pool = client._transport._pool  # type: ignore[attr-defined]
        assert client.follow_redirects is False
        assert client._trust_env is False
        assert isinstance(client.cookies.jar, NullCookieJar)
        assert (pool._max_connections, pool._keepalive_expiry) == (100, 5.0)
        assert (pool._http1, pool._http2) == (True, False)
        assert client.timeout == httpx.Timeout(connect=2.0, read=8.0, write=8.0, pool=1.0)
    assert client.is_closed


async def test_an_injected_client_is_used_and_not_closed(fake_amplitude: FakeAmplitude) -> None:
    sent: list[httpx.Request] = []

    async def record(request: httpx.Request) -> None:
        sent.append(request)

    async with httpx.AsyncClient(event_hooks={"request": [record]}) as mine:
        async with make_proxy(fake_amplitude, http_client=mine) as proxy:
            assert proxy.client is mine and proxy._pool is None
            assert (await upload(proxy)).status == 200
        assert not mine.is_closed
    assert [r.url.path for r in sent] == ["/sessions/v2/track"]  # the upload went through it


async def test_uploads_use_the_proxys_own_pool_not_httpx(fake_amplitude: FakeAmplitude) -> None:
    async with make_proxy(fake_amplitude) as proxy:
        for _ in range(3):
            assert (await upload(proxy)).status == 200
        assert proxy._client is None  # no httpx client made: config fetches would make one
        pool = proxy._pool
        assert pool is not None and pool.busy == 0
        assert (pool.max_connections, pool.max_keepalive, pool.keepalive_expiry) == (100, 20, 5.0)
        assert (pool.connect_timeout, pool.pool_timeout) == (2.0, 1.0)
    assert fake_amplitude.connections_opened == 1  # one kept-alive connection for all three


async def test_an_injected_transport_is_used(fake_amplitude: FakeAmplitude) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(202, json={"code": 202})

    async with make_proxy(fake_amplitude, http_client=httpx.MockTransport(handler)) as proxy:
        conv = await upload(proxy)
    assert conv.status == 202 and len(seen) == 1 and fake_amplitude.requests == []
    assert seen[0].url.query.decode() == QUERY


class _Broken(httpx.AsyncBaseTransport):
    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        raise RuntimeError("a bug in a custom transport")


async def test_an_unexpected_error_still_answers_a_retryable_status(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with make_proxy(None, transport=_Broken()) as proxy:
        conv = await upload(proxy)  # no ExceptionGroup escapes the handler
    assert conv.status == 502 and json.loads(conv.body) == {"error": "upstream_error"}
    assert "exchange failed unexpectedly" in caplog.text


def test_a_sync_client_is_refused() -> None:
    with httpx.Client() as sync_client, pytest.raises(ValueError, match="AsyncClient"):
        make_proxy(None, http_client=sync_client)


async def test_logs_never_show_keys_queries_addresses_bodies_or_cookies(
    fake_amplitude: FakeAmplitude, caplog: pytest.LogCaptureFixture
) -> None:  # 50
    caplog.set_level(logging.DEBUG)
    secret_body = b'{"version":2,"events":["typed-password-hunter2"]}'
    beacon = f"{QUERY}&api_key={KEY}"
    extra = [("cookie", "sessionid=cookie-secret"), ("x-forwarded-for", "198.51.100.99")]
    async with make_proxy(fake_amplitude, forward_client_ip="full") as proxy:
        await upload(
            proxy,
            track({"content-type": "application/json"}, query=beacon, extra=extra),
            Conversation([secret_body]),
        )
        await upload(proxy, track({"authorization": "Bearer wrong-key-123456"}))
        await fetch_config(proxy)
        await fetch_config(proxy, "unknown-config-key")
    text = caplog.text
    for secret in (
        KEY,
        "wrong-key-123456",
        "unknown-config-key",
        "dev-1",
        "1735689600000",
        "203.0.113.7",
        "198.51.100.99",
        "hunter2",
        "cookie-secret",
    ):
        assert secret not in text, secret
    assert f"key={key_id(KEY)}" in text and f"key={key_id('wrong-key-123456')}" in text
    assert "replay proxy POST track status=200 upstream=200" in text
    assert "reason=key_unknown" in text


_NO_RATE_CONFIG = b'{"configs":{"sessionReplay":{}}}'
_ZERO_RATE_CONFIG = (
    b'{"configs":{"sessionReplay":{"sr_sampling_config":{"sample_rate":0,"capture_enabled":true}}}}'
)
_CAPTURE_OFF_CONFIG = (
    b'{"configs":{"sessionReplay":{"sr_sampling_config":{"capture_enabled":false}}}}'
)
_TARGETING_CONFIG = b'{"configs":{"sessionReplay":{"sr_targeting_config":{"key":"x"}}}}'


@pytest.mark.parametrize(
    ("reply", "rate", "expected"),
    [
        pytest.param(Reply.config(), None, None, id="remote-rate-raises-it"),
        pytest.param(Reply.config(_NO_RATE_CONFIG), 0.25, None, id="local-rate-applies"),
        pytest.param(
            Reply.config(_NO_RATE_CONFIG),
            None,
            "sample_rate is 0 and the project's remote config sets no sample rate",
            id="no-remote-rate",
        ),
        pytest.param(
            Reply.config(_ZERO_RATE_CONFIG),
            0.5,
            "the project's remote config sets a sample rate of 0",
            id="remote-rate-zero",
        ),
        pytest.param(
            Reply.config(_CAPTURE_OFF_CONFIG),
            1.0,
            "the project's remote config disables capture",
            id="capture-disabled",
        ),
        pytest.param(Reply.config(_TARGETING_CONFIG), None, None, id="targeting-sdk-decides"),
        pytest.param(
            Reply.error(500),
            None,
            "sample_rate is 0 and the project's remote config could not be fetched",
            id="fetch-failed",
        ),
        pytest.param(Reply.error(500), 0.5, None, id="fetch-failed-local-rate"),
    ],
)
async def test_zero_effective_rate_after_the_first_config_fetch_is_warned_once(
    fake_amplitude: FakeAmplitude,
    caplog: pytest.LogCaptureFixture,
    reply: Reply,
    rate: float | None,
    expected: str | None,
) -> None:
    fake_amplitude.set_default("config", reply)
    rate_option = {} if rate is None else {"sample_rate": rate}
    config = ReplayConfig(api_key=KEY, secret_key="s" * 32, config_cache_ttl=0, **rate_option)
    caplog.set_level(logging.WARNING, logger="replay_middleware")
    async with AsyncUploadProxy(config, upstreams=fake_amplitude.upstreams()) as proxy:
        for _ in range(3):  # later fetches never warn again
            await proxy.refresh_config()
    found = [r.getMessage() for r in caplog.records if "no session will be recorded" in r.message]
    if expected is None:
        assert found == []
    else:
        assert len(found) == 1
        assert expected in found[0]


async def test_force_sample_silences_the_zero_rate_warning(
    fake_amplitude: FakeAmplitude, caplog: pytest.LogCaptureFixture
) -> None:
    fake_amplitude.set_default("config", Reply.config(_ZERO_RATE_CONFIG))
    config = ReplayConfig(api_key=KEY, secret_key="s" * 32, force_sample=lambda r: True)
    caplog.set_level(logging.WARNING, logger="replay_middleware")
    async with AsyncUploadProxy(config, upstreams=fake_amplitude.upstreams()) as proxy:
        await proxy.refresh_config()
    assert "no session will be recorded" not in caplog.text
