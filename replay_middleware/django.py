"""Django integration: ``replay_middleware.django.ReplayMiddleware`` (SPEC F3).

Translates Django's request and response objects into engine calls and back (STYLE 3); the
rules live in the core. Sync and async capable (STYLE 14): under ASGI with an async stack it
never blocks the event loop, under WSGI it stays synchronous.

Settings (one dict, read once when Django builds the middleware)::

    INSTALLED_APPS += ["replay_middleware"]          # template tag + system checks
    MIDDLEWARE = [
        "django.middleware.gzip.GZipMiddleware",     # if used: listed BEFORE ours
        "replay_middleware.django.ReplayMiddleware",
        "csp.middleware.CSPMiddleware",              # django-csp / Django 6 CSP: AFTER ours
        ...
    ]
    REPLAY_MIDDLEWARE = {"api_key": "...", "sample_rate": 0.1, "exclude": ["/admin/*"]}

Keys are ``ReplayConfig`` option names. Without ``secret_key`` the identity cookie is signed
with a key derived from ``settings.SECRET_KEY`` (and verified also with keys derived from
``settings.SECRET_KEY_FALLBACKS``, so rotating Django's secret keeps visitors' ids).

Per request:

- under ``prefix`` (``/_replay``) the first-party endpoints answer before any view, CSRF or
  upload limit: an upload is read from the request stream with our own ``max_upload_bytes``
  cap, never through ``request.body`` (so ``DATA_UPLOAD_MAX_MEMORY_SIZE`` does not apply);
- elsewhere ``request.replay`` (computed on first use) and ``current_replay()`` give the
  decision to views; HTML responses get the snippet: ``HttpResponse`` bodies whole (exact
  ``Content-Length``), ``StreamingHttpResponse`` by reading only the head of the stream (sync
  or async iterator) and chaining the rest untouched; ``FileResponse`` passes through. One
  exception: an async iterator under WSGI is read whole, in one event loop, as Django's WSGI
  handler itself would (an async generator cannot outlive the loop it started in);
- with an ``api_key`` and ``upload_mode="proxy"``, ``/track`` and ``/config/<key>`` go to the
  upload proxy (``UploadProxy`` under WSGI, ``AsyncUploadProxy`` under ASGI); under ASGI
  Django has already received the body (spooled to disk past FILE_UPLOAD_MAX_MEMORY_SIZE)
  before any middleware runs, so the cap bounds what we forward, not what Django receives;
- a nonce the app generated (django-csp 4's ``request.csp_nonce``, Django 6's
  ``get_nonce(request)``) is reused when every policy that needs a nonce carries it; it is
  never forced from here (``bool()`` before ``str()``, notes/csp.md (c)).

``{% load replay %}{% replay_snippet %}`` places the snippet by hand (it forces the request's
CSP nonce, so the CSP middleware puts it in the header); that page then gets no second one.

System checks (registered when ``replay_middleware`` is in ``INSTALLED_APPS``, or when this
module is imported): ``replay_middleware.E001`` for a bad ``REPLAY_MIDDLEWARE``;
``replay_middleware.W001`` when ``GZipMiddleware`` sits inside ours (compressed HTML cannot be
injected); ``replay_middleware.W002`` when a CSP middleware sits outside ours (its header is
written after our merge, so the snippet would be blocked).
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from http.cookies import SimpleCookie
from typing import TYPE_CHECKING, Any

from asgiref.sync import async_to_sync, iscoroutinefunction, markcoroutinefunction, sync_to_async
from django.conf import settings
from django.core import checks
from django.core.exceptions import ImproperlyConfigured
from django.http import FileResponse, HttpRequest, StreamingHttpResponse
from django.http import HttpResponse as DjangoHttpResponse
from django.http.response import HttpResponseBase
from django.utils.functional import SimpleLazyObject

from .config import ReplayConfig
from .context import reset_current, set_current
from .csp import new_nonce
from .decision import ReplayContext
from .engine import HttpResponse, ReplayEngine, RequestState, many_workers
from .identity import derive_secret_key
from .proxy import ENDPOINT_UNAVAILABLE, RemoteSampling, sdk_unavailable
from .request import RequestInfo
from .rewrite import ResponseRewriter
from .sdk import AsyncSdkProvider, SdkProvider, SdkUnavailable
from .wsgi import answer_endpoint, client_socket

if TYPE_CHECKING:
    from .upstream import AsyncProxyReply, AsyncUploadProxy, ProxyReply, UploadProxy

__all__ = ["SETTING", "ReplayMiddleware", "config_from_settings", "replay_snippet"]

logger = logging.getLogger("replay_middleware")

#: The settings name of the one dict setting (STYLE 14).
SETTING = "REPLAY_MIDDLEWARE"
#: Request attribute holding this request's replay state; a second copy of the middleware
#: seeing it steps aside (H8).
REQUEST_ATTR = "_replay_middleware"
#: The ASGI adapter's scope key (Django behind ``replay_middleware.ReplayMiddleware`` too).
_ASGI_SCOPE_KEY = "replay_middleware"
_MIDDLEWARE_PATH = "replay_middleware.django.ReplayMiddleware"
_GZIP_PATH = "django.middleware.gzip.GZipMiddleware"
_CSP_PATHS = (
    "csp.middleware.CSPMiddleware",
    "django.middleware.csp.ContentSecurityPolicyMiddleware",
)
# A CSP base64-value (CSP3 §2.3.1): a nonce we may put in a header as it is.
_NONCE_RE = re.compile(r"[A-Za-z0-9+/_-]+={0,2}")
_READ_CHUNK = 64 * 1024

GetResponse = Callable[[HttpRequest], HttpResponseBase]
AsyncGetResponse = Callable[[HttpRequest], Awaitable[HttpResponseBase]]


# -- settings --------------------------------------------------------------------------------


def config_from_settings() -> ReplayConfig:
    """``ReplayConfig`` from ``settings.REPLAY_MIDDLEWARE``; ``ValueError`` when it is bad.

    Without a ``secret_key`` option the cookie signing key is derived from ``SECRET_KEY``
    (an HMAC with a purpose string, so the project's key itself is never used as is), and
    older keys from ``SECRET_KEY_FALLBACKS`` (Django 4.1), so cookies signed before a rotation
    are still accepted, then re-issued under the new key.
    """
    raw = getattr(settings, SETTING, None)
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ValueError(
            f"{SETTING} must be a dict of ReplayConfig options (got {type(raw).__name__})"
        )
    data = dict(raw)
    keys = {str(k).lower().removeprefix("replay_") for k in data}
    secret = getattr(settings, "SECRET_KEY", "")
    if "secret_key" not in keys and secret:
        fallbacks = getattr(settings, "SECRET_KEY_FALLBACKS", None) or ()
        data["secret_key"] = tuple(
            derive_secret_key(str(raw)) for raw in (*fallbacks, secret) if raw
        )
    return ReplayConfig.from_mapping(data)


def request_info(request: HttpRequest) -> RequestInfo:
    """The framework-neutral view of a Django request."""
    return RequestInfo.from_pairs(
        request.method or "GET",
        request.path,
        list(request.headers.items()),
        query_string=request.META.get("QUERY_STRING", "") or "",
        scheme=request.scheme or "http",
        client=request.META.get("REMOTE_ADDR") or None,
    )


# -- per request ------------------------------------------------------------------------------


class _RequestReplay:
    """One request's identity and decision, computed on first use, plus the manual-snippet
    mark the template tag leaves for the response side.

    It refers to its request weakly: the request holds it (``request.replay`` and the
    attribute the template tag reads), and a strong reference back would make every request
    a reference cycle, left with all it holds (its body, the environ) to the garbage
    collector (issue 10: 17 objects of cyclic garbage per API response, 32 per page, where
    bare Django leaves none). Whoever can reach this object reaches it through the live
    request, or through ``current_replay()`` while the view runs with the request alive."""

    __slots__ = ("_remote", "_request", "_state", "engine", "manual_nonce")

    def __init__(
        self,
        engine: ReplayEngine,
        request: HttpRequest,
        remote: Callable[[], RemoteSampling | None],
    ) -> None:
        self.engine = engine
        self._request = weakref.ref(request)
        self._remote = remote
        self._state: RequestState | None = None
        #: Set by the template tag: the nonce the manual snippet was rendered with.
        self.manual_nonce: str | None = None

    def state(self) -> RequestState:
        if self._state is None:
            self._state = self.engine.begin(request_info(self._live()), remote=self._remote())
        return self._state

    def _live(self) -> HttpRequest:
        request = self._request()
        if request is None:  # unreachable: see the class docstring
            raise RuntimeError("replay-middleware: the request of this decision is gone")
        return request

    def context(self) -> ReplayContext:
        return self.state().context

    def manual_snippet(self) -> str:
        """The snippet for ``{% replay_snippet %}``; empty after the first call (H8)."""
        if self.manual_nonce is not None:
            return ""
        self.manual_nonce = _forced_nonce(self._live()) or new_nonce()
        return self.engine.manual_snippet(self.state(), self.manual_nonce)


def _lazy_nonce(request: HttpRequest) -> Any:
    """The request's lazy CSP nonce: django-csp 4's ``request.csp_nonce``, or Django 6's
    ``request._csp_nonce`` (what ``django.middleware.csp.get_nonce()`` reads); None if neither."""
    lazy = getattr(request, "csp_nonce", None)
    if lazy is None:
        lazy = getattr(request, "_csp_nonce", None)
    return lazy


def _forced_nonce(request: HttpRequest) -> str | None:
    """The request's CSP nonce, generating it (inside the view, before the CSP middleware
    writes its header, so the header carries it: the "forcing" recipe of notes/csp.md (c))."""
    lazy = _lazy_nonce(request)
    if lazy is None:
        return None
    try:
        value = str(lazy)
    except Exception:  # django-csp raises CSPNonceError once its header is written
        return None
    return value if _NONCE_RE.fullmatch(value) else None


def _generated_nonce(request: HttpRequest) -> str | None:
    """The request's CSP nonce only if the app generated it; never forces one (``bool()``
    first: Django 6 would silently mint a nonce that is not in its header)."""
    lazy = _lazy_nonce(request)
    if lazy is None or not bool(lazy):
        return None
    try:
        value = str(lazy)
    except Exception:
        return None
    return value if _NONCE_RE.fullmatch(value) else None


def replay_snippet(request: HttpRequest | None) -> str:
    """The snippet to place by hand in this request's page (the template tag's body)."""
    holder = getattr(request, REQUEST_ATTR, None) if request is not None else None
    if not isinstance(holder, _RequestReplay):
        return ""
    try:
        return holder.manual_snippet()
    except Exception:
        holder.engine.log_once(
            "django:manual",
            "replay-middleware: {% replay_snippet %} failed; rendering nothing",
            level=logging.ERROR,
        )
        return ""


# -- the middleware --------------------------------------------------------------------------


class ReplayMiddleware:
    """Adds Amplitude Session Replay to a Django project's HTML pages (SPEC F3)."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: GetResponse | AsyncGetResponse) -> None:
        self.get_response = get_response
        self.async_mode = iscoroutinefunction(get_response)
        if self.async_mode:
            markcoroutinefunction(self)
        try:
            self.config = config_from_settings()
        except ValueError as exc:
            raise ImproperlyConfigured(f"{SETTING}: {exc}") from exc
        self.engine = ReplayEngine(self.config)
        self._many_workers = many_workers(os.environ)  # ASGI has no wsgi.multiprocess (O4)
        self.sdk = SdkProvider(self.config.sdk_version)
        self.async_sdk = AsyncSdkProvider(self.config.sdk_version)
        #: With an API key: the upload proxy, which also keeps the project's remote config
        #: fresh in the background for the server-side decision (S2), in both upload modes.
        self.upstream: UploadProxy | None = None
        self.async_upstream: AsyncUploadProxy | None = None
        if not self.config.local_mode:
            from .upstream import AsyncUploadProxy, UploadProxy

            if self.async_mode:
                self.async_upstream = AsyncUploadProxy(self.config)
            else:
                self.upstream = UploadProxy(self.config)
        self._proxying = not self.config.local_mode and self.config.upload_mode == "proxy"

    def _remote(self) -> RemoteSampling | None:
        """The project's remote sampling settings as last fetched (S2); never waits. Sync
        mode only (thread-safe); async mode reads them in ``__acall__``, on the loop."""
        return None if self.upstream is None else self.upstream.current_sampling()

    def _proxied(self, path: str) -> str | None:
        """``"/track"`` or ``"/config/<key>"`` when the upload proxy answers ``path``."""
        if not self._proxying:
            return None
        sub = path[len(self.engine.prefix) :]
        key = sub[len("/config/") :]
        if sub == "/track" or (sub.startswith("/config/") and key and "/" not in key):
            return sub
        return None

    def _steps_aside(self, request: HttpRequest) -> bool:
        if hasattr(request, REQUEST_ATTR):
            return True
        scope = getattr(request, "scope", None)
        return isinstance(scope, dict) and _ASGI_SCOPE_KEY in scope

    def _attach(
        self, request: HttpRequest, remote: Callable[[], RemoteSampling | None]
    ) -> _RequestReplay:
        holder = _RequestReplay(self.engine, request, remote)
        setattr(request, REQUEST_ATTR, holder)
        request.replay = SimpleLazyObject(holder.context)  # type: ignore[attr-defined]
        return holder

    # -- sync -----------------------------------------------------------------------------

    def __call__(self, request: HttpRequest) -> Any:
        if self.async_mode:
            return self.__acall__(request)
        get_response: GetResponse = self.get_response  # type: ignore[assignment]
        if self._steps_aside(request):
            return get_response(request)
        self.engine.announce()  # the start-up warnings, on the first request only
        self.engine.check_workers(request.META.get("wsgi.multiprocess") or self._many_workers)
        if self.engine.is_endpoint(request.path):
            sub = self._proxied(request.path)
            if sub is not None:
                return self._proxy(request, sub)
            return _to_django(self._endpoint(request))
        holder = self._attach(request, self._remote)
        token = set_current(holder)
        try:
            response = get_response(request)
        finally:
            reset_current(token)
        rewriter = self._start(holder, request, response)
        if rewriter is None:
            return response
        if isinstance(response, StreamingHttpResponse):
            if response.is_async:
                # Under WSGI Django consumes an async iterator whole in a loop of its own, and
                # an async generator does not survive the loop it started in: read it whole
                # here, in one loop, as Django would, and hand Django the same bytes.
                async_to_sync(self._stream_async)(rewriter, response, drain=True)
            else:
                self._stream_sync(rewriter, response)
        else:
            self._whole(rewriter, response)
        return response

    def _endpoint(self, request: HttpRequest) -> HttpResponse:
        info = request_info(request)
        try:
            result = answer_endpoint(
                self.engine,
                self.sdk,
                info,
                lambda: _read_capped(request, self.config.max_upload_bytes),
                remote=self._remote(),
            )
        except Exception:
            # Never a bare 500 from our code: the SDK treats 503 as "retry later".
            logger.exception("replay-middleware: endpoint %s failed", request.path)
            result = ENDPOINT_UNAVAILABLE
        assert isinstance(result, HttpResponse)
        return result

    def _proxy(self, request: HttpRequest, sub: str) -> HttpResponseBase:
        """Forward ``/track`` (the body streamed from ``request.read``, never ``request.body``:
        the proxy applies ``max_upload_bytes``) or ``/config/<key>`` upstream."""
        assert self.upstream is not None
        info = request_info(request)
        try:
            if sub == "/track":
                reply = self.upstream.track(
                    info, request.read, client_socket=client_socket(request.META)
                )
            else:
                reply = self.upstream.config(info, sub[len("/config/") :])
        except Exception:
            # A bug of ours before any byte went out: a status the SDK retries, never a 500.
            logger.exception("replay-middleware: proxy failed on %s", sub)
            return _to_django(ENDPOINT_UNAVAILABLE)
        response = StreamingHttpResponse(_Relay(reply), status=reply.status)
        self._proxy_headers(response, info, sub, reply.status, reply.headers)
        return response

    async def _aproxy(self, request: HttpRequest, sub: str) -> HttpResponseBase:
        assert self.async_upstream is not None
        info = request_info(request)
        try:
            if sub == "/track":
                reply = await self.async_upstream.track_stream(info, _request_chunks(request))
            else:
                status, headers, body = await _asgi_call(
                    self.async_upstream.handle_config, info, sub[len("/config/") :]
                )
                response: HttpResponseBase = DjangoHttpResponse(body, status=status)
                self._proxy_headers(response, info, sub, status, headers)
                return response
        except Exception:
            logger.exception("replay-middleware: proxy failed on %s", sub)
            return _to_django(ENDPOINT_UNAVAILABLE)
        response = StreamingHttpResponse(_arelay(reply), status=reply.status)
        self._proxy_headers(response, info, sub, reply.status, reply.headers)
        return response

    def _proxy_headers(
        self,
        response: HttpResponseBase,
        info: RequestInfo,
        sub: str,
        status: int,
        headers: list[tuple[str, str]],
    ) -> None:
        del response.headers["Content-Type"]
        for name, value in headers:
            response.headers[name] = value
        if sub == "/track" and 200 <= status < 300:
            # I4: an accepted upload slides the session's last activity.
            for _, cookie in self.engine.upload_cookie(info):
                _add_cookie(response, cookie)

    # -- async ----------------------------------------------------------------------------

    async def __acall__(self, request: HttpRequest) -> HttpResponseBase:
        get_response: AsyncGetResponse = self.get_response  # type: ignore[assignment]
        if self._steps_aside(request):
            return await get_response(request)
        self.engine.announce()
        self.engine.check_workers(request.META.get("wsgi.multiprocess") or self._many_workers)
        if self.engine.is_endpoint(request.path):
            sub = self._proxied(request.path)
            if sub is not None:
                return await self._aproxy(request, sub)
            return _to_django(await self._aendpoint(request))
        # Read on the loop: the refresh it may schedule is an asyncio task.
        sampling = None if self.async_upstream is None else self.async_upstream.current_sampling()
        holder = self._attach(request, lambda: sampling)
        token = set_current(holder)
        try:
            response = await get_response(request)
        finally:
            reset_current(token)
        rewriter = self._start(holder, request, response)
        if rewriter is None:
            return response
        if isinstance(response, StreamingHttpResponse):
            if response.is_async:
                await self._stream_async(rewriter, response)
            else:
                await sync_to_async(self._stream_sync, thread_sensitive=True)(rewriter, response)
        else:
            self._whole(rewriter, response)
        return response

    async def _aendpoint(self, request: HttpRequest) -> HttpResponse:
        info = request_info(request)
        try:
            if self.engine.endpoint_blocks(info.path):
                # SQLite and decoding: off the event loop (the body is read there too).
                return await sync_to_async(self._endpoint, thread_sensitive=False)(request)
            remote = None if self.async_upstream is None else self.async_upstream.current_sampling()
            result = self.engine.endpoint(info, remote=remote)
            if result == "read_body":
                return await sync_to_async(self._endpoint, thread_sensitive=False)(request)
            if result == "sdk":
                try:
                    bundle = await self.async_sdk.get()
                except SdkUnavailable as exc:
                    return sdk_unavailable(self.engine, exc)
                return self.engine.sdk_response(info, bundle.body, bundle.etag)
        except Exception:
            logger.exception("replay-middleware: endpoint %s failed", request.path)
            return ENDPOINT_UNAVAILABLE
        assert isinstance(result, HttpResponse)
        return result

    # -- responses --------------------------------------------------------------------------

    def _start(
        self, holder: _RequestReplay, request: HttpRequest, response: HttpResponseBase
    ) -> _Rewrite | None:
        """Decide on the status line; None when the response stays as the app made it (or
        only its headers change, which is done here)."""
        if isinstance(response, FileResponse):
            return None
        if not isinstance(response, (DjangoHttpResponse, StreamingHttpResponse)):
            return None
        headers = list(response.items())
        if not _may_be_html(headers) and not self.config.show_debug_header:
            return None  # the common API response: nothing to decide, nothing computed
        try:
            rewriter = ResponseRewriter(
                self.engine,
                holder.state(),
                manual_nonce=holder.manual_nonce,
                app_nonce=None if holder.manual_nonce else _generated_nonce(request),
            )
            rewriter.start(response.status_code, headers)
            if rewriter.passthrough:
                _apply_headers(response, headers, rewriter.headers)
                return None
        except Exception:
            logger.exception(
                "replay-middleware: failed deciding on a response; sending it untouched"
            )
            return None
        return _Rewrite(rewriter, headers)

    def _whole(self, rw: _Rewrite, response: HttpResponseBase) -> None:
        assert isinstance(response, DjangoHttpResponse)
        try:
            out = rw.rewriter.body(response.content) + rw.rewriter.finish()
            assert rw.rewriter.ready
            _apply_headers(response, rw.original, rw.rewriter.headers)
        except Exception:
            logger.exception("replay-middleware: failed rewriting a response; sending it untouched")
            return
        if not rw.rewriter.passthrough:
            response.content = out

    def _stream_sync(self, rw: _Rewrite, response: StreamingHttpResponse) -> None:
        source: Iterator[bytes] = iter(response.streaming_content)  # type: ignore[arg-type]
        error: Exception | None = None
        while True:
            try:
                chunk = next(source)
            except StopIteration:
                rw.end()
                break
            except Exception as exc:  # the app's: raised again where it would have been
                error = exc
                break
            if rw.feed(chunk):
                break
        head = rw.settle(response, error)
        response.streaming_content = itertools.chain(head, _raising(error) if error else source)

    async def _stream_async(
        self, rw: _Rewrite, response: StreamingHttpResponse, *, drain: bool = False
    ) -> None:
        source: AsyncIterator[bytes] = aiter(response.streaming_content)  # type: ignore[arg-type]
        error: Exception | None = None
        while True:
            try:
                chunk = await anext(source)
            except StopAsyncIteration:
                rw.end()
                break
            except Exception as exc:
                error = exc
                break
            if rw.feed(chunk):
                break
        head = rw.settle(response, error)
        if drain and error is None:
            try:
                head = [*head, *[chunk async for chunk in source]]
            except Exception as exc:
                error = exc
            source = _aempty()
        response.streaming_content = _achain(head, source, error)


