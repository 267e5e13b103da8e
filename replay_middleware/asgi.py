"""ReplayMiddleware: the pure ASGI adapter (Starlette, FastAPI, Django under ASGI, Quart).

Translates ASGI scopes and messages into engine calls and back (STYLE 3, 4): no business rule
lives here. ``app.add_middleware(ReplayMiddleware, config=ReplayConfig(...))``; the decision
is on ``request.state.replay`` and in ``current_replay()``.

Protocol notes (H7): non-http scopes pass straight through; the response start is held only
while the injector scans the head; ``http.response.pathsend``/``zerocopysend`` bodies are
never rewritten; trailers and unknown messages pass through after anything held; the app's
exceptions propagate unchanged; any exception of ours sends the app's original response
(H9, fail open).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread

from .config import ReplayConfig
from .context import reset_current, set_current
from .decision import ReplayContext
from .engine import HttpResponse, ReplayEngine, RequestState, encode_headers, many_workers
from .proxy import (
    DEFAULT_UPSTREAMS,
    ENDPOINT_UNAVAILABLE,
    RemoteSampling,
    Upstreams,
    sdk_unavailable,
)
from .request import RequestInfo
from .rewrite import ResponseRewriter
from .sdk import AsyncSdkProvider, SdkUnavailable

if TYPE_CHECKING:
    from .upstream import AsyncUploadProxy

__all__ = ["ReplayMiddleware"]

logger = logging.getLogger("replay_middleware")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: Scope key set by the outermost copy of the middleware; inner copies step aside (H8).
SCOPE_KEY = "replay_middleware"


def request_info(scope: Scope) -> RequestInfo:
    """Build the framework-neutral request view from an http scope (one pass over the
    headers; the same result as ``RequestInfo.from_pairs`` of the decoded pairs)."""
    return _request_info(_request_entries(scope))


# What request_info() reads from a scope, in _request_info's order.
_Entries = tuple[Any, Any, Any, Any, Any, Any]


def _request_entries(scope: Scope) -> _Entries:
    get = scope.get
    return (
        get("method", "GET"),
        get("path", "/"),
        get("headers"),
        get("query_string"),
        get("scheme", "http"),
        get("client"),
    )


def _request_info(entries: _Entries) -> RequestInfo:
    method, path, raw_headers, query_string, scheme, client = entries
    headers: dict[str, str] = {}
    for raw_name, raw_value in raw_headers or ():
        name = raw_name.decode("latin-1").lower()
        value = raw_value.decode("latin-1")
        if name in headers:
            value = headers[name] + ("; " if name == "cookie" else ", ") + value
        headers[name] = value
    return RequestInfo.from_lowered(
        method,
        path,
        headers,
        (query_string or b"").decode("latin-1"),
        scheme,
        client[0] if client else None,
    )


class ReplayMiddleware:
    """Adds Amplitude Session Replay to every HTML page of an ASGI app."""

    def __init__(
        self,
        app: ASGIApp,
        config: ReplayConfig | None = None,
        *,
        upstreams: Upstreams | None = None,
    ) -> None:
        """``upstreams`` replaces Amplitude's endpoints (tests and benchmarks point it at a
        local fake); production code leaves it alone."""
        self.app = app
        self.config = config or ReplayConfig()
        self.engine = ReplayEngine(self.config)
        #: ASGI has no ``wsgi.multiprocess``: WEB_CONCURRENCY is the only sign of workers.
        self._many_workers = many_workers(os.environ)
        self.sdk = AsyncSdkProvider(self.config.sdk_version)
        self._prefix_slash = self.engine.prefix + "/"
        #: With an API key: the upload proxy, which also keeps the project's remote config
        #: fresh in the background for the server-side decision (S2), in both upload modes.
        self.upstream: AsyncUploadProxy | None = None
        if not self.config.local_mode:
            from .upstream import AsyncUploadProxy

            self.upstream = AsyncUploadProxy(self.config, upstreams=upstreams or DEFAULT_UPSTREAMS)
        self._proxying = self.upstream is not None and self.config.upload_mode == "proxy"
        self._sampling = self._remote_sampling  # bound once, not per request

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, receive, self._lifespan_send(send))
            return
        if scope["type"] != "http" or SCOPE_KEY in scope:
            await self.app(scope, receive, send)
            return
        engine = self.engine
        engine.announce()  # the start-up warnings, on the first request only
        if self._many_workers:
            engine.check_workers(True)
        path = scope.get("path", "")
        if path == self.engine.prefix or path.startswith(self._prefix_slash):
            if self._proxying and await self._proxy(
                scope, path[len(self.engine.prefix) :], receive, send
            ):
                return
            await self._endpoint(scope, receive, send)
            return
        lazy = _LazyState(engine, _request_entries(scope), self._sampling)
        scope[SCOPE_KEY] = lazy
        # Starlette's request.state reads this dict: the decision is computed on first use.
        state = scope["state"] = _StateDict(scope.get("state") or ())
        state.lazy = lazy
        token = set_current(lazy)
        try:
            await self.app(scope, receive, _Responder(lazy, send).send)
        finally:
            reset_current(token)

    def _remote_sampling(self) -> RemoteSampling | None:
        """The project's remote sampling settings as last fetched; never waits (S2)."""
        return None if self.upstream is None else self.upstream.current_sampling()

    async def _proxy(self, scope: Scope, sub: str, receive: Receive, send: Send) -> bool:
        """Forward ``/track`` and ``/config/<key>`` upstream; False for other endpoints.

        The proxy sends its own complete response and maps every client or upstream fault to
        a status the SDK understands; only an upstream break after the response started
        propagates (the server then aborts the connection, as it must).
        """
        assert self.upstream is not None
        track = sub == "/track"
        key = sub[len("/config/") :]
        if not track and not (sub.startswith("/config/") and "/" not in key):
            return False
        request = request_info(scope)
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            if track:
                await self.upstream.handle_track(
                    request, receive, self._sliding_send(request, tracked)
                )
            else:
                await self.upstream.handle_config(request, key, receive, tracked)
        except Exception:
            if started:
                raise  # mid-response: only aborting the connection is honest now
            # A bug of ours before any byte went out: a status the SDK retries, never a 500.
            logger.exception("replay-middleware: proxy failed on %s", sub)
            await _send_response(send, ENDPOINT_UNAVAILABLE)
        return True

    def _sliding_send(self, request: RequestInfo, send: Send) -> Send:
        """I4: an accepted upload slides the session's last activity (Set-Cookie on 2xx only)."""

        async def wrapped(message: Message) -> None:
            if message["type"] == "http.response.start" and 200 <= message["status"] < 300:
                extra = encode_headers(self.engine.upload_cookie(request))
                if extra:
                    message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        return wrapped

    def _lifespan_send(self, send: Send) -> Send:
        """Warm the remote config at start-up; release our resources at shutdown."""

        async def wrapped(message: Message) -> None:
            kind = message["type"]
            if kind == "lifespan.startup.complete":
                self._remote_sampling()  # schedules the first fetch in the background
            elif kind in ("lifespan.shutdown.complete", "lifespan.shutdown.failed"):
                await self.aclose()
            await send(message)

        return wrapped

    async def aclose(self) -> None:
        """Close the upstream client and the local store; called on lifespan shutdown."""
        if self.upstream is not None:
            await self.upstream.aclose()
        await anyio.to_thread.run_sync(self.engine.close)

    async def _endpoint(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            result = await self._endpoint_response(request_info(scope), receive)
        except Exception:
            # Never a bare 500 from our code: the SDK treats 503 as "retry later".
            logger.exception("replay-middleware: endpoint %s failed", scope.get("path"))
            result = ENDPOINT_UNAVAILABLE
        await _send_response(send, result)

    async def _endpoint_response(self, request: RequestInfo, receive: Receive) -> HttpResponse:
        blocking = self.engine.endpoint_blocks(request.path)
        remote = self._remote_sampling()
        result = (
            await anyio.to_thread.run_sync(self.engine.endpoint, request)
            if blocking
            else self.engine.endpoint(request, remote=remote)
        )
        if result == "read_body":
            body = await _read_body(receive, self.config.max_upload_bytes)
            if body is None:
                result = HttpResponse(
                    413, [("content-type", "text/plain")], b"Payload size exceeded the limit"
                )
            else:
                result = await anyio.to_thread.run_sync(self.engine.endpoint, request, body)
        if result == "sdk":
            try:
                bundle = await self.sdk.get()
            except SdkUnavailable as exc:
                result = sdk_unavailable(self.engine, exc)
            else:
                result = self.engine.sdk_response(request, bundle.body, bundle.etag)
        assert isinstance(result, HttpResponse)
        return result


async def _send_response(send: Send, response: HttpResponse) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": response.status,
            "headers": encode_headers(response.framed_headers()),
        }
    )
    await send({"type": "http.response.body", "body": response.body})


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    """The request body, or None as soon as it exceeds ``limit`` (never buffers more)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return b"".join(chunks)
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


class _LazyState:
    """The request's identity and decision, computed once, on first use.

    It keeps the scope's few request entries (``_request_entries``), not the scope: the
    scope holds this object (``scope["replay_middleware"]``), and a reference back would make
    every request a reference cycle, whose objects (the scope and all it holds) only the
    garbage collector frees (issue 10: 30 objects a page, and the server's own code slowed by
    the churn)."""

    __slots__ = ("_engine", "_request", "_sampling", "_state")

    def __init__(
        self,
        engine: ReplayEngine,
        request: _Entries,
        sampling: Callable[[], RemoteSampling | None],
    ) -> None:
        self._engine = engine
        self._request = request
        self._sampling = sampling
        self._state: RequestState | None = None

    def state(self) -> RequestState:
        if self._state is None:
            self._state = self._engine.begin(
                _request_info(self._request), remote=self._sampling()
            )
        return self._state

    def context(self) -> ReplayContext:
        return self.state().context


class _StateDict(dict[str, Any]):
    """``scope["state"]`` whose ``"replay"`` entry is computed when first read; ``lazy`` is
    set right after construction (no Python ``__init__``: this runs on every request)."""

    __slots__ = ("lazy",)
    lazy: _LazyState

    def __missing__(self, key: str) -> Any:
        if key != "replay":
            raise KeyError(key)
        value = self["replay"] = self.lazy.context()
        return value


def _may_be_html(headers: list[tuple[bytes, bytes]]) -> bool:
    """A cheap, conservative pre-check: False only when no Content-Type mentions html."""
    for name, value in headers:
        if len(name) == 12 and name.lower() == b"content-type" and b"html" in value.lower():
            return True
    return False


class _Responder:
    """Wraps ``send`` for one response."""

    def __init__(self, lazy: _LazyState, send: Send) -> None:
        self._lazy = lazy
        self.rewriter: ResponseRewriter | None = None
        self._send = send
        self._mode = "start"  # "start" → "scan" (holding) → "pass"
        self._start: Message | None = None
        self._held: list[bytes] = []

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if self._mode == "pass":
            await self._send(message)
        elif kind == "http.response.start" and self._mode == "start":
            raw = message.get("headers") or []
            if not _may_be_html(raw) and not self._lazy._engine.config.show_debug_header:
                # Not HTML: nothing to decide, nothing to compute (the common API response).
                self._mode = "pass"
                await self._send(message)
            else:
                await self._on_start(message, raw)
        elif kind == "http.response.body" and self._mode == "scan":
            await self._on_body(message)
        else:
            # pathsend, zerocopysend, trailers, debug, or an unexpected order: whatever we
            # held goes out unmodified first.
            await self._flush_original()
            await self._send(message)

    async def _on_start(self, message: Message, raw: list[tuple[bytes, bytes]]) -> None:
        engine = self._lazy._engine
        try:
            headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in raw]
            self.rewriter = ResponseRewriter(engine, self._lazy.state())
            self.rewriter.start(message["status"], headers)
        except Exception:
            logger.exception(
                "replay-middleware: failed deciding on a response; sending it untouched"
            )
            self._mode = "pass"
            await self._send(message)
            return
        if self.rewriter.passthrough:
            self._mode = "pass"
            appended = self.rewriter.appended
            if appended is not None:  # the app's header bytes as they are, plus ours
                if appended:
                    message = {**message, "headers": [*raw, *encode_headers(appended)]}
            elif self.rewriter.headers != headers:
                message = {**message, "headers": encode_headers(self.rewriter.headers)}
            await self._send(message)
            return
        self._mode = "scan"
        self._start = message

    async def _on_body(self, message: Message) -> None:
        chunk = message.get("body", b"")
        more = message.get("more_body", False)
        self._held.append(chunk)
        rewriter = self.rewriter
        assert rewriter is not None
        try:
            out = rewriter.body(chunk)
            if not more:
                out += rewriter.finish()
            headers = encode_headers(rewriter.headers) if rewriter.ready else None
        except Exception:
            logger.exception("replay-middleware: failed rewriting a response; sending it untouched")
            await self._flush_original(more_body=more)
            return
        if headers is None:
            return
        assert self._start is not None
        self._mode = "pass"
        self._held = []
        await self._send({**self._start, "headers": headers})
        await self._send({"type": "http.response.body", "body": out, "more_body": more})

    async def _flush_original(self, *, more_body: bool = True) -> None:
        if self._mode != "scan":
            self._mode = "pass"
            return
        self._mode = "pass"
        assert self._start is not None
        await self._send(self._start)
        held, self._held = b"".join(self._held), []
        if held or not more_body:
            await self._send({"type": "http.response.body", "body": held, "more_body": more_body})
