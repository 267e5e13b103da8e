"""Decoding of the Session Replay SDK's upload bodies (SPEC L2; PROTOCOL §1.2-1.4, §9).

Sans-IO: ``decode_payload`` takes the body bytes, the query string and the ``Content-Encoding``
header and returns plain values; it reads no socket and no file. Used by the local-mode store
(``local_store.py``) to turn what the browser posted to ``{prefix}/track`` into rrweb events.

The shapes the SDK 1.51.6 sends, all accepted here:

- replay upload (fetch): ``{"version": 1, "events": ["<rrweb event as JSON>", ...]}``, gzipped
  with ``Content-Encoding: gzip`` when ``CompressionStream`` exists, else plain JSON;
- page-exit beacon: ``{"version": 2, "events": [...strings...]}``, never gzipped;
- interactions (query ``type=interaction``): ``{"version": 1, "events": [{...}, ...]}`` with
  event *objects* such as ``{"type": "click", ...}`` or ``{"type": "scroll", ...}``; the scroll
  beacon is sent as ``text/plain`` (the body is JSON all the same).

Every body is hostile until decoded: gzip output is capped (a gzip bomb stops at the cap), the
number of events is capped, JSON nesting errors are caught, and nothing here raises on bad
input: the result is a ``DecodeError`` naming what was wrong.

Page exit sends its tail twice (PROTOCOL §1.3: a keepalive fetch and a v2 beacon carrying the
same events), so each event carries a ``fingerprint``: the sha1 of its canonical JSON (sorted
keys, no whitespace). Two copies of one event have the same fingerprint however they were
framed; a store keeps one of them.
"""

from __future__ import annotations

import hashlib
import json
import math
import zlib
from dataclasses import dataclass
from typing import Any, Final, Literal, TypeGuard
from urllib.parse import parse_qsl

__all__ = [
    "GZIP_MAGIC",
    "MAX_DECODED_BYTES",
    "MAX_EVENTS",
    "RRWEB_EVENT_TYPES",
    "DecodeError",
    "DecodedPayload",
    "InteractionEvent",
    "ReplayEvent",
    "decode_payload",
    "fingerprint",
    "parse_track_query",
]

#: The first two bytes of a gzip member (RFC 1952 §2.3.1).
GZIP_MAGIC: Final = b"\x1f\x8b"
#: Largest decompressed body we accept. The SDK cuts a batch at 6 000 000 UTF-8 bytes of raw
#: JSON (``maxPersistedEventsSizeBytes``, PROTOCOL §1.2) and drops single events over 9 MB, so
#: 50 MB leaves room for custom settings while a gzip bomb stops here.
MAX_DECODED_BYTES: Final = 50 * 1024 * 1024
#: Most events read from one payload; the rest are counted in ``DecodedPayload.dropped``.
MAX_EVENTS: Final = 100_000
#: rrweb ``EventType``: DomContentLoaded 0, Load 1, FullSnapshot 2, IncrementalSnapshot 3,
#: Meta 4, Custom 5, Plugin 6.
RRWEB_EVENT_TYPES: Final = range(0, 7)
META_EVENT = 4
PLUGIN_EVENT = 6
#: The SDK's URL-tracking rrweb plugin (SR ``src/plugins/url-tracking-plugin.ts``): its
#: payload's ``href`` is the page after a client-side navigation.
URL_TRACKING_PLUGIN = "amplitude/url-tracking@1"
# Longest URL we keep from an event; the SDK itself truncates X-Client-Url at 1000 chars.
_MAX_URL = 2048


@dataclass(frozen=True)
class ReplayEvent:
    """One rrweb ``eventWithTime`` from a replay upload.

    ``json`` is the event's JSON text (the string the SDK sent, or a compact serialisation when
    the element arrived as an object); ``href`` is the page URL this event reports (Meta events'
    ``data.href`` and the SDK's URL-tracking plugin events), else ``None``.
    """

    type: int
    timestamp: int
    json: str
    fingerprint: bytes
    href: str | None = None


@dataclass(frozen=True)
class InteractionEvent:
    """One interaction event (``type=interaction`` uploads): a click or scroll summary.

    ``kind`` is the event's own ``type`` ("click", "scroll"; "unknown" when absent).
    """

    kind: str
    timestamp: int | None
    page_url: str | None
    json: str
    fingerprint: bytes


