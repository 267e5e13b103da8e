"""ReplayWSGIMiddleware: the WSGI adapter (Flask, Django under WSGI, Pyramid, Bottle, ...).

Translates the WSGI environ, ``start_response`` and the response iterable into engine calls
and back (STYLE 3); no business rule lives here. ``app.wsgi_app =
ReplayWSGIMiddleware(app.wsgi_app, ReplayConfig(...))``. The request's decision is computed on
first use, from ``environ["replay_middleware"].context()`` or ``current_replay()``.

Protocol notes (H7, PEP 3333):

- The status line is held only while the injector scans the head of the page, pulling items
  from the app's iterable (never joining it); everything after the insertion point streams
  item by item.
- ``close()`` of the app's iterable is always called: by the server through our iterable's
  ``close()`` (also when iteration raised or the client went away early), or by us when our
  own code fails before the iterable is handed back.
- ``write()``: data written through the callable ``start_response`` returns goes out at
  once, after anything held is flushed unmodified; a page written that way is therefore not
  injected (holding it would break ``write()``'s "sent before it returns" contract).
- ``wsgi.file_wrapper`` responses are handed back untouched (no injection), so the server can
  still use ``sendfile``.
- A second ``start_response`` with ``exc_info`` (an error page) resets what was held and
  decides again; if the status line already went out, the server's ``start_response``
  re-raises the exception, as PEP 3333 requires.
- Any exception of ours sends the app's original response (H9, fail open); the app's own
  exceptions propagate unchanged.

Environ keys: ``"replay_middleware"`` (set by the outermost copy; inner copies step aside,
H8) holds the lazy per-request source with ``.context()`` and ``.state()``;
``"replay_middleware.manual_nonce"``, when a template helper set it before the response
starts, says the page already holds the snippet rendered with that nonce (N4).

Paths are ``SCRIPT_NAME + PATH_INFO`` (decoded as UTF-8): the snippet points the browser at
``{prefix}/...`` on the site's origin, so the app must be reachable there.
"""

from __future__ import annotations

import http
import logging
import os
import socket
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import TYPE_CHECKING, Any

from .config import ReplayConfig
from .context import reset_current, set_current
from .decision import ReplayContext
from .engine import HttpResponse, ReplayEngine, RequestState, many_workers
from .proxy import (
    DEFAULT_UPSTREAMS,
    ENDPOINT_TOO_LARGE,
    ENDPOINT_UNAVAILABLE,
    RemoteSampling,
    Upstreams,
    sdk_unavailable,
)
from .request import RequestInfo
from .rewrite import ResponseRewriter
from .sdk import SdkProvider, SdkUnavailable

if TYPE_CHECKING:
    from .upstream import ProxyReply, UploadProxy

__all__ = [
    "ENVIRON_KEY",
    "MANUAL_NONCE_KEY",
    "ReplayWSGIMiddleware",
    "answer_endpoint",
    "request_info",
]

logger = logging.getLogger("replay_middleware")

# WSGI aliases, local as the ASGI ones (STYLE 16).
ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]
OptExcInfo = ExcInfo | tuple[None, None, None]
Environ = dict[str, Any]
Write = Callable[[bytes], object]
StartResponse = Callable[..., Write]
WSGIApp = Callable[[Environ, StartResponse], Iterable[bytes]]

#: Environ key set by the outermost copy of the middleware: the request's lazy source.
ENVIRON_KEY = "replay_middleware"
#: Environ key set by the template helpers when the page holds the snippet (its nonce).
MANUAL_NONCE_KEY = "replay_middleware.manual_nonce"

_READ = 64 * 1024


def _decode_path(raw: str) -> str:
    """PEP 3333 hands paths over as latin-1 decoded bytes; browsers send UTF-8."""
    try:
        return raw.encode("latin-1").decode("utf-8", "replace")
    except UnicodeEncodeError:
        return raw


