"""Flask integration: ``SessionReplay(app)``, or ``replay.init_app(app)`` in an app factory.

What it adds over wrapping ``app.wsgi_app`` by hand (SPEC F2; STYLE 15):

- configuration from ``app.config``: every ``REPLAY_*`` key goes to
  ``ReplayConfig.from_mapping`` (a bad key or value raises ``ValueError`` at ``init_app``), and
  ``secret_key`` defaults to keys derived from the app's ``SECRET_KEY`` of any length (an
  HMAC, as the Django integration does) and its ``SECRET_KEY_FALLBACKS`` (key rotation);
- ``app.wsgi_app`` wrapped in :class:`~replay_middleware.wsgi.ReplayWSGIMiddleware`, outside
  every Flask hook, so the middleware sees the final response headers: flask-talisman sets its
  CSP in an ``after_request`` hook, which runs *inside* the WSGI app (notes/csp.md (c));
- the Jinja global ``replay_snippet()`` for placing the snippet by hand (N4): it reuses
  flask-talisman's ``request.csp_nonce`` when the view has one (C3) and tells the middleware,
  which then injects nothing more on that page and only merges the CSP so the snippet runs.

The decision of the request is ``current_replay()`` inside a view, as with every adapter.
Start-up warnings (local mode, sample rate 0, a missing SDK bundle...) are logged once, on the
first request, not by ``init_app``: the ``flask`` CLI builds the app for every command.

Teardown: none is registered (Flask has no process-shutdown hook). The middleware holds an HTTP
client (with an API key) or the local store (in local mode), which the operating system releases
at exit; call ``replay.middleware_for(app).close()`` to release them earlier (tests, or a
server's worker-exit hook).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any, Protocol
from weakref import WeakKeyDictionary, ref

from flask import Flask, current_app, has_request_context, request
from markupsafe import Markup

from .config import ReplayConfig
from .csp import new_nonce
from .engine import RequestState
from .identity import derive_secret_key
from .proxy import Upstreams
from .wsgi import ENVIRON_KEY, MANUAL_NONCE_KEY, ReplayWSGIMiddleware

__all__ = ["SessionReplay"]

#: ``app.extensions`` key of the extension.
EXTENSION_KEY = "replay_middleware"
#: ``app.config`` keys that configure us.
CONFIG_PREFIX = "REPLAY_"
#: A CSP base64-value (CSP3 §2.3.1), the shape a nonce must have to be reused.
_NONCE_RE = re.compile(r"[A-Za-z0-9+/_-]+={0,2}")

logger = logging.getLogger("replay_middleware")


class _StateSource(Protocol):
    def state(self) -> RequestState: ...


class SessionReplay:
    """The Flask extension. One instance may serve several apps (the app-factory pattern)."""

    def __init__(
        self,
        app: Flask | None = None,
        *,
        config: ReplayConfig | None = None,
        upstreams: Upstreams | None = None,
    ) -> None:
        """``config``: use this instead of ``app.config["REPLAY_*"]`` (which is then ignored).
        ``upstreams`` replaces Amplitude's endpoints (tests point it at a local fake)."""
        self.config = config
        self.upstreams = upstreams
        # Weak both ways: the app keeps its middleware alive (``app.wsgi_app``), and an
        # extension shared by many apps (app factories, tests) keeps none of them alive.
        self._middlewares: WeakKeyDictionary[Flask, ref[ReplayWSGIMiddleware]] = WeakKeyDictionary()
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Read the config, wrap ``app.wsgi_app`` and register ``replay_snippet()``.

        Order does not matter relative to other extensions (flask-talisman's hooks run inside
        the WSGI app either way) nor to WSGI middlewares added later (``ProxyFix`` then wraps
        ours and fixes the environ before we read it). Raises ``ValueError`` for a bad ``REPLAY_*`` key or value and ``RuntimeError`` when
        the app already has the extension (two middlewares would compete, H8).
        """
        if EXTENSION_KEY in app.extensions:
            raise RuntimeError("SessionReplay is already initialised on this app")
        config = self.config
        if config is None:
            config = config_from_flask(app.config, app.secret_key)
        middleware = ReplayWSGIMiddleware(app.wsgi_app, config, upstreams=self.upstreams)
        app.wsgi_app = middleware  # type: ignore[method-assign]
        self._middlewares[app] = ref(middleware)
        app.extensions[EXTENSION_KEY] = self
        app.add_template_global(self.replay_snippet, "replay_snippet")

    def middleware_for(self, app: Flask | None = None) -> ReplayWSGIMiddleware:
        """The middleware wrapping ``app`` (default: the current app); ``KeyError`` if none."""
        if app is None:
            app = current_app._get_current_object()  # type: ignore[attr-defined]
        middleware = self._middlewares[app]()
        if middleware is None:  # the app replaced ``app.wsgi_app`` and dropped ours
            raise KeyError(app)
        return middleware

    def replay_snippet(self) -> Markup:
        """The Jinja global: the snippet for this request, once per response.

        Empty outside a request that went through the middleware, when the session is not
        recorded (an excluded route, opted out, not in the sample) and on a second call.
        The nonce is flask-talisman's ``request.csp_nonce`` when the view has one, so the
        header Talisman wrote already allows the snippet; otherwise a fresh one, which the
        middleware adds to the page's CSP. With ``stream_template``, call it in the
        ``<head>``: the middleware learns about it only from the bytes it scans there.
        """
        if not has_request_context():
            return Markup("")
        environ = request.environ
        source: _StateSource | None = environ.get(ENVIRON_KEY)
        if source is None or MANUAL_NONCE_KEY in environ:
            return Markup("")
        engine = self.middleware_for().engine
        nonce = talisman_nonce() or new_nonce()
        try:
            snippet = engine.manual_snippet(source.state(), nonce)
        except Exception:
            # H9: a page without the recorder rather than a broken page.
            logger.exception("replay-middleware: replay_snippet() failed; rendering nothing")
            return Markup("")
        if snippet:
            environ[MANUAL_NONCE_KEY] = nonce
        # The renderer escapes every value it embeds (N2): the markup is safe as it is.
        return Markup(snippet)


def talisman_nonce() -> str | None:
    """flask-talisman's nonce for this request (set eagerly in its ``before_request`` when the
    view's policy asks for one), if it is a valid CSP base64-value."""
    value = getattr(request, "csp_nonce", None)
    return value if isinstance(value, str) and _NONCE_RE.fullmatch(value) else None


