"""The WSGI adapter, driven with werkzeug's test tools and a small PEP 3333 "server" (STYLE 19)."""

from __future__ import annotations

import gc
import gzip
import io
import json
import logging
import re
import sys
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from werkzeug.test import Client, EnvironBuilder

from replay_middleware import (
    ReplayConfig,
    ReplayContext,
    ReplayWSGIMiddleware,
    current_replay,
    get_replay_properties,
)
from replay_middleware.identity import IdentityCodec
from replay_middleware.wsgi import ENVIRON_KEY, MANUAL_NONCE_KEY, Environ, StartResponse

from .cases import CASES, SNIPPET_RE, Case, check

PAGE = b"<!DOCTYPE html><html><head><title>t</title></head><body><p>hi</p></body></html>"
HTML = ("content-type", "text/html; charset=utf-8")


@pytest.fixture(autouse=True)
def fixed_nonce(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("replay_middleware.rewrite.new_nonce", lambda: "TESTNONCE")


def noop_start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
    return lambda data: None


def environ(path: str = "/", method: str = "GET", **kw: Any) -> Environ:
    env: Environ = EnvironBuilder(path=path, method=method, **kw).get_environ()
    return env


@dataclass
class Served:
    status: str = ""
    headers: list[tuple[str, str]] = field(default_factory=list)
    starts: int = 0
    chunks: list[bytes] = field(default_factory=list)
    written: list[bytes] = field(default_factory=list)

    @property
    def code(self) -> int:
        return int(self.status.split(" ", 1)[0])

    @property
    def body(self) -> bytes:
        return b"".join(self.written) + b"".join(self.chunks)

    def header(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name]


def serve(app: Any, env: Environ, *, stop_after: int | None = None) -> Served:
    """What a PEP 3333 server does: collect start_response, iterate, always close()."""
    out = Served()

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        if exc_info is not None and (out.chunks or out.written):  # headers went out
            raise exc_info[1].with_traceback(exc_info[2])
        assert exc_info is not None or not out.starts, "start_response called twice"
        out.status, out.headers = status, list(headers)
        out.starts += 1
        return out.written.append

    result = app(env, start_response)
    try:
        for i, chunk in enumerate(result):
            out.chunks.append(chunk)
            if stop_after is not None and i + 1 >= stop_after:
                break
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    return out


class Tracked:
    """A WSGI app whose iterable records close() calls and may raise mid-stream."""

    def __init__(
        self,
        chunks: Iterable[bytes] = (PAGE,),
        headers: list[tuple[str, str]] | None = None,
        status: str = "200 OK",
        raise_after: int | None = None,
        on_item: Callable[[], None] | None = None,
    ) -> None:
        self.chunks = list(chunks)
        self.headers = [HTML] if headers is None else headers
        self.status = status
        self.raise_after = raise_after
        self.on_item = on_item
        self.closed = 0

    def __call__(self, env: Environ, start_response: StartResponse) -> Iterable[bytes]:
        app = self

        class Body:
            def __iter__(self) -> Iterator[bytes]:
                start_response(app.status, list(app.headers))
                for i, chunk in enumerate(app.chunks):
                    if app.raise_after is not None and i >= app.raise_after:
                        raise RuntimeError("app broke mid-stream")
                    if app.on_item is not None:
                        app.on_item()
                    yield chunk

            def close(self) -> None:
                app.closed += 1

        return Body()


def mw(app: Any, **config: Any) -> ReplayWSGIMiddleware:
    return ReplayWSGIMiddleware(app, ReplayConfig(**{"sample_rate": 1.0, **config}))


# --- the shared injection cases ---------------------------------------------------------------


@pytest.mark.parametrize("case", CASES)
def test_injection_cases(case: Case) -> None:
    config = {"debug_header": False, **case.config}
    chunks = [c.replace(b"|", b"") for c in case.body]
    reason = "OK" if case.status == 200 else "X"
    app = Tracked(chunks, case.app_headers(), f"{case.status} {reason}")
    env = environ(case.path, case.method, headers=list(case.request_headers))
    out = serve(mw(app, **config), env)
    body = b"" if case.method == "HEAD" else out.body
    check(case, out.code, out.headers, body)
    assert app.closed == 1


# --- streaming and the iterable protocol ------------------------------------------------------


def test_html_page_gets_snippet_with_exact_length_and_weak_etag() -> None:
    headers = [HTML, ("content-length", str(len(PAGE))), ("etag", '"abc"')]
    out = serve(mw(Tracked(headers=headers)), environ())
    assert out.body.count(b"replay-middleware-config") == 1
    assert out.header("content-length") == [str(len(out.body))]
    assert out.header("etag") == ['W/"abc"']
    assert out.header("set-cookie")[0].startswith("replay_id=")
    assert b' nonce="TESTNONCE" id="replay-middleware-loader"></script></head>' in out.body


def test_items_are_streamed_not_joined_after_the_insertion_point() -> None:
    chunks = [b"<!doctype html><html><he", b"ad></he", b"ad><body>", b"<p>1</p>", b"</html>"]
    app = Tracked(chunks)
    out = serve(mw(app), environ())
    assert out.chunks[-2:] == [b"<p>1</p>", b"</html>"]
    assert out.body.count(b"replay-middleware-config") == 1
    assert "content-length" not in {k for k, _ in out.headers}


def test_json_response_is_untouched_and_never_decided() -> None:
    app = Tracked([b"{}"], [("content-type", "application/json"), ("content-length", "2")])
    middleware = mw(app, debug_header=False)
    env = environ()
    out = serve(middleware, env)
    assert out.headers == [("content-type", "application/json"), ("content-length", "2")]
    assert out.body == b"{}"
    assert env[ENVIRON_KEY]._state is None  # no identity or sampling work for an API response


def test_head_request_is_untouched() -> None:
    headers = [HTML, ("content-length", "80")]
    out = serve(mw(Tracked(headers=headers), debug_header=False), environ(method="HEAD"))
    assert out.headers == headers


def test_exception_mid_stream_propagates_and_close_is_called() -> None:
    app = Tracked([b"<!doctype html><html><head>", b"<title>x</title>"], raise_after=1)
    with pytest.raises(RuntimeError, match="broke mid-stream"):
        serve(mw(app), environ())
    assert app.closed == 1


def test_exception_after_the_head_propagates_and_close_is_called() -> None:
    app = Tracked([PAGE, b"<p>more</p>"], raise_after=1)
    with pytest.raises(RuntimeError, match="broke mid-stream"):
        serve(mw(app), environ())
    assert app.closed == 1


def test_close_is_called_exactly_once_when_the_client_stops_early() -> None:
    app = Tracked([PAGE, b"a", b"b", b"c"])
    middleware = mw(app)
    out = serve(middleware, environ(), stop_after=1)
    assert app.closed == 1
    assert out.body.count(b"replay-middleware-config") == 1


def test_close_is_called_for_skipped_responses() -> None:
    app = Tracked([b"{}"], [("content-type", "application/json")])
    serve(mw(app), environ())
    assert app.closed == 1


def test_close_is_called_when_our_wrapping_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    app = Tracked()

    def broken(self: object, result: object) -> None:
        raise RuntimeError("bug")

    monkeypatch.setattr("replay_middleware.wsgi._Response.wrap", broken)
    with pytest.raises(RuntimeError):
        serve(mw(app), environ())
    assert app.closed == 1


def test_write_callable_passes_through_after_flushing_what_was_held() -> None:
    def app(env: Environ, start_response: StartResponse) -> Iterable[bytes]:
        write = start_response("200 OK", [HTML])
        write(PAGE[:30])
        write(PAGE[30:])
        return []

    out = serve(mw(app), environ())
    assert out.written == [PAGE[:30], PAGE[30:]]
    assert out.body == PAGE  # injection is skipped for write()-style apps
    assert out.code == 200


def test_write_then_iterable_keeps_the_order() -> None:
    def app(env: Environ, start_response: StartResponse) -> Iterable[bytes]:
        write = start_response("200 OK", [HTML])
        write(b"<!doctype html><html>")
        return [b"<head></head><body></body></html>"]

    out = serve(mw(app), environ())
    assert out.body == b"<!doctype html><html><head></head><body></body></html>"


def test_file_wrapper_responses_are_handed_back_untouched() -> None:
    seen: list[object] = []

    def app(env: Environ, start_response: StartResponse) -> Iterable[bytes]:
        start_response("200 OK", [HTML, ("content-length", str(len(PAGE)))])
        wrapped: Iterable[bytes] = env["wsgi.file_wrapper"](io.BytesIO(PAGE))
        seen.append(wrapped)
        return wrapped

    env = environ()
    env["wsgi.file_wrapper"] = _FileWrapper
    middleware = mw(app, debug_header=False)
    result = middleware(env, noop_start)
    assert result is seen[0]  # the very object: the server may sendfile it
    out = serve(middleware, {**environ(), "wsgi.file_wrapper": _FileWrapper})
    assert out.body == PAGE
    assert out.headers == [HTML, ("content-length", str(len(PAGE)))]


def test_error_page_after_start_response_is_redecided() -> None:
    error_page = b"<!doctype html><html><head><title>500</title></head><body>oops</body></html>"

    def app(env: Environ, start_response: StartResponse) -> Iterable[bytes]:
        start_response("200 OK", [("content-type", "application/json")])
        try:
            raise ValueError("view failed")
        except ValueError:
            start_response("500 Internal Server Error", [HTML], sys.exc_info())
        return [error_page]

    out = serve(mw(app), environ())
    assert out.code == 500
    assert out.body.count(b"replay-middleware-config") == 1  # 5xx pages are injected (H1)


def test_error_while_holding_resets_what_was_held() -> None:
    def app(env: Environ, start_response: StartResponse) -> Iterator[bytes]:
        start_response("200 OK", [HTML])
        yield b"<!doctype html><html><he"  # held: the head has not ended
        try:
            raise ValueError("template failed")
        except ValueError:
            start_response(
                "500 Internal Server Error", [("content-type", "text/plain")], sys.exc_info()
            )
        yield b"error"

    out = serve(mw(app), environ())
    assert (out.code, out.body, out.starts) == (500, b"error", 1)


def test_exc_info_after_headers_were_sent_reraises() -> None:
    def app(env: Environ, start_response: StartResponse) -> Iterator[bytes]:
        start_response("200 OK", [("content-type", "text/plain")])
        yield b"partial"
        try:
            raise ValueError("late failure")
        except ValueError:
            start_response("500 Internal Server Error", [], sys.exc_info())
        yield b"never"

    with pytest.raises(ValueError, match="late failure"):
        serve(mw(app), environ())


def test_fail_open_when_our_code_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*a: object, **k: object) -> str:
        raise RuntimeError("renderer bug")

    monkeypatch.setattr("replay_middleware.engine.ReplayEngine.render_snippet", broken)
    headers = [HTML, ("content-length", str(len(PAGE)))]
    out = serve(mw(Tracked([PAGE[:20], PAGE[20:]], headers)), environ())
    assert out.headers == headers
    assert out.body == PAGE


