"""The Flask extension, driven with Flask's own test client (STYLE 19)."""

from __future__ import annotations

import gc
import gzip
import json
import logging
import re
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask, Response, jsonify, render_template_string, request
from flask_talisman import Talisman  # type: ignore[import-untyped]

from examples.flask_app.app import create_app as create_example
from replay_middleware import ReplayConfig, current_replay, get_replay_properties
from replay_middleware.flask import SessionReplay
from replay_middleware.identity import IdentityCodec, derive_secret_key

DATA_BLOCK = '<script type="application/json" id="replay-middleware-config">'
PAGE = "<!DOCTYPE html><html><head><title>t</title>{head}</head><body><p>hi</p></body></html>"
MANUAL = "{{ replay_snippet() }}"
STRICT = {"default-src": "'self'", "script-src": "'strict-dynamic'"}

AppFactory = Callable[..., Flask]


def tag_nonce(html: str) -> str:
    [nonce] = re.findall(r'nonce="([^"]+)" id="replay-middleware-loader"', html)
    return str(nonce)


def policy(response: Any) -> dict[str, str]:
    """The response's one enforced CSP as a directive → value map."""
    [header] = response.headers.getlist("Content-Security-Policy")
    parts = (p.strip().partition(" ") for p in header.split(";") if p.strip())
    return {name: value for name, _, value in parts}


@pytest.fixture
def make_app(tmp_path: Path) -> Iterator[AppFactory]:
    """``make_app(*, config=None, extension=True, talisman=False, **app_config) -> Flask``.

    The app's pages: ``/`` (auto injection), ``/manual`` (the Jinja global), ``/twice`` (the
    global called twice), ``/account/billing`` and ``/account/manual`` (excluded), ``/api`` (JSON), ``/whoami`` (JSON
    of ``current_replay()``). With ``talisman=True`` flask-talisman sets a strict nonce CSP
    on every page. Every middleware built is closed at teardown.
    """
    built: list[tuple[SessionReplay, Flask]] = []

    def build(
        *,
        config: ReplayConfig | None = None,
        extension: bool = True,
        talisman: bool = False,
        **app_config: Any,
    ) -> Flask:
        app = Flask(__name__)
        app.config.update(
            {"REPLAY_LOCAL_STORE_DIR": str(tmp_path), "REPLAY_EXCLUDE": ["/account/*"]}
        )
        app.config.update(app_config)
        if talisman:
            Talisman(
                app,
                content_security_policy=STRICT,
                content_security_policy_nonce_in=["script-src"],
                force_https=False,
            )

        @app.get("/")
        def home() -> str:
            return PAGE.format(head="")

        @app.get("/manual")
        def manual() -> str:
            return render_template_string(PAGE.format(head=MANUAL))

        @app.get("/twice")
        def twice() -> str:
            return render_template_string(PAGE.format(head=MANUAL + MANUAL))

        @app.get("/account/billing")
        def billing() -> str:
            return PAGE.format(head="")

        @app.get("/account/manual")
        def billing_manual() -> str:
            return render_template_string(PAGE.format(head=MANUAL))

        @app.get("/api")
        def api() -> Response:
            return jsonify(ok=True)

        @app.get("/whoami")
        def whoami() -> Response:
            ctx = current_replay()
            assert ctx is not None
            return jsonify(reason=ctx.reason, session=ctx.session_id, device=ctx.device_id)

        if extension:
            replay = SessionReplay(app, config=config)
            built.append((replay, app))
        return app

    yield build
    for replay, app in built:
        replay.middleware_for(app).close()


def test_html_page_gets_one_snippet_before_head_end(make_app: AppFactory) -> None:
    response = make_app(REPLAY_SAMPLE_RATE=1).test_client().get("/")
    html = response.get_data(as_text=True)
    head, _, rest = html.partition("</head>")
    assert head.startswith("<!DOCTYPE html><html><head><title>t</title>" + DATA_BLOCK)
    assert head.endswith('id="replay-middleware-loader"></script>')
    assert rest == "<body><p>hi</p></body></html>"
    assert html.count(DATA_BLOCK) == 1
    assert response.headers["X-Replay-Decision"] == "in_sample"
    assert response.headers["Set-Cookie"].startswith("replay_id=")


