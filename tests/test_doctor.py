"""``replay-middleware doctor``: the pure checks on plain values, then the command end to end
against real servers on 127.0.0.1 (the three examples, a page without the middleware, pages
with broken CSPs)."""

from __future__ import annotations

import base64
import hashlib
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from replay_middleware import ReplayConfig, ReplayWSGIMiddleware
from replay_middleware.doctor import (
    Check,
    Snippet,
    amp_cookie_check,
    asset_check,
    config_checks,
    cookie_check,
    csp_checks,
    load_app_config,
    main,
    remote_config_check,
    sampling_checks,
    snippet_checks,
    sri_check,
)

ROOT = Path(__file__).resolve().parent.parent
WAIT_S = 10.0

DATA = {
    "v": 1,
    "apiKey": "local",
    "sdk": {"url": "/_replay/sdk/1.51.6.js", "integrity": "sha384-x", "static": False},
    "session": {"url": "/_replay/session", "cookie": "replay_id", "timeoutMs": 1800000},
    "ids": {"deviceId": "d", "sessionId": 1700000000000, "lastActivity": 1700000000000},
    "record": True,
    "endpoints": {"track": "/_replay/track", "config": "/_replay/config"},
    "options": {"sampleRate": 1, "serverZone": "US"},
}
LOADER = "/_replay/loader-0123456789abcdef.js"
NONCE = "abcdefghijklmnop"
SNIPPET = Snippet(DATA, LOADER, NONCE)
ORIGIN = "http://127.0.0.1:8000"


def page(head: str = "", body: str = "") -> str:
    return f"<!DOCTYPE html><html><head><title>t</title>{head}</head><body>{body}</body></html>"


def snippet_html(data: dict[str, Any] = DATA) -> str:
    return (
        f'<script type="application/json" id="replay-middleware-config">{json.dumps(data)}</script>'
        f'<script async src="{LOADER}" nonce="{NONCE}" id="replay-middleware-loader"></script>'
    )


def statuses(checks: list[Check], name: str) -> list[str]:
    return [c.status for c in checks if c.name == name]


# -- the snippet ---------------------------------------------------------------------------------


def test_snippet_in_head_once_is_ok() -> None:
    checks, snippet, metas = snippet_checks(page(snippet_html()), "in_sample")
    assert statuses(checks, "snippet") == ["ok"]
    assert snippet is not None and snippet.nonce == NONCE and snippet.loader_src == LOADER
    assert snippet.data["apiKey"] == "local" and metas == []


def test_snippet_twice_fails() -> None:
    checks, snippet, _ = snippet_checks(page(snippet_html() + snippet_html()), None)
    assert statuses(checks, "snippet") == ["fail"] and snippet is None


def test_snippet_in_body_fails() -> None:
    checks, _, _ = snippet_checks(page(body=snippet_html()), None)
    assert "fail" in statuses(checks, "snippet")


@pytest.mark.parametrize(
    ("decision", "status"),
    [
        pytest.param(None, "fail", id="no-middleware"),
        pytest.param("not_in_sample", "warn", id="not-in-sample"),
        pytest.param("excluded_route", "warn", id="excluded"),
        pytest.param("csp_script_none", "fail", id="csp"),
    ],
)
def test_no_snippet_says_why(decision: str | None, status: str) -> None:
    checks, snippet, _ = snippet_checks(page(), decision)
    assert snippet is None and statuses(checks, "snippet") == [status]
    if decision:
        assert decision in checks[0].message


# -- CSP ----------------------------------------------------------------------------------------


def csp(
    policy: str, *, header: str = "content-security-policy", data: Snippet = SNIPPET
) -> list[Check]:
    return csp_checks([(header, policy)], [], data, origin=ORIGIN)


@pytest.mark.parametrize(
    ("policy", "status", "words"),
    [
        pytest.param(f"script-src 'nonce-{NONCE}'; worker-src blob:", "ok", "", id="nonce"),
        pytest.param(
            "script-src 'self'; worker-src blob:; connect-src 'self'", "ok", "", id="self"
        ),
        pytest.param("script-src https://cdn.example", "fail", "loader", id="no-nonce-no-self"),
        pytest.param(
            f"script-src 'nonce-{NONCE}'; worker-src blob:; connect-src 'none'",
            "fail",
            "connect-src blocks /_replay/track",
            id="connect-none",
        ),
        pytest.param(
            f"script-src 'nonce-{NONCE}'; worker-src 'none'", "fail", "blob:", id="worker-none"
        ),
        pytest.param(
            f"script-src 'nonce-{NONCE}' 'strict-dynamic'",
            "warn",
            "strict-dynamic",
            id="strict-dynamic",
        ),
    ],
)
def test_csp_policies(policy: str, status: str, words: str) -> None:
    checks = csp(policy)
    assert statuses(checks, "csp") == [status]
    assert words in checks[0].message