def test_fail_open_when_the_decision_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*a: object, **k: object) -> None:
        raise RuntimeError("decision bug")

    monkeypatch.setattr("replay_middleware.engine.ReplayEngine.begin", broken)
    headers = [HTML, ("content-length", str(len(PAGE)))]
    out = serve(mw(Tracked(headers=headers)), environ())
    assert (out.headers, out.body) == (headers, PAGE)


def test_installed_twice_injects_once() -> None:
    config = ReplayConfig(sample_rate=1)
    inner = ReplayWSGIMiddleware(Tracked(), config)
    out = serve(ReplayWSGIMiddleware(inner, config), environ())
    assert out.body.count(b"replay-middleware-config") == 1
    assert len(out.header("set-cookie")) == 1


def test_manual_snippet_nonce_merges_csp_without_a_second_injection() -> None:
    def app(env: Environ, start_response: StartResponse) -> Iterable[bytes]:
        state = env[ENVIRON_KEY].state()
        snippet = middleware.engine.manual_snippet(state, "APPNONCE").encode()
        env[MANUAL_NONCE_KEY] = "APPNONCE"
        start_response("200 OK", [HTML, ("content-security-policy", "script-src 'self'")])
        return [PAGE.replace(b"</head>", snippet + b"</head>")]

    middleware = mw(app)
    out = serve(middleware, environ())
    assert len(SNIPPET_RE.findall(out.body)) == 1
    assert "'nonce-APPNONCE'" in out.header("content-security-policy")[0]


