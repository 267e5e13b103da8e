"""Pages of the Django example, the same as examples/fastapi_app.

A home page, a sign-in form with a password field, a restricted area (``/account/billing``,
excluded from recording), a single-page-app page that navigates into and out of the
restricted area with ``history.pushState``, a page with a strict nonce-based CSP (django-csp's
nonce, reused by the middleware), one with a host-allowlist CSP that relies on
``'unsafe-inline'``, and a page that places the snippet with ``{% replay_snippet %}``.
"""

from __future__ import annotations

from csp.constants import NONCE, SELF, STRICT_DYNAMIC, UNSAFE_INLINE
from csp.decorators import csp
from django.contrib import admin
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.template import engines
from django.urls import path, re_path

from examples.article import article_html, article_kb
from replay_middleware import current_replay, get_replay_properties

NAV = (
    '<nav><a href="/">Home</a> · <a href="/signin">Sign in</a> · <a href="/spa">Single-page app</a>'
    ' · <a href="/account/billing">Billing (not recorded)</a> · <a href="/csp/strict">Strict CSP</a>'
    ' · <a href="/csp/inline">Inline CSP</a> · <a href="/manual">Template tag</a>'
    ' · <a href="/article">Long article</a> · <a href="/admin/">Admin</a></nav>'
)

BASE = (
    '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
    "<title>{{ title }}</title>\n{% block head %}{% endblock %}</head>\n<body>\n" + NAV + "\n"
    "<h1>{{ title }}</h1>\n{% block body %}{% endblock %}\n</body>\n</html>\n"
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


def render(
    request: HttpRequest, title: str, body: str, *, head: str = "", **context: object
) -> HttpResponse:
    """Render ``body`` (Django template source) inside the shared layout."""
    source = (
        "{% extends base %}{% block head %}" + head + "{% endblock %}"
        "{% block body %}" + body + "{% endblock %}"
    )
    engine = engines["django"]
    template = engine.from_string(source)
    base = engine.from_string(BASE).template  # type: ignore[attr-defined]
    return HttpResponse(template.render({"title": title, "base": base, **context}, request))


def home(request: HttpRequest) -> HttpResponse:
    ctx = current_replay()
    status = "not decided" if ctx is None else f"{ctx.reason} (session {ctx.session_id})"
    return render(
        request,
        "replay-middleware demo",
        "<p>Click around, type in the sign-in form, then open the inspector.</p>"
        '<p id="decision">Replay decision: {{ status }}</p>'
        '<button id="counter" type="button">Clicked 0 times</button>'
        "<script>var n=0;document.getElementById('counter').addEventListener('click',"
        "function(){n++;this.textContent='Clicked '+n+' times';});</script>",
        status=status,
    )


def signin(request: HttpRequest) -> HttpResponse:
    if request.method == "POST":
        return render(request, "Signed in", "<p>Welcome, {{ request.POST.email }}.</p>")
    return render(
        request,
        "Sign in",
        '<form method="post" action="/signin">{% csrf_token %}'
        '<label>Email <input id="email" name="email" type="email" autocomplete="username"></label>'
        '<label>Password <input id="password" name="password" type="password" autocomplete="current-password"></label>'
        '<button id="submit" type="submit">Sign in</button></form>',
    )


def billing(request: HttpRequest) -> HttpResponse:
    return render(request, "Billing", "<p>Card ending 4242. This page is never recorded.</p>")


def article(request: HttpRequest) -> HttpResponse:
    size = article_kb(request.GET.get("kb"))
    return render(
        request, f"A long article ({size} KB)", "{{ article|safe }}", article=article_html(size)
    )


def spa(request: HttpRequest, rest: str = "") -> HttpResponse:
    return render(
        request,
        "Single-page app",
        '<p><a data-spa href="/spa/inbox">Inbox</a> · <a data-spa href="/account/billing">'
        'Billing (client-side)</a> · <a data-spa href="/spa/settings">Settings</a></p>'
        '<div id="view"></div>' + SPA_SCRIPT,
    )


@csp({"default-src": [SELF], "script-src": [NONCE, STRICT_DYNAMIC]})
def csp_strict(request: HttpRequest) -> HttpResponse:
    return render(
        request,
        "Strict CSP",
        '<p id="app-script">app script did not run</p><script nonce="{{ request.csp_nonce }}">'
        "document.getElementById('app-script').textContent='app script ran';</script>",
    )


@csp(
    {
        "default-src": [SELF],
        "script-src": [SELF, UNSAFE_INLINE, "https://cdn.example.com"],
        "style-src": [SELF, UNSAFE_INLINE],
    }
)
def csp_inline(request: HttpRequest) -> HttpResponse:
    return render(
        request,
        "Host-allowlist CSP with 'unsafe-inline'",
        '<p id="app-script">app script did not run</p><script>'
        "document.getElementById('app-script').textContent='app script ran';</script>",
    )


def manual(request: HttpRequest) -> HttpResponse:
    return render(
        request,
        "Snippet placed by the template tag",
        "<p>This page holds <code>{% templatetag openblock %} replay_snippet "
        "{% templatetag closeblock %}</code> in its head.</p>",
        head="{% load replay %}{% replay_snippet %}",
    )


def whoami(request: HttpRequest) -> JsonResponse:
    return JsonResponse(
        {"replay": get_replay_properties(), "reason": request.replay.reason}  # type: ignore[attr-defined]
    )


urlpatterns = [
    path("", home),
    path("signin", signin),
    path("account/billing", billing),
    path("article", article),
    path("admin/", admin.site.urls),
    path("spa", spa),
    re_path(r"^spa/(?P<rest>.*)$", spa),
    path("csp/strict", csp_strict),
    path("csp/inline", csp_inline),
    path("manual", manual),
    path("api/whoami", whoami),
]
