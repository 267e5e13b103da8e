"""Sans-IO core of the first-party upload proxy (SPEC P1-P7): plain values in, plain values out.

This module imports no network client, no ASGI/WSGI code and no framework. It decides what an
upload (``POST {prefix}/track``) or a config fetch (``GET {prefix}/config/<key>``) becomes:
which upstream URL (built from constants and the configured key→zone map only, P1), which
headers go up and come back (allowlists both ways, P3), which client IP is forwarded (P6), how a
transport fault maps to a status the SDK retries (P5), how the remote config is cached, and how
much a slow client may hold (the body deadline and the per-client cap). The
I/O twins (``upstream.AsyncUploadProxy`` today, a sync twin for WSGI later) only move bytes and
call these functions, so both share every rule (STYLE 1, 12).

Rejections are data: the ``plan_*``/``check_*`` functions return either a value to act on or a
:class:`Rejection` carrying the status and a reason code (STYLE 7). Reason codes are what the
logs and metrics show; response bodies never say which keys are valid.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import ipaddress
import json
import logging
import math
import re
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import TYPE_CHECKING, Final, Literal, Protocol, TypeAlias
from urllib.parse import unquote_plus

from .request import RequestInfo
from .response import HttpResponse

if TYPE_CHECKING:
    from .config import ReplayConfig

__all__ = [
    "CLIENT_BUSY",
    "CONFIG_FALLBACK_BODY",
    "CONFIG_QUERY",
    "CONFIG_STALE_IF_ERROR",
    "DEFAULT_UPSTREAMS",
    "DROPPED_IP",
    "ENDPOINT_TOO_LARGE",
    "ENDPOINT_UNAVAILABLE",
    "HOP_BY_HOP",
    "MAX_CONFIG_BYTES",
    "PAYLOAD_TOO_LARGE_TEXT",
    "REQUEST_HEADER_ALLOWLIST",
    "RESPONSE_HEADER_ALLOWLIST",
    "SDK_UNAVAILABLE",
    "Breaker",
    "ClientSlots",
    "ConfigEntry",
    "ConfigPlan",
    "ConfigSlot",
    "IPAddress",
    "KeyMap",
    "OnceLogger",
    "ProxyResponse",
    "Rejection",
    "RemoteSampling",
    "TrackPlan",
    "TrackQuery",
    "TrustedProxies",
    "UploadCounter",
    "UploadDeadlines",
    "Upstreams",
    "check_framing",
    "check_track_key",
    "check_track_query",
    "client_address",
    "client_key",
    "config_entry",
    "config_is_fresh",
    "config_reply",
    "config_should_fetch",
    "error_response",
    "fault_response",
    "filter_response_headers",
    "forwarded_ip",
    "key_id",
    "looks_like_a_proxy",
    "parse_ip",
    "plan_config",
    "plan_track",
    "redact_url",
    "remote_sampling",
    "resolve_client_ip",
    "sdk_unavailable",
    "sniff_body",
    "strip_hop_by_hop",
    "upload_deadlines",
    "upstream_request_headers",
    "upstream_status_is_redirect",
    "with_content_length",
]

# --- constants -----------------------------------------------------------------------------

#: Amplitude's regional upload and config endpoints (PROTOCOL §1.1, §1.8). The SDK treats any
#: zone other than the exact string "EU" as US for uploads; the config lets only US and EU in.
_TRACK_BASES: Final = MappingProxyType(
    {
        "US": "https://api-sr.amplitude.com/sessions/v2/track",
        "EU": "https://api-sr.eu.amplitude.com/sessions/v2/track",
    }
)
_CONFIG_BASES: Final = MappingProxyType(
    {
        "US": "https://sr-client-cfg.amplitude.com/config",
        "EU": "https://sr-client-cfg.eu.amplitude.com/config",
    }
)
_ZONES: Final = ("US", "EU")

#: The SDK's only config query (PROTOCOL §1.5): ``?config_group=browser``.
CONFIG_QUERY: Final = "config_group=browser"

#: Request headers copied to Amplitude (PROTOCOL §1.2 lists what the SDK sends). ``authorization``
#: is not copied: the proxy sets it from the *configured* key that matched (see
#: :func:`upstream_request_headers`), so a site's own credentials never travel (P3).
REQUEST_HEADER_ALLOWLIST: Final = frozenset(
    {
        "content-type",
        "content-encoding",
        "accept",
        "x-client-version",
        "x-client-library",
        "x-client-url",
        "x-client-sample-rate",
        "x-sampling-hash-alg",
        "user-agent",
    }
)

#: Response headers passed back to the browser; everything else (Set-Cookie, HSTS, Alt-Svc,
#: Clear-Site-Data, CORS, CSP...) would land on the site's own origin (notes/proxy.md §2.1,
#: sentry-javascript #8931). ``content-length`` only when the body is passed raw.
RESPONSE_HEADER_ALLOWLIST: Final = frozenset(
    {
        "content-type",
        "content-encoding",
        "content-length",
        "retry-after",
        "x-session-replay-event-skipped",
        "cache-control",
    }
)

#: Hop-by-hop headers (RFC 9110 §7.6.1, RFC 7230 §6.1), dropped in both directions, plus every
#: header a ``Connection`` field names.
HOP_BY_HOP: Final = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)

#: The forwarded address in "drop" mode, and when no client address is known. An explicit
#: placeholder, never an absent header: without one the upstream records the proxy's own
#: address (notes/proxy.md §2.3, Matomo's ``$REMOVE_VISITOR_IP``).
DROPPED_IP: Final = "0.0.0.0"

#: The text of a proxy-made 413. The SDK bisects a batch and retries only when a 413 body
#: matches ``/payload.*exceed/i`` (PROTOCOL §1.4, §2); any other 413 drops the batch.
PAYLOAD_TOO_LARGE_TEXT: Final = "Payload size exceeded the maximum allowed size"

#: Served by the config endpoint only when the upstream failed and no cached copy exists.
#: Trade-off: the SDK then records with the page's local ``sampleRate`` and local privacy
#: settings, i.e. remote privacy rules, remote sampling, interaction and targeting settings are
#: NOT applied for that page. The alternative, an error, makes the SDK record nothing at all
#: for the page (PROTOCOL §1.5: no usable config → ``captureEnabled = false``).
CONFIG_FALLBACK_BODY: Final = b'{"configs":{"sessionReplay":{}}}'

#: How long after its last successful fetch a config copy may still be served when the
#: upstream fails (stale-if-error, RFC 5861 §4). A day: remote settings rarely change, and the
#: alternative is the fallback, which ignores them all.
CONFIG_STALE_IF_ERROR: Final = 24 * 3600.0

#: A config response larger than this is treated as an upstream fault (real ones are ~1 KB).
MAX_CONFIG_BYTES: Final = 1024 * 1024

_MAX_QUERY = 2048
_MAX_XFF_HOPS = 32
_MAX_SNIFF_WHITESPACE = 1024
# URLSearchParams leaves only ALPHA / DIGIT / "*-._" unescaped and writes space as "+"
# (WHATWG URL §5.2); "~" is harmless. Anything else in a track query is not the SDK's.
_QUERY_VALUE = re.compile(r"(?:[A-Za-z0-9._~*+-]|%[0-9A-Fa-f]{2})*")
_TRACK_PARAMS = frozenset({"device_id", "session_id", "type", "api_key"})
_REQUIRED_PARAMS = ("device_id", "session_id", "type")
_TRACK_TYPES = frozenset({"replay", "interaction"})
# RFC 9110 §5.5: field values are VCHAR, obs-text, SP and HTAB. CR, LF and NUL are the
# injection risks; other controls are rejected by h11 on the way up anyway (→ a client 400,
# not a 502 from our side).
_BAD_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_KEY_SHAPE = re.compile(r"[A-Za-z0-9_-]{1,128}")
_JSON_ERROR_HEADERS: Final = (
    ("content-type", "application/json"),
    ("cache-control", "no-store"),
)

IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address
_Network: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network


# --- responses and rejections ----------------------------------------------------------------


@dataclass(frozen=True)
class ProxyResponse:
    """A complete response made by the proxy itself (same shape as ``engine.HttpResponse``)."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes = b""