def test_worker_none_is_fine_with_use_web_worker_false() -> None:
    data = {**DATA, "options": {**DATA["options"], "useWebWorker": False}}
    checks = csp(
        f"script-src 'nonce-{NONCE}'; worker-src 'none'", data=Snippet(data, LOADER, NONCE)
    )
    assert statuses(checks, "csp") == ["ok"]


def test_report_only_policy_warns() -> None:
    checks = csp("script-src 'none'", header="content-security-policy-report-only")
    assert statuses(checks, "csp") == ["warn"] and "report-only" in checks[0].message


def test_each_comma_separated_policy_is_checked() -> None:
    checks = csp(f"script-src 'nonce-{NONCE}'; worker-src blob:, connect-src 'none'")
    assert statuses(checks, "csp") == ["ok", "fail"]


def test_meta_policy_blocking_fails() -> None:
    html = page(
        '<meta http-equiv="Content-Security-Policy" content="script-src \'none\'">' + snippet_html()
    )
    _, snippet, metas = snippet_checks(html, None)
    assert snippet is not None and metas == ["script-src 'none'"]
    checks = csp_checks([], metas, snippet, origin=ORIGIN)
    assert statuses(checks, "csp") == ["fail"] and "<meta>" in checks[0].message


def test_no_policy_is_ok() -> None:
    assert statuses(csp_checks([], [], SNIPPET, origin=ORIGIN), "csp") == ["ok"]


# -- endpoints, cookie, sampling, identity --------------------------------------------------


def test_asset_check() -> None:
    js = [("content-type", "text/javascript"), ("cache-control", "public, immutable")]
    assert asset_check("sdk", 200, js, media="javascript", cache="immutable").status == "ok"
    assert asset_check("sdk", 404, js, media="javascript", cache="immutable").status == "fail"
    assert (
        asset_check(
            "sdk", 200, [("content-type", "text/html")], media="javascript", cache="immutable"
        ).status
        == "fail"
    )
    assert asset_check("sdk", 200, js[:1], media="javascript", cache="immutable").status == "warn"


def test_sri_check() -> None:
    body = b"console.log(1)"
    sri = "sha384-" + base64.b64encode(hashlib.sha384(body).digest()).decode()
    assert sri_check(body, sri).status == "ok"
    assert sri_check(body + b" ", sri).status == "fail"


def test_remote_config_check() -> None:
    good = b'{"configs":{"sessionReplay":{}}}'
    assert remote_config_check(200, [], good).status == "ok"
    assert remote_config_check(403, [], good).status == "fail"
    assert remote_config_check(200, [], b'{"configs":{}}').status == "fail"
    assert remote_config_check(200, [], b"nope").status == "fail"


def test_cookie_check() -> None:
    assert (
        cookie_check(["replay_id=a; Path=/; SameSite=Lax"], "replay_id", https=False).status == "ok"
    )
    assert cookie_check(["replay_id=a; SameSite=Lax"], "replay_id", https=True).status == "fail"
    assert cookie_check(["replay_id=a; HttpOnly; Secure"], "replay_id", https=True).status == "fail"
    assert cookie_check([], "replay_id", https=False).status == "warn"


def test_sampling_checks() -> None:
    checks = sampling_checks(SNIPPET, "in_sample", 1700000000000)
    assert [c.status for c in checks] == ["ok", "ok", "ok"]
    assert "in the sample" in checks[-1].message
    zero = Snippet({**DATA, "record": False, "options": {"sampleRate": 0}}, LOADER, None)
    assert statuses(sampling_checks(zero, None, None), "sampling") == ["warn"]


