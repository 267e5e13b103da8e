"""RequestInfo: the framework-neutral view of a request that the core decides on.

Sans-IO: built by the adapters (ASGI scope, WSGI environ) from plain values; never reads a
socket. It is what user callables (``consent``, ``force_sample``, ``should_record``,
``identify`` and route predicates) receive.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.cookies import _unquote
from types import MappingProxyType

__all__ = ["RequestInfo", "parse_cookie_header"]

# Browsers cap a Cookie header around 4-8 KiB per cookie and servers reject huge headers; we
# stop parsing after this many cookies so a hostile header costs bounded work.
_MAX_COOKIES = 200


def parse_cookie_header(header: str) -> dict[str, str]:
    """Parse a ``Cookie`` request header leniently, the way browsers send it.

    Never raises: malformed pairs are skipped. The first occurrence of a name wins (browsers
    send the most specific path first, RFC 6265 §5.4).
    """
    cookies: dict[str, str] = {}
    for count, chunk in enumerate(header.split(";")):
        if count >= _MAX_COOKIES:
            break
        name, sep, value = chunk.partition("=")
        name = name.strip()
        if not sep or not name or name in cookies:
            continue
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] == '"':
            with contextlib.suppress(Exception):  # a hostile quoted value: keep the raw text
                value = _unquote(value)
        cookies[name] = value
    return cookies


@dataclass(frozen=True)
class RequestInfo:
    """One request, as the decision code and user callables see it.

    ``headers`` holds lower-cased names; when a header repeats, values are joined with ", "
    (RFC 9110 §5.3), except ``cookie`` which is joined with "; ".
    """

    method: str
    path: str
    query_string: str = ""
    headers: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    scheme: str = "http"
    client: str | None = None

    @classmethod
    def from_pairs(
        cls,
        method: str,
        path: str,
        pairs: list[tuple[str, str]],
        *,
        query_string: str = "",
        scheme: str = "http",
        client: str | None = None,
    ) -> RequestInfo:
        """Build from raw ``(name, value)`` header pairs in any case."""
        headers: dict[str, str] = {}
        for name, value in pairs:
            key = name.lower()
            if key in headers:
                sep = "; " if key == "cookie" else ", "
                headers[key] = headers[key] + sep + value
            else:
                headers[key] = value
        return cls(
            method=method.upper(),
            path=path or "/",
            query_string=query_string,
            headers=MappingProxyType(headers),
            scheme=scheme,
            client=client,
        )

    @classmethod
    def from_lowered(
        cls,
        method: str,
        path: str,
        headers: dict[str, str],
        query_string: str,
        scheme: str,
        client: str | None,
    ) -> RequestInfo:
        """Build from a header dict whose names are lower-cased and repeats joined already
        (the ASGI adapter builds it in its one pass over the scope); the per-request fast path,
        equal to :meth:`from_pairs` of the same headers."""
        info = object.__new__(cls)  # frozen: fill __dict__ directly, as __init__ would
        info.__dict__.update(
            method=method.upper(),
            path=path or "/",
            query_string=query_string,
            headers=MappingProxyType(headers),
            scheme=scheme,
            client=client,
        )
        return info

    def header(self, name: str, default: str | None = None) -> str | None:
        """The value of header ``name`` (case-insensitive), or ``default``."""
        return self.headers.get(name.lower(), default)

    @property
    def cookies(self) -> Mapping[str, str]:
        """The request's cookies, parsed leniently (never raises)."""
        cached: Mapping[str, str] | None = self.__dict__.get("_cookies")
        if cached is None:
            cached = MappingProxyType(parse_cookie_header(self.headers.get("cookie", "")))
            object.__setattr__(self, "_cookies", cached)
        return cached

    @property
    def is_secure(self) -> bool:
        return self.scheme in ("https", "wss")
