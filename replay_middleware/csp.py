"""Sans-IO Content-Security-Policy merging: no framework, ASGI/WSGI or network imports.

What it is: the parse → merge → serialize pipeline that makes an app's CSP admit what the
injected Session Replay snippet needs (our script tags, the upload and config connections, the
SDK's ``blob:`` workers) while never weakening anything else. The adapters call
:func:`merge_response_csp` on the final response headers and :func:`merge_meta_csp` on each
``<meta http-equiv="Content-Security-Policy">`` in ``<head>``; the ``doctor`` command and the
tests use the lower-level :func:`parse_policy_list`, :class:`Policy` and :func:`allows`.

Rule names in comments (G1, S4, W3, ...) refer to ``notes/csp.md`` section (a); C1-C5 to
SPEC §7; "CSP3 §x" to the W3C CSP3 editor's draft.

Contract in one paragraph: every policy (each header field, each comma-joined policy inside
it, enforce and report-only) is merged independently; injection is all-or-nothing over the
enforced ones (G5); nothing is ever created when there is no policy (G1); untouched policies
stay byte-identical (Z1); malformed input never raises.
"""

from __future__ import annotations

import contextlib
import logging
import re
import secrets
from binascii import b2a_base64
from collections.abc import Sequence
from dataclasses import dataclass, field
from urllib.parse import unquote_to_bytes, urljoin, urlsplit

from ._fast import frozen_new, random16

__all__ = [
    "BLOB",
    "CSP_HEADER",
    "CSP_REPORT_ONLY_HEADER",
    "NONE",
    "REASON_CONNECT_BLOCKED",
    "REASON_CONNECT_NONE",
    "REASON_META_AMBIGUOUS",
    "REASON_SANDBOX",
    "REASON_SANDBOX_OPAQUE",
    "REASON_SCRIPT_BLOCKED",
    "REASON_SCRIPT_NONE",
    "REPORT_SAMPLE",
    "SELF",
    "STRICT_DYNAMIC",
    "UNSAFE_ALLOW_REDIRECTS",
    "UNSAFE_EVAL",
    "UNSAFE_HASHES",
    "UNSAFE_INLINE",
    "WASM_UNSAFE_EVAL",
    "CspNeeds",
    "CspResult",
    "Directive",
    "MetaCspResult",
    "Policy",
    "allows",
    "merge_meta_csp",
    "merge_response_csp",
    "merge_response_csp_uncached",
    "new_nonce",
    "parse_policy_list",
    "url_sources",
]

logger = logging.getLogger(__name__)

# --- Quoted keywords (CSP3 §2.3.1 keyword-source), as they appear in a source list ----------
NONE = "'none'"
SELF = "'self'"
UNSAFE_INLINE = "'unsafe-inline'"
UNSAFE_EVAL = "'unsafe-eval'"
UNSAFE_HASHES = "'unsafe-hashes'"
STRICT_DYNAMIC = "'strict-dynamic'"
REPORT_SAMPLE = "'report-sample'"
UNSAFE_ALLOW_REDIRECTS = "'unsafe-allow-redirects'"
WASM_UNSAFE_EVAL = "'wasm-unsafe-eval'"
BLOB = "blob:"
# The only sink group of `require-trusted-types-for` (Trusted Types spec), rule T1.
_TT_SCRIPT = "'script'"
# The sandbox flag that lets scripts run (HTML sandboxing keywords), rule F1, and the one that
# keeps the document's origin (without it the origin is opaque).
_ALLOW_SCRIPTS = "allow-scripts"
_ALLOW_SAME_ORIGIN = "allow-same-origin"

# --- Header names (lowercase; compared case-insensitively, P2) -------------------------------
CSP_HEADER = "content-security-policy"
CSP_REPORT_ONLY_HEADER = "content-security-policy-report-only"

# --- Directive names -------------------------------------------------------------------------
_DEFAULT_SRC = "default-src"
_SCRIPT_SRC = "script-src"
_SCRIPT_SRC_ELEM = "script-src-elem"
_CHILD_SRC = "child-src"
_WORKER_SRC = "worker-src"
_CONNECT_SRC = "connect-src"
_SANDBOX = "sandbox"
_REQUIRE_TRUSTED_TYPES_FOR = "require-trusted-types-for"

# --- Stable reason codes for an infeasible merge (G5) ----------------------------------------
REASON_SANDBOX = "csp_sandbox"  # F1
# `sandbox allow-scripts` without `allow-same-origin`: scripts run, but in an opaque origin
# (HTML "sandboxed origin browsing context flag"), where the SDK's CORS script load, cookies,
# IndexedDB and every first-party fetch fail; recording cannot work, so nothing is injected.
REASON_SANDBOX_OPAQUE = "csp_sandbox_opaque"
REASON_SCRIPT_NONE = "csp_script_none"  # F2
REASON_CONNECT_NONE = "csp_connect_none"  # F3
# The one source S3/C2 may add would still not admit every URL we load (a misconfigured
# CspNeeds, e.g. a CDN source while the first-party loader is not allowed either).
REASON_SCRIPT_BLOCKED = "csp_script_blocked"
REASON_CONNECT_BLOCKED = "csp_connect_blocked"
# A meta policy containing a comma: Chromium splits it into several policies, the HTML/CSP3
# algorithm (and Firefox) parses it as one; we cannot know which one the browser enforces.
REASON_META_AMBIGUOUS = "csp_meta_ambiguous"

