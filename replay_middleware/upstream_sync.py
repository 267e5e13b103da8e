"""UploadProxy: the blocking I/O of the first-party upload proxy, for WSGI and Django (SPEC P4, P5, P7).

The sync twin of :class:`replay_middleware.upstream_async.AsyncUploadProxy` (STYLE 12): the
rules and the per-request bookkeeping come from :mod:`replay_middleware.upstream_core`; this
module holds only the blocking transport calls, the thread-based config refresh and the
:class:`_ReadReaper` that cuts blocked body reads short at their deadline. Uploads go through
:class:`replay_middleware.upstream_http.SyncUpstreamPool` unless an ``http_client`` was
injected (then always used); config fetches use httpx.

Importing this module does not import httpx; constructing a proxy does.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import socket
import threading
import time
from collections.abc import (
    Callable,
    Iterator,
)
from typing import TYPE_CHECKING

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
    ProxyReply,
    _ClientGone,
    _Deadline,
    _fault_kind,
    _Log,
    _ProxyCore,
    _take,
    _TooBig,
    _UploadCore,
    _upstream_reason,
    logger,
)
from .upstream_http import SyncUpstreamPool, SyncUpstreamResponse, UpstreamFault

if TYPE_CHECKING:
    import httpx

    from .config import ReplayConfig
    from .request import RequestInfo


__all__ = ["UploadProxy"]


class _ReadReaper:
    """Ends the blocked body reads of sync uploads at their deadline (case 43).

    A WSGI server's ``wsgi.input.read(n)`` blocks until ``n`` bytes are in (gunicorn loops over
    ``recv``), so no per-read socket timeout stops a client that trickles a byte a second: each
    ``recv`` returns in time. When the server shows the connection's socket (``gunicorn.socket``,
    ``werkzeug.socket``), one daemon thread per proxy sleeps until the earliest deadline and
    shuts that socket's *reading* side down: the blocked read returns short (or raises), the
    408 still goes out on the writing side, and the server closes the connection since its
    request body never completed. Without a socket the deadline is checked between reads only.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int]] = []
        self._watched: dict[int, socket.socket] = {}
        self._ids = itertools.count()
        self._thread: threading.Thread | None = None
        self._closed = False

    def watch(self, sock: socket.socket, deadline: float) -> int:
        """Shut ``sock``'s reading side at ``deadline`` (``time.monotonic``) unless
        :meth:`unwatch` comes first; returns the token for it."""
        with self._cond:
            token = next(self._ids)
            self._watched[token] = sock
            heapq.heappush(self._heap, (deadline, token))
            if self._thread is None and not self._closed:
                self._thread = threading.Thread(
                    target=self._run, name="replay-middleware-reaper", daemon=True
                )
                self._thread.start()
            self._cond.notify()
        return token

    def unwatch(self, token: int) -> bool:
        """Stop watching; True when the deadline had already shut the socket's reading side.
        Under the same lock as the shutdown, so a socket is never shut after this returns
        (the server may reuse the connection for its next request)."""
        with self._cond:
            return self._watched.pop(token, None) is None

    def _run(self) -> None:
        with self._cond:
            while not self._closed:
                if not self._heap:
                    self._cond.wait()
                    continue
                deadline, token = self._heap[0]
                if token not in self._watched:
                    heapq.heappop(self._heap)  # unwatched in time
                    continue
                left = deadline - time.monotonic()
                if left > 0:
                    self._cond.wait(left)
                    continue
                heapq.heappop(self._heap)
                sock = self._watched.pop(token)
                # socket.socket's own shutdown, also for a TLS socket: SSLSocket.shutdown
                # would drop the TLS state the 408 is written with. OSError: the server
                # closed it already.
                with contextlib.suppress(OSError):
                    socket.socket.shutdown(sock, socket.SHUT_RD)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._watched.clear()
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(1.0)