def test_restricted_route_is_untouched(make_app: AppFactory) -> None:
    config = {"REPLAY_SAMPLE_RATE": 1, "REPLAY_DEBUG_HEADER": False}
    plain = make_app(extension=False, **config).test_client().get("/account/billing")
    response = make_app(**config).test_client().get("/account/billing")
    assert response.data == plain.data
    assert "replay-middleware" not in response.get_data(as_text=True)
    assert response.headers == plain.headers


@pytest.mark.parametrize(
    ("target", "routed"),
    [
        pytest.param("/account/%0Ax", True, id="newline"),
        pytest.param("/account/%0D%0A/x", False, id="crlf-404"),
        pytest.param("/account/billing%0A", False, id="trailing-newline-404"),
        pytest.param("/account/caf%C3%A9%E2%80%A8", True, id="non-ascii-line-separator"),
    ],
)
def test_restricted_area_with_encoded_control_characters_gets_nothing(
    make_app: AppFactory, target: str, routed: bool
) -> None:  # issue 8, item 4: REPLAY_EXCLUDE ["/account/*"] covers them all
    app = make_app(REPLAY_SAMPLE_RATE=1)
    seen: list[dict[str, str]] = []

    @app.get("/account/<path:rest>")
    def area(rest: str) -> str:
        seen.append(get_replay_properties())
        return PAGE.format(head="")

    client = app.test_client()
    assert DATA_BLOCK in client.get("/nowhere").get_data(as_text=True)  # a 404 page is injected
    response = client.get(target)
    assert DATA_BLOCK not in response.get_data(as_text=True)
    assert "Set-Cookie" not in response.headers
    assert seen == ([{}] if routed else [])  # werkzeug answers "/account/billing\n" 404


@pytest.mark.parametrize(
    ("headers", "per_user"),
    [
        pytest.param({"Cache-Control": 'max-age=600, private="Set-Cookie"'}, False, id="qualified"),
        pytest.param({"Cloudflare-CDN-Cache-Control": "max-age=600"}, False, id="cdn"),
        pytest.param({"Last-Modified": "Mon, 01 Jan 2024 00:00:00 GMT"}, False, id="heuristic"),
        pytest.param({"Cache-Control": "no-cache"}, True, id="per-user"),
    ],
)
def test_shared_cacheable_pages_get_the_user_agnostic_snippet(
    make_app: AppFactory, headers: dict[str, str], per_user: bool
) -> None:  # issue 8, item 5 (H10)
    app = make_app(REPLAY_SAMPLE_RATE=1)

    @app.get("/cached")
    def cached() -> Response:
        return Response(PAGE.format(head=""), mimetype="text/html", headers=headers)

    response = app.test_client().get("/cached")
    block = re.search(r'id="replay-middleware-config">(\{.*?\})</script>', response.text)
    assert block is not None and (json.loads(block.group(1))["ids"] is not None) is per_user
    assert ("Set-Cookie" in response.headers) is per_user
    assert ("Cookie" in response.headers.get("Vary", "")) is per_user


def test_opaque_origin_sandbox_is_not_injected(make_app: AppFactory) -> None:
    app = make_app(REPLAY_SAMPLE_RATE=1)  # issue 8, item 7

    @app.get("/sandboxed")
    def sandboxed() -> Response:
        csp = {"Content-Security-Policy": "sandbox allow-scripts"}
        return Response(PAGE.format(head=""), mimetype="text/html", headers=csp)

    response = app.test_client().get("/sandboxed")
    assert response.text == PAGE.format(head="")
    assert response.headers["X-Replay-Decision"] == "csp_sandbox_opaque"
    assert "Set-Cookie" not in response.headers