def error_response(status: int, reason: str, *, retry_after: int | None = None) -> ProxyResponse:
    """A JSON error ``{"error": reason}``; ``Retry-After`` when given (always for 503)."""
    headers = list(_JSON_ERROR_HEADERS)
    if retry_after is not None:
        headers.append(("retry-after", str(retry_after)))
    return ProxyResponse(status, tuple(headers), json.dumps({"error": reason}).encode())


@dataclass(frozen=True)
class Rejection:
    """The proxy answers itself, without (further) contacting the upstream."""

    status: int
    reason: str
    retry_after: int | None = None
    allow: str | None = None

    def response(self) -> ProxyResponse:
        if self.status == 413:
            # Plain text in the WAF's words, so the SDK splits the batch (PROTOCOL §2).
            return ProxyResponse(
                413,
                (("content-type", "text/plain; charset=utf-8"), ("cache-control", "no-store")),
                PAYLOAD_TOO_LARGE_TEXT.encode(),
            )
        # 403 says "forbidden" whatever the reason: nothing about which keys are valid.
        shown = "forbidden" if self.status == 403 else self.reason
        resp = error_response(self.status, shown, retry_after=self.retry_after)
        if self.allow is not None:
            return replace(resp, headers=(("allow", self.allow), *resp.headers))
        return resp


#: Fault reason code → (status, default Retry-After). 408/502/503/504 are all retried by the
#: SDK (PROTOCOL §2); another 4xx would make it drop the batch, so our own faults never map to
#: one (P5). 408 is used only when the client's own body is what timed out.
_FAULTS: Final[Mapping[str, tuple[int, int | None]]] = MappingProxyType(
    {
        "upstream_connect": (502, None),  # refused, DNS, TLS handshake/verification
        "upstream_reset": (502, None),  # reset, closed, protocol error mid-exchange
        "upstream_redirect": (502, None),  # 3xx: never followed (P1, Shelf.nu #2874)
        "upstream_error": (502, None),  # anything else that is not the client's fault
        "upstream_timeout": (504, None),  # connect/read/write timeout, total budget
        "pool_exhausted": (503, 1),  # no connection free within the pool timeout
        "breaker_open": (503, None),  # Retry-After given by the breaker
        "client_timeout": (408, None),  # the client's body did not arrive in time (SDK retries 408)
    }
)


# --- the adapters' own answers on first-party endpoints (STYLE 3: one copy, each adapter
# only translates them) ---------------------------------------------------------------------

#: An endpoint failed in our code: never a bare 500, the SDK treats 503 as "retry later".
ENDPOINT_UNAVAILABLE: Final = HttpResponse(
    503, [("content-type", "text/plain"), ("cache-control", "no-store")], b"Unavailable"
)
#: A body over ``max_upload_bytes``. The SDK splits a batch on 413 only when the text matches
#: /payload.*exceed/i.
ENDPOINT_TOO_LARGE: Final = HttpResponse(
    413,
    [("content-type", "text/plain"), ("cache-control", "no-store")],
    b"Payload size exceeded the limit",
)
#: The self-hosted SDK bundle could not be loaded.
SDK_UNAVAILABLE: Final = HttpResponse(
    503,
    [("content-type", "text/plain"), ("cache-control", "no-store"), ("retry-after", "60")],
    b"SDK unavailable",
)


class OnceLogger(Protocol):
    """What :func:`sdk_unavailable` needs of the engine: its log-once-per-reason method. A
    protocol, so that this module does not import ``engine`` (which imports this one)."""

    def log_once(self, key: str, msg: str, *args: object, level: int = ...) -> None: ...


