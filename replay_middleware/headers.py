"""HTTP header semantics the injection rules depend on (RFC 9110/9111). Sans-IO.

Header lists are sequences of ``(name, value)`` string pairs in any case, as the adapters
decode them (latin-1). Every parser here is total: hostile input yields "unknown", never an
exception.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

__all__ = [
    "get_all",
    "get_first",
    "is_shared_cacheable",
    "media_type",
    "parse_cache_control",
    "parse_content_length",
]

Headers = Sequence[tuple[str, str]]

_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def get_all(headers: Headers, name: str) -> list[str]:
    name = name.lower()
    return [v for k, v in headers if k.lower() == name]


def get_first(headers: Headers, name: str) -> str | None:
    name = name.lower()
    for k, v in headers:
        if k.lower() == name:
            return v
    return None


def media_type(value: str | None) -> tuple[str, dict[str, str]]:
    """Parse a Content-Type value: ``("text/html", {"charset": "utf-8"})``.

    Type and parameter names are case-insensitive (RFC 9110 §8.3.1), whitespace around ``;``
    is allowed, quoted parameter values are unquoted. Unparseable → ``("", {})``.
    """
    if not value:
        return "", {}
    parts = value.split(";")
    mtype = parts[0].strip().lower()
    if "/" not in mtype or not all(_TOKEN.fullmatch(p) for p in mtype.split("/", 1)):
        return "", {}
    params: dict[str, str] = {}
    for part in parts[1:]:
        key, sep, val = part.partition("=")
        key = key.strip().lower()
        if not sep or not key:
            continue
        val = val.strip()
        if len(val) >= 2 and val[0] == val[-1] == '"':
            val = val[1:-1].replace('\\"', '"').replace("\\\\", "\\")
        params.setdefault(key, val)
    return mtype, params


def parse_cache_control(values: Iterable[str]) -> dict[str, str | None]:
    """Directives of one or more Cache-Control fields, lower-cased names, first wins."""
    directives: dict[str, str | None] = {}
    for value in values:
        for item in value.split(","):
            name, sep, arg = item.strip().partition("=")
            name = name.strip().lower()
            if name and name not in directives:
                directives[name] = arg.strip().strip('"') if sep else None
    return directives


def _positive_seconds(arg: str | None) -> bool:
    if arg is None:
        return False
    return arg.isascii() and arg.isdigit() and int(arg) > 0


def is_shared_cacheable(headers: Headers) -> bool:
    """True when a shared cache (CDN, proxy) may store this response (SPEC H10).

    Conservative: ``public``, ``s-maxage``, ``max-age>0`` or ``Expires`` without ``private``/
    ``no-store``, and any ``Surrogate-Control`` (CDN-only caching) count as cacheable.
    """
    if get_first(headers, "surrogate-control") is not None:
        return True
    cc = parse_cache_control(get_all(headers, "cache-control"))
    if "private" in cc or "no-store" in cc:
        return False
    if "public" in cc or "s-maxage" in cc:
        return True
    if _positive_seconds(cc.get("max-age")):
        return True
    return (
        "max-age" not in cc and "no-cache" not in cc and get_first(headers, "expires") is not None
    )


def parse_content_length(headers: Headers) -> int | bool | None:
    """The Content-Length: an int; ``None`` when absent; ``False`` when invalid or duplicated
    with different values (RFC 9110 §8.6 — such a response is passed through untouched)."""
    values = get_all(headers, "content-length")
    if not values:
        return None
    seen: set[str] = set()
    for value in values:
        seen.update(v.strip() for v in value.split(","))
    if len(seen) != 1:
        return False
    only = seen.pop()
    if not (only.isascii() and only.isdigit()) or len(only) > 18:
        return False
    return int(only)
