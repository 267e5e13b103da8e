"""HTTP header semantics the injection rules depend on (RFC 9110/9111). Sans-IO.

Header lists are sequences of ``(name, value)`` string pairs in any case, as the adapters
decode them (latin-1). Every parser here is total: hostile input yields "unknown", never an
exception.
"""

from __future__ import annotations

import datetime
import re
import time
from collections.abc import Iterable, Sequence
from email.utils import parsedate_to_datetime

__all__ = [
    "HEURISTIC_STATUSES",
    "SfToken",
    "cache_directives",
    "get_all",
    "get_first",
    "index_headers",
    "is_shared_cacheable",
    "is_targeted_cache_field",
    "media_type",
    "parse_cache_control",
    "parse_content_length",
    "parse_sf_dictionary",
]

Headers = Sequence[tuple[str, str]]

_UTC = datetime.timezone.utc

_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def index_headers(headers: Headers) -> dict[str, list[str]]:
    """Every value by lower-cased name, in order: one pass over a header list, for callers
    that ask several questions about the same headers (``by_name`` arguments below)."""
    by_name: dict[str, list[str]] = {}
    for name, value in headers:
        key = name.lower()
        values = by_name.get(key)
        if values is None:
            by_name[key] = [value]
        else:
            values.append(value)
    return by_name


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


def cache_directives(values: Iterable[str]) -> list[tuple[str, str | None]]:
    """The directives of one or more Cache-Control field lines, in order (RFC 9111 §5.2).

    Each is ``(name, argument)``: the name lower-cased (names are case-insensitive), the
    argument ``None`` when absent, a quoted-string argument unquoted (a comma inside the quotes
    does not end it: ``private="Set-Cookie, X-A"``). Several field lines are one list (RFC 9110
    §5.3). Malformed input yields what can be read, never an exception.
    """
    out: list[tuple[str, str | None]] = []
    for value in values:
        i, n = 0, len(value)
        while i < n:
            j = i
            while j < n and value[j] not in ",=":
                j += 1
            name = value[i:j].strip(" \t").lower()
            arg: str | None = None
            i = j
            if i < n and value[i] == "=":
                i += 1
                while i < n and value[i] in " \t":
                    i += 1
                if i < n and value[i] == '"':
                    chars: list[str] = []
                    i += 1
                    while i < n and value[i] != '"':
                        if value[i] == "\\" and i + 1 < n:
                            i += 1
                        chars.append(value[i])
                        i += 1
                    arg = "".join(chars)
                    while i < n and value[i] != ",":  # the closing quote and any junk after it
                        i += 1
                else:
                    j = i
                    while j < n and value[j] != ",":
                        j += 1
                    arg = value[i:j].strip(" \t")
                    i = j
            if name:
                out.append((name, arg))
            i += 1  # the comma
    return out


def parse_cache_control(values: Iterable[str]) -> dict[str, str | None]:
    """Directives of one or more Cache-Control fields, lower-cased names, first wins."""
    directives: dict[str, str | None] = {}
    for name, arg in cache_directives(values):
        directives.setdefault(name, arg)
    return directives


#: Statuses a cache may store and reuse without explicit freshness (RFC 9110 §15.1, RFC 9111
#: §4.2.2 "heuristically cacheable").
HEURISTIC_STATUSES = frozenset({200, 203, 204, 206, 300, 301, 308, 404, 405, 410, 414, 501})


def _positive_seconds(arg: str | None) -> bool:
    # delta-seconds (RFC 9111 §1.2.2); no int() so a 5000-digit value costs nothing.
    return arg is not None and arg.isascii() and arg.isdigit() and arg.strip("0") != ""


def _http_date(value: str | None) -> float | None:
    """An HTTP-date (RFC 9110 §5.6.7, all three forms) as a timestamp; None if invalid."""
    if not value:
        return None
    try:
        parsed = parsedate_to_datetime(value.strip())
        return parsed.timestamp() if parsed.tzinfo else parsed.replace(tzinfo=_UTC).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def is_targeted_cache_field(name: str) -> bool:
    """``CDN-Cache-Control`` (RFC 9213 §3) or a vendor's ``<Name>-CDN-Cache-Control`` (§2.4:
    ``Cloudflare-CDN-Cache-Control``, ``Vercel-CDN-Cache-Control``, ...)."""
    name = name.lower()
    return name == "cdn-cache-control" or name.endswith("-cdn-cache-control")


# The fields that can make a response shared-cacheable, besides the targeted ones.
_CACHEABILITY_FIELDS = frozenset({"surrogate-control", "cache-control", "expires", "last-modified"})