def sdk_unavailable(engine: OnceLogger, exc: Exception) -> HttpResponse:
    """Log (once) that the SDK bundle is unavailable; the answer to send instead."""
    engine.log_once(
        "sdk", "replay-middleware: SDK bundle unavailable: %s", exc, level=logging.ERROR
    )
    return SDK_UNAVAILABLE


def fault_response(kind: str, *, retry_after: int | None = None) -> ProxyResponse:
    """The response for a fault ``kind`` (one of the reason codes above)."""
    status, default_retry = _FAULTS.get(kind, (502, None))
    return error_response(
        status, kind, retry_after=retry_after if retry_after is not None else default_retry
    )


def upstream_status_is_redirect(status: int) -> bool:
    """Upstream 3xx are never followed and never passed on: they become a 502 (P1, P5)."""
    return 300 <= status < 400


# --- upstreams and keys ------------------------------------------------------------------------


@dataclass(frozen=True)
class Upstreams:
    """The upstream bases per zone: ``track`` full upload URLs, ``config`` bases to which
    ``/<key>?config_group=browser`` is appended. Injectable so tests point at a local fake."""

    track: Mapping[str, str] = field(default_factory=lambda: _TRACK_BASES)
    config: Mapping[str, str] = field(default_factory=lambda: _CONFIG_BASES)

    def __post_init__(self) -> None:
        for name in ("track", "config"):
            bases = dict(getattr(self, name))
            if set(bases) != set(_ZONES):
                raise ValueError(f"Upstreams.{name} must map exactly 'US' and 'EU' to URLs")
            for zone, url in bases.items():
                if not re.fullmatch(r"https?://[^/?#\s]+(/[^?#\s]*)?", url) or url.endswith("/"):
                    raise ValueError(
                        f"Upstreams.{name}[{zone!r}] must be an http(s) URL without query, "
                        f"fragment or trailing '/' (got {url!r})"
                    )
            object.__setattr__(self, name, MappingProxyType(bases))

    @classmethod
    def at(cls, us: str, eu: str | None = None) -> Upstreams:
        """Upstreams on other origins with Amplitude's paths (tests, self-hosted relays):
        ``Upstreams.at("http://127.0.0.1:8123")`` puts EU under ``/eu`` of the same origin."""
        us = us.rstrip("/")
        eu = (eu or f"{us}/eu").rstrip("/")
        return cls(
            track={"US": f"{us}/sessions/v2/track", "EU": f"{eu}/sessions/v2/track"},
            config={"US": f"{us}/config", "EU": f"{eu}/config"},
        )

    def track_url(self, zone: str, query: str) -> str:
        """The upload URL: the zone's constant base and the (validated) query, verbatim."""
        base = self.track[zone]
        return f"{base}?{query}" if query else base

    def config_url(self, zone: str, key: str) -> str:
        """The config URL for a *configured* key (its shape is ``[A-Za-z0-9_-]``, so it needs
        no escaping; :class:`KeyMap` refuses anything else)."""
        return f"{self.config[zone]}/{key}?{CONFIG_QUERY}"


DEFAULT_UPSTREAMS: Final = Upstreams()


def key_id(key: str) -> str:
    """A short, stable, non-reversible name of a key for logs (O1): ``k-`` + 8 hex of sha256.
    Works for any string (unknown keys sent by clients are logged the same way)."""
    digest = hashlib.sha256(key[:256].encode("utf-8", "surrogatepass")).hexdigest()
    return f"k-{digest[:8]}"


def redact_url(url: str) -> str:
    """An upstream URL fit for logs (O1): no query string (beacons carry ``api_key`` there,
    ids are per visitor), and a config key path segment replaced by its :func:`key_id`."""
    base = url.partition("?")[0]
    head, sep, last = base.rpartition("/config/")
    if sep and last and "/" not in last:
        return f"{head}{sep}{key_id(last)}"
    return base


class KeyMap:
    """The configured API keys and their zones: the only keys the proxy forwards (P1, P2).

    ``KeyMap({"key1": "US", "key2": "eu"})`` (zones are case-insensitive); the usual source
    is :meth:`from_config`. Lookups compare against every key in constant time per key, so
    the time taken says nothing about how much of a guess matched.
    """

    __slots__ = ("_entries", "primary")

    def __init__(self, keys: Mapping[str, str]) -> None:
        entries: list[tuple[bytes, str, str]] = []
        for key, zone in keys.items():
            if not isinstance(key, str) or not _KEY_SHAPE.fullmatch(key):
                raise ValueError(
                    "KeyMap: API keys must be 1-128 characters of A-Z, a-z, 0-9, '_' or '-'"
                )
            norm = str(zone).strip().upper()
            if norm not in _ZONES:
                raise ValueError(f"KeyMap: zone must be 'US' or 'EU' (got {zone!r})")
            entries.append((key.encode("ascii"), key, norm))
        if not entries:
            # An empty allowlist fails closed at start-up (notes/proxy.md §5 case 52).
            raise ValueError("KeyMap: at least one API key is required to run the upload proxy")
        self._entries = tuple(entries)
        #: The first key given: the default for remote-config lookups.
        self.primary: str = entries[0][1]

    @classmethod
    def from_config(cls, config: ReplayConfig, extra: Mapping[str, str] | None = None) -> KeyMap:
        """``{config.api_key: config.server_zone}`` plus ``extra`` keys (multi-project sites).
        ``ValueError`` in local mode (no ``api_key``): uploads are stored locally there."""
        if config.api_key is None:
            raise ValueError(
                "KeyMap: ReplayConfig has no api_key (local mode stores uploads itself)"
            )
        keys = {config.api_key: config.server_zone}
        for key, zone in (extra or {}).items():
            keys.setdefault(key, zone)
        return cls(keys)

    def match(self, candidate: str | None) -> tuple[str, str] | None:
        """``(key, zone)`` if ``candidate`` is a configured key, else None."""
        if not candidate:
            return None
        probe = candidate.encode("utf-8", "surrogatepass")
        found: tuple[str, str] | None = None
        for raw, key, zone in self._entries:
            # No early exit: every configured key is compared (hmac.compare_digest is
            # constant-time for equal lengths).
            if hmac.compare_digest(probe, raw):
                found = (key, zone)
        return found

    def zone_of(self, key: str | None) -> str | None:
        matched = self.match(key)
        return matched[1] if matched else None

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:  # never the keys themselves
        return f"KeyMap({', '.join(f'{key_id(k)}:{z}' for _, k, z in self._entries)})"