# --- Grammar (CSP3 §2.3.1) -------------------------------------------------------------------
# ASCII whitespace per Infra: TAB, LF, FF, CR, SPACE. Not str.split()/str.strip(): those also
# eat \x0b, \x1c-\x1f, \x85 and \xa0, which browsers treat as ordinary characters.
_ASCII_WS = "\t\n\f\r "
_ASCII_WS_RE = re.compile(r"[\t\n\f\r ]+")
_SCHEME = r"[A-Za-z][A-Za-z0-9+.\-]*"
_SCHEME_SOURCE_RE = re.compile(rf"({_SCHEME}):")
_SCHEME_PREFIX_RE = re.compile(rf"{_SCHEME}:")
_HOST_SOURCE_RE = re.compile(
    rf"(?:(?P<scheme>{_SCHEME})://)?"
    r"(?P<host>\*|(?:\*\.)?[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*)"
    r"(?::(?P<port>[0-9]+|\*))?"
    r"(?P<path>/[^\t\n\f\r ;,?#]*)?"
)
_BASE64_VALUE = r"[A-Za-z0-9+/\-_]+={0,2}"
_BASE64_VALUE_RE = re.compile(_BASE64_VALUE)
_NONCE_SOURCE_RE = re.compile(rf"'nonce-({_BASE64_VALUE})'", re.IGNORECASE)
_HASH_SOURCE_RE = re.compile(rf"'(?:sha256|sha384|sha512)-{_BASE64_VALUE}'", re.IGNORECASE)
_IPV4_RE = re.compile(r"[0-9]{1,3}(?:\.[0-9]{1,3}){3}")
_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443, "ftp": 21}
_HTTP_SCHEMES = ("http", "https")


def new_nonce() -> str:
    """A fresh nonce for one response (N1): 128 bits from the OS's CSPRNG (what ``secrets``
    reads, via the pool of ``random16``), base64url without padding, as
    ``secrets.token_urlsafe(16)`` spells it."""
    return b2a_base64(random16(), newline=False)[:22].translate(_URLSAFE).decode("ascii")


_URLSAFE = bytes.maketrans(b"+/", b"-_")


# =============================================================================================
# Parsing (A1-A3)
# =============================================================================================


def _ws_split(text: str) -> tuple[str, ...]:
    return tuple(token for token in _ASCII_WS_RE.split(text) if token)


@dataclass(frozen=True)
class Directive:
    """One directive as written: original ``name`` text and original ``tokens`` text.

    ``key`` is the lowercase name used for lookup, or ``None`` for a directive whose text is
    not pure ASCII: browsers drop such a directive entirely (CSP3 §2.2.1 step 2.2, rule A1).
    """

    name: str
    tokens: tuple[str, ...]
    key: str | None

    @classmethod
    def parse(cls, text: str) -> Directive:
        """Parse one stripped, non-empty ``;``-separated piece (CSP3 "parse a serialized CSP")."""
        parts = _ws_split(text)
        name, tokens = parts[0], parts[1:]
        return cls(name=name, tokens=tokens, key=name.lower() if text.isascii() else None)

    @property
    def is_explicit_none(self) -> bool:
        """A2: the value is empty or exactly ``'none'`` (case-insensitive): it matches nothing."""
        return not self.tokens or (len(self.tokens) == 1 and self.tokens[0].lower() == NONE)

    def serialize(self) -> str:
        return " ".join((self.name, *self.tokens))


@dataclass(frozen=True)
class Policy:
    """One serialized policy: ordered directives, keeping the original name and token text.

    Lookup (:meth:`get`) is by lowercase name, first occurrence wins, non-ASCII directives are
    invisible (A1). The ``with_*`` methods return edited copies; :meth:`serialize` returns the
    original text byte for byte until something was edited, then the canonical form (Z1/Z2).
    """

    text: str
    directives: tuple[Directive, ...]
    modified: bool = False

    @classmethod
    def parse(cls, text: str) -> Policy:
        """Parse one policy (no comma splitting); ``text`` is kept for byte-identical output."""
        pieces = (piece.strip(_ASCII_WS) for piece in text.split(";"))
        return cls(text=text, directives=tuple(Directive.parse(p) for p in pieces if p))

    def _index(self, name: str) -> int | None:
        key = name.lower()
        for index, directive in enumerate(self.directives):
            if directive.key == key:
                return index
        return None

    def get(self, name: str) -> Directive | None:
        """The directive the browser uses for ``name`` (first ASCII occurrence), or None."""
        index = self._index(name)
        return None if index is None else self.directives[index]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self._index(name) is not None

    @property
    def is_empty(self) -> bool:
        """No directive a browser would keep: the policy is discarded (A1, CSP3 §2.2.2)."""
        return all(directive.key is None for directive in self.directives)

    def with_appended(self, name: str, tokens: Sequence[str]) -> Policy:
        """Append ``tokens`` at the end of the governing ``name`` directive (N4, Z1)."""
        index = self._index(name)
        if index is None:
            raise KeyError(name)
        old = self.directives[index]
        return self._replace_at(index, Directive(old.name, (*old.tokens, *tokens), old.key))

    def with_replaced(self, name: str, tokens: Sequence[str]) -> Policy:
        """Replace the value of the governing ``name`` directive, keeping its name text (F5)."""
        index = self._index(name)
        if index is None:
            raise KeyError(name)
        old = self.directives[index]
        return self._replace_at(index, Directive(old.name, tuple(tokens), old.key))

    def with_added(self, name: str, tokens: Sequence[str]) -> Policy:
        """Append a new directive at the end of the policy (Z1). ``name`` must be absent."""
        if name in self:
            raise ValueError(f"{name} already present")
        new = Directive(name, tuple(tokens), name.lower())
        return Policy(self.text, (*self.directives, new), modified=True)

    def _replace_at(self, index: int, directive: Directive) -> Policy:
        directives = (*self.directives[:index], directive, *self.directives[index + 1 :])
        return Policy(self.text, directives, modified=True)

    def serialize(self) -> str:
        """Z1: untouched → the original text; edited → ``"; "``-joined, single-spaced tokens,
        directives in original order with original names (Z2: nothing deduplicated or dropped,
        except empty ``;;`` pieces, which carry no directive)."""
        if not self.modified:
            return self.text
        return "; ".join(directive.serialize() for directive in self.directives)


def _split_policies(value: str) -> list[str]:
    # CSP3 "parse a serialized CSP list": split on commas, strip ASCII whitespace. Directive
    # values cannot contain "," (CSP3 §2.2.1 grammar), so a plain split is what browsers do.
    return [segment.strip(_ASCII_WS) for segment in value.split(",")]


