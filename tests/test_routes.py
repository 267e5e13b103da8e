from __future__ import annotations

import re

import pytest

from replay_middleware import RequestInfo
from replay_middleware.routes import PATH_END, RouteRules, glob_to_regex, path_forms

REQ = RequestInfo.from_pairs("GET", "/", [])


@pytest.mark.parametrize(
    ("glob", "path", "expected"),
    [
        pytest.param("/account/billing", "/account/billing", True, id="exact"),
        pytest.param("/account/billing", "/account/billing/", True, id="trailing-slash"),
        pytest.param("/account/billing", "/account/billing/invoices/7", True, id="subtree"),
        pytest.param("/account/billing", "/account/billingreport", False, id="segment-boundary"),
        pytest.param("/account/billing", "//account//billing", True, id="doubled-slashes"),
        pytest.param("/admin/*", "/admin/users/3", True, id="star-crosses-slash"),
        pytest.param("/admin/*", "/administrator", False, id="star-needs-prefix"),
        pytest.param("/files/?.txt", "/files/a.txt", True, id="question"),
        pytest.param("/files/?.txt", "/files/ab.txt", False, id="question-one-char"),
        pytest.param("/v[12]/*", "/v2/x", True, id="class"),
        pytest.param("/v[!12]/*", "/v2/x", False, id="negated-class"),
        pytest.param("/a.b", "/aXb", False, id="dot-is-literal"),
        pytest.param("/", "/anything", True, id="root-prefix"),
        # Every character alike (issue 8, item 4): "*" crosses newlines, "$" is the very end.
        pytest.param("/admin/*", "/admin/\nx", True, id="star-crosses-newline"),
        pytest.param("/admin/*", "/admin/\u2028", True, id="star-crosses-line-separator"),
        pytest.param("/account/billing", "/account/billing/\r\nx", True, id="crlf-below"),
        pytest.param("/files/?.txt", "/files/\n.txt", True, id="question-is-a-newline"),
        pytest.param("/v[!12]/*", "/v\n/x", True, id="negated-class-takes-newline"),
        # ... and a control character ends the path for the rules.
        pytest.param("/account/billing", "/account/billing\n", True, id="trailing-newline"),
        pytest.param("/account/billing", "/account/billing\r\n", True, id="trailing-crlf"),
        pytest.param("/account/billing", "/account/billing\x00.pdf", True, id="nul-cuts"),
        pytest.param("/account/billing", "/account/billing\x85x", True, id="c1-cuts"),
        pytest.param("/files/*.txt", "/files/a\x01b.txt\n", True, id="trailing-after-inner"),
        pytest.param("/account/billing", "/account/bil\nling", False, id="cut-elsewhere"),
        pytest.param("/account/billing", "/account/billing\xe9", False, id="non-ascii-no-cut"),
        pytest.param("/account/billing", "/account/billing\xa0", False, id="nbsp-no-cut"),
        pytest.param("/admin/*", "/admin\n/x", False, id="cut-before-the-slash"),
        pytest.param("/café/*", "/café/x", True, id="non-ascii-glob"),
        pytest.param("/a[&~]", "/a~", True, id="class-with-set-chars"),
        pytest.param("/a[]]", "/a]", True, id="class-with-bracket"),
        pytest.param("/a[^b]", "/a^", True, id="class-caret-is-literal"),
    ],
)
def test_globs(glob: str, path: str, expected: bool) -> None:
    rules = RouteRules((glob,), None)
    assert (rules.excluded(path, REQ) == "excluded_route") is expected


def test_regex_and_callable_rules() -> None:
    rules = RouteRules((re.compile(r"^/secret"), lambda path, req: path.endswith(".pdf")), None)
    assert rules.excluded("/secret/x", REQ) == "excluded_route"
    assert rules.excluded("/docs/a.pdf", REQ) == "excluded_route"
    assert rules.excluded("/docs/a.html", REQ) is None


