"""ReplayWSGIMiddleware under a real gunicorn on 127.0.0.1 (real sockets, real HTTP), with the
upload proxy pointed at the fake Amplitude running in this process."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from . import wsgi_app
from .fake_amplitude import FakeAmplitude, Reply, SlowClient

KEY = "0123456789abcdef0123456789abcdef"
ROOT = Path(__file__).resolve().parent.parent
QUERY = "device_id=dev-1&session_id=1735689600000&type=replay"
BODY = b'{"version":1,"events":["{\\"type\\":4,\\"timestamp\\":1}"]}'


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "gunicorn exited early"
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError("gunicorn did not start in time")


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeAmplitude]:
    with FakeAmplitude() as fake:
        # No remote sampling settings: the local rate (1.0) decides. With the fake's default
        # (50 %), a page requested after the background config refresh may go unrecorded.
        fake.set_default("config", Reply.config(b'{"configs":{"sessionReplay":{}}}'))
        yield fake


@contextmanager
def gunicorn(app: str, env: dict[str, str], log: Path) -> Iterator[str]:
    """``app`` (``module:variable``) under gunicorn on 127.0.0.1, one gthread worker; yields
    its base URL and stops it. ``REPLAY_*`` variables of this process are not passed on."""
    port = free_port()
    environment = {
        **{k: v for k, v in os.environ.items() if not k.startswith("REPLAY_")},
        "PYTHONPATH": str(ROOT),
        **env,
    }
    command = [
        sys.executable,
        "-m",
        "gunicorn",
        "--bind",
        f"127.0.0.1:{port}",
        "--workers",
        "1",
        "--worker-class",
        "gthread",
        "--threads",
        "4",
        "--timeout",
        "30",
        "--graceful-timeout",
        "5",
        app,
    ]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            command, cwd=ROOT, env=environment, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        wait_for_port(port, proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@pytest.fixture(scope="module")
def base_url(fake: FakeAmplitude, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log = tmp_path_factory.mktemp("gunicorn") / "gunicorn.log"
    env = {
        "REPLAY_TEST_UPSTREAM": fake.url,
        "REPLAY_TEST_API_KEY": KEY,
        "REPLAY_TEST_BODY_TIMEOUT": "1",
    }
    with gunicorn("tests.wsgi_app:app", env, log) as url:
        yield url


def test_page_is_injected_with_the_right_length(base_url: str) -> None:
    with httpx.Client(base_url=base_url, trust_env=False) as client:
        home = client.get("/")
        assert home.status_code == 200
        assert home.content.count(b'id="replay-middleware-config"') == 1
        assert int(home.headers["content-length"]) == len(home.content)
        assert home.headers["x-replay-middleware"] == "injected"
        streamed = client.get("/stream")
        assert streamed.content.count(b'id="replay-middleware-config"') == 1
        assert streamed.content.endswith(b"<p>2</p></body></html>")
        served_file = client.get("/file")
        assert served_file.content == wsgi_app.PAGE  # wsgi.file_wrapper: untouched
        assert "x-replay-middleware" not in served_file.headers
        api = client.get("/api")
        assert api.content == b"{}" and "set-cookie" not in api.headers


def test_loader_and_sdk_are_served(base_url: str) -> None:
    with httpx.Client(base_url=base_url, trust_env=False) as client:
        home = client.get("/")
        loader = re.search(rb'src="(/_replay/loader-[0-9a-f]+\.js)"', home.content)
        assert loader is not None
        served = client.get(loader.group(1).decode())
        assert served.status_code == 200 and b"replayMiddleware" in served.content
        sdk = client.get("/_replay/sdk/1.51.6.js")
        assert sdk.status_code == 200 and len(sdk.content) == 472_630


def test_uploads_reach_amplitude_through_the_proxy(base_url: str, fake: FakeAmplitude) -> None:
    headers = {"authorization": f"Bearer {KEY}", "content-type": "application/json"}

    def chunked_body() -> Iterator[bytes]:
        yield BODY[:7]
        yield BODY[7:]

    with httpx.Client(base_url=base_url, trust_env=False) as client:
        framed = client.post(f"/_replay/track?{QUERY}", content=BODY, headers=headers)
        streamed = client.post(f"/_replay/track?{QUERY}", content=chunked_body(), headers=headers)
        config = client.get(f"/_replay/config/{KEY}?config_group=browser")
    assert (framed.status_code, streamed.status_code) == (200, 200)
    assert framed.json() == {"code": 200}
    assert config.status_code == 200 and b"sessionReplay" in config.content
    uploads = fake.requests_for("track")
    assert [r.body for r in uploads] == [BODY, BODY]
    # Read whole before going up: both framed by their length, the chunked one too.
    assert [r.header("content-length") for r in uploads] == [str(len(BODY))] * 2
    assert uploads[1].header("transfer-encoding") is None
    assert all(r.query == QUERY and r.header("authorization") == f"Bearer {KEY}" for r in uploads)


def test_a_slow_loris_gets_408_at_the_deadline_and_never_reaches_amplitude(
    base_url: str, fake: FakeAmplitude
) -> None:  # notes/proxy.md case 43, under gunicorn's gthread worker
    before = len(fake.requests_for("track"))
    port = int(base_url.rsplit(":", 1)[1])
    target = f"/_replay/track?{QUERY}"
    headers = {"authorization": f"Bearer {KEY}", "content-type": "application/json"}
    with SlowClient(port, target, {"Authorization": f"Bearer {KEY}"}, interval=0.1) as slow:
        with httpx.Client(base_url=base_url, trust_env=False) as client:
            honest = client.post(target, content=BODY, headers=headers)
        status = slow.status()
        sent = slow.sent
    assert honest.status_code == 200
    # A byte every 0.1 s: gunicorn's read(n) would have waited for 64 KiB (~2 hours); the
    # body deadline (1 s here) cut it short.
    assert status == 408 and sent < 100
    assert len(fake.requests_for("track")) == before + 1  # only the honest upload


# -- the Flask example (local mode) under gunicorn -------------------------------------------


INSPECTOR_TOKEN = "gunicorn-inspector-token-0123456789"


@pytest.fixture(scope="module")
def flask_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("flask-store")


@pytest.fixture(scope="module")
def flask_url(flask_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log = tmp_path_factory.mktemp("gunicorn-flask") / "gunicorn.log"
    env = {"REPLAY_LOCAL_STORE_DIR": str(flask_store), "REPLAY_INSPECTOR_TOKEN": INSPECTOR_TOKEN}
    with gunicorn("examples.flask_app.app:app", env, log) as url:
        yield url


def test_flask_example_under_gunicorn(flask_url: str, flask_store: Path) -> None:
    with httpx.Client(base_url=flask_url, trust_env=False) as client:
        home = client.get("/")
        assert home.status_code == 200
        assert home.content.count(b'id="replay-middleware-config"') == 1
        assert int(home.headers["content-length"]) == len(home.content)
        loader = re.search(rb'src="(/_replay/loader-[0-9a-f]+\.js)"', home.content)
        assert loader is not None
        served = client.get(loader.group(1).decode())
        assert served.status_code == 200 and b"replayMiddleware" in served.content
        assert int(served.headers["content-length"]) == len(served.content)
        sdk = client.get("/_replay/sdk/1.51.6.js")
        assert sdk.status_code == 200 and len(sdk.content) == 472_630
        billing = client.get("/account/billing")
        assert billing.status_code == 200 and b"Billing" in billing.content
        assert b"replay-middleware" not in billing.content and b"/_replay/" not in billing.content
        assert "x-replay-middleware" not in billing.headers
        track = client.post(
            f"/_replay/track?{QUERY}", content=BODY, headers={"content-type": "application/json"}
        )
        assert track.status_code == 200, track.text
        assert client.get("/_replay/inspect").status_code == 404  # no token
        # ?token= sets the cookie and redirects to the inspector without the token.
        listing = client.get(f"/_replay/inspect?token={INSPECTOR_TOKEN}", follow_redirects=True)
    assert [r.status_code for r in listing.history] == [303]
    assert listing.url == f"{flask_url}/_replay/inspect"
    assert listing.status_code == 200 and b"1735689600000" in listing.content
    assert any(flask_store.rglob("*")), "the upload reached the local store"
