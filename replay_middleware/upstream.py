"""AsyncUploadProxy and UploadProxy: the I/O of the first-party upload proxy (SPEC P4, P5, P7).

Every rule lives in the sans-IO ``proxy`` module; these classes only move bytes between the
client and one pooled httpx client (STYLE 12: the async and the sync twin share ``_ProxyCore``
and the pure helpers; only the transport calls are written twice). ``AsyncUploadProxy`` speaks
ASGI ``receive``/``send`` (``handle_track``/``handle_config``) and a framework-neutral stream
form (``track_stream``, for Django under ASGI); ``UploadProxy`` is the sync twin for WSGI and
Django (``track``/``config`` returning a :class:`ProxyReply`). Use one instance per middleware
and close it on shutdown::

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
- The response comes back with ``aiter_raw()`` (never decoded). Every response is closed in
  ``finally`` (shielded from cancellation), so pool slots and client slots return on every
  path.
- A client that disconnects cancels the upstream request (its ``http.disconnect`` is raced
  against the upstream exchange in an anyio task group). The whole exchange has a budget of
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
import contextlib
import heapq
import http.cookiejar
import itertools
import logging
import socket
import tempfile
import threading
import time
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Iterator,
    MutableMapping,
)
from typing import IO, TYPE_CHECKING, Any, Final

import anyio

from .proxy import (
    CLIENT_BUSY,
    CONFIG_STALE_IF_ERROR,
    DEFAULT_UPSTREAMS,
    MAX_CONFIG_BYTES,
    Breaker,
    ClientSlots,
    ConfigEntry,
    ConfigPlan,
    ConfigSlot,
    KeyMap,
    ProxyResponse,
    Rejection,
    RemoteSampling,
    TrackPlan,
    TrustedProxies,
    UploadCounter,
    UploadDeadlines,
    Upstreams,
    config_entry,
    config_is_fresh,
    config_reply,
    config_should_fetch,
    error_response,
    fault_response,
    filter_response_headers,
    key_id,
    looks_like_a_proxy,
    plan_config,
    plan_track,
    redact_url,
    sniff_body,
    upload_deadlines,
    upstream_status_is_redirect,
    with_content_length,
)

if TYPE_CHECKING:
    from http.client import HTTPResponse
    from urllib.request import Request as UrllibRequest

    import httpx
    from anyio.abc import TaskGroup

    from .config import ReplayConfig
    from .request import RequestInfo

__all__ = [
    "AsyncProxyReply",
    "AsyncUploadProxy",
    "NullCookieJar",
    "ProxyReply",
    "ResponseAborted",
    "UploadProxy",
]

logger = logging.getLogger("replay_middleware.proxy")

# ASGI aliases, local as in asgi.py (STYLE 16).
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

USER_AGENT: Final = "replay-middleware"
#: Upstream config budget: the SDK aborts each config attempt after 1 000 ms (PROTOCOL §1.5).
CONFIG_TIMEOUT: Final = 0.8
#: After a failed config fetch, serve the stale copy or the fallback at once for this long.
CONFIG_FAILURE_BACKOFF: Final = 2.0
#: The background remote-sampling refresh runs at most this often, whatever the TTL.
MIN_BACKGROUND_REFRESH: Final = 5.0
_SNIFF_BYTES: Final = 1100


class ResponseAborted(Exception):
    """The upstream response broke after its start was sent to the client. The ASGI server
    must abort the connection (no fabricated success); do not try to send another response."""


class NullCookieJar(http.cookiejar.CookieJar):
    """A cookie jar that never stores anything: an upstream ``Set-Cookie`` must not ride along
    on later requests for other visitors (Gradio GHSA-2mr9-9r47-px2g, notes/proxy.md §4)."""

    def set_cookie(self, cookie: http.cookiejar.Cookie) -> None:
        return None

    def set_cookie_if_ok(self, cookie: http.cookiejar.Cookie, request: UrllibRequest) -> None:
        return None

    def extract_cookies(self, response: HTTPResponse, request: UrllibRequest) -> None:
        return None


class _RedactUpstreamUrls(logging.Filter):
    """Keeps httpx's own "HTTP Request: POST <url>" INFO line from printing our upstream URLs
    in full (the config key is a path segment, a beacon's ``api_key`` is in the query): for
    those URLs only, the logged URL is :func:`proxy.redact_url`'s. Other httpx traffic of the
    app is left alone."""

    def __init__(self) -> None:
        super().__init__()
        self.prefixes: tuple[str, ...] = ()

    def add(self, upstreams: Upstreams) -> None:
        urls = {*upstreams.track.values(), *upstreams.config.values()}
        self.prefixes = tuple(sorted({*self.prefixes, *urls}))

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 2:
            url = str(args[1])
            if url.startswith(self.prefixes):
                record.args = (args[0], redact_url(url), *args[2:])
        return True


_HTTPX_LOG_FILTER: Final = _RedactUpstreamUrls()


class _ClientGone(Exception):
    """The client disconnected while we read its body."""


class _BodyRejected(Exception):
    def __init__(self, rejection: Rejection) -> None:
        super().__init__(rejection.reason)
        self.rejection = rejection


def _fault_kind(exc: Exception) -> str:
    """Reason code of an httpx transport error (statuses in ``proxy._FAULTS``)."""
    import httpx

    if isinstance(exc, httpx.PoolTimeout):
        return "pool_exhausted"
    if isinstance(exc, httpx.TimeoutException):
        return "upstream_timeout"
    if isinstance(exc, httpx.ConnectError):
        return "upstream_connect"
    if isinstance(exc, (httpx.ReadError, httpx.WriteError, httpx.CloseError, httpx.ProtocolError)):
        return "upstream_reset"
    return "upstream_error"


def _encode(
    headers: tuple[tuple[str, str], ...] | list[tuple[str, str]],
) -> list[tuple[bytes, bytes]]:
    return [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers]


async def _single(data: bytes) -> AsyncGenerator[bytes, None]:
    yield data


def _relay_headers(response: httpx.Response) -> tuple[list[tuple[str, str]], bool]:
    """The upstream response's headers to pass on, and whether httpx already read its body.

    A transport may hand back a response it already read and decoded (httpx's MockTransport,
    some test doubles): then its bytes are decoded, so the encoding and length headers must go
    (notes/proxy.md §4: never decoded bytes with raw headers)."""
    raw = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in response.headers.raw]
    preread = response.is_stream_consumed
    return filter_response_headers(raw, raw=not preread), preread


def _upstream_reason(status: int) -> str:
    """The outcome code of an upstream error status (>= 400)."""
    return f"upstream_{status}" if status >= 500 else "upstream_rejected"


def _claimed_key_id(request: RequestInfo) -> str:
    """The hashed key a rejected request presented (for logs: key mismatches are the most
    common set-up mistake), or "-"."""
    auth = request.headers.get("authorization", "")
    if auth[:7].lower() == "bearer ":
        return key_id(auth[7:].strip())
    for part in request.query_string.split("&"):
        if part.startswith("api_key="):
            return key_id(part[8:])
    return "-"


class _Log:
    """One outcome line per request on ``replay_middleware.proxy`` (O1, notes/proxy.md case
    50): method, route, status, upstream status, latency, bytes, reason, key hash. Never
    bodies, cookies, keys, query strings or client addresses."""

    __slots__ = (
        "bytes_in",
        "bytes_out",
        "key",
        "method",
        "reason",
        "route",
        "started",
        "status",
        "upstream",
    )

    def __init__(self, route: str, method: str) -> None:
        self.route = route
        self.method = method
        self.started = time.perf_counter()
        self.status: int | None = None
        self.upstream: int | None = None
        self.bytes_in = 0
        self.bytes_out = 0
        self.reason = "ok"
        self.key = "-"

    def emit(self) -> None:
        status = self.status or 0
        if self.reason.startswith(("upstream_", "pool_", "breaker_")) or status >= 500:
            level = logging.WARNING
        elif status >= 400 or self.reason != "ok":
            level = logging.INFO
        else:
            level = logging.DEBUG
        if not logger.isEnabledFor(level):
            return
        ms = (time.perf_counter() - self.started) * 1000
        logger.log(
            level,
            "replay proxy %s %s status=%s upstream=%s ms=%.1f in=%d out=%d reason=%s key=%s",
            self.method,
            self.route,
            self.status if self.status is not None else "-",
            self.upstream if self.upstream is not None else "-",
            ms,
            self.bytes_in,
            self.bytes_out,
            self.reason,
            self.key,
            extra={
                "replay_proxy": {
                    "method": self.method,
                    "route": self.route,
                    "status": self.status,
                    "upstream_status": self.upstream,
                    "latency_ms": round(ms, 1),
                    "bytes_in": self.bytes_in,
                    "bytes_out": self.bytes_out,
                    "reason": self.reason,
                    "key": self.key,
                }
            },
        )


async def _send_response(send: Send, response: ProxyResponse) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": response.status,
            "headers": _encode(response.headers),
        }
    )
    await send({"type": "http.response.body", "body": response.body, "more_body": False})


class _ProxyCore:
    """What the sync and async proxies share (STYLE 12): configuration, key map, timeouts,
    breakers and the config cache. No I/O here; each twin writes only its transport calls."""

    def __init__(
        self,
        config: ReplayConfig,
        *,
        keys: KeyMap | None,
        upstreams: Upstreams,
        limits: httpx.Limits | None,
        connect_timeout: float,
        pool_timeout: float,
        config_timeout: float,
        config_failure_backoff: float,
        breaker_threshold: int,
        breaker_open_for: float,
        clock: Callable[[], float],
        client: Any,
        transport: Any,
        kinds: tuple[type, type, str],
    ) -> None:
        import httpx

        client_type, transport_type, adapter = kinds
        injected: Any = config.http_client
        if client is None and transport is None and injected is not None:
            if isinstance(injected, client_type):
                client = injected
            elif isinstance(injected, transport_type):
                transport = injected
            else:
                raise ValueError(
                    f"ReplayConfig: http_client must be an httpx.{client_type.__name__} or an "
                    f"httpx.{transport_type.__name__} for the {adapter} middleware "
                    f"(got {type(injected)!r})"
                )
        self._client: Any = client
        self._transport = transport
        self._owns_client = client is None and transport is None
        self.replay_config = config
        self.keys = keys if keys is not None else KeyMap.from_config(config)
        self.upstreams = upstreams
        _HTTPX_LOG_FILTER.add(upstreams)
        httpx_logger = logging.getLogger("httpx")
        if _HTTPX_LOG_FILTER not in httpx_logger.filters:
            httpx_logger.addFilter(_HTTPX_LOG_FILTER)
        self.trusted = TrustedProxies.parse(config.trusted_proxies)
        self._limits = limits or httpx.Limits(
            max_connections=100, max_keepalive_connections=20, keepalive_expiry=5.0
        )
        budget = config.upstream_timeout
        # Per-operation limits; the whole exchange is also capped at `budget` (P5).
        self._track_timeout = httpx.Timeout(
            connect=min(connect_timeout, budget), read=budget, write=budget, pool=pool_timeout
        ).as_dict()
        self._config_timeout = config_timeout
        self._config_timeouts = httpx.Timeout(
            config_timeout, pool=min(pool_timeout, config_timeout)
        ).as_dict()
        self._failure_backoff = config_failure_backoff
        self._clock = clock
        self._breakers: dict[str, Breaker] = {
            zone: Breaker(breaker_threshold, breaker_open_for) for zone in ("US", "EU")
        }
        self._config: dict[tuple[str, str], ConfigSlot] = {}
        self._failing: set[tuple[str, str]] = set()
        self._in_flight = 0
        self._closed = False
        #: Uploads in flight per client address (``max_uploads_per_client``).
        self.client_slots = ClientSlots(config.max_uploads_per_client)
        self._proxy_hint_logged = False

    @property
    def in_flight(self) -> int:
        """Uploads being handled: reading their body, or holding (or waiting for) an upstream
        connection."""
        return self._in_flight

    def _deadlines(self, now: float) -> UploadDeadlines:
        return upload_deadlines(
            now,
            client_body_timeout=self.replay_config.client_body_timeout,
            upstream_timeout=self.replay_config.upstream_timeout,
        )

    def _upload_timeouts(self, left: float) -> dict[str, float | None]:
        """httpx timeouts of an upload sent with ``left`` seconds of its budget remaining:
        no operation may outlast the budget (the sync twin has no cancel scope around it)."""
        left = max(left, 0.001)
        return {
            name: value if value is None else min(value, left)
            for name, value in self._track_timeout.items()
        }

    def _client_options(self) -> dict[str, Any]:
        """The pooled client's safe defaults (P7), the same for ``httpx.Client`` and
        ``httpx.AsyncClient``."""
        import httpx

        return {
            "transport": self._transport,
            "follow_redirects": False,  # P1: where traffic goes is never up to the answer
            "trust_env": False,  # no HTTP(S)_PROXY, NO_PROXY, SSL_CERT_FILE, .netrc
            "cookies": NullCookieJar(),
            "limits": self._limits,
            "timeout": httpx.Timeout(**self._track_timeout),
            "http1": True,
            "http2": False,  # HTTP/2 GOAWAY races are open issues (httpx #3324)
            "verify": True,  # TLS always verified (notes/proxy.md case 39)
        }

    def _plan_track(self, request: RequestInfo) -> TrackPlan | Rejection:
        return plan_track(
            request,
            keys=self.keys,
            upstreams=self.upstreams,
            trusted=self.trusted,
            ip_mode=self.replay_config.forward_client_ip,
            max_upload_bytes=self.replay_config.max_upload_bytes,
            user_agent=USER_AGENT,
        )

    def _admit_track(self, request: RequestInfo, log: _Log) -> TrackPlan | ProxyResponse:
        """The plan of an upload, or the answer that refuses it (a rejection, an open
        breaker) with ``log`` filled in: ``log.reason`` is then the outcome code."""
        plan = self._plan_track(request)
        if isinstance(plan, Rejection):
            log.status, log.reason = plan.status, plan.reason
            log.key = _claimed_key_id(request)
            return plan.response()
        log.key = plan.key_id
        retry = self._breakers[plan.zone].retry_after(self._clock())
        if retry is not None:
            log.status, log.reason = 503, "breaker_open"
            return fault_response("breaker_open", retry_after=retry)
        # Last, so that only an admitted upload holds a slot; the caller releases it.
        if not self.client_slots.acquire(plan.client):
            log.status, log.reason = CLIENT_BUSY.status, CLIENT_BUSY.reason
            if not self._proxy_hint_logged and looks_like_a_proxy(plan.client, self.trusted):
                self._proxy_hint_logged = True
                logger.warning(
                    "replay proxy: a private address reached max_uploads_per_client=%d and "
                    "trusted_proxies is empty; if it is your load balancer, every visitor "
                    "shares its cap: set trusted_proxies",
                    self.client_slots.limit,
                )
            return CLIENT_BUSY.response()
        return plan

    def _admit_config(
        self, request: RequestInfo, key: str, log: _Log
    ) -> ConfigPlan | ProxyResponse:
        """The plan of a config fetch, or the rejection's answer with ``log`` filled in."""
        plan = plan_config(request, key, keys=self.keys, upstreams=self.upstreams)
        if isinstance(plan, Rejection):
            log.status, log.reason = plan.status, plan.reason
            log.key = key_id(key) if plan.status == 403 else "-"
            return plan.response()
        log.key = plan.key_id
        return plan

    def _config_stale(self, plan: ConfigPlan, asked_at: float) -> bool:
        """Whether a config request asked at ``asked_at`` must fetch before answering."""
        return config_should_fetch(
            self._config.get((plan.key, plan.zone)),
            asked_at,
            self.replay_config.config_cache_ttl,
            self._failure_backoff,
        )

    def _record_breaker(self, zone: str, ok: bool | None) -> None:
        if ok is not None:
            self._breakers[zone] = self._breakers[zone].record(ok, self._clock())

    def _background_plan(self, key: str | None) -> ConfigPlan | None:
        """The config plan for ``key`` (default: the configured key), None if unknown."""
        matched = self.keys.match(key if key is not None else self.keys.primary)
        if matched is None:
            return None
        cfg_key, zone = matched
        return ConfigPlan(
            url=self.upstreams.config_url(zone, cfg_key),
            key=cfg_key,
            zone=zone,
            key_id=key_id(cfg_key),
            head=False,
        )

    def _cached_sampling(self, plan: ConfigPlan, now: float) -> RemoteSampling | None:
        slot = self._config.get((plan.key, plan.zone))
        entry = slot.entry if slot else None
        if entry is None or not config_is_fresh(slot, now, CONFIG_STALE_IF_ERROR):
            return None
        return entry.sampling

    def _stored_sampling(self, plan: ConfigPlan) -> RemoteSampling | None:
        """The sampling of the last good copy, however old (after an explicit refresh)."""
        slot = self._config.get((plan.key, plan.zone))
        return slot.entry.sampling if slot and slot.entry else None

    def _config_request(self, plan: ConfigPlan) -> httpx.Request:
        """The upstream request of a config fetch."""
        import httpx

        return httpx.Request(
            "GET",
            plan.url,
            headers=[
                ("accept", "*/*"),
                ("accept-encoding", "identity"),
                ("user-agent", USER_AGENT),
            ],
            extensions={"timeout": self._config_timeouts},
        )

    def _config_outcome(
        self, response: httpx.Response, body: bytes
    ) -> tuple[ConfigEntry | None, str]:
        """The cache entry a fetched config makes (None: unusable) and the outcome code."""
        status = response.status_code
        entry = config_entry(status, response.headers.get("content-type", ""), body, self._clock())
        if entry is not None:
            return entry, "ok"
        return None, f"upstream_status_{status}" if status != 200 else "upstream_bad_body"

    def _wants_background_fetch(self, plan: ConfigPlan, now: float) -> bool:
        every = max(self.replay_config.config_cache_ttl, MIN_BACKGROUND_REFRESH)
        return not self._closed and config_should_fetch(
            self._config.get((plan.key, plan.zone)), now, every, self._failure_backoff
        )

    def _config_answer(self, plan: ConfigPlan, asked_at: float, log: _Log) -> ProxyResponse:
        """The config response once any fetch for this request is over."""
        slot = self._config.get((plan.key, plan.zone))
        just_fetched = bool(slot and slot.entry and slot.entry.fetched_at >= asked_at)
        response, source = config_reply(
            slot,
            self._clock(),
            ttl=self.replay_config.config_cache_ttl,
            head=plan.head,
            just_fetched=just_fetched,
        )
        log.status, log.bytes_out = response.status, len(response.body)
        log.reason = "ok" if source == "fresh" else f"config_{source}"
        return response

    def _warn_if_nothing_records(self, remote: RemoteSampling | None) -> None:
        """O4: after the first remote config fetch (``remote`` None: it failed), warn when
        the effective sample rate is still 0, so that no session will be recorded."""
        config = self.replay_config
        if config.force_sample is not None or (remote is not None and remote.targeting):
            return  # some sessions may record: forced ones, or the SDK's targeting decides
        if remote is not None and not remote.capture_enabled:
            why = "the project's remote config disables capture (capture_enabled is false)"
        elif remote is not None and remote.sample_rate is not None:
            if remote.sample_rate > 0:
                return
            why = "the project's remote config sets a sample rate of 0"
        elif config.sample_rate > 0:
            return
        elif remote is None:
            why = (
                "sample_rate is 0 and the project's remote config could not be fetched "
                "(check api_key, server_zone and outbound network access)"
            )
        else:
            why = "sample_rate is 0 and the project's remote config sets no sample rate"
        logger.warning(
            "replay-middleware: %s, so no session will be recorded; set a sample rate in the "
            "project's Session Replay settings or sample_rate",
            why,
        )

    def _store_config(
        self, plan: ConfigPlan, entry: ConfigEntry | None, status: int | None, reason: str
    ) -> None:
        """Record the outcome of a config fetch: the new entry, or a failure that keeps the
        last good copy (stale-if-error) and is logged once per outage."""
        slot_key = (plan.key, plan.zone)
        previous = self._config.get(slot_key)
        if previous is None and plan.key == self.keys.primary:
            # The first fetch for the configured key, once per proxy (O4).
            self._warn_if_nothing_records(entry.sampling if entry is not None else None)
        if entry is not None:
            self._config[slot_key] = ConfigSlot(entry=entry)
            if slot_key in self._failing:
                self._failing.discard(slot_key)
                logger.info("replay proxy: remote config for %s fetched again", plan.key_id)
            return
        self._config[slot_key] = ConfigSlot(
            entry=previous.entry if previous else None, failed_at=self._clock()
        )
        # Logged once per outage; the per-request lines show the rest.
        level = logging.DEBUG if slot_key in self._failing else logging.WARNING
        self._failing.add(slot_key)
        logger.log(
            level,
            "replay proxy: remote config fetch failed (%s, upstream=%s, key=%s); serving %s",
            reason,
            status if status is not None else "-",
            plan.key_id,
            "the last good copy" if previous and previous.entry else "the fallback config",
        )


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
        self._tg: TaskGroup | None = None

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
        async with anyio.create_task_group() as tg:
            self._tg = tg
            # The body is in: from now on receive() only reports a disconnect.
            tg.start_soon(self._watch_disconnect)
            with anyio.CancelScope(deadline=self.deadlines.total) as budget:
                try:
                    await self._exchange()
                except Exception:
                    # A bug of ours or an exotic transport: never let it out of the task group
                    # (it would surface as an ExceptionGroup), and still answer something the
                    # SDK retries, or abort if the response already started.
                    logger.exception("replay proxy: upload exchange failed unexpectedly")
                    self.upstream_ok = None
                    if self.started:
                        self.aborted = True
                        self.log.reason = "proxy_error"
                    else:
                        await self.reply(fault_response("upstream_error"), "proxy_error")
            if budget.cancelled_caught:
                await self._on_budget_spent()
            tg.cancel_scope.cancel()
        if self.client_gone and not self.finished:
            self.log.reason = "client_abort"

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
        if not self.finished and self._tg is not None:
            self.client_gone = True
            self._tg.cancel_scope.cancel()

    async def _exchange(self) -> None:
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

    async def _relay(self, response: httpx.Response) -> None:
        import httpx

        status = response.status_code
        self.log.upstream = status
        if upstream_status_is_redirect(status):
            self.upstream_ok = False
            await self.reply(fault_response("upstream_redirect"), "upstream_redirect")
            return
        headers, preread = _relay_headers(response)
        self.log.status = status
        if not await self._emit(
            {"type": "http.response.start", "status": status, "headers": _encode(headers)}
        ):
            return
        self.started = True
        try:
            chunks = _single(response.content) if preread else response.aiter_raw()
            async for chunk in chunks:
                if chunk:
                    self.log.bytes_out += len(chunk)
                    if not await self._emit(
                        {"type": "http.response.body", "body": chunk, "more_body": True}
                    ):
                        return
        except httpx.HTTPError as exc:
            # Mid-response: no fabricated success (case 38); the caller aborts the client.
            self.upstream_ok = False
            self.aborted = True
            self.log.reason = _fault_kind(exc)
            return
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


# --- the framework-neutral API: sync twin (WSGI, Django) and async streams (Django ASGI) --------

#: Bytes asked of the client's body per read.
READ_CHUNK: Final = 64 * 1024


class _BodyGate:
    """The checks every upload body passes as it streams (sans-IO, shared by both twins):
    the cap and the declared length (:class:`UploadCounter`), and the first-bytes sniff."""

    __slots__ = ("complete", "counter", "head")

    def __init__(self, limit: int, declared: int | None) -> None:
        self.counter = UploadCounter(limit, declared)
        self.head = b""
        self.complete = False

    def want(self) -> int:
        """How many bytes to ask for next (0: the declared length is in)."""
        declared = self.counter.declared
        if declared is None:
            return READ_CHUNK
        return max(0, min(READ_CHUNK, declared - self.counter.total))

    def add(self, chunk: bytes, more: bool) -> None:
        """Count ``chunk``; raises ``_BodyRejected`` (413 over the cap, 400 on bad length)."""
        rejection = self.counter.add(len(chunk))
        if rejection is None and not more:
            self.complete = True
            rejection = self.counter.finish()
        if rejection is not None:
            raise _BodyRejected(rejection)
        if len(self.head) < _SNIFF_BYTES:
            self.head += chunk[: _SNIFF_BYTES - len(self.head)]

    def more_after(self, chunk: bytes) -> bool:
        """Whether more body follows ``chunk`` (known only with a declared length)."""
        declared = self.counter.declared
        if not chunk:
            return False
        return declared is None or self.counter.total + len(chunk) < declared

    def verdict(self) -> bool | None:
        return sniff_body(self.head, self.complete)


class _Spool:
    """An upload body held until it is complete (case 43): in memory up to ``limit`` bytes
    (``upload_memory_bytes``), the rest in an anonymous temporary file, so each upload in
    flight costs at most about ``limit`` of memory whatever its size. The file is unlinked as
    it is made (``tempfile.TemporaryFile``, in ``TMPDIR``): nothing is left behind, even by a
    crash. The async twin writes and reads it on the event loop: page-cache I/O of at most
    64 KiB at a time, as Django's ASGI handler does with its own request-body spool."""

    __slots__ = ("_file", "_limit", "_memory", "size")

    def __init__(self, limit: int) -> None:
        self._limit = limit
        # One growing buffer rather than a list of chunks: a client sending its body in
        # 1-byte pieces costs 1 byte each, not a Python object each.
        self._memory = bytearray()
        self._file: IO[bytes] | None = None
        self.size = 0

    @property
    def spilled(self) -> bool:
        """Whether the body went past the memory threshold into a temporary file."""
        return self._file is not None

    def write(self, chunk: bytes) -> None:
        if not chunk:
            return
        self.size += len(chunk)
        if self._file is None:
            if len(self._memory) + len(chunk) <= self._limit:
                self._memory += chunk
                return
            # Closed by close(), which every upload's release calls.
            self._file = tempfile.TemporaryFile(prefix="replay-upload-")  # noqa: SIM115
            self._file.write(self._memory)
            self._memory = bytearray()
        self._file.write(chunk)

    def chunks(self) -> Iterator[bytes]:
        """The body from its start, in pieces of at most :data:`READ_CHUNK` bytes."""
        if self._file is None:
            memory = self._memory
            for start in range(0, len(memory), READ_CHUNK):
                yield bytes(memory[start : start + READ_CHUNK])
            return
        self._file.seek(0)
        while chunk := self._file.read(READ_CHUNK):
            yield chunk

    async def achunks(self) -> AsyncGenerator[bytes, None]:
        for chunk in self.chunks():
            yield chunk

    def close(self) -> None:
        self._memory = bytearray()
        if self._file is not None:
            self._file.close()
            self._file = None


def _take(gate: _BodyGate, spool: _Spool, chunk: bytes, more: bool) -> bool:
    """Check and keep one chunk of a body (raises ``_BodyRejected``); False as soon as its
    first bytes show it is neither JSON nor gzip (a 415 at once, not after the whole body)."""
    gate.add(chunk, more)
    spool.write(chunk)
    return gate.verdict() is not False


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


_UNSUPPORTED: Final = ProxyResponse(
    415,
    (("content-type", "application/json"), ("cache-control", "no-store")),
    b'{"error":"unsupported_payload"}',
)


class _UploadCore:
    """What an upload of :meth:`UploadProxy.track` and one of
    :meth:`AsyncUploadProxy.track_stream` share (STYLE 12): the per-request state (the body
    gate, the spool, the deadlines in the twin's clock), the upstream request, how a failure
    is answered and how the upstream answer is read. No I/O."""

    def __init__(self, proxy: _ProxyCore, plan: TrackPlan, log: _Log, now: float) -> None:
        self.proxy = proxy
        self.plan = plan
        self.log = log
        self.gate = _BodyGate(proxy.replay_config.max_upload_bytes, plan.content_length)
        self.spool = _Spool(proxy.replay_config.upload_memory_bytes)
        self.deadlines = proxy._deadlines(now)
        self.upstream_ok: bool | None = None  # for the breaker; None = not the upstream's doing
        self.response: httpx.Response | None = None
        self._released = False

    def _request(
        self, content: Iterator[bytes] | AsyncIterator[bytes], now: float
    ) -> httpx.Request:
        """The upstream request of a body read whole (its length known), with httpx's
        timeouts bounded by what is left of the total budget at ``now``."""
        import httpx

        return httpx.Request(
            "POST",
            self.plan.url,
            headers=with_content_length(self.plan.headers, self.spool.size),
            content=content,
            extensions={"timeout": self.proxy._upload_timeouts(self.deadlines.total_left(now))},
        )

    def _failure(self, exc: Exception) -> tuple[ProxyResponse, str]:
        """The answer (and outcome code) to a failure before the upstream answered; call it
        from the ``except`` block (an unexpected error is logged with its traceback)."""
        import httpx

        if isinstance(exc, _ClientGone):
            return error_response(400, "client_abort"), "client_abort"
        if isinstance(exc, _BodyRejected):
            return exc.rejection.response(), exc.rejection.reason
        if isinstance(exc, _Deadline):
            return fault_response("client_timeout"), "client_timeout"
        if isinstance(exc, httpx.HTTPError):
            kind = _fault_kind(exc)
            if kind != "pool_exhausted":
                self.upstream_ok = False
            return fault_response(kind), kind
        logger.exception("replay proxy: upload exchange failed unexpectedly")
        return fault_response("upstream_error"), "proxy_error"

    def _relay_start(self, response: httpx.Response) -> tuple[list[tuple[str, str]], bool] | None:
        """The headers to relay and whether the body was preread (:func:`_relay_headers`),
        with the log filled in; None when the upstream redirects (answer 502)."""
        status = response.status_code
        self.log.upstream = status
        if upstream_status_is_redirect(status):
            self.upstream_ok = False
            return None
        relayed = _relay_headers(response)
        self.log.status = status
        if status >= 400:
            self.log.reason = _upstream_reason(status)
        return relayed

    def _aborted(self, exc: Exception) -> ResponseAborted:
        """The upstream broke mid-response: no fabricated success (case 38); the server
        aborts the client."""
        self.upstream_ok = False
        self.log.reason = _fault_kind(exc)
        return ResponseAborted(self.log.reason)

    def _settle(self) -> None:
        """Feed the breaker and log the outcome (the caller holds any lock)."""
        self.proxy._record_breaker(self.plan.zone, self.upstream_ok)
        self.log.bytes_in = self.gate.counter.total


class ProxyReply:
    """What :meth:`UploadProxy.track` / :meth:`UploadProxy.config` answer, for any sync
    framework: ``status``, ``headers`` (lower-case names) and ``body``, an iterator that
    streams the upstream response raw. ``close()`` releases the upstream response and its pool
    slot and writes the outcome log line; the caller must always call it (a WSGI iterable's
    ``close()``, a Django ``StreamingHttpResponse``'s closers). Idempotent.

    Iterating ``body`` may raise :class:`ResponseAborted` when the upstream breaks mid-response:
    the server must then abort the client connection. ``reason`` is the outcome code of the
    log line (``ok``, ``too_large``, ``upstream_timeout``, ``client_abort``, ...).
    """

    __slots__ = ("_closed", "_closer", "body", "headers", "reason", "status")

    def __init__(
        self,
        status: int,
        headers: list[tuple[str, str]],
        body: Iterator[bytes],
        closer: Callable[[], None] | None = None,
        reason: str = "ok",
    ) -> None:
        self.status = status
        self.headers = headers
        self.body = body
        self.reason = reason
        self._closer = closer
        self._closed = False

    @classmethod
    def complete(
        cls, response: ProxyResponse, reason: str, closer: Callable[[], None] | None = None
    ) -> ProxyReply:
        return cls(response.status, list(response.headers), iter((response.body,)), closer, reason)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._closer is not None:
            self._closer()


class AsyncProxyReply:
    """The async form of :class:`ProxyReply` (``body`` an async iterator; ``await aclose()``)."""

    __slots__ = ("_closed", "_closer", "body", "headers", "reason", "status")

    def __init__(
        self,
        status: int,
        headers: list[tuple[str, str]],
        body: AsyncIterator[bytes],
        closer: Callable[[], Awaitable[None]] | None = None,
        reason: str = "ok",
    ) -> None:
        self.status = status
        self.headers = headers
        self.body = body
        self.reason = reason
        self._closer = closer
        self._closed = False

    @classmethod
    def complete(
        cls,
        response: ProxyResponse,
        reason: str,
        closer: Callable[[], Awaitable[None]] | None = None,
    ) -> AsyncProxyReply:
        return cls(response.status, list(response.headers), _single(response.body), closer, reason)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._closer is not None:
            await self._closer()


class _Deadline(Exception):
    """The total budget ran out while we read the client's body."""


def _async_emit(log: _Log) -> Callable[[], Awaitable[None]]:
    async def emit() -> None:
        log.emit()

    return emit


class UploadProxy(_ProxyCore):
    """The sync twin of :class:`AsyncUploadProxy`, for WSGI servers and Django (STYLE 12).

    One pooled ``httpx.Client`` (created on first use with the same safe defaults: no
    redirects, ``trust_env=False``, a cookie jar that stores nothing, explicit limits, TLS
    verified, HTTP/1.1). ``config.http_client`` may be an ``httpx.Client`` or an
    ``httpx.BaseTransport``; the keyword arguments are the async twin's. Thread-safe::

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
    reads of the client's body and by httpx's per-operation timeouts (a single blocked read
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


class _TooBig(Exception):
    pass


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

    def release(self) -> None:
        """Return the pool slot and the client slot, feed the breaker and log the outcome;
        once."""
        if self._released:
            return
        self._released = True
        try:
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
        try:
            refused = self._read_body()
            if refused is not None:
                return self._answer(*refused)
            request = self._request(self.spool.chunks(), time.monotonic())
            self.response = self.proxy.client.send(
                request, stream=True, follow_redirects=False, auth=None
            )
        except Exception as exc:
            return self._answer(*self._failure(exc))
        return self._relay(self.response)

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

    async def release(self) -> None:
        if self._released:
            return
        self._released = True
        try:
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
        try:
            refused = await self._read_body()
            if refused is not None:
                return self._answer(*refused)
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