# --- context ------------------------------------------------------------------------------------


def test_context_in_environ_and_current_replay_during_the_call_and_iteration() -> None:
    got: dict[str, Any] = {}

    def app(env: Environ, start_response: StartResponse) -> Iterator[bytes]:
        got["environ"] = env[ENVIRON_KEY].context()
        got["call"] = current_replay()
        start_response("200 OK", [("content-type", "application/json")])
        got["iteration"] = current_replay()
        got["props"] = get_replay_properties()
        yield b"{}"

    result = mw(app)(environ(), noop_start)
    assert current_replay() is None  # the generator has not run yet
    assert list(result) == [b"{}"]
    ctx = got["environ"]
    assert isinstance(ctx, ReplayContext) and ctx.sampled
    assert got["call"] is ctx and got["iteration"] is ctx
    assert got["props"] == {"[Amplitude] Session Replay ID": f"{ctx.device_id}/{ctx.session_id}"}
    assert current_replay() is None


def test_current_replay_works_in_close() -> None:
    seen: list[ReplayContext | None] = []

    class Body:
        def __iter__(self) -> Iterator[bytes]:
            return iter([b"{}"])

        def close(self) -> None:
            seen.append(current_replay())

    def app(env: Environ, start_response: StartResponse) -> Iterable[bytes]:
        start_response("200 OK", [("content-type", "application/json")])
        return Body()

    serve(mw(app), environ())
    assert seen and seen[0] is not None