def config_from_flask(settings: Mapping[str, Any], secret_key: object = None) -> ReplayConfig:
    """``ReplayConfig`` from the ``REPLAY_*`` keys of ``settings`` (``app.config``).

    Without ``REPLAY_SECRET_KEY`` the cookie signing key is derived from ``secret_key`` (the
    app's ``SECRET_KEY``, ``str`` or ``bytes``, any length) as Django's integration does: an
    HMAC with a purpose string, so the app's key itself is never used as is and two processes
    with the same ``SECRET_KEY`` accept each other's cookies. Flask's ``SECRET_KEY_FALLBACKS``
    (old keys, Flask 3.1) are derived too, as older keys: cookies signed under them are still
    accepted and re-issued under ``SECRET_KEY`` (key rotation). A missing or empty
    ``SECRET_KEY`` leaves ``secret_key`` unset: local mode then signs with a random
    per-process key and says so on the first request; with an ``api_key`` it is an error.
    """
    data = {k: v for k, v in settings.items() if k.startswith(CONFIG_PREFIX)}
    key = f"{CONFIG_PREFIX}SECRET_KEY"
    if key not in data and secret_key:
        fallbacks = settings.get("SECRET_KEY_FALLBACKS") or ()
        data[key] = tuple(
            derive_secret_key(raw if isinstance(raw, (str, bytes)) else str(raw))
            for raw in (*fallbacks, secret_key)
            if raw
        )
    return ReplayConfig.from_mapping(data)
