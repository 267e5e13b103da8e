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
import re
from collections.abc import Mapping
from dataclasses import dataclass
from json.encoder import encode_basestring_ascii
from typing import Any

import jinja2
from markupsafe import Markup

__all__ = ["DATA_BLOCK_ID", "SnippetRenderer", "SnippetSettings", "dumps_for_html"]

#: The id of the JSON data block; a page holding it already gets no second snippet (N4, H8).
DATA_BLOCK_ID = "replay-middleware-config"

# CSP3 base64-value; also keeps the attribute free of quotes and markup.
_NONCE_RE = re.compile(r"[A-Za-z0-9+/_-]+={0,2}")
_ESCAPES = str.maketrans({"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "'": "\\u0027"})


# How many distinct per-request option sets are serialised once and kept (see
# SnippetRenderer._options_json); the rest are serialised per response.
_OPTIONS_CACHE_SIZE = 64
_SLOTS = re.compile("(\x00DATA\x00|\x00NONCE\x00)")


def _json_string(value: str) -> str:
    """``dumps_for_html`` of one string (the C encoder, then the HTML escapes)."""
    if type(value) is not str:
        raise TypeError("a device id must be a str")
    return encode_basestring_ascii(value).translate(_ESCAPES)


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
    """Renders the snippet; immutable after construction.

    The Jinja2 template is rendered once, at construction, with placeholders; the JSON parts
    that never change are serialised once too. Per request only the ids, the decision, the
    per-request options and the nonce are serialised and put in place.
    """

    _DATA = "\x00DATA\x00"
    _NONCE = "\x00NONCE\x00"

    def __init__(self, settings: SnippetSettings) -> None:
        self.settings = settings
        env = jinja2.Environment(
            loader=jinja2.PackageLoader("replay_middleware", "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
            keep_trailing_newline=False,
        )
        template = env.get_template("snippet.html")
        self._shapes = {
            static_sdk: template.render(
                data=Markup(self._DATA),
                loader_url=settings.loader_url,
                sdk_url=settings.sdk_url,
                sdk_integrity=settings.sdk_integrity,
                nonce=Markup(self._NONCE),
                sdk_tag=static_sdk,
            )
            for static_sdk in (False, True)
        }
        s = settings
        session = {"url": s.session_url, "cookie": s.cookie_name, "timeoutMs": s.session_timeout_ms}
        tail = {
            "endpoints": None if s.endpoints is None else dict(s.endpoints),
        }
        self._base_options = dict(s.base_options)
        self._head = {
            static_sdk: dumps_for_html(
                {
                    "v": 1,
                    "apiKey": s.api_key,
                    "sdk": {"url": s.sdk_url, "integrity": s.sdk_integrity, "static": static_sdk},
                    "session": session,
                }
            )[:-1]
            for static_sdk in (False, True)
        }
        self._endpoints = dumps_for_html(tail)[1:-1]
        self._tail = dumps_for_html(
            {"routes": dict(s.routes), "optOutCookie": f"{s.cookie_name}_optout"}
        )[1:]
        # The markup as pieces with the data and nonce slots between them, per (static_sdk,
        # with a nonce): a response only joins strings.
        self._pieces = {
            (static_sdk, with_nonce): tuple(
                _SLOTS.split(shape if with_nonce else shape.replace(f' nonce="{self._NONCE}"', ""))
            )
            for static_sdk, shape in self._shapes.items()
            for with_nonce in (False, True)
        }
        #: ``"options":{...}`` for the per-request options seen so far (a handful of distinct
        #: sample rates and worker flags); bounded, see ``_options_json``.
        self._options_cache: dict[tuple[object, ...], str] = {}

    def data(
        self,
        *,
        ids: tuple[str, int, int] | None,
        record: bool | None,
        options: Mapping[str, Any] | None = None,
        static_sdk: bool = False,
    ) -> dict[str, Any]:
        """The JSON object of the data block; ``ids`` None gives the user-agnostic form."""
        data: dict[str, Any] = json.loads(
            self._json(ids=ids, record=record, options=options, static_sdk=static_sdk)
        )
        return data

    def _json(
        self,
        *,
        ids: tuple[str, int, int] | None,
        record: bool | None,
        options: Mapping[str, Any] | None,
        static_sdk: bool,
    ) -> str:
        if ids is None:
            variable = '"ids":null'
        else:
            device, session, last = ids
            # ints are written by int.__str__, exactly as json.dumps writes them
            if type(session) is not int or type(last) is not int:
                raise TypeError("session id and last activity must be ints")
            variable = (
                f'"ids":{{"deviceId":{_json_string(device)},'
                f'"sessionId":{session},"lastActivity":{last}}}'
            )
        flag = "null" if record is None else "true" if record else "false"
        return (
            f'{self._head[static_sdk]},{variable},"record":{flag},{self._endpoints},'
            f"{self._options_json(options)},{self._tail}"
        )

    def _options_json(self, options: Mapping[str, Any] | None) -> str:
        """``"options":{...}``: the base options with this request's on top. The common
        per-request options (a sample rate and the worker flag) are serialised once each."""
        key: tuple[object, ...] | None = None
        if options and len(options) <= 2:
            # (name, value, type): True, 1 and 1.0 are equal keys but serialise differently
            key = tuple([(k, v, v.__class__) for k, v in options.items()])
            try:
                cached = self._options_cache.get(key)
            except TypeError:  # an unhashable value (a privacyConfig dict): not cached
                key = cached = None
            if cached is not None:
                return cached
        merged = {**self._base_options, **options} if options else self._base_options
        text = f'"options":{dumps_for_html(merged)}'
        if key is not None and len(self._options_cache) < _OPTIONS_CACHE_SIZE:
            self._options_cache[key] = text
        return text

    def render(
        self,
        *,
        nonce: str | None,
        ids: tuple[str, int, int] | None,
        record: bool | None,
        options: Mapping[str, Any] | None = None,
        static_sdk: bool = False,
    ) -> str:
        """The snippet markup (ASCII). ``nonce`` None renders no nonce attribute."""
        if nonce is not None and not _NONCE_RE.fullmatch(nonce):
            raise ValueError("nonce must be a base64 or base64url value")
        data = self._json(ids=ids, record=record, options=options, static_sdk=static_sdk)
        slots = {self._DATA: data, self._NONCE: nonce}
        return "".join(
            [slots.get(piece, piece) for piece in self._pieces[static_sdk, bool(nonce)]]  # type: ignore[misc]
        )
