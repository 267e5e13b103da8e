"""A small pooled HTTP/1.1 client for uploads: ``UpstreamPool`` on asyncio streams for
``AsyncUploadProxy``, ``SyncUpstreamPool`` on blocking sockets for ``UploadProxy``.

Why not httpx here (issue 10, figures in BENCHMARKS.md "Upload proxy"): for a 2 KB upload on
loopback, ``httpx.AsyncClient.send`` + ``aiter_raw`` + ``aclose`` cost about 0.9 ms of CPU,
about twice the rest of the proxy, and on anyio >= 4.11 (which no longer pulls in
``sniffio``) httpcore retries a failing ``import sniffio`` twice per request. This client does
only what an upload needs, so its cost is a few syscalls:

- one request shape: ``POST`` with a body read whole beforehand (its ``Content-Length`` known),
  headers already checked by :func:`replay_middleware.proxy.plan_track` (allowlisted, no control
  characters), a target made of the configured base URL and the validated query;
- responses framed by ``Content-Length``, ``chunked`` or the connection's end, 1xx skipped;
  anything ambiguous (both framings, a bad length, a bad chunk, an obsolete line fold, an
  oversized head) is a protocol fault and the connection is dropped, never reused;
- the body is relayed raw (transfer coding removed, content coding untouched, as
  ``aiter_raw``);
- a pool per origin with httpx's limits: at most ``max_connections`` open, ``max_keepalive``
  kept idle for ``keepalive_expiry`` seconds, ``pool_timeout`` to wait for a free slot
  (:class:`UpstreamFault` ``pool_exhausted``), ``connect_timeout``; an idle connection the
  upstream closed (or sent anything on) is discarded before reuse, as httpcore does;
- TLS always verified (the certifi bundle httpx uses, SNI and host name from the constant
  upstream URL), HTTP/1.1 by ALPN; no proxies or certificates from the environment, no
  cookies, no redirects (the caller turns a 3xx into a 502);
- cancellation-safe: a request cancelled at any point (client disconnect, total budget) closes
  its connection at once, so the upstream sees the abort and the slot returns;
- the response head is parsed by one sans-IO function, :func:`parse_head`, for both twins.

Only the upload path uses it, and only when the proxy creates its own client: an injected
``http_client`` (an httpx client or transport) is always used as given, and the remote
config fetch (rare, in the background) stays on httpx.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import select
import socket
import ssl
import threading
import time
from collections.abc import AsyncIterator, Iterable, Iterator
from typing import Final
from urllib.parse import urlsplit

__all__ = [
    "WRITE_BYTES",
    "Head",
    "SyncUpstreamPool",
    "SyncUpstreamResponse",
    "UpstreamFault",
    "UpstreamPool",
    "UpstreamResponse",
    "parse_head",
]

#: The longest response head accepted (status line and headers).
MAX_HEAD_BYTES: Final = 64 * 1024
#: Bytes asked of the socket per read of a response body.
READ_BYTES: Final = 64 * 1024
#: A request body up to this size goes out in the same write as the head (one segment).
COALESCE_BYTES: Final = 64 * 1024
#: Larger bodies are written in pieces of this size, each waited for (bounded memory).
WRITE_BYTES: Final = 256 * 1024


def _tls_context() -> ssl.SSLContext:
    """Verified TLS with host name checks, HTTP/1.1 by ALPN, trusting the same CA bundle as
    httpx (certifi, which httpx depends on), so a machine without system CA certificates
    still connects."""
    try:
        import certifi
    except ImportError:  # pragma: no cover - httpx always brings certifi
        context = ssl.create_default_context()
    else:
        context = ssl.create_default_context(cafile=certifi.where())
    context.set_alpn_protocols(["http/1.1"])
    return context


class UpstreamFault(Exception):
    """A transport fault; ``kind`` is the proxy's reason code: ``upstream_connect``,
    ``upstream_reset`` (reset, early close, protocol error), ``upstream_timeout`` (connect
    timeout) or ``pool_exhausted``."""

    def __init__(self, kind: str, detail: str = "") -> None:
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind = kind


class _Origin:
    """Where a base URL points: scheme, host, port, and the ``Host`` header line."""

    __slots__ = ("host", "host_line", "port", "tls")

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        self.tls = parts.scheme == "https"
        self.host = parts.hostname
        self.port = parts.port or (443 if self.tls else 80)
        default = 443 if self.tls else 80
        name = f"[{self.host}]" if ":" in self.host else self.host
        self.host_line = name if self.port == default else f"{name}:{self.port}"


def _target(cache: dict[str, tuple[_Origin, str]], url: str) -> tuple[_Origin, str]:
    """The origin and request target of ``url`` (cached per URL: bases are constants)."""
    known = cache.get(url)
    if known is None:
        parts = urlsplit(url)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        known = (_Origin(url), target)
        if len(cache) < 1024:  # queries vary per visitor: keep the cache small
            cache[url] = known
    return known


def _request_head(origin: _Origin, target: str, headers: Iterable[tuple[str, str]]) -> bytes:
    """The request head. The target is a constant base plus a validated query and the
    headers were checked by ``plan_track`` (no control characters): nothing to escape."""
    head = [f"POST {target} HTTP/1.1\r\nhost: {origin.host_line}\r\n"]
    head.extend(f"{name}: {value}\r\n" for name, value in headers)
    head.append("\r\n")
    return "".join(head).encode("latin-1")


def _readable(fd: int) -> bool:
    """Whether ``fd`` has something to read now (``poll``: no FD_SETSIZE limit; ``select``
    where there is no ``poll``, on Windows)."""
    if hasattr(select, "poll"):
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        return bool(poller.poll(0))
    return bool(select.select([fd], [], [], 0)[0])


def _chunk_size(line: bytes) -> int:
    """The size of a chunk from its size line (extensions ignored)."""
    text = line[:-2].split(b";", 1)[0].strip()
    if not text or len(text) > 16:
        raise UpstreamFault("upstream_reset", "bad chunk size")
    try:
        return int(text, 16)
    except ValueError:
        raise UpstreamFault("upstream_reset", "bad chunk size") from None


class _Connection:
    __slots__ = ("idle_since", "reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.idle_since = 0.0

    def usable(self, now: float, expiry: float) -> bool:
        """Whether an idle connection may carry a request: not expired, not closed by the
        upstream, nothing unread on it (httpcore's ``has_expired``)."""
        if now - self.idle_since > expiry or self.writer.transport.is_closing():
            return False
        if self.reader.at_eof() or len(self.reader._buffer):  # type: ignore[attr-defined]
            return False
        sock = self.writer.transport.get_extra_info("socket")
        # Readable while idle: closed by the upstream, or bytes nobody asked for.
        return sock is not None and not _readable(sock.fileno())

    def abort(self) -> None:
        """Close now: the socket is shut at once (asyncio closes it only on the loop's next
        turn), so the upstream sees a cancelled request even if the loop is then busy."""
        sock = self.writer.transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self.writer.transport.abort()


class _Slots:
    """The pool of one origin: idle connections, the open count, the waiters for a slot."""

    __slots__ = ("idle", "open", "waiters")

    def __init__(self) -> None:
        self.idle: collections.deque[_Connection] = collections.deque()
        self.open = 0
        self.waiters: collections.deque[asyncio.Future[None]] = collections.deque()


class UpstreamPool:
    """Pooled HTTP/1.1 connections for POSTs of whole bodies (see the module docstring)."""

    def __init__(
        self,
        *,
        max_connections: int | None = 100,
        max_keepalive: int | None = 20,
        keepalive_expiry: float | None = 5.0,
        connect_timeout: float | None = 2.0,
        pool_timeout: float | None = 1.0,
    ) -> None:
        self.max_connections = max_connections
        self.max_keepalive = max_keepalive
        self.keepalive_expiry = keepalive_expiry if keepalive_expiry is not None else 1e18
        self.connect_timeout = connect_timeout
        self.pool_timeout = pool_timeout
        self._ssl: ssl.SSLContext | None = None
        self._origins: dict[str, tuple[_Origin, str]] = {}
        self._slots: dict[tuple[str, int, bool], _Slots] = {}
        #: Every open connection, idle or not: closing the pool closes them all (a response
        #: never released must not keep a socket open, or leave it to the garbage collector).
        self._conns: set[_Connection] = set()
        self.closed = False

    @property
    def ssl_context(self) -> ssl.SSLContext:
        """The TLS context, made on first use: verified, host names checked, HTTP/1.1."""
        if self._ssl is None:
            self._ssl = _tls_context()
        return self._ssl

    # -- diagnostics ----------------------------------------------------------------------------

    @property
    def busy(self) -> int:
        """Connections carrying a request, plus requests waiting for one (0: nothing leaked)."""
        return sum(s.open - len(s.idle) + len(s.waiters) for s in self._slots.values())

    # -- requests -------------------------------------------------------------------------------

    async def post(
        self,
        url: str,
        headers: Iterable[tuple[str, str]],
        body: Iterable[bytes | memoryview],
        size: int,
    ) -> UpstreamResponse:
        """Send ``POST url`` with ``headers`` (lower-case names, ``content-length`` among them
        and equal to ``size``) and ``body`` (chunks totalling ``size`` bytes); return the
        response once its head is in. Raises :class:`UpstreamFault`. The caller must
        ``await response.aclose()`` (or cancel) in every case."""
        if self.closed:
            raise UpstreamFault("upstream_connect", "pool closed")
        origin, target = _target(self._origins, url)
        data = _request_head(origin, target, headers)
        conn, slots = await self._acquire(origin)
        response = UpstreamResponse(self, slots, conn)
        try:
            writer = conn.writer
            chunks = iter(body)
            if size <= COALESCE_BYTES:
                writer.write(b"".join((data, *chunks)))
            else:
                writer.write(data)
                for chunk in chunks:  # bounded memory: wait for each to leave
                    writer.write(chunk)
                    await writer.drain()
            await writer.drain()
            await response._read_head()
        except BaseException as exc:
            response._discard()
            if isinstance(exc, (OSError, EOFError, asyncio.IncompleteReadError)):
                raise UpstreamFault("upstream_reset", type(exc).__name__) from exc
            raise
        return response

    async def _acquire(self, origin: _Origin) -> tuple[_Connection, _Slots]:
        key = (origin.host, origin.port, origin.tls)
        slots = self._slots.get(key)
        if slots is None:
            slots = self._slots[key] = _Slots()
        deadline = None
        while True:
            if self.closed:
                raise UpstreamFault("upstream_connect", "pool closed")
            now = time.monotonic()
            while slots.idle:
                conn = slots.idle.pop()  # the most recent: least likely to have expired
                if conn.usable(now, self.keepalive_expiry):
                    return conn, slots
                conn.abort()
                self._conns.discard(conn)
                slots.open -= 1
            if self.max_connections is None or slots.open < self.max_connections:
                slots.open += 1
                try:
                    return await self._connect(origin), slots
                except BaseException:
                    slots.open -= 1
                    self._wake(slots)
                    raise
            if deadline is None and self.pool_timeout is not None:
                deadline = now + self.pool_timeout
            waiter = asyncio.get_running_loop().create_future()
            slots.waiters.append(waiter)
            try:
                await asyncio.wait_for(waiter, None if deadline is None else deadline - now)
            except asyncio.TimeoutError:
                raise UpstreamFault("pool_exhausted") from None
            except BaseException:
                if waiter.done() and not waiter.cancelled():
                    self._wake(slots)  # woken, then cancelled: pass the free slot on
                raise
            finally:
                if waiter in slots.waiters:
                    slots.waiters.remove(waiter)

    async def _connect(self, origin: _Origin) -> _Connection:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(
                    origin.host,
                    origin.port,
                    ssl=self.ssl_context if origin.tls else None,
                    server_hostname=origin.host if origin.tls else None,
                    limit=MAX_HEAD_BYTES,
                ),
                self.connect_timeout,
            )
        except asyncio.TimeoutError:
            raise UpstreamFault("upstream_timeout", "connect") from None
        except (OSError, ssl.SSLError) as exc:
            raise UpstreamFault("upstream_connect", type(exc).__name__) from exc
        conn = _Connection(reader, writer)
        self._conns.add(conn)
        return conn

    def _release(self, slots: _Slots, conn: _Connection, reusable: bool) -> None:
        if (
            reusable
            and not self.closed
            and (self.max_keepalive is None or len(slots.idle) < self.max_keepalive)
        ):
            conn.idle_since = time.monotonic()
            slots.idle.append(conn)
        else:
            conn.abort()
            self._conns.discard(conn)
            slots.open -= 1
        self._wake(slots)

    @staticmethod
    def _wake(slots: _Slots) -> None:
        while slots.waiters:
            waiter = slots.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def aclose(self) -> None:
        """Close every connection (one still carrying a request breaks: its upload fails
        as a reset) and wake the waiting requests (they fail). Idempotent."""
        self.closed = True
        for conn in self._conns:
            conn.abort()
        self._conns.clear()
        for slots in self._slots.values():
            while slots.idle:
                slots.idle.pop()
                slots.open -= 1
            for waiter in slots.waiters:
                if not waiter.done():
                    waiter.set_result(None)