class _Rewrite:
    """One response being rewritten; for streams, the head read so far."""

    __slots__ = ("failed", "held", "original", "out", "rewriter")

    def __init__(self, rewriter: ResponseRewriter, original: list[tuple[str, str]]) -> None:
        self.rewriter = rewriter
        self.original = original
        self.held: list[bytes] = []
        self.out: list[bytes] = []
        self.failed = False

    def feed(self, chunk: bytes) -> bool:
        """Give the rewriter one chunk; True when reading ahead must stop."""
        self.held.append(chunk)
        try:
            self.out.append(self.rewriter.body(chunk))
        except Exception:
            self._fail()
            return True
        return self.rewriter.ready

    def end(self) -> None:
        try:
            self.out.append(self.rewriter.finish())
        except Exception:
            self._fail()

    def _fail(self) -> None:
        logger.exception("replay-middleware: failed rewriting a response; sending it untouched")
        self.failed = True

    def settle(self, response: HttpResponseBase, error: Exception | None) -> list[bytes]:
        """Set the final headers; the chunks that go out before the rest of the stream."""
        if self.failed or error is not None or not self.rewriter.ready:
            return self.held  # H9: the app's headers and bytes, untouched
        try:
            _apply_headers(response, self.original, self.rewriter.headers)
        except Exception:
            self._fail()
            return self.held
        return self.held if self.rewriter.passthrough else self.out


