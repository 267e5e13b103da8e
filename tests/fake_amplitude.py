"""A fake Amplitude for proxy tests and benchmarks: a real HTTP/1.1 server on 127.0.0.1.

It listens on a random port in background threads (``ThreadingHTTPServer`` with keep-alive),
serves Amplitude's paths for both zones (US at the root, EU under ``/eu``, as
``Upstreams.at(fake.url)`` expects), records every request, and answers each route as told::

    with FakeAmplitude() as fake:                  # or the ``fake_amplitude`` pytest fixture
        fake.script("track", Reply.error(500), Reply.ok())   # 500 once, then ok
        fake.set_default("config", Reply.ok(body=b'{"configs": {}}'))
        proxy = AsyncUploadProxy(config, upstreams=fake.upstreams())
        ...
        [req] = fake.requests_for("track")
        req.sha256, req.header("content-encoding"), req.complete, req.disconnected_at

Replies (see :class:`Reply`): ok, slow, error, rate-limited (429 + Retry-After), 413 with or
without the WAF wording, 200 + ``X-Session-Replay-Event-Skipped``, redirect, reset during the
upload, reset during the response, drip-fed body, hang (never answer, bounded), and "answer,
then silently close the kept-alive connection". Bodies are hashed as they arrive and kept only
up to ``keep_bodies_up_to`` bytes, so a 10 MB upload costs the fake no more than 64 KiB.

Everything stops at ``close()`` (fixture teardown): hanging handlers are released and every
open connection is shut down, then the handler threads are joined.

:class:`SlowClient` is the other side of the kit: a raw-socket upload that declares a large
body and sends it a byte at a time (a slow-loris), to point at a real server in front of the
proxy (uvicorn, werkzeug, gunicorn).
"""

from __future__ import annotations

import contextlib
import hashlib
import select
import socket
import socketserver
import struct
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from replay_middleware.proxy import PAYLOAD_TOO_LARGE_TEXT, Upstreams

__all__ = ["FakeAmplitude", "Recorded", "Reply", "SlowClient", "fake_amplitude"]

_JSON = (("Content-Type", "application/json"),)
_READ = 64 * 1024

#: What Amplitude's config endpoint answers for a project recording 50 % of sessions.
DEFAULT_CONFIG = (
    b'{"configs":{"sessionReplay":{"sr_sampling_config":'
    b'{"sample_rate":0.5,"capture_enabled":true}}}}'
)


@dataclass(frozen=True)
class Reply:
    """How the fake answers one request.

    ``action``: ``respond``; ``hang`` (read the request, never answer, until the client goes
    away or the fake closes); ``reset_upload`` (read ``after_bytes`` of the body, then reset
    the connection); ``reset_response`` (send the head and ``after_bytes`` of the body, then
    reset); ``drip`` (send the head, then the body one byte every ``interval``);
    ``close_after`` (answer as keep-alive, then close the connection without notice).
    ``delay`` is waited before the response head.
    """

    status: int = 200
    body: bytes = b'{"code":200}'
    headers: tuple[tuple[str, str], ...] = _JSON
    delay: float = 0.0
    action: str = "respond"
    after_bytes: int = 0
    interval: float = 0.2

    @classmethod
    def ok(
        cls, body: bytes = b'{"code":200}', headers: tuple[tuple[str, str], ...] = _JSON
    ) -> Reply:
        return cls(body=body, headers=headers)

    @classmethod
    def config(cls, body: bytes = DEFAULT_CONFIG) -> Reply:
        return cls(body=body)

    @classmethod
    def slow(cls, delay: float, body: bytes = b'{"code":200}') -> Reply:
        return cls(body=body, delay=delay)

    @classmethod
    def error(cls, status: int = 500) -> Reply:
        return cls(status=status, body=b'{"error":"internal"}')

    @classmethod
    def rate_limited(cls, retry_after: str = "30") -> Reply:
        return cls(status=429, body=b"Too Many Requests", headers=(("Retry-After", retry_after),))

    @classmethod
    def too_large(cls, waf: bool = True) -> Reply:
        text = PAYLOAD_TOO_LARGE_TEXT if waf else "Request rejected"
        return cls(status=413, body=text.encode(), headers=(("Content-Type", "text/plain"),))

    @classmethod
    def skipped(cls, code: str = "429") -> Reply:
        return cls(headers=(*_JSON, ("X-Session-Replay-Event-Skipped", code)))

    @classmethod
    def redirect(cls, location: str, status: int = 302) -> Reply:
        return cls(status=status, body=b"", headers=(("Location", location),))

    @classmethod
    def reset_upload(cls, after_bytes: int = 1024) -> Reply:
        return cls(action="reset_upload", after_bytes=after_bytes)

    @classmethod
    def reset_response(cls, after_bytes: int = 10) -> Reply:
        return cls(action="reset_response", after_bytes=after_bytes, body=b"x" * 1000)

    @classmethod
    def drip(cls, interval: float = 0.2, body: bytes = b'{"code":200}') -> Reply:
        return cls(action="drip", interval=interval, body=body)

    @classmethod
    def hang(cls) -> Reply:
        return cls(action="hang")

    @classmethod
    def close_after(cls) -> Reply:
        return cls(action="close_after")


