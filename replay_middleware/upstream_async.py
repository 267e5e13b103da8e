"""AsyncUploadProxy: the asyncio/anyio I/O of the first-party upload proxy (SPEC P4, P5, P7).

Every rule lives in the sans-IO ``proxy`` module and what the twins share in
``upstream_core``; this module only moves bytes between the client and the upstream (STYLE 12:
the sync twin, ``upstream_sync.UploadProxy``, writes the same transport calls blocking).
``AsyncUploadProxy`` speaks ASGI ``receive``/``send`` (``handle_track``/``handle_config``) and a
framework-neutral stream form (``track_stream``, for Django under ASGI). Uploads go through the
proxy's own HTTP/1.1 pool (``upstream_http``, issue 10: httpx's per-request cost was most of
the proxy's) unless an ``http_client`` was injected, which is then always used; config fetches
use httpx. Use one instance per middleware and close it on shutdown::

    proxy = AsyncUploadProxy(config)
    await proxy.handle_track(request_info, receive, send)          # POST {prefix}/track
    await proxy.handle_config(request_info, key, receive, send)    # GET {prefix}/config/<key>
    proxy.current_sampling()   # RemoteSampling | None, cheap, schedules a background refresh
    await proxy.aclose()

What it guarantees:

- A slow client never holds an upstream connection: the request body is read whole first,
  in memory up to ``upload_memory_bytes`` and then in an anonymous temporary file, within
  ``client_body_timeout`` (else 408, the upstream never contacted), counted against
  ``max_upload_bytes`` (413 in the SDK's split wording); one client address has at most
  ``max_uploads_per_client`` uploads in flight (else 429 before its body is read). Only then
  is a pooled connection taken, and the body goes up with its exact ``Content-Length``.
- The response comes back raw (never decoded). Every response is closed in ``finally``
  (shielded from cancellation), so pool slots and client slots return on every path.
- A client that disconnects cancels the upstream request (a watcher task waits for its
  ``http.disconnect`` and cancels the exchange's scope). The whole exchange has a budget of
  ``upstream_timeout`` (8 s by default, under the SDK's 10 s abort, PROTOCOL §1.2).
- Faults map to statuses the SDK retries (502/503/504, never 4xx for our own faults).
- The config endpoint answers within ~1 s whatever the upstream does (the SDK aborts each
  attempt after 1 s, PROTOCOL §1.5): a per-(key, zone) cache with ``config_cache_ttl``,
  stale-if-error, a 0.8 s upstream budget, then the fallback body.

``handle_track``/``handle_config`` never raise for upstream or client faults. The one exception
is :class:`ResponseAborted`: the upstream broke *after* the response start went out, and the
only honest signal left is to abort the client connection — let it propagate to the server.

Importing this module does not import httpx; constructing a proxy does.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Callable,
    Coroutine,
)
from typing import TYPE_CHECKING, Any

import anyio

from .proxy import (
    DEFAULT_UPSTREAMS,
    MAX_CONFIG_BYTES,
    ConfigPlan,
    KeyMap,
    ProxyResponse,
    RemoteSampling,
    TrackPlan,
    Upstreams,
    fault_response,
    filter_response_headers,
    upstream_status_is_redirect,
    with_content_length,
)
from .upstream_core import (
    _UNSUPPORTED,
    CONFIG_FAILURE_BACKOFF,
    CONFIG_TIMEOUT,
    AsyncProxyReply,
    Message,
    Receive,
    ResponseAborted,
    Send,
    _async_emit,
    _BodyGate,
    _BodyRejected,
    _ClientGone,
    _encode,
    _fault_kind,
    _Log,
    _ProxyCore,
    _relay_headers,
    _single,
    _Spool,
    _take,
    _UploadCore,
    _upstream_reason,
    logger,
)
from .upstream_http import WRITE_BYTES, UpstreamFault, UpstreamPool, UpstreamResponse

if TYPE_CHECKING:
    import httpx

    from .config import ReplayConfig
    from .request import RequestInfo


__all__ = ["AsyncUploadProxy"]


async def _send_response(send: Send, response: ProxyResponse) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": response.status,
            "headers": _encode(response.headers),
        }
    )
    await send({"type": "http.response.body", "body": response.body, "more_body": False})


class AsyncUploadProxy(_ProxyCore):
    """Forwards the SDK's uploads and config fetches to Amplitude, for ASGI apps.

    ``config`` gives the key, zone, ``upstream_timeout``, ``max_upload_bytes``,
    ``trusted_proxies``, ``forward_client_ip``, ``config_cache_ttl`` and ``http_client`` (an
    ``httpx.AsyncClient`` or ``httpx.AsyncBaseTransport``). Keyword arguments override for
    tests and multi-project sites: ``keys`` (a :class:`KeyMap`), ``upstreams`` (base URLs,
    e.g. a local fake), ``client``/``transport`` (not closed by :meth:`aclose`; a created
    client is), ``limits``, ``pool_timeout``, ``config_timeout``, breaker settings and a
    monotonic ``clock`` for the cache.
    """

    _client: httpx.AsyncClient | None

    def __init__(
        self,
        config: ReplayConfig,
        *,
        keys: KeyMap | None = None,
        upstreams: Upstreams = DEFAULT_UPSTREAMS,
        client: httpx.AsyncClient | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        limits: httpx.Limits | None = None,
        connect_timeout: float = 2.0,
        pool_timeout: float = 1.0,
        config_timeout: float = CONFIG_TIMEOUT,
        config_failure_backoff: float = CONFIG_FAILURE_BACKOFF,
        breaker_threshold: int = 5,
        breaker_open_for: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        import httpx

        super().__init__(
            config,
            keys=keys,
            upstreams=upstreams,
            limits=limits,
            connect_timeout=connect_timeout,
            pool_timeout=pool_timeout,
            config_timeout=config_timeout,
            config_failure_backoff=config_failure_backoff,
            breaker_threshold=breaker_threshold,
            breaker_open_for=breaker_open_for,
            clock=clock,
            client=client,
            transport=transport,
            kinds=(httpx.AsyncClient, httpx.AsyncBaseTransport, "ASGI"),
        )
        self._flights: dict[tuple[str, str], anyio.Event] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        #: Uploads go through this pool when the proxy makes its own client (an injected
        #: client or transport is always used as given); config fetches stay on httpx.
        self._pool: UpstreamPool | None = None
        if self._owns_client:
            self._pool = UpstreamPool(
                max_connections=self._limits.max_connections,
                max_keepalive=self._limits.max_keepalive_connections,
                keepalive_expiry=self._limits.keepalive_expiry,
                connect_timeout=self._track_timeout["connect"],
                pool_timeout=self._track_timeout["pool"],
            )

    @property
    def config(self) -> ReplayConfig:
        """The ``ReplayConfig`` this proxy was built from."""
        return self.replay_config

    # -- client -------------------------------------------------------------------------------

    @property
    def client(self) -> httpx.AsyncClient:
        """The pooled client, created on first use with safe defaults (P7)."""
        if self._client is None:
            import httpx

            self._client = httpx.AsyncClient(**self._client_options())
        return self._client

    async def aclose(self) -> None:
        """Stop background refreshes and close the client if this proxy created it. Call it
        on lifespan shutdown; idempotent."""
        self._closed = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if self._pool is not None:
            await self._pool.aclose()
        if self._client is not None and self._owns_client:
            await self._client.aclose()

    async def __aenter__(self) -> AsyncUploadProxy:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- uploads ------------------------------------------------------------------------------

    async def handle_track(self, request: RequestInfo, receive: Receive, send: Send) -> None:
        """Answer ``{prefix}/track``: check, read the body whole, then send it to the key's
        zone and stream the answer back."""
        log = _Log("track", request.method)
        try:
            await self._track(request, receive, send, log)
        finally:
            log.emit()

    async def _track(self, request: RequestInfo, receive: Receive, send: Send, log: _Log) -> None:
        plan = self._admit_track(request, log)
        if isinstance(plan, ProxyResponse):
            await _send_response(send, plan)
            return
        try:
            upload = _Upload(self, plan, receive, send, log)
        except BaseException:
            self.client_slots.release(plan.client)
            raise
        self._in_flight += 1
        try:
            await upload.run()
        finally:
            self._in_flight -= 1
            self.client_slots.release(plan.client)
            upload.spool.close()
            self._record_breaker(plan.zone, upload.upstream_ok)
            log.bytes_in = upload.gate.counter.total
        if upload.aborted:
            raise ResponseAborted(log.reason)

    async def track_stream(
        self, request: RequestInfo, body: AsyncIterator[bytes]
    ) -> AsyncProxyReply:
        """The framework-neutral form of :meth:`handle_track` (Django under ASGI): ``body``
        yields the request body; the reply streams the upstream response raw. The caller must
        always ``await reply.aclose()`` (it returns the pool slot and logs the outcome).

        As in :meth:`handle_track`, the body is read whole (within ``client_body_timeout``)
        before an upstream connection is taken, and the budget (``upstream_timeout``) covers
        reading it and waiting for the upstream answer; the response body is then bounded by
        the per-read timeout. Cancelling the caller (a client disconnect) cancels the upstream
        request. Iterating ``reply.body`` may raise :class:`ResponseAborted` (the upstream broke
        mid-response).
        """
        log = _Log("track", request.method)
        plan = self._admit_track(request, log)
        if isinstance(plan, ProxyResponse):
            return AsyncProxyReply.complete(plan, log.reason, _async_emit(log))
        try:
            upload = _StreamUpload(self, plan, body, log, anyio.current_time())
        except BaseException:
            self.client_slots.release(plan.client)
            raise
        self._in_flight += 1
        try:
            return await upload.run()
        except BaseException:
            await upload.release()
            raise

    # -- config -------------------------------------------------------------------------------

    async def handle_config(
        self, request: RequestInfo, key: str, receive: Receive, send: Send
    ) -> None:
        """Answer ``{prefix}/config/<key>`` (``key``: the decoded path segment) from the cache,
        the upstream (≤ ``config_timeout``), the stale copy or the fallback, in that order."""
        log = _Log("config", request.method)
        try:
            plan = self._admit_config(request, key, log)
            if isinstance(plan, ProxyResponse):
                await _send_response(send, plan)
                return
            asked_at = self._clock()
            if self._config_stale(plan, asked_at):
                await self._config_flight(plan, wait=True)
            await _send_response(send, self._config_answer(plan, asked_at, log))
        finally:
            log.emit()

    def current_sampling(self, key: str | None = None) -> RemoteSampling | None:
        """What the remote config of ``key`` (default: the configured key) says about
        sampling, from the cache; None when no good copy is known (use the local rate).

        Cheap and synchronous, for every request (SPEC S2). When the copy is older than
        ``max(config_cache_ttl, 5 s)`` it schedules one background refresh (asyncio only; at
        most one in flight per key; failures logged once) and still answers at once.
        """
        plan = self._background_plan(key)
        if plan is None:
            return None
        now = self._clock()
        if (plan.key, plan.zone) not in self._flights and self._wants_background_fetch(plan, now):
            self._spawn_flight(plan)
        return self._cached_sampling(plan, now)

    async def remote_sampling(self, key: str | None = None) -> RemoteSampling | None:
        """The async form of :meth:`current_sampling`: never waits on the network."""
        return self.current_sampling(key)

    async def refresh_config(self, key: str | None = None) -> RemoteSampling | None:
        """Fetch the remote config now (bounded by ``config_timeout``) and return its
        sampling; for lifespan start-up (warm the cache) and tests."""
        plan = self._background_plan(key)
        if plan is None:
            return None
        await self._config_flight(plan, wait=True)
        return self._stored_sampling(plan)

    # -- config internals ---------------------------------------------------------------------

    def _spawn(self, factory: Callable[[], Coroutine[Any, Any, None]]) -> bool:
        """Run ``factory()`` as a background asyncio task; False under another event loop
        (trio has no spawn without a nursery), where callers fetch inline instead."""
        if self._closed:
            return False
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return False
        task = loop.create_task(factory())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    def _spawn_flight(self, plan: ConfigPlan) -> None:
        """Start a background fetch for ``plan`` (none if one is in flight or cannot run)."""
        slot_key = (plan.key, plan.zone)
        done = anyio.Event()
        self._flights[slot_key] = done
        if not self._spawn(lambda: self._run_flight(plan, done)):
            del self._flights[slot_key]

    async def _config_flight(self, plan: ConfigPlan, *, wait: bool) -> None:
        """Join or start the one fetch in flight for this (key, zone); wait for it at most
        ``config_timeout`` (a little more for scheduling)."""
        slot_key = (plan.key, plan.zone)
        done = self._flights.get(slot_key)
        if done is None:
            done = anyio.Event()
            self._flights[slot_key] = done
            flight = done
            if not self._spawn(lambda: self._run_flight(plan, flight)):
                await self._run_flight(plan, flight)  # not asyncio: inline, still bounded
                return
        if wait:
            with anyio.move_on_after(self._config_timeout + 0.05):
                await done.wait()

    async def _run_flight(self, plan: ConfigPlan, done: anyio.Event) -> None:
        slot_key = (plan.key, plan.zone)
        try:
            await self._fetch_config(plan)
        finally:
            if self._flights.get(slot_key) is done:
                del self._flights[slot_key]
            done.set()

    async def _fetch_config(self, plan: ConfigPlan) -> None:
        import httpx

        status: int | None = None
        reason = "ok"
        entry = None
        with anyio.move_on_after(self._config_timeout) as scope:
            try:
                response = await self.client.send(
                    self._config_request(plan), stream=True, follow_redirects=False, auth=None
                )
                try:
                    status = response.status_code
                    body = b""
                    if status == 200:
                        chunks: list[bytes] = []
                        size = 0
                        async for chunk in response.aiter_bytes():
                            size += len(chunk)
                            if size > MAX_CONFIG_BYTES:
                                break
                            chunks.append(chunk)
                        body = b"".join(chunks) if size <= MAX_CONFIG_BYTES else b""
                finally:
                    with anyio.CancelScope(shield=True):
                        await response.aclose()
                entry, reason = self._config_outcome(response, body)
            except httpx.HTTPError as exc:
                reason = _fault_kind(exc)
            except Exception:
                logger.exception("replay proxy: config fetch failed unexpectedly")
                reason = "upstream_error"
        if scope.cancelled_caught:
            reason = "upstream_timeout"
        self._store_config(plan, entry, status, reason)


class _Upload:
    """One ASGI upload in flight: all per-request state lives here (STYLE 5).

    Two phases (notes/proxy.md case 43): the client's body is read whole into a
    :class:`_Spool` before the body deadline, holding no upstream connection; then it goes up
    with its length known, within what is left of the total budget, while a task watches the
    client for a disconnect.
    """

    def __init__(
        self, proxy: AsyncUploadProxy, plan: TrackPlan, receive: Receive, send: Send, log: _Log
    ) -> None:
        self.proxy = proxy
        self.plan = plan
        self.receive = receive
        self._send = send
        self.log = log
        self.gate = _BodyGate(proxy.config.max_upload_bytes, plan.content_length)
        self.spool = _Spool(proxy.config.upload_memory_bytes)
        self.deadlines = proxy._deadlines(anyio.current_time())
        self.client_gone = False
        self.started = False  # the response start went to the client
        self.finished = False  # ... and its last body message
        self.aborted = False  # the client connection must be aborted
        self.upstream_ok: bool | None = None  # for the breaker; None = not the upstream's doing
        #: What a client disconnect cancels: the budget scope, or the task group's.
        self._on_disconnect: anyio.CancelScope | None = None
        self._pool: UpstreamPool | None = None

    # -- client side ----------------------------------------------------------------------

    async def _next_chunk(self) -> tuple[bytes, bool]:
        """The next body chunk and whether more follow; ``_ClientGone`` on disconnect."""
        while True:
            message = await self.receive()
            kind = message.get("type")
            if kind == "http.disconnect":
                self.client_gone = True
                raise _ClientGone
            if kind == "http.request":
                return message.get("body", b"") or b"", bool(message.get("more_body", False))

    async def _emit(self, message: Message) -> bool:
        """Send to the client; False (and client_gone) if the server refuses."""
        if self.client_gone:
            return False
        try:
            await self._send(message)
        except Exception:
            logger.debug("replay proxy: send to the client failed", exc_info=True)
            self.client_gone = True
            return False
        return True

    async def reply(self, response: ProxyResponse, reason: str) -> None:
        self.log.status, self.log.reason = response.status, reason
        if await self._emit(
            {
                "type": "http.response.start",
                "status": response.status,
                "headers": _encode(response.headers),
            }
        ):
            self.started = True
            await self._emit(
                {"type": "http.response.body", "body": response.body, "more_body": False}
            )
            self.finished = True
            self.log.bytes_out = len(response.body)

    # -- the exchange -----------------------------------------------------------------------

    async def run(self) -> None:
        try:
            refused = await self._read_body()
        except _ClientGone:
            self.log.reason = "client_abort"
            return
        if refused is not None:
            await self.reply(*refused)
            return
        # The body is in: from now on receive() only reports a disconnect, which cancels
        # the exchange. Under asyncio the watcher is a bare task and the budget scope is
        # what it cancels (the anyio task group this replaces was a sixth of the proxy's
        # CPU per upload, issue 10 profile); under another loop (trio), a task group.
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        self._pool = self.proxy._pool if loop is not None else None  # asyncio streams only
        if loop is None:
            async with anyio.create_task_group() as tg:
                self._on_disconnect = tg.cancel_scope
                tg.start_soon(self._watch_disconnect)
                await self._budgeted()
                tg.cancel_scope.cancel()
        else:
            watcher = loop.create_task(self._watch_disconnect())
            try:
                await self._budgeted()
            finally:
                watcher.cancel()
        if self.client_gone and not self.finished:
            self.log.reason = "client_abort"

    async def _budgeted(self) -> None:
        """The exchange within what is left of the total budget (``upstream_timeout``)."""
        with anyio.CancelScope(deadline=self.deadlines.total) as budget:
            if self._on_disconnect is None:
                self._on_disconnect = budget
            try:
                await self._exchange()
            except Exception:
                # A bug of ours or an exotic transport: never let it out (in a task group it
                # would surface as an ExceptionGroup), and still answer something the SDK
                # retries, or abort if the response already started.
                logger.exception("replay proxy: upload exchange failed unexpectedly")
                self.upstream_ok = None
                if self.started:
                    self.aborted = True
                    self.log.reason = "proxy_error"
                else:
                    await self.reply(fault_response("upstream_error"), "proxy_error")
        if budget.cancelled_caught:
            await self._on_budget_spent()

    async def _read_body(self) -> tuple[ProxyResponse, str] | None:
        """Read the whole body into the spool before the body deadline (``_ClientGone`` on a
        disconnect). None: it may go up; else the answer that refuses it (413/400 from the
        gate, 415 from the sniff, 408)."""
        with anyio.CancelScope(deadline=self.deadlines.body) as scope:
            try:
                while not self.gate.complete:
                    chunk, more = await self._next_chunk()
                    if not _take(self.gate, self.spool, chunk, more):
                        return _UNSUPPORTED, "unsupported_payload"  # before reading it all
            except _BodyRejected as exc:
                return exc.rejection.response(), exc.rejection.reason
        if scope.cancelled_caught:
            # The client's body is what we waited for (slowloris, case 43): a 408, which the
            # SDK retries; the upstream was never contacted.
            return fault_response("client_timeout"), "client_timeout"
        if not self.gate.verdict():
            return _UNSUPPORTED, "unsupported_payload"
        return None

    async def _watch_disconnect(self) -> None:
        try:
            while True:
                message = await self.receive()
                if message.get("type") == "http.disconnect":
                    break
        except Exception:
            return
        if not self.finished and self._on_disconnect is not None:
            self.client_gone = True
            self._on_disconnect.cancel()

    async def _exchange(self) -> None:
        pool = self._pool
        if pool is not None:
            await self._exchange_pooled(pool)
            return
        import httpx

        body = self.spool.achunks()
        request = httpx.Request(
            "POST",
            self.plan.url,
            headers=with_content_length(self.plan.headers, self.spool.size),
            content=body,
            extensions={"timeout": self.proxy._track_timeout},
        )
        try:
            try:
                response = await self.proxy.client.send(
                    request, stream=True, follow_redirects=False, auth=None
                )
            except httpx.HTTPError as exc:
                kind = _fault_kind(exc)
                if kind != "pool_exhausted":
                    self.upstream_ok = False
                await self.reply(fault_response(kind), kind)
                return
            try:
                await self._relay(response)
            finally:
                with anyio.CancelScope(shield=True):
                    await response.aclose()
        finally:
            with anyio.CancelScope(shield=True):
                await body.aclose()

    async def _exchange_pooled(self, pool: UpstreamPool) -> None:
        """:meth:`_exchange` on the proxy's own connections (:mod:`.upstream_http`)."""
        size = self.spool.size
        try:
            response = await pool.post(
                self.plan.url,
                with_content_length(self.plan.headers, size),
                self.spool.views(WRITE_BYTES),
                size,
            )
        except UpstreamFault as exc:
            if exc.kind != "pool_exhausted":
                self.upstream_ok = False
            await self.reply(fault_response(exc.kind), exc.kind)
            return
        try:
            headers = filter_response_headers(response.headers, raw=True)
            await self._relay_body(response.status, headers, response.iter_raw())
        finally:
            await response.aclose()  # never waits: gives the connection back or closes it

    async def _relay(self, response: httpx.Response) -> None:
        headers, preread = _relay_headers(response)
        chunks = _single(response.content) if preread else response.aiter_raw()
        await self._relay_body(response.status_code, headers, chunks)

    async def _relay_body(
        self, status: int, headers: list[tuple[str, str]], chunks: AsyncIterator[bytes]
    ) -> None:
        """Pass the upstream answer on: its status, the relayed ``headers``, then ``chunks``
        (raw bytes); a redirect becomes a 502, a break mid-body aborts the client."""
        import httpx

        self.log.upstream = status
        if upstream_status_is_redirect(status):
            self.upstream_ok = False
            await self.reply(fault_response("upstream_redirect"), "upstream_redirect")
            return
        self.log.status = status
        if not await self._emit(
            {"type": "http.response.start", "status": status, "headers": _encode(headers)}
        ):
            return
        self.started = True
        try:
            async for chunk in chunks:
                if chunk:
                    self.log.bytes_out += len(chunk)
                    if not await self._emit(
                        {"type": "http.response.body", "body": chunk, "more_body": True}
                    ):
                        return
        except (httpx.HTTPError, UpstreamFault) as exc:
            # Mid-response: no fabricated success (case 38); the caller aborts the client.
            self.upstream_ok = False
            self.aborted = True
            self.log.reason = exc.kind if isinstance(exc, UpstreamFault) else _fault_kind(exc)
            return
        finally:
            if isinstance(chunks, AsyncGenerator):
                await chunks.aclose()
        self.finished = True
        self.upstream_ok = status < 500
        if status >= 400:
            self.log.reason = _upstream_reason(status)
        await self._emit({"type": "http.response.body", "body": b"", "more_body": False})

    async def _on_budget_spent(self) -> None:
        """The total budget ran out while the upstream had the body (P5: under the SDK's
        10 s abort)."""
        if self.finished or self.client_gone:
            return
        self.upstream_ok = False
        if self.started:
            self.aborted = True
            self.log.reason = "upstream_timeout"
        else:
            await self.reply(fault_response("upstream_timeout"), "upstream_timeout")