@pytest.mark.parametrize(
    ("pattern", "path", "expected"),
    [
        pytest.param(re.compile("secret"), "/x/secret/y", True, id="searched-not-anchored"),
        pytest.param(re.compile(r"^/secret$"), "/secret", True, id="anchored"),
        pytest.param(re.compile(r"^/secret$"), "/secret/x", False, id="anchored-end"),
        pytest.param(re.compile(r"^/a/.*/b$"), "/a/\n/b", True, id="dot-takes-newline"),
        pytest.param(re.compile(r"^/a/.+$"), "/a/\nx", True, id="dot-plus-takes-newline"),
        pytest.param(re.compile(r"^/a/x$"), "/a/x\n", True, id="trailing-newline-cut"),
        pytest.param(re.compile(r"/x\Z"), "/a\x01/x\n", True, id="trailing-cut-after-inner"),
        pytest.param(re.compile(r"^/a\n$"), "/a\n", True, id="newline-then-end"),
        pytest.param(re.compile(r"^/a$"), "/a\x01b", True, id="dollar-before-a-control"),
        pytest.param(re.compile(r"^/a\Z"), "/a\u2028b", True, id="backslash-z-before-control"),
        pytest.param(re.compile(r"^/a$"), "/a\xa0", False, id="dollar-not-before-nbsp"),
        pytest.param(re.compile(r"[$]"), "/a$", True, id="dollar-in-class"),
        pytest.param(re.compile(r"\$"), "/a$", True, id="escaped-dollar"),
        pytest.param(re.compile(r"^/a(?#$)$"), "/a", True, id="comment"),
        pytest.param(re.compile("^/a # [ $ comment\n $", re.X), "/a\x00x", True, id="verbose"),
        pytest.param(re.compile("^/a # [ $ comment\n $", re.X), "/ab", False, id="verbose-end"),
        pytest.param(re.compile(r"^/b$", re.M), "/a\n/b", True, id="multiline-kept"),
        pytest.param(re.compile(r"^/b$"), "/a\n/b", False, id="no-multiline"),
    ],
)
def test_regex_rules_see_every_character_alike(
    pattern: re.Pattern[str], path: str, expected: bool
) -> None:
    rules = RouteRules((pattern,), None)
    assert (rules.excluded(path, REQ) == "excluded_route") is expected