def is_shared_cacheable(
    headers: Headers,
    status: int = 200,
    *,
    now: float | None = None,
    by_name: dict[str, list[str]] | None = None,
) -> bool:
    """True when a shared cache (CDN, proxy) may store this response (SPEC H10).

    Errs towards True: a wrong True costs the visitor one ``/session`` request, a wrong False
    could let a cache serve one visitor's ids and cookie to others. True when any of:

    - ``Surrogate-Control`` is present (CDN-only caching);
    - a targeted field (:func:`is_targeted_cache_field`) that parses as an RFC 8941 Dictionary
      (RFC 9213 §2.1; empty or invalid ones are ignored) allows storage: no ``no-store``, no
      unqualified ``private``, and ``public``/``max-age``/``s-maxage`` or a heuristically
      cacheable ``status`` (RFC 9111 §3; RFC 9213 §3.1: ``CDN-Cache-Control: none`` is stored).
      A CDN obeying it ignores Cache-Control and Expires (RFC 9213 §2.2);
    - Cache-Control (RFC 9111 §5.2.2) has no ``no-store`` and no unqualified ``private``
      (``private="Set-Cookie"`` limits only the listed fields, §5.2.2.7), and: ``public`` or
      ``s-maxage``; or a first ``max-age`` above 0; or, without ``max-age``, an ``Expires``
      later than the response's ``Date`` (or ``now``) (§5.3: an invalid one, like ``0``, has
      already expired); or, with no explicit expiration at all and no unqualified
      ``no-cache`` (a field-qualified ``no-cache="..."`` only concerns those fields,
      §5.2.2.4), a heuristically cacheable ``status`` with ``Last-Modified`` (§4.2.2).

    ``Pragma`` is ignored: it has no defined meaning in responses (RFC 9111 §5.4).

    ``by_name`` (:func:`index_headers` of ``headers``) lets the common answer, a response
    with none of these fields, be found without another pass.
    """
    if (
        by_name is not None
        and _CACHEABILITY_FIELDS.isdisjoint(by_name)
        # a superset of the targeted names (their keys are lower-case already)
        and not any(name.endswith("cdn-cache-control") for name in by_name)
    ):
        return False  # nothing below can say True without one of these fields
    if get_first(headers, "surrogate-control") is not None:
        return True
    targeted: dict[str, list[str]] = {}
    for name, value in headers:
        if is_targeted_cache_field(name):
            targeted.setdefault(name.lower(), []).append(value)
    for values in targeted.values():
        members = parse_sf_dictionary(", ".join(values))
        if members and _targeted_allows_storage(members, status):
            return True
    return _cache_control_allows_storage(headers, status, now)


def _cache_control_allows_storage(headers: Headers, status: int, now: float | None) -> bool:
    directives = cache_directives(get_all(headers, "cache-control"))
    unqualified = {name for name, arg in directives if arg is None}
    first: dict[str, str | None] = {}
    for name, arg in directives:
        first.setdefault(name, arg)
    if "no-store" in first or "private" in unqualified:
        return False
    if "public" in first or "s-maxage" in first:
        return True
    if "max-age" in first:  # max-age wins over Expires (RFC 9111 §5.3)
        return _positive_seconds(first["max-age"])
    expires = get_first(headers, "expires")
    if expires is not None:
        stamp = _http_date(expires)
        base = _http_date(get_first(headers, "date"))
        if base is None:
            base = time.time() if now is None else now
        return stamp is not None and stamp > base
    return (
        status in HEURISTIC_STATUSES
        and get_first(headers, "last-modified") is not None
        and "no-cache" not in unqualified
    )


def _targeted_allows_storage(members: dict[str, object], status: int) -> bool:
    # RFC 9213 §2.1: values violating a directive's inferred type are not consumed; no-store
    # and an unqualified private are boolean true, a qualified private is a String (or Token).
    if members.get("no-store") is True or members.get("private") is True:
        return False
    max_age = members.get("max-age")
    explicit = "public" in members or "s-maxage" in members
    if isinstance(max_age, int) and not isinstance(max_age, bool) and max_age >= 0:
        explicit = True
    return explicit or status in HEURISTIC_STATUSES


# --- RFC 8941 Structured Field Dictionary (for RFC 9213 targeted fields) --------------------

_SF_KEY = re.compile(r"[a-z*][a-z0-9_\-.*]*")
_SF_TOKEN = re.compile(r"[A-Za-z*][!#$%&'*+\-.^_`|~0-9A-Za-z:/]*")
_SF_NUMBER = re.compile(r"-?([0-9]+)(?:\.([0-9]+))?")
_SF_BINARY = re.compile(r":([A-Za-z0-9+/=]*):")


class _SfError(ValueError):
    pass


class SfToken(str):
    """An RFC 8941 Token (a String is a plain ``str``)."""


