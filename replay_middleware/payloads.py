"""Decoding of the Session Replay SDK's upload bodies (SPEC L1, L2; PROTOCOL §1.2-1.4, §9).

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

Every body is hostile until decoded, and decoding one costs bounded memory and never holds the
interpreter for long (SPEC L2: one upload adds at most 64 MiB of RSS; other requests are not
stalled):

- the body is read a piece at a time (gzip inflated as it is read), never whole: the decoded
  size is capped (``MAX_DECODED_BYTES``) and only the text of the element being read is held;
- ``events`` is read one element at a time, counted (``MAX_EVENTS``), and each event is parsed
  on its own, its memory counted against ``MAX_DECODE_MEMORY`` with the events kept: by
  ``json.loads`` when its count of structural characters bounds what that builds and how long
  it holds the GIL (``_C_TOKENS``), else by a small iterative parser here (``_scan``) that counts
  every value as it builds it, limits nesting (``MAX_DEPTH``) and lets other threads run;
- past a limit the result is a ``DecodeError`` with ``too_large`` set: the endpoint answers
  413 "Payload size exceeded the limit", and the SDK splits the batch in halves and sends them
  again (PROTOCOL §2), so a real upload over a cap still arrives;
- nothing here raises on bad input: the result is a ``DecodeError`` naming what was wrong.

Page exit sends its tail twice (PROTOCOL §1.3: a keepalive fetch and a v2 beacon carrying the
same events), so each event carries a ``fingerprint``: the sha1 of its canonical JSON (sorted
keys, no whitespace). Two copies of one event have the same fingerprint however they were
framed; a store keeps one of them.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import math
import re
import sys
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Literal, TypeGuard
from urllib.parse import parse_qsl

__all__ = [
    "GZIP_MAGIC",
    "MAX_DECODED_BYTES",
    "MAX_DECODE_MEMORY",
    "MAX_DEPTH",
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
#: Largest decoded (inflated) body read. The SDK cuts a batch at 6 000 000 UTF-8 bytes of event
#: strings (``maxPersistedEventsSizeBytes``, PROTOCOL §1.2), about 6.5 MB once the outer JSON
#: escapes their quotes, and sends an event of up to 9 MB (``MAX_SINGLE_EVENT_SIZE``) alone; the
#: full snapshot of a 400 KB page measured 0.55 MB. Past the cap the upload is refused as too
#: large and the SDK sends it again in halves.
MAX_DECODED_BYTES: Final = 16 * 1024 * 1024
#: Most elements read from one upload's ``events``; past it the upload is refused as too large
#: (and split by the SDK). A batch holds at most 10 s of a page's events: hundreds, a few
#: thousand on a busy page.
MAX_EVENTS: Final = 50_000
#: Python memory one upload's decoding may hold, counted as it goes (generously: every object
#: at its full size, shared ones included): the decoded text held, the events kept, the event
#: being parsed. With the body itself and the store's writing, an upload stays under 64 MiB of
#: RSS (37 MiB at most measured: BENCHMARKS.md, "Local mode: hostile uploads"). The largest
#: full snapshots it admits: 8.6 MB of JSON for a text page (16x the 400 KB page's), 3.5 MB for
#: a DOM-heavy one (42 000 nodes; Lighthouse flags 1 500 elements).
MAX_DECODE_MEMORY: Final = 40 * 1024 * 1024
#: Deepest JSON nesting read in a large event: rrweb nests a snapshot two levels per DOM level,
#: so 500 is a DOM 250 elements deep (Lighthouse flags 32). Small events go to ``json.loads``,
#: bounded by the interpreter's recursion limit.
MAX_DEPTH: Final = 500
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
# Decoded bytes read at a time; an element longer than that is read in pieces as long as what
# is held of it, up to ``_MAX_READ`` (a long element is scanned again after each piece: few
# times, and each piece and its text are transient copies).
_CHUNK = 256 * 1024
_MAX_READ = 2 * 1024 * 1024
# Compressed bytes handed to zlib at a time.
_GZIP_INPUT = 64 * 1024
# An event goes to json.loads (C: fast, but it holds the GIL and builds the whole value before
# anything can be counted) when it has at most ``_C_TOKENS`` structural characters ("{[,:"),
# with ``_C_TOKEN_BYTES`` reserved per such character plus its text twice; else to ``_scan``.
# The bounds hold for the worst shapes measured: json.loads builds at most 64 bytes per
# structural character (34x the text for ``[[[]],[[]],...]``), and 100 000 of them take at most
# 17 ms to parse and 14 ms to fingerprint (floats), two separate C calls. A real full snapshot
# (the 400 KB page's: 0.55 MB, 26 600 structural characters, 2 ms, 2.4x its text) takes this
# path up to about 2 MB.
_C_TOKENS = 100_000
_C_TOKEN_BYTES = 160
# What ``_scan`` counts per value: its size (a list's as if empty), plus its slot in the list
# (8 bytes, over-allocated, copied as the list grows) or dict (16 to 24 bytes of table over 2/3
# of the slots, and two tables while it grows); a new key also takes a slot in the key memo.
# Measured against tracemalloc: 1.1x (nested lists) to 2x (unique keys) what is built; 1.8x
# for a real full snapshot.
_LIST_SLOT = 24
_DICT_SLOT = 64
_EMPTY_LIST = 56
# Bytes counted per event kept besides its text: the ReplayEvent (72 with slots), the
# fingerprint (53), the timestamp (32), list and tuple slots.
_EVENT_BYTES = 192
# A lone surrogate (from a "\\ud800" escape in hostile JSON) cannot be stored as UTF-8.
_SURROGATE = re.compile("[\ud800-\udfff]")
_WS = re.compile(r"[ \t\n\r]*")
# json's NUMBER_RE, with ASCII digits only, as json's C scanner reads them.
_NUMBER = re.compile(r"(-?(?:0|[1-9][0-9]*))(\.[0-9]+)?([eE][-+]?[0-9]+)?")
_LITERALS: Final = (("null", None), ("true", True), ("false", False))
_NOT_JSON_CONSTANTS: Final = ("NaN", "Infinity", "-Infinity")
# Same output as json.dumps with these arguments; ``iterencode`` is the pure-Python encoder,
# used for large events so that other threads run while it works.
# json's string scanner (C when available), which typeshed does not declare.
_scanstring: Callable[[str, int, bool], tuple[str, int]]
_scanstring = json.decoder.scanstring  # type: ignore[attr-defined]
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)
_COMPACT = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
_COMPACT_ASCII = json.JSONEncoder(separators=(",", ":"))


@dataclass(frozen=True, slots=True)
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


@dataclass(frozen=True, slots=True)
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
    type, an rrweb ``type`` outside 0-6, no numeric ``timestamp``, nested past ``MAX_DEPTH``).
    """

    kind: Literal["replay", "interaction"]
    version: int | None
    compressed: bool
    decoded_bytes: int
    events: tuple[ReplayEvent, ...] = ()
    interactions: tuple[InteractionEvent, ...] = ()
    skipped: int = 0