class _Relay:
    """A proxy reply's body as a Django streaming body whose ``close()`` (which Django calls
    when the response is closed, read or not) releases the upstream response."""

    def __init__(self, reply: ProxyReply) -> None:
        self._reply = reply
        self._body = iter(reply.body)

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        return next(self._body)

    def close(self) -> None:
        self._reply.close()


async def _arelay(reply: AsyncProxyReply) -> AsyncIterator[bytes]:
    try:
        async for chunk in reply.body:
            yield chunk
    finally:
        await reply.aclose()


async def _request_chunks(request: HttpRequest) -> AsyncIterator[bytes]:
    """The body of an ASGI request. Django's ASGI handler has already received it (spooled
    to a temporary file past ``FILE_UPLOAD_MAX_MEMORY_SIZE``), so these reads are local."""
    while True:
        chunk = request.read(_READ_CHUNK)
        if not chunk:
            return
        yield chunk


async def _asgi_call(
    handler: Callable[..., Awaitable[None]], info: RequestInfo, key: str
) -> tuple[int, list[tuple[str, str]], bytes]:
    """Run an ASGI-level handler of the async proxy that needs no request body and sends one
    complete response; returns it as values."""
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(dict(message))

    await handler(info, key, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in start.get("headers", [])]
    return int(start["status"]), headers, body


