"""Route rules: which paths are restricted (SPEC §2 ``exclude``/``include``, N3).

Sans-IO. Rules are globs, compiled regexes or predicates ``(path, request_info) -> bool``.
The same rules are exported for the browser loader as JavaScript regex sources, so client-side
navigation into a restricted area shuts the recorder down too.

Glob semantics (chosen for restricted areas, where missing a page is the costly mistake):

- a glob without wildcards is a path prefix on a segment boundary: ``/account/billing``
  matches ``/account/billing``, ``/account/billing/`` and ``/account/billing/invoices/7`` but
  not ``/account/billingreport``;
- ``*`` matches any run of characters, ``/`` included; ``?`` matches one character other than
  ``/``; ``[abc]`` is a character class. A glob with wildcards must match the whole path.

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

__all__ = ["RouteRules", "glob_to_regex"]

logger = logging.getLogger("replay_middleware.routes")

_SLASHES = re.compile(r"/{2,}")


def glob_to_regex(glob: str) -> str:
    """Translate a route glob to a regex source valid in both Python and JavaScript."""
    if not any(ch in glob for ch in "*?["):
        base = glob.rstrip("/")
        return "^" + _escape(base) + "(?:/.*)?$" if base else "^/.*$"
    out = ["^"]
    i = 0
    while i < len(glob):
        ch = glob[i]
        if ch == "*":
            while i + 1 < len(glob) and glob[i + 1] == "*":
                i += 1
            out.append(".*")
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
                body = body.replace("\\", "\\\\").replace("]", r"\]")
                out.append("[" + ("^" if negate else "") + body + "]")
                i = end
        else:
            out.append(_escape(ch))
        i += 1
    out.append("$")
    return "".join(out)


def _escape(text: str) -> str:
    # re.escape escapes more than JavaScript needs but everything it emits is valid in a JS
    # regex without the "u" flag, except escaped characters JS treats as identity escapes,
    # which are also fine there.
    return re.sub(r"([.^$*+?()\[\]{}|\\/])", r"\\\1", text)


# Python-only regex syntax and its JavaScript spelling (ES2018).
_PY_TO_JS = ((re.compile(r"\(\?P<"), "(?<"), (re.compile(r"\\A"), "^"), (re.compile(r"\\Z"), "$"))
_JS_UNSAFE = re.compile(r"\(\?P=|\(\?#|\(\?[aiLmsux-]+[:)]|\\[Zz]|\(\?\(|\*\+|\+\+|\?\+|\}\+")


def _pattern_to_js(pattern: re.Pattern[str]) -> dict[str, str] | None:
    source = pattern.pattern
    for rx, repl in _PY_TO_JS:
        source = rx.sub(repl, source)
    if _JS_UNSAFE.search(source) or pattern.flags & (re.VERBOSE | re.LOCALE):
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
        return bool(self.predicate(path, request))


def _compile(rule: RouteRule) -> _Rule:
    if isinstance(rule, str):
        source = glob_to_regex(rule)
        return _Rule(re.compile(source), None, {"source": source, "flags": ""}, rule)
    if isinstance(rule, re.Pattern):
        return _Rule(rule, None, _pattern_to_js(rule), rule.pattern)
    return _Rule(None, rule, None, getattr(rule, "__name__", repr(rule)))


class RouteRules:
    """Compiled ``exclude`` and ``include`` rules; immutable after construction."""

    def __init__(self, exclude: Sequence[RouteRule], include: Sequence[RouteRule] | None) -> None:
        self._exclude = tuple(_compile(r) for r in exclude)
        self._include = None if include is None else tuple(_compile(r) for r in include)
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

        A predicate that raises counts as a match: failing closed is the safe side for a
        restricted area; the error is logged.
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