def test_json_route_is_untouched(make_app: AppFactory) -> None:
    config = {"REPLAY_SAMPLE_RATE": 1, "REPLAY_DEBUG_HEADER": False}
    plain = make_app(extension=False, **config).test_client().get("/api")
    response = make_app(**config).test_client().get("/api")
    assert (response.data, response.headers) == (plain.data, plain.headers)


def test_app_config_replay_keys_are_read(make_app: AppFactory, tmp_path: Path) -> None:
    app = make_app(REPLAY_SAMPLE_RATE="0.25", REPLAY_PREFIX="/_sr", OTHER_KEY="ignored")
    config = app.extensions["replay_middleware"].middleware_for(app).engine.config
    assert (config.sample_rate, config.prefix) == (0.25, "/_sr")
    assert config.local_store_dir == str(tmp_path)


def test_unsampled_app_config_injects_nothing(make_app: AppFactory) -> None:
    response = make_app(REPLAY_SAMPLE_RATE=0).test_client().get("/")
    assert response.get_data(as_text=True) == PAGE.format(head="")
    assert response.headers["X-Replay-Decision"] == "not_in_sample"


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        pytest.param("REPLAY_SAMPLE_RAT", 1, "'REPLAY_SAMPLE_RAT'", id="unknown-key"),
        pytest.param("REPLAY_SAMPLE_RATE", "2", "sample_rate", id="bad-value"),
    ],
)
def test_bad_replay_setting_raises_at_init(
    make_app: AppFactory, key: str, value: object, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        make_app(**{key: value})


def test_explicit_config_wins_over_app_config(make_app: AppFactory, tmp_path: Path) -> None:
    config = ReplayConfig(sample_rate=0.5, local_store_dir=str(tmp_path))
    app = make_app(config=config, REPLAY_SAMPLE_RAT="typo is ignored")
    assert app.extensions["replay_middleware"].middleware_for(app).engine.config is config


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        pytest.param({"SECRET_KEY": "s" * 32}, derive_secret_key("s" * 32), id="flask-secret"),
        pytest.param({"SECRET_KEY": "dev"}, derive_secret_key("dev"), id="short-derived"),
        pytest.param({"SECRET_KEY": b"\x01" * 8}, derive_secret_key(b"\x01" * 8), id="bytes"),
        pytest.param(
            {"SECRET_KEY": "s" * 32, "REPLAY_SECRET_KEY": "r" * 16}, "r" * 16, id="replay-wins"
        ),
        pytest.param({"SECRET_KEY": ""}, None, id="empty"),
        pytest.param({}, None, id="none"),
    ],
)
def test_secret_key_defaults_to_flask_secret_key(
    make_app: AppFactory, settings: dict[str, object], expected: str | None
) -> None:
    app = make_app(**settings)
    assert app.extensions["replay_middleware"].middleware_for(app).engine.config.signing_key == (
        expected
    )


def test_short_secret_key_signs_cookies_another_process_accepts(make_app: AppFactory) -> None:
    first = make_app(SECRET_KEY="dev").test_client()
    first.get("/")
    cookie = first.get_cookie("replay_id")
    assert cookie is not None
    # Another app (another worker, or the same app after a restart) with the same SECRET_KEY.
    second = make_app(SECRET_KEY="dev").test_client()
    second.set_cookie("replay_id", cookie.value)
    device, session, *_ = cookie.value.split(".")
    assert second.get("/whoami").json == {
        "reason": "in_sample",
        "session": int(session),
        "device": device,
    }
    other = make_app(SECRET_KEY="other").test_client()
    other.set_cookie("replay_id", cookie.value)
    foreign = other.get("/whoami").json
    assert foreign is not None and foreign["device"] != device  # a foreign cookie: new ids


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        pytest.param(
            {"SECRET_KEY": "new", "SECRET_KEY_FALLBACKS": ["old", b"older"]},
            ("old", b"older", "new"),
            id="fallbacks-then-secret",
        ),
        pytest.param({"SECRET_KEY": "new", "SECRET_KEY_FALLBACKS": []}, ("new",), id="none"),
        pytest.param({"SECRET_KEY": "", "SECRET_KEY_FALLBACKS": ["old"]}, (), id="no-secret"),
    ],
)
def test_secret_key_fallbacks_are_derived_as_older_keys(
    make_app: AppFactory, settings: dict[str, object], expected: tuple[str | bytes, ...]
) -> None:
    app = make_app(**settings)
    config = app.extensions["replay_middleware"].middleware_for(app).engine.config
    assert config.secret_keys == tuple(derive_secret_key(k) for k in expected)