# --- endpoints ------------------------------------------------------------------------------------


def never(env: Environ, start_response: StartResponse) -> Iterable[bytes]:
    raise AssertionError("the app must not see first-party endpoints")


def test_loader_is_served_with_immutable_caching() -> None:
    middleware = mw(never)
    client = Client(middleware)
    r = client.get(middleware.engine.loader_path)
    assert r.status_code == 200
    assert r.headers["cache-control"] == "public, max-age=31536000, immutable"
    assert r.headers["content-type"].startswith("text/javascript")
    assert b"replayMiddleware" in r.data
    again = client.get(middleware.engine.loader_path, headers={"if-none-match": r.headers["etag"]})
    assert again.status_code == 304
    assert client.post(middleware.engine.loader_path).status_code == 405


def test_sdk_bundle_is_served_first_party() -> None:
    client = Client(mw(never))
    r = client.get("/_replay/sdk/1.51.6.js")
    assert r.status_code == 200 and len(r.data) == 472_630
    assert r.headers["cache-control"].endswith("immutable")
    assert client.get("/_replay/sdk/1.0.0.js").status_code == 404


def test_session_endpoint_returns_ids_and_sets_cookie() -> None:
    client = Client(mw(never))
    r = client.get("/_replay/session")
    data = r.get_json()
    assert r.headers["cache-control"] == "no-store" and data["record"] is True
    cookie = client.get_cookie("replay_id")
    assert cookie is not None and cookie.value.startswith(
        f"{data['deviceId']}.{data['sessionId']}."
    )
    again = client.get("/_replay/session").get_json()
    assert (again["deviceId"], again["sessionId"]) == (data["deviceId"], data["sessionId"])


