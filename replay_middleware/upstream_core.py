"""The sans-IO core of the upload proxy (SPEC P4, P5, P7): what the async and the sync twin share.

No network I/O and no event loop here (STYLE 1, 12): request admission (the rules themselves are
in :mod:`replay_middleware.proxy`), the upstream request headers and the response-header relay,
the outcome log line and its redaction, the body gate (cap, declared length, first-bytes sniff)
and the spool that holds a body until it is complete (memory, then an anonymous temporary
file), the config cache bookkeeping and the reply types. The transports live in
:mod:`replay_middleware.upstream_async` (``AsyncUploadProxy``, ASGI) and
:mod:`replay_middleware.upstream_sync` (``UploadProxy``, WSGI); :mod:`replay_middleware.upstream`
re-exports the public names.

Importing this module does not import httpx.
"""

from __future__ import annotations

import http.cookiejar
import logging
import tempfile
import time
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterator,
    MutableMapping,
)
from typing import IO, TYPE_CHECKING, Any, Final

from .proxy import (
    CLIENT_BUSY,
    CONFIG_STALE_IF_ERROR,
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
from .upstream_http import UpstreamFault

if TYPE_CHECKING:
    from http.client import HTTPResponse
    from urllib.request import Request as UrllibRequest

    import httpx

    from .config import ReplayConfig
    from .request import RequestInfo

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

    if isinstance(exc, UpstreamFault):
        return exc.kind
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

    def views(self, size: int) -> Iterator[bytes | memoryview]:
        """:meth:`chunks` without copies while the body is in memory: views of up to
        ``size`` bytes into the held buffer (valid until :meth:`close`)."""
        if self._file is not None:
            yield from self.chunks()
            return
        view = memoryview(self._memory)
        for start in range(0, len(view), size):
            yield view[start : start + size]

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
        if isinstance(exc, (httpx.HTTPError, UpstreamFault)):
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


class _TooBig(Exception):
    pass