# --- the track request -----------------------------------------------------------------------


@dataclass(frozen=True)
class TrackQuery:
    """A validated upload query; ``raw`` is forwarded byte for byte (PROTOCOL §1.8)."""

    raw: str
    type: str
    api_key: str | None


def check_track_query(query: str) -> TrackQuery | Rejection:
    """Validate the upload query: exactly the SDK's parameters, each once.

    Accepted names: ``device_id``, ``session_id``, ``type`` (``replay``/``interaction``),
    required, and ``api_key`` (beacons, PROTOCOL §1.3). Any other name (``region``...),
    a repeated name, an empty value, a character URLSearchParams never emits or a broken
    ``%`` escape → 400 ``bad_query``. The raw string is kept for forwarding.
    """
    bad = Rejection(400, "bad_query")
    if not query or len(query) > _MAX_QUERY:
        return bad
    seen: dict[str, str] = {}
    for part in query.split("&"):
        name, sep, value = part.partition("=")
        if (
            not sep
            or name not in _TRACK_PARAMS
            or name in seen
            or not value
            or not _QUERY_VALUE.fullmatch(value)
        ):
            return bad
        seen[name] = unquote_plus(value, errors="replace")
    if any(p not in seen for p in _REQUIRED_PARAMS) or seen["type"] not in _TRACK_TYPES:
        return bad
    return TrackQuery(raw=query, type=seen["type"], api_key=seen.get("api_key"))


def _bearer(value: str | None) -> tuple[bool, str]:
    """``(is_bearer, token)`` of an Authorization value (scheme case-insensitive, RFC 9110
    §11.1)."""
    if not value:
        return False, ""
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "bearer":
        return False, ""
    return True, token.strip()


def check_track_key(
    keys: KeyMap, authorization: str | None, query_key: str | None
) -> tuple[str, str, bool] | Rejection:
    """P2 across the two places an upload carries the key.

    Returns ``(key, zone, from_header)`` or a rejection:

    - a ``Bearer`` token and a query ``api_key`` that differ → 400 ``key_ambiguous`` (neither
      wins, notes/proxy.md case 5);
    - no key at all → 403 ``key_missing``; a key that is not configured → 403 ``key_unknown``.

    Another Authorization scheme (``Basic``: browsers attach it by themselves on a site behind
    HTTP auth, beacons included) is the site's credential: not a key claim, never forwarded.
    """
    is_bearer, token = _bearer(authorization)
    if (
        is_bearer
        and query_key is not None
        and not hmac.compare_digest(
            token.encode("utf-8", "surrogatepass"), query_key.encode("utf-8", "surrogatepass")
        )
    ):
        return Rejection(400, "key_ambiguous")
    claim = token if is_bearer else query_key
    if claim is None or claim == "":
        return Rejection(403, "key_missing")
    matched = keys.match(claim)
    if matched is None:
        return Rejection(403, "key_unknown")
    return matched[0], matched[1], is_bearer


def check_framing(headers: Mapping[str, str], max_bytes: int) -> int | Rejection | None:
    """Request framing, before any body byte is read.

    Returns the declared length (``None`` when the body is chunked / unframed) or a rejection:
    Content-Length together with Transfer-Encoding, a repeated (joined with ", ") or
    non-numeric Content-Length, or a Transfer-Encoding other than ``chunked`` → 400
    ``bad_framing`` (RFC 9112 §6.3: request smuggling); a declared length over ``max_bytes`` →
    413 right away (notes/proxy.md case 23). The upstream framing is always computed anew.
    """
    cl = headers.get("content-length")
    te = headers.get("transfer-encoding")
    if cl is not None and te is not None:
        return Rejection(400, "bad_framing")
    if te is not None and te.strip().lower() != "chunked":
        return Rejection(400, "bad_framing")
    if cl is None:
        return None
    cl = cl.strip()
    if not cl.isdigit() or not cl.isascii() or len(cl) > 18:
        return Rejection(400, "bad_framing")
    length = int(cl)
    if length > max_bytes:
        return Rejection(413, "too_large")
    return length


class UploadCounter:
    """Counts streamed body bytes against the cap and the declared length.

    ``add(n)`` returns a rejection as soon as the total passes ``limit`` (413, before the
    upstream sees it all, P4) or the declared Content-Length (400); ``finish()`` one when fewer
    bytes than declared arrived (400, notes/proxy.md case 25). Mutable: one per request.
    """

    __slots__ = ("declared", "limit", "total")

    def __init__(self, limit: int, declared: int | None = None) -> None:
        self.limit = limit
        self.declared = declared
        self.total = 0

    def add(self, n: int) -> Rejection | None:
        self.total += n
        if self.total > self.limit:
            return Rejection(413, "too_large")
        if self.declared is not None and self.total > self.declared:
            return Rejection(400, "body_longer_than_declared")
        return None

    def finish(self) -> Rejection | None:
        if self.declared is not None and self.total < self.declared:
            return Rejection(400, "body_shorter_than_declared")
        return None


def sniff_body(head: bytes, complete: bool) -> bool | None:
    """Cheap abuse filter on the first body bytes (notes/proxy.md case 27).

    True for what the SDK sends: gzip (magic ``1f 8b``) or JSON (first non-blank byte ``{``
    or ``[``), and for an empty body (forwarded; the upstream decides). False for anything
    else (→ 415). None while more bytes are needed to tell (at most ~1 KiB of leading blanks).
    The body is never decompressed or parsed: an invalid gzip stream passes (case 26).
    """
    if head[:1] == b"\x1f":
        if len(head) < 2:
            return None if not complete else False
        return head[1:2] == b"\x8b"
    stripped = head.lstrip(b" \t\r\n")
    if stripped:
        return stripped[:1] in (b"{", b"[")
    if complete:
        return not head  # all blanks is not JSON; empty is allowed
    return None if len(head) <= _MAX_SNIFF_WHITESPACE else False