def test_unknown_path_under_prefix_is_404_and_never_reaches_the_app() -> None:
    assert Client(mw(never)).get("/_replay/../admin").status_code == 404
    assert Client(mw(never)).get("/_replay/nothing").status_code == 404


def test_endpoint_failure_answers_503(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*a: object, **k: object) -> None:
        raise RuntimeError("bug")

    monkeypatch.setattr("replay_middleware.engine.ReplayEngine._session", broken)
    assert Client(mw(never)).get("/_replay/session").status_code == 503


def _local(tmp_path: Path, **kw: Any) -> ReplayWSGIMiddleware:
    return mw(never, max_upload_bytes=1000, local_store_dir=str(tmp_path), **kw)


EVENTS = [json.dumps({"type": 4, "timestamp": 1735689600000, "data": {"href": "http://t/"}})]
UPLOAD = json.dumps({"version": 1, "events": EVENTS}).encode()
TRACK = "/_replay/track?device_id=d&session_id=1735689600000&type=replay"
INSPECTOR_TOKEN = "wsgi-inspector-token-0123456789"


def test_local_mode_config_track_and_inspect(tmp_path: Path) -> None:
    middleware = _local(tmp_path, inspector_token=INSPECTOR_TOKEN)
    client = Client(middleware)
    # /config and /track answer the inspector's clients only (the token is not asked there).
    loopback = {"base_url": "http://127.0.0.1", "environ_overrides": {"REMOTE_ADDR": "127.0.0.1"}}
    r = client.get("/_replay/config/local?config_group=browser", **loopback)
    assert r.get_json() == {"configs": {"sessionReplay": {}}}
    ok = client.post(
        TRACK,
        data=UPLOAD,
        headers={"cookie": "secret=1", "authorization": "Bearer local"},
        **loopback,
    )
    assert ok.status_code == 200
    assert ok.headers["content-length"] == str(len(ok.data))
    assert "cache-control" not in ok.headers  # docs/page-exit.md: no net::ERR_ABORTED
    big = client.post("/_replay/track", data=b"x" * 2000, **loopback)
    assert big.status_code == 413 and re.search(r"payload.*exceed", big.text, re.I)
    assert client.get("/_replay/inspect", **loopback).status_code == 404  # no token yet
    sign_in = client.get(f"/_replay/inspect?token={INSPECTOR_TOKEN}", **loopback)
    assert sign_in.status_code == 303 and sign_in.headers["location"] == "/_replay/inspect"
    assert "HttpOnly" in sign_in.headers["set-cookie"]
    listing = client.get("/_replay/inspect", **loopback)  # the cookie, from now on
    assert listing.status_code == 200 and b"1735689600000" in listing.data
    assert middleware.engine.store is not None
    [upload] = middleware.engine.store.uploads("d", "1735689600000")
    assert "cookie" not in upload.headers and "authorization" not in upload.headers
    middleware.close()


def _chunked_environ(chunks: list[bytes]) -> Environ:
    env = environ(TRACK.split("?")[0], "POST", query_string=TRACK.split("?")[1])
    env["REMOTE_ADDR"] = "127.0.0.1"  # /track answers the inspector's clients only
    env.pop("CONTENT_LENGTH", None)
    env["HTTP_TRANSFER_ENCODING"] = "chunked"
    env["wsgi.input"] = io.BytesIO(b"".join(chunks))  # the server has decoded the chunks
    env["wsgi.input_terminated"] = True
    return env


