"""ResponseRewriter: one response's state machine, shared by the ASGI and WSGI adapters.

Sans-IO. The adapter calls ``start(status, headers)`` with the app's status line, then
``body(chunk)`` for every body chunk and ``finish()`` at the end, sending the bytes each call
returns. ``ready`` tells when the final headers (``headers``) may be sent: at once for a
response we leave alone (``passthrough``), or once the injector has found the insertion point
or given up — until then the start of the response is held (at most ``max_scan_bytes``, H4).

If any call raises, the adapter sends the app's original headers and the original bytes it
held (H9, fail open); this class never needs to be consulted again after that.
"""

from __future__ import annotations

import html
import logging
from collections.abc import Sequence

from ._fast import frozen_new
from .csp import CspResult, merge_meta_csp, merge_response_csp, new_nonce
from .decision import DECISION_HEADER, MARKER_HEADER, response_skip_reason
from .engine import ROUTE_LEVEL_REASONS, ReplayEngine, RequestState
from .headers import index_headers, is_shared_cacheable, parse_content_length
from .injection import Injector, Insertion, MetaPolicy
from .snippet import DATA_BLOCK_ID

__all__ = ["ResponseRewriter"]

logger = logging.getLogger("replay_middleware")

Headers = list[tuple[str, str]]

# Representation metadata that no longer matches a modified body (H5).
_DROP_WHEN_MODIFIED = frozenset(
    {"content-md5", "digest", "repr-digest", "content-digest", "accept-ranges"}
)
_MARKER = DATA_BLOCK_ID.encode()
# Every header name the injected response changes: dropped ones, Content-Length, ETag.
_EDITED_WHEN_MODIFIED = _DROP_WHEN_MODIFIED | {"content-length", "etag"}


class ResponseRewriter:
    """Decides about one response and rewrites its body when it gets the snippet."""

    def __init__(
        self,
        engine: ReplayEngine,
        state: RequestState,
        *,
        manual_nonce: str | None = None,
        app_nonce: str | None = None,
    ) -> None:
        """``manual_nonce``: the page already holds the snippet, rendered by the template tag
        or Jinja global with this nonce (N4); the response then gets no second snippet, only
        the CSP merge that lets the manual one run, and the identity cookie.

        ``app_nonce``: a nonce a framework adapter saw the app generate for this response
        (django-csp's ``request.csp_nonce``, Django 6's ``get_nonce(request)``); the injected snippet reuses it only
        when every policy that needs a nonce already carries it (N2), else ours is added."""
        self.engine = engine
        self.state = state
        self._manual_nonce = manual_nonce
        self._app_nonce = app_nonce
        self.passthrough = True
        self.ready = False
        self.reason: str | None = None
        self.headers: Headers = []
        #: When ``headers`` is the app's headers with these added at the end (a passthrough):
        #: an adapter may send the app's own header objects and encode only these; else None.
        self.appended: Headers | None = None
        self._original: Headers = []
        self._pending: Headers = []
        self._extra: Headers = []
        self._injector: Injector | None = None
        self._csp: CspResult | None = None
        self._per_user = True
        self._length: int | bool | None = None

    # -- decision on the status line ---------------------------------------------------------

    def start(self, status: int, headers: Sequence[tuple[str, str]]) -> None:
        engine, ctx = self.engine, self.state.context
        config = engine.config
        self._original = list(headers)
        by_name = index_headers(self._original)  # one pass, for every question below
        self._length = parse_content_length(self._original, by_name=by_name)
        reason = (
            ctx.reason
            if not ctx.eligible
            else response_skip_reason(
                status, self._original, config, by_name=by_name, length=self._length
            )
        )
        if reason == "encoded":
            # O4: an HTML page already compressed means a compression middleware runs
            # between the app and us; every page then goes out without the recorder.
            engine.log_once(
                "encoded",
                "replay-middleware: HTML responses reach it already compressed (first on %s), "
                "so it cannot inject the recorder: install it inside the compression "
                "middleware, so that compression runs on its output (Starlette/FastAPI: "
                "add_middleware(GZipMiddleware) after add_middleware(ReplayMiddleware); "
                "Django: GZipMiddleware above ReplayMiddleware in MIDDLEWARE; WSGI: wrap "
                "ReplayWSGIMiddleware in the compressing middleware, not the reverse)",
                self.state.request.path,
            )
        cacheable = reason is None and is_shared_cacheable(
            self._original, status, by_name=by_name
        )
        if reason is None and not cacheable:
            # An HTML page for this visitor: keep the identity (sticky sampling, I1, I4).
            self._extra = self.state.cookie_headers(engine)
        if reason is None:
            if cacheable:
                # H10: no per-user values, no Set-Cookie; the loader resolves ids itself.
                self._per_user = False
                if ctx.reason in ROUTE_LEVEL_REASONS:
                    reason = ctx.reason
            elif not ctx.sampled:
                reason = ctx.reason
        if reason is None and config.csp == "merge":
            nonce = self._manual_nonce or new_nonce()
            self._csp = merge_response_csp(
                headers,
                engine.csp_needs,
                nonce,
                app_nonce=self._manual_nonce or self._app_nonce,
            )
            if not self._csp.feasible:
                reason = self._csp.reason or "csp"
                engine.log_once(
                    f"csp:{reason}",
                    "replay-middleware: page CSP makes injection impossible (%s); skipping",
                    reason,
                )
        if reason is not None:
            # Only a session-level "not recorded" keeps the identity cookie (sticky sampling);
            # a page we cannot inject into goes out exactly as the app made it (H2, C2).
            self._finish_passthrough(reason, keep_cookie=reason == ctx.reason)
            return
        if self._manual_nonce is not None:
            merged = list(self._csp.headers) if self._csp is not None else list(headers)
            self.reason = "manual"
            self.passthrough = True
            self.ready = True
            self.headers = merged + self._extra + self._debug("manual")
            return
        self.passthrough = False
        self._pending = list(self._csp.headers) if self._csp is not None else list(headers)
        # The injector gets a renderer that does not refer back to this rewriter: a bound
        # method would make rewriter -> injector -> rewriter a cycle per page (issue 10).
        self._injector = Injector(
            _Renderer(self),
            max_scan_bytes=config.max_scan_bytes,
            marker=_MARKER,
            cache=engine.scan_cache,
        )

    def _finish_passthrough(self, reason: str, *, keep_cookie: bool = False) -> None:
        self.reason = reason
        self.passthrough = True
        self.ready = True
        self.appended = (self._extra if keep_cookie else []) + self._debug(reason)
        self.headers = self._original + self.appended

    def _debug(self, reason: str) -> Headers:
        if not self.engine.config.show_debug_header:
            return []
        return [(DECISION_HEADER, reason)]

    # -- the insertion point -------------------------------------------------------------------


    # -- the body -----------------------------------------------------------------------------

    def body(self, chunk: bytes) -> bytes:
        if self._injector is None:
            return chunk
        out = self._injector.feed(chunk)
        if not self.ready and self._injector.done:
            self._decided()
        return out

    def finish(self) -> bytes:
        if self._injector is None:
            return b""
        out = self._injector.close()
        if not self.ready:
            self._decided()
        return out

    def _decided(self) -> None:
        injector = self._injector
        assert injector is not None
        if not injector.injected:
            reason = injector.reason or "no_anchor"
            if reason in ("scan_limit", "fragment", "utf16", "no_insertion_point", "render_error"):
                self.engine.log_once(
                    f"inject:{reason}", "replay-middleware: page not injected (%s)", reason
                )
            self._finish_passthrough(reason)
            return
        self.reason = "injected"
        headers: Headers = []
        length = self._length  # the CSP merge leaves Content-Length alone
        for pair in self._pending:
            key = pair[0].lower()
            if key in _EDITED_WHEN_MODIFIED:
                if key == "content-length":
                    if type(length) is int:  # not a bool (an invalid length), not None
                        headers.append((pair[0], str(length + injector.added)))
                    continue
                if key == "etag":
                    if not pair[1].lstrip().startswith("W/"):
                        pair = (pair[0], "W/" + pair[1].strip())
                else:
                    continue  # representation metadata of the unmodified body
            headers.append(pair)
        if self._per_user:
            _add_vary_cookie(headers)
        headers.append((MARKER_HEADER, "injected"))
        self.headers = headers + self._extra + self._debug(self.state.context.reason)
        self.passthrough = False
        self.ready = True