def test_replay_secret_key_list_wins_over_flask_keys(make_app: AppFactory) -> None:
    keys = ["o" * 16, "n" * 16]
    app = make_app(SECRET_KEY="s" * 32, SECRET_KEY_FALLBACKS=["f" * 32], REPLAY_SECRET_KEY=keys)
    config = app.extensions["replay_middleware"].middleware_for(app).engine.config
    assert config.secret_keys == tuple(keys)


def test_rotating_flask_secret_key_keeps_device_ids(make_app: AppFactory) -> None:
    first = make_app(SECRET_KEY="before").test_client()
    first.get("/")
    cookie = first.get_cookie("replay_id")
    assert cookie is not None
    device, session, *_ = cookie.value.split(".")
    rotated = make_app(SECRET_KEY="after", SECRET_KEY_FALLBACKS=["before"]).test_client()
    rotated.set_cookie("replay_id", cookie.value)
    assert rotated.get("/whoami").json == {
        "reason": "in_sample",
        "session": int(session),
        "device": device,
    }
    rotated.get("/")
    reissued = rotated.get_cookie("replay_id")
    assert reissued is not None and reissued.value != cookie.value
    ids = IdentityCodec(derive_secret_key("after")).loads(reissued.value)
    assert ids is not None and (ids.device_id, ids.session_id) == (device, int(session))


def _inspector_sign_in(app: Flask, token: str) -> Any:
    """``?token=`` on the inspector from a loopback client; the client keeps the cookie."""
    client = app.test_client()
    response = client.get(
        f"/_replay/inspect?token={token}",
        base_url="http://127.0.0.1",
        environ_overrides={"REMOTE_ADDR": "127.0.0.1"},
    )
    return client, response


def test_inspector_token_from_app_config(make_app: AppFactory) -> None:
    token = "flask-inspector-token-0123456789"
    app = make_app(REPLAY_INSPECTOR_TOKEN=token)
    client, sign_in = _inspector_sign_in(app, token)
    assert sign_in.status_code == 303
    listing = client.get(
        "/_replay/inspect",
        base_url="http://127.0.0.1",
        environ_overrides={"REMOTE_ADDR": "127.0.0.1"},
    )
    assert listing.status_code == 200
    _, wrong = _inspector_sign_in(app, token[::-1])
    assert wrong.status_code == 404


def test_inspector_token_is_the_same_in_every_worker_sharing_secret_key(
    make_app: AppFactory,
) -> None:
    # gunicorn -w 4: each worker builds its own app; the cookie one sets works in the others.
    first, second = make_app(SECRET_KEY="dev"), make_app(SECRET_KEY="dev")
    token = first.extensions["replay_middleware"].middleware_for(first).engine.inspector.token
    other = second.extensions["replay_middleware"].middleware_for(second).engine.inspector
    assert other.token == token
    assert _inspector_sign_in(second, token)[1].status_code == 303


def _replay_records(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "replay_middleware"]


def test_missing_secret_key_says_so_on_the_first_request(
    make_app: AppFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "replay_middleware")
    make_app().test_client().get("/")
    [message] = [m for m in _replay_records(caplog) if "no secret_key" in m]
    assert "neither REPLAY_SECRET_KEY nor SECRET_KEY" in message
    assert "random per-process key" in message