# --- headers ------------------------------------------------------------------------------


def strip_hop_by_hop(pairs: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """Drop hop-by-hop headers and every header a ``Connection`` field names. Applied before
    anything else, so naming a header in ``Connection`` can only remove what the client sent,
    never what the proxy sets (notes/proxy.md §4, case 14). Names come back lower-cased."""
    items = [(k.lower(), v) for k, v in pairs]
    named = {
        token.strip().lower()
        for k, v in items
        if k == "connection"
        for token in v.split(",")
        if token.strip()
    }
    return [(k, v) for k, v in items if k not in HOP_BY_HOP and k not in named]


def upstream_request_headers(
    headers: Mapping[str, str],
    *,
    bearer_key: str | None,
    forwarded_for: str,
    content_length: int | None,
    user_agent: str,
) -> list[tuple[str, str]] | Rejection:
    """The headers of the upstream request (P3).

    Hop-by-hop removal first, then the allowlist; ``Authorization: Bearer <configured key>``
    only when the request presented that key in a Bearer header (re-written from the
    configured value, never copied); ``X-Forwarded-For`` always (set by the proxy);
    ``Content-Length`` when the client declared a valid one; ``Accept-Encoding: identity`` so
    the response can be passed raw to any client (case 29). A forwarded value holding CR, LF,
    NUL or another control character → 400 ``bad_header``.
    """
    out: list[tuple[str, str]] = []
    for name, value in strip_hop_by_hop(headers.items()):
        if name not in REQUEST_HEADER_ALLOWLIST:
            continue
        if _BAD_VALUE.search(value):
            return Rejection(400, "bad_header")
        out.append((name, value.strip(" \t")))
    if "user-agent" not in headers:
        out.append(("user-agent", user_agent))
    if bearer_key is not None:
        out.append(("authorization", f"Bearer {bearer_key}"))
    out.append(("x-forwarded-for", forwarded_for))
    out.append(("accept-encoding", "identity"))
    if content_length is not None:
        out.append(("content-length", str(content_length)))
    return out


def filter_response_headers(
    pairs: Iterable[tuple[str, str]], *, raw: bool = True
) -> list[tuple[str, str]]:
    """The upstream response headers the browser may see (P3): the allowlist, after
    hop-by-hop removal; ``content-length``/``content-encoding`` only when the body is passed
    raw (``aiter_raw``), never with decoded bytes (notes/proxy.md §4)."""
    out: list[tuple[str, str]] = []
    for name, value in strip_hop_by_hop(pairs):
        if name not in RESPONSE_HEADER_ALLOWLIST:
            continue
        if not raw and name in ("content-length", "content-encoding"):
            continue
        if _BAD_VALUE.search(value):
            continue
        out.append((name, value))
    return out


# --- client IP (P6) ---------------------------------------------------------------------------


def parse_ip(text: str | None) -> IPAddress | None:
    """An address from a peer or ``X-Forwarded-For`` entry; None if it is not one.

    Accepts ``1.2.3.4``, ``1.2.3.4:5678``, ``2001:db8::1``, ``[2001:db8::1]:443`` and zone
    ids; an IPv4-mapped IPv6 address (``::ffff:1.2.3.4``, dual-stack sockets) becomes IPv4.
    """
    if not text:
        return None
    s = text.strip()
    if s.startswith("["):
        s = s[1:].partition("]")[0]
    elif s.count(":") == 1:
        s = s.partition(":")[0]
    try:
        ip = ipaddress.ip_address(s)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return ip.ipv4_mapped
        if ip.scope_id:
            return ipaddress.IPv6Address(int(ip))
    return ip


@dataclass(frozen=True)
class TrustedProxies:
    """The configured ``trusted_proxies``: addresses or CIDRs (``"10.0.0.0/8"``, ``"::1"``)."""

    networks: tuple[_Network, ...] = ()

    @classmethod
    def parse(cls, entries: Iterable[str]) -> TrustedProxies:
        nets: list[_Network] = []
        for entry in entries:
            try:
                net = ipaddress.ip_network(str(entry).strip(), strict=False)
            except ValueError:
                raise ValueError(
                    f"trusted_proxies: {entry!r} is not an IP address or CIDR network"
                ) from None
            if isinstance(net, ipaddress.IPv6Network) and net.network_address.ipv4_mapped:
                mapped = net.network_address.ipv4_mapped
                nets.append(ipaddress.ip_network(f"{mapped}/{max(net.prefixlen - 96, 0)}"))
            else:
                nets.append(net)
        return cls(tuple(nets))

    def __contains__(self, ip: object) -> bool:
        return isinstance(ip, (ipaddress.IPv4Address, ipaddress.IPv6Address)) and any(
            ip in net for net in self.networks
        )


def resolve_client_ip(
    peer: str | None, forwarded_for: str | None, trusted: TrustedProxies
) -> IPAddress | None:
    """The visitor's address (P6, notes/proxy.md cases 19-20).

    The socket peer, unless it is a trusted proxy: then ``X-Forwarded-For`` is walked from the
    right and the first address that is not a trusted proxy wins (the rightmost untrusted one;
    everything to its left is client-controlled). All hops trusted → the leftmost. An
    unparsable hop on the way → None (unknown) rather than a guess. An untrusted peer's
    ``X-Forwarded-For`` is ignored entirely (a spoof).
    """
    ip = parse_ip(peer)
    if ip is None or not forwarded_for or ip not in trusted:
        return ip
    hops = forwarded_for.split(",")[-_MAX_XFF_HOPS:]
    for part in reversed(hops):
        hop = parse_ip(part)
        if hop is None:
            return None
        if hop not in trusted:
            return hop
        ip = hop
    return ip


def forwarded_ip(ip: IPAddress | None, mode: str) -> str:
    """The ``X-Forwarded-For`` value for ``forward_client_ip`` ``mode``.

    ``"mask"``: IPv4 /24 (``198.51.100.7`` → ``198.51.100.0``), IPv6 /48 (n8n #33199);
    ``"full"``: the address; ``"drop"`` or an unknown address: :data:`DROPPED_IP`.
    """
    if mode == "drop" or ip is None:
        return DROPPED_IP
    if mode == "full":
        return str(ip)
    prefix = 24 if isinstance(ip, ipaddress.IPv4Address) else 48
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False).network_address)