def parse_policy_list(value: str) -> list[Policy]:
    """The policies of one header field value (A1): comma-separated; empty policies dropped."""
    policies = (Policy.parse(segment) for segment in _split_policies(value))
    return [policy for policy in policies if not policy.is_empty]


# =============================================================================================
# Source-list predicates (A2-A4, CSP3 §6.7)
# =============================================================================================


def _nonce_value(token: str) -> str | None:
    match = _NONCE_SOURCE_RE.fullmatch(token)
    return None if match is None else match.group(1)


def _is_hash(token: str) -> bool:
    return _HASH_SOURCE_RE.fullmatch(token) is not None


def _has_keyword(tokens: Sequence[str], keyword: str) -> bool:
    return any(token.lower() == keyword for token in tokens)


def _allows_all_inline(tokens: Sequence[str]) -> bool:
    """S3 ``inline_ok``: CSP3 §6.7.3.2 "does a source list allow all inline behavior" for
    scripts: ``'unsafe-inline'`` and no nonce, no hash, no ``'strict-dynamic'``."""
    allow = False
    for token in tokens:
        if _nonce_value(token) is not None or _is_hash(token):
            return False
        lowered = token.lower()
        if lowered == STRICT_DYNAMIC:
            return False
        if lowered == UNSAFE_INLINE:
            allow = True
    return allow


def _is_url_source(token: str) -> bool:
    return (
        token == "*"
        or token.lower() == SELF
        or _SCHEME_SOURCE_RE.fullmatch(token) is not None
        or _HOST_SOURCE_RE.fullmatch(token) is not None
    )


def url_sources(tokens: Sequence[str]) -> tuple[str, ...]:
    """A3: the tokens that take part in URL matching (``*``, scheme and host sources,
    ``'self'``), in order; nonces, hashes, ``'none'`` and other keywords are dropped."""
    return tuple(token for token in tokens if _is_url_source(token))


@dataclass(frozen=True)
class _Url:
    scheme: str
    host: str | None  # lowercase; None for hostless URLs (blob:, data:, ...)
    port: int | None  # None when absent or equal to the scheme's default port
    path: str


def _parse_url(url: str) -> _Url | None:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if not scheme:
        return None
    host = parts.hostname if parts.netloc else None
    if port is not None and port == _DEFAULT_PORTS.get(scheme):
        port = None
    path = parts.path or ("/" if host is not None else "")
    return _Url(scheme=scheme, host=host or None, port=port, path=path)


def _parse_origin(origin: str | None) -> _Url | None:
    if origin is None:
        return None
    parsed = _parse_url(origin)
    if parsed is None or parsed.host is None:
        return None
    return _Url(parsed.scheme, parsed.host, parsed.port, "/")


_URL_STRIP = "".join(chr(c) for c in range(0x21))  # WHATWG URL: C0 controls and space


def _resolve(url: str, page: _Url | None) -> tuple[_Url | None, bool]:
    """(the URL as the browser would fetch it, or None if unknowable; is it first-party?)."""
    # WHATWG URL parsing strips leading/trailing C0-or-space and removes tab/newline inside.
    cleaned = url.strip(_URL_STRIP).replace("\t", "").replace("\n", "").replace("\r", "")
    if _SCHEME_PREFIX_RE.match(cleaned):
        return _parse_url(cleaned), False
    if cleaned[:2] in ("//", "/\\", "\\/", "\\\\"):
        # Scheme-relative: another host. Browsers treat "\" like "/" for http(s).
        scheme = page.scheme if page is not None else "https"
        return _parse_url(f"{scheme}:{cleaned}"), False
    # A path-relative or absolute-path URL resolves against the document: first-party (A4).
    if page is None:
        return None, True
    base = f"{page.scheme}://{page.host}" + (f":{page.port}" if page.port is not None else "")
    return _parse_url(urljoin(base + "/", cleaned)), True


def _scheme_part_match(a: str, b: str) -> bool:
    # CSP3 §6.7.2.9: equal, or an allowed secure upgrade.
    a, b = a.lower(), b.lower()
    return (
        a == b
        or (a == "http" and b == "https")
        or (a == "ws" and b in ("wss", "http", "https"))
        or (a == "wss" and b == "https")
    )


def _host_part_match(pattern: str, host: str) -> bool:
    # CSP3 §6.7.2.10: "*.example.com" matches any depth of subdomain but not example.com.
    pattern, host = pattern.lower(), host.lower()
    if pattern.startswith("*"):
        return host.endswith(pattern[1:])
    if pattern != host:
        return False
    # Only 127.0.0.1 among IP literals ever matches.
    return not (_IPV4_RE.fullmatch(pattern) and pattern != "127.0.0.1")


def _port_part_match(port: str | None, url: _Url) -> bool:
    # CSP3 §6.7.2.11; url.port is already None for the scheme's default port.
    if port == "*":
        return True
    if port is None:
        return url.port is None
    number = int(port)
    if url.port is not None:
        return number == url.port
    return number == _DEFAULT_PORTS.get(url.scheme)


def _path_part_match(path_a: str, path_b: str) -> bool:
    # CSP3 §6.7.2.12: exact match, or prefix match when the source path ends in "/".
    if not path_a:
        return True
    if path_a == "/" and not path_b:
        return True
    exact = not path_a.endswith("/")
    list_a, list_b = path_a.split("/"), path_b.split("/")
    if len(list_a) > len(list_b):
        return False
    if exact and len(list_a) != len(list_b):
        return False
    if not exact:
        list_a.pop()
    return all(
        unquote_to_bytes(a) == unquote_to_bytes(b) for a, b in zip(list_a, list_b, strict=False)
    )


def _effective_port(url: _Url) -> int | None:
    return url.port if url.port is not None else _DEFAULT_PORTS.get(url.scheme)


