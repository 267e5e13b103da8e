"""``{% load replay %}{% replay_snippet %}``: place the Session Replay snippet by hand.

The same renderer as auto-injection (N4, STYLE 8). The tag uses the request's CSP nonce
(django-csp 4 or Django 6's ``request.csp_nonce``, generating it so the CSP middleware puts it
in the header) or else mints one; the middleware then merges the page's CSP with that nonce
and does not inject a second snippet. Empty when the session is not recorded, when the
request did not pass through ``replay_middleware.django.ReplayMiddleware``, and on a second
use in the same response. Needs the ``request`` in the template context (``render(request,
...)`` or the ``django.template.context_processors.request`` context processor).
"""

from __future__ import annotations

from typing import Any

from django import template
from django.utils.safestring import SafeString, mark_safe

from ..django import replay_snippet as _render

register = template.Library()


@register.simple_tag(takes_context=True)
def replay_snippet(context: Any) -> SafeString:
    request = getattr(context, "request", None) or context.get("request")
    # The snippet's JSON is escaped for HTML (N2) and its bytes are pure ASCII.
    return mark_safe(_render(request))
