"""A small FastAPI app with replay-middleware in local mode.

Pages: a home page, a sign-in form with a password field, a restricted area
(``/account/billing``, excluded from recording), a single-page-app page that navigates into and
out of the restricted area with ``history.pushState``, a page with a strict nonce-based CSP and
one with a host-allowlist CSP that relies on ``'unsafe-inline'``.

Run it with ``make demo`` (or ``python -m examples.fastapi_app``). ``REPLAY_*`` environment
variables override the defaults below (see the README's configuration table).
"""

from __future__ import annotations

import dataclasses
import html
import os
import secrets

from fastapi import FastAPI, Form, Request
from fastapi.responses import HTMLResponse, JSONResponse

from examples.article import article_html, article_kb
from replay_middleware import ReplayConfig, ReplayMiddleware, current_replay, get_replay_properties
from replay_middleware.proxy import Upstreams

EXCLUDE = ("/account/billing",)

NAV = (
    '<nav><a href="/">Home</a> · <a href="/signin">Sign in</a> · <a href="/spa">Single-page app</a>'
    ' · <a href="/account/billing">Billing (not recorded)</a> · <a href="/csp/strict">Strict CSP</a>'
    ' · <a href="/csp/inline">Inline CSP</a> · <a href="/article">Long article</a></nav>'
)


def page(title: str, body: str, *, head: str = "") -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n{head}</head>\n<body>\n{NAV}\n"
        f"<h1>{html.escape(title)}</h1>\n{body}\n</body>\n</html>\n"
    )


def default_config() -> ReplayConfig:
    """Local mode, every session recorded, the billing area excluded; REPLAY_* env wins."""
    env = ReplayConfig.from_env()
    return dataclasses.replace(
        env,
        sample_rate=env.sample_rate if "REPLAY_SAMPLE_RATE" in os.environ else 1.0,
        exclude=env.exclude or EXCLUDE,
    )


SPA_SCRIPT = """
<script>
document.addEventListener("click", function (event) {
  var link = event.target.closest("a[data-spa]");
  if (!link) return;
  event.preventDefault();
  history.pushState({}, "", link.getAttribute("href"));
  render();
});
window.addEventListener("popstate", render);
function render() {
  var view = document.getElementById("view");
  view.textContent = location.pathname.indexOf("/account/billing") === 0
    ? "Billing details (client-side view; the recorder is shut down here)"
    : "Client-side view of " + location.pathname;
}
render();
</script>
"""


def create_app(
    config: ReplayConfig | None = None, *, upstreams: Upstreams | None = None
) -> FastAPI:
    """The example app; ``upstreams`` points the upload proxy at a fake (tests only)."""
    app = FastAPI(title="replay-middleware FastAPI example", docs_url=None, redoc_url=None)

    @app.get("/", response_class=HTMLResponse)
    def home() -> str:
        ctx = current_replay()
        status = "not decided" if ctx is None else f"{ctx.reason} (session {ctx.session_id})"
        return page(
            "replay-middleware demo",
            "<p>Click around, type in the sign-in form, then open the inspector.</p>"
            f'<p id="decision">Replay decision: {html.escape(status)}</p>'
            '<button id="counter" type="button">Clicked 0 times</button>'
            "<script>var n=0;document.getElementById('counter').addEventListener('click',"
            "function(){n++;this.textContent='Clicked '+n+' times';});</script>",
        )

    @app.get("/signin", response_class=HTMLResponse)
    def signin_form() -> str:
        return page(
            "Sign in",
            '<form method="post" action="/signin">'
            '<label>Email <input id="email" name="email" type="email" autocomplete="username"></label>'
            '<label>Password <input id="password" name="password" type="password" autocomplete="current-password"></label>'
            '<button id="submit" type="submit">Sign in</button></form>',
        )

    @app.post("/signin", response_class=HTMLResponse)
    def signin(email: str = Form(""), password: str = Form("")) -> str:
        return page("Signed in", f"<p>Welcome, {html.escape(email)}.</p>")

    @app.get("/account/billing", response_class=HTMLResponse)
    def billing() -> str:
        return page("Billing", "<p>Card ending 4242. This page is never recorded.</p>")

    @app.get("/article", response_class=HTMLResponse)
    def article(kb: str | None = None) -> str:
        size = article_kb(kb)
        return page(f"A long article ({size} KB)", article_html(size))

    @app.get("/spa", response_class=HTMLResponse)
    @app.get("/spa/{rest:path}", response_class=HTMLResponse)
    def spa(rest: str = "") -> str:
        return page(
            "Single-page app",
            '<p><a data-spa href="/spa/inbox">Inbox</a> · <a data-spa href="/account/billing">'
            'Billing (client-side)</a> · <a data-spa href="/spa/settings">Settings</a></p>'
            '<div id="view"></div>' + SPA_SCRIPT,
        )

    @app.get("/csp/strict", response_class=HTMLResponse)
    def csp_strict() -> HTMLResponse:
        nonce = secrets.token_urlsafe(16)
        body = page(
            "Strict CSP",
            f'<p id="app-script">app script did not run</p><script nonce="{nonce}">'
            "document.getElementById('app-script').textContent='app script ran';</script>",
        )
        policy = f"default-src 'self'; script-src 'nonce-{nonce}' 'strict-dynamic'"
        return HTMLResponse(body, headers={"Content-Security-Policy": policy})

    @app.get("/csp/inline", response_class=HTMLResponse)
    def csp_inline() -> HTMLResponse:
        body = page(
            "Host-allowlist CSP with 'unsafe-inline'",
            '<p id="app-script">app script did not run</p><script>'
            "document.getElementById('app-script').textContent='app script ran';</script>",
        )
        policy = (
            "default-src 'self'; script-src 'self' 'unsafe-inline' https://cdn.example.com; "
            "style-src 'self' 'unsafe-inline'"
        )
        return HTMLResponse(body, headers={"Content-Security-Policy": policy})

    @app.get("/api/whoami")
    def whoami(request: Request) -> JSONResponse:
        ctx = request.state.replay
        return JSONResponse({"replay": get_replay_properties(), "reason": ctx.reason})

    app.add_middleware(ReplayMiddleware, config=config or default_config(), upstreams=upstreams)
    return app


app = create_app()