def test_chunked_upload_to_local_track(tmp_path: Path) -> None:
    middleware = _local(tmp_path)
    out = serve(middleware, _chunked_environ([UPLOAD[:10], UPLOAD[10:]]))
    assert out.code == 200
    assert middleware.engine.store is not None
    [upload] = middleware.engine.store.uploads("d", "1735689600000")
    middleware.close()
    assert upload is not None


def test_chunked_upload_over_the_cap_gets_413(tmp_path: Path) -> None:
    middleware = _local(tmp_path)
    out = serve(middleware, _chunked_environ([b"{" + b"x" * 600, b"x" * 600]))
    assert out.code == 413
    middleware.close()


def test_unterminated_input_without_length_is_an_empty_body(tmp_path: Path) -> None:
    middleware = _local(tmp_path)
    env = _chunked_environ([UPLOAD])
    env["wsgi.input_terminated"] = False
    env["wsgi.input"] = io.BytesIO(UPLOAD)
    out = serve(middleware, env)
    assert out.code == 200
    assert env["wsgi.input"].tell() == 0  # never read: PEP 3333 forbids reading past the body
    assert middleware.engine.store is not None
    [upload] = middleware.engine.store.uploads("d", "1735689600000")
    assert upload.wire_bytes == 0
    middleware.close()


def test_example_like_page_through_werkzeug_client() -> None:
    def app(env: Environ, start_response: StartResponse) -> Iterable[bytes]:
        start_response("200 OK", [HTML, ("content-length", str(len(PAGE)))])
        return [PAGE]

    client = Client(mw(app, exclude=("/account/*",)))
    home = client.get("/")
    assert home.status_code == 200 and home.data.count(b"replay-middleware-config") == 1
    assert int(home.headers["content-length"]) == len(home.data)
    billing = client.get("/account/billing")
    assert billing.data == PAGE


# --- start-up warnings: once, on the first request (issue 7) ---------------------------------


