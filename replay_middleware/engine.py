"""ReplayEngine: everything about a request that is the same for ASGI and WSGI.

Sans-IO: built once per middleware from a ``ReplayConfig`` (at start-up it reads the loader
file from the package and checks that the vendored SDK bundle exists, nothing else), then
answers pure questions: which identity and decision a request gets (``begin``), what a
first-party endpoint answers (``endpoint``), how a response is rewritten (``rewriter``, see
``rewrite.py``). The adapters only translate their world's request and response into these
calls and back (STYLE 3).

The engine never changes after ``__init__`` (STYLE 5), except the set of log-once keys and
the start-up warnings still to log (emptied by the first request, see ``announce``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import secrets
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import parse_qs

from ._fast import frozen_new
from .config import SDK_DEFAULT_OPTIONS, ReplayConfig
from .cookies import COOKIE_VALUE as _COOKIE_VALUE
from .cookies import dump_cookie
from .csp import CspNeeds
from .decision import DECISION_HEADER, ReplayContext, decide
from .identity import IdentityCodec, IdentityResult, resolve_identity
from .injection import ScanCache
from .inspector import Inspector, inspector_token_for
from .local_store import LocalStore
from .proxy import DEFAULT_UPSTREAMS, ENDPOINT_TOO_LARGE, RemoteSampling
from .request import RequestInfo
from .response import HttpResponse
from .routes import RouteRules, glob_to_regex
from .sdk import CDN_BASE, cdn_url, pin_for, static_dir, vendor_path
from .snippet import SnippetRenderer, SnippetSettings

__all__ = ["HttpResponse", "ReplayEngine", "RequestState"]

logger = logging.getLogger("replay_middleware")

#: The key the SDK is given in local mode: it only names localStorage entries and the
#: ``/config/<key>`` path, which the middleware answers itself.
LOCAL_API_KEY = "local"
#: A remote config that lets the SDK record with the local sample rate (PROTOCOL §1.5).
LOCAL_REMOTE_CONFIG = b'{"configs":{"sessionReplay":{}}}'

# Reasons for which no identity cookie is written: the visitor opted out (a privacy signal
# must not be answered with a tracking cookie) or the page is a restricted area.
_NO_COOKIE_REASONS = frozenset(
    {
        "opted_out_config",
        "opted_out_user",
        "opted_out_gpc",
        "opted_out_dnt",
        "no_consent",
        "excluded_route",
        "not_included",
    }
)
# Reasons that hold for every visitor of a page, so they also apply to cacheable pages.
ROUTE_LEVEL_REASONS = frozenset(
    {"excluded_route", "not_included", "opted_out_config", "capture_disabled"}
)

_NO_STORE = ("cache-control", "no-store")
_IMMUTABLE = ("cache-control", "public, max-age=31536000, immutable")
_JS = ("content-type", "text/javascript; charset=utf-8")
_JSON = ("content-type", "application/json")
_NOSNIFF = ("x-content-type-options", "nosniff")


@dataclass(frozen=True)
class RequestState:
    """The per-request values the adapters carry from ``begin`` to the response."""

    request: RequestInfo
    context: ReplayContext
    identity: IdentityResult
    secure: bool

    def cookie_headers(self, engine: ReplayEngine) -> list[tuple[str, str]]:
        """``Set-Cookie`` for the identity when it changed and this visitor may get one (I4)."""
        if not self.identity.write_cookie or self.context.reason in _NO_COOKIE_REASONS:
            return []
        value = engine.codec.dumps(self.identity.identity)
        return [("set-cookie", engine.identity_cookie(value, self.secure))]


@dataclass
class _LogOnce:
    seen: set[str] = field(default_factory=set)
    # Concurrent requests of a threaded server may hit the same key: exactly one logs.
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def __call__(self, key: str, msg: str, *args: object, level: int = logging.WARNING) -> None:
        if key in self.seen:  # the common case: one set lookup, no lock
            return
        with self._lock:
            if key in self.seen:
                return
            self.seen.add(key)
        logger.log(level, msg, *args)


class _StartupNotices:
    """The start-up warnings (SPEC O4), logged once on the first request, not when the engine
    is built: Flask's CLI builds the app, and so the middleware, for every command (``flask
    routes``, ``flask shell``), which would print them each time (issue 7).

    ``pending`` (emptied once logged) is, with the log-once keys, the only state of the engine
    that changes after ``__init__`` (STYLE 5); the lock hands the messages to exactly one of
    several concurrent first requests.
    """

    __slots__ = ("_lock", "pending")

    def __init__(self, messages: tuple[str, ...]) -> None:
        self.pending = messages
        self._lock = threading.Lock()

    def __call__(self) -> None:
        if not self.pending:  # every request after the first: one attribute read, no lock
            return
        with self._lock:
            messages, self.pending = self.pending, ()
        for message in messages:
            logger.warning("replay-middleware: %s", message)


class ReplayEngine:
    """The framework-neutral heart of the middleware; one per middleware instance."""

    def __init__(self, config: ReplayConfig, *, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.clock = clock
        self.log_once = _LogOnce()
        self.routes = RouteRules(config.exclude, config.include)
        notices: list[str] = []
        secret: str | tuple[str, ...] = config.secret_keys
        #: Cookies are signed with a random key of this process (local mode, no secret_key).
        self.random_secret = not secret
        if not secret:
            # Local mode only (ReplayConfig refuses an api_key without a secret).
            secret = secrets.token_urlsafe(32)
            notices.append(
                "no secret_key is set (with Flask: neither REPLAY_SECRET_KEY nor SECRET_KEY; "
                "with Django: no SECRET_KEY); identity cookies are signed with a random "
                "per-process key, so visitors get new ids whenever the process restarts"
            )
        self.codec = IdentityCodec(secret)
        self._cookie_name = config.cookie_name
        self._cookie_attributes = {
            secure: self._identity_cookie_attributes(secure) for secure in (False, True)
        }
        notices = [*notices, *config.startup_warnings(), *self.routes.browser_warnings]

        prefix = config.prefix
        self.prefix = prefix
        self.loader_body = (static_dir() / "loader.js").read_bytes()
        digest = hashlib.sha256(self.loader_body).hexdigest()
        self.loader_hash = digest[:16]
        self.loader_etag = f'"{digest[:32]}"'
        self.loader_path = f"{prefix}/loader-{self.loader_hash}.js"
        pin = pin_for(config.sdk_version)
        if config.sdk_source == "cdn":
            sdk_url = f"{CDN_BASE}/session-replay-browser-{config.sdk_version}-min.js.gz"
        else:
            sdk_url = f"{prefix}/sdk/{config.sdk_version}.js"
        self.sdk_path = f"{prefix}/sdk/{config.sdk_version}.js"

        origin = config.public_origin
        #: The scheme requests should arrive with, from ``public_origin`` (O4).
        self._origin_scheme = origin.partition("://")[0] if origin else None
        first_party_source = f"{origin}{prefix}/" if origin else "'self'"
        #: The SDK talks to our first-party endpoints (local mode, or the upload proxy) ...
        self.first_party = config.local_mode or config.upload_mode == "proxy"
        if self.first_party:
            key = config.api_key or LOCAL_API_KEY
            endpoints: dict[str, str] | None = {
                "track": f"{prefix}/track",
                "config": f"{prefix}/config",
            }
            connect_urls: tuple[str, ...] = (f"{prefix}/track", f"{prefix}/config/{key}")
            connect_sources: tuple[str, ...] = (first_party_source, first_party_source)
        else:
            # ... or, in direct mode, Amplitude's regional hosts (blockers may drop these).
            endpoints = None
            zone = config.server_zone
            track = DEFAULT_UPSTREAMS.track_url(zone, "")
            cfg = DEFAULT_UPSTREAMS.config_url(zone, config.api_key or "")
            connect_urls = (track, cfg)
            connect_sources = (_origin_of(track), _origin_of(cfg))
        use_worker = config.sdk_options.get("useWebWorker", True) is not False
        self.csp_needs = CspNeeds(
            script_urls=(self.loader_path, sdk_url),
            script_source=first_party_source,
            connect_urls=connect_urls,
            connect_sources=connect_sources,
            public_origin=origin,
            use_worker=use_worker,
            merge_report_only=config.csp_report_only_merge,
        )
        base_options: dict[str, Any] = {
            "serverZone": config.server_zone,
            **SDK_DEFAULT_OPTIONS,
            **config.sdk_options,
        }
        if config.privacy:
            base_options["privacyConfig"] = json.loads(json.dumps(dict(config.privacy)))
        self.renderer = SnippetRenderer(
            SnippetSettings(
                api_key=config.api_key or LOCAL_API_KEY,
                loader_url=self.loader_path,
                sdk_url=sdk_url,
                sdk_integrity=pin.sri,
                session_url=f"{prefix}/session",
                cookie_name=config.cookie_name,
                session_timeout_ms=config.session_timeout * 1000,
                endpoints=endpoints,
                base_options=base_options,
                routes=self.routes.to_js(),
            )
        )
        self._mask_levels = tuple(
            (re.compile(glob_to_regex(glob)), level)
            for glob, level in config.route_mask_levels.items()
        )
        self._no_routes = RouteRules((), None)
        #: Insertion points of the heads this process has seen (injection.ScanCache).
        self.scan_cache = ScanCache()
        self.store: LocalStore | None = None
        self.inspector: Inspector | None = None
        if config.local_mode:
            # Opens lazily: building the engine touches no file.
            self.store = LocalStore(config.local_store_dir, max_bytes=config.local_store_max_bytes)
            # The token is printed here (local mode only, where the inspector exists); with a
            # secret_key every process derives the same one (docs/inspector.md).
            token = inspector_token_for(config.inspector_token, config.signing_key)
            self.inspector = Inspector(
                self.store, prefix, token=token, allow=config.inspector_allow
            )
            notices.append(
                f"local mode: uploads are kept in {config.local_store_dir.rstrip('/')}/; "
                f"open {config.public_origin or ''}{self.inspector.sign_in_url} to replay "
                "them (the token is required: the inspector answers 404 without it)"
            )
        if config.sdk_source == "first-party" and not vendor_path(config.sdk_version).is_file():
            # Pages are still injected: the CDN download usually succeeds, and when it does
            # not, the loader's script fails to load and the page itself is unaffected (H9).
            notices.append(
                f"the Session Replay SDK bundle is not installed ({vendor_path(config.sdk_version)} "
                f"is missing): pages still get the recorder, and {self.sdk_path} will be "
                f"downloaded once from Amplitude's CDN ({cdn_url(config.sdk_version)}) on its "
                "first request; if the CDN cannot be reached, that path answers 503 and nothing "
                "is recorded. Run `make setup` in a checkout, or install a wheel that carries "
                "the bundle"
            )
        #: Logged on the first request, not here (see ``announce``).
        self._startup = _StartupNotices(tuple(notices))

    # -- per request ------------------------------------------------------------------------

    def announce(self) -> None:
        """Log the start-up warnings, once per engine, on its first request; adapters call
        this at the top of every request they handle (a flag test after the first)."""
        self._startup()

    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    def begin(self, request: RequestInfo, *, remote: RemoteSampling | None = None) -> RequestState:
        """Resolve the identity and the decision of an application request.

        ``remote`` is the project's remote sampling config when known (S2): its rate wins over
        ``sample_rate`` and ``capture_enabled: false`` records nobody. With remote targeting
        the SDK decides per session by rules the server cannot evaluate, so every session that
        passes the other checks gets the recorder and the SDK makes the final call.
        """
        if self._origin_scheme is not None and request.scheme != self._origin_scheme:
            self._scheme_mismatch(request.scheme)
        identity = resolve_identity(request, self.config, self.codec, self.now_ms())
        if remote is None:
            ctx = decide(request, identity.identity, self.config, self.routes)
        else:
            ctx = decide(
                request, identity.identity, self.config, self.routes, **_remote_args(remote)
            )
        if identity.event:
            logger.debug("identity: %s (source %s)", identity.event, identity.identity.source)
        return frozen_new(
            RequestState,
            request=request,
            context=ctx,
            identity=identity,
            secure=self._is_secure(request),
        )

    def _scheme_mismatch(self, scheme: str) -> None:
        # O4: behind a TLS-terminating proxy the server must be told the original scheme,
        # else cookie_secure="auto" and the CSP sources disagree with the browser's origin.
        self.log_once(
            "origin_scheme",
            "replay-middleware: public_origin is %s but a request arrived as %s: if a proxy "
            "terminates TLS, have the server trust its X-Forwarded-Proto (uvicorn "
            "--forwarded-allow-ips, gunicorn forwarded_allow_ips, werkzeug ProxyFix, Django "
            "SECURE_PROXY_SSL_HEADER); otherwise fix public_origin",
            self.config.public_origin,
            scheme,
        )

    def check_workers(self, multiprocess: object) -> None:
        """O4: warn once when a multi-process server runs on a random per-process key.

        ``multiprocess``: the adapter's best knowledge that other worker processes serve the
        same site: WSGI's ``wsgi.multiprocess`` (gunicorn, uWSGI, mod_wsgi set it when they
        run more than one worker), or ``WEB_CONCURRENCY`` above 1 (see ``many_workers``).
        """
        if multiprocess and self.random_secret:
            self.log_once(
                "multiprocess_secret",
                "replay-middleware: no secret_key: each worker process signs cookies with its "
                "own random key, so visitors get new ids whenever a request lands on another "
                "worker; set secret_key",
            )

    def _is_secure(self, request: RequestInfo) -> bool:
        if self.config.cookie_secure == "auto":
            return request.is_secure or (self.config.public_origin or "").startswith("https://")
        return bool(self.config.cookie_secure)

    def identity_cookie(self, value: str, secure: bool) -> str:
        """The identity ``Set-Cookie`` value; the attributes are built once per ``secure``."""
        if not _COOKIE_VALUE.fullmatch(value):
            raise ValueError("cookie value holds characters outside RFC 6265 cookie-octet")
        return f"{self._cookie_name}={value}{self._cookie_attributes[secure]}"

    def _identity_cookie_attributes(self, secure: bool) -> str:
        c = self.config
        whole = dump_cookie(
            c.cookie_name,
            "",
            max_age=c.device_max_age,
            domain=c.cookie_domain,
            secure=secure or c.cookie_samesite == "None",
            samesite=c.cookie_samesite,
        )
        return whole[len(c.cookie_name) + 1 :]

    def snippet_options(self, ctx: ReplayContext | None, *, use_web_worker: bool) -> dict[str, Any]:
        """Per-request SDK options: the sample rate the SDK should apply and CSP-driven ones."""
        options: dict[str, Any] = {}
        if ctx is not None:
            # A forced session must pass the SDK's own sampling too (PROTOCOL §3.4).
            options["sampleRate"] = 1 if ctx.forced else ctx.sample_rate
        else:
            options["sampleRate"] = self.config.sample_rate
        if not use_web_worker:
            options["useWebWorker"] = False
        return options

    def mask_level_for(self, path: str) -> str | None:
        for rx, level in self._mask_levels:
            if rx.search(path):
                return level
        return None

    def render_snippet(
        self,
        state: RequestState | None,
        *,
        nonce: str | None,
        per_user: bool,
        use_web_worker: bool = True,
        static_sdk: bool = False,
    ) -> str:
        """The snippet for one response; ``per_user`` False gives the cache-safe form (H10)."""
        ctx = state.context if state is not None and per_user else None
        options = self.snippet_options(ctx, use_web_worker=use_web_worker)
        if state is not None and self._mask_levels:
            level = self.mask_level_for(RouteRules.normalize(state.request.path))
            if level:
                privacy = dict(self.renderer.settings.base_options.get("privacyConfig") or {})
                privacy["defaultMaskLevel"] = level
                options["privacyConfig"] = privacy
        ids = None
        if ctx is not None:
            ident = state.identity.identity  # type: ignore[union-attr]
            ids = (ident.device_id, ident.session_id, ident.last_activity)
        return self.renderer.render(
            nonce=nonce,
            ids=ids,
            record=None if ctx is None else ctx.sampled,
            options=options,
            static_sdk=static_sdk,
        )

    def manual_snippet(self, state: RequestState, nonce: str | None) -> str:
        """The snippet for manual placement (Django template tag, Flask Jinja global; N4).

        Empty when this request's session is not recorded here. Pass the framework's CSP
        nonce when it has one (django-csp's ``request.csp_nonce``, Django 6's ``get_nonce(request)``, flask-talisman's);
        the adapter then merges the page's CSP with that nonce instead of injecting again
        (``ResponseRewriter(manual_nonce=...)``).
        """
        if not state.context.sampled or not state.context.eligible:
            return ""
        return self.render_snippet(state, nonce=nonce, per_user=True)

    # -- first-party endpoints -----------------------------------------------------------------

    def is_endpoint(self, path: str) -> bool:
        return path == self.prefix or path.startswith(self.prefix + "/")

    def endpoint(
        self,
        request: RequestInfo,
        body: bytes | None = None,
        *,
        remote: RemoteSampling | None = None,
    ) -> HttpResponse | str:
        """Answer a request under the prefix. Returns ``"sdk"`` when the adapter must serve the
        SDK bundle (its source may need I/O), ``"read_body"`` when the endpoint needs the
        request body and ``body`` was not given."""
        path = request.path[len(self.prefix) :]
        method = request.method
        if path == self.loader_path[len(self.prefix) :] or (
            path.startswith("/loader-") and path.endswith(".js")
        ):
            if method not in ("GET", "HEAD"):
                return _method_not_allowed("GET, HEAD")
            exact = path == self.loader_path[len(self.prefix) :]
            # An old hash (a page cached before a deploy) gets the current loader, briefly cached.
            cache = _IMMUTABLE if exact else ("cache-control", "public, max-age=300")
            return self._static(request, self.loader_body, self.loader_etag, [_JS, cache, _NOSNIFF])
        if path == self.sdk_path[len(self.prefix) :]:
            if method not in ("GET", "HEAD"):
                return _method_not_allowed("GET, HEAD")
            return "sdk"
        if path == "/session":
            if method != "GET":
                return _method_not_allowed("GET")
            return self._session(request, remote)
        if self.inspector is not None and self.inspector.handles(request.path):
            return self.inspector.handle(request)
        # Local mode's SDK endpoints answer the clients the inspector serves (its address rule,
        # not its token: the SDK cannot send one); anyone else gets the 404 below (SPEC L2).
        if (
            self.store is not None
            and self.inspector is not None
            and self.inspector.is_allowed(request)
        ):
            if path == "/track":
                if method != "POST":
                    return _method_not_allowed("POST")
                if body is None:
                    return "read_body"
                return self._local_track(request, body)
            if path.startswith("/config/") and "/" not in path[len("/config/") :]:
                if method not in ("GET", "HEAD"):
                    return _method_not_allowed("GET, HEAD")
                return HttpResponse(200, [_JSON, _NO_STORE], LOCAL_REMOTE_CONFIG)
        return HttpResponse(
            404, [("content-type", "text/plain; charset=utf-8"), _NO_STORE], b"Not Found"
        )

    def upload_cookie(self, request: RequestInfo) -> list[tuple[str, str]]:
        """I4: an upload for the session in the visitor's cookie slides its last activity.

        Uploads only happen while the visitor is active, so even a cookie past the timeout is
        slid rather than rolled: the recorder in that page is still using the session.
        """
        raw = request.cookies.get(self.config.cookie_name)
        own = self.codec.loads(raw) if raw else None
        if own is None:
            return []
        query = parse_qs(request.query_string, max_num_fields=8)
        if query.get("session_id") != [str(own.session_id)] or query.get(
            "device_id", [own.device_id]
        ) != [own.device_id]:
            return []
        moved = replace(own, last_activity=max(own.last_activity, self.now_ms()))
        return [
            ("set-cookie", self.identity_cookie(self.codec.dumps(moved), self._is_secure(request)))
        ]

    def endpoint_blocks(self, path: str) -> bool:
        """The endpoint does blocking work (SQLite, decoding): adapters run it off the loop."""
        return self.store is not None and (
            path == self.prefix + "/track"
            or (self.inspector is not None and self.inspector.handles(path))
        )

    def close(self) -> None:
        """Release what the engine opened (the local store)."""
        if self.store is not None:
            self.store.close()

    def sdk_response(self, request: RequestInfo, body: bytes, etag: str) -> HttpResponse:
        return self._static(request, body, etag, [_JS, _IMMUTABLE, _NOSNIFF])

    @staticmethod
    def _static(
        request: RequestInfo, body: bytes, etag: str, headers: list[tuple[str, str]]
    ) -> HttpResponse:
        headers = [*headers, ("etag", etag)]
        inm = request.headers.get("if-none-match", "")
        if etag in [t.strip() for t in inm.split(",")] or inm.strip() == "*":
            return HttpResponse(304, headers)
        headers.append(("content-length", str(len(body))))
        return HttpResponse(200, headers, b"" if request.method == "HEAD" else body)

    def _session(self, request: RequestInfo, remote: RemoteSampling | None = None) -> HttpResponse:
        """I5: the current ids, rolling the session if it timed out. Route rules are the
        loader's business here (this request's path is the endpoint's, not the page's)."""
        identity = resolve_identity(request, self.config, self.codec, self.now_ms())
        ctx = decide(
            request,
            identity.identity,
            self.config,
            self._no_routes,
            page_request=False,
            **_remote_args(remote),
        )
        state = RequestState(request, ctx, identity, self._is_secure(request))
        ident = identity.identity
        payload = {
            "deviceId": ident.device_id,
            "sessionId": ident.session_id,
            "lastActivity": ident.last_activity,
            "record": ctx.sampled,
        }
        headers = [_JSON, _NO_STORE, *state.cookie_headers(self)]
        if self.config.show_debug_header:
            headers.append((DECISION_HEADER, ctx.reason))
        return HttpResponse(200, headers, json.dumps(payload).encode())

    def _local_track(self, request: RequestInfo, body: bytes) -> HttpResponse:
        assert self.store is not None
        if len(body) > self.config.max_upload_bytes:
            # The SDK splits a batch on 413 only when the text matches /payload.*exceed/i.
            return ENDPOINT_TOO_LARGE
        stored = self.store.add(request.query_string, dict(request.headers), body, self.now_ms())
        if stored.too_large:
            # Past a decoding limit (payloads.py): nothing stored, and the SDK sends the batch
            # again in halves (PROTOCOL §2), down to single events.
            return ENDPOINT_TOO_LARGE
        # No Cache-Control: a POST answer is not stored without explicit freshness (RFC 9110
        # §9.3.3), and with "no-store" chromium leaves the body of a worker's upload unread
        # until the worker dies, then lists the upload as failed (net::ERR_ABORTED) although
        # it arrived (docs/page-exit.md).
        return HttpResponse(200, [_JSON, *self.upload_cookie(request)], b'{"code":200}')


def many_workers(environ: Mapping[str, str]) -> bool:
    """Whether ``WEB_CONCURRENCY`` (an environment mapping) asks for more than one worker.

    It is the default of both ``uvicorn --workers`` and gunicorn's ``--workers``, and
    platforms (Heroku, Render, Dokku) set it; ASGI has no ``wsgi.multiprocess`` flag, so this
    is the only reliable sign. A ``--workers N`` given on the command line alone is not seen.
    """
    raw = environ.get("WEB_CONCURRENCY", "").strip()
    return raw.isdigit() and int(raw) > 1


def _remote_args(remote: RemoteSampling | None) -> dict[str, Any]:
    if remote is None:
        return {}
    rate = 1.0 if remote.targeting else remote.sample_rate
    return {"sample_rate": rate, "capture_enabled": remote.capture_enabled}


def _method_not_allowed(allow: str) -> HttpResponse:
    return HttpResponse(
        405,
        [("allow", allow), ("content-type", "text/plain; charset=utf-8"), _NO_STORE],
        b"Method Not Allowed",
    )


def _origin_of(url: str) -> str:
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{rest.split('/', 1)[0]}"


def encode_headers(headers: Sequence[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    return [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers]
