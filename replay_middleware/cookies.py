"""The one Set-Cookie builder (STYLE 11). Sans-IO: returns header values as ``str``."""

from __future__ import annotations

import re

__all__ = ["COOKIE_VALUE", "dump_cookie"]

_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 6265 token
#: RFC 6265 cookie-octets, unquoted: what a cookie value may hold.
COOKIE_VALUE = re.compile(r"[\x21\x23-\x2B\x2D-\x3A\x3C-\x5B\x5D-\x7E]*")


def dump_cookie(
    name: str,
    value: str,
    *,
    max_age: int | None = None,
    path: str = "/",
    domain: str | None = None,
    secure: bool = False,
    httponly: bool = False,
    samesite: str | None = "Lax",
) -> str:
    """Return one ``Set-Cookie`` header value. Always append it; never replace the app's.

    ``max_age=0`` deletes the cookie. Names and values are validated, never escaped: callers
    only ever pass tokens they built.
    """
    if not _NAME.fullmatch(name):
        raise ValueError(f"invalid cookie name {name!r}")
    if not COOKIE_VALUE.fullmatch(value):
        raise ValueError("cookie value holds characters outside RFC 6265 cookie-octet")
    parts = [f"{name}={value}", f"Path={path}"]
    if max_age is not None:
        parts.append(f"Max-Age={max_age}")
    if domain:
        parts.append(f"Domain={domain}")
    if secure:
        parts.append("Secure")
    if httponly:
        parts.append("HttpOnly")
    if samesite:
        parts.append(f"SameSite={samesite}")
    return "; ".join(parts)
