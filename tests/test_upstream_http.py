"""The proxy's own HTTP/1.1 upload client (``replay_middleware.upstream_http``), against a raw
asyncio server that answers scripted bytes: response framings the fake Amplitude never sends
(chunked, close-delimited, 1xx), malformed answers, reuse and the pool's limits."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from replay_middleware.upstream_http import (
    SyncUpstreamPool,
    SyncUpstreamResponse,
    UpstreamFault,
    UpstreamPool,
    UpstreamResponse,
)

pytestmark = pytest.mark.anyio

BODY = b'{"version":1,"events":[]}'
HEADERS = [("content-type", "application/json"), ("content-length", str(len(BODY)))]


class Raw:
    """A server that reads one request (head + Content-Length body) per turn and answers the
    next scripted bytes, on any connection: ``None`` closes the connection (right after the
    previous answer, or instead of answering), ``b""`` never answers (until the client goes);
    after the last answer the connection is closed."""

    def __init__(self, *answers: bytes | None) -> None:
        self.answers = list(answers)
        self.connections = 0
        self.requests: list[bytes] = []
        self.closed = asyncio.Event()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while self.answers:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                self.requests.append(head + await reader.readexactly(length))
                answer = self.answers.pop(0)
                if answer is None:
                    break
                if answer == b"":
                    await asyncio.wait_for(reader.read(), 10)  # until the client goes
                    break
                writer.write(answer)
                await writer.drain()
                if self.answers and self.answers[0] is None:
                    self.answers.pop(0)
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
            self.closed.set()


@asynccontextmanager
async def serve(raw: Raw) -> AsyncIterator[str]:
    server = await asyncio.start_server(raw.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/sessions/v2/track?device_id=d&session_id=1&type=replay"
    finally:
        server.close()


async def post(pool: UpstreamPool, url: str) -> tuple[UpstreamResponse, bytes]:
    response = await pool.post(url, HEADERS, [BODY], len(BODY))
    try:
        body = b"".join([chunk async for chunk in response.iter_raw()])
    finally:
        await response.aclose()
    return response, body


def ok(body: bytes = b'{"code":200}', extra: bytes = b"") -> bytes:
    return (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        + extra
        + b"Content-Length: %d\r\n\r\n" % len(body)
        + body
    )


async def test_request_is_framed_by_content_length_with_host_and_target() -> None:
    raw = Raw(ok())
    pool = UpstreamPool()
    async with serve(raw) as url:
        response, body = await post(pool, url)
    await pool.aclose()
    [request] = raw.requests
    head, _, sent = request.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"POST /sessions/v2/track?device_id=d&session_id=1&type=replay HTTP/1.1"
    assert lines[1].startswith(b"host: 127.0.0.1:")
    assert b"content-length: %d" % len(BODY) in lines
    assert sent == BODY
    assert (response.status, body) == (200, b'{"code":200}')
    assert ("content-type", "application/json") in response.headers


async def test_kept_alive_connection_is_reused() -> None:
    raw = Raw(ok(), ok(), ok())
    pool = UpstreamPool()
    async with serve(raw) as url:
        for _ in range(3):
            response, _ = await post(pool, url)
            assert response.status == 200
        assert (raw.connections, pool.busy) == (1, 0)
    await pool.aclose()


async def test_chunked_body_is_dechunked_raw_and_the_connection_reused() -> None:
    chunked = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Encoding: gzip\r\n\r\n"
        b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n"
    )
    raw = Raw(chunked, ok())
    pool = UpstreamPool()
    async with serve(raw) as url:
        response, body = await post(pool, url)
        again, _ = await post(pool, url)
    await pool.aclose()
    assert body == b"hello world"  # transfer coding removed, content coding left alone
    assert ("content-encoding", "gzip") in response.headers
    assert again.status == 200 and raw.connections == 1


async def test_interim_1xx_answers_are_skipped() -> None:
    raw = Raw(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: x\r\n\r\n" + ok())
    pool = UpstreamPool()
    async with serve(raw) as url:
        response, body = await post(pool, url)
    await pool.aclose()
    assert (response.status, body) == (200, b'{"code":200}')


async def test_close_delimited_body_is_read_to_the_end_and_never_reused() -> None:
    raw = Raw(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end")
    pool = UpstreamPool()
    async with serve(raw) as url:
        response, body = await asyncio.wait_for(post(pool, url), 5)
    await pool.aclose()
    assert (response.status, body) == (200, b"until the end")
    assert pool.busy == 0


@pytest.mark.parametrize(
    "answer",
    [
        pytest.param(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n",
            id="both-framings",
        ),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok", id="two-lengths"
        ),
        pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", id="negative-length"),
        pytest.param(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", id="not-chunked"),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nX-A: 1\r\n folded\r\nContent-Length: 0\r\n\r\n", id="obs-fold"
        ),
        pytest.param(b"HTTP/1.1 200 OK\r\nNoColon\r\nContent-Length: 0\r\n\r\n", id="no-colon"),
        pytest.param(b"ICY 200 OK\r\nContent-Length: 0\r\n\r\n", id="bad-version"),
        pytest.param(b"HTTP/1.1 2x0 OK\r\nContent-Length: 0\r\n\r\n", id="bad-status"),
        pytest.param(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n", id="upgrade"),
        pytest.param(None, id="closed-before-answering"),
    ],
)
async def test_malformed_or_missing_answer_is_a_reset_and_the_connection_dropped(
    answer: bytes | None,
) -> None:
    raw = Raw(answer)
    pool = UpstreamPool()
    async with serve(raw) as url:
        with pytest.raises(UpstreamFault) as caught:
            await post(pool, url)
        await asyncio.wait_for(raw.closed.wait(), 5)
    await pool.aclose()
    assert caught.value.kind == "upstream_reset"
    assert pool.busy == 0


@pytest.mark.parametrize(
    "answer",
    [
        pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", id="short-body"),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", id="bad-chunk-size"
        ),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX", id="bad-chunk-end"
        ),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n9\r\nhel", id="cut-in-a-chunk"
        ),
    ],
)
async def test_body_that_breaks_mid_way_raises_a_reset(answer: bytes) -> None:
    raw = Raw(answer)
    pool = UpstreamPool()
    async with serve(raw) as url:
        response = await pool.post(url, HEADERS, [BODY], len(BODY))
        with pytest.raises(UpstreamFault) as caught:
            async for _ in response.iter_raw():
                pass
        await response.aclose()
    await pool.aclose()
    assert caught.value.kind == "upstream_reset"
    assert pool.busy == 0


async def test_idle_connection_closed_by_the_upstream_is_not_reused() -> None:
    raw = Raw(ok(), None, ok())  # the first connection closes after its answer
    pool = UpstreamPool()
    async with serve(raw) as url:
        await post(pool, url)
        await asyncio.wait_for(raw.closed.wait(), 5)
        response, _ = await post(pool, url)
    await pool.aclose()
    assert response.status == 200
    assert raw.connections == 2


async def test_connection_close_answer_is_not_reused() -> None:
    raw = Raw(ok(extra=b"Connection: close\r\n"))
    pool = UpstreamPool()
    async with serve(raw) as url:
        await post(pool, url)
        await asyncio.wait_for(raw.closed.wait(), 5)
    assert pool.busy == 0 and not any(s.idle for s in pool._slots.values())
    await pool.aclose()


async def test_full_pool_waits_then_answers_pool_exhausted() -> None:
    raw = Raw(ok(), ok())
    pool = UpstreamPool(max_connections=1, pool_timeout=0.2)
    async with serve(raw) as url:
        first = await pool.post(url, HEADERS, [BODY], len(BODY))  # holds the only slot
        with pytest.raises(UpstreamFault) as caught:
            await pool.post(url, HEADERS, [BODY], len(BODY))
        assert caught.value.kind == "pool_exhausted"
        waiting = asyncio.ensure_future(post(pool, url))
        await asyncio.sleep(0.05)
        async for _ in first.iter_raw():
            pass
        await first.aclose()  # the slot goes to the waiting request
        response, _ = await asyncio.wait_for(waiting, 5)
    await pool.aclose()
    assert response.status == 200 and pool.busy == 0


async def test_cancelled_request_closes_its_connection_at_once() -> None:
    raw = Raw(b"")  # reads the request, never answers
    pool = UpstreamPool()
    async with serve(raw) as url:
        task = asyncio.ensure_future(post(pool, url))
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.wait_for(raw.closed.wait(), 5)  # the server saw the connection end
    await pool.aclose()
    assert pool.busy == 0


async def test_refused_connection_is_a_connect_fault() -> None:
    probe = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = probe.sockets[0].getsockname()[1]
    probe.close()
    await probe.wait_closed()
    pool = UpstreamPool()
    with pytest.raises(UpstreamFault) as caught:
        await post(pool, f"http://127.0.0.1:{port}/x")
    await pool.aclose()
    assert caught.value.kind == "upstream_connect" and pool.busy == 0


def test_tls_context_verifies_and_checks_host_names() -> None:
    import ssl

    context = UpstreamPool().ssl_context
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname


# --- the blocking twin (UploadProxy), driven from a thread against the same servers ----------


def sync_post(pool: SyncUpstreamPool, url: str) -> tuple[SyncUpstreamResponse, bytes]:
    response = pool.post(
        url, HEADERS, [BODY], len(BODY), timeout=5.0, connect_timeout=2.0, pool_timeout=0.2
    )
    try:
        body = b"".join(response.iter_raw())
    finally:
        response.close()
    return response, body


async def test_sync_twin_reuses_and_dechunks() -> None:
    chunked = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    )
    raw = Raw(ok(), chunked, ok(b"x" * 100_000))
    pool = SyncUpstreamPool()
    async with serve(raw) as url:
        results = [await asyncio.to_thread(sync_post, pool, url) for _ in range(3)]
    pool.close()
    assert [(r.status, b) for r, b in results[:2]] == [
        (200, b'{"code":200}'),
        (200, b"hello world"),
    ]
    assert results[2][1] == b"x" * 100_000
    assert raw.connections == 1 and pool.busy == 0


@pytest.mark.parametrize(
    "answer",
    [
        pytest.param(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n",
            id="both-framings",
        ),
        pytest.param(b"HTTP/1.1 200 OK\r\nX-A: 1\r\n folded\r\n\r\n", id="obs-fold"),
        pytest.param(None, id="closed-before-answering"),
    ],
)
async def test_sync_twin_malformed_answer_is_a_reset(answer: bytes | None) -> None:
    raw = Raw(answer)
    pool = SyncUpstreamPool()
    async with serve(raw) as url:
        with pytest.raises(UpstreamFault) as caught:
            await asyncio.to_thread(sync_post, pool, url)
    pool.close()
    assert caught.value.kind == "upstream_reset" and pool.busy == 0


async def test_sync_twin_idle_connection_closed_by_the_upstream_is_not_reused() -> None:
    raw = Raw(ok(), None, ok())
    pool = SyncUpstreamPool()
    async with serve(raw) as url:
        await asyncio.to_thread(sync_post, pool, url)
        await asyncio.wait_for(raw.closed.wait(), 5)
        response, _ = await asyncio.to_thread(sync_post, pool, url)
    pool.close()
    assert response.status == 200 and raw.connections == 2


async def test_sync_twin_full_pool_answers_pool_exhausted() -> None:
    raw = Raw(ok())
    pool = SyncUpstreamPool(max_connections=1)
    async with serve(raw) as url:
        first = await asyncio.to_thread(
            pool.post,
            url,
            HEADERS,
            [BODY],
            len(BODY),
            timeout=5.0,
            connect_timeout=2.0,
            pool_timeout=0.2,
        )
        with pytest.raises(UpstreamFault) as caught:
            await asyncio.to_thread(sync_post, pool, url)
        first.close()  # unread: the connection is dropped, the slot returns
    pool.close()
    assert caught.value.kind == "pool_exhausted" and pool.busy == 0


async def test_sync_twin_refused_connection_and_read_timeout() -> None:
    probe = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = probe.sockets[0].getsockname()[1]
    probe.close()
    await probe.wait_closed()
    pool = SyncUpstreamPool()
    with pytest.raises(UpstreamFault) as refused:
        await asyncio.to_thread(sync_post, pool, f"http://127.0.0.1:{port}/x")
    raw = Raw(b"")  # never answers
    async with serve(raw) as url:
        with pytest.raises(UpstreamFault) as slow:
            await asyncio.to_thread(
                lambda: pool.post(
                    url,
                    HEADERS,
                    [BODY],
                    len(BODY),
                    timeout=0.2,
                    connect_timeout=2.0,
                    pool_timeout=0.2,
                )
            )
        await asyncio.wait_for(raw.closed.wait(), 5)  # its connection was closed
    pool.close()
    assert (refused.value.kind, slow.value.kind) == ("upstream_connect", "upstream_timeout")
    assert pool.busy == 0