@dataclass(frozen=True)
class DecodedPayload:
    """A decoded upload.

    ``kind`` follows the query's ``type`` ("interaction", else "replay"). ``events`` holds the
    rrweb events of a replay upload, ``interactions`` the events of an interaction upload (one
    of the two is empty). ``skipped`` counts elements that were not valid events (wrong JSON
    type, an rrweb ``type`` outside 0-6, no numeric ``timestamp``); ``dropped`` counts the
    elements past ``MAX_EVENTS``.
    """

    kind: Literal["replay", "interaction"]
    version: int | None
    compressed: bool
    decoded_bytes: int
    events: tuple[ReplayEvent, ...] = ()
    interactions: tuple[InteractionEvent, ...] = ()
    skipped: int = 0
    dropped: int = 0


@dataclass(frozen=True)
class DecodeError:
    """Why a body could not be decoded; ``reason`` is a short sentence for people."""

    reason: str
    compressed: bool = False


def fingerprint(event: Any) -> bytes:
    """The dedupe key of a decoded event: sha1 of its canonical JSON (20 bytes).

    Canonical means sorted keys and no whitespace, so the same event framed by the keepalive
    fetch and by the v2 beacon (or re-serialised in another key order) gives the same key.
    """
    text = json.dumps(event, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha1(text.encode("utf-8", "surrogatepass")).digest()


def parse_track_query(query_string: str) -> dict[str, str]:
    """The first value of each query parameter (``device_id``, ``session_id``, ``type``, ...).

    Never raises; a query with more than 50 fields is read up to that point.
    """
    out: dict[str, str] = {}
    for count, (name, value) in enumerate(parse_qsl(query_string, keep_blank_values=True)):
        if count >= 50:
            break
        out.setdefault(name, value)
    return out


def decode_payload(
    body: bytes,
    *,
    query_string: str = "",
    content_encoding: str | None = None,
    max_decoded_bytes: int = MAX_DECODED_BYTES,
    max_events: int = MAX_EVENTS,
) -> DecodedPayload | DecodeError:
    """Decode one ``/track`` body; never raises on hostile input.

    Gzip is recognised by its magic bytes, whatever ``content_encoding`` says (a body that
    claims ``gzip`` but is not is an error; a gzip body without the header is still
    decompressed). ``query_string`` selects the shape: ``type=interaction`` reads event objects,
    anything else reads rrweb events (strings, or objects for leniency).
    """
    try:
        return _decode(body, query_string, content_encoding, max_decoded_bytes, max_events)
    except Exception as exc:  # pragma: no cover - a bug here must not lose the upload
        return DecodeError(f"internal decoding error: {type(exc).__name__}")


def _decode(
    body: bytes,
    query_string: str,
    content_encoding: str | None,
    max_decoded_bytes: int,
    max_events: int,
) -> DecodedPayload | DecodeError:
    compressed = body[:2] == GZIP_MAGIC
    claims_gzip = "gzip" in (content_encoding or "").lower()
    if compressed:
        inflated = _gunzip(body, max_decoded_bytes)
        if isinstance(inflated, DecodeError):
            return inflated
        raw = inflated
    elif claims_gzip:
        return DecodeError("Content-Encoding says gzip but the body is not gzip")
    else:
        if len(body) > max_decoded_bytes:
            return DecodeError(f"body larger than {max_decoded_bytes} bytes")
        raw = body
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        return DecodeError("body is not UTF-8", compressed)
    document = _loads(text)
    if isinstance(document, DecodeError):
        return DecodeError(f"body is not JSON ({document.reason})", compressed)
    if not isinstance(document, dict):
        return DecodeError("body is not a JSON object", compressed)
    elements = document.get("events")
    if not isinstance(elements, list):
        return DecodeError('body has no "events" list', compressed)
    version = document.get("version")
    version = version if isinstance(version, int) and not isinstance(version, bool) else None

    kept, dropped = elements[:max_events], max(0, len(elements) - max_events)
    interaction = parse_track_query(query_string).get("type") == "interaction"
    if interaction:
        interactions = [_interaction(e) for e in kept]
        good_interactions = tuple(e for e in interactions if e is not None)
        return DecodedPayload(
            kind="interaction",
            version=version,
            compressed=compressed,
            decoded_bytes=len(raw),
            interactions=good_interactions,
            skipped=len(kept) - len(good_interactions),
            dropped=dropped,
        )
    events = [_replay_event(e) for e in kept]
    good_events = tuple(e for e in events if e is not None)
    return DecodedPayload(
        kind="replay",
        version=version,
        compressed=compressed,
        decoded_bytes=len(raw),
        events=good_events,
        skipped=len(kept) - len(good_events),
        dropped=dropped,
    )


def _gunzip(body: bytes, limit: int) -> bytes | DecodeError:
    # wbits 16+MAX: the gzip container only. max_length bounds the output of this call, so a
    # bomb costs at most `limit` + 1 bytes of memory before we stop reading it.
    decompressor = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        out = decompressor.decompress(body, limit + 1)
    except zlib.error as exc:
        return DecodeError(f"invalid gzip data ({exc})", True)
    if len(out) > limit or decompressor.unconsumed_tail:
        return DecodeError(f"gzip body inflates past {limit} bytes", True)
    if not decompressor.eof:
        return DecodeError("truncated gzip data", True)
    return out


def _loads(text: str) -> Any:
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except RecursionError:
        return DecodeError("nested too deeply")
    except ValueError as exc:  # JSONDecodeError, and int() beyond the digit limit
        return DecodeError(str(exc).split(":")[0])


def _reject_constant(name: str) -> Any:
    # NaN and Infinity are not JSON (RFC 8259 §6); Python's parser accepts them by default.
    raise ValueError(f"{name} is not JSON")


def _encodable(text: str) -> bool:
    # A lone surrogate (from a "\\ud800" escape in hostile JSON) cannot be stored as UTF-8.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _dumps(event: Any) -> str:
    """Compact JSON text of a decoded event, always storable as UTF-8."""
    text = json.dumps(event, separators=(",", ":"), ensure_ascii=False)
    return text if _encodable(text) else json.dumps(event, separators=(",", ":"))


def _is_number(value: object) -> TypeGuard[float]:
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and abs(value) < 2**53  # a JavaScript-safe millisecond count
    )