def _path(environ: Environ) -> str:
    return _decode_path(environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")) or "/"


def request_info(environ: Environ) -> RequestInfo:
    """Build the framework-neutral request view from a WSGI environ."""
    headers: dict[str, str] = {}
    for key, value in environ.items():
        if key.startswith("HTTP_"):
            name = key[5:].replace("_", "-").lower()
        elif key in ("CONTENT_TYPE", "CONTENT_LENGTH") and value:
            name = key.replace("_", "-").lower()
        else:
            continue
        value = str(value)
        if name in headers:  # two environ keys for one name (HTTP_CONTENT_TYPE, ...)
            value = headers[name] + ("; " if name == "cookie" else ", ") + value
        headers[name] = value
    return RequestInfo.from_lowered(
        environ.get("REQUEST_METHOD", "GET"),
        _path(environ),
        headers,
        environ.get("QUERY_STRING", ""),
        environ.get("wsgi.url_scheme", "http"),
        environ.get("REMOTE_ADDR") or None,
    )


def _status_line(status: int) -> str:
    try:
        return f"{status} {http.HTTPStatus(status).phrase}"
    except ValueError:
        return f"{status} Unknown"


def _declared_length(environ: Environ) -> int | None:
    raw = str(environ.get("CONTENT_LENGTH") or "").strip()
    return int(raw) if raw.isdigit() and raw.isascii() else None


def body_reader(environ: Environ) -> Callable[[int], bytes]:
    """``read(n)`` over ``wsgi.input`` that never reads past the body: up to
    ``CONTENT_LENGTH``, or to the end of a chunked body when the server says it terminates the
    stream (``wsgi.input_terminated``); without either, the body is empty (PEP 3333)."""
    stream = environ.get("wsgi.input")
    length = _declared_length(environ)
    if stream is None or (length is None and not environ.get("wsgi.input_terminated")):
        return lambda n: b""
    if length is None:
        return lambda n: bytes(stream.read(n))
    left = length

    def read(n: int) -> bytes:
        nonlocal left
        if left <= 0:
            return b""
        data = bytes(stream.read(min(n, left)))
        left -= len(data)
        return data

    return read


def client_socket(environ: Environ) -> socket.socket | None:
    """The client connection's socket when the server puts it in the environ (gunicorn,
    werkzeug): the upload proxy then cuts a body read short at its deadline (docs/proxy.md,
    "Slow clients"). None elsewhere (uWSGI, mod_wsgi; waitress reads bodies itself first)."""
    for key in ("gunicorn.socket", "werkzeug.socket"):
        sock = environ.get(key)
        if isinstance(sock, socket.socket):
            return sock
    return None


def read_body(environ: Environ, limit: int) -> bytes | None:
    """The whole request body, or None as soon as it exceeds ``limit`` (never buffers more)."""
    length = _declared_length(environ)
    if length is not None and length > limit:
        return None
    read = body_reader(environ)
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = read(_READ)
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)


def _may_be_html(headers: list[tuple[str, str]]) -> bool:
    """A cheap, conservative pre-check: False only when no Content-Type mentions html."""
    for name, value in headers:
        if len(name) == 12 and name.lower() == "content-type" and "html" in value.lower():
            return True
    return False


class _LazySource:
    """The request's identity and decision, computed once, on first use
    (``environ["replay_middleware"]``)."""

    __slots__ = ("_engine", "_environ", "_sampling", "_state")

    def __init__(
        self,
        engine: ReplayEngine,
        environ: Environ,
        sampling: Callable[[], RemoteSampling | None],
    ) -> None:
        self._engine = engine
        self._environ = environ
        self._sampling = sampling
        self._state: RequestState | None = None

    def state(self) -> RequestState:
        if self._state is None:
            self._state = self._engine.begin(request_info(self._environ), remote=self._sampling())
        return self._state

    def context(self) -> ReplayContext:
        return self.state().context

    def release(self) -> None:
        """Break the environ -> source -> environ cycle at the end of the response: a source
        whose state is known lets go of the environ; one never asked (a non-HTML response)
        keeps only the environ's str entries (all that ``request_info`` reads), so
        ``environ["replay_middleware"]`` still answers after the response, from the same
        request. Without this, every response left the environ and all it holds (the
        server's request, socket reader, Flask's request object...) to the garbage collector
        (issue 10)."""
        environ = self._environ
        if self._state is not None:
            self._environ = {}
        elif ENVIRON_KEY in environ:
            # PEP 3333: the CGI variables and HTTP_* headers are str, and a str refers to
            # nothing (a type test is cheaper than matching names: about 1 µs for 25 entries).
            self._environ = {key: value for key, value in environ.items() if type(value) is str}