def test_amp_cookie_mismatch_fails() -> None:
    data = {**DATA, "apiKey": "0123456789abcdef"}
    amp = base64.b64encode(
        json.dumps({"deviceId": "other", "sessionId": 1700000000001}).encode()
    ).decode()
    check = amp_cookie_check({"AMP_0123456789": amp}, Snippet(data, LOADER, None))
    assert check is not None and check.status == "fail"
    assert amp_cookie_check({}, Snippet(data, LOADER, None)) is None


def test_config_checks() -> None:
    names = {
        c.name: c.status for c in config_checks(ReplayConfig(sample_rate=0, prefix="/analytics"))
    }
    assert names["sample_rate"] == "fail" and names["adblock"] == "fail"
    names = {c.name: c.status for c in config_checks(ReplayConfig())}
    assert names["mode"] == "ok" and names["adblock"] == "ok" and names["secret_key"] == "warn"


@pytest.mark.parametrize(
    "spec",
    [
        pytest.param("examples.fastapi_app.app:app", id="fastapi"),
        pytest.param("examples.flask_app.app:app", id="flask"),
        pytest.param("examples.flask_app.app:create_app()", id="flask-factory"),
    ],
)
def test_load_app_config(spec: str) -> None:
    config = load_app_config(spec)
    assert config.local_mode and "/account/billing" in [str(r) for r in config.exclude]


def test_load_app_config_without_middleware() -> None:
    with pytest.raises(ValueError, match="no replay middleware"):
        load_app_config("tests.test_doctor:plain_wsgi")


# -- end to end -----------------------------------------------------------------------------


def plain_wsgi(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    headers = [("Content-Type", "text/html; charset=utf-8")]
    policy = environ.get("QUERY_STRING", "")
    if policy:
        headers.append(("Content-Security-Policy", policy.replace("%20", " ").replace("%27", "'")))
    start_response("200 OK", headers)
    return [page(body="<p>hello</p>").encode()]


@pytest.fixture
def wsgi_server() -> Iterator[Callable[[Any], str]]:
    from werkzeug.serving import make_server

    servers: list[Any] = []

    def serve(app: Any) -> str:
        server = make_server("127.0.0.1", 0, app, threaded=True)
        thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        thread.start()
        servers.append((server, thread, app))
        return f"http://127.0.0.1:{server.port}"

    yield serve
    for server, thread, app in servers:
        server.shutdown()
        thread.join(WAIT_S)
        server.server_close()
        middleware = app if hasattr(app, "engine") else None
        if middleware is None and "replay_middleware" in getattr(app, "extensions", {}):
            middleware = app.extensions["replay_middleware"].middleware_for(app)
        if middleware is not None:
            middleware.close()


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, list[dict[str, str]]]:
    code = main(["doctor", *argv, "--json", "--timeout", "5"])
    return code, json.loads(capsys.readouterr().out)


def assert_all_ok(checks: list[dict[str, str]]) -> None:
    bad = [c for c in checks if c["status"] == "fail"]
    assert not bad, bad
    names = {c["name"] for c in checks}
    assert {
        "snippet",
        "csp",
        "cookie",
        "loader",
        "sdk",
        "sdk_sri",
        "session",
        "remote_config",
    } <= names