@dataclass(frozen=True)
class DecodeError:
    """Why a body could not be decoded; ``reason`` is a short sentence for people.

    ``too_large``: a limit was reached (decoded size, event count, memory), not a malformed
    body; the endpoint answers 413 so that the SDK sends the batch again in halves.
    """

    reason: str
    compressed: bool = False
    too_large: bool = False


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
    max_memory: int = MAX_DECODE_MEMORY,
) -> DecodedPayload | DecodeError:
    """Decode one ``/track`` body; never raises on hostile input.

    Gzip is recognised by its magic bytes, whatever ``content_encoding`` says (a body that
    claims ``gzip`` but is not is an error; a gzip body without the header is still
    decompressed). ``query_string`` selects the shape: ``type=interaction`` reads event objects,
    anything else reads rrweb events (strings, or objects for leniency). ``max_decoded_bytes``,
    ``max_events`` and ``max_memory`` are the limits (see the module docstring); past one, a
    ``DecodeError`` with ``too_large`` set.
    """
    compressed = body[:2] == GZIP_MAGIC
    try:
        return _decode(
            body,
            compressed,
            query_string,
            content_encoding,
            max_decoded_bytes,
            max_events,
            max_memory,
        )
    except _TooLarge as exc:
        return DecodeError(exc.reason, compressed, too_large=True)
    except _Invalid as exc:
        return DecodeError(exc.reason, compressed)
    except Exception as exc:  # pragma: no cover - a bug here must not lose the upload
        return DecodeError(f"internal decoding error: {type(exc).__name__}", compressed)