# --- slow clients (notes/proxy.md cases 43-45) -------------------------------------------------
#
# A client that declares a large body and sends it one byte a second used to hold an upstream
# connection for the whole upload budget; ~100 of them took the pool and every honest upload
# got a 503. Three rules keep a slow client away from the upstream: the body is read whole
# (in memory up to ``upload_memory_bytes``, then in a temporary file) before any upstream
# connection is taken; it must be in by the body deadline (408, the upstream never contacted);
# and one client address has at most ``max_uploads_per_client`` uploads in flight (429 before
# its body is read). The I/O twins only apply these values.

#: What a client over ``max_uploads_per_client`` gets, before its body is read. 429, not 503:
#: the SDK retries both alike (PROTOCOL §2: a delay of ``random() × attempts`` seconds, it
#: ignores Retry-After), but 429 says "this client sent too many" (RFC 6585 §4) where 503 says
#: "this server is unwell": it does not count in the site's 5xx error rate, alerting or a load
#: balancer's outlier detection. Retry-After 1: most uploads are over in well under a second.
CLIENT_BUSY: Final = Rejection(429, "client_busy", retry_after=1)


def client_address(
    peer: str | None, forwarded_for: str | None, trusted: TrustedProxies, ip_mode: str
) -> tuple[str, str | None]:
    """``(X-Forwarded-For value, per-client key)`` of a request (:func:`resolve_client_ip`,
    :func:`forwarded_ip`, :func:`client_key`).

    A pure function of its arguments, memoised: parsing and masking with :mod:`ipaddress`
    was a tenth of the proxy's CPU per upload (issue 10 profile), and a visitor sends many
    uploads from one address. The cache is bounded (LRU, 4096 entries) and small per entry:
    without ``trusted_proxies`` the client's ``X-Forwarded-For`` is not part of the key (it is
    ignored anyway), and a long one is never cached.
    """
    if not trusted.networks:
        forwarded_for = None  # only a trusted peer's header is read (resolve_client_ip)
    if forwarded_for is not None and len(forwarded_for) > _MAX_CACHED_XFF:
        return _client_address(peer, forwarded_for, trusted, ip_mode)
    return _cached_client_address(peer, forwarded_for, trusted, ip_mode)


_MAX_CACHED_XFF = 256


def _client_address(
    peer: str | None, forwarded_for: str | None, trusted: TrustedProxies, ip_mode: str
) -> tuple[str, str | None]:
    ip = resolve_client_ip(peer, forwarded_for, trusted)
    return forwarded_ip(ip, ip_mode), client_key(ip)


_cached_client_address = functools.lru_cache(maxsize=4096)(_client_address)


def client_key(ip: IPAddress | None) -> str | None:
    """The per-client accounting key of an address (after ``trusted_proxies``, P6).

    IPv4: the address. IPv6: its /64, the smallest block a subscriber line is given (RFC 6177
    §2), so one client cannot take a fresh address per upload. None for an unknown address
    (no peer address, e.g. a Unix socket): not counted per client, since every such request
    would share one key and the cap would apply to the whole site.
    """
    if ip is None:
        return None
    if isinstance(ip, ipaddress.IPv4Address):
        return str(ip)
    return str(ipaddress.IPv6Network(f"{ip}/64", strict=False))


def looks_like_a_proxy(client: str | None, trusted: TrustedProxies) -> bool:
    """Whether a client key that hit the per-client cap is probably the site's own load
    balancer: a private or loopback address with no ``trusted_proxies`` configured (then every
    visitor seems to come from it, and the cap applies to all of them together)."""
    if client is None or trusted.networks:
        return False
    address = ipaddress.ip_network(client, strict=False).network_address
    return address.is_private or address.is_loopback


class ClientSlots:
    """Uploads in flight per client key, at most ``limit`` each (``max_uploads_per_client``;
    0 = no cap). Counted per process, which is all the state a worker keeps besides caches.

    ``acquire(key)`` takes a slot (False: the client is at its cap → :data:`CLIENT_BUSY`);
    every True must be matched by one ``release(key)``, in a ``finally``. A None key (unknown
    address) is never counted. Thread-safe (a lock around a dict): the sync twin serves uploads
    from server threads, the async twin from the event loop, where the lock is uncontended.
    """

    __slots__ = ("_counts", "_lock", "limit")

    def __init__(self, limit: int) -> None:
        if limit < 0:
            raise ValueError("ClientSlots: limit must be 0 (no cap) or more")
        self.limit = limit
        self._counts: dict[str, int] = {}
        self._lock = threading.Lock()

    def acquire(self, key: str | None) -> bool:
        if key is None or not self.limit:
            return True
        with self._lock:
            count = self._counts.get(key, 0)
            if count >= self.limit:
                return False
            self._counts[key] = count + 1
            return True

    def release(self, key: str | None) -> None:
        if key is None or not self.limit:
            return
        with self._lock:
            count = self._counts.get(key, 0) - 1
            if count > 0:
                self._counts[key] = count
            else:
                self._counts.pop(key, None)  # no entry left behind for a gone client

    def in_flight(self, key: str | None = None) -> int:
        """Slots held by ``key``, or by every client together."""
        with self._lock:
            if key is not None:
                return self._counts.get(key, 0)
            return sum(self._counts.values())