def _raising(error: Exception) -> Iterator[bytes]:
    yield from ()
    raise error


async def _aempty() -> AsyncIterator[bytes]:
    nothing: tuple[bytes, ...] = ()
    for chunk in nothing:
        yield chunk


async def _achain(
    head: list[bytes], rest: AsyncIterator[bytes], error: Exception | None
) -> AsyncIterator[bytes]:
    for chunk in head:
        yield chunk
    if error is not None:
        raise error
    try:
        async for chunk in rest:
            yield chunk
    finally:
        aclose = getattr(rest, "aclose", None)
        if aclose is not None:
            await aclose()


def _may_be_html(headers: list[tuple[str, str]]) -> bool:
    """A cheap, conservative pre-check: False only when no Content-Type mentions html."""
    return any(k.lower() == "content-type" and "html" in v.lower() for k, v in headers)


def _apply_headers(
    response: HttpResponseBase, original: list[tuple[str, str]], new: list[tuple[str, str]]
) -> None:
    """Make ``response`` carry ``new`` instead of ``original``. Django keeps ``Set-Cookie``
    apart (``response.cookies``), so the cookies we add go there."""
    if new == original:
        return
    cookies = [v for k, v in new if k.lower() == "set-cookie"]
    for k, v in original:
        if k.lower() == "set-cookie" and v in cookies:
            cookies.remove(v)  # the app's own header, kept where it is
    rest = [(k, v) for k, v in new if k.lower() != "set-cookie" or v not in cookies]
    if rest != original:
        for key in list(response.headers):
            del response.headers[key]
        for key, value in rest:
            response.headers[key] = value
    for value in cookies:
        _add_cookie(response, value)