def parse_sf_dictionary(value: str) -> dict[str, object] | None:
    """Parse an RFC 8941 §4.2.2 Dictionary: ``{key: value}``, None on any parsing error.

    Values are ``bool``, ``int``, ``float``, ``str`` (String), :class:`SfToken`, ``bytes``
    (Byte Sequence, undecoded) or a ``list`` (Inner List); parameters are dropped (RFC 9213
    §2.1 ignores them). A repeated key keeps its last value (§4.2.2).
    """
    parser = _SfParser(value.strip(" "))
    try:
        return parser.dictionary()
    except _SfError:
        return None


class _SfParser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.i = 0

    def peek(self) -> str:
        return self.text[self.i] if self.i < len(self.text) else ""

    def skip(self, chars: str) -> None:
        while self.peek() and self.peek() in chars:
            self.i += 1

    def dictionary(self) -> dict[str, object]:
        out: dict[str, object] = {}
        while self.i < len(self.text):
            key = self.key()
            value: object = True
            if self.peek() == "=":
                self.i += 1
                value = self.inner_list() if self.peek() == "(" else self.bare_item()
            self.parameters()
            out[key] = value
            self.skip(" \t")
            if self.i >= len(self.text):
                return out
            if self.peek() != ",":
                raise _SfError("expected ','")
            self.i += 1
            self.skip(" \t")
            if self.i >= len(self.text):
                raise _SfError("trailing ','")
        return out

    def key(self) -> str:
        match = _SF_KEY.match(self.text, self.i)
        if match is None:
            raise _SfError("bad key")
        self.i = match.end()
        return match.group()

    def parameters(self) -> None:
        while self.peek() == ";":
            self.i += 1
            self.skip(" ")
            self.key()
            if self.peek() == "=":
                self.i += 1
                self.bare_item()

    def inner_list(self) -> list[object]:
        self.i += 1  # "("
        items: list[object] = []
        while True:
            self.skip(" ")
            if self.peek() == ")":
                self.i += 1
                return items
            items.append(self.bare_item())
            self.parameters()
            if self.peek() not in (" ", ")"):
                raise _SfError("bad inner list")

    def bare_item(self) -> object:
        ch = self.peek()
        if ch == "-" or ch.isdigit():
            return self.number()
        if ch == '"':
            return self.string()
        if ch == "?":
            flag = self.text[self.i + 1 : self.i + 2]
            if flag not in ("0", "1"):
                raise _SfError("bad boolean")
            self.i += 2
            return flag == "1"
        if ch == ":":
            match = _SF_BINARY.match(self.text, self.i)
            if match is None:
                raise _SfError("bad byte sequence")
            self.i = match.end()
            return match.group(1).encode("ascii")
        match = _SF_TOKEN.match(self.text, self.i)
        if match is None:
            raise _SfError("bad item")
        self.i = match.end()
        return SfToken(match.group())

    def number(self) -> object:
        match = _SF_NUMBER.match(self.text, self.i)
        if match is None:
            raise _SfError("bad number")
        whole, fraction = match.group(1), match.group(2)
        if fraction is None and len(whole) > 15:
            raise _SfError("integer too long")
        if fraction is not None and (len(whole) > 12 or len(fraction) > 3):
            raise _SfError("decimal too long")
        self.i = match.end()
        return int(match.group()) if fraction is None else float(match.group())

    def string(self) -> str:
        self.i += 1
        chars: list[str] = []
        while self.i < len(self.text):
            ch = self.text[self.i]
            self.i += 1
            if ch == "\\":
                nxt = self.peek()
                if nxt not in ('"', "\\"):
                    raise _SfError("bad escape")
                chars.append(nxt)
                self.i += 1
            elif ch == '"':
                return "".join(chars)
            elif not " " <= ch <= "~":
                raise _SfError("bad string character")
            else:
                chars.append(ch)
        raise _SfError("unterminated string")


def parse_content_length(
    headers: Headers, *, by_name: dict[str, list[str]] | None = None
) -> int | bool | None:
    """The Content-Length: an int; ``None`` when absent; ``False`` when invalid or duplicated
    with different values (RFC 9110 §8.6 — such a response is passed through untouched)."""
    values = (
        get_all(headers, "content-length")
        if by_name is None
        else by_name.get("content-length", ())
    )
    if not values:
        return None
    if len(values) == 1 and "," not in values[0]:
        seen = {values[0].strip()}  # the usual single, plain value
    else:
        seen = set()
        for value in values:
            seen.update(v.strip() for v in value.split(","))
    if len(seen) != 1:
        return False
    only = seen.pop()
    if not (only.isascii() and only.isdigit()) or len(only) > 18:
        return False
    return int(only)