def test_local_mode_records_every_session_by_default(make_app: AppFactory) -> None:
    response = make_app().test_client().get("/")  # no REPLAY_SAMPLE_RATE at all
    assert response.headers["X-Replay-Decision"] == "in_sample"
    assert response.get_data(as_text=True).count(DATA_BLOCK) == 1


def test_startup_warnings_wait_for_the_first_request_and_come_once(
    make_app: AppFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "replay_middleware")
    app = make_app(REPLAY_SAMPLE_RATE=0)  # what every `flask` CLI command does
    assert _replay_records(caplog) == []
    client = app.test_client()
    response = client.get("/")
    assert response.headers["X-Replay-Decision"] == "not_in_sample"
    first = _replay_records(caplog)
    assert any("RECORDS NOTHING" in m for m in first)
    assert any("local mode" in m for m in first)
    client.get("/")
    client.get("/_replay/session")
    assert _replay_records(caplog) == first


def test_init_app_twice_raises(make_app: AppFactory) -> None:
    app = make_app()
    with pytest.raises(RuntimeError, match="already initialised"):
        SessionReplay().init_app(app)


def test_one_extension_serves_several_apps(make_app: AppFactory, tmp_path: Path) -> None:
    replay = SessionReplay(config=ReplayConfig(sample_rate=1, local_store_dir=str(tmp_path)))
    apps = [make_app(extension=False), make_app(extension=False)]
    for app in apps:
        replay.init_app(app)
    try:
        assert replay.middleware_for(apps[0]) is not replay.middleware_for(apps[1])
        for app in apps:
            html = app.test_client().get("/manual").get_data(as_text=True)
            assert html.count(DATA_BLOCK) == 1
    finally:
        for app in apps:
            replay.middleware_for(app).close()


def test_shared_extension_keeps_no_app_alive(tmp_path: Path) -> None:
    replay = SessionReplay(config=ReplayConfig(local_store_dir=str(tmp_path)))
    app = Flask(__name__)
    replay.init_app(app)
    app_ref = weakref.ref(app)
    del app
    gc.collect()
    assert app_ref() is None


@pytest.mark.parametrize("path", ["/manual", "/twice"])
def test_jinja_global_renders_once_and_auto_injection_skips(
    make_app: AppFactory, path: str
) -> None:
    response = make_app(REPLAY_SAMPLE_RATE=1).test_client().get(path)
    html = response.get_data(as_text=True)
    assert html.count(DATA_BLOCK) == 1
    assert html.count('id="replay-middleware-loader"') == 1
    # Where the template put it: right after the title, as the auto injection would.
    assert html.startswith("<!DOCTYPE html><html><head><title>t</title>" + DATA_BLOCK)
    assert response.headers["X-Replay-Decision"] == "manual"
    assert response.headers["Set-Cookie"].startswith("replay_id=")


def test_jinja_global_is_empty_on_excluded_route(make_app: AppFactory) -> None:
    response = make_app(REPLAY_SAMPLE_RATE=1).test_client().get("/account/manual")
    assert response.get_data(as_text=True) == PAGE.format(head="")
    assert response.headers["X-Replay-Decision"] == "excluded_route"


def test_jinja_global_is_empty_for_unsampled_session(make_app: AppFactory) -> None:
    response = make_app(REPLAY_SAMPLE_RATE=0).test_client().get("/manual")
    assert response.get_data(as_text=True) == PAGE.format(head="")


def test_jinja_global_is_empty_outside_a_request(make_app: AppFactory) -> None:
    app = make_app(REPLAY_SAMPLE_RATE=1)
    with app.app_context():
        assert render_template_string(MANUAL) == ""
    with app.test_request_context("/"):  # a request that never went through the middleware
        assert render_template_string(MANUAL) == ""


