"""Sans-IO streaming HTML injector: this module imports no ASGI, WSGI, framework or network code.

It finds, in the raw bytes of an HTML response, the point where the replay snippet belongs
(SPEC H3), holds bytes only until that point is known (H4) and never decodes the body (H6).
The ASGI and WSGI adapters feed it body chunks and send whatever it returns.

Contract
--------
``Injector(render).feed(chunk)`` returns the bytes that may be sent now: ``b""`` while the
injector is still scanning, then everything held so far (with the snippet inserted, or
untouched when skipped), then each later chunk unchanged (the same object, no copy, no scan).
``close()`` marks the end of the body and returns whatever is still held, deciding first if
needed. ``render(metas)`` is called exactly once, at the insertion point, with the meta
policies found before it; it returns an :class:`Insertion` or a skip reason (``str``).

Insertion point (first match wins, all found by a tokenizer, never by a plain byte search):

1. immediately before the first real ``</head>`` end tag;
2. where an HTML5 parser implicitly closes the head: before the first start tag that is not
   allowed in head (allowed: html, head, base, basefont, bgsound, link, meta, title, noscript,
   noframes, style, script, template), before the end tags ``</body>``, ``</html>``, ``</br>``,
   or before the first non-whitespace character data;
3. at the end of the document, when the body ends with the tokenizer in its data state and
   outside any ``<template>``.

A tag that closes the head is decided from its name alone, so a ``<body ...>`` whose
attributes are still arriving does not hold the response back.

"Real" tags exclude comments (also ``<!-->``, ``<!--->``, ``--!>`` endings), bogus comments
(``<?...>``, ``<!...>``, ``</ ...>``), the doctype, quoted and unquoted attribute values, the
raw text of ``<script>`` (with the script-data escape states, so ``<!--<script>`` ... keeps the
element open past an inner ``</script>`` exactly as browsers do), ``<style>``, ``<title>``,
``<textarea>``, ``<noscript>``, ``<xmp>``, ``<iframe>``, ``<noembed>``, ``<noframes>``,
``<plaintext>``, and everything inside ``<template>`` (tokenized, nesting counted, inert).
``<noscript>`` is raw text as in a browser with scripting enabled: only such a browser runs
the snippet. ``<![CDATA[`` outside SVG/MathML is a bogus comment ending at the first ``>``;
foreign content cannot occur before the head closes, so CDATA sections never matter here.
Known limit: ``<svg>``/``<math>`` inside a head ``<template>`` are tokenized as HTML.

A response is a document when, after an optional UTF-8 BOM, ASCII whitespace and comments
(``<!--...-->``, ``<?...>``, ``<!...>``), it starts with ``<!doctype`` (any case) or ``<html``
followed by whitespace, ``/`` or ``>``. This is decided from the first bytes that are not
BOM, whitespace or comment. The snippet always goes after the BOM and the doctype.

Decisions depend only on the first ``max_scan_bytes`` bytes (and on whether the body ended
within them), so the output never depends on how the body was chunked. At most those bytes
plus the chunk being fed are held. The scan is incremental and linear: tokenizer state is
kept between chunks, an unfinished construct at the end of the held bytes is resumed rather
than re-read (at most a few bytes of look-behind are scanned again per chunk), and the marker
is searched once, at the insertion point, before ``render`` is called.

Skip reasons (stable codes; the body is then released byte-identical):

- ``utf16``: the body starts with a UTF-16 or UTF-32 byte order mark.
- ``fragment``: the body does not look like a document (see above), or is empty.
- ``already_injected``: the marker bytes occur before the insertion point.
- ``scan_limit``: no decision within the first ``max_scan_bytes`` bytes.
- ``no_insertion_point``: the document ended inside a comment, tag, raw text element or
  ``<template>``, where bytes appended at the end would not be parsed as a head element.
- ``render_error``: ``render`` raised, or returned an invalid :class:`Insertion`.
- any string returned by ``render`` itself.

Errors: if ``render`` raises (or returns something invalid, which raises ``TypeError`` or
``ValueError``), the exception propagates out of the ``feed()``/``close()`` call that reached
the insertion point. The injector is then decided with reason ``render_error``; the held
bytes, including that call's chunk, are returned unmodified by the next ``feed()`` or
``close()``, so an adapter that fails open loses nothing.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final, TypeAlias

__all__ = ["Injector", "Insertion", "MetaPolicy", "Render", "ScanCache", "inject"]


@dataclass(frozen=True)
class MetaPolicy:
    """A ``<meta http-equiv="Content-Security-Policy">`` found in the head before the snippet.

    ``content`` is the HTML-unescaped value of its ``content`` attribute. ``start``/``end``
    are absolute byte offsets (from the start of the document, BOM included) of the value
    token, quotes included when quoted, so ``body[start:end]`` is e.g. ``b'"default-src x"'``.
    """

    content: str
    start: int
    end: int


def _empty_rewrites() -> Mapping[int, bytes]:
    return MappingProxyType({})


@dataclass(frozen=True)
class Insertion:
    """What ``render`` asks to insert.

    ``snippet``: ASCII bytes inserted at the insertion point. ``meta_rewrites``: index into
    the ``metas`` passed to ``render`` -> ASCII bytes replacing that meta's whole value token
    (the caller supplies the quotes and the HTML escaping).
    """

    snippet: bytes
    meta_rewrites: Mapping[int, bytes] = field(default_factory=_empty_rewrites)


Render: TypeAlias = Callable[[Sequence[MetaPolicy]], "Insertion | str"]
"""Called once at the insertion point; a ``str`` result means "skip, with this reason"."""

# --------------------------------------------------------------------------------------------
# Byte patterns. Whitespace is the HTML set (tab, LF, FF, CR, space); CR counts because the
# input stream preprocessor turns it into LF. The tag patterns admit one way only to match a
# given input (lookaheads make every run maximal), so a failed match on an unfinished tag
# costs linear time, not exponential backtracking. Patterns ending in "*" always match, hence
# the ``type: ignore[union-attr]`` on their ``.match(...).end()``.

_LT, _GT, _BANG, _SLASH, _DASH, _QMARK = 0x3C, 0x3E, 0x21, 0x2F, 0x2D, 0x3F
_DQUOTE, _SQUOTE, _EQ = 0x22, 0x27, 0x3D

_NOT_WS_RE: Final = re.compile(rb"[^\t\n\f\r ]")

# A whole start or end tag, attributes tokenized as the HTML tokenizer does (so a ">" inside a
# quoted value does not end the tag, while quotes inside names or unquoted values are plain
# characters). Groups: 1 "/" for end tags, 2 tag name, 3 the attribute region. It matches
# every complete tag, so a failed match means the tag is not finished yet.
_ATTRS = (
    rb"(?:[\t\n\f\r /]+(?![\t\n\f\r /])"  # separators, taken whole
    rb"|[^\t\n\f\r />][^\t\n\f\r />=]*(?![^\t\n\f\r />=])"  # attribute name (may start "=")
    rb"(?:[\t\n\f\r ]*=[\t\n\f\r ]*(?![\t\n\f\r ])"
    rb"(?:\"[^\"]*\"|'[^']*'|[^\t\n\f\r >\"'][^\t\n\f\r >]*(?![^\t\n\f\r >])|(?=>))"
    rb"|(?![\t\n\f\r ]*=)))*"
)
_TAG_NAME = rb"([A-Za-z][^\t\n\f\r />]*)"
_TAG_RE: Final = re.compile(rb"<(/?)" + _TAG_NAME + rb"(?![^\t\n\f\r />])(" + _ATTRS + rb")>")

# The same for well-formed tags only (whitespace-separated attributes, no quote characters in
# names or unquoted values, a value after every "="): about twice as fast, and on the tags it
# matches it agrees with _TAG_RE, because each construct it accepts can be read only one way
# by the HTML tokenizer. Anything else makes it fail, and _TAG_RE decides.
_NICE_ATTR_VALUE = rb"(?:[\t\n\f\r ]*=[\t\n\f\r ]*(?:\"[^\"]*\"|'[^']*'|[^\t\n\f\r >\"'=<`]+))?"
_NICE_ATTRS = rb"(?:[\t\n\f\r ]+[^\t\n\f\r />=\"']+" + _NICE_ATTR_VALUE + rb")*[\t\n\f\r ]*/?"
_NICE_TAG_RE: Final = re.compile(rb"<(/?)" + _TAG_NAME + rb"(" + _NICE_ATTRS + rb")>")

# Runs of what cannot matter in the head, consumed by one regex call instead of one Python
# step per tag: whitespace, well-formed head tags that neither end the head nor change the
# tokenizer state, <meta> without an http-equiv attribute, and the end tags the "in head"
# insertion mode ignores (all but head, body, html, br).
_NO_EQUIV_ATTRS = (
    rb"(?:[\t\n\f\r ]+(?!(?i:http-equiv)[\t\n\f\r />=])[^\t\n\f\r />=\"']+"
    + _NICE_ATTR_VALUE
    + rb")*[\t\n\f\r ]*/?"
)
_HEAD_RUN_RE: Final = re.compile(
    rb"(?:[\t\n\f\r ]+"
    rb"|<(?i:link|base|basefont|bgsound|html|head)(?=[\t\n\f\r />])" + _NICE_ATTRS + rb">"
    rb"|<(?i:meta)(?=[\t\n\f\r />])" + _NO_EQUIV_ATTRS + rb">"
    rb"|</(?!(?i:head|body|html|br)[\t\n\f\r />])[A-Za-z][^\t\n\f\r />]*" + _NICE_ATTRS + rb">"
    rb")*"
)
_TAG_NAME_RE: Final = re.compile(rb"<(/?)" + _TAG_NAME)

# One attribute of a complete tag's attribute region (used for <meta> only).
_ATTR_RE: Final = re.compile(
    rb"[\t\n\f\r /]*([^\t\n\f\r />][^\t\n\f\r />=]*)"
    rb"(?:[\t\n\f\r ]*=[\t\n\f\r ]*(\"[^\"]*\"|'[^']*'|[^\t\n\f\r >\"'][^\t\n\f\r >]*)?)?"
)

# Resumable scan runs for a tag that straddles the end of the held bytes.
_RUN_TAG_NAME: Final = re.compile(rb"[^\t\n\f\r />]*")
_RUN_WS_SLASH: Final = re.compile(rb"[\t\n\f\r /]*")
_RUN_ATTR_NAME: Final = re.compile(rb"[^\t\n\f\r />=]*")
_RUN_WS: Final = re.compile(rb"[\t\n\f\r ]*")
_RUN_UNQUOTED: Final = re.compile(rb"[^\t\n\f\r >]*")

# Comment end: "-->" or "--!>" (the abrupt "<!-->" and "<!--->" are checked separately).
_COMMENT_END_RE: Final = re.compile(rb"--!?>")
# Script data and its escape states (HTML Living Standard 13.2.5.15-13.2.5.31), reduced to
# the transitions that move the end of the element.
_SCRIPT_RE: Final = re.compile(rb"<!--|</script[\t\n\f\r />]", re.IGNORECASE)
_SCRIPT_ESCAPED_RE: Final = re.compile(rb"-->|<(/?)script[\t\n\f\r />]", re.IGNORECASE)
_SCRIPT_DOUBLE_RE: Final = re.compile(rb"-->|</script[\t\n\f\r />]", re.IGNORECASE)
_SCRIPT_OVERLAP: Final = len(b"</script")  # longest unfinished match at the end of the data

_RAW_TEXT_ELEMENTS: Final = (
    b"title",
    b"textarea",
    b"style",
    b"xmp",
    b"iframe",
    b"noembed",
    b"noframes",
    b"noscript",
)
# "Appropriate end tag": the element's name, any case, then whitespace, "/" or ">".
_RAW_END_RES: Final = {
    name: re.compile(rb"</" + name + rb"[\t\n\f\r />]", re.IGNORECASE)
    for name in _RAW_TEXT_ELEMENTS
}
# Start tags the "in head" insertion mode keeps in the head (everything else closes it).
_HEAD_START_TAGS: Final = frozenset(
    {
        b"html",
        b"head",
        b"base",
        b"basefont",
        b"bgsound",
        b"link",
        b"meta",
        b"title",
        b"noscript",
        b"noframes",
        b"style",
        b"script",
        b"template",
    }
)
# End tags that close the head in "before head" / "in head"; every other one is ignored there.
_HEAD_END_TAGS: Final = frozenset({b"head", b"body", b"html", b"br"})

_BOM_UTF8: Final = b"\xef\xbb\xbf"
_BOMS_UTF16: Final = (b"\xff\xfe", b"\xfe\xff")  # UTF-32LE starts with the UTF-16LE one
_BOM_UTF32BE: Final = b"\x00\x00\xfe\xff"

# Tokenizer states.
_START, _PROLOGUE, _DATA, _COMMENT_START, _COMMENT, _BOGUS = range(6)
_TAG_PENDING, _RAW, _SCRIPT, _SCRIPT_ESCAPED, _SCRIPT_DOUBLE, _PLAINTEXT = range(6, 12)
# Sub-states of _TAG_PENDING (HTML tokenizer tag states, reduced to finding the tag's end).
_T_NAME, _T_BEFORE_ATTR, _T_ATTR_NAME, _T_AFTER_ATTR_NAME = range(4)
_T_BEFORE_VALUE, _T_DQ, _T_SQ, _T_UNQUOTED = range(4, 8)

# Prologue classification of the first "<..." that is not a comment.
_P_NEED, _P_COMMENT, _P_BOGUS, _P_DOCUMENT, _P_FRAGMENT = range(5)
_P_OPENERS: Final = (b"<!--", b"<!doctype", b"<html")


def _classify_prologue(head: bytes) -> int:
    """Classify up to 10 bytes starting at a ``<`` that precedes any document marker."""
    low = head.lower()
    if low.startswith(b"<!--"):
        return _P_COMMENT
    if low.startswith(b"<!doctype"):
        return _P_DOCUMENT
    if low.startswith(b"<?"):
        return _P_BOGUS
    if low.startswith(b"<html") and len(low) > 5:
        return _P_DOCUMENT if low[5] in b"\t\n\f\r />" else _P_FRAGMENT
    if any(opener.startswith(low) for opener in _P_OPENERS):
        return _P_NEED
    if low.startswith(b"<!"):
        return _P_BOGUS
    return _P_FRAGMENT


def _scan_tag_end(buf: bytes | bytearray, pos: int, end: int, sub: int) -> tuple[int, int, int]:
    """Advance the tag tokenizer over ``buf[pos:end]``; return ``(tag_end, pos, sub)``.

    ``tag_end`` is the offset just after the closing ``>``, or -1 when more bytes are needed
    (then ``pos``/``sub`` resume the scan). Only used for tags that did not fit in the held
    bytes, so a long tag arriving in many small chunks is scanned once, not once per chunk.
    """
    while pos < end:
        if sub == _T_NAME:
            pos = _RUN_TAG_NAME.match(buf, pos, end).end()  # type: ignore[union-attr]
            if pos == end:
                break
            if buf[pos] == _GT:
                return pos + 1, pos + 1, sub
            sub = _T_BEFORE_ATTR
            pos += 1
        elif sub == _T_BEFORE_ATTR:
            pos = _RUN_WS_SLASH.match(buf, pos, end).end()  # type: ignore[union-attr]
            if pos == end:
                break
            if buf[pos] == _GT:
                return pos + 1, pos + 1, sub
            sub = _T_ATTR_NAME  # the first character may be "=" (a parse error, kept)
            pos += 1
        elif sub in (_T_ATTR_NAME, _T_AFTER_ATTR_NAME):
            run = _RUN_ATTR_NAME if sub == _T_ATTR_NAME else _RUN_WS
            pos = run.match(buf, pos, end).end()  # type: ignore[union-attr]
            if pos == end:
                break
            c = buf[pos]
            if c == _GT:
                return pos + 1, pos + 1, sub
            if c == _EQ:
                sub = _T_BEFORE_VALUE
            elif c == _SLASH:
                sub = _T_BEFORE_ATTR
            elif sub == _T_ATTR_NAME:
                sub = _T_AFTER_ATTR_NAME  # whitespace
            else:
                sub = _T_ATTR_NAME  # a new attribute starts with this character
            pos += 1
        elif sub == _T_BEFORE_VALUE:
            pos = _RUN_WS.match(buf, pos, end).end()  # type: ignore[union-attr]
            if pos == end:
                break
            c = buf[pos]
            if c == _GT:
                return pos + 1, pos + 1, sub
            if c == _DQUOTE:
                sub, pos = _T_DQ, pos + 1
            elif c == _SQUOTE:
                sub, pos = _T_SQ, pos + 1
            else:
                sub = _T_UNQUOTED
        elif sub in (_T_DQ, _T_SQ):
            q = buf.find(b'"' if sub == _T_DQ else b"'", pos, end)
            if q < 0:
                pos = end
                break
            sub, pos = _T_BEFORE_ATTR, q + 1
        else:  # _T_UNQUOTED
            pos = _RUN_UNQUOTED.match(buf, pos, end).end()  # type: ignore[union-attr]
            if pos == end:
                break
            if buf[pos] == _GT:
                return pos + 1, pos + 1, sub
            sub, pos = _T_BEFORE_ATTR, pos + 1
    return -1, pos, sub


def _closes_head(is_end: bool, name: bytes) -> bool:
    """Whether a tag (lower-case name) ends the head in "before head" / "in head" mode."""
    return name in _HEAD_END_TAGS if is_end else name not in _HEAD_START_TAGS


_HTTP_EQUIV_RE: Final = re.compile(rb"http-equiv", re.IGNORECASE)  # ASCII case folding


def _meta_policy(buf: bytes | bytearray, start: int, stop: int) -> MetaPolicy | None:
    """Return the CSP policy of a ``<meta>`` whose attribute region is ``buf[start:stop]``."""
    spans: dict[bytes, tuple[int, int] | None] = {}
    for m in _ATTR_RE.finditer(buf, start, stop):
        # setdefault: the first of duplicate attributes wins, as in the tokenizer.
        spans.setdefault(m.group(1).lower(), m.span(2) if m.group(2) is not None else None)
    equiv = spans.get(b"http-equiv")
    content = spans.get(b"content")
    if equiv is None or content is None:
        return None
    value = _unescape(buf, *equiv)
    # ASCII case-insensitive, as HTML compares pragma names (str.lower would fold non-ASCII).
    if not value.isascii() or value.lower() != "content-security-policy":
        return None  # includes Content-Security-Policy-Report-Only, which meta cannot carry
    return MetaPolicy(_unescape(buf, *content), content[0], content[1])


def _unescape(buf: bytes | bytearray, start: int, stop: int) -> str:
    raw = bytes(buf[start:stop])
    if raw[:1] in (b'"', b"'"):
        raw = raw[1:-1]
    return html.unescape(raw.decode("utf-8", "replace"))


class ScanCache:
    """Insertion points already found, keyed by the bytes that decided them (per process).

    Most sites serve a few distinct heads, byte for byte, over and over: the scan of the
    head is then a dictionary lookup. An entry is a prefix ``P`` of an earlier body with the
    insertion point and ``<meta>`` policies found in it; it is stored only after a fresh
    injector, fed ``P`` alone and not told that the body ended, decided the same. Since an
    injector's decision never depends on how the body is chunked (module docstring), every
    body that starts with ``P`` gets that decision: a hit is exact, not a heuristic.

    Bounded: at most ``max_entries`` prefixes of at most ``max_prefix`` bytes, in at most
    ``max_lengths`` distinct lengths (each length costs one slice and one lookup per body).
    When bodies keep missing (a head holding a per-response nonce or token), it stops
    learning, so such sites pay only the lookups.
    """

    __slots__ = (
        "_entries",
        "_hits",
        "_learned",
        "_lengths",
        "longest",
        "max_entries",
        "max_prefix",
    )

    max_lengths: Final = 8

    def __init__(self, *, max_entries: int = 64, max_prefix: int = 8192) -> None:
        self.max_entries = max_entries
        self.max_prefix = max_prefix
        self._entries: dict[bytes, tuple[int, tuple[MetaPolicy, ...]]] = {}
        self._lengths: tuple[int, ...] = ()
        #: The longest prefix stored: a body known past it has had every lookup it can have.
        self.longest = 0
        self._hits = 0
        self._learned = 0

    def lookup(
        self, buf: bytes | bytearray, start: int, stop: int
    ) -> tuple[int, tuple[MetaPolicy, ...]] | None:
        """The decision for a body whose first ``stop`` bytes are known, trying only prefix
        lengths above ``start`` (the ones an earlier call could not try yet)."""
        for length in self._lengths:
            if start < length <= stop:
                entry = self._entries.get(bytes(buf[:length]))
                if entry is not None:
                    self._hits += 1
                    return entry
        return None

    def learn(
        self,
        buf: bytes | bytearray,
        ip: int,
        metas: Sequence[MetaPolicy],
        *,
        limit: int,
        marker: bytes,
    ) -> None:
        """Remember the decision ``ip``/``metas`` made on ``buf``, if a prefix decides it."""
        if self._learned > 32 and self._hits < self._learned:
            return  # mostly misses: the heads differ per response
        # The bytes the decision needs: through the end of the tag at ``ip``, or the one
        # character of data there. The check below makes any choice safe.
        close = buf.find(b">", ip, ip + self.max_prefix) if buf[ip : ip + 1] == b"<" else ip
        end = close + 1
        if close < 0 or end > self.max_prefix or end > limit:
            return
        prefix = bytes(buf[:end])
        if prefix in self._entries:
            return
        lengths = self._lengths
        if end not in lengths and len(lengths) >= self.max_lengths:
            return
        probe = Injector(_never_render, max_scan_bytes=limit, marker=marker)
        probe._buf = prefix
        if probe._scan(False) != ip or tuple(probe._metas) != tuple(metas):
            return
        self._learned += 1
        if len(self._entries) >= self.max_entries:
            try:
                self._entries.pop(next(iter(self._entries)), None)  # the oldest
            except RuntimeError:  # changed by another thread meanwhile
                return
        self._entries[prefix] = (ip, tuple(metas))
        if end not in lengths:
            self._lengths = tuple(sorted({*lengths, end}))
            self.longest = self._lengths[-1]


def _never_render(metas: Sequence[MetaPolicy]) -> Insertion | str:
    raise AssertionError("a ScanCache probe never renders")


class Injector:
    """Streaming injector for one response body; see the module docstring for the contract.

    ``max_scan_bytes`` bounds how many bytes are held (and scanned) before giving up with
    ``scan_limit``. ``marker`` is searched in the bytes before the insertion point to detect a
    page that already holds the snippet (``already_injected``); an empty marker disables that.
    """

    __slots__ = (
        "_added",
        "_buf",
        "_cache",
        "_closed",
        "_depth",
        "_document",
        "_done",
        "_injected",
        "_limit",
        "_looked",
        "_marker",
        "_metas",
        "_passthrough",
        "_pos",
        "_raw_overlap",
        "_raw_re",
        "_reason",
        "_render",
        "_ret",
        "_state",
        "_sub",
        "_tag_start",
    )

    def __init__(
        self,
        render: Render,
        *,
        max_scan_bytes: int = 256 * 1024,
        marker: bytes = b"replay-middleware-config",
        cache: ScanCache | None = None,
    ) -> None:
        if max_scan_bytes < 0:
            raise ValueError(f"max_scan_bytes must be >= 0, got {max_scan_bytes!r}")
        self._render = render
        self._limit = max_scan_bytes
        self._marker = bytes(marker)
        self._buf: bytes | bytearray = b""
        self._pos = 0
        self._state = _START
        self._ret = _PROLOGUE  # state a comment returns to
        self._sub = _T_NAME
        self._tag_start = 0
        self._raw_re: re.Pattern[bytes] | None = None
        self._raw_overlap = 0
        self._depth = 0  # open <template> elements
        self._document = False
        self._metas: list[MetaPolicy] = []
        self._done = False
        self._passthrough = False
        self._closed = False
        self._injected = False
        self._reason: str | None = None
        self._added = 0
        self._cache = cache
        self._looked = 0  # how many leading bytes the cache was already asked about

    @property
    def done(self) -> bool:
        """A decision has been made (injected or skipped)."""
        return self._done

    @property
    def injected(self) -> bool:
        """The snippet was inserted."""
        return self._injected

    @property
    def reason(self) -> str | None:
        """The skip reason when skipped, else ``None``."""
        return self._reason

    @property
    def added(self) -> int:
        """How many bytes longer the output is than the input (0 unless injected)."""
        return self._added

    def feed(self, chunk: bytes) -> bytes:
        """Take the next body chunk; return the bytes that may be sent now.

        Returns ``b""`` while scanning; once decided, all held bytes (modified or not); after
        that, ``chunk`` itself. Raises whatever ``render`` raises (see the module docstring)
        and ``RuntimeError`` after ``close()``.
        """
        if self._closed:
            raise RuntimeError("Injector.feed() called after close()")
        if self._passthrough:
            return chunk
        buf = self._buf
        if not buf:
            self._buf = chunk  # the common one-chunk body is scanned without a copy
        else:
            if not isinstance(buf, bytearray):
                buf = self._buf = bytearray(buf)
            buf += chunk  # bytearray: amortised O(len(chunk)), not a quadratic bytes +=
        if self._done:  # render raised earlier: release everything unmodified
            return self._release(self._reason or "render_error")
        return self._advance(eof=False)

    def close(self) -> bytes:
        """Mark the end of the body; return everything still held (deciding if needed)."""
        self._closed = True
        if self._passthrough:
            return b""
        if self._done:  # render raised earlier: release everything unmodified
            return self._release(self._reason or "render_error")
        return self._advance(eof=True)

    # -- internals ----------------------------------------------------------------------------

    def _advance(self, *, eof: bool) -> bytes:
        cache = self._cache
        if cache is not None and self._looked < cache.longest:
            known = min(len(self._buf), self._limit)
            hit = cache.lookup(self._buf, self._looked, known)
            self._looked = known
            if hit is not None:
                self._metas = list(hit[1])
                return self._insert(hit[0])
        outcome = self._scan(eof)
        if outcome is None:
            if len(self._buf) <= self._limit and not eof:
                return b""
            outcome = "scan_limit"
        if isinstance(outcome, str):
            return self._release(outcome)
        if cache is not None:
            cache.learn(self._buf, outcome, self._metas, limit=self._limit, marker=self._marker)
        return self._insert(outcome)

    def _release(self, reason: str) -> bytes:
        out = self._buf
        self._buf = b""
        self._done = self._passthrough = True
        self._reason = reason
        return bytes(out) if isinstance(out, bytearray) else out

    def _insert(self, ip: int) -> bytes:
        buf = self._buf
        if self._marker and buf.find(self._marker, 0, ip) >= 0:
            return self._release("already_injected")
        metas = tuple(self._metas)
        self._done = True
        self._reason = "render_error"  # until render returns and validates
        result = self._render(metas)
        if isinstance(result, str):
            return self._release(result)
        if not isinstance(result, Insertion):
            raise TypeError(f"render must return Insertion or str, not {type(result).__name__}")
        snippet = result.snippet
        if not isinstance(snippet, bytes) or not snippet.isascii():
            raise ValueError("Insertion.snippet must be ASCII bytes")
        rewrites = sorted(result.meta_rewrites.items())
        for index, value in rewrites:
            if not 0 <= index < len(metas):
                raise ValueError(f"meta_rewrites index {index} out of range ({len(metas)} metas)")
            if not isinstance(value, bytes) or not value.isascii():
                raise ValueError("meta_rewrites values must be ASCII bytes")

        view = memoryview(buf)  # slices below are views: the body is copied once, by join
        pieces: list[bytes | memoryview] = []
        prev = 0
        added = len(snippet)
        for index, value in rewrites:
            meta = metas[index]
            pieces += (view[prev : meta.start], value)
            added += len(value) - (meta.end - meta.start)
            prev = meta.end
        pieces += (view[prev:ip], snippet, view[ip:])
        out = b"".join(pieces)
        view.release()
        self._buf = b""
        self._passthrough = self._injected = True
        self._reason = None
        self._added = added
        return out

    def _scan(self, eof: bool) -> int | str | None:
        """Tokenize from the saved position; return an insertion offset, a skip reason, or
        ``None`` when more bytes are needed. Only ``buf[:max_scan_bytes]`` is ever looked at."""
        buf = self._buf
        end = min(len(buf), self._limit)
        at_eof = eof and len(buf) <= self._limit  # the document really ends at `end`
        pos = self._pos
        state = self._state
        while True:
            if state == _DATA:
                if self._depth == 0:
                    pos = _HEAD_RUN_RE.match(buf, pos, end).end()  # type: ignore[union-attr]
                    if pos >= end:
                        break
                    q = pos
                    if buf[q] != _LT:
                        return q  # character data implicitly closes the head
                else:
                    q = buf.find(b"<", pos, end)
                    if q < 0:
                        pos = end
                        break
                m = _NICE_TAG_RE.match(buf, q, end) or _TAG_RE.match(buf, q, end)
                if m is not None:
                    tag_end = m.end()
                    trigger = self._on_tag(
                        q, tag_end, bool(m.group(1)), m.group(2), m.start(3), m.end(3)
                    )
                    if trigger is not None:
                        return trigger
                    pos = tag_end
                    state = self._state
                    continue
                # Markup at q that is not a complete tag.
                if q + 1 >= end:
                    pos = q
                    break
                c = buf[q + 1]
                if c == _SLASH:
                    if q + 2 >= end:
                        pos = q
                        break
                    c = buf[q + 2]
                    if c == _GT:  # "</>" is dropped by the tokenizer
                        pos = q + 3
                        continue
                    if (0x41 <= c <= 0x5A) or (0x61 <= c <= 0x7A):
                        state, self._sub, self._tag_start, pos = _TAG_PENDING, _T_NAME, q, q + 3
                        continue
                    state, self._ret, pos = _BOGUS, _DATA, q + 2
                elif (0x41 <= c <= 0x5A) or (0x61 <= c <= 0x7A):
                    state, self._sub, self._tag_start, pos = _TAG_PENDING, _T_NAME, q, q + 2
                elif c == _BANG:
                    if buf.startswith(b"<!--", q, end):
                        state, self._ret, pos = _COMMENT_START, _DATA, q + 4
                    elif q + 4 > end and b"<!--".startswith(buf[q:end]):
                        pos = q
                        break
                    else:  # doctype (ignored after the first) or bogus: both end at ">"
                        state, self._ret, pos = _BOGUS, _DATA, q + 2
                elif c == _QMARK:
                    state, self._ret, pos = _BOGUS, _DATA, q + 2
                elif self._depth == 0:
                    return q  # "<" that starts no tag is character data
                else:
                    pos = q + 1
            elif state == _TAG_PENDING:
                q = self._tag_start
                in_name = self._sub == _T_NAME
                tag_end, pos, self._sub = _scan_tag_end(buf, pos, end, self._sub)
                # Its name alone says whether a tag closes the head: decide as soon as the name
                # is complete rather than hold a long tag (or one the document never finishes).
                name_done = in_name and self._sub != _T_NAME
                if tag_end < 0 and not (name_done and self._depth == 0):
                    break
                m = _TAG_NAME_RE.match(buf, q, end)  # once per tag: the name is complete
                assert m is not None  # checked when the tag was opened
                is_end = m.start(1) != m.end(1)
                if name_done and self._depth == 0 and _closes_head(is_end, m.group(2).lower()):
                    return q
                if tag_end < 0:
                    break
                trigger = self._on_tag(q, tag_end, is_end, m.group(2), m.end(2), tag_end - 1)
                if trigger is not None:
                    return trigger
                pos = tag_end
                state = self._state
            elif state == _RAW:
                assert self._raw_re is not None
                m = self._raw_re.search(buf, pos, end)
                if m is None:
                    pos = max(pos, end - self._raw_overlap)
                    break
                state, pos = _DATA, m.start()  # the end tag itself is tokenized as a tag
            elif state == _SCRIPT:
                m = _SCRIPT_RE.search(buf, pos, end)
                if m is None:
                    pos = max(pos, end - _SCRIPT_OVERLAP)
                    break
                if m.group(0) == b"<!--":
                    # The dashes of "<!--" count toward "-->": "<!-->" closes the escape.
                    state, pos = _SCRIPT_ESCAPED, m.start() + 2
                else:
                    state, pos = _DATA, m.start()
            elif state in (_SCRIPT_ESCAPED, _SCRIPT_DOUBLE):
                pattern = _SCRIPT_ESCAPED_RE if state == _SCRIPT_ESCAPED else _SCRIPT_DOUBLE_RE
                m = pattern.search(buf, pos, end)
                if m is None:
                    pos = max(pos, end - _SCRIPT_OVERLAP)
                    break
                if m.group(0) == b"-->":
                    state, pos = _SCRIPT, m.end()
                elif state == _SCRIPT_DOUBLE:
                    state, pos = _SCRIPT_ESCAPED, m.end()  # "</script>" leaves double escape
                elif m.start(1) != m.end(1):
                    state, pos = _DATA, m.start()  # the real end tag
                else:
                    state, pos = _SCRIPT_DOUBLE, m.end()  # "<script" inside "<!--"
            elif state == _COMMENT_START:
                if pos >= end:
                    break
                c = buf[pos]
                if c == _GT:  # "<!-->"
                    state, pos = self._ret, pos + 1
                elif c == _DASH:
                    if pos + 1 >= end:
                        break
                    if buf[pos + 1] == _GT:  # "<!--->"
                        state, pos = self._ret, pos + 2
                    else:
                        state = _COMMENT
                else:
                    state = _COMMENT
            elif state == _COMMENT:
                m = _COMMENT_END_RE.search(buf, pos, end)
                if m is None:
                    pos = max(pos, end - 3)
                    break
                state, pos = self._ret, m.end()
            elif state == _BOGUS:
                q = buf.find(b">", pos, end)
                if q < 0:
                    pos = end
                    break
                state, pos = self._ret, q + 1
            elif state == _PROLOGUE:
                nw = _NOT_WS_RE.search(buf, pos, end)
                if nw is None:
                    pos = end
                    break
                q = nw.start()
                if buf[q] != _LT:
                    return "fragment"
                kind = _classify_prologue(bytes(buf[q : min(q + 10, end)]))
                if kind == _P_NEED:
                    pos = q
                    break
                if kind == _P_FRAGMENT:
                    return "fragment"
                if kind == _P_DOCUMENT:
                    self._document = True
                    state, pos = _DATA, q  # the doctype or <html> is tokenized in data state
                elif kind == _P_COMMENT:
                    state, self._ret, pos = _COMMENT_START, _PROLOGUE, q + 4
                else:
                    state, self._ret, pos = _BOGUS, _PROLOGUE, q + 2
            elif state == _PLAINTEXT:
                pos = end
                break
            else:  # _START: byte order marks, only at offset 0
                head = bytes(buf[: min(4, end)])
                if head[:2] in _BOMS_UTF16 or head == _BOM_UTF32BE:
                    return "utf16"
                if len(head) < 4 and not at_eof:
                    partial = (_BOM_UTF8, _BOM_UTF32BE, *_BOMS_UTF16)
                    if head == b"" or any(bom.startswith(head) for bom in partial):
                        break
                state, pos = _PROLOGUE, (3 if head.startswith(_BOM_UTF8) else 0)

        # More bytes are needed.
        self._pos = pos
        self._state = state
        if not at_eof:
            return None
        if not self._document:
            return "fragment"
        if state == _DATA and self._depth == 0:
            if pos == end:
                return end  # the head is still open: the end of the document is in it
            if buf[pos:end] in (b"<", b"</"):
                return pos  # a lone "<" or "</" at the end is character data
        return "no_insertion_point"

    def _on_tag(
        self, q: int, tag_end: int, is_end: bool, raw_name: bytes, a0: int, a1: int
    ) -> int | None:
        """Apply a complete tag ``buf[q:tag_end]``; return ``q`` if it closes the head.

        Leaves ``self._state`` at the tokenizer state that follows the tag."""
        self._state = _DATA
        name = raw_name.lower()  # ASCII-only lowering, as the tokenizer does
        if self._depth == 0:
            if _closes_head(is_end, name):
                return q
            if is_end:
                return None  # "before head" and "in head" ignore every other end tag
            # Only a meta with an http-equiv attribute can carry a policy (most are charset,
            # viewport, description ones: no attribute walk for those).
            if name == b"meta" and _HTTP_EQUIV_RE.search(self._buf, a0, a1) is not None:
                policy = _meta_policy(self._buf, a0, a1)
                if policy is not None:
                    self._metas.append(policy)
                return None
            if name == b"template":
                self._depth = 1
                return None
        elif is_end:
            if name == b"template":
                self._depth -= 1
            return None
        elif name == b"template":
            self._depth += 1
            return None
        elif name == b"plaintext":
            self._state = _PLAINTEXT
            return None
        # Elements whose content the tokenizer does not treat as markup (self-closing "/"
        # is ignored on them, as on every non-void HTML element).
        if name == b"script":
            self._state = _SCRIPT
        else:
            raw_re = _RAW_END_RES.get(name)
            if raw_re is not None:
                self._state = _RAW
                self._raw_re = raw_re
                self._raw_overlap = len(name) + 2  # "</" + name, still lacking its terminator
        return None


def inject(
    body: bytes,
    render: Render,
    *,
    max_scan_bytes: int = 256 * 1024,
    marker: bytes = b"replay-middleware-config",
) -> tuple[bytes, Injector]:
    """Inject into a whole body; return the output and the (decided) injector.

    Same rules as :class:`Injector` fed ``body`` in one chunk and then closed.
    """
    injector = Injector(render, max_scan_bytes=max_scan_bytes, marker=marker)
    head = injector.feed(body)
    tail = injector.close()
    return (head + tail if tail else head), injector