def test_fastapi_example(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from examples.fastapi_app.app import create_app

    app = create_app(
        ReplayConfig(sample_rate=1, exclude=("/account/billing",), local_store_dir=str(tmp_path))
    )
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="auto"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + WAIT_S
        while not server.started:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        base = f"http://127.0.0.1:{port}"
        for path in ("/", "/csp/strict", "/csp/inline"):
            code, checks = run([base + path, "--session-id", "1700000000000"], capsys)
            assert code == 0, checks
            assert_all_ok(checks)
        code, checks = run([base + "/account/billing"], capsys)
        assert (
            code == 0 and checks[1]["status"] == "warn" and "excluded_route" in checks[1]["message"]
        )
    finally:
        server.should_exit = True
        thread.join(WAIT_S)
        sock.close()


def test_flask_example(
    tmp_path: Path, wsgi_server: Callable[[Any], str], capsys: pytest.CaptureFixture[str]
) -> None:
    from examples.flask_app.app import create_app

    app = create_app(
        ReplayConfig(sample_rate=1, exclude=("/account/billing",), local_store_dir=str(tmp_path))
    )
    base = wsgi_server(app)
    code, checks = run([base + "/"], capsys)
    assert code == 0, checks
    assert_all_ok(checks)


def test_django_example(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tests.e2e.django_server import DjangoServers

    servers = DjangoServers(tmp_path)
    try:
        base = servers.start(
            "gunicorn-wsgi",
            REPLAY_LOCAL_STORE_DIR=str(tmp_path / "store"),
            DJANGO_EXAMPLE_DB=str(tmp_path / "db.sqlite3"),
        )
        code, checks = run([base + "/"], capsys)
        assert code == 0, checks
        assert_all_ok(checks)
    finally:
        servers.stop_all()


def test_page_without_middleware_fails(
    wsgi_server: Callable[[Any], str], capsys: pytest.CaptureFixture[str]
) -> None:
    base = wsgi_server(plain_wsgi)
    code, checks = run([base + "/"], capsys)
    assert code == 1
    snippet = next(c for c in checks if c["name"] == "snippet")
    assert snippet["status"] == "fail" and "middleware installed" in snippet["fix"]
    assert set(checks[0]) == {"name", "status", "message", "fix"}


@pytest.mark.parametrize(
    ("policy", "reason"),
    [
        pytest.param("script-src%20%27none%27", "csp_script_none", id="script-none"),
        pytest.param("connect-src%20%27none%27", "csp_connect_none", id="connect-none"),
    ],
)
def test_broken_csp_through_the_middleware(
    policy: str,
    reason: str,
    tmp_path: Path,
    wsgi_server: Callable[[Any], str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    app = ReplayWSGIMiddleware(
        plain_wsgi, ReplayConfig(sample_rate=1, local_store_dir=str(tmp_path))
    )
    base = wsgi_server(app)
    code, checks = run([f"{base}/?{policy}"], capsys)
    assert code == 1
    snippet = next(c for c in checks if c["name"] == "snippet")
    assert snippet["status"] == "fail" and reason in snippet["message"]
    assert [c["status"] for c in checks if c["name"] == "csp"] == ["fail"]


def test_text_output_and_console_script(
    wsgi_server: Callable[[Any], str], capsys: pytest.CaptureFixture[str]
) -> None:
    base = wsgi_server(plain_wsgi)
    assert main(["doctor", base + "/", "--timeout", "5"]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith("FAIL snippet: ") and " — fix: " in line for line in lines)
    out = subprocess.run(
        [sys.executable, "-m", "replay_middleware", "doctor", "--json"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "REPLAY_SAMPLE_RATE": "0"},
    )
    assert out.returncode == 1, out.stderr
    assert {"name": "sample_rate", "status": "fail"}.items() <= next(
        c for c in json.loads(out.stdout) if c["name"] == "sample_rate"
    ).items()
    script = Path(sys.executable).parent / "replay-middleware"
    assert script.is_file()


@pytest.mark.parametrize(
    "args",
    [
        pytest.param([], id="DJANGO_SETTINGS_MODULE"),
        pytest.param(["--app", "examples.django_app.wsgi:application"], id="handler"),
    ],
)
def test_django_config(args: list[str]) -> None:
    # A subprocess: Django is configured once per process (tests/test_django.py has its own).
    out = subprocess.run(
        [sys.executable, "-m", "replay_middleware", "doctor", "--json", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        env={
            "PATH": "/usr/bin:/bin",
            "DJANGO_SETTINGS_MODULE": "examples.django_app.settings",
            "DJANGO_SECRET_KEY": "doctor-test-secret-0123456789",
        },
    )
    assert out.returncode == 0, out.stdout + out.stderr
    checks = {c["name"]: c for c in json.loads(out.stdout)}
    assert checks["mode"]["status"] == "ok" and checks["secret_key"]["status"] == "ok"


def test_zero_rate_with_an_api_key_only_warns() -> None:
    config = ReplayConfig(api_key="0123456789abcdef", secret_key="s" * 32, sample_rate=0)
    names = {c.name: c.status for c in config_checks(config)}
    assert names["sample_rate"] == "warn" and names["server_zone"] == "warn"


def redirect_wsgi(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    start_response("302 Found", [("Location", "http://doctor.invalid/elsewhere")])
    return [b""]


def test_off_origin_redirect_is_not_followed(
    wsgi_server: Callable[[Any], str], capsys: pytest.CaptureFixture[str]
) -> None:
    base = wsgi_server(redirect_wsgi)
    code, checks = run([base + "/"], capsys)
    assert code == 1
    assert checks[0]["status"] == "warn" and "not followed" in checks[0]["message"]