def _add_cookie(response: HttpResponseBase, header: str) -> None:
    jar: SimpleCookie = SimpleCookie()
    jar.load(header)
    for name, morsel in jar.items():
        response.cookies[name] = morsel


def _to_django(result: HttpResponse) -> DjangoHttpResponse:
    response = DjangoHttpResponse(result.body, status=result.status)
    del response.headers["Content-Type"]  # ours, or none (a 304)
    for name, value in result.framed_headers():
        if name.lower() == "set-cookie":
            _add_cookie(response, value)
        else:
            response.headers[name] = value
    return response


def _read_capped(request: HttpRequest, limit: int) -> bytes | None:
    """The request body read from its stream, or None once it exceeds ``limit``.

    Never ``request.body``: that raises ``RequestDataTooBig`` above Django's
    ``DATA_UPLOAD_MAX_MEMORY_SIZE`` (2.5 MB), while the SDK's batches may be larger.
    """
    try:
        declared = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        declared = 0
    if declared > limit:
        return None  # early reject: nothing is read
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = request.read(_READ_CHUNK)
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)


# -- system checks ---------------------------------------------------------------------------


@checks.register(checks.Tags.compatibility)
def check_settings(**kwargs: Any) -> list[checks.CheckMessage]:
    """E001: ``REPLAY_MIDDLEWARE`` does not make a valid ``ReplayConfig``."""
    try:
        config_from_settings()
    except ValueError as exc:
        return [
            checks.Error(
                str(exc),
                hint=f"Fix {SETTING} in your settings; keys are ReplayConfig option names.",
                id="replay_middleware.E001",
            )
        ]
    return []