@dataclass(frozen=True)
class UploadDeadlines:
    """When an upload's phases must be over, in the caller's monotonic clock.

    ``body``: the client's whole body is in (else 408 ``client_timeout``; the upstream is never
    contacted). ``total``: the upstream answer has started (else 504 ``upstream_timeout``).
    """

    body: float
    total: float

    def body_left(self, now: float) -> float:
        return self.body - now

    def total_left(self, now: float) -> float:
        return self.total - now


def upload_deadlines(
    started: float, *, client_body_timeout: float, upstream_timeout: float
) -> UploadDeadlines:
    """The deadlines of an upload admitted at ``started``.

    ``upstream_timeout`` stays the budget of the whole exchange, counted from admission, since
    the SDK's 10 s abort (``sendTimeoutMs``, PROTOCOL §1.2) counts from its first byte too; the
    body must be in after ``client_body_timeout`` and no later than that budget. The upstream
    gets what is left: a client that took 4 s of a 5 s body deadline leaves 4 s of 8.
    """
    total = started + upstream_timeout
    return UploadDeadlines(body=min(started + client_body_timeout, total), total=total)


def with_content_length(headers: Iterable[tuple[str, str]], length: int) -> list[tuple[str, str]]:
    """Upstream headers for a body read whole: framed by its real length, never chunked
    (whatever the client's framing was; a declared length has been checked against it)."""
    out = [(k, v) for k, v in headers if k != "content-length"]
    out.append(("content-length", str(length)))
    return out


# --- plans -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrackPlan:
    """What an accepted upload becomes upstream. Its repr shows no key, query or header
    (they hold the key and per-visitor ids), so logging a plan is safe."""

    url: str = field(repr=False)
    headers: tuple[tuple[str, str], ...] = field(repr=False)
    content_length: int | None
    key: str = field(repr=False)
    zone: str
    key_id: str
    type: str
    #: The per-client accounting key (:func:`client_key`), None when the address is unknown.
    client: str | None = field(default=None, repr=False)


def plan_track(
    request: RequestInfo,
    *,
    keys: KeyMap,
    upstreams: Upstreams,
    trusted: TrustedProxies,
    ip_mode: str,
    max_upload_bytes: int,
    user_agent: str = "replay-middleware",
) -> TrackPlan | Rejection:
    """Everything about an upload decidable before its body: method (405 with ``Allow``;
    OPTIONS included: never forwarded), query (400), key (403/400), framing (400/413), headers
    (400). The URL is the zone's constant plus the validated query."""
    if request.method != "POST":
        return Rejection(405, "method_not_allowed", allow="POST")
    query = check_track_query(request.query_string)
    if isinstance(query, Rejection):
        return query
    checked = check_track_key(keys, request.headers.get("authorization"), query.api_key)
    if isinstance(checked, Rejection):
        return checked
    key, zone, from_header = checked
    length = check_framing(request.headers, max_upload_bytes)
    if isinstance(length, Rejection):
        return length
    forwarded, client = client_address(
        request.client, request.headers.get("x-forwarded-for"), trusted, ip_mode
    )
    headers = upstream_request_headers(
        request.headers,
        bearer_key=key if from_header else None,
        forwarded_for=forwarded,
        content_length=length,
        user_agent=user_agent,
    )
    if isinstance(headers, Rejection):
        return headers
    return TrackPlan(
        url=upstreams.track_url(zone, query.raw),
        headers=tuple(headers),
        content_length=length,
        key=key,
        zone=zone,
        key_id=key_id(key),
        type=query.type,
        client=client,
    )


@dataclass(frozen=True)
class ConfigPlan:
    """What an accepted config fetch becomes upstream (repr without the key)."""

    url: str = field(repr=False)
    key: str = field(repr=False)
    zone: str
    key_id: str
    head: bool


def plan_config(
    request: RequestInfo, key: str, *, keys: KeyMap, upstreams: Upstreams
) -> ConfigPlan | Rejection:
    """``GET``/``HEAD {prefix}/config/<key>``: method (405), query (only ``config_group=browser``
    or none; anything else → 400, an explicit policy rather than a silent drop, posthog-js
    #2033), key (the path segment must be configured → else 403, P2). The upstream URL is the
    zone's constant plus the *configured* key, never the request path (case 9)."""
    if request.method not in ("GET", "HEAD"):
        return Rejection(405, "method_not_allowed", allow="GET, HEAD")
    if request.query_string not in ("", CONFIG_QUERY):
        return Rejection(400, "bad_query")
    matched = keys.match(key)
    if matched is None:
        return Rejection(403, "key_unknown")
    cfg_key, zone = matched
    return ConfigPlan(
        url=upstreams.config_url(zone, cfg_key),
        key=cfg_key,
        zone=zone,
        key_id=key_id(cfg_key),
        head=request.method == "HEAD",
    )


# --- circuit breaker ------------------------------------------------------------------------


@dataclass(frozen=True)
class Breaker:
    """Consecutive upstream failures per zone; open → local 503 + Retry-After without calling
    the upstream (notes/proxy.md case 33, Zulip's breaker). After ``open_for`` seconds requests
    go through again; one more failure re-opens it at once, a success closes it.
    ``threshold`` 0 disables it."""

    threshold: int = 5
    open_for: float = 10.0
    failures: int = 0
    opened_at: float | None = None

    def retry_after(self, now: float) -> int | None:
        """Seconds to announce while open, else None (the request may go up)."""
        if self.opened_at is None:
            return None
        left = self.open_for - (now - self.opened_at)
        return max(1, math.ceil(left)) if left > 0 else None

    def record(self, ok: bool, now: float) -> Breaker:
        if ok:
            return Breaker(self.threshold, self.open_for) if self.failures else self
        failures = self.failures + 1
        opened = now if self.threshold and failures >= self.threshold else None
        return Breaker(self.threshold, self.open_for, failures, opened)


# --- remote config --------------------------------------------------------------------------