def _self_matches(url: _Url, page: _Url) -> bool:
    # CSP3 §6.7.2.8 step 4: same origin, or same host + port with a secure upgrade.
    if url.host is None or url.scheme == "blob":  # §1.8: 'self' never matches blob:
        return False
    if (url.scheme, url.host, url.port) == (page.scheme, page.host, page.port):
        return True
    if url.host != page.host:
        return False
    both_default = url.port is None and page.port is None
    if not both_default and _effective_port(url) != _effective_port(page):
        return False
    return url.scheme in ("https", "wss") or (
        page.scheme == "http" and url.scheme in ("http", "ws")
    )


def _expression_matches(url: _Url | None, first_party: bool, expr: str, page: _Url | None) -> bool:
    # CSP3 §6.7.2.8 "Does url match expression in origin with redirect count" (count 0).
    if expr == "*":
        if url is None:
            return first_party  # a first-party URL has the page's own (http(s)) scheme
        return url.scheme in _HTTP_SCHEMES or (page is not None and url.scheme == page.scheme)
    if expr.lower() == SELF:
        if first_party:
            return True  # A4: a relative first-party URL always matches 'self'
        return url is not None and page is not None and _self_matches(url, page)
    scheme_source = _SCHEME_SOURCE_RE.fullmatch(expr)
    if scheme_source is not None:
        if url is not None:
            return _scheme_part_match(scheme_source.group(1), url.scheme)
        # First-party URL of an unknown page: it must match whether the page is http or https.
        return first_party and all(
            _scheme_part_match(scheme_source.group(1), s) for s in _HTTP_SCHEMES
        )
    host_source = _HOST_SOURCE_RE.fullmatch(expr)
    if host_source is None or url is None or url.host is None:
        return False
    scheme = host_source.group("scheme")
    if scheme is not None:
        if not _scheme_part_match(scheme, url.scheme):
            return False
    else:
        # Scheme-less: relative to the page's scheme; unknown page → must hold for http and https.
        page_schemes = (page.scheme,) if page is not None else _HTTP_SCHEMES
        if not all(_scheme_part_match(s, url.scheme) for s in page_schemes):
            return False
    if not _host_part_match(host_source.group("host"), url.host):
        return False
    if not _port_part_match(host_source.group("port"), url):
        return False
    path = host_source.group("path")
    return not path or _path_part_match(path, url.path)


def allows(url: str, sources: Sequence[str], *, origin: str | None) -> bool:
    """Does ``url`` match the source list ``sources`` (A4; CSP3 §6.7.2.5-6.7.2.12 subset)?

    ``origin`` is the document origin (``"https://shop.example"``) or None when unknown.
    Supported: ``*``, scheme sources (with the http→https and ws→wss upgrades), host sources
    with ``*.`` wildcards, ports and path prefixes, and ``'self'``. ``blob:`` URLs match only an
    explicit ``blob:``. A relative URL is first-party: it always matches ``'self'`` and ``*``;
    host sources match it only when ``origin`` is known. With an unknown origin every other
    answer is the conservative one (a scheme-less source must match for an http and an https
    page). Nonces, hashes and other keywords never match a URL. Never raises.
    """
    tokens = list(sources)
    if not tokens or (len(tokens) == 1 and tokens[0].lower() == NONE):
        return False
    page = _parse_origin(origin)
    target, first_party = _resolve(url, page)
    return any(_expression_matches(target, first_party, expr, page) for expr in tokens)


# =============================================================================================
# Needs and results
# =============================================================================================


def _check_addable_source(source: str, what: str) -> None:
    """G3: the only sources we ever add are ``'self'`` or an exact http(s) host source."""
    if source.lower() == SELF:
        return
    match = _HOST_SOURCE_RE.fullmatch(source)
    if match is None or (match.group("scheme") or "").lower() not in _HTTP_SCHEMES or "*" in source:
        raise ValueError(
            f"{what} must be {SELF} or an http(s) host source without wildcards, got {source!r}"
        )


