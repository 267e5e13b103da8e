"""The FastAPI example under a real uvicorn server on 127.0.0.1 (real sockets, real HTTP)."""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import uvicorn

from examples.fastapi_app.app import create_app
from replay_middleware import ReplayConfig


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    app = create_app(
        ReplayConfig(
            sample_rate=1,
            exclude=("/account/billing",),
            local_store_dir=str(tmp_path_factory.mktemp("store")),
        )
    )
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="auto")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


def test_pages_over_real_http(base_url: str) -> None:
    with httpx.Client(base_url=base_url, trust_env=False) as client:
        home = client.get("/")
        assert home.status_code == 200
        assert int(home.headers["content-length"]) == len(home.content)
        loader = re.search(rb'src="(/_replay/loader-[0-9a-f]+\.js)"', home.content)
        assert loader is not None
        assert client.get(loader.group(1).decode()).status_code == 200
        assert client.get("/_replay/sdk/1.51.6.js").status_code == 200
        assert b"replay-middleware" not in client.get("/account/billing").content
        strict = client.get("/csp/strict")
        nonce = re.search(rb'nonce="([^"]+)" id="replay-middleware-loader"', strict.content)
        assert nonce is not None
        # The app's own nonce is in its policy, so our tag reuses it (C3) and the header stays.
        assert f"'nonce-{nonce.group(1).decode()}'" in strict.headers["content-security-policy"]
        api = client.get("/api/whoami")
        assert api.headers["content-type"] == "application/json"
        assert "x-replay-middleware" not in api.headers and "set-cookie" not in api.headers