@checks.register(checks.Tags.compatibility)
def check_middleware_order(**kwargs: Any) -> list[checks.CheckMessage]:
    """W001: GZipMiddleware inside ours; W002: a CSP middleware outside ours."""
    middleware = [str(m) for m in getattr(settings, "MIDDLEWARE", None) or ()]
    if _MIDDLEWARE_PATH not in middleware:
        return []
    ours = middleware.index(_MIDDLEWARE_PATH)
    messages: list[checks.CheckMessage] = []
    if _GZIP_PATH in middleware[ours + 1 :]:
        messages.append(
            checks.Warning(
                f"{_MIDDLEWARE_PATH} is listed before {_GZIP_PATH}, so it receives compressed "
                "HTML and cannot add Session Replay to it.",
                hint=f"List {_MIDDLEWARE_PATH} after {_GZIP_PATH} in MIDDLEWARE.",
                id="replay_middleware.W001",
            )
        )
    for csp_path in _CSP_PATHS:
        if csp_path in middleware[:ours]:
            messages.append(
                checks.Warning(
                    f"{_MIDDLEWARE_PATH} is listed after {csp_path}, so the CSP header is "
                    "written after our merge and the replay snippet would be blocked.",
                    hint=f"List {_MIDDLEWARE_PATH} before {csp_path} in MIDDLEWARE.",
                    id="replay_middleware.W002",
                )
            )
    return messages