def test_a_regex_the_rewrite_cannot_handle_is_kept_as_written(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import replay_middleware.routes as routes

    monkeypatch.setattr(routes, "_rewrite", lambda source, **kw: "(")
    rules = RouteRules((re.compile(r"^/a/.*$"),), None)
    assert rules.excluded("/a/\nx", REQ) == "excluded_route"  # re.DOTALL still added
    assert rules.excluded("/b", REQ) is None


@pytest.mark.parametrize(
    ("path", "forms"),
    [
        pytest.param("/a/b", ("/a/b",), id="plain"),
        pytest.param("//a///b", ("/a/b",), id="slashes"),
        pytest.param("/a\n", ("/a\n", "/a"), id="trailing"),
        pytest.param("/a\x00b\r\n", ("/a\x00b\r\n", "/a", "/a\x00b"), id="inner-and-trailing"),
        pytest.param("/a\u2029b", ("/a\u2029b", "/a"), id="paragraph-separator"),
        pytest.param("\n/a", ("\n/a",), id="leading-no-empty-form"),
        pytest.param("/a\x7f\x9f", ("/a\x7f\x9f", "/a"), id="del-c1"),
        pytest.param("/caf\xe9\xa0", ("/caf\xe9\xa0",), id="non-ascii-is-not-control"),
    ],
)
def test_path_forms(path: str, forms: tuple[str, ...]) -> None:
    assert path_forms(path) == forms


def test_predicates_see_each_form_until_one_matches() -> None:
    seen: list[str] = []

    def rule(path: str, req: RequestInfo) -> bool:
        seen.append(path)
        return path == "/account"

    assert RouteRules((rule,), None).excluded("/account\r\n", REQ) == "excluded_route"
    assert seen == ["/account\r\n", "/account"]


def test_raising_predicate_fails_closed() -> None:
    def broken(path: str, req: RequestInfo) -> bool:
        raise RuntimeError("boom")

    assert RouteRules((broken,), None).excluded("/x", REQ) == "excluded_route"
    assert RouteRules((), (broken,)).excluded("/x", REQ) == "not_included"


def test_include_list_restricts_to_matching_paths() -> None:
    rules = RouteRules((), ("/app/*",))
    assert rules.excluded("/app/home", REQ) is None
    assert rules.excluded("/marketing", REQ) == "not_included"


def test_js_export_has_globs_and_convertible_regexes_only() -> None:
    rules = RouteRules(
        (
            "/admin/*",
            re.compile(r"\A/x(?P<id>[0-9]+)", re.I),
            re.compile(r"(?x) a b"),
            lambda p, r: False,
        ),
        None,
    )
    exported = rules.to_js()["exclude"]
    assert exported == [
        {"source": glob_to_regex("/admin/*"), "flags": "u"},
        {"source": "^/x(?<id>[0-9]+)", "flags": "i"},
    ]
    assert len(rules.browser_warnings) == 2


@pytest.mark.parametrize(
    ("pattern", "source"),
    [
        pytest.param(re.compile(r"^/a/.*$"), r"^/a/[\s\S]*" + PATH_END, id="dot-any"),
        pytest.param(re.compile(r"^/a[.]\.$"), r"^/a[.]\." + PATH_END, id="dot-class-escaped"),
        pytest.param(re.compile(r"\A/a\Z"), "^/a" + PATH_END, id="python-anchors"),
        pytest.param(re.compile(r"^/a$", re.M), "^/a$", id="multiline-dollar-kept"),
        pytest.param(re.compile(r"[$]\$"), r"[$]\$", id="dollar-in-class-or-escaped"),
        pytest.param(re.compile(r"\\A"), r"\\A", id="escaped-backslash-then-A"),
        pytest.param(re.compile(r"[]a]"), r"[\]a]", id="leading-bracket-in-class"),
        pytest.param(re.compile(r"[^]a]"), r"[^\]a]", id="negated-leading-bracket"),
        pytest.param(re.compile(r"(?P<n>x)"), "(?<n>x)", id="named-group"),
        pytest.param(re.compile(r"[(?P<]"), "[(?P<]", id="named-group-spelling-in-class"),
    ],
)
def test_regex_export_makes_every_character_alike(pattern: re.Pattern[str], source: str) -> None:
    [exported] = RouteRules((pattern,), None).to_js()["exclude"]
    assert exported["source"] == source


def test_exported_regex_sources_behave_like_python_under_node(
    tmp_path: pytest.TempPathFactory,
) -> None:
    import json
    import shutil
    import subprocess

    node = shutil.which("node")
    assert node, "node is required (run make setup)"
    globs = ["/account/billing", "/admin/*", "/files/?.txt", "/v[!12]/*", "/a.b(c)+"]
    paths = [
        "/account/billing",
        "/account/billing/x",
        "/account/billingx",
        "/admin/a/b",
        "/files/a.txt",
        "/files/ab.txt",
        "/v3/x",
        "/v1/x",
        "/a.b(c)+",
        "/aXb(c)",
    ]
    sources = [glob_to_regex(g) for g in globs]
    script = (
        "const s=" + json.dumps(sources) + ",p=" + json.dumps(paths) + ";"
        "console.log(JSON.stringify(s.map(x=>p.map(y=>new RegExp(x, 'u').test(y)))))"
    )
    out = subprocess.run(
        [node, "-e", script], capture_output=True, text=True, check=True, timeout=30
    )
    expected = [[re.search(src, path) is not None for path in paths] for src in sources]
    assert json.loads(out.stdout) == expected