def test_jinja_global_without_talisman_gets_a_nonce_merged_into_the_csp(
    make_app: AppFactory,
) -> None:
    app = make_app(REPLAY_SAMPLE_RATE=1)

    @app.get("/own-csp")
    def own_csp() -> Response:
        page = render_template_string(PAGE.format(head=MANUAL))
        return Response(page, headers={"Content-Security-Policy": "script-src 'self'"})

    response = app.test_client().get("/own-csp")
    nonce = tag_nonce(response.get_data(as_text=True))
    assert f"'nonce-{nonce}'" in policy(response)["script-src"]


def test_jinja_global_reuses_talisman_nonce_and_header_keeps_it(make_app: AppFactory) -> None:
    app = make_app(talisman=True, REPLAY_SAMPLE_RATE=1)
    seen: list[str] = []

    @app.after_request
    def remember_nonce(response: Response) -> Response:
        seen.append(request.csp_nonce)  # type: ignore[attr-defined]
        return response

    response = app.test_client().get("/manual")
    [talisman_nonce] = seen
    assert tag_nonce(response.get_data(as_text=True)) == talisman_nonce
    # Talisman's script-src already allows the snippet: no second nonce is added.
    assert policy(response)["script-src"] == f"'strict-dynamic' 'nonce-{talisman_nonce}'"
    assert response.headers["X-Replay-Decision"] == "manual"


def test_auto_injection_under_talisman_nonce_matches_header(make_app: AppFactory) -> None:
    response = make_app(talisman=True, REPLAY_SAMPLE_RATE=1).test_client().get("/")
    html = response.get_data(as_text=True)
    assert html.count(DATA_BLOCK) == 1
    script_src = policy(response)["script-src"]
    assert f"'nonce-{tag_nonce(html)}'" in script_src
    assert script_src.startswith("'strict-dynamic' 'nonce-")  # Talisman's nonce stays first


def test_talisman_csp_is_merged_for_connect_and_worker(make_app: AppFactory) -> None:
    app = make_app(REPLAY_SAMPLE_RATE=1, extension=False)
    Talisman(
        app,
        content_security_policy={
            "default-src": "'none'",
            "script-src": "'self'",
            "connect-src": "https://api.example.com",
        },
        force_https=False,
    )
    replay = SessionReplay(app)
    try:
        response = app.test_client().get("/")
    finally:
        replay.middleware_for(app).close()
    merged = policy(response)
    assert DATA_BLOCK in response.get_data(as_text=True)
    assert merged["connect-src"].startswith("https://api.example.com ")
    assert "'self'" in merged["connect-src"].split()
    assert "blob:" in merged["worker-src"].split()
    assert merged["default-src"] == "'none'"


def test_current_replay_inside_a_view(make_app: AppFactory) -> None:
    client = make_app(REPLAY_SAMPLE_RATE=1).test_client()
    client.get("/")
    cookie = client.get_cookie("replay_id")
    assert cookie is not None
    device, session, *_ = cookie.value.split(".")
    assert client.get("/whoami").json == {
        "reason": "in_sample",
        "session": int(session),
        "device": device,
    }


def test_example_app_pages(tmp_path: Path) -> None:
    app = create_example(
        ReplayConfig(sample_rate=1, exclude=("/account/billing",), local_store_dir=str(tmp_path))
    )
    client = app.test_client()
    try:
        markers = {
            path: client.get(path).headers.get("X-Replay-Middleware")
            for path in ("/", "/signin", "/spa", "/spa/inbox", "/csp/strict", "/csp/inline")
        }
        assert set(markers.values()) == {"injected"}, markers
        assert client.get("/account/billing").headers["X-Replay-Decision"] == "excluded_route"
        manual = client.get("/manual")
        assert manual.headers["X-Replay-Decision"] == "manual"
        assert manual.get_data(as_text=True).count(DATA_BLOCK) == 1
        cookie = client.get_cookie("replay_id")
        assert cookie is not None
        device, session, *_ = cookie.value.split(".")
        assert client.get("/api/whoami").json == {
            "replay": {"[Amplitude] Session Replay ID": f"{device}/{session}"},
            "reason": "in_sample",
        }
    finally:
        app.extensions["replay_middleware"].middleware_for(app).close()


