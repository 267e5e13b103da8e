"""Property tests of the route rules (issue 8, item 4): every character is alike.

Paths are generated with control characters (C0, DEL, C1, U+2028/2029), literal percent
sequences (what a double-encoded request decodes to), non-ASCII characters (astral ones too)
and slashes, under every rule kind: a glob without wildcards (a segment prefix), ``*``, ``**``,
``?``, a class, an anchored and a searched compiled regex, and a predicate. Checked:

* the server excludes every path a restricted rule covers, and the decision carries no
  replay id; a prefix glob still stops at a segment boundary;
* through the ASGI and WSGI adapters, from the percent-encoded request target: no snippet, no
  ``Set-Cookie``, ``get_replay_properties() == {}``;
* the real ``static/loader.js``, run under node, takes the same decision on the same paths as
  Python does for the exported rules (one node process per batch of paths).
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import string
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from werkzeug.test import Client

from replay_middleware import (
    ReplayConfig,
    ReplayMiddleware,
    ReplayWSGIMiddleware,
    RequestInfo,
    get_replay_properties,
)
from replay_middleware.asgi import Message, Receive, Scope, Send
from replay_middleware.config import RouteRule
from replay_middleware.decision import decide
from replay_middleware.identity import Identity
from replay_middleware.routes import RouteRules

LOADER = Path(__file__).resolve().parent.parent / "static" / "loader.js"
REQ = RequestInfo.from_pairs("GET", "/", [])
IDENTITY = Identity("dev", 1735689600000, 1735689600000)
PAGE = b"<!DOCTYPE html><html><head><title>t</title></head><body>hi</body></html>"

# -- alphabets --------------------------------------------------------------------------------

CONTROL = [chr(c) for c in (*range(0x20), *range(0x7F, 0xA0), 0x2028, 0x2029)]
NON_ASCII = ["é", "ß", "İ", "中", "😀", "\u00a0", "\ufeff", "\u0301", "\U0001f1eb"]
PERCENT = ["%", "%0A", "%0D%0A", "%00", "%2F", "%25", "%E2%80%A8"]
ASCII = list(string.ascii_letters + string.digits + "-._~!$&'()*+,;=:@ ")

CONTROL_CHAR = st.sampled_from(CONTROL)
ANY_CHAR = st.one_of(
    st.sampled_from(ASCII),
    CONTROL_CHAR,
    st.sampled_from(NON_ASCII),
    st.characters(codec="utf-8", exclude_categories=["Cs"]),
)
#: Anything after a restricted prefix: slashes, controls, non-ASCII, literal "%0A".
REST = st.lists(st.one_of(ANY_CHAR, st.just("/"), st.sampled_from(PERCENT)), max_size=12).map(
    "".join
)
#: A path segment of a rule: no "/", no glob wildcards, no controls.
SEGMENT = st.text(alphabet=string.ascii_lowercase + "é中😀-_.~", min_size=1, max_size=6)
BASE = st.lists(SEGMENT, min_size=1, max_size=3).map(lambda s: "/" + "/".join(s))
#: What may follow a segment-prefix rule: nothing, "/" and anything, a control and anything.
PREFIX_TAIL = st.one_of(
    st.just(""),
    REST.map(lambda r: "/" + r),
    st.tuples(CONTROL_CHAR, REST).map("".join),
)
#: A non-control, non-"/" character: the segment goes on, the prefix rule does not apply.
SEGMENT_CHAR = st.one_of(
    st.sampled_from([c for c in ASCII if c != "/"]), st.sampled_from(NON_ASCII)
)


def _under(base: str) -> Callable[[str, RequestInfo], bool]:
    def predicate(path: str, request: RequestInfo) -> bool:
        return path == base or path.startswith(base + "/")

    return predicate


@st.composite
def covered(draw: st.DrawFn) -> tuple[str, RouteRule, str]:
    """(kind, rule, a path the rule restricts)."""
    base = draw(BASE)
    kind = draw(
        st.sampled_from(
            ["prefix", "star", "double-star", "question", "class", "regex", "searched", "predicate"]
        )
    )
    rest = draw(REST)
    if kind == "prefix":
        return kind, base, base + draw(PREFIX_TAIL)
    if kind in ("star", "double-star"):
        return kind, base + ("/*" if kind == "star" else "/**"), base + "/" + rest
    if kind == "question":
        one = draw(st.one_of(ANY_CHAR.filter(lambda c: c != "/")))
        tail = draw(st.one_of(st.just(""), st.tuples(CONTROL_CHAR, REST).map("".join)))
        return kind, base + "/?", base + "/" + one + tail
    if kind == "class":
        return kind, base + "/[a-c]*", base + "/" + draw(st.sampled_from("abc")) + rest
    if kind == "regex":
        return kind, re.compile("^" + re.escape(base) + "(/.*)?$"), base + draw(PREFIX_TAIL)
    if kind == "searched":
        return kind, re.compile(re.escape(base) + "/"), "/x" + base + "/" + rest
    return kind, _under(base), base + draw(PREFIX_TAIL)


# -- the server -------------------------------------------------------------------------------


@settings(max_examples=600, deadline=None)
@given(case=covered())
def test_restricted_paths_are_excluded_whatever_their_characters(
    case: tuple[str, RouteRule, str],
) -> None:
    kind, rule, path = case
    assert RouteRules((rule,), None).excluded(path, REQ) == "excluded_route", (kind, path)
    # The same rule as an allow-list admits the path.
    assert RouteRules((), (rule,)).excluded(path, REQ) is None, (kind, path)
    config = ReplayConfig(sample_rate=1, exclude=(rule,))
    request = RequestInfo.from_pairs("GET", path, [])
    ctx = decide(request, IDENTITY, config, RouteRules(config.exclude, config.include))
    assert (ctx.reason, ctx.sampled, ctx.properties()) == ("excluded_route", False, {})


@settings(max_examples=300, deadline=None)
@given(base=BASE, char=SEGMENT_CHAR, rest=REST)
def test_a_prefix_glob_stops_at_the_segment_boundary(base: str, char: str, rest: str) -> None:
    # A control character ends the path for the rules; any other character continues the
    # segment, so "/account/billingé…" is a sibling, not inside "/account/billing".
    assert RouteRules((base,), None).excluded(base + char + rest, REQ) is None


# -- the adapters, from the percent-encoded request target -------------------------------------


def _target(path: str) -> str:
    """The request target a browser sends for ``path``: UTF-8, percent-encoded."""
    return quote(path, safe="/")


ADAPTER_CASE = covered().filter(lambda case: case[0] != "predicate")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=ADAPTER_CASE)
def test_asgi_restricted_paths_get_nothing(case: tuple[str, RouteRule, str]) -> None:
    kind, rule, path = case
    seen: list[tuple[str, dict[str, str]]] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append((scope["path"], get_replay_properties()))
        headers = [(b"content-type", b"text/html; charset=utf-8")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": PAGE})

    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    target = _target(path)
    scope: Scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,  # ASGI servers decode the target (uvicorn: unquote of raw_path)
        "raw_path": target.encode("ascii"),
        "query_string": b"",
        "headers": [(b"host", b"t")],
        "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 80),
    }
    middleware = ReplayMiddleware(app, config=ReplayConfig(sample_rate=1, exclude=(rule,)))
    asyncio.run(middleware(scope, receive, send))
    assert seen == [(path, {})], kind
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    assert body == PAGE
    assert all(name != b"set-cookie" for name, _ in sent[0]["headers"])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=ADAPTER_CASE)
def test_wsgi_restricted_paths_get_nothing(case: tuple[str, RouteRule, str]) -> None:
    kind, rule, path = case
    seen: list[dict[str, str]] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        seen.append(get_replay_properties())
        start_response("200 OK", [("Content-Type", "text/html; charset=utf-8")])
        return [PAGE]

    middleware = ReplayWSGIMiddleware(app, ReplayConfig(sample_rate=1, exclude=(rule,)))
    response = Client(middleware).get(_target(path))
    assert seen == [{}], kind
    assert response.data == PAGE
    assert "set-cookie" not in response.headers


# -- the browser loader, under node ------------------------------------------------------------

# Runs static/loader.js once per case in a fresh vm context with just enough of a page for it
# to start: inline ids that are fresh, record: true. The loader creates the SDK's <script> tag
# exactly when the route rules allow recording on location.pathname.
NODE_HARNESS = r"""
const vm = require("vm");
const input = JSON.parse(require("fs").readFileSync(0, "utf8"));
const script = new vm.Script(input.loader);
const out = input.cases.map(({ routes, pathname }) => {
  let started = false;
  const warnings = [];
  const noop = () => {};
  const cfg = {
    v: 1, apiKey: "k", record: true, optOutCookie: "optout", options: {}, endpoints: null,
    ids: { deviceId: "d", sessionId: 1, lastActivity: Date.now() },
    session: { url: "/_replay/session", cookie: "replay_id", timeoutMs: 1800000 },
    sdk: { url: "/_replay/sdk/x.js", static: false }, routes,
  };
  const tag = { addEventListener: noop };
  const document = {
    currentScript: null, cookie: "", readyState: "loading", visibilityState: "visible",
    getElementById: (id) => (id === "replay-middleware-config" ? { textContent: JSON.stringify(cfg) } : null),
    createElement: () => { started = true; return tag; },
    head: { appendChild: noop }, documentElement: { appendChild: noop }, addEventListener: noop,
  };
  const context = {
    window: { addEventListener: noop }, document, history: {}, URL,
    location: { pathname, href: "http://t" + pathname },
    console: { warn: (...a) => warnings.push(a.map(String).join(" ")) },
  };
  script.runInContext(vm.createContext(context));
  return { started, warnings };
});
process.stdout.write(JSON.stringify(out));
"""


def run_loader(cases: Sequence[tuple[dict[str, Any], str]]) -> list[dict[str, Any]]:
    node = shutil.which("node")
    assert node, "node is required (run make setup)"
    payload = {
        "loader": LOADER.read_text(),
        "cases": [{"routes": routes, "pathname": pathname} for routes, pathname in cases],
    }
    out = subprocess.run(
        [node, "-e", NODE_HARNESS],
        input=json.dumps(payload),
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    result: list[dict[str, Any]] = json.loads(out.stdout)
    return result


def test_node_harness_sees_the_loader_start_and_stop() -> None:
    routes = RouteRules(("/admin",), None).to_js()
    assert [r["started"] for r in run_loader([(routes, "/"), (routes, "/admin/x")])] == [
        True,
        False,
    ]


#: Regexes whose meaning does not depend on how an engine counts characters (UTF-16 units in
#: JavaScript without "u", code points in Python) or on Unicode classes (\s, \w, \d, case
#: folding), which the two engines define differently: docs/behaviour.md says so.
EXPORTABLE_REGEXES = [
    r"^/{base}(/.*)?$",
    r"\A/{base}/.*\Z",
    r"^/{base}/[^/]+/edit$",
    r"/{base}\.",
    r"(?P<area>/{base})/.",
    r"^/{base}\n$",
]


@st.composite
def exported_rule(draw: st.DrawFn) -> str | re.Pattern[str]:
    base = draw(SEGMENT)
    kind = draw(st.sampled_from(["prefix", "star", "question", "class", "regex"]))
    if kind == "prefix":
        return "/" + base
    if kind == "star":
        return "/" + base + "/*"
    if kind == "question":
        return "/" + base + "/?"
    if kind == "class":
        return "/" + base + "/[!a-c]*"
    template = draw(st.sampled_from(EXPORTABLE_REGEXES))
    return re.compile(template.replace("{base}", re.escape(base)))


LoaderCase = tuple[tuple[RouteRule, ...], tuple[RouteRule, ...] | None, str]


@st.composite
def loader_case(draw: st.DrawFn) -> LoaderCase:
    exclude = tuple(draw(st.lists(exported_rule(), min_size=1, max_size=3)))
    include = draw(st.none() | st.lists(exported_rule(), min_size=1, max_size=2).map(tuple))
    # Mostly paths near a rule (its literal text plus anything), sometimes anything at all.
    rules: list[str | re.Pattern[str]] = [*exclude, *(include or ())]
    near = draw(st.sampled_from(rules))
    text = near if isinstance(near, str) else near.pattern
    stem = "/" + "".join(ch for ch in text if ch.isalnum() or ch in "-_.~é中😀/").strip("/")
    path = draw(st.one_of(st.just(stem), REST.map(lambda r: "/" + r))) + draw(REST)
    if draw(st.booleans()):
        path = path.replace("/", "//", draw(st.integers(1, 3)))  # the server collapses these
    return exclude, include, path


def _loader_model(
    exclude: tuple[RouteRule, ...], include: tuple[RouteRule, ...] | None, pathname: str, path: str
) -> bool:
    """What loader.js decides, in Python: the rules on the raw and on the decoded path."""
    blocked = any(RouteRules(exclude, None).excluded(p, REQ) is not None for p in (pathname, path))
    allowed = include is None or any(
        RouteRules((), include).excluded(p, REQ) is None for p in (pathname, path)
    )
    return not blocked and allowed


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases=st.lists(loader_case(), min_size=60, max_size=60))
def test_loader_decides_like_python_for_exported_rules(cases: list[LoaderCase]) -> None:
    batch = []
    for exclude, include, path in cases:
        rules = RouteRules(exclude, include)
        assert rules.browser_warnings == ()  # every rule here runs in the browser
        batch.append((rules.to_js(), _target(path)))
    results = run_loader(batch)
    for (exclude, include, path), (_, pathname), result in zip(cases, batch, results, strict=True):
        assert result["warnings"] == [], result
        expected = _loader_model(exclude, include, pathname, path)
        assert result["started"] is expected, (exclude, include, path, pathname)
        if RouteRules(exclude, include).excluded(path, REQ) == "excluded_route":
            assert result["started"] is False  # never records where the server would not