class UploadProxy(_ProxyCore):
    """The sync twin of :class:`AsyncUploadProxy`, for WSGI servers and Django (STYLE 12).

    Uploads go through the proxy's own pooled HTTP/1.1 connections
    (:class:`~replay_middleware.upstream_http.SyncUpstreamPool`, the same limits) and config
    fetches through one pooled ``httpx.Client`` (created on first use with the same safe
    defaults: no redirects, ``trust_env=False``, a cookie jar that stores nothing, explicit
    limits, TLS verified, HTTP/1.1). ``config.http_client`` may be an ``httpx.Client`` or an
    ``httpx.BaseTransport``, then used for everything; the keyword arguments are the async
    twin's. Thread-safe::

        proxy = UploadProxy(config)
        reply = proxy.track(request_info, read)          # read(n) -> bytes, b"" at the end
        try:
            start(reply.status, reply.headers); for chunk in reply.body: ...
        finally:
            reply.close()
        reply = proxy.config(request_info, key)
        proxy.current_sampling()   # never blocks; refreshes in a daemon thread
        proxy.close()

    Differences from the async twin, all forced by blocking I/O: a client disconnect is seen
    when reading its body raises (the upstream request is then aborted) or when the server
    stops iterating ``reply.body`` and calls ``close()``; the total budget is enforced between
    reads of the client's body and by per-operation timeouts upstream (a single blocked read
    of the client's socket is the server's timeout to enforce).
    """

    _client: httpx.Client | None

    def __init__(
        self,
        config: ReplayConfig,
        *,
        keys: KeyMap | None = None,
        upstreams: Upstreams = DEFAULT_UPSTREAMS,
        client: httpx.Client | None = None,
        transport: httpx.BaseTransport | None = None,
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
            kinds=(httpx.Client, httpx.BaseTransport, "WSGI"),
        )
        self._lock = threading.Lock()
        self._flights: dict[tuple[str, str], threading.Event] = {}
        self._threads: set[threading.Thread] = set()
        self._reaper = _ReadReaper()
        #: Uploads go through this pool when the proxy makes its own client (an injected
        #: client or transport is always used as given); config fetches stay on httpx.
        self._pool: SyncUpstreamPool | None = None
        if self._owns_client:
            self._pool = SyncUpstreamPool(
                max_connections=self._limits.max_connections,
                max_keepalive=self._limits.max_keepalive_connections,
                keepalive_expiry=self._limits.keepalive_expiry,
            )

    # -- client -------------------------------------------------------------------------------

    @property
    def client(self) -> httpx.Client:
        """The pooled client, created on first use with safe defaults (P7)."""
        if self._client is None:
            import httpx

            with self._lock:
                if self._client is None:
                    self._client = httpx.Client(**self._client_options())
        return self._client

    def close(self) -> None:
        """Stop scheduling refreshes, wait briefly for those in flight, and close the client
        if this proxy created it. Idempotent."""
        self._closed = True
        self._reaper.close()
        if self._pool is not None:
            self._pool.close()
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(self._config_timeout + 0.5)
        if self._client is not None and self._owns_client:
            self._client.close()

    def __enter__(self) -> UploadProxy:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _adjust(self, delta: int) -> None:
        with self._lock:
            self._in_flight += delta

    # -- uploads ------------------------------------------------------------------------------

    def track(
        self,
        request: RequestInfo,
        body: Callable[[int], bytes],
        *,
        client_socket: socket.socket | None = None,
    ) -> ProxyReply:
        """Answer ``POST {prefix}/track``: check, read the body whole (within
        ``client_body_timeout``), then send it to the key's zone.

        ``body(n)`` reads up to ``n`` bytes of the request body, ``b""`` at its end (WSGI's
        ``wsgi.input.read``, Django's ``request.read``); it is called only while the declared
        length (if any) is not in, so it never blocks past the body. ``client_socket``: the
        connection's socket when the server shows it (``wsgi.client_socket`` finds it): a read
        still blocked at the body deadline is then cut short (see :class:`_ReadReaper`);
        without it the deadline is checked between reads. Never raises for client or upstream
        faults: those become statuses the SDK understands.
        """
        log = _Log("track", request.method)
        plan = self._admit_track(request, log)
        if isinstance(plan, ProxyResponse):
            return ProxyReply.complete(plan, log.reason, log.emit)
        try:
            exchange = _SyncUpload(self, plan, body, log, client_socket)
        except BaseException:
            self.client_slots.release(plan.client)
            raise
        self._adjust(1)
        try:
            return exchange.run()
        except BaseException:
            exchange.release()
            raise

    # -- config -------------------------------------------------------------------------------

    def config(self, request: RequestInfo, key: str) -> ProxyReply:
        """Answer ``GET/HEAD {prefix}/config/<key>`` within about a second: the cache, the
        upstream (≤ ``config_timeout``), the stale copy or the fallback, in that order."""
        log = _Log("config", request.method)
        plan = self._admit_config(request, key, log)
        if isinstance(plan, ProxyResponse):
            return ProxyReply.complete(plan, log.reason, log.emit)
        asked_at = self._clock()
        if self._config_stale(plan, asked_at):
            self._config_flight(plan, wait=True)
        response = self._config_answer(plan, asked_at, log)
        return ProxyReply.complete(response, log.reason, log.emit)

    def current_sampling(self, key: str | None = None) -> RemoteSampling | None:
        """The remote sampling settings of ``key`` from the cache (None: use the local rate).

        Never blocks: when the copy is older than ``max(config_cache_ttl, 5 s)`` one refresh
        runs in a daemon thread (at most one in flight per key).
        """
        plan = self._background_plan(key)
        if plan is None:
            return None
        now = self._clock()
        if (plan.key, plan.zone) not in self._flights and self._wants_background_fetch(plan, now):
            self._config_flight(plan, wait=False)
        return self._cached_sampling(plan, now)

    def refresh_config(self, key: str | None = None) -> RemoteSampling | None:
        """Fetch the remote config now (bounded by ``config_timeout``) and return its
        sampling; to warm the cache at start-up, and for tests."""
        plan = self._background_plan(key)
        if plan is None:
            return None
        self._config_flight(plan, wait=True)
        return self._stored_sampling(plan)

    def _config_flight(self, plan: ConfigPlan, *, wait: bool) -> None:
        """Join or start the one fetch in flight for this (key, zone). A waiting caller runs
        a new fetch itself (its thread is blocked anyway); otherwise a daemon thread does."""
        slot_key = (plan.key, plan.zone)
        with self._lock:
            done = self._flights.get(slot_key)
            mine = done is None
            if done is None:
                done = self._flights[slot_key] = threading.Event()
        if not mine:
            if wait:
                done.wait(self._config_timeout + 0.05)
            return
        if wait:
            self._run_flight(plan, done)
            return
        if self._closed:
            self._finish_flight(plan, done)
            return
        thread = threading.Thread(
            target=self._run_flight,
            args=(plan, done),
            name="replay-middleware-config",
            daemon=True,
        )
        with self._lock:
            self._threads.add(thread)
        thread.start()

    def _run_flight(self, plan: ConfigPlan, done: threading.Event) -> None:
        try:
            self._fetch_config(plan)
        finally:
            self._finish_flight(plan, done)

    def _finish_flight(self, plan: ConfigPlan, done: threading.Event) -> None:
        slot_key = (plan.key, plan.zone)
        with self._lock:
            if self._flights.get(slot_key) is done:
                del self._flights[slot_key]
            self._threads.discard(threading.current_thread())
        done.set()

    def _fetch_config(self, plan: ConfigPlan) -> None:
        import httpx

        status: int | None = None
        reason = "ok"
        entry = None
        deadline = time.monotonic() + self._config_timeout
        try:
            response = self.client.send(
                self._config_request(plan), stream=True, follow_redirects=False, auth=None
            )
            try:
                status = response.status_code
                body = b""
                if status == 200:
                    chunks: list[bytes] = []
                    size = 0
                    for chunk in response.iter_bytes():
                        size += len(chunk)
                        if size > MAX_CONFIG_BYTES or time.monotonic() > deadline:
                            raise _Deadline if size <= MAX_CONFIG_BYTES else _TooBig
                        chunks.append(chunk)
                    body = b"".join(chunks)
            finally:
                response.close()
            entry, reason = self._config_outcome(response, body)
        except _Deadline:
            reason = "upstream_timeout"
        except _TooBig:
            reason = "upstream_bad_body"
        except httpx.HTTPError as exc:
            reason = _fault_kind(exc)
        except Exception:
            if self._closed:
                return  # the client was closed under a background refresh: nothing to report
            logger.exception("replay proxy: config fetch failed unexpectedly")
            reason = "upstream_error"
        self._store_config(plan, entry, status, reason)