@dataclass(frozen=True)
class CspNeeds:
    """What the injected snippet loads, and the sources that admit it (set up by config).

    ``script_urls``: the URLs our tags load (loader, SDK); relative = first-party.
    ``script_source``: the one source added to ``script-src`` in the ``'unsafe-inline'`` case
    (S3) when a script URL is not allowed. ``connect_urls`` / ``connect_sources``: parallel
    tuples, the upload and config URLs and the source to add for each one a policy does not
    allow (C2). ``public_origin`` is configuration, never a request header (C4).
    """

    script_urls: tuple[str, ...]
    script_source: str
    connect_urls: tuple[str, ...]
    connect_sources: tuple[str, ...]
    public_origin: str | None = None
    use_worker: bool = True
    merge_report_only: bool = True  # R2
    override_explicit_none: bool = False  # F5
    worker_under_tt: bool = False  # T1
    #: :func:`merge_response_csp`'s cache for these needs (a per-process cache, not a value).
    merge_cache: dict[tuple[tuple[tuple[str, str], ...], str | None], _CachedMerge] = field(
        default_factory=dict, init=False, repr=False, compare=False, hash=False
    )

    def __post_init__(self) -> None:
        for name in ("script_urls", "connect_urls", "connect_sources"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if len(self.connect_urls) != len(self.connect_sources):
            raise ValueError("connect_urls and connect_sources must have the same length")
        _check_addable_source(self.script_source, "script_source")
        for source in self.connect_sources:
            _check_addable_source(source, "connect_sources")
        if self.public_origin is not None:
            parsed = _parse_url(self.public_origin)
            if (
                parsed is None
                or parsed.scheme not in _HTTP_SCHEMES
                or parsed.host is None
                or parsed.path != "/"
                or any(c in self.public_origin for c in "?#@")
            ):
                raise ValueError(
                    "public_origin must look like 'https://host[:port]', "
                    f"got {self.public_origin!r}"
                )


@dataclass(frozen=True)
class CspResult:
    """The outcome of :func:`merge_response_csp`; a frozen value the adapter acts on."""

    feasible: bool
    reason: str | None
    headers: tuple[tuple[str, str], ...]
    nonce: str
    use_web_worker: bool
    trusted_types: bool
    changed: bool
    # H1: a nonce we chose was written into a header, so the response is per-transmission:
    # the adapter must keep shared caches from storing it (Cache-Control: private/no-store).
    nonce_in_headers: bool = False


@dataclass(frozen=True)
class MetaCspResult:
    """The outcome of :func:`merge_meta_csp` for one ``<meta http-equiv>`` policy."""

    feasible: bool
    reason: str | None
    content: str
    use_web_worker: bool
    trusted_types: bool
    changed: bool


# =============================================================================================
# Planning: everything that does not depend on the nonce
# =============================================================================================

_APPEND = "append"
_REPLACE = "replace"
_CREATE = "create"


@dataclass(frozen=True)
class _ScriptTarget:
    name: str  # the directive to edit, or to create (S4)
    mode: str  # _APPEND | _REPLACE (F5) | _CREATE (S4)
    base: tuple[str, ...]  # the source list the browser checks our tags against
    inline_ok: bool  # S3

    @property
    def needs_nonce(self) -> bool:
        return not self.inline_ok


@dataclass(frozen=True)
class _Edit:
    mode: str
    name: str
    tokens: tuple[str, ...]  # tokens to append, or the full value to replace / create


@dataclass(frozen=True)
class _Plan:
    error: str | None = None
    script: tuple[_ScriptTarget, ...] = ()
    script_source_edits: tuple[_Edit, ...] = ()  # S3 inline_ok additions, nonce-free
    connect: _Edit | None = None
    worker: _Edit | None = None

    @property
    def nonce_sites(self) -> tuple[tuple[str, ...], ...]:
        return tuple(target.base for target in self.script if target.needs_nonce)


@dataclass(frozen=True)
class _Context:
    needs: CspNeeds
    origin: str | None
    use_web_worker: bool


def _same_source(a: str, b: str) -> bool:
    return a.lower() == b.lower() if a.startswith("'") else a == b


def _missing(tokens: Sequence[str], additions: Sequence[str]) -> tuple[str, ...]:
    """``additions`` without duplicates and without sources already in ``tokens``."""
    out: list[str] = []
    for source in additions:
        if not any(_same_source(source, t) for t in (*tokens, *out)):
            out.append(source)
    return tuple(out)


def _script_targets(
    policy: Policy, enforced: bool, override: bool
) -> tuple[tuple[_ScriptTarget, ...], str | None]:
    """S1-S5: which script directives get an addition; or the F2 reason."""
    elem, script = policy.get(_SCRIPT_SRC_ELEM), policy.get(_SCRIPT_SRC)
    primary, primary_name = (elem, _SCRIPT_SRC_ELEM) if elem is not None else (script, _SCRIPT_SRC)
    if primary is None:
        default = policy.get(_DEFAULT_SRC)
        if default is None:
            return (), None  # S1: scripts unrestricted
        # S4 (G4): create script-src as a verbatim copy of default-src; 'none' is not copied.
        base = () if default.is_explicit_none else default.tokens
        return (_ScriptTarget(_SCRIPT_SRC, _CREATE, base, _allows_all_inline(base)),), None
    targets: list[_ScriptTarget] = []
    if primary.is_explicit_none:
        if not enforced:
            return (), None  # R2: leave a report-only explicit-none as it is
        if not override:
            return (), REASON_SCRIPT_NONE  # F2
        logger.warning("override_explicit_none: replacing %s 'none' with our nonce", primary_name)
        targets.append(_ScriptTarget(primary_name, _REPLACE, (), False))  # F5
    else:
        targets.append(
            _ScriptTarget(primary_name, _APPEND, primary.tokens, _allows_all_inline(primary.tokens))
        )
    # S5: older Safari/Firefox ignore script-src-elem and use script-src: apply S3 to it too,
    # but never to an explicit-none script-src (that would override the app's deny there).
    if elem is not None and script is not None and not script.is_explicit_none:
        targets.append(
            _ScriptTarget(_SCRIPT_SRC, _APPEND, script.tokens, _allows_all_inline(script.tokens))
        )
    return tuple(targets), None


def _script_source_edit(target: _ScriptTarget, ctx: _Context) -> tuple[_Edit | None, bool]:
    """S3 ``inline_ok``: add ``script_source`` if a script URL is not allowed (never a nonce).

    Returns the edit (or None) and whether every script URL is then allowed.
    """
    needs = ctx.needs
    if all(allows(url, target.base, origin=ctx.origin) for url in needs.script_urls):
        return None, True
    added = _missing(target.base, (needs.script_source,))
    final = (*target.base, *added)
    ok = all(allows(url, final, origin=ctx.origin) for url in needs.script_urls)
    if not added:
        return None, ok
    tokens = final if target.mode == _CREATE else added
    return _Edit(target.mode, target.name, tokens), ok


def _connect_edit(policy: Policy, ctx: _Context, enforced: bool) -> tuple[_Edit | None, str | None]:
    """C1-C3 (and F3/F5): the connect-src edit, or the reason this policy cannot be met."""
    needs = ctx.needs
    connect, default = policy.get(_CONNECT_SRC), policy.get(_DEFAULT_SRC)
    governing = connect if connect is not None else default
    if governing is None:
        return None, None  # C1: connections unrestricted
    if connect is not None and connect.is_explicit_none:
        if not enforced:
            return None, None  # R2
        if not needs.override_explicit_none:
            return None, REASON_CONNECT_NONE  # F3
        logger.warning("override_explicit_none: replacing connect-src 'none' with our sources")
        sources = _missing((), needs.connect_sources)
        return _Edit(_REPLACE, _CONNECT_SRC, sources), None  # F5
    base = governing.tokens
    missing = [
        source
        for url, source in zip(needs.connect_urls, needs.connect_sources, strict=True)
        if not allows(url, base, origin=ctx.origin)
    ]
    if not missing:
        return None, None  # C2: already covered (*, https:, a wildcard host, 'self', ...)
    if SELF in missing:
        logger.debug("connect-src: adding 'self' for the first-party endpoints (no public_origin)")
    added = _missing(base, missing)
    if connect is not None:
        final = (*base, *added)
        edit = _Edit(_APPEND, _CONNECT_SRC, added) if added else None
    else:
        # C3 (G4): create connect-src from default-src's URL sources; 'none' contributes none.
        final = (*url_sources(base), *added)
        edit = _Edit(_CREATE, _CONNECT_SRC, final)
    if not all(allows(url, final, origin=ctx.origin) for url in needs.connect_urls):
        return edit, REASON_CONNECT_BLOCKED
    return edit, None


def _worker_governing(policy: Policy) -> Directive | None:
    for name in (_WORKER_SRC, _CHILD_SRC, _SCRIPT_SRC, _DEFAULT_SRC):
        directive = policy.get(name)
        if directive is not None:
            return directive
    return None


def _forbids_workers(policy: Policy) -> bool:
    """W3: the governing worker directive is explicit-none and is not default-src."""
    governing = _worker_governing(policy)
    return governing is not None and governing.is_explicit_none and governing.key != _DEFAULT_SRC


def _worker_edit(policy: Policy) -> _Edit | None:
    """W1-W6, computed on the original policy (W6, before S4 creates a script-src)."""
    governing = _worker_governing(policy)
    if governing is None:
        return None  # W1: workers unrestricted
    if _has_keyword(governing.tokens, BLOB):
        return None  # W2
    if governing.is_explicit_none and governing.key != _DEFAULT_SRC:
        return None  # W3: respected; the SDK runs with useWebWorker:false
    if governing.key in (_SCRIPT_SRC, _DEFAULT_SRC) and _has_keyword(
        governing.tokens, STRICT_DYNAMIC
    ):
        # W4 (§1.7): worker behaviour under 'strict-dynamic' is browser-dependent; creating
        # worker-src could newly block the app's own workers in Chrome. The SDK falls back.
        logger.debug("worker-src: 'strict-dynamic' governs workers; blob: workers may be blocked")
        return None
    if governing.key == _WORKER_SRC:
        return _Edit(_APPEND, _WORKER_SRC, (BLOB,))  # W5
    # W5: create worker-src = url_sources(G) + blob:, so the app's URL workers keep working.
    base = () if governing.is_explicit_none else url_sources(governing.tokens)
    return _Edit(_CREATE, _WORKER_SRC, (*base, BLOB))


def _requires_trusted_types(policy: Policy) -> bool:
    directive = policy.get(_REQUIRE_TRUSTED_TYPES_FOR)
    return directive is not None and _has_keyword(directive.tokens, _TT_SCRIPT)


def _sandbox_reason(policies: Sequence[Policy]) -> str | None:
    """F1 over the enforced header policies (each sandbox directive adds its restrictions):
    ``csp_sandbox`` when one keeps scripts from running, else ``csp_sandbox_opaque`` when one
    lets them run in an opaque origin; None when none sandboxes the page. Only header policies
    count: a meta policy's ``sandbox`` is ignored (CSP3 §3.3), report-only ones do not sandbox.
    """
    sandboxes = [d.tokens for d in (p.get(_SANDBOX) for p in policies) if d is not None]
    if any(not _has_keyword(tokens, _ALLOW_SCRIPTS) for tokens in sandboxes):
        return REASON_SANDBOX
    if any(not _has_keyword(tokens, _ALLOW_SAME_ORIGIN) for tokens in sandboxes):
        return REASON_SANDBOX_OPAQUE
    return None


def _plan(policy: Policy, ctx: _Context, *, enforced: bool) -> _Plan:
    """Everything about one policy that does not depend on the nonce, in F-rule order (F1,
    ``sandbox``, is checked over all header policies first: :func:`_sandbox_reason`).

    Only an enforced policy can produce ``error`` (R1): a report-only one is merged where it
    can be and left alone where it is explicit-none (R2).
    """
    needs = ctx.needs
    targets, error = _script_targets(policy, enforced, needs.override_explicit_none)
    if error is not None:
        return _Plan(error=error)
    source_edits: list[_Edit] = []
    for target in targets:
        if target.inline_ok:
            edit, ok = _script_source_edit(target, ctx)
            if not ok and enforced:
                return _Plan(error=REASON_SCRIPT_BLOCKED)
            if edit is not None:
                source_edits.append(edit)
    connect, error = _connect_edit(policy, ctx, enforced)
    if error is not None and enforced:
        return _Plan(error=error)
    worker = _worker_edit(policy) if ctx.use_web_worker else None
    return _Plan(
        script=targets, script_source_edits=tuple(source_edits), connect=connect, worker=worker
    )


def _nonce_values(tokens: Sequence[str]) -> list[str]:
    return [value for value in map(_nonce_value, tokens) if value is not None]


def _choose_nonce(plans: Sequence[_Plan], nonce: str, app_nonce: str | None) -> str:
    """N2: reuse a nonce only if it is already in every place that needs one; else ours."""
    sites = [site for plan in plans for site in plan.nonce_sites]
    if not sites:
        return nonce
    common = set(_nonce_values(sites[0]))
    for site in sites[1:]:
        common &= set(_nonce_values(site))
    if app_nonce is not None and app_nonce in common:
        return app_nonce
    for value in _nonce_values(sites[0]):  # the app's first such nonce, deterministically
        if value in common:
            return value
    return nonce


def _apply(policy: Policy, plan: _Plan, nonce: str) -> tuple[Policy, bool]:
    """Apply a plan; new directives land at the end as script-src, connect-src, worker-src."""
    edits: list[_Edit] = list(plan.script_source_edits)
    nonce_token = f"'nonce-{nonce}'"
    nonce_added = False
    for target in plan.script:
        if target.needs_nonce and nonce not in _nonce_values(target.base):
            tokens = (*target.base, nonce_token) if target.mode == _CREATE else (nonce_token,)
            edits.append(_Edit(target.mode, target.name, tokens))
            nonce_added = True
    for edit in (*edits, plan.connect, plan.worker):
        if edit is None:
            continue
        if edit.mode == _APPEND:
            policy = policy.with_appended(edit.name, edit.tokens)
        elif edit.mode == _REPLACE:
            policy = policy.with_replaced(edit.name, edit.tokens)
        else:
            policy = policy.with_added(edit.name, edit.tokens)
    return policy, nonce_added


def _check_nonce(nonce: str) -> None:
    if not _BASE64_VALUE_RE.fullmatch(nonce):
        raise ValueError("nonce must be a CSP base64-value (see new_nonce())")


# =============================================================================================
# Public entry points
# =============================================================================================


@dataclass
class _Field:
    index: int
    enforced: bool
    segments: list[str]
    policies: list[Policy]
    plans: dict[int, _Plan] = field(default_factory=dict)


#: Distinct CSP header sets remembered per ``CspNeeds`` (per process; oldest dropped first).
MERGE_CACHE_SIZE = 256
# Stand-ins for nonce values while a merge is computed for the cache: base64 characters only
# (so they are valid nonces), random per process (so no header can contain one), and ending
# in "z" after the index (so no stand-in is a prefix of another).
_STAND_IN = "rmX" + secrets.token_hex(10)
_OURS = _STAND_IN + "oz"
# A nonce-source inside the raw text: every occurrence is renamed consistently, so the merge of
# the renamed text, renamed back, is the merge of the text (the merge depends on nonce values
# only through their equality).
_NONCE_IN_TEXT_RE = re.compile(rf"('nonce-)({_BASE64_VALUE})(?=')", re.IGNORECASE)
_CSP_NAME_LENGTHS = (len(CSP_HEADER), len(CSP_REPORT_ONLY_HEADER))


@dataclass(frozen=True)
class _CachedMerge:
    """A merge computed with stand-in nonces; ``values[i]`` is the new text of the i-th CSP
    field (None: unchanged); ``nonce`` is ``_OURS`` or an app nonce's stand-in."""

    feasible: bool
    reason: str | None
    nonce: str
    use_web_worker: bool
    trusted_types: bool
    changed: bool
    nonce_in_headers: bool
    values: tuple[str | None, ...]


def merge_response_csp(
    headers: Sequence[tuple[str, str]],
    needs: CspNeeds,
    nonce: str,
    *,
    app_nonce: str | None = None,
) -> CspResult:
    """Merge our needs into every CSP and CSP-Report-Only field of ``headers``.

    Same contract as :func:`merge_response_csp_uncached`, which it answers from a per-process
    cache keyed by the policies' text with every nonce value replaced by a stand-in (apps send
    a fresh nonce per response, so the raw text never repeats): the merge is computed once per
    distinct policy set and app-nonce position, and the nonces are put back per response. A
    page without any CSP field costs one pass over the header names.
    """
    _check_nonce(nonce)
    original = tuple(headers)
    positions: list[int] = []
    for index, (name, _) in enumerate(original):
        if len(name) in _CSP_NAME_LENGTHS and name.lower() in (CSP_HEADER, CSP_REPORT_ONLY_HEADER):
            positions.append(index)
    if not positions:
        # What the full merge returns for no policy at all (G1): nothing to change.
        return frozen_new(
            CspResult,
            feasible=True,
            reason=None,
            headers=original,
            nonce=nonce,
            use_web_worker=needs.use_worker,
            trusted_types=False,
            changed=False,
            nonce_in_headers=False,
        )
    values: list[str] = []  # the stand-in ("canonical") text of each CSP field
    stand_ins: dict[str, str] = {}  # nonce value -> stand-in
    key_fields: list[tuple[str, str]] = []
    for index in positions:
        name, value = original[index]
        canonical = value
        if "nonce-" in value or "NONCE-" in value.upper():
            # [text, "'nonce-", value, text, ...]: every value becomes its stand-in; the
            # keyword keeps its case and the closing quote stays in the text that follows.
            parts = _NONCE_IN_TEXT_RE.split(value)
            for i in range(2, len(parts), 3):
                stand_in = stand_ins.get(parts[i])
                if stand_in is None:
                    stand_in = stand_ins[parts[i]] = f"{_STAND_IN}{len(stand_ins)}z"
                parts[i] = stand_in
            canonical = "".join(parts)
        values.append(canonical)
        key_fields.append((name.lower(), canonical))
    app_key = stand_ins.get(app_nonce) if app_nonce is not None else None
    cache = needs.merge_cache
    key = (tuple(key_fields), app_key)
    entry = cache.get(key)
    if entry is None:
        canonical_headers = [(original[i][0], v) for i, v in zip(positions, values, strict=True)]
        result = merge_response_csp_uncached(canonical_headers, needs, _OURS, app_nonce=app_key)
        entry = _CachedMerge(
            feasible=result.feasible,
            reason=result.reason,
            nonce=result.nonce,
            use_web_worker=result.use_web_worker,
            trusted_types=result.trusted_types,
            changed=result.changed,
            nonce_in_headers=result.nonce_in_headers,
            values=tuple(
                new if new != old else None
                for (_, new), old in zip(result.headers, values, strict=True)
            ),
        )
        if len(cache) >= MERGE_CACHE_SIZE:
            # The oldest entry (insertion order); another thread may change the cache
            # meanwhile, and then this one skips evicting.
            with contextlib.suppress(RuntimeError):
                cache.pop(next(iter(cache), key), None)
        cache[key] = entry
    back = {stand_in: value for value, stand_in in stand_ins.items()}
    back[_OURS] = nonce
    chosen = back[entry.nonce]
    headers_out = original
    if entry.changed:
        new_headers = list(original)
        for index, new in zip(positions, entry.values, strict=True):
            if new is not None:
                for stand_in, value in back.items():
                    new = new.replace(stand_in, value)
                new_headers[index] = (original[index][0], new)
        headers_out = tuple(new_headers)
    return frozen_new(
        CspResult,
        feasible=entry.feasible,
        reason=entry.reason,
        headers=headers_out,
        nonce=chosen,
        use_web_worker=entry.use_web_worker,
        trusted_types=entry.trusted_types,
        changed=entry.changed,
        nonce_in_headers=entry.nonce_in_headers,
    )


def merge_response_csp_uncached(
    headers: Sequence[tuple[str, str]],
    needs: CspNeeds,
    nonce: str,
    *,
    app_nonce: str | None = None,
) -> CspResult:
    """Merge our needs into every CSP and CSP-Report-Only field of ``headers``.

    ``headers`` is the full response header list (names case-insensitive, values decoded from
    latin-1). ``nonce`` is a fresh :func:`new_nonce`; ``app_nonce`` is an optional nonce a
    framework adapter saw the app generate for this response: it is used only if every policy
    that needs a nonce already carries it (N2), and never comes from a request header.

    The returned ``headers`` hold the same fields in the same order, CSP values rewritten in
    place; when nothing changes it is ``tuple(headers)`` with the original pair objects. When
    ``feasible`` is False nothing is changed and the adapter must not inject (G5). Raises only
    ``ValueError`` for a ``nonce`` that is not a base64-value; never for header content.
    """
    _check_nonce(nonce)
    original = tuple(headers)
    fields: list[_Field] = []
    for index, (name, value) in enumerate(original):
        lowered = name.lower()
        if lowered not in (CSP_HEADER, CSP_REPORT_ONLY_HEADER):
            continue
        segments = _split_policies(value)
        fields.append(
            _Field(index, lowered == CSP_HEADER, segments, [Policy.parse(s) for s in segments])
        )
    enforced = [p for f in fields if f.enforced for p in f.policies if not p.is_empty]
    trusted_types = any(_requires_trusted_types(p) for p in enforced)  # T1
    use_web_worker = (
        needs.use_worker
        and (needs.worker_under_tt or not trusted_types)
        and not any(_forbids_workers(p) for p in enforced)  # W3
    )
    ctx = _Context(needs=needs, origin=needs.public_origin, use_web_worker=use_web_worker)

    def unchanged(reason: str | None) -> CspResult:
        return CspResult(
            feasible=reason is None,
            reason=reason,
            headers=original,
            nonce=nonce,
            use_web_worker=use_web_worker,
            trusted_types=trusted_types,
            changed=False,
        )

    sandbox = _sandbox_reason(enforced)
    if sandbox is not None:
        return unchanged(sandbox)  # F1 (and the opaque-origin case), before any merge
    all_plans: list[_Plan] = []
    for f in fields:
        if not f.enforced and not needs.merge_report_only:
            continue  # R2 off: report-only fields stay as they are
        for position, policy in enumerate(f.policies):
            if policy.is_empty:
                continue  # A1: discarded by browsers; leave it untouched
            plan = _plan(policy, ctx, enforced=f.enforced)
            if plan.error is not None:
                # G5 / F: all or nothing. Only enforced policies yield errors (R1: _plan
                # never fails a report-only policy; it leaves its explicit-none parts alone).
                return unchanged(plan.error)
            f.plans[position] = plan
            all_plans.append(plan)

    chosen = _choose_nonce(all_plans, nonce, app_nonce)
    nonce_in_headers = False
    new_headers = list(original)
    changed = False
    for f in fields:
        if not f.plans:
            continue
        serialized: list[str] = []
        field_changed = False
        for position, (segment, policy) in enumerate(zip(f.segments, f.policies, strict=True)):
            policy_plan = f.plans.get(position)
            if policy_plan is not None:
                policy, added = _apply(policy, policy_plan, chosen)
                nonce_in_headers = nonce_in_headers or added
                field_changed = field_changed or policy.modified
            serialized.append(policy.serialize() if policy.modified else segment)
        if field_changed:
            # Z1: comma-joined policies re-joined with ", " (blank segments carry no policy).
            name = original[f.index][0]
            new_headers[f.index] = (name, ", ".join(s for s in serialized if s))
            changed = True
    if not changed:
        return CspResult(True, None, original, chosen, use_web_worker, trusted_types, False)
    return CspResult(
        feasible=True,
        reason=None,
        headers=tuple(new_headers),
        nonce=chosen,
        use_web_worker=use_web_worker,
        trusted_types=trusted_types,
        changed=True,
        nonce_in_headers=nonce_in_headers,
    )


def merge_meta_csp(content: str, needs: CspNeeds, nonce: str) -> MetaCspResult:
    """Merge our needs into one ``<meta http-equiv="Content-Security-Policy">`` policy (M1-M3).

    ``content`` is the decoded ``content`` attribute; the caller re-encodes the returned
    ``content`` as an attribute value (M2) and places our tags after the meta (M3). A meta
    policy is enforced; ``sandbox`` is ignored there and report-only does not exist (CSP3
    §3.3). Pass the nonce that :func:`merge_response_csp` chose so header and meta agree.
    ``use_web_worker``/``trusted_types`` describe this policy only: the adapter combines them
    with the header result (worker off if any says off; TT on if any says on).
    """
    _check_nonce(nonce)
    policy = Policy.parse(content)
    trusted_types = _requires_trusted_types(policy)
    use_web_worker = (
        needs.use_worker
        and (needs.worker_under_tt or not trusted_types)
        and not _forbids_workers(policy)
    )
    if "," in content and parse_policy_list(content):
        # Chromium splits a meta policy on commas, the HTML/CSP3 algorithm does not: the two
        # readings disagree on what is enforced, so do not guess.
        return MetaCspResult(
            False, REASON_META_AMBIGUOUS, content, use_web_worker, trusted_types, False
        )
    if policy.is_empty:
        return MetaCspResult(True, None, content, use_web_worker, trusted_types, False)
    ctx = _Context(needs=needs, origin=needs.public_origin, use_web_worker=use_web_worker)
    plan = _plan(policy, ctx, enforced=True)
    if plan.error is not None:
        return MetaCspResult(False, plan.error, content, use_web_worker, trusted_types, False)
    merged, _ = _apply(policy, plan, nonce)
    if not merged.modified:
        return MetaCspResult(True, None, content, use_web_worker, trusted_types, False)
    return MetaCspResult(True, None, merged.serialize(), use_web_worker, trusted_types, True)
