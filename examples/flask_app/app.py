"""A small Flask app with replay-middleware in local mode: the FastAPI example's pages, in Jinja.

Pages: a home page, a sign-in form with a password field, a restricted area
(``/account/billing``, excluded from recording), a single-page-app page that navigates into and
out of the restricted area with ``history.pushState``, a page with a strict nonce-based CSP set
by flask-talisman, one with a host-allowlist CSP that relies on ``'unsafe-inline'``, and
``/manual``, whose template places the snippet itself with ``{{ replay_snippet() }}``.

Run it with ``make demo APP=flask`` (or ``python -m examples.flask_app [port]``). ``REPLAY_*``
environment variables override the defaults below (see the README's configuration table).
"""

from __future__ import annotations

import os
from collections.abc import Callable

from flask import Flask, Response, jsonify, render_template, request
from flask_talisman import Talisman  # type: ignore[import-untyped]
from markupsafe import Markup

from examples.article import article_html, article_kb
from replay_middleware import ReplayConfig, current_replay, get_replay_properties
from replay_middleware.flask import SessionReplay
from replay_middleware.proxy import Upstreams

EXCLUDE = ("/account/billing",)

#: The strict page's policy; flask-talisman appends ``'nonce-…'`` to ``script-src``.
STRICT_CSP = {"default-src": "'self'", "script-src": "'strict-dynamic'"}
INLINE_CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline' https://cdn.example.com; "
    "style-src 'self' 'unsafe-inline'"
)


def default_config() -> dict[str, object]:
    """Local mode, every session recorded, the billing area excluded: ``app.config`` keys."""
    return {"REPLAY_SAMPLE_RATE": 1.0, "REPLAY_EXCLUDE": EXCLUDE}


def create_app(config: ReplayConfig | None = None, *, upstreams: Upstreams | None = None) -> Flask:
    """The example app; ``config`` replaces ``app.config``'s ``REPLAY_*`` keys and
    ``upstreams`` points the upload proxy at a fake (tests only)."""
    app = Flask(__name__)
    app.config.from_mapping(default_config())
    # REPLAY_* environment variables win, as strings (ReplayConfig coerces them).
    app.config.update({k: v for k, v in os.environ.items() if k.startswith("REPLAY_")})
    # No app-wide CSP (and plain http on 127.0.0.1): Talisman only sets the strict pages' one.
    talisman = Talisman(app, content_security_policy=None, force_https=False)
    strict: Callable[[Callable[[], str]], Callable[[], str]] = talisman(
        content_security_policy=STRICT_CSP, content_security_policy_nonce_in=["script-src"]
    )

    @app.get("/")
    def home() -> str:
        ctx = current_replay()
        status = "not decided" if ctx is None else f"{ctx.reason} (session {ctx.session_id})"
        return render_template("home.html", status=status)

    @app.get("/signin")
    def signin_form() -> str:
        return render_template("signin.html")

    @app.post("/signin")
    def signin() -> str:
        return render_template("signed_in.html", email=request.form.get("email", ""))

    @app.get("/account/billing")
    def billing() -> str:
        return render_template("billing.html")

    @app.get("/article")
    def article() -> str:
        size = article_kb(request.args.get("kb"))
        return render_template("article.html", kb=size, article=Markup(article_html(size)))

    @app.get("/spa")
    @app.get("/spa/<path:rest>")
    def spa(rest: str = "") -> str:
        return render_template("spa.html")

    @app.get("/csp/strict")
    @strict
    def csp_strict() -> str:
        return render_template("csp_strict.html")

    @app.get("/csp/inline")
    def csp_inline() -> Response:
        return Response(
            render_template("csp_inline.html"), headers={"Content-Security-Policy": INLINE_CSP}
        )

    @app.get("/manual")
    @strict
    def manual() -> str:
        return render_template("manual.html")

    @app.get("/api/whoami")
    def whoami() -> Response:
        ctx = current_replay()
        return jsonify(replay=get_replay_properties(), reason=None if ctx is None else ctx.reason)

    SessionReplay(app, config=config, upstreams=upstreams)
    return app


app = create_app()