def test_upload_proxy_under_werkzeug_keeps_slow_clients_away_from_amplitude() -> None:
    """Proxy mode, the app served by werkzeug's threaded server: a slow-loris upload takes the
    client's only slot (a second upload from it gets 429), never reaches Amplitude, and gets
    408 at the body deadline; its slot is then free again (notes/proxy.md cases 43, 45)."""
    import threading
    import time

    import httpx
    from werkzeug.serving import make_server

    from .fake_amplitude import FakeAmplitude, SlowClient

    key = "0123456789abcdef0123456789abcdef"
    target = "/_replay/track?device_id=dev-1&session_id=1735689600000&type=replay"
    body = b'{"version":1,"events":[]}'
    headers = {"authorization": f"Bearer {key}", "content-type": "application/json"}
    app = Flask(__name__)
    app.config.update(
        REPLAY_API_KEY=key,
        REPLAY_SECRET_KEY="s" * 32,
        REPLAY_CLIENT_BODY_TIMEOUT=3.0,  # roomy: the 429 must come while the slow one waits
        REPLAY_MAX_UPLOADS_PER_CLIENT=1,
    )
    with FakeAmplitude() as fake:
        replay = SessionReplay(app, upstreams=fake.upstreams())
        server = make_server("127.0.0.1", 0, app, threaded=True)
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
        thread.start()
        try:
            with (
                httpx.Client(base_url=f"http://127.0.0.1:{server.port}", trust_env=False) as c,
                SlowClient(server.port, target, {"Authorization": f"Bearer {key}"}) as slow,
            ):
                slots = replay.middleware_for(app).upstream.client_slots  # type: ignore[union-attr]
                for _ in range(250):  # bounded: 5 s for the server to admit the slow upload
                    if slots.in_flight():
                        break
                    time.sleep(0.02)
                busy = c.post(target, content=body, headers=headers)
                status = slow.status()
                after = c.post(target, content=body, headers=headers)
        finally:
            server.shutdown()
            thread.join(10)
            server.server_close()
            replay.middleware_for(app).close()
        uploads = fake.requests_for("track")
    assert busy.status_code == 429 and busy.headers["retry-after"] == "1"
    assert status == 408
    assert after.status_code == 200
    assert [r.body for r in uploads] == [body]  # the honest one only


# -- local mode: hostile uploads and who may upload (issue 8) ------------------------------------

TRACK = "/_replay/track?device_id=d&session_id=1735689600000&type=replay"
# Issue 8's shape: a little gzip inflating to a million tiny events (3 MB; the real one, 50 MB).
BOMB = gzip.compress(b'{"version":1,"events":[' + b"{}," * 1_000_000 + b"{}]}")


def test_local_track_answers_a_decompression_bomb_413(make_app: AppFactory) -> None:
    app = make_app()
    client = app.test_client()  # REMOTE_ADDR 127.0.0.1, Host localhost: the inspector's

    r = client.post(TRACK, data=BOMB, headers={"content-encoding": "gzip"})

    # The SDK splits a batch answered 413 with this wording (PROTOCOL §2); never a 500.
    assert r.status_code == 413 and re.search(r"payload.*exceed", r.text, re.I)
    store = app.extensions["replay_middleware"].middleware_for(app).engine.store
    assert store is not None and store.sessions() == []


def test_local_track_and_config_answer_only_the_inspectors_clients(make_app: AppFactory) -> None:
    app = make_app()
    client = app.test_client()
    upload = json.dumps({"version": 1, "events": []}).encode()
    remote = {"environ_overrides": {"REMOTE_ADDR": "10.0.0.5"}}

    track = client.post(TRACK, data=upload, **remote)
    config = client.get("/_replay/config/local?config_group=browser", **remote)

    assert (track.status_code, config.status_code) == (404, 404)
    assert client.get("/_replay/config/local?config_group=browser").status_code == 200
    store = app.extensions["replay_middleware"].middleware_for(app).engine.store
    assert store is not None and store.sessions() == []