def _text(value: Any, limit: int) -> str | None:
    """A non-empty string cut to ``limit`` characters, lone surrogates replaced; else None."""
    if not isinstance(value, str) or not value:
        return None
    return value[:limit].encode("utf-8", "replace").decode("utf-8")


def _url(value: Any) -> str | None:
    return _text(value, _MAX_URL)


def _replay_event(element: Any) -> ReplayEvent | None:
    if isinstance(element, str):
        event = _loads(element)
        if isinstance(event, DecodeError):
            return None
        text = element if _encodable(element) else _dumps(event)
    elif isinstance(element, dict):
        event = element
        text = _dumps(event)
    else:
        return None
    if not isinstance(event, dict) or "data" not in event:
        return None
    kind, timestamp = event.get("type"), event.get("timestamp")
    if not (isinstance(kind, int) and not isinstance(kind, bool) and kind in RRWEB_EVENT_TYPES):
        return None
    if not _is_number(timestamp):
        return None
    return ReplayEvent(
        type=kind,
        timestamp=int(timestamp),
        json=text,
        fingerprint=fingerprint(event),
        href=event_href(kind, event["data"]),
    )


def event_href(kind: int, data: Any) -> str | None:
    if not isinstance(data, dict):
        return None
    if kind == META_EVENT:
        return _url(data.get("href"))
    if kind == PLUGIN_EVENT and data.get("plugin") == URL_TRACKING_PLUGIN:
        payload = data.get("payload")
        if isinstance(payload, dict):
            return _url(payload.get("href"))
    return None


def _interaction(element: Any) -> InteractionEvent | None:
    if isinstance(element, str):
        event = _loads(element)
        if isinstance(event, DecodeError):
            return None
    else:
        event = element
    if not isinstance(event, dict):
        return None
    kind, timestamp = event.get("type"), event.get("timestamp")
    return InteractionEvent(
        kind=_text(kind, 64) or "unknown",
        timestamp=int(timestamp) if _is_number(timestamp) else None,
        page_url=_url(event.get("pageUrl")),
        json=_dumps(event),
        fingerprint=fingerprint(event),
    )
