"""The local-mode inspector: recorded sessions listed and replayed in the browser (SPEC L2).

Sans-IO apart from reading its own static files and the ``LocalStore``: ``Inspector.handle``
takes a ``RequestInfo`` and returns an ``HttpResponse``; the adapters route every request under
``{prefix}/inspect`` to it.

Pages (GET or HEAD):

- ``{prefix}/inspect``: the sessions, newest first (device, visit start and span, replay
  length, pages, events, bytes);
- ``{prefix}/inspect/<device>/<session>``: rrweb's player replaying the session, the pages of
  the visit with when each started and how long the visitor stayed, and the uploads (decode
  errors included);
- ``{prefix}/inspect/<device>/<session>/events.json``: the decoded rrweb events, pretty JSON
  (``interactions.json``: the interaction events);
- ``{prefix}/inspect/static/<file>``: ``inspector.js``, ``inspector.css`` and the vendored
  ``rrweb-player`` files (``scripts/setup.sh`` fetches them; without them the session page says
  "run make setup" and the rest works).

Who may look: recordings are the visitors' data, so only loopback clients (127.0.0.0/8, ::1)
get an answer, and only when the ``Host`` is a loopback name or address (a DNS-rebinding page
on another site would carry its own host name). Any forwarding header (``Forwarded``,
``X-Forwarded-For``, ``X-Real-IP``) must name loopback or allowed addresses too, so an app
behind a reverse proxy on the same machine does not expose the inspector. ``allow`` adds
addresses or networks ("192.168.1.20", "10.0.0.0/8"); clients in it skip the ``Host`` check.

A loopback peer is not proof of a local user: a reverse proxy on the same machine with a bare
``proxy_pass`` (no forwarding header, a loopback ``Host``) passes every check above. So every
inspector path also needs the inspector's token, as notebook servers do: ``?token=<token>``
once (the start-up log prints that URL), answered with a 303 to the same URL without the token
(it leaves the address bar, the history and any ``Referer``; a link on another site gets a
page that refreshes there instead, see ``_sign_in``) that sets an HttpOnly,
``SameSite=Strict`` cookie scoped to ``{prefix}/inspect`` (``Secure`` on https), which the
pages, the JSON and the static files then read. Tokens are compared in constant time. The
token is ``inspector_token`` when configured, else derived from ``secret_key`` (an HMAC, so
every process of a fleet sharing the key agrees on it; with several keys, from the newest, so
rotating the secret rotates the token), else random per process (``inspector_token_for``).

Everyone else, and every request without a valid token or cookie, gets the same 404 as any
unknown path under the prefix.

The visit is not the replay: ``visit_span`` runs from the session's start (its id is the ms
timestamp of its first request) to the last activity we know of, ``page_stays`` cuts it into
the pages the visitor saw; both are pure functions of stored values (docs/inspector.md).

Every value in a page comes from uploads and is hostile: the templates are rendered by Jinja2
with autoescaping, URLs are percent-encoded path segments, and the pages carry their own strict
CSP (no inline script; ``'unsafe-inline'`` styles only, which the player's layout and the
replayed page's own ``<style>`` elements need), ``X-Frame-Options: DENY`` and ``no-store``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import ipaddress
import json
import re
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Final
from urllib.parse import parse_qsl, quote, urlencode

import jinja2

from .cookies import dump_cookie
from .local_store import LocalStore, SessionSummary, UploadRecord
from .request import RequestInfo
from .response import HttpResponse
from .sdk import static_dir

__all__ = [
    "INSPECTOR_CSP",
    "PLAYER_FILES",
    "PLAYER_VERSION",
    "Inspector",
    "PageStay",
    "PlayerFile",
    "VisitSpan",
    "derive_inspector_token",
    "inspector_token_for",
    "page_stays",
    "visit_span",
]

#: The ``rrweb-player`` release vendored by ``scripts/setup.sh`` (keep the two in step). The
#: 2.x line replays what the SDK's ``@amplitude/rrweb-record`` 2.1.5 records.
PLAYER_VERSION: Final = "2.0.0-alpha.20"


@dataclass(frozen=True)
class PlayerFile:
    """A vendored player file: its name under ``static/`` and the sha256 it must have."""

    name: str
    sha256: str
    content_type: str


#: The player's UMD bundle and stylesheet, byte-identical to the npm tarball's
#: ``dist/rrweb-player.umd.min.cjs`` and ``dist/style.min.css``; served only if they match.
PLAYER_FILES: Final = (
    PlayerFile(
        f"vendor/rrweb-player-{PLAYER_VERSION}.min.js",
        "cd435a95dada57d789d098222b33f141a97e1924d239d8be9d650f9173f98279",
        "text/javascript; charset=utf-8",
    ),
    PlayerFile(
        f"vendor/rrweb-player-{PLAYER_VERSION}.min.css",
        "ce5e96298e20e7262e317ef8d51aacd8e75cd14cfa66aaff43ceecbb7a3e132a",
        "text/css; charset=utf-8",
    ),
)
_OWN_FILES: Final = {
    "inspector.js": "text/javascript; charset=utf-8",
    "inspector.css": "text/css; charset=utf-8",
}

#: The pages' policy, checked in chromium against a real recording (tests/e2e/test_inspector.py).
#: rrweb's player rebuilds the recording in an ``about:blank`` iframe (``sandbox=
#: "allow-same-origin"``: no scripts) that inherits this policy and needs no ``frame-src``.
#: Without ``'unsafe-inline'`` styles the recorded page's ``<style>`` elements and the player's
#: ``style=""`` attributes are blocked; without ``data:`` images the player's cursor is. Images,
#: fonts and media of the recording load from this origin (in local mode, the recorded app's);
#: other origins' are not loaded.
INSPECTOR_CSP: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: blob:; font-src 'self' data:; media-src 'self' data: blob:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_JSON_CSP: Final = "default-src 'none'; frame-ancestors 'none'; sandbox"

_COMMON: Final = (
    ("cache-control", "no-store"),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "no-referrer"),
    ("cross-origin-resource-policy", "same-origin"),
    ("x-robots-tag", "noindex, nofollow"),
)
_HTML_HEADERS: Final = (
    ("content-type", "text/html; charset=utf-8"),
    *_COMMON,
    ("content-security-policy", INSPECTOR_CSP),
    ("x-frame-options", "DENY"),
    ("cross-origin-opener-policy", "same-origin"),
)
_JSON_HEADERS: Final = (
    ("content-type", "application/json; charset=utf-8"),
    *_COMMON,
    ("content-security-policy", _JSON_CSP),
)
# Deliberately the engine's answer for an unknown path under the prefix: a client that may not
# use the inspector cannot tell that it exists.
_NOT_FOUND: Final = HttpResponse(
    404,
    [("content-type", "text/plain; charset=utf-8"), ("cache-control", "no-store")],
    b"Not Found",
)
_LIST_LIMIT: Final = 500
#: Page rows shown on a session page at most (an upload may report endless URL changes).
_PAGE_LIMIT: Final = 500
#: A session id more than this before the first event and the first upload is not the visit's
#: start: a session ends after ``session_timeout`` (30 min) without activity, so a day of it
#: before anything was recorded is implausible; such an id came stale or made up (from an
#: identity hook or a foreign cookie).
_MAX_SESSION_LEAD_MS: Final = 24 * 3600 * 1000
_FORWARDING_HEADERS: Final = ("forwarded", "x-forwarded-for", "x-real-ip")
#: What a token may hold (``ReplayConfig.inspector_token`` checks the same): URL-safe in a
#: query and a valid cookie value as it is (RFC 3986 unreserved, RFC 6265 cookie-octet).
_TOKEN = re.compile(r"[A-Za-z0-9._~-]{16,256}")
#: The purpose string of the token derived from ``secret_key``: never the key itself.
_TOKEN_PURPOSE: Final = b"replay-middleware inspector token"
#: A query holding more fields than this is not a sign-in (parse_qsl's bound on the work).
_MAX_QUERY_FIELDS: Final = 32
#: The answer to ``?token=`` from a link on another site (``Inspector._sign_in``); no script.
_CROSS_SITE_SIGN_IN: Final = (
    '<!doctype html><html lang="en"><head><meta charset="utf-8">'
    '<meta http-equiv="refresh" content="0; url={url}"><title>Replay inspector</title></head>'
    '<body><p><a href="{url}">Open the inspector</a></p></body></html>'
)
_FORWARDED_FOR = re.compile(r'for="?\[?([^\]";,]+)', re.IGNORECASE)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


# -- the visit and its pages (pure) ----------------------------------------------------------


@dataclass(frozen=True)
class VisitSpan:
    """The visit as the visitor lived it: ``start_ms`` to ``end_ms`` (epoch ms).

    Not the replay's length (first to last rrweb event): the visit starts with the session's
    first request, which may come before the recorder's first event, and ends with the last
    activity we know of, which may be an upload received after the last event.
    """

    start_ms: int
    end_ms: int

    @property
    def duration_ms(self) -> int:
        return self.end_ms - self.start_ms


@dataclass(frozen=True)
class PageStay:
    """One page of a visit: ``url`` from ``start_ms`` (its first event reporting that URL) to
    ``end_ms`` (the next page's start, or for the last page the session's last event)."""

    url: str
    start_ms: int
    end_ms: int

    @property
    def duration_ms(self) -> int:
        return self.end_ms - self.start_ms


def visit_span(
    session_id: str,
    *,
    first_event_ms: int | None,
    last_event_ms: int | None,
    first_received_ms: int,
    last_received_ms: int,
) -> VisitSpan:
    """The visit of one session, from the values the store keeps.

    Start: the earliest of the session id (when it is a ms timestamp, as the SDK's and our
    own are: the time of the session's first request; ignored if more than a day before the
    other two), the first event's timestamp and the first upload's arrival. End: the later of
    the last event's timestamp and the last upload's arrival; never before the start.

    The session id and arrivals are the server's clock, event timestamps the browser's; in
    local mode both are usually this machine's, and a skewed browser clock widens the span by
    the skew rather than making it negative.
    """
    starts = [first_received_ms]
    if first_event_ms is not None:
        starts.append(first_event_ms)
    session_start = _session_start_ms(session_id)
    if session_start is not None and session_start >= min(starts) - _MAX_SESSION_LEAD_MS:
        starts.append(session_start)
    start = min(starts)
    end = last_received_ms if last_event_ms is None else max(last_event_ms, last_received_ms)
    return VisitSpan(start, max(start, end))


def page_stays(marks: Iterable[tuple[int, str]], *, last_event_ms: int | None) -> list[PageStay]:
    """The pages of a visit, in order, from its page marks (``LocalStore.page_marks``).

    ``marks`` are ``(timestamp, url)`` of the events that report the page, in any order (they
    are sorted by timestamp, stably): a page starts at a mark whose URL differs from the
    page before; marks repeating the current URL (the Meta event of each full snapshot, the
    URL-tracking plugin's first report) continue it, so a reload of the same URL is one
    page too. A page ends where the next starts; the last one at ``last_event_ms`` (the
    session's last event), or at its own start when that is unknown or earlier.
    """
    starts: list[tuple[int, str]] = []
    for timestamp, url in sorted(marks, key=lambda mark: mark[0]):
        if not starts or starts[-1][1] != url:
            starts.append((timestamp, url))
    stays: list[PageStay] = []
    for index, (start, url) in enumerate(starts):
        if index + 1 < len(starts):
            end = starts[index + 1][0]
        else:
            end = start if last_event_ms is None else max(start, last_event_ms)
        stays.append(PageStay(url, start, end))
    return stays


def derive_inspector_token(secret_key: str) -> str:
    """The inspector token of ``secret_key``: HMAC-SHA256 with a purpose string, base64url
    without padding (43 characters). Every process configured with the same key agrees on it,
    so the cookie one worker sets is accepted by the others; the key itself never leaves."""
    digest = hmac.new(secret_key.encode("utf-8"), _TOKEN_PURPOSE, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def inspector_token_for(configured: str | None, secret_key: str | None) -> str:
    """The token the inspector requires: ``configured`` (``ReplayConfig.inspector_token``)
    when set; else derived from ``secret_key`` (``derive_inspector_token``) when one is
    configured; else a random one, new in every call (local mode's per-process default)."""
    if configured:
        return configured
    if secret_key:
        return derive_inspector_token(secret_key)
    return secrets.token_urlsafe(32)


def _session_start_ms(session_id: str) -> int | None:
    """The session id as a ms timestamp, if it is one (digits; 2001 to 2286 at 13 digits)."""
    if session_id.isascii() and session_id.isdigit() and len(session_id) == 13:
        return int(session_id)
    return None


class Inspector:
    """Serves ``{prefix}/inspect/...`` from a ``LocalStore``; immutable after ``__init__``.

    ``token``: what ``?token=`` and the cookie must hold (``inspector_token_for``); 16-256
    URL-safe characters, else ``ValueError``. ``allow``: addresses or networks (anything
    ``ipaddress.ip_network`` reads) that may use the inspector besides loopback clients;
    ``ValueError`` for an entry that is neither. ``static_root``: where ``inspector.js`` and
    ``vendor/`` are (default: ``static_dir()``).
    """

    def __init__(
        self,
        store: LocalStore,
        prefix: str,
        *,
        token: str,
        allow: Sequence[str] = (),
        static_root: Path | None = None,
    ) -> None:
        if not isinstance(token, str) or not _TOKEN.fullmatch(token):
            raise ValueError("the inspector token must be 16-256 URL-safe characters")
        if isinstance(allow, str):
            raise ValueError("allow must be a sequence of addresses, not a string")
        networks: list[Network] = []
        for entry in allow:
            try:
                networks.append(ipaddress.ip_network(str(entry).strip(), strict=False))
            except ValueError:
                raise ValueError(
                    f"inspector allow entry {entry!r} is not an IP address or network"
                ) from None
        self.store = store
        self.prefix = prefix.rstrip("/")
        self.base = f"{self.prefix}/inspect"
        self.allow: tuple[Network, ...] = tuple(networks)
        self.token = token
        self._token_bytes = token.encode("ascii")
        #: Named after the token's fingerprint, so two servers on one host (cookies ignore
        #: the port) keep their own cookie instead of overwriting each other's.
        fingerprint = hashlib.sha256(b"replay-middleware inspector cookie:" + self._token_bytes)
        self.cookie_name = f"replay_inspect_{fingerprint.hexdigest()[:8]}"
        self.static_root = static_root if static_root is not None else static_dir()
        env = jinja2.Environment(
            loader=jinja2.PackageLoader("replay_middleware", "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
        )
        env.filters["size"] = _size
        env.filters["utc"] = _utc
        self._list = env.get_template("inspect_list.html")
        self._session = env.get_template("inspect_session.html")
        self._missing = env.get_template("inspect_missing.html")
        # name under static/ -> (content type, pinned sha256 or None for our own files)
        self._statics: dict[str, tuple[str, str | None]] = {
            **{name: (ctype, None) for name, ctype in _OWN_FILES.items()},
            **{f.name: (f.content_type, f.sha256) for f in PLAYER_FILES},
        }

    # -- access ---------------------------------------------------------------------------------

    def is_allowed(self, request: RequestInfo) -> bool:
        """Loopback or allow-listed client, loopback ``Host`` unless allow-listed, and every
        forwarded address loopback or allow-listed."""
        client = _address(request.client)
        if client is None:
            return False
        allowed = self._in_allow(client)
        if not (allowed or client.is_loopback):
            return False
        for name in _FORWARDING_HEADERS:
            value = request.headers.get(name)
            if value is None:
                continue
            for forwarded in _forwarded_addresses(name, value):
                if forwarded is None or not (forwarded.is_loopback or self._in_allow(forwarded)):
                    return False
        return allowed or _loopback_host(request.headers.get("host", ""))

    def _in_allow(self, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        return any(address in network for network in self.allow)

    @property
    def sign_in_url(self) -> str:
        """The URL that opens the inspector, relative to the origin: ``{base}?token=...``."""
        return f"{self.base}?token={self.token}"

    def _token_matches(self, value: str | None) -> bool:
        """Constant-time comparison with the token (bytes: ``compare_digest`` refuses
        non-ASCII ``str``, and a query or a cookie may hold anything)."""
        if value is None:
            return False
        return hmac.compare_digest(value.encode("utf-8", "replace"), self._token_bytes)

    def _sign_in(self, request: RequestInfo, rest: list[tuple[str, str]]) -> HttpResponse:
        """The answer to a valid ``?token=``: the cookie, and a 303 to the same URL without
        the token (the request's other query fields kept); for a navigation from another site
        (``Sec-Fetch-Site: cross-site``), a page that refreshes to that URL instead."""
        location = quote(request.path, safe="/")  # a path under the base: never off-site
        if rest:
            location += "?" + urlencode(rest)
        cookie = dump_cookie(
            self.cookie_name,
            self.token,
            path=self.base,
            secure=request.is_secure,
            httponly=True,
            samesite="Strict",
        )
        if request.headers.get("sec-fetch-site") == "cross-site":
            # A link on another site: the browser would not send a SameSite=Strict cookie on
            # the redirected request (nor on any reload of it, chromium keeps the navigation's
            # cross-site origin), so a 303 would land on a 404. A refresh from this page is a
            # navigation this site starts: the cookie goes with it.
            body = _CROSS_SITE_SIGN_IN.format(url=html.escape(location)).encode("ascii")
            headers = [*_HTML_HEADERS, ("set-cookie", cookie), ("content-length", str(len(body)))]
            return HttpResponse(200, headers, body)
        headers = [("location", location), ("set-cookie", cookie), *_COMMON]
        return HttpResponse(303, headers, b"")

    # -- routing --------------------------------------------------------------------------------

    def handles(self, path: str) -> bool:
        """Whether ``path`` is the inspector's (``{prefix}/inspect`` or below)."""
        return path == self.base or path.startswith(self.base + "/")

    def handle(self, request: RequestInfo) -> HttpResponse:
        """Answer a request for a path under ``{prefix}/inspect``: 404 for anyone not allowed
        (``is_allowed``) and for a request whose ``?token=`` is wrong, or that has none and no
        valid cookie; a 303 that sets the cookie for a valid ``?token=``."""
        if not self.handles(request.path) or not self.is_allowed(request):
            return _NOT_FOUND
        try:
            query = parse_qsl(
                request.query_string, keep_blank_values=True, max_num_fields=_MAX_QUERY_FIELDS
            )
        except ValueError:
            return _NOT_FOUND
        given = [value for name, value in query if name == "token"]
        if given:
            if len(given) != 1 or not self._token_matches(given[0]):
                return _NOT_FOUND
        elif not self._token_matches(request.cookies.get(self.cookie_name)):
            return _NOT_FOUND
        if request.method not in ("GET", "HEAD"):
            return HttpResponse(
                405,
                [("allow", "GET, HEAD"), ("content-type", "text/plain; charset=utf-8"), *_COMMON],
                b"Method Not Allowed",
            )
        if given:
            return self._sign_in(request, [(n, v) for n, v in query if n != "token"])
        response = self._route(request.path[len(self.base) :])
        if request.method == "HEAD":
            return HttpResponse(response.status, response.headers, b"")
        return response

    def _route(self, rest: str) -> HttpResponse:
        if rest in ("", "/"):
            return self._html(200, self._list_page())
        if rest.startswith("/static/"):
            return self._static(rest[len("/static/") :])
        rest = rest[1:].rstrip("/")
        view = "page"
        for suffix in ("events.json", "interactions.json"):
            if rest.endswith("/" + suffix):
                rest, view = rest[: -len(suffix) - 1], suffix
        # The session id is the last segment, the device id all before it: the SDK's session
        # ids are numbers, a device id may be any string (even one holding a "/").
        device_id, sep, session_id = rest.rpartition("/")
        if not sep or not device_id or not session_id:
            return _NOT_FOUND
        summary = self.store.session(device_id, session_id)
        if summary is None:
            return self._html(404, self._missing.render(base=self.base))
        if view == "events.json":
            return self._json(self.store.events(device_id, session_id))
        if view == "interactions.json":
            return self._json(self.store.interactions(device_id, session_id))
        return self._html(200, self._session_page(summary))

    # -- pages ----------------------------------------------------------------------------------

    def _list_page(self) -> str:
        sessions = self.store.sessions(_LIST_LIMIT)
        return self._list.render(
            base=self.base,
            sessions=[self._session_view(s) for s in sessions],
            limit=_LIST_LIMIT,
            used_bytes=self.store.used_bytes(),
            max_bytes=self.store.max_bytes,
            store_file=str(self.store.file),
        )

    def _session_view(self, s: SessionSummary) -> dict[str, Any]:
        url = f"{self.base}/{_segment(s.device_id)}/{_segment(s.session_id)}"
        visit = visit_span(
            s.session_id,
            first_event_ms=s.first_event_ms,
            last_event_ms=s.last_event_ms,
            first_received_ms=s.first_received_ms,
            last_received_ms=s.last_received_ms,
        )
        replay = None
        if s.first_event_ms is not None and s.last_event_ms is not None:
            replay = s.last_event_ms - s.first_event_ms
        return {
            "s": s,
            "url": url,
            "visit": visit,
            "visit_duration": _duration(visit.duration_ms),
            "replay_duration": _duration(replay),
        }

    def _session_page(self, s: SessionSummary) -> str:
        view = self._session_view(s)
        player = self._player_status()
        uploads = self.store.uploads(s.device_id, s.session_id)
        visit: VisitSpan = view["visit"]
        stays = page_stays(
            self.store.page_marks(s.device_id, s.session_id), last_event_ms=s.last_event_ms
        )
        return self._session.render(
            base=self.base,
            view=view,
            s=s,
            stays=[_stay_view(stay, visit) for stay in stays[:_PAGE_LIMIT]],
            stays_left_out=max(0, len(stays) - _PAGE_LIMIT),
            uploads=[_upload_view(u) for u in uploads],
            events_url=view["url"] + "/events.json",
            interactions_url=view["url"] + "/interactions.json",
            player_error=player,
            player_js=f"{self.base}/static/{PLAYER_FILES[0].name}",
            player_css=f"{self.base}/static/{PLAYER_FILES[1].name}",
        )

    def _player_status(self) -> str | None:
        """None when the vendored player files are present and intact, else the problem."""
        for file in PLAYER_FILES:
            path = self.static_root / file.name
            if not path.is_file():
                return f"The replay player (rrweb-player {PLAYER_VERSION}) is not installed"
            if hashlib.sha256(path.read_bytes()).hexdigest() != file.sha256:
                return f"{file.name} does not match its pinned sha256"
        return None

    def _static(self, name: str) -> HttpResponse:
        entry = self._statics.get(name)
        if entry is None:
            return _NOT_FOUND
        content_type, sha256 = entry
        try:
            body = (self.static_root / name).read_bytes()
        except OSError:
            return _NOT_FOUND
        if sha256 is not None and hashlib.sha256(body).hexdigest() != sha256:
            return _NOT_FOUND  # a tampered or half-written player file is never served
        headers = [("content-type", content_type), ("content-length", str(len(body))), *_COMMON]
        return HttpResponse(200, headers, body)

    @staticmethod
    def _html(status: int, text: str) -> HttpResponse:
        body = text.encode("utf-8")
        return HttpResponse(status, [*_HTML_HEADERS, ("content-length", str(len(body)))], body)

    @staticmethod
    def _json(value: Any) -> HttpResponse:
        body = json.dumps(value, indent=2, ensure_ascii=False).encode("utf-8", "replace")
        return HttpResponse(200, [*_JSON_HEADERS, ("content-length", str(len(body)))], body)


# -- helpers --------------------------------------------------------------------------------


def _address(value: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if not value:
        return None
    text = value.strip()
    if text.startswith("[") and "]" in text:  # "[::1]" or "[::1]:port"
        text = text[1 : text.index("]")]
    elif text.count(":") == 1:  # "127.0.0.1:port"
        text = text.split(":", 1)[0]
    try:
        address = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _forwarded_addresses(
    name: str, value: str
) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address | None]:
    """The addresses a forwarding header names (None for an unreadable one, e.g. "unknown")."""
    if name == "forwarded":  # RFC 7239: for=192.0.2.60;proto=http, for="[2001:db8::1]:80"
        found = _FORWARDED_FOR.findall(value)
        return [_address(v) for v in found] or [None]
    return [_address(part) for part in value.split(",")]


def _loopback_host(host: str) -> bool:
    """Whether a ``Host`` header names this machine: localhost, *.localhost (RFC 6761 §6.3),
    or a loopback address, with or without a port."""
    host = host.strip().lower()
    if host.startswith("["):
        name = host[1 : host.find("]")] if "]" in host else ""
    else:
        name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    name = name.rstrip(".")
    if name == "localhost" or name.endswith(".localhost"):
        return True
    address = _address(name)
    return address is not None and address.is_loopback


def _segment(value: str) -> str:
    """A path segment for a URL: every reserved character percent-encoded."""
    return quote(value, safe="")


def _size(value: int | None) -> str:
    if value is None:
        return "-"
    size = float(value)
    for unit in ("B", "KiB", "MiB"):
        if size < 1024 or unit == "MiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"  # pragma: no cover - the loop always returns


def _utc(ms: int | None) -> str:
    if ms is None:
        return "-"
    try:
        moment = datetime.fromtimestamp(ms / 1000, tz=timezone.utc)
    except (OverflowError, OSError, ValueError):
        return str(ms)
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def _duration(ms: int | None) -> str:
    if ms is None:
        return "-"
    if 0 < ms < 1000:
        return "< 1 s"
    seconds = ms // 1000
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def _offset(ms: int) -> str:
    """An offset from the visit's start: "+0:00", "+4:05", "+1:02:03"."""
    seconds = max(0, ms) // 1000
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"+{minutes}:{seconds:02d}"
    hours, minutes = divmod(minutes, 60)
    return f"+{hours}:{minutes:02d}:{seconds:02d}"


def _stay_view(stay: PageStay, visit: VisitSpan) -> dict[str, Any]:
    return {
        "stay": stay,
        "offset": _offset(stay.start_ms - visit.start_ms),
        "duration": _duration(stay.duration_ms),
    }


def _upload_view(u: UploadRecord) -> dict[str, Any]:
    return {"u": u, "encoding": "gzip" if u.compressed else "plain"}