@dataclass(frozen=True)
class RemoteSampling:
    """What the project's remote config says about recording (SPEC S2, PROTOCOL §1.5).

    ``sample_rate`` None: the local ``sample_rate`` applies. ``targeting``: a non-empty
    ``sr_targeting_config`` makes the SDK decide by targeting instead of sampling (§3.4),
    which the server cannot reproduce.
    """

    sample_rate: float | None
    capture_enabled: bool
    targeting: bool = False


_CAPTURE_DISABLED: Final = RemoteSampling(sample_rate=None, capture_enabled=False)


def _js_truthy(value: object) -> bool:
    # The SDK tests `captureEnabled` with JavaScript truthiness.
    if isinstance(value, float):
        return value != 0 and not math.isnan(value)
    return bool(value)


def remote_sampling(config_json: bytes) -> RemoteSampling:
    """Parse a remote config body with the SDK's join rules (PROTOCOL §1.5).

    - no ``configs.sessionReplay`` object (or not JSON at all) → capture disabled, as the SDK
      does when it gets no usable config;
    - ``sr_sampling_config`` with any key → ``capture_enabled`` is its ``capture_enabled``
      (missing ⇒ False), ``sample_rate`` its ``sample_rate`` when that is a finite number;
    - ``sr_sampling_config`` absent, empty or not an object → capture enabled, no rate.

    Never raises, whatever the bytes (deep nesting, NaN, huge numbers, bad UTF-8).
    """
    try:
        doc = json.loads(config_json)
    except (ValueError, RecursionError, UnicodeDecodeError, MemoryError):
        return _CAPTURE_DISABLED
    configs = doc.get("configs") if isinstance(doc, dict) else None
    replay = configs.get("sessionReplay") if isinstance(configs, dict) else None
    if not isinstance(replay, dict):
        return _CAPTURE_DISABLED
    targeting = replay.get("sr_targeting_config")
    is_targeting = isinstance(targeting, dict) and bool(targeting)
    sampling = replay.get("sr_sampling_config")
    if not isinstance(sampling, dict) or not sampling:
        return RemoteSampling(sample_rate=None, capture_enabled=True, targeting=is_targeting)
    rate = sampling.get("sample_rate")
    sample_rate: float | None = None
    if isinstance(rate, (int, float)) and not isinstance(rate, bool) and math.isfinite(rate):
        sample_rate = float(rate)
    return RemoteSampling(
        sample_rate=sample_rate,
        capture_enabled=_js_truthy(sampling.get("capture_enabled", False)),
        targeting=is_targeting,
    )


@dataclass(frozen=True)
class ConfigEntry:
    """A cached good config answer: the decoded body and when it was fetched (monotonic)."""

    body: bytes = field(repr=False)
    content_type: str
    fetched_at: float
    sampling: RemoteSampling


@dataclass(frozen=True)
class ConfigSlot:
    """The cache state of one (key, zone): the last good entry and the last failure time."""

    entry: ConfigEntry | None = None
    failed_at: float | None = None


def config_entry(status: int, content_type: str, body: bytes, now: float) -> ConfigEntry | None:
    """A cache entry for an upstream answer, or None when it must not be cached: only a 200
    whose body is a JSON object is (notes/proxy.md case 46). Anything else counts as an
    upstream failure for the stale-if-error logic."""
    if status != 200 or len(body) > MAX_CONFIG_BYTES:
        return None
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError, UnicodeDecodeError, MemoryError):
        return None
    if not isinstance(doc, dict):
        return None
    # Served as JSON whatever the upstream labelled it: we checked that it is.
    ctype = content_type if content_type.lower().startswith("application/json") else ""
    return ConfigEntry(
        body=body,
        content_type=ctype or "application/json",
        fetched_at=now,
        sampling=remote_sampling(body),
    )


def config_is_fresh(slot: ConfigSlot | None, now: float, ttl: float) -> bool:
    """The cached copy is younger than ``ttl`` (``config_cache_ttl``; 0 = always refetch)."""
    entry = slot.entry if slot else None
    return entry is not None and now - entry.fetched_at < ttl


def config_should_fetch(slot: ConfigSlot | None, now: float, ttl: float, backoff: float) -> bool:
    """Fetch upstream unless the copy is fresh or the last failure is under ``backoff``
    seconds old (during an outage every page load then answers at once, from the stale copy
    or the fallback, instead of waiting for the upstream timeout)."""
    if config_is_fresh(slot, now, ttl):
        return False
    return slot is None or slot.failed_at is None or now - slot.failed_at >= backoff


def config_reply(
    slot: ConfigSlot | None,
    now: float,
    *,
    ttl: float,
    stale_if_error: float = CONFIG_STALE_IF_ERROR,
    head: bool = False,
    just_fetched: bool = False,
) -> tuple[ProxyResponse, Literal["fresh", "stale", "fallback"]]:
    """The config answer from the cache state (after any fetch): the copy when fresh, the
    copy when stale but under ``stale_if_error`` old, else :data:`CONFIG_FALLBACK_BODY`. Always
    a 200: a config failure never answers 401/403 (which stops the SDK's config fetches for
    the page) nor 5xx (after which the SDK records nothing without a cached copy) (P5).
    ``just_fetched``: the copy was fetched for this very request (fresh even with a TTL of 0).
    """
    entry = slot.entry if slot else None
    source: Literal["fresh", "stale", "fallback"]
    if entry is not None and (just_fetched or now - entry.fetched_at < ttl):
        source = "fresh"
    elif entry is not None and now - entry.fetched_at < stale_if_error:
        source = "stale"
    else:
        source = "fallback"
    if source == "fallback":
        body, ctype = CONFIG_FALLBACK_BODY, "application/json"
    else:
        assert entry is not None
        body, ctype = entry.body, entry.content_type
    # no-store: the browser must not keep a copy past our TTL (remote changes stay live,
    # Amplitude's "don't cache config" advice), and never keep the degraded fallback.
    headers = (
        ("content-type", ctype),
        ("cache-control", "no-store"),
        ("content-length", str(len(body))),
    )
    return ProxyResponse(200, headers, b"" if head else body), source