def test_startup_warnings_logged_once_by_concurrent_first_requests(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "replay_middleware")
    app = mw(Tracked(), sample_rate=0, local_store_dir=str(tmp_path))
    assert not [r for r in caplog.records if r.name == "replay_middleware"]
    threads = 8
    gate = threading.Barrier(threads)

    def first_request() -> None:
        gate.wait()
        serve(app, environ("/"))

    workers = [threading.Thread(target=first_request) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    serve(app, environ("/"))
    messages = [r.getMessage() for r in caplog.records if r.name == "replay_middleware"]
    assert len([m for m in messages if "RECORDS NOTHING" in m]) == 1
    assert len(messages) == len(set(messages))


# -- local mode: hostile uploads and who may upload (issue 8) ------------------------------------

# Issue 8's shape: a little gzip inflating to a million tiny events (3 MB; the real one, 50 MB).
BOMB = gzip.compress(b'{"version":1,"events":[' + b"{}," * 1_000_000 + b"{}]}")
LOOPBACK = {"base_url": "http://127.0.0.1", "environ_overrides": {"REMOTE_ADDR": "127.0.0.1"}}


def test_local_track_answers_a_decompression_bomb_413(tmp_path: Path) -> None:
    middleware = mw(never, local_store_dir=str(tmp_path))

    r = Client(middleware).post(TRACK, data=BOMB, headers={"content-encoding": "gzip"}, **LOOPBACK)

    # The SDK splits a batch answered 413 with this wording (PROTOCOL §2); never a 500.
    assert r.status_code == 413 and re.search(r"payload.*exceed", r.text, re.I)
    assert middleware.engine.store is not None and middleware.engine.store.sessions() == []
    middleware.close()


@pytest.mark.parametrize(
    ("remote_addr", "host"),
    [
        pytest.param("10.0.0.5", "127.0.0.1", id="remote-client"),
        pytest.param("127.0.0.1", "shop.test", id="loopback-foreign-host"),
    ],
)
def test_local_track_and_config_answer_only_the_inspectors_clients(
    tmp_path: Path, remote_addr: str, host: str
) -> None:
    middleware = mw(never, local_store_dir=str(tmp_path))
    client = Client(middleware)
    where = {"base_url": f"http://{host}", "environ_overrides": {"REMOTE_ADDR": remote_addr}}

    track = client.post(TRACK, data=UPLOAD, **where)
    config = client.get("/_replay/config/local?config_group=browser", **where)

    assert (track.status_code, config.status_code) == (404, 404)
    assert middleware.engine.store is not None and middleware.engine.store.sessions() == []
    middleware.close()


# -- secret rotation (issue 9) ---------------------------------------------------------------

OLD_KEY, NEW_KEY = "old-secret-key-0123456789", "new-secret-key-0123456789"


def _page(env: Environ, start_response: StartResponse) -> Iterable[bytes]:
    start_response("200 OK", [HTML])
    return [PAGE]


def _cookie_after_get(
    secret_key: str | tuple[str, ...], tmp_path: Path, cookie: str | None = None
) -> str | None:
    client = Client(mw(_page, secret_key=secret_key, local_store_dir=str(tmp_path)))
    if cookie is not None:
        client.set_cookie("replay_id", cookie)
    assert client.get("/").status_code == 200
    got = client.get_cookie("replay_id")
    return None if got is None or got.value == cookie else got.value


def test_old_key_cookie_is_reissued_with_the_newest_key(tmp_path: Path) -> None:
    old = _cookie_after_get(OLD_KEY, tmp_path)
    assert old is not None
    new = _cookie_after_get((OLD_KEY, NEW_KEY), tmp_path, old)
    assert new is not None
    kept, reissued = IdentityCodec(OLD_KEY).loads(old), IdentityCodec(NEW_KEY).loads(new)
    assert kept is not None and reissued is not None
    assert (reissued.device_id, reissued.session_id) == (kept.device_id, kept.session_id)


def test_unknown_key_cookie_gets_a_fresh_identity(tmp_path: Path) -> None:
    old = _cookie_after_get("unknown-secret-key-0123", tmp_path)
    assert old is not None
    new = _cookie_after_get((OLD_KEY, NEW_KEY), tmp_path, old)
    assert new is not None and new.split(".")[0] != old.split(".")[0]


# -- O4 warnings that need a request to see ---------------------------------------------------


def _warnings(caplog: pytest.LogCaptureFixture, needle: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "replay_middleware" and r.levelno == logging.WARNING and needle in r.message
    ]


def _html_app(headers: list[tuple[str, str]], body: bytes) -> Any:
    def app(env: Environ, start_response: StartResponse) -> Iterable[bytes]:
        start_response("200 OK", headers)
        return [body]

    return app


@pytest.mark.parametrize(
    ("multiprocess", "secret", "warned"),
    [
        pytest.param(True, None, True, id="multiprocess-random-key"),
        pytest.param(True, "k" * 32, False, id="multiprocess-with-secret"),
        pytest.param(False, None, False, id="single-process"),
    ],
)
def test_no_secret_key_in_a_multiprocess_server_is_warned_once(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    multiprocess: bool,
    secret: str | None,
    warned: bool,
) -> None:
    caplog.set_level(logging.WARNING, "replay_middleware")
    client = Client(mw(Tracked(), secret_key=secret, local_store_dir=str(tmp_path)))
    for path in ("/", "/other", "/_replay/session"):
        client.get(path, environ_overrides={"wsgi.multiprocess": multiprocess})
    found = _warnings(caplog, "each worker process signs cookies with its own random key")
    assert len(found) == (1 if warned else 0)
    if warned:
        assert "set secret_key" in found[0]


def test_web_concurrency_counts_as_several_workers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("WEB_CONCURRENCY", "3")
    caplog.set_level(logging.WARNING, "replay_middleware")
    client = Client(mw(Tracked(), local_store_dir=str(tmp_path)))
    client.get("/")
    client.get("/")
    assert len(_warnings(caplog, "each worker process signs")) == 1


def test_already_compressed_html_is_warned_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    gz = gzip.compress(b"<html><head></head><body>x</body></html>")
    app = _html_app([("Content-Type", "text/html"), ("Content-Encoding", "br, gzip")], gz)
    caplog.set_level(logging.WARNING, "replay_middleware")
    client = Client(mw(app, local_store_dir=str(tmp_path)))
    first = client.get("/page")
    client.get("/page")
    assert first.data == gz  # untouched
    [message] = _warnings(caplog, "already compressed")
    assert "first on /page" in message and "wrap ReplayWSGIMiddleware" in message


@pytest.mark.parametrize(
    ("origin", "url_scheme", "warned"),
    [
        pytest.param("https://shop.example", "http", True, id="tls-terminated-upstream"),
        pytest.param("https://shop.example", "https", False, id="same-scheme"),
    ],
)
def test_public_origin_scheme_differing_from_requests_is_warned_once(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    origin: str,
    url_scheme: str,
    warned: bool,
) -> None:
    caplog.set_level(logging.WARNING, "replay_middleware")
    client = Client(mw(Tracked(), public_origin=origin, local_store_dir=str(tmp_path)))
    for _ in range(2):
        client.get("/", base_url=f"{url_scheme}://shop.example")
    found = _warnings(caplog, "but a request arrived as")
    assert len(found) == (1 if warned else 0)
    if warned:
        assert f"public_origin is {origin}" in found[0] and "ProxyFix" in found[0]


class _FileWrapper:
    """A server's ``wsgi.file_wrapper`` (what it may sendfile)."""

    def __init__(self, f: Any, size: int = 8192) -> None:
        self.f = f

    def __iter__(self) -> Iterator[bytes]:
        return iter([self.f.read()])

    def close(self) -> None:
        self.f.close()


_JSON = [("content-type", "application/json"), ("content-length", "2")]


@pytest.mark.parametrize(
    ("headers", "decided", "file"),
    [
        pytest.param(_JSON, False, False, id="api"),
        pytest.param([HTML], True, False, id="page"),
        pytest.param(_JSON, False, True, id="api-file-wrapper"),
        pytest.param([HTML, ("content-length", "2")], True, True, id="page-file-wrapper"),
    ],
)
def test_the_environ_and_what_it_holds_are_freed_without_the_garbage_collector(
    headers: list[tuple[str, str]], decided: bool, file: bool
) -> None:
    """Issue 10: ``environ["replay_middleware"]`` refers to the environ, so every response
    whose decision nobody asked for (an API response) left the environ and all it holds (the
    request body, the server's reader, the framework's request) as cyclic garbage until the
    collector ran: with 1 MiB POSTs to a Flask JSON view, up to 56 bodies were alive at once.
    After the response the source still answers, about the same request."""

    def app(env: Environ, start_response: StartResponse) -> Iterable[bytes]:
        env["wsgi.input"].read()
        start_response("200 OK", headers)
        return env["wsgi.file_wrapper"](io.BytesIO(b"{}")) if file else [b"{}"]

    middleware = mw(app, debug_header=False)
    env = environ("/api/items", method="POST", data=b"x" * 4096, headers={"X-Trace": "t1"})
    env["wsgi.file_wrapper"] = _FileWrapper
    request_body = weakref.ref(env["wsgi.input"])
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        out = serve(middleware, env)
        source = env[ENVIRON_KEY]
        assert (source._state is not None) is decided
        del env
        assert request_body() is None  # freed by its reference count, at once
        request = source.state().request
        assert (request.method, request.path, request.header("x-trace")) == (
            "POST",
            "/api/items",
            "t1",
        )
    finally:
        if was_enabled:
            gc.enable()
    assert out.body == b"{}"