class _Renderer:
    """What the injector calls at the insertion point: the snippet for this response, with
    the CSP merge's nonce and the meta policies merged (no reference to the rewriter)."""

    __slots__ = ("_csp", "engine", "per_user", "state")

    def __init__(self, rewriter: ResponseRewriter) -> None:
        self.engine = rewriter.engine
        self.state = rewriter.state
        self._csp = rewriter._csp
        self.per_user = rewriter._per_user

    def __call__(self, metas: Sequence[MetaPolicy]) -> Insertion | str:
        csp = self._csp
        nonce = csp.nonce if csp is not None else new_nonce()
        use_worker = csp.use_web_worker if csp is not None else True
        trusted_types = csp.trusted_types if csp is not None else False
        rewrites: dict[int, bytes] = {}
        if self.engine.config.csp == "merge":
            for index, meta in enumerate(metas):
                merged = merge_meta_csp(meta.content, self.engine.csp_needs, nonce)
                if not merged.feasible:
                    return merged.reason or "csp_meta"
                use_worker = use_worker and merged.use_web_worker
                trusted_types = trusted_types or merged.trusted_types
                if merged.changed:
                    rewrites[index] = (
                        b'"'
                        + html.escape(merged.content, quote=True).encode(
                            "ascii", "xmlcharrefreplace"
                        )
                        + b'"'
                    )
        snippet = self.engine.render_snippet(
            self.state,
            nonce=nonce,
            per_user=self.per_user,
            use_web_worker=use_worker,
            static_sdk=trusted_types,
        )
        return frozen_new(Insertion, snippet=snippet.encode("ascii"), meta_rewrites=rewrites)


def _add_vary_cookie(headers: Headers) -> None:
    """H10: the injected markup depends on the visitor's cookie."""
    for i, (name, value) in enumerate(headers):
        if name.lower() == "vary":
            tokens = [t.strip().lower() for t in value.split(",")]
            if "*" in tokens or "cookie" in tokens:
                return
            headers[i] = (name, f"{value}, Cookie" if value.strip() else "Cookie")
            return
    headers.append(("vary", "Cookie"))