@dataclass
class Recorded:
    """One request as the fake saw it. ``complete``: the whole body arrived;
    ``disconnected_at``: the client closed the connection before our answer was complete."""

    method: str
    target: str
    path: str
    query: str
    headers: list[tuple[str, str]]
    arrived_at: float
    route: str
    zone: str
    body: bytes | None = b""
    size: int = 0
    sha256: str = ""
    complete: bool = False
    disconnected_at: float | None = None
    _hash: Any = field(default_factory=hashlib.sha256, repr=False)

    def header(self, name: str) -> str | None:
        name = name.lower()
        return next((v for k, v in self.headers if k.lower() == name), None)

    def header_names(self) -> set[str]:
        return {k.lower() for k, _ in self.headers}


def _route(path: str) -> tuple[str, str]:
    zone = "EU" if path.startswith("/eu/") else "US"
    if path.endswith("/sessions/v2/track"):
        return "track", zone
    if "/config/" in path:
        return "config", zone
    return "other", zone


class _Server(ThreadingHTTPServer):
    daemon_threads = False
    block_on_close = True  # server_close() joins the handler threads
    # socketserver's default backlog of 5 resets bursts of new connections (32 clients).
    request_queue_size = 128
    fake: FakeAmplitude

    def get_request(self) -> tuple[socket.socket, Any]:
        # The handler writes a reply's head and body in two send()s; with Nagle on, the body
        # waits for the client's delayed ACK (~40 ms on Linux). Real servers set TCP_NODELAY.
        conn, addr = super().get_request()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn, addr

    def server_bind(self) -> None:
        # HTTPServer.server_bind calls socket.getfqdn(), which can wait on DNS.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)

    def shutdown_request(self, request: Any) -> None:
        if request in self.fake._resets:
            # A reset, not a FIN: close with SO_LINGER 0 and no shutdown(SHUT_WR).
            self.fake._resets.discard(request)
            self.close_request(request)
            return
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # resets and aborted clients are the point of this server


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 15  # an idle keep-alive connection ends after this
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.fake._track_conn(self.connection, True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.fake._track_conn(self.connection, False)

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._handle()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = do_GET

    # -- request ---------------------------------------------------------------------------

    def _handle(self) -> None:
        fake = self.server.fake
        path, _, query = self.path.partition("?")
        route, zone = _route(path)
        rec = Recorded(
            method=self.command,
            target=self.path,
            path=path,
            query=query,
            headers=list(self.headers.items()),
            arrived_at=time.monotonic(),
            route=route,
            zone=zone,
        )
        fake._record(rec)
        reply = fake._next_reply(route)
        try:
            if not self._read_body(rec, reply):
                return
            rec.complete = True
            rec.sha256 = rec._hash.hexdigest()
            if reply.delay and not self._wait(reply.delay, rec):
                return
            getattr(self, f"_act_{reply.action}")(rec, reply)
        except OSError:
            self.close_connection = True
            if rec.disconnected_at is None:
                rec.disconnected_at = time.monotonic()

    def _feed(self, rec: Recorded, data: bytes) -> None:
        rec.size += len(data)
        rec._hash.update(data)
        if rec.body is not None:
            if rec.size <= self.server.fake.keep_bodies_up_to:
                rec.body += data
            else:
                rec.body = None

    def _gone(self, rec: Recorded) -> bool:
        rec.disconnected_at = time.monotonic()
        self.close_connection = True
        return False

    def _read_body(self, rec: Recorded, reply: Reply) -> bool:
        limit = reply.after_bytes if reply.action == "reset_upload" else None
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            while True:
                line = self.rfile.readline(1024)
                if not line:
                    return self._gone(rec)
                size = int(line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                        pass
                    return True
                while size:
                    data = self.rfile.read(min(size, _READ))
                    if not data:
                        return self._gone(rec)
                    size -= len(data)
                    self._feed(rec, data)
                    if limit is not None and rec.size >= limit:
                        return self._reset()
                self.rfile.readline(16)
        left = int(self.headers.get("Content-Length") or 0)
        while left:
            data = self.rfile.read(min(left, _READ))
            if not data:
                return self._gone(rec)
            left -= len(data)
            self._feed(rec, data)
            if limit is not None and rec.size >= limit:
                return self._reset()
        return True

    # -- waiting ---------------------------------------------------------------------------

    def _wait(self, seconds: float, rec: Recorded) -> bool:
        """Wait, noticing a client that goes away; False if it did or the fake is closing."""
        fake = self.server.fake
        deadline = time.monotonic() + seconds
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return True
            if fake.stopping.is_set():
                self.close_connection = True
                return False
            readable, _, _ = select.select([self.connection], [], [], min(left, 0.02))
            if readable:
                try:
                    peek = self.connection.recv(1, socket.MSG_PEEK)
                except OSError:
                    peek = b""
                if not peek:
                    return self._gone(rec)
                time.sleep(0.02)  # a pipelined request: not ours to read yet

    def _reset(self) -> bool:
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.server.fake._resets.add(self.connection)
        self.close_connection = True
        return False

    # -- answers ---------------------------------------------------------------------------

    def _head(self, reply: Reply, length: int) -> None:
        self.send_response(reply.status)
        names = set()
        for name, value in reply.headers:
            names.add(name.lower())
            self.send_header(name, value)
        if "content-length" not in names:
            self.send_header("Content-Length", str(length))
        self.end_headers()

    def _act_respond(self, rec: Recorded, reply: Reply) -> None:
        self._head(reply, len(reply.body))
        if self.command != "HEAD":
            self.wfile.write(reply.body)

    def _act_close_after(self, rec: Recorded, reply: Reply) -> None:
        self._act_respond(rec, reply)
        self.close_connection = True

    def _act_hang(self, rec: Recorded, reply: Reply) -> None:
        self._wait(self.server.fake.max_hang, rec)
        self.close_connection = True

    def _act_reset_response(self, rec: Recorded, reply: Reply) -> None:
        self._head(reply, len(reply.body))
        self.wfile.write(reply.body[: reply.after_bytes])
        self.wfile.flush()
        time.sleep(0.05)
        self._reset()

    def _act_drip(self, rec: Recorded, reply: Reply) -> None:
        self._head(reply, len(reply.body))
        for i in range(len(reply.body)):
            self.wfile.write(reply.body[i : i + 1])
            self.wfile.flush()
            if not self._wait(reply.interval, rec):
                return

    def _act_reset_upload(self, rec: Recorded, reply: Reply) -> None:  # pragma: no cover
        self._reset()  # only reached when the body was shorter than `after_bytes`


class FakeAmplitude:
    """The fake server. Thread-safe; see the module docstring."""

    def __init__(self, *, keep_bodies_up_to: int = 1 << 20, max_hang: float = 20.0) -> None:
        self.keep_bodies_up_to = keep_bodies_up_to
        self.max_hang = max_hang
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._queues: dict[str, deque[Reply]] = {r: deque() for r in ("track", "config", "other")}
        self._defaults: dict[str, Reply] = {
            "track": Reply.ok(),
            "config": Reply.config(),
            "other": Reply(status=404, body=b"not found"),
        }
        self._requests: list[Recorded] = []
        self._conns: set[socket.socket] = set()
        self._resets: set[socket.socket] = set()
        self.connections_opened = 0
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.fake = self
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self._thread.start()

    # -- configuration ----------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_port}"

    @property
    def port(self) -> int:
        return self._server.server_port

    def upstreams(self) -> Upstreams:
        """Upstreams pointing at this fake: US at the root, EU under ``/eu``."""
        return Upstreams.at(self.url)

    def script(self, route: str, *replies: Reply) -> None:
        """Queue replies for ``route`` ("track", "config", "other"), used in order; when the
        queue is empty the route's default answers."""
        with self._lock:
            self._queues[route].extend(replies)

    def set_default(self, route: str, reply: Reply) -> None:
        with self._lock:
            self._defaults[route] = reply

    # -- observation ------------------------------------------------------------------------

    @property
    def requests(self) -> list[Recorded]:
        with self._lock:
            return list(self._requests)

    def requests_for(self, route: str) -> list[Recorded]:
        return [r for r in self.requests if r.route == route]

    @property
    def open_connections(self) -> int:
        with self._lock:
            return len(self._conns)

    def wait_until(self, predicate: Callable[[], bool], timeout: float = 3.0) -> bool:
        """Poll ``predicate`` (from a test thread) until true or ``timeout``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(0.01)
        return predicate()

    # -- internals --------------------------------------------------------------------------

    def _record(self, rec: Recorded) -> None:
        with self._lock:
            self._requests.append(rec)

    def _next_reply(self, route: str) -> Reply:
        with self._lock:
            queue = self._queues[route]
            return queue.popleft() if queue else self._defaults[route]

    def _track_conn(self, conn: socket.socket, opened: bool) -> None:
        with self._lock:
            if opened:
                self._conns.add(conn)
                self.connections_opened += 1
            else:
                self._conns.discard(conn)

    # -- lifecycle --------------------------------------------------------------------------

    def close(self) -> None:
        self.stopping.set()
        self._server.shutdown()
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        self._server.server_close()  # joins the handler threads
        self._thread.join(timeout=5)

    def __enter__(self) -> FakeAmplitude:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


@pytest.fixture
def fake_amplitude() -> Iterator[FakeAmplitude]:
    """A running :class:`FakeAmplitude`, stopped at teardown."""
    with FakeAmplitude() as fake:
        yield fake


class SlowClient:
    """A slow-loris upload on a raw socket: the request head (a valid key, a large
    ``Content-Length``), then ``{`` (so the body passes the proxy's sniff), then one byte every
    ``interval`` seconds from a thread, at most ``max_bytes`` of them (bounded), until the
    server answers or closes. ``status()`` waits for the answer's status line."""

    def __init__(
        self,
        port: int,
        target: str,
        headers: dict[str, str],
        *,
        declared: int = 100_000,
        interval: float = 0.1,
        max_bytes: int = 200,
    ) -> None:
        lines = [f"POST {target} HTTP/1.1", "Host: 127.0.0.1", f"Content-Length: {declared}"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=15)
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + b"{")
        self.sent = 1
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._drip, args=(interval, max_bytes), daemon=True)
        self._thread.start()

    def _drip(self, interval: float, max_bytes: int) -> None:
        for _ in range(max_bytes):
            if self._stop.wait(interval):
                return
            try:
                self.sock.sendall(b" ")
            except OSError:
                return
            self.sent += 1

    def status(self) -> int | None:
        """The status of the server's answer (None: closed without one)."""
        data = b""
        while b"\r\n" not in data:
            try:
                chunk = self.sock.recv(4096)
            except OSError:
                break
            if not chunk:
                break
            data += chunk
        self._stop.set()
        line = data.split(b"\r\n", 1)[0].split()
        return int(line[1]) if len(line) >= 2 and line[1].isdigit() else None

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()

    def __enter__(self) -> SlowClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