class Head:
    """A parsed response head: ``status``, ``headers`` (lower-case names, raw values, in
    order), its body framing (``chunked``, else ``length``, else until the connection ends)
    and whether the connection may carry another request afterwards."""

    __slots__ = ("chunked", "headers", "length", "reusable", "status")

    def __init__(
        self,
        status: int,
        headers: list[tuple[str, str]],
        chunked: bool,
        length: int | None,
        reusable: bool,
    ) -> None:
        self.status = status
        self.headers = headers
        self.chunked = chunked
        self.length = length
        self.reusable = reusable


def parse_head(raw: bytes) -> Head | None:
    """Parse a response head (status line to the blank line, ``raw`` ends with CRLF CRLF);
    None for an interim 1xx answer (the real one follows). Strict (RFC 9112): anything
    ambiguous raises :class:`UpstreamFault` ``upstream_reset``, and the caller drops the
    connection: both ``Content-Length`` and ``Transfer-Encoding`` (§6.1: a smuggling sign),
    differing lengths, a transfer coding other than ``chunked``, an obsolete line fold (§5.2),
    a header line without a colon or with blanks before it, a 101."""
    lines = raw[:-4].split(b"\r\n")
    version, _, rest = lines[0].partition(b" ")
    code = rest[:3]
    if (
        version not in (b"HTTP/1.1", b"HTTP/1.0")
        or len(code) != 3
        or not code.isdigit()
        or rest[3:4] not in (b"", b" ")
    ):
        raise UpstreamFault("upstream_reset", "bad status line")
    status = int(code)
    if status == 101:
        raise UpstreamFault("upstream_reset", "unexpected 101")
    if 100 <= status < 200:
        return None  # 100 Continue, 103 Early Hints
    headers: list[tuple[str, str]] = []
    lengths: set[bytes] = set()
    codings: list[bytes] = []
    close = version == b"HTTP/1.0"
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not name or name != name.strip() or line[:1] in (b" ", b"\t"):
            raise UpstreamFault("upstream_reset", "bad header line")  # incl. obs-fold
        lname = name.lower()
        value = value.strip(b" \t")
        if lname == b"content-length":
            lengths.update(v.strip() for v in value.split(b","))
        elif lname == b"transfer-encoding":
            codings.extend(v.strip().lower() for v in value.split(b","))
        elif lname == b"connection":
            tokens = {v.strip().lower() for v in value.split(b",")}
            close = b"close" in tokens or (close and b"keep-alive" not in tokens)
        headers.append((lname.decode("latin-1"), value.decode("latin-1")))
    length: int | None = None
    if codings:
        if lengths or codings != [b"chunked"]:
            raise UpstreamFault("upstream_reset", "bad transfer-encoding")
    elif lengths:
        if len(lengths) != 1 or not all(v.isdigit() for v in lengths):
            raise UpstreamFault("upstream_reset", "bad content-length")
        length = int(next(iter(lengths)))
    elif status in (204, 304):
        length = 0
    else:
        close = True  # delimited by the connection's end: never reusable
    return Head(status, headers, bool(codings), length, not close)