class _SyncUpload(_UploadCore):
    """One sync upload in flight; all per-request state lives here (STYLE 5)."""

    proxy: UploadProxy

    def __init__(
        self,
        proxy: UploadProxy,
        plan: TrackPlan,
        read: Callable[[int], bytes],
        log: _Log,
        client_socket: socket.socket | None,
    ) -> None:
        super().__init__(proxy, plan, log, time.monotonic())
        self.read = read
        self.client_socket = client_socket
        self.pooled: SyncUpstreamResponse | None = None  # the answer on the proxy's own pool

    def release(self) -> None:
        """Return the pool slot and the client slot, feed the breaker and log the outcome;
        once."""
        if self._released:
            return
        self._released = True
        try:
            if self.pooled is not None:
                self.pooled.close()
            if self.response is not None:
                self.response.close()
        finally:
            self.spool.close()
            self.proxy.client_slots.release(self.plan.client)
            with self.proxy._lock:
                self.proxy._in_flight -= 1
                self._settle()
            self.log.emit()

    def _answer(self, response: ProxyResponse, reason: str) -> ProxyReply:
        self.log.status, self.log.reason = response.status, reason
        return ProxyReply.complete(response, reason, self.release)

    def _next(self) -> tuple[bytes, bool]:
        """The next chunk of the client's body and whether more follow."""
        if time.monotonic() >= self.deadlines.body:
            raise _Deadline
        want = self.gate.want()
        if want == 0:
            return b"", False
        try:
            chunk = self.read(want)
        except Exception as exc:
            # A read the reaper cut short, or a client gone.
            if time.monotonic() >= self.deadlines.body:
                raise _Deadline from exc
            raise _ClientGone from exc
        if len(chunk) < want and time.monotonic() >= self.deadlines.body:
            raise _Deadline  # cut short by the reaper: not a client that sent too little
        return chunk, self.gate.more_after(chunk)

    def _read_body(self) -> tuple[ProxyResponse, str] | None:
        """Read the whole body into the spool before the body deadline (raises ``_Deadline``,
        ``_ClientGone``, ``_BodyRejected``); None: it may go up, else the 415 to answer."""
        reaper = self.proxy._reaper
        sock = self.client_socket
        token = None if sock is None else reaper.watch(sock, self.deadlines.body)
        try:
            while not self.gate.complete:
                if not _take(self.gate, self.spool, *self._next()):
                    return _UNSUPPORTED, "unsupported_payload"
        finally:
            if token is not None and reaper.unwatch(token) and not self.gate.complete:
                raise _Deadline
        return None if self.gate.verdict() else (_UNSUPPORTED, "unsupported_payload")

    def run(self) -> ProxyReply:
        pool = self.proxy._pool
        try:
            refused = self._read_body()
            if refused is not None:
                return self._answer(*refused)
            if pool is not None:
                size = self.spool.size
                limits = self.proxy._upload_timeouts(self.deadlines.total_left(time.monotonic()))
                self.pooled = pool.post(
                    self.plan.url,
                    with_content_length(self.plan.headers, size),
                    self.spool.chunks(),
                    size,
                    timeout=limits["read"],
                    connect_timeout=limits["connect"],
                    pool_timeout=limits["pool"],
                )
            else:
                request = self._request(self.spool.chunks(), time.monotonic())
                self.response = self.proxy.client.send(
                    request, stream=True, follow_redirects=False, auth=None
                )
        except Exception as exc:
            return self._answer(*self._failure(exc))
        if self.pooled is not None:
            return self._relay_pooled(self.pooled)
        assert self.response is not None
        return self._relay(self.response)

    def _relay_pooled(self, response: SyncUpstreamResponse) -> ProxyReply:
        status = response.status
        self.log.upstream = status
        if upstream_status_is_redirect(status):
            self.upstream_ok = False
            return self._answer(fault_response("upstream_redirect"), "upstream_redirect")
        self.log.status = status
        if status >= 400:
            self.log.reason = _upstream_reason(status)
        headers = filter_response_headers(response.headers, raw=True)
        return ProxyReply(status, headers, self._stream_pooled(response), self.release)

    def _stream_pooled(self, response: SyncUpstreamResponse) -> Iterator[bytes]:
        try:
            for chunk in response.iter_raw():
                if chunk:
                    self.log.bytes_out += len(chunk)
                    yield chunk
        except UpstreamFault as exc:
            raise self._aborted(exc) from exc
        self.upstream_ok = response.status < 500

    def _relay(self, response: httpx.Response) -> ProxyReply:
        relayed = self._relay_start(response)
        if relayed is None:
            return self._answer(fault_response("upstream_redirect"), "upstream_redirect")
        headers, preread = relayed
        return ProxyReply(
            response.status_code, headers, self._stream(response, preread), self.release
        )

    def _stream(self, response: httpx.Response, preread: bool) -> Iterator[bytes]:
        import httpx

        try:
            chunks = iter((response.content,)) if preread else response.iter_raw()
            for chunk in chunks:
                if chunk:
                    self.log.bytes_out += len(chunk)
                    yield chunk
        except httpx.HTTPError as exc:
            raise self._aborted(exc) from exc
        self.upstream_ok = response.status_code < 500
