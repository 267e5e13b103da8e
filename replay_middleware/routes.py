"""Route rules: which paths are restricted (SPEC §2 ``exclude``/``include``, N3).

Sans-IO. Rules are globs, compiled regexes or predicates ``(path, request_info) -> bool``.
The same rules are exported for the browser loader as JavaScript regex sources, so client-side
navigation into a restricted area shuts the recorder down too.

Glob semantics (chosen for restricted areas, where missing a page is the costly mistake):

- a glob without wildcards is a path prefix on a segment boundary: ``/account/billing``
  matches ``/account/billing``, ``/account/billing/`` and ``/account/billing/invoices/7`` but
  not ``/account/billingreport``;
- ``*`` matches any run of characters, ``/`` included; ``?`` matches one character other than
  ``/``; ``[abc]`` is a character class (``[!abc]`` negated). A glob with wildcards must
  match the whole path.

Every character counts alike, on the decoded path (``%0A`` arrives as a newline): ``*`` and
``.`` cross newlines, and the end of the path is its very end, never "before a final newline"
as Python's ``$`` has it. One exception, on the safe side: a control character (C0, DEL, C1,
U+2028, U+2029) also ends the path for the rules, so a rule matches a path that it matches up
to one of them. Routers anchored with Python's ``$`` (Starlette, Django ``re_path``) serve
``/account/billing%0A`` as ``/account/billing``, and a NUL cuts strings in C code; the rules
for ``/account/billing`` must cover such paths too.

A compiled regex is searched (``re.search``: anchor it yourself) with that meaning: ``.``
matches every character (``re.DOTALL`` is added) and an unescaped ``$`` or ``\\Z`` means "the
end, or before a control character" (in a ``re.MULTILINE`` regex ``$`` is left as written).
Paths without control characters match exactly as ``re.search`` would. A predicate is called
with the path, then, if the path holds a control character, with the part before the first
one and with the path without its trailing ones (:func:`path_forms`), until one says yes.

Paths are compared after collapsing repeated slashes, so ``//account/billing`` is restricted
too. Predicates cannot run in the browser: a start-up warning says so.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .config import RouteRule
from .request import RequestInfo

__all__ = ["CONTROL_CHARS", "GLOB_FLAGS", "PATH_END", "RouteRules", "glob_to_regex", "path_forms"]

logger = logging.getLogger("replay_middleware.routes")

_SLASHES = re.compile(r"/{2,}")

#: Characters that end a path for the rules (see the module docstring): C0 controls, DEL, C1
#: controls, LINE SEPARATOR and PARAGRAPH SEPARATOR.
CONTROL_CHARS = "".join(chr(c) for c in (*range(0x20), *range(0x7F, 0xA0), 0x2028, 0x2029))
_CONTROL_CLASS = r"[\x00-\x1f\x7f-\x9f\u2028\u2029]"
_CONTROL = re.compile(_CONTROL_CLASS)
#: "The end of the path": its very end or before a control character. Valid in Python and in
#: JavaScript (without the "m" flag, where "$" is the very end). In Python "$" also matches
#: before a final newline, a control character anyway, so the two engines agree.
PATH_END = f"(?={_CONTROL_CLASS}|$)"
_PY_PATH_END = f"(?={_CONTROL_CLASS}|\\Z)"
#: Any character, newline included, in a source valid in Python and in JavaScript without
#: flags (JavaScript's "." stops at \n, \r, U+2028 and U+2029; Python's at \n).
_ANY = r"[\s\S]"
#: The JavaScript flags of an exported glob: code points, as in Python.
GLOB_FLAGS = "u"


def path_forms(path: str) -> tuple[str, ...]:
    """The paths a predicate rule is called with for ``path`` (a decoded request path).

    Repeated slashes are collapsed; then the path itself, and when it holds a control
    character also the part before the first one and the path without its trailing ones
    (empty strings and duplicates left out). Regex rules need no forms: their end anchor
    already means "the end, or before a control character" (:data:`PATH_END`).
    """
    path = RouteRules.normalize(path)
    first = _CONTROL.search(path)
    if first is None:
        return (path,)
    forms = [path]
    for form in (path[: first.start()], path.rstrip(CONTROL_CHARS)):
        if form and form not in forms:
            forms.append(form)
    return tuple(forms)


def glob_to_regex(glob: str) -> str:
    """Translate a route glob to a regex source valid in both Python and JavaScript.

    The source starts with ``^``, ends with :data:`PATH_END` and holds no ``.``, so it means
    the same in both engines and no character (a newline included) is special, except that a
    control character ends the path. It is exported with the ``u`` flag (:data:`GLOB_FLAGS`),
    so that ``?`` and classes take one code point in JavaScript too, not one UTF-16 unit.
    """
    if not any(ch in glob for ch in "*?["):
        base = glob.rstrip("/")
        return f"^{_escape(base)}(?:/{_ANY}*)?{PATH_END}" if base else f"^/{_ANY}*{PATH_END}"
    out = ["^"]
    i = 0
    while i < len(glob):
        ch = glob[i]
        if ch == "*":
            while i + 1 < len(glob) and glob[i + 1] == "*":
                i += 1
            out.append(_ANY + "*")
        elif ch == "?":
            out.append("[^/]")
        elif ch == "[":
            end = glob.find("]", i + 2)
            if end == -1:
                out.append(r"\[")
            else:
                body = glob[i + 1 : end]
                negate = body.startswith("!")
                body = body[1:] if negate else body
                # Escape what is special inside a class in either engine: "\\", "]", a leading
                # "^", and "[", "&", "~", "|" that Python warns about as future set syntax
                # ("&" and "~" in hex: JavaScript's "u" mode allows no other escape of them).
                body = re.sub(r"([\\\]\[^|])", r"\\\1", body)
                body = body.replace("&", r"\x26").replace("~", r"\x7e")
                out.append("[" + ("^" if negate else "") + body + "]")
                i = end
        else:
            out.append(_escape(ch))
        i += 1
    out.append(PATH_END)
    return "".join(out)


def _escape(text: str) -> str:
    # Only regex syntax characters and "/": escapes valid in Python and in a JavaScript regex
    # with the "u" flag, which allows no other identity escape.
    return re.sub(r"([.^$*+?()\[\]{}|\\/])", r"\\\1", text)


# Python-only regex syntax JavaScript cannot run (the spellings it can are rewritten first).
_JS_UNSAFE = re.compile(r"\(\?P=|\(\?#|\(\?[aiLmsux-]+[:)]|\\[Zz]|\(\?\(|\*\+|\+\+|\?\+|\}\+")


def _rewrite(source: str, *, js: bool, verbose: bool = False, multiline: bool = False) -> str:
    """Rewrite a Python regex source to the route rules' meaning of characters.

    Outside character classes and comments, an unescaped ``$`` or ``\\Z`` becomes "the end, or
    before a control character" (:data:`PATH_END`; Python's own ``$`` also matches before a
    final newline). For JavaScript (``js``), ``.`` becomes ``[\\s\\S]`` (its ``.`` stops at
    four line terminators; Python gets ``re.DOTALL``) and the Python-only spellings ``\\A``
    and ``(?P<`` become ``^`` and ``(?<``. A ``]`` opening a class is escaped (Python reads it
    as a literal, JavaScript as the end of an empty class). In a ``multiline`` regex ``$``
    means the end of a line and is left as written.
    """
    path_end = PATH_END if js else _PY_PATH_END
    out: list[str] = []
    i, n = 0, len(source)
    in_class = False
    while i < n:
        ch = source[i]
        if ch == "\\":
            pair = source[i : i + 2]
            if not in_class and pair == "\\Z":
                pair = path_end
            elif js and not in_class and pair == "\\A":
                pair = "^"
            out.append(pair)
            i += 2
        elif in_class:
            in_class = ch != "]"
            out.append(ch)
            i += 1
        elif ch == "[":
            out.append(ch)
            i += 1
            if source.startswith("^", i):
                out.append("^")
                i += 1
            if source.startswith("]", i):
                out.append("\\]")
                i += 1
            in_class = True
        elif source.startswith("(?#", i) or (verbose and ch == "#"):
            end = source.find(")" if ch == "(" else "\n", i)
            end = n if end == -1 else end + (ch == "(")
            out.append(source[i:end])
            i = end
        elif js and source.startswith("(?P<", i):
            out.append("(?<")
            i += 4
        else:
            if ch == "." and js:
                ch = _ANY
            elif ch == "$" and not multiline:
                ch = path_end
            out.append(ch)
            i += 1
    return "".join(out)


def _strict_pattern(pattern: re.Pattern[str]) -> re.Pattern[str]:
    """The user's regex with the rules' meaning: ``re.DOTALL`` added, ``$``/``\\Z`` rewritten."""
    flags = pattern.flags | re.DOTALL
    source = _rewrite(
        pattern.pattern,
        js=False,
        verbose=bool(flags & re.VERBOSE),
        multiline=bool(flags & re.MULTILINE),
    )
    try:
        return re.compile(source, flags)
    except re.error:  # a construct the rewrite misread: keep the anchors as written
        logger.debug("route regex %r: end anchors kept as written", pattern.pattern)
        return re.compile(pattern.pattern, flags)


def _pattern_to_js(pattern: re.Pattern[str]) -> dict[str, str] | None:
    if pattern.flags & (re.VERBOSE | re.LOCALE):
        return None
    source = _rewrite(pattern.pattern, js=True, multiline=bool(pattern.flags & re.MULTILINE))
    if _JS_UNSAFE.search(source):
        return None
    flags = ""
    if pattern.flags & re.IGNORECASE:
        flags += "i"
    if pattern.flags & re.MULTILINE:
        flags += "m"
    if pattern.flags & re.DOTALL:
        flags += "s"
    return {"source": source, "flags": flags}


@dataclass(frozen=True)
class _Rule:
    regex: re.Pattern[str] | None
    predicate: Callable[[str, RequestInfo], bool] | None
    js: dict[str, str] | None
    label: str

    def matches(self, path: str, request: RequestInfo) -> bool:
        if self.regex is not None:
            return self.regex.search(path) is not None
        assert self.predicate is not None
        return any(bool(self.predicate(form, request)) for form in path_forms(path))


def _compile(rule: RouteRule) -> _Rule:
    if isinstance(rule, str):
        source = glob_to_regex(rule)
        js = {"source": source, "flags": GLOB_FLAGS}
        return _Rule(re.compile(source), None, js, rule)
    if isinstance(rule, re.Pattern):
        return _Rule(_strict_pattern(rule), None, _pattern_to_js(rule), rule.pattern)
    return _Rule(None, rule, None, getattr(rule, "__name__", repr(rule)))


class RouteRules:
    """Compiled ``exclude`` and ``include`` rules; immutable after construction."""

    def __init__(self, exclude: Sequence[RouteRule], include: Sequence[RouteRule] | None) -> None:
        self._exclude = tuple(_compile(r) for r in exclude)
        self._include = None if include is None else tuple(_compile(r) for r in include)
        #: Whether any rule can restrict a path (False: ``excluded`` always answers None).
        self.active = bool(self._exclude) or self._include is not None
        self.browser_warnings: tuple[str, ...] = tuple(
            f"route rule {r.label!r} cannot be evaluated in the browser: client-side navigation "
            "into or out of it will not shut the recorder down or start it"
            for r in (*self._exclude, *(self._include or ()))
            if r.js is None
        )
        self._js: dict[str, Any] = {
            "exclude": [r.js for r in self._exclude if r.js is not None],
            "include": None
            if self._include is None
            else [r.js for r in self._include if r.js is not None],
        }

    @staticmethod
    def normalize(path: str) -> str:
        return _SLASHES.sub("/", path) if "//" in path else path

    def excluded(self, path: str, request: RequestInfo) -> str | None:
        """The reason ``path`` is restricted ("excluded_route" / "not_included"), or None.

        A predicate is called with each of :func:`path_forms` until one says yes. A predicate
        that raises counts as a match: failing closed is the safe side for a restricted area;
        the error is logged.
        """
        path = self.normalize(path)
        for rule in self._exclude:
            if _safe_match(rule, path, request, default=True):
                return "excluded_route"
        if self._include is not None and not any(
            _safe_match(rule, path, request, default=False) for rule in self._include
        ):
            return "not_included"
        return None

    def to_js(self) -> dict[str, Any]:
        """The rules for the browser loader: ``{"exclude": [...], "include": [...] | None}``."""
        return self._js


def _safe_match(rule: _Rule, path: str, request: RequestInfo, *, default: bool) -> bool:
    try:
        return rule.matches(path, request)
    except Exception:
        logger.exception(
            "route rule %r raised; treating it as %s",
            rule.label,
            "a match" if default else "no match",
        )
        return default