class ReplayWSGIMiddleware:
    """Adds Amplitude Session Replay to every HTML page of a WSGI app."""

    def __init__(
        self,
        app: WSGIApp,
        config: ReplayConfig | None = None,
        *,
        upstreams: Upstreams | None = None,
    ) -> None:
        """``upstreams`` replaces Amplitude's endpoints (tests and benchmarks point it at a
        local fake); production code leaves it alone. Nothing is started here (no thread, no
        connection), so the middleware can be built before a pre-forking server forks."""
        self.app = app
        self.config = config or ReplayConfig()
        self.engine = ReplayEngine(self.config)
        self._many_workers = many_workers(os.environ)
        self.sdk = SdkProvider(self.config.sdk_version)
        self._prefix_slash = self.engine.prefix + "/"
        #: With an API key: the upload proxy, which also keeps the project's remote config
        #: fresh in a background thread for the server-side decision (S2).
        self.upstream: UploadProxy | None = None
        if not self.config.local_mode:
            from .upstream import UploadProxy

            self.upstream = UploadProxy(self.config, upstreams=upstreams or DEFAULT_UPSTREAMS)
        self._proxying = self.upstream is not None and self.config.upload_mode == "proxy"

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        if ENVIRON_KEY in environ:
            return self.app(environ, start_response)
        self.engine.announce()  # the start-up warnings, on the first request only
        self.engine.check_workers(environ.get("wsgi.multiprocess") or self._many_workers)
        path = _path(environ)
        if path == self.engine.prefix or path.startswith(self._prefix_slash):
            sub = path[len(self.engine.prefix) :]
            if self._proxying:
                reply = self._proxy(environ, sub, start_response)
                if reply is not None:
                    return reply
            return self._endpoint(environ, start_response)
        lazy = _LazySource(self.engine, environ, self._remote_sampling)
        environ[ENVIRON_KEY] = lazy
        response = _Response(self.engine, lazy, environ, start_response)
        token = set_current(lazy)
        try:
            result = self.app(environ, response.start_response)
        finally:
            reset_current(token)
        try:
            return response.wrap(result)
        except BaseException:
            _close(result)
            raise

    def _remote_sampling(self) -> RemoteSampling | None:
        """The project's remote sampling settings as last fetched; never waits (S2)."""
        return None if self.upstream is None else self.upstream.current_sampling()

    def close(self) -> None:
        """Close the upstream client and the local store (call at worker shutdown; nothing
        global is registered, so this is the app's to call). Idempotent."""
        if self.upstream is not None:
            self.upstream.close()
        self.engine.close()

    # -- first-party endpoints ------------------------------------------------------------------

    def _proxy(
        self, environ: Environ, sub: str, start_response: StartResponse
    ) -> Iterable[bytes] | None:
        """Forward ``/track`` and ``/config/<key>`` upstream; None for other endpoints."""
        assert self.upstream is not None
        track = sub == "/track"
        key = sub[len("/config/") :]
        if not track and not (sub.startswith("/config/") and "/" not in key):
            return None
        request = request_info(environ)
        try:
            if track:
                reply = self.upstream.track(
                    request, body_reader(environ), client_socket=client_socket(environ)
                )
            else:
                reply = self.upstream.config(request, key)
        except Exception:
            # A bug of ours before any byte went out: a status the SDK retries, never a 500.
            logger.exception("replay-middleware: proxy failed on %s", sub)
            return _respond(start_response, ENDPOINT_UNAVAILABLE)
        try:
            headers = list(reply.headers)
            if track and 200 <= reply.status < 300:
                # I4: an accepted upload slides the session's last activity.
                headers += self.engine.upload_cookie(request)
            start_response(_status_line(reply.status), headers)
        except BaseException:
            reply.close()
            raise
        return _ReplyIterable(reply)

    def _endpoint(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        try:
            result = self._endpoint_response(request_info(environ), environ)
        except Exception:
            # Never a bare 500 from our code: the SDK treats 503 as "retry later".
            logger.exception("replay-middleware: endpoint %s failed", environ.get("PATH_INFO"))
            result = ENDPOINT_UNAVAILABLE
        return _respond(start_response, result)

    def _endpoint_response(self, request: RequestInfo, environ: Environ) -> HttpResponse:
        return answer_endpoint(
            self.engine,
            self.sdk,
            request,
            lambda: read_body(environ, self.config.max_upload_bytes),
            remote=self._remote_sampling(),
        )


def answer_endpoint(
    engine: ReplayEngine,
    sdk: SdkProvider,
    request: RequestInfo,
    read_body: Callable[[], bytes | None],
    *,
    remote: RemoteSampling | None,
) -> HttpResponse:
    """The sync endpoint flow shared by the WSGI adapter and Django's sync path: the engine's
    answer, the body read only when the endpoint asks for it (``read_body`` returns None past
    the cap), and the SDK bundle from ``sdk``. Raises only for bugs; callers answer 503."""
    result = engine.endpoint(request, remote=remote)
    if result == "read_body":
        body = read_body()
        result = ENDPOINT_TOO_LARGE if body is None else engine.endpoint(request, body)
    if result == "sdk":
        try:
            bundle = sdk.get()
        except SdkUnavailable as exc:
            result = sdk_unavailable(engine, exc)
        else:
            result = engine.sdk_response(request, bundle.body, bundle.etag)
    assert isinstance(result, HttpResponse)
    return result


def _respond(start_response: StartResponse, response: HttpResponse) -> list[bytes]:
    start_response(_status_line(response.status), response.framed_headers())
    return [response.body]


def _close(result: object) -> None:
    close = getattr(result, "close", None)
    if close is not None:
        close()


class _ReplyIterable:
    """A proxy reply as a WSGI iterable; the server's ``close()`` releases the upstream."""

    def __init__(self, reply: ProxyReply) -> None:
        self._reply = reply

    def __iter__(self) -> Iterator[bytes]:
        return self._reply.body

    def close(self) -> None:
        self._reply.close()


class _Response:
    """One response: our ``start_response``, our ``write`` and the iteration over the app's
    body. All per-request state lives here (STYLE 5)."""

    def __init__(
        self,
        engine: ReplayEngine,
        lazy: _LazySource,
        environ: Environ,
        start_response: StartResponse,
    ) -> None:
        self._engine = engine
        self._lazy = lazy
        self._environ = environ
        self._start_response = start_response
        self._mode = "start"  # "start" → "scan" (holding) → "pass"
        self._status = ""
        self._headers: list[tuple[str, str]] = []
        self._held: list[bytes] = []
        self._write: Write | None = None
        self._sent = False  # the server's start_response was called
        self._body_out = False  # ... and body bytes were handed to the server
        self._replace: OptExcInfo | None = None  # exc_info for the next status line
        self._untouched = False  # a file wrapper: no decision at all
        self.rewriter: ResponseRewriter | None = None

    # -- start_response and write ------------------------------------------------------------

    def _send_start(
        self, status: str, headers: list[tuple[str, str]], exc_info: OptExcInfo | None = None
    ) -> None:
        if exc_info is None:
            exc_info, self._replace = self._replace, None
        self._sent = True
        try:
            self._write = (
                self._start_response(status, headers, exc_info)
                if exc_info is not None
                else self._start_response(status, headers)
            )
        finally:
            exc_info = None  # no reference cycle through the traceback (PEP 3333)

    def start_response(
        self, status: str, headers: list[tuple[str, str]], exc_info: OptExcInfo | None = None
    ) -> Write:
        if self._sent and (self._body_out or exc_info is None):
            # Body bytes went out (or no exc_info): the server decides (PEP 3333: it re-raises
            # ``exc_info``, or refuses a second call without it).
            self._send_start(status, headers, exc_info)
            return self.write
        # No body byte went out yet: (re)decide; an error page replaces whatever was held.
        # The server learns about the replacement with exc_info (it replaces the headers).
        self._replace = exc_info if self._sent else None
        exc_info = None
        self._mode, self._held, self.rewriter = "start", [], None
        self._status, self._headers = status, list(headers)
        if self._untouched or not self._wants_decision(headers):
            self._pass(status, list(headers))
            return self.write
        try:
            nonce = self._environ.get(MANUAL_NONCE_KEY)
            rewriter = ResponseRewriter(
                self._engine,
                self._lazy.state(),
                manual_nonce=nonce if isinstance(nonce, str) and nonce else None,
            )
            rewriter.start(int(status.split(" ", 1)[0]), list(headers))
        except Exception:
            logger.exception(
                "replay-middleware: failed deciding on a response; sending it untouched"
            )
            self._pass(status, list(headers))
            return self.write
        self.rewriter = rewriter
        if rewriter.passthrough:
            self._pass(status, list(rewriter.headers))
        else:
            self._mode = "scan"
        return self.write

    def _wants_decision(self, headers: list[tuple[str, str]]) -> bool:
        if self._engine.config.show_debug_header:
            return True
        if self._environ.get("REQUEST_METHOD") == "HEAD":
            return False  # H1: never injected; the app's headers go out as they are
        return _may_be_html(headers)

    def _pass(self, status: str, headers: list[tuple[str, str]]) -> None:
        self._mode = "pass"
        self._send_start(status, headers)

    def write(self, data: bytes) -> None:
        """The ``write`` callable: what is held goes out unmodified first (no injection)."""
        held = self._flush_original()
        if self._write is None:
            raise AssertionError("write() before start_response()")
        if held:
            self._write(held)
        self._body_out = self._body_out or bool(data) or bool(held)
        self._write(data)

    def _flush_original(self) -> bytes:
        """Give up on the held response: send the app's own status line; return the held
        bytes (unmodified) for the caller to send."""
        if self._mode != "scan":
            return b""
        self._mode = "pass"
        held, self._held = b"".join(self._held), []
        self._send_start(self._status, self._headers)
        return held

    # -- the body ------------------------------------------------------------------------------

    def wrap(self, result: Iterable[bytes]) -> Iterable[bytes]:
        wrapper = self._environ.get("wsgi.file_wrapper")
        # Servers recognise their own wrapper the same way (gunicorn, wsgiref): the environ
        # entry is left as it is, since they test ``isinstance`` against it.
        if isinstance(wrapper, type) and isinstance(result, wrapper):
            # sendfile-able: hand it back as it is; the app's original status line goes out.
            self._untouched = True
            if self._mode == "scan":
                self._flush_original()
            # No _Body, so no close() of ours: break the environ -> source cycle now.
            self._lazy.release()
            return result
        return _Body(self, result)

    def next_chunk(self, items: Iterator[bytes]) -> bytes:
        while True:
            try:
                chunk = next(items)
            except StopIteration:
                if self._mode == "scan":
                    last = self._end()
                    self._body_out = self._body_out or bool(last)
                    return last
                raise
            if self._mode != "scan":
                self._body_out = self._body_out or bool(chunk)
                return chunk
            out = self._feed(chunk)
            if out is not None:
                self._body_out = self._body_out or bool(out)
                return out

    def _feed(self, chunk: bytes) -> bytes | None:
        """One item while scanning; the bytes to send once decided, else None (holding)."""
        rewriter = self.rewriter
        assert rewriter is not None
        self._held.append(chunk)
        try:
            out = rewriter.body(chunk)
            ready = rewriter.ready
            headers = list(rewriter.headers) if ready else []
        except Exception:
            logger.exception("replay-middleware: failed rewriting a response; sending it untouched")
            return self._flush_original()
        if not ready:
            return None
        self._held = []
        self._mode = "pass"
        self._send_start(self._status, headers)
        return out

    def _end(self) -> bytes:
        rewriter = self.rewriter
        assert rewriter is not None
        try:
            out = rewriter.finish()
            headers = list(rewriter.headers)
        except Exception:
            logger.exception("replay-middleware: failed rewriting a response; sending it untouched")
            return self._flush_original()
        self._held = []
        self._mode = "pass"
        self._send_start(self._status, headers)
        return out


class _Body:
    """The response iterable: pulls the app's items through the rewriter, with the request's
    context set (``current_replay()`` works while the body is produced); ``close()`` always
    reaches the app's iterable."""

    def __init__(self, response: _Response, result: Iterable[bytes]) -> None:
        self._response = response
        self._result = result
        self._items: Iterator[bytes] | None = None
        self._done = False
        self._closed = False

    def __iter__(self) -> _Body:
        return self

    def __next__(self) -> bytes:
        if self._done:
            raise StopIteration
        token = set_current(self._response._lazy)
        try:
            if self._items is None:
                self._items = iter(self._result)
            return self._response.next_chunk(self._items)
        except StopIteration:
            self._done = True
            raise
        finally:
            reset_current(token)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        response = self._response
        token = set_current(response._lazy)
        try:
            _close(self._result)
        finally:
            reset_current(token)
            # environ -> lazy source -> environ is a reference cycle, which only the garbage
            # collector would free, with all the environ holds (issue 10); once the state is
            # computed the source no longer needs the environ.
            response._lazy.release()