# -- limits and failures --------------------------------------------------------------------


class _Invalid(Exception):
    """The body is malformed; ``reason`` is the DecodeError's."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _TooLarge(_Invalid):
    """A limit was reached."""


class _NotJson(Exception):
    """Not JSON; ``reason`` as json's own messages ("Expecting value", ...)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _Incomplete(Exception):
    """The text ended inside a value, and more of it is to come."""


class _Budget:
    """The memory an upload's decoding may still take, in bytes (``MAX_DECODE_MEMORY``)."""

    __slots__ = ("left", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.left = limit

    def take(self, size: int) -> None:
        self.left -= size
        if self.left < 0:
            raise _TooLarge(f"decoding needs more than {self.limit} bytes of memory")


# -- reading the body -----------------------------------------------------------------------


class _Source:
    """The body's decoded bytes, a piece at a time: gzip is inflated as it is read (zlib's
    ``max_length``: never more than asked for, so a bomb stops at the cap), and at most
    ``limit`` bytes come out."""

    def __init__(self, body: bytes, compressed: bool, limit: int) -> None:
        self._view = memoryview(body)
        self._offset = 0
        self._inflater = zlib.decompressobj(16 + zlib.MAX_WBITS) if compressed else None
        self._limit = limit
        self.size = 0

    def read(self, size: int) -> bytes | memoryview:
        """Up to ``size`` bytes (fewer only at the end); empty at the end."""
        if self._inflater is None:
            piece: bytes | memoryview = self._view[self._offset : self._offset + size]
            self._offset += len(piece)
        else:
            piece = self._inflate(size)
        self.size += len(piece)
        if self.size > self._limit:  # plain bodies were measured before reading
            raise _TooLarge(f"gzip body inflates past {self._limit} bytes")
        return piece

    def _inflate(self, size: int) -> bytes:
        assert self._inflater is not None
        inflater = self._inflater
        pieces: list[bytes] = []
        got = 0
        # A byte past the cap is enough to know the body is over it.
        size = min(size, self._limit + 1 - self.size)
        while got < size and not inflater.eof:
            data: bytes | memoryview = inflater.unconsumed_tail
            if not data:
                data = self._view[self._offset : self._offset + _GZIP_INPUT]
                self._offset += len(data)
                if not data:
                    raise _Invalid("truncated gzip data")
            try:
                out = inflater.decompress(data, size - got)
            except zlib.error as exc:
                raise _Invalid(f"invalid gzip data ({exc})") from None
            pieces.append(out)
            got += len(out)
        return b"".join(pieces)


class _Text:
    """The body as text, decoded a piece at a time: ``text[pos:]`` is what is still unread of
    the pieces read so far. It holds the rest of one piece plus the element being read, never
    the whole body (whose ``str`` may take four bytes a character); its size is counted in the
    budget."""

    def __init__(self, source: _Source, budget: _Budget) -> None:
        self._source = source
        self._decoder = codecs.getincrementaldecoder("utf-8")()
        self._budget = budget
        self._held = 0
        self.text = ""
        self.pos = 0
        self.final = False
        if self.more() and self.text.startswith("\ufeff"):  # a UTF-8 byte order mark
            self.pos = 1

    def more(self, at_least: int = 0) -> bool:
        """Read the next piece (at least ``at_least`` bytes); False at the end of the body."""
        if self.final:
            return False
        data = self._source.read(min(max(_CHUNK, at_least), _MAX_READ))
        self.final = not data
        try:
            new = self._decoder.decode(data, self.final)
        except UnicodeDecodeError:
            raise _Invalid("body is not UTF-8") from None
        self._keep(new)
        return True

    def _keep(self, new: str = "") -> None:
        """Drop what was read, append ``new``, and count the text held: twice, as joining
        the next piece copies it."""
        self.text = self.text[self.pos :] + new
        self.pos = 0
        self._budget.left += self._held
        self._held = 2 * sys.getsizeof(self.text)
        self._budget.take(self._held)

    def peek(self) -> str:
        """The next character after whitespace ("" at the end of the body)."""
        while True:
            self.pos = _WS.match(self.text, self.pos).end()  # type: ignore[union-attr]
            if self.pos < len(self.text):
                return self.text[self.pos]
            if not self.more():
                return ""

    def expect(self, char: str, message: str) -> None:
        if self.peek() != char:
            raise _NotJson(message)
        self.pos += 1

    def value(self, budget: _Budget) -> tuple[Any, int]:
        """The JSON value at ``pos`` (a string, or any value by ``_scan``), reading more text
        until it is whole (twice as much each time: linear work for a long value), and what it
        took of the budget (the caller gives that back when it lets the value go)."""
        while True:
            start = self.text[self.pos] if self.pos < len(self.text) else ""
            mark = budget.left
            try:
                if start == '"':
                    value, end = _string(self.text, self.pos, self.final)
                    budget.take(sys.getsizeof(value))
                else:
                    value, end = _scan(self.text, self.pos, self.final, budget, MAX_DEPTH)
            except _Incomplete:
                budget.left = mark  # nothing of the partial value is kept
                if self.more(2 * (len(self.text) - self.pos)):
                    continue
                raise _NotJson("Expecting value") from None  # pragma: no cover - final is set
            self.pos = end
            cost = mark - budget.left
            if end > _CHUNK:  # a long value: drop its text now, before the event is parsed
                self._keep()
            return value, cost


# -- the JSON scanner -------------------------------------------------------------------------


def _string(text: str, pos: int, final: bool) -> tuple[str, int]:
    """The string whose opening quote is at ``pos``, by json's own (C) ``scanstring``."""
    try:
        return _scanstring(text, pos + 1, True)
    except json.JSONDecodeError as exc:
        # Cut by the end of the text read so far: unterminated, or an escape cut short.
        if not final and (exc.msg.startswith("Unterminated") or exc.pos >= len(text) - 12):
            raise _Incomplete from None
        raise _NotJson(exc.msg) from None


def _atom(text: str, pos: int, final: bool) -> tuple[Any, int]:
    """A number, ``true``, ``false`` or ``null`` at ``pos``."""
    match = _NUMBER.match(text, pos)
    if match is not None:
        end = match.end()
        if not final and len(text) - end < 3:
            raise _Incomplete  # the number may go on ("1" then ".5" or "e+9")
        integer, frac, exp = match.groups()
        if frac or exp:
            return float(integer + (frac or "") + (exp or "")), end
        try:
            return int(integer), end
        except ValueError as exc:  # past sys.get_int_max_str_digits()
            raise _NotJson(str(exc).split(":")[0]) from None
    for word, value in _LITERALS:
        if text.startswith(word, pos):
            return value, pos + len(word)
    if not final and len(text) - pos < len("-Infinity"):
        raise _Incomplete
    for name in _NOT_JSON_CONSTANTS:
        # NaN and Infinity are not JSON (RFC 8259 §6); Python's parser accepts them by default.
        if text.startswith(name, pos):
            raise _NotJson(f"{name} is not JSON")
    raise _NotJson("Expecting value")


def _scan(text: str, pos: int, final: bool, budget: _Budget, max_depth: int) -> tuple[Any, int]:
    """The JSON value at ``pos`` and where it ends, as ``json.loads`` would read it.

    Iterative (an explicit stack: ``max_depth`` levels, no recursion), each value's size
    counted in ``budget`` as it is built, and Python code between values, so that another
    thread gets the GIL within its switch interval. Strings by json's ``scanstring``.
    ``_Incomplete`` when the text ends inside the value and ``final`` is False.
    """
    stack: list[tuple[list[Any] | dict[str, Any], list[str]]] = []  # container, [key]
    memo: dict[str, str] = {}
    end = len(text)
    ws = _WS.match

    def key_at(pos: int) -> tuple[str, int]:
        if pos >= end and not final:
            raise _Incomplete
        if text[pos : pos + 1] != '"':
            raise _NotJson("Expecting property name enclosed in double quotes")
        key, pos = _string(text, pos, final)
        if key not in memo:
            budget.take(sys.getsizeof(key) + _DICT_SLOT)
            memo[key] = key
        pos = ws(text, pos).end()  # type: ignore[union-attr]
        if pos >= end and not final:
            raise _Incomplete
        if text[pos : pos + 1] != ":":
            raise _NotJson("Expecting ':' delimiter")
        return memo[key], pos + 1

    while True:
        pos = ws(text, pos).end()  # type: ignore[union-attr]
        if pos >= end:
            if final:
                raise _NotJson("Expecting value")
            raise _Incomplete
        char = text[pos]
        value: Any
        if char in "[{":
            if len(stack) >= max_depth:
                raise _NotJson("nested too deeply")
            close = "]" if char == "[" else "}"
            pos = ws(text, pos + 1).end()  # type: ignore[union-attr]
            if pos >= end and not final:
                raise _Incomplete
            if text[pos : pos + 1] == close:
                value, pos = ([] if char == "[" else {}), pos + 1
            elif char == "[":
                stack.append(([], []))
                continue
            else:
                key, pos = key_at(pos)
                stack.append(({}, [key]))
                continue
        elif char == '"':
            value, pos = _string(text, pos, final)
        else:
            value, pos = _atom(text, pos, final)
        # The value is whole: put it in its container, and close every container it completes.
        while True:
            size = _EMPTY_LIST if type(value) is list else sys.getsizeof(value)
            if not stack:
                budget.take(size)
                return value, pos
            container, keys = stack[-1]
            budget.take(size + (_DICT_SLOT if keys else _LIST_SLOT))
            if keys:
                container[keys[0]] = value  # type: ignore[call-overload]
            else:
                container.append(value)  # type: ignore[union-attr]
            pos = ws(text, pos).end()  # type: ignore[union-attr]
            if pos >= end:
                if final:
                    raise _NotJson("Expecting ',' delimiter")
                raise _Incomplete
            char = text[pos]
            if char == ",":
                if keys:
                    keys[0], pos = key_at(ws(text, pos + 1).end())  # type: ignore[union-attr]
                else:
                    pos += 1
                break
            if char != ("}" if keys else "]"):
                raise _NotJson("Expecting ',' delimiter")
            value, pos = stack.pop()[0], pos + 1


def _event_value(text: str, budget: _Budget) -> tuple[bool, Any, bool]:
    """``(True, value, large)`` for the JSON text of one event, ``(False, None, large)`` if it is
    not JSON (or nested too deeply); ``large`` when it was read by ``_scan``. ``_TooLarge``
    past the budget (what it takes is given back with the element)."""
    tokens = text.count("{") + text.count("[") + text.count(",") + text.count(":")
    if tokens <= _C_TOKENS:
        budget.take(_C_TOKEN_BYTES * tokens + 2 * sys.getsizeof(text))
        try:
            return True, json.loads(text, parse_constant=_reject_constant), False
        except (RecursionError, ValueError):  # JSONDecodeError, int() past the digit limit
            return False, None, False
    try:
        value, end = _scan(text, 0, True, budget, MAX_DEPTH)
    except _NotJson:
        return False, None, True
    return _WS.match(text, end).end() == len(text), value, True  # type: ignore[union-attr]


def _reject_constant(name: str) -> Any:
    # NaN and Infinity are not JSON (RFC 8259 §6); Python's parser accepts them by default.
    raise ValueError(f"{name} is not JSON")


# -- the document ---------------------------------------------------------------------------


def _decode(
    body: bytes,
    compressed: bool,
    query_string: str,
    content_encoding: str | None,
    max_decoded_bytes: int,
    max_events: int,
    max_memory: int,
) -> DecodedPayload:
    if not compressed:
        if "gzip" in (content_encoding or "").lower():
            raise _Invalid("Content-Encoding says gzip but the body is not gzip")
        if len(body) > max_decoded_bytes:
            raise _TooLarge(f"body larger than {max_decoded_bytes} bytes")
    budget = _Budget(max_memory)
    source = _Source(body, compressed, max_decoded_bytes)
    interaction = parse_track_query(query_string).get("type") == "interaction"
    events: list[ReplayEvent] = []
    interactions: list[InteractionEvent] = []
    skipped = 0

    def add(element: Any, held: int) -> None:
        # Called with each element of "events" and what it took of the budget: keep what it
        # decodes to, counted in the budget, and give back the rest.
        nonlocal skipped
        if len(events) + len(interactions) + skipped >= max_events:
            raise _TooLarge(f"more than {max_events} events")
        mark = budget.left
        kept: ReplayEvent | InteractionEvent | None
        kept = _interaction(element, budget) if interaction else _replay_event(element, budget)
        budget.left = mark + held
        if kept is None:
            skipped += 1
            return
        budget.take(_kept_size(kept))
        if isinstance(kept, ReplayEvent):
            events.append(kept)
        else:
            interactions.append(kept)

    try:
        version = _read_document(_Text(source, budget), budget, add)
    except _NotJson as exc:
        raise _Invalid(f"body is not JSON ({exc.reason})") from None
    return DecodedPayload(
        kind="interaction" if interaction else "replay",
        version=version,
        compressed=compressed,
        decoded_bytes=source.size,
        events=tuple(events),
        interactions=tuple(interactions),
        skipped=skipped,
    )


def _read_document(reader: _Text, budget: _Budget, add: Callable[[Any, int], None]) -> int | None:
    """Read ``{"version": ..., "events": [...]}``, handing each element of ``events`` to
    ``add`` as soon as it is read; the document's ``version`` (None unless an int)."""
    if reader.peek() != "{":
        # Not an object: read it all the same (bounded), to tell "not JSON" from "not an object".
        reader.value(budget)
        _expect_end(reader)
        raise _Invalid("body is not a JSON object")
    reader.pos += 1
    version: Any = None
    has_events = False
    char = reader.peek()
    if char == "}":
        reader.pos += 1
        char = ""
    while char:
        if char != '"':
            raise _NotJson("Expecting property name enclosed in double quotes")
        key, cost = reader.value(budget)
        budget.left += cost
        reader.expect(":", "Expecting ':' delimiter")
        if key == "events" and reader.peek() == "[":
            if has_events:
                # json.loads would keep the last; the SDK sends one.
                raise _Invalid('body has more than one "events" list')
            has_events = True
            _read_elements(reader, budget, add)
        else:
            value, cost = reader.value(budget)
            budget.left += cost
            if key == "version":
                version = value
            elif key == "events":
                has_events = False  # json.loads keeps the last value of a repeated key
        char = reader.peek()
        if char == ",":
            reader.pos += 1
            char = reader.peek()
            continue
        reader.expect("}", "Expecting ',' delimiter")
        break
    _expect_end(reader)
    if not has_events:
        raise _Invalid('body has no "events" list')
    return version if isinstance(version, int) and not isinstance(version, bool) else None


def _read_elements(reader: _Text, budget: _Budget, add: Callable[[Any, int], None]) -> None:
    reader.pos += 1  # "["
    if reader.peek() == "]":
        reader.pos += 1
        return
    while True:
        if not reader.peek():
            raise _NotJson("Expecting value")
        element, cost = reader.value(budget)
        add(element, cost)
        char = reader.peek()
        if char == ",":
            reader.pos += 1
            continue
        reader.expect("]", "Expecting ',' delimiter")
        return


def _expect_end(reader: _Text) -> None:
    if reader.peek():
        raise _NotJson("Extra data")


# -- events -----------------------------------------------------------------------------------


def _kept_size(kept: ReplayEvent | InteractionEvent) -> int:
    size = _EVENT_BYTES + sys.getsizeof(kept.json)
    extra = kept.href if isinstance(kept, ReplayEvent) else kept.page_url
    return size + (sys.getsizeof(extra) if extra is not None else 0)


def _hash(event: Any, large: bool) -> bytes:
    """``fingerprint(event)``; for a large event by the pure-Python encoder, a piece at a time
    (no second copy of the event's text, and other threads run meanwhile)."""
    if not large:
        return fingerprint(event)
    digest = hashlib.sha1()
    pieces: list[str] = []
    size = 0
    for piece in _CANONICAL.iterencode(event):
        pieces.append(piece)
        size += len(piece)
        if size >= _CHUNK:
            digest.update("".join(pieces).encode("utf-8", "surrogatepass"))
            pieces, size = [], 0
    digest.update("".join(pieces).encode("utf-8", "surrogatepass"))
    return digest.digest()


def _dumps(event: Any, large: bool) -> str:
    """Compact JSON text of a decoded event, always storable as UTF-8."""
    if large:
        text = "".join(_COMPACT.iterencode(event))
    else:
        text = json.dumps(event, separators=(",", ":"), ensure_ascii=False)
    if not _has_surrogate(text):
        return text
    return "".join(_COMPACT_ASCII.iterencode(event))


def _has_surrogate(text: str) -> bool:
    """Whether ``text`` holds a lone surrogate; searched a piece at a time, so that a long text
    does not hold the GIL in one call (28 ms for 8.6 M characters)."""
    if text.isascii():
        return False
    return any(_SURROGATE.search(text, i, i + _CHUNK) for i in range(0, len(text), _CHUNK))


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


def _element_value(element: Any, budget: _Budget) -> tuple[Any, bool] | None:
    """The event an element carries and whether it is large; None if it carries none. A
    string element is the event's JSON text; any other element was read by ``_scan``."""
    if isinstance(element, str):
        valid, event, large = _event_value(element, budget)
        return (event, large) if valid else None
    return element, True


def _replay_event(element: Any, budget: _Budget) -> ReplayEvent | None:
    found = _element_value(element, budget)
    if found is None:
        return None
    event, large = found
    if not isinstance(event, dict) or "data" not in event:
        return None
    kind, timestamp = event.get("type"), event.get("timestamp")
    if not (isinstance(kind, int) and not isinstance(kind, bool) and kind in RRWEB_EVENT_TYPES):
        return None
    if not _is_number(timestamp):
        return None
    if isinstance(element, str) and not _has_surrogate(element):
        text = element  # as sent
    else:
        text = _dumps(event, large)
    return ReplayEvent(
        type=kind,
        timestamp=int(timestamp),
        json=text,
        fingerprint=_hash(event, large),
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


def _interaction(element: Any, budget: _Budget) -> InteractionEvent | None:
    found = _element_value(element, budget)
    if found is None:
        return None
    event, large = found
    if not isinstance(event, dict):
        return None
    kind, timestamp = event.get("type"), event.get("timestamp")
    return InteractionEvent(
        kind=_text(kind, 64) or "unknown",
        timestamp=int(timestamp) if _is_number(timestamp) else None,
        page_url=_url(event.get("pageUrl")),
        json=_dumps(event, large),
        fingerprint=_hash(event, large),
    )