class UpstreamResponse:
    """An upstream response whose head is in: ``status``, ``headers`` (lower-case names, raw
    values, in order); :meth:`iter_raw` streams the body with its transfer coding removed and
    its content coding untouched. :meth:`aclose` gives the connection back (kept alive only if
    the body was read to its end and the framing allows it)."""

    __slots__ = (
        "_chunk_left",
        "_conn",
        "_left",
        "_pool",
        "_reusable",
        "_slots",
        "done",
        "headers",
        "status",
    )

    def __init__(self, pool: UpstreamPool, slots: _Slots, conn: _Connection) -> None:
        self._pool = pool
        self._slots = slots
        self._conn: _Connection | None = conn
        self.status = 0
        self.headers: list[tuple[str, str]] = []
        self._left: int | None = None  # Content-Length left; None: chunked or until close
        self._chunk_left = -1  # chunked: -1 not chunked, else bytes left in the current chunk
        self._reusable = False
        self.done = False

    async def _read_head(self) -> None:
        assert self._conn is not None
        reader = self._conn.reader
        while True:
            try:
                raw = await reader.readuntil(b"\r\n\r\n")
            except asyncio.LimitOverrunError:
                raise UpstreamFault("upstream_reset", "response head too large") from None
            except asyncio.IncompleteReadError:
                raise UpstreamFault("upstream_reset", "closed before the response") from None
            head = parse_head(raw)
            if head is not None:
                break
        self._set_head(head)

    def _set_head(self, head: Head) -> None:
        self.status, self.headers = head.status, head.headers
        self._left = head.length
        self._chunk_left = 0 if head.chunked else -1
        self._reusable = head.reusable

    async def iter_raw(self) -> AsyncIterator[bytes]:
        """The body, transfer coding removed; :class:`UpstreamFault` if it breaks."""
        conn = self._conn
        if conn is None:
            return
        reader = conn.reader
        try:
            if self._chunk_left >= 0:
                while True:
                    size = _chunk_size(await reader.readuntil(b"\r\n"))
                    if size == 0:
                        while (await reader.readuntil(b"\r\n")) != b"\r\n":
                            pass  # trailers: dropped
                        break
                    while size:
                        data = await reader.read(min(size, READ_BYTES))
                        if not data:
                            raise UpstreamFault("upstream_reset", "closed inside a chunk")
                        size -= len(data)
                        yield data
                    if await reader.readexactly(2) != b"\r\n":
                        raise UpstreamFault("upstream_reset", "bad chunk end")
            elif self._left is not None:
                left = self._left
                while left:
                    data = await reader.read(min(left, READ_BYTES))
                    if not data:
                        raise UpstreamFault("upstream_reset", "closed before content-length")
                    left -= len(data)
                    yield data
            else:
                while data := await reader.read(READ_BYTES):
                    yield data
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
            raise UpstreamFault("upstream_reset", type(exc).__name__) from exc
        self.done = True

    def _discard(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            self._pool._release(self._slots, conn, False)

    async def aclose(self) -> None:
        """Give the connection back: to the pool if the body was read whole on a reusable
        connection, else closed (an unread body is never drained). Idempotent."""
        conn, self._conn = self._conn, None
        if conn is not None:
            self._pool._release(self._slots, conn, self.done and self._reusable)


# --- the blocking twin (WSGI, Django): same requests, same rules, sockets and a lock ------------


class _SyncConnection:
    """A blocking connection with its own read buffer (so an idle one is known to hold no
    unread bytes)."""

    __slots__ = ("buf", "idle_since", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()
        self.idle_since = 0.0

    def usable(self, now: float, expiry: float) -> bool:
        if now - self.idle_since > expiry or self.buf or self.sock.fileno() < 0:
            return False
        return not _readable(self.sock.fileno())

    def abort(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()

    def _fill(self) -> bool:
        data = self.sock.recv(READ_BYTES)
        self.buf += data
        return bool(data)

    def readuntil(self, sep: bytes, limit: int) -> bytes:
        start = 0
        while True:
            end = self.buf.find(sep, start)
            if end >= 0:
                end += len(sep)
                out = bytes(self.buf[:end])
                del self.buf[:end]
                return out
            if len(self.buf) > limit:
                raise UpstreamFault("upstream_reset", "response head too large")
            start = max(0, len(self.buf) - len(sep) + 1)
            if not self._fill():
                raise UpstreamFault("upstream_reset", "closed before the end of a line")

    def read(self, n: int) -> bytes:
        """Up to ``n`` bytes, ``b""`` at the connection's end."""
        if not self.buf:
            return self.sock.recv(min(n, READ_BYTES))
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def readexactly(self, n: int) -> bytes:
        while len(self.buf) < n:
            if not self._fill():
                raise UpstreamFault("upstream_reset", "closed early")
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out


class SyncUpstreamPool:
    """The blocking twin of :class:`UpstreamPool`, for ``UploadProxy`` (WSGI, Django):
    thread-safe, the same limits and rules; per-call timeouts, since a sync upload bounds
    each operation by what is left of its budget."""

    def __init__(
        self,
        *,
        max_connections: int | None = 100,
        max_keepalive: int | None = 20,
        keepalive_expiry: float | None = 5.0,
    ) -> None:
        self.max_connections = max_connections
        self.max_keepalive = max_keepalive
        self.keepalive_expiry = keepalive_expiry if keepalive_expiry is not None else 1e18
        self._ssl: ssl.SSLContext | None = None
        self._cond = threading.Condition()
        self._origins: dict[str, tuple[_Origin, str]] = {}
        self._idle: dict[tuple[str, int, bool], list[_SyncConnection]] = {}
        self._open: dict[tuple[str, int, bool], int] = {}
        self._waiting = 0
        self._conns: set[_SyncConnection] = set()  # every open connection (see UpstreamPool)
        self.closed = False

    @property
    def ssl_context(self) -> ssl.SSLContext:
        """The TLS context, made on first use: verified, host names checked, HTTP/1.1."""
        with self._cond:
            if self._ssl is None:
                self._ssl = _tls_context()
            return self._ssl

    @property
    def busy(self) -> int:
        """Connections carrying a request, plus requests waiting for one (0: nothing leaked)."""
        with self._cond:
            return self._waiting + sum(
                n - len(self._idle.get(key, ())) for key, n in self._open.items()
            )

    def post(
        self,
        url: str,
        headers: Iterable[tuple[str, str]],
        body: Iterable[bytes],
        size: int,
        *,
        timeout: float | None,
        connect_timeout: float | None,
        pool_timeout: float | None,
    ) -> SyncUpstreamResponse:
        """As :meth:`UpstreamPool.post`; ``timeout`` bounds each send and receive. The caller
        must ``close()`` the response in every case."""
        if self.closed:
            raise UpstreamFault("upstream_connect", "pool closed")
        origin, target = _target(self._origins, url)
        data = _request_head(origin, target, headers)
        key = (origin.host, origin.port, origin.tls)
        conn = self._acquire(origin, key, connect_timeout, pool_timeout)
        response = SyncUpstreamResponse(self, key, conn)
        try:
            conn.sock.settimeout(timeout)
            if size <= COALESCE_BYTES:
                conn.sock.sendall(b"".join((data, *body)))
            else:
                conn.sock.sendall(data)
                for chunk in body:
                    conn.sock.sendall(chunk)
            response._read_head()
        except BaseException as exc:
            response.close()
            if isinstance(exc, TimeoutError):
                raise UpstreamFault("upstream_timeout", "read") from exc
            if isinstance(exc, OSError):
                raise UpstreamFault("upstream_reset", type(exc).__name__) from exc
            raise
        return response

    def _acquire(
        self,
        origin: _Origin,
        key: tuple[str, int, bool],
        connect_timeout: float | None,
        pool_timeout: float | None,
    ) -> _SyncConnection:
        deadline = None if pool_timeout is None else time.monotonic() + pool_timeout
        with self._cond:
            while True:
                if self.closed:
                    raise UpstreamFault("upstream_connect", "pool closed")
                now = time.monotonic()
                idle = self._idle.setdefault(key, [])
                while idle:
                    conn = idle.pop()
                    if conn.usable(now, self.keepalive_expiry):
                        return conn
                    conn.abort()
                    self._conns.discard(conn)
                    self._open[key] -= 1
                opened = self._open.get(key, 0)
                if self.max_connections is None or opened < self.max_connections:
                    self._open[key] = opened + 1
                    break
                left = None if deadline is None else deadline - now
                if left is not None and left <= 0:
                    raise UpstreamFault("pool_exhausted")
                self._waiting += 1
                try:
                    self._cond.wait(left)
                finally:
                    self._waiting -= 1
        try:
            conn = self._connect(origin, connect_timeout)
        except BaseException:
            with self._cond:
                self._open[key] -= 1
                self._cond.notify()
            raise
        with self._cond:
            self._conns.add(conn)  # closed meanwhile: close() cannot see it, so check here
            if self._shut():
                self._conns.discard(conn)
                self._open[key] -= 1
                conn.abort()
                raise UpstreamFault("upstream_connect", "pool closed")
        return conn

    def _shut(self) -> bool:
        return self.closed

    def _connect(self, origin: _Origin, timeout: float | None) -> _SyncConnection:
        try:
            sock = socket.create_connection((origin.host, origin.port), timeout=timeout)
        except TimeoutError:
            raise UpstreamFault("upstream_timeout", "connect") from None
        except OSError as exc:
            raise UpstreamFault("upstream_connect", type(exc).__name__) from exc
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if origin.tls:
                sock = self.ssl_context.wrap_socket(sock, server_hostname=origin.host)
        except TimeoutError:
            sock.close()
            raise UpstreamFault("upstream_timeout", "TLS handshake") from None
        except OSError as exc:
            sock.close()
            raise UpstreamFault("upstream_connect", type(exc).__name__) from exc
        return _SyncConnection(sock)

    def _release(self, key: tuple[str, int, bool], conn: _SyncConnection, reusable: bool) -> None:
        with self._cond:
            idle = self._idle.setdefault(key, [])
            if (
                reusable
                and not self.closed
                and (self.max_keepalive is None or len(idle) < self.max_keepalive)
            ):
                conn.idle_since = time.monotonic()
                idle.append(conn)
            else:
                conn.abort()
                self._conns.discard(conn)
                self._open[key] -= 1
            self._cond.notify()

    def close(self) -> None:
        """Close every connection (one still carrying a request breaks) and wake the waiting
        requests (they fail). Idempotent."""
        with self._cond:
            self.closed = True
            for conn in self._conns:
                conn.abort()
            self._conns.clear()
            for key, idle in self._idle.items():
                self._open[key] -= len(idle)
                idle.clear()
            self._cond.notify_all()


class SyncUpstreamResponse:
    """The blocking twin of :class:`UpstreamResponse` (``iter_raw()``, ``close()``)."""

    __slots__ = ("_conn", "_head", "_key", "_pool", "done", "headers", "status")

    def __init__(
        self, pool: SyncUpstreamPool, key: tuple[str, int, bool], conn: _SyncConnection
    ) -> None:
        self._pool = pool
        self._key = key
        self._conn: _SyncConnection | None = conn
        self._head: Head | None = None
        self.status = 0
        self.headers: list[tuple[str, str]] = []
        self.done = False

    def _read_head(self) -> None:
        assert self._conn is not None
        while True:
            head = parse_head(self._conn.readuntil(b"\r\n\r\n", MAX_HEAD_BYTES))
            if head is not None:
                break
        self._head = head
        self.status, self.headers = head.status, head.headers

    def iter_raw(self) -> Iterator[bytes]:
        """The body, transfer coding removed; :class:`UpstreamFault` if it breaks."""
        conn, head = self._conn, self._head
        if conn is None or head is None:
            return
        try:
            if head.chunked:
                while True:
                    line = conn.readuntil(b"\r\n", MAX_HEAD_BYTES)
                    size = _chunk_size(line)
                    if size == 0:
                        while conn.readuntil(b"\r\n", MAX_HEAD_BYTES) != b"\r\n":
                            pass  # trailers: dropped
                        break
                    while size:
                        data = conn.read(min(size, READ_BYTES))
                        if not data:
                            raise UpstreamFault("upstream_reset", "closed inside a chunk")
                        size -= len(data)
                        yield data
                    if conn.readexactly(2) != b"\r\n":
                        raise UpstreamFault("upstream_reset", "bad chunk end")
            elif head.length is not None:
                left = head.length
                while left:
                    data = conn.read(min(left, READ_BYTES))
                    if not data:
                        raise UpstreamFault("upstream_reset", "closed before content-length")
                    left -= len(data)
                    yield data
            else:
                while data := conn.read(READ_BYTES):
                    yield data
        except TimeoutError as exc:
            raise UpstreamFault("upstream_timeout", "read") from exc
        except OSError as exc:
            raise UpstreamFault("upstream_reset", type(exc).__name__) from exc
        self.done = True

    def close(self) -> None:
        """Give the connection back (kept alive only after a whole body on a reusable
        connection) or close it. Idempotent."""
        conn, self._conn = self._conn, None
        if conn is not None:
            reusable = self.done and self._head is not None and self._head.reusable
            self._pool._release(self._key, conn, reusable)
