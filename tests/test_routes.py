from __future__ import annotations

import re

import pytest

from replay_middleware import RequestInfo
from replay_middleware.routes import RouteRules, glob_to_regex

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
        {"source": glob_to_regex("/admin/*"), "flags": ""},
        {"source": "^/x(?<id>[0-9]+)", "flags": "i"},
    ]
    assert len(rules.browser_warnings) == 2


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
        "console.log(JSON.stringify(s.map(x=>p.map(y=>new RegExp(x).test(y)))))"
    )
    out = subprocess.run(
        [node, "-e", script], capture_output=True, text=True, check=True, timeout=30
    )
    expected = [[re.search(src, path) is not None for path in paths] for src in sources]
    assert json.loads(out.stdout) == expected