class _StreamUpload(_UploadCore):
    """One upload of :meth:`AsyncUploadProxy.track_stream` (the body an async iterator)."""

    proxy: AsyncUploadProxy

    def __init__(
        self,
        proxy: AsyncUploadProxy,
        plan: TrackPlan,
        body: AsyncIterator[bytes],
        log: _Log,
        now: float,
    ) -> None:
        super().__init__(proxy, plan, log, now)
        self.source = body
        self.pooled: UpstreamResponse | None = None  # the answer on the proxy's own pool

    async def release(self) -> None:
        if self._released:
            return
        self._released = True
        try:
            if self.pooled is not None:
                await self.pooled.aclose()  # never waits
            if self.response is not None:
                with anyio.CancelScope(shield=True):
                    await self.response.aclose()
        finally:
            self.spool.close()
            self.proxy.client_slots.release(self.plan.client)
            self.proxy._in_flight -= 1
            self._settle()
            self.log.emit()

    def _answer(self, response: ProxyResponse, reason: str) -> AsyncProxyReply:
        self.log.status, self.log.reason = response.status, reason
        return AsyncProxyReply.complete(response, reason, self.release)

    async def _next(self) -> tuple[bytes, bool]:
        try:
            chunk = await self.source.__anext__()
        except StopAsyncIteration:
            chunk = b""
        except Exception as exc:
            raise _ClientGone from exc
        return chunk, bool(chunk)

    async def _read_body(self) -> tuple[ProxyResponse, str] | None:
        """Read the whole body into the spool before the body deadline; None: it may go up,
        else the answer that refuses it."""
        with anyio.CancelScope(deadline=self.deadlines.body) as scope:
            while not self.gate.complete:
                if not _take(self.gate, self.spool, *await self._next()):
                    return _UNSUPPORTED, "unsupported_payload"
        if scope.cancelled_caught:
            return fault_response("client_timeout"), "client_timeout"
        return None if self.gate.verdict() else (_UNSUPPORTED, "unsupported_payload")

    async def run(self) -> AsyncProxyReply:
        pool = self.proxy._pool if _on_asyncio() else None
        try:
            refused = await self._read_body()
            if refused is not None:
                return self._answer(*refused)
            if pool is not None:
                size = self.spool.size
                with anyio.CancelScope(deadline=self.deadlines.total) as budget:
                    self.pooled = await pool.post(
                        self.plan.url,
                        with_content_length(self.plan.headers, size),
                        self.spool.views(WRITE_BYTES),
                        size,
                    )
                if budget.cancelled_caught or self.pooled is None:
                    self.upstream_ok = False
                    return self._answer(fault_response("upstream_timeout"), "upstream_timeout")
                return self._relay_pooled(self.pooled)
            body = self.spool.achunks()
            try:
                with anyio.CancelScope(deadline=self.deadlines.total) as budget:
                    self.response = await self.proxy.client.send(
                        self._request(body, anyio.current_time()),
                        stream=True,
                        follow_redirects=False,
                        auth=None,
                    )
            finally:
                with anyio.CancelScope(shield=True):
                    await body.aclose()
        except Exception as exc:
            return self._answer(*self._failure(exc))
        if budget.cancelled_caught or self.response is None:
            self.upstream_ok = False
            return self._answer(fault_response("upstream_timeout"), "upstream_timeout")
        return self._relay(self.response)

    def _relay_pooled(self, response: UpstreamResponse) -> AsyncProxyReply:
        status = response.status
        self.log.upstream = status
        if upstream_status_is_redirect(status):
            self.upstream_ok = False
            return self._answer(fault_response("upstream_redirect"), "upstream_redirect")
        self.log.status = status
        if status >= 400:
            self.log.reason = _upstream_reason(status)
        headers = filter_response_headers(response.headers, raw=True)
        return AsyncProxyReply(status, headers, self._stream_pooled(response), self.release)

    async def _stream_pooled(self, response: UpstreamResponse) -> AsyncGenerator[bytes, None]:
        try:
            async for chunk in response.iter_raw():
                if chunk:
                    self.log.bytes_out += len(chunk)
                    yield chunk
        except UpstreamFault as exc:
            raise self._aborted(exc) from exc
        self.upstream_ok = response.status < 500

    def _relay(self, response: httpx.Response) -> AsyncProxyReply:
        relayed = self._relay_start(response)
        if relayed is None:
            return self._answer(fault_response("upstream_redirect"), "upstream_redirect")
        headers, preread = relayed
        return AsyncProxyReply(
            response.status_code, headers, self._stream(response, preread), self.release
        )

    async def _stream(self, response: httpx.Response, preread: bool) -> AsyncGenerator[bytes, None]:
        import httpx

        try:
            chunks = _single(response.content) if preread else response.aiter_raw()
            async for chunk in chunks:
                if chunk:
                    self.log.bytes_out += len(chunk)
                    yield chunk
        except httpx.HTTPError as exc:
            raise self._aborted(exc) from exc
        self.upstream_ok = response.status_code < 500


def _on_asyncio() -> bool:
    """Whether an asyncio loop runs this task (the upload pool needs asyncio streams)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True
