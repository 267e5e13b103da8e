"""The snippet: the one renderer of the markup we put in a page (SPEC N1, N2, N4; STYLE 8).

Sans-IO. The markup is a JSON data block (not executable, so CSP does not apply to it) and one
external ``<script async src="{prefix}/loader-<hash>.js" nonce=...>``; in Trusted Types mode a
second, parser-inserted tag loads the SDK (the loader must not assign ``script.src``).

Every adapter, the Jinja global and the template tag call ``SnippetRenderer.render``. The
output is pure ASCII: JSON is written with ``ensure_ascii`` and ``<``, ``>``, ``&`` escaped as
``\\u003c``-style sequences, so ``</script``, ``<!--`` and U+2028/2029 cannot break out.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jinja2
from markupsafe import Markup

__all__ = ["DATA_BLOCK_ID", "SnippetRenderer", "SnippetSettings", "dumps_for_html"]

#: The id of the JSON data block; a page holding it already gets no second snippet (N4, H8).
DATA_BLOCK_ID = "replay-middleware-config"

_ESCAPES = str.maketrans({"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "'": "\\u0027"})


def dumps_for_html(value: Any) -> str:
    """JSON that is safe inside a ``<script>`` element and inside an attribute (N2)."""
    text = json.dumps(value, ensure_ascii=True, separators=(",", ":"), allow_nan=False)
    return text.translate(_ESCAPES)


@dataclass(frozen=True)
class SnippetSettings:
    """Everything in the snippet that is the same for every request (precomputed once)."""

    api_key: str
    loader_url: str
    sdk_url: str
    sdk_integrity: str
    session_url: str
    cookie_name: str
    session_timeout_ms: int
    endpoints: Mapping[str, str] | None
    base_options: Mapping[str, Any]
    routes: Mapping[str, Any]


class SnippetRenderer:
    """Renders the snippet; immutable after construction."""

    def __init__(self, settings: SnippetSettings) -> None:
        self.settings = settings
        env = jinja2.Environment(
            loader=jinja2.PackageLoader("replay_middleware", "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
            keep_trailing_newline=False,
        )
        self._template = env.get_template("snippet.html")

    def data(
        self,
        *,
        ids: tuple[str, int, int] | None,
        record: bool | None,
        options: Mapping[str, Any] | None = None,
        static_sdk: bool = False,
    ) -> dict[str, Any]:
        """The JSON object of the data block; ``ids`` None gives the user-agnostic form."""
        s = self.settings
        merged = dict(s.base_options)
        if options:
            merged.update(options)
        return {
            "v": 1,
            "apiKey": s.api_key,
            "sdk": {"url": s.sdk_url, "integrity": s.sdk_integrity, "static": static_sdk},
            "session": {
                "url": s.session_url,
                "cookie": s.cookie_name,
                "timeoutMs": s.session_timeout_ms,
            },
            "ids": None
            if ids is None
            else {"deviceId": ids[0], "sessionId": ids[1], "lastActivity": ids[2]},
            "record": record,
            "endpoints": None if s.endpoints is None else dict(s.endpoints),
            "options": merged,
            "routes": dict(s.routes),
            "optOutCookie": f"{s.cookie_name}_optout",
        }

    def render(
        self,
        *,
        nonce: str | None,
        ids: tuple[str, int, int] | None,
        record: bool | None,
        options: Mapping[str, Any] | None = None,
        static_sdk: bool = False,
    ) -> str:
        """The snippet markup (ASCII). ``nonce`` None renders no nonce attribute value."""
        data = self.data(ids=ids, record=record, options=options, static_sdk=static_sdk)
        s = self.settings
        html = self._template.render(
            data=Markup(dumps_for_html(data)),
            loader_url=s.loader_url,
            sdk_url=s.sdk_url,
            sdk_integrity=s.sdk_integrity,
            nonce=nonce or "",
            sdk_tag=static_sdk,
        )
        if not nonce:
            html = html.replace(' nonce=""', "")
        return html
