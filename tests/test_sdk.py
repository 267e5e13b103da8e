"""Tests for replay_middleware.sdk: the vendored, verified SDK bundle and its CDN fallback.

The CDN is played by a real HTTP server on 127.0.0.1 (stdlib ThreadingHTTPServer in a thread).
"""

from __future__ import annotations

import base64
import concurrent.futures
import gzip
import hashlib
import logging
import socket
import ssl
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import anyio
import httpx
import pytest

from replay_middleware import sdk
from replay_middleware.sdk import (
    CDN_BASE,
    SDK_PINS,
    SDK_VERSION,
    AsyncSdkProvider,
    SdkBundle,
    SdkProvider,
    SdkUnavailable,
    cdn_url,
    fetch_cdn,
    fetch_cdn_async,
    load_local,
    pin_for,
    static_dir,
    vendor_path,
    verify_bundle,
)

ROOT = Path(__file__).resolve().parents[1]
# One TLS context for the tests' own clients: building one per client costs ~40 ms.
TLS = ssl.create_default_context()
FILE_NAME = f"session-replay-browser-{SDK_VERSION}-min.js.gz"


@pytest.fixture(scope="module")
def sdk_js() -> bytes:
    """The real bundle, as scripts/setup.sh vendored it."""
    path = ROOT / "static" / "vendor" / f"session-replay-browser-{SDK_VERSION}-min.js"
    if not path.is_file():
        pytest.fail(f"{path} is missing: run `make setup` to fetch the SDK")
    return path.read_bytes()


# --- a fake CDN on 127.0.0.1 ---------------------------------------------------------------


@dataclass
class Route:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    delay: float = 0.0


class FakeCdn:
    """Serves ``routes`` (keyed by folder: ``/<folder>/<FILE_NAME>``) and counts hits per path."""

    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.hits: Counter[str] = Counter()
        self._lock = threading.Lock()
        cdn = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with cdn._lock:
                    cdn.hits[self.path] += 1
                    route = cdn.routes.get(self.path, Route(404, body=b"not found"))
                time.sleep(route.delay)
                self.send_response(route.status)
                for name, value in route.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(route.body)))
                self.end_headers()
                self.wfile.write(route.body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]

    def base(self, folder: str) -> str:
        return f"http://127.0.0.1:{self.port}/{folder}"

    def path(self, folder: str) -> str:
        return f"/{folder}/{FILE_NAME}"

    def route(self, folder: str, route: Route) -> None:
        with self._lock:
            self.routes[self.path(folder)] = route


@pytest.fixture(scope="module")
def sdk_gz(sdk_js: bytes) -> bytes:
    return gzip.compress(sdk_js)


@pytest.fixture
def cdn(sdk_js: bytes, sdk_gz: bytes) -> Iterator[FakeCdn]:
    server = FakeCdn()
    gz = sdk_gz
    js = {"Content-Type": "application/javascript"}
    server.route("ce", Route(headers={**js, "Content-Encoding": "gzip"}, body=gz))
    server.route("raw", Route(headers={"Content-Type": "application/gzip"}, body=gz))
    server.route("plain", Route(headers=js, body=sdk_js))
    double = gzip.compress(gz, compresslevel=1)
    server.route("double", Route(headers={**js, "Content-Encoding": "gzip"}, body=double))
    server.route("slow", Route(headers={**js, "Content-Encoding": "gzip"}, body=gz, delay=0.3))
    server.route("wrong", Route(headers=js, body=b"alert('not the SDK')"))
    server.route("wrong-gz", Route(body=gzip.compress(b"alert('not the SDK')")))
    server.route("bad-gz", Route(body=b"\x1f\x8b\x08\x00 this is not deflate data"))
    server.route("truncated-gz", Route(body=gz[: len(gz) // 2]))
    server.route("redirect", Route(302, {"Location": server.path("ce")}))
    server.route("error", Route(500, body=b"internal error"))
    # A short poll interval: shutdown() waits for it, at every teardown.
    thread = threading.Thread(target=server.server.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.server.shutdown()
        server.server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def missing(tmp_path: Path) -> Path:
    """A local_path with no file, so that providers go to the CDN."""
    return tmp_path / "absent" / "sdk.js"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


GOOD_FOLDERS = [
    pytest.param("ce", id="content-encoding-gzip"),
    pytest.param("raw", id="raw-gz-body-without-content-encoding"),
    pytest.param("plain", id="plain-js"),
    pytest.param("double", id="gz-body-also-content-encoded"),
]
BAD_FOLDERS = [
    pytest.param("wrong", "does not match the pinned", id="wrong-body"),
    pytest.param("wrong-gz", "does not match the pinned", id="wrong-gzipped-body"),
    pytest.param("bad-gz", "invalid gzip body", id="corrupt-gzip"),
    pytest.param("truncated-gz", "truncated gzip body", id="truncated-gzip"),
    pytest.param("redirect", "answered 302 .*not followed", id="redirect-not-followed"),
    pytest.param("error", "answered 500", id="server-error"),
    pytest.param("nowhere", "answered 404", id="not-found"),
]


# --- pins, paths and the local file -----------------------------------------------------------


def test_pinned_sri_and_sha256_describe_the_vendored_file(sdk_js: bytes) -> None:
    pin = SDK_PINS[SDK_VERSION]
    assert hashlib.sha256(sdk_js).hexdigest() == pin.sha256
    assert pin.sri == "sha384-" + base64.b64encode(hashlib.sha384(sdk_js).digest()).decode()


def test_static_dir_is_the_checkout_folder_when_not_installed_from_a_wheel() -> None:
    assert static_dir() == ROOT / "static"
    assert vendor_path() == ROOT / "static" / "vendor" / "session-replay-browser-1.51.6-min.js"


def test_static_dir_prefers_the_packaged_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_module = tmp_path / "replay_middleware" / "sdk.py"
    (tmp_path / "replay_middleware" / "static").mkdir(parents=True)
    monkeypatch.setattr(sdk, "__file__", str(fake_module))
    assert static_dir() == tmp_path / "replay_middleware" / "static"


def test_cdn_url() -> None:
    assert cdn_url() == f"{CDN_BASE}/session-replay-browser-1.51.6-min.js.gz"
    assert (
        cdn_url("1.51.6", "http://x/libs/")
        == "http://x/libs/session-replay-browser-1.51.6-min.js.gz"
    )


def test_local_file_is_found_and_verified(sdk_js: bytes) -> None:
    bundle = load_local()
    assert bundle is not None
    assert bundle.version == SDK_VERSION
    assert bundle.body == sdk_js
    assert bundle.sri == SDK_PINS[SDK_VERSION].sri
    assert bundle.etag == f'"{SDK_PINS[SDK_VERSION].sha256}"'


def test_bundle_repr_leaves_out_the_body(sdk_js: bytes) -> None:
    assert "body" not in repr(verify_bundle(SDK_VERSION, sdk_js))


def test_tampered_local_file_is_refused(
    sdk_js: bytes, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    tampered = tmp_path / "sdk.js"
    tampered.write_bytes(sdk_js.replace(b"sessionReplay", b"sessionReplaX", 1))
    with caplog.at_level(logging.DEBUG, logger="replay_middleware.sdk"):
        assert load_local(SDK_VERSION, path=tampered) is None
    [record] = caplog.records
    assert record.name == "replay_middleware.sdk"
    assert record.levelno == logging.ERROR
    assert "does not match the pinned" in record.getMessage()


def test_missing_local_file_is_not_an_error(
    missing: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG, logger="replay_middleware.sdk"):
        assert load_local(SDK_VERSION, path=missing) is None
    assert [r.levelno for r in caplog.records] == [logging.DEBUG]


def test_unreadable_local_file_is_an_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="replay_middleware.sdk"):
        assert load_local(SDK_VERSION, path=tmp_path) is None  # a directory
    assert "cannot read" in caplog.text


def test_verify_bundle_refuses_other_bytes() -> None:
    with pytest.raises(SdkUnavailable, match="does not match the pinned"):
        verify_bundle(SDK_VERSION, b"")


@pytest.mark.parametrize(
    "call",
    [
        pytest.param(lambda: pin_for("9.9.9"), id="pin_for"),
        pytest.param(lambda: vendor_path("9.9.9"), id="vendor_path"),
        pytest.param(lambda: cdn_url("9.9.9"), id="cdn_url"),
        pytest.param(lambda: load_local("9.9.9"), id="load_local"),
        pytest.param(lambda: verify_bundle("9.9.9", b""), id="verify_bundle"),
        pytest.param(lambda: SdkProvider("9.9.9"), id="SdkProvider"),
        pytest.param(lambda: AsyncSdkProvider("9.9.9"), id="AsyncSdkProvider"),
    ],
)
def test_unknown_version_is_refused(call: object) -> None:
    assert callable(call)
    with pytest.raises(ValueError, match=r"unknown .*'9\.9\.9'.*pinned versions: 1\.51\.6"):
        call()


def test_unknown_version_is_refused_before_any_request(cdn: FakeCdn) -> None:
    with httpx.Client(verify=TLS) as client, pytest.raises(ValueError, match="pinned versions"):
        fetch_cdn("9.9.9", client, base_url=cdn.base("ce"))
    assert cdn.hits == Counter()


# --- fetch_cdn ---------------------------------------------------------------------------


@pytest.mark.parametrize("folder", GOOD_FOLDERS)
def test_fetch_cdn(cdn: FakeCdn, sdk_js: bytes, folder: str) -> None:
    with httpx.Client(verify=TLS) as client:
        bundle = fetch_cdn(SDK_VERSION, client, base_url=cdn.base(folder))
    assert bundle == verify_bundle(SDK_VERSION, sdk_js)
    assert cdn.hits == Counter({cdn.path(folder): 1})


@pytest.mark.parametrize(("folder", "message"), BAD_FOLDERS)
def test_fetch_cdn_failure(cdn: FakeCdn, folder: str, message: str) -> None:
    with httpx.Client(verify=TLS) as client, pytest.raises(SdkUnavailable, match=message):
        fetch_cdn(SDK_VERSION, client, base_url=cdn.base(folder))
    assert cdn.hits == Counter({cdn.path(folder): 1})  # the redirect target is never asked


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def test_fetch_cdn_connection_refused() -> None:
    base_url = f"http://127.0.0.1:{_closed_port()}/libs"
    with httpx.Client(verify=TLS) as client, pytest.raises(SdkUnavailable, match="ConnectError"):
        fetch_cdn(SDK_VERSION, client, base_url=base_url)


def test_fetch_cdn_refuses_an_oversized_body(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sdk, "_MAX_BUNDLE_BYTES", 10)
    transport = httpx.MockTransport(lambda request: httpx.Response(200, content=b"x" * 11))
    with httpx.Client(transport=transport) as client, pytest.raises(SdkUnavailable, match="larger"):
        fetch_cdn(SDK_VERSION, client)


def test_fetch_cdn_refuses_a_gzip_bomb(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sdk, "_MAX_BUNDLE_BYTES", 1000)
    bomb = gzip.compress(b"\0" * 5000)
    transport = httpx.MockTransport(lambda request: httpx.Response(200, content=bomb))
    client = httpx.Client(transport=transport)
    with client, pytest.raises(SdkUnavailable, match="inflates"):
        fetch_cdn(SDK_VERSION, client)


@pytest.mark.anyio
@pytest.mark.parametrize("folder", GOOD_FOLDERS)
async def test_fetch_cdn_async(cdn: FakeCdn, sdk_js: bytes, folder: str) -> None:
    async with httpx.AsyncClient(verify=TLS) as client:
        bundle = await fetch_cdn_async(SDK_VERSION, client, base_url=cdn.base(folder))
    assert bundle == verify_bundle(SDK_VERSION, sdk_js)
    assert cdn.hits == Counter({cdn.path(folder): 1})


@pytest.mark.anyio
@pytest.mark.parametrize(("folder", "message"), BAD_FOLDERS)
async def test_fetch_cdn_async_failure(cdn: FakeCdn, folder: str, message: str) -> None:
    async with httpx.AsyncClient(verify=TLS) as client:
        with pytest.raises(SdkUnavailable, match=message):
            await fetch_cdn_async(SDK_VERSION, client, base_url=cdn.base(folder))
    assert cdn.hits == Counter({cdn.path(folder): 1})


@pytest.mark.anyio
async def test_fetch_cdn_async_connection_refused() -> None:
    async with httpx.AsyncClient(verify=TLS) as client:
        with pytest.raises(SdkUnavailable, match="failed: ConnectError"):
            await fetch_cdn_async(
                SDK_VERSION, client, base_url=f"http://127.0.0.1:{_closed_port()}/libs"
            )


# --- SdkProvider -------------------------------------------------------------------------


def test_provider_serves_the_local_file_without_network(cdn: FakeCdn, sdk_js: bytes) -> None:
    provider = SdkProvider(base_url=cdn.base("error"))
    bundle = provider.get()
    assert bundle.body == sdk_js
    assert provider.get() is bundle
    assert cdn.hits == Counter()


def test_provider_fetches_once_for_concurrent_callers(
    cdn: FakeCdn, sdk_js: bytes, missing: Path
) -> None:
    provider = SdkProvider(base_url=cdn.base("slow"), local_path=missing)
    barrier = threading.Barrier(8)

    def call() -> SdkBundle:
        barrier.wait()
        return provider.get()

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        bundles = list(pool.map(lambda _: call(), range(8)))
    assert all(b is bundles[0] for b in bundles)
    assert bundles[0].body == sdk_js
    assert cdn.hits == Counter({cdn.path("slow"): 1})
    provider.get()
    assert cdn.hits == Counter({cdn.path("slow"): 1})


def test_provider_retries_a_failed_fetch_once_per_interval(
    cdn: FakeCdn, missing: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()
    provider = SdkProvider(base_url=cdn.base("flaky"), local_path=missing, clock=clock)
    cdn.route("flaky", Route(500))
    with caplog.at_level(logging.ERROR, logger="replay_middleware.sdk"):
        with pytest.raises(SdkUnavailable, match="answered 500"):
            provider.get()
        clock.now += 59
        with pytest.raises(SdkUnavailable, match=r"answered 500 \(next attempt in 1 s\)"):
            provider.get()
    assert cdn.hits[cdn.path("flaky")] == 1
    assert len(caplog.records) == 1  # logged once per failed attempt, not per caller

    clock.now += 1
    with pytest.raises(SdkUnavailable, match="answered 500"):
        provider.get()
    assert cdn.hits[cdn.path("flaky")] == 2

    cdn.routes[cdn.path("flaky")] = cdn.routes[cdn.path("ce")]
    clock.now += 60
    assert provider.get().version == SDK_VERSION
    assert cdn.hits[cdn.path("flaky")] == 3


def test_provider_failures_do_not_stampede(cdn: FakeCdn, missing: Path) -> None:
    cdn.route("slow-error", Route(500, delay=0.2))
    provider = SdkProvider(base_url=cdn.base("slow-error"), local_path=missing)

    def call(_: int) -> str:
        try:
            provider.get()
        except SdkUnavailable as exc:
            return str(exc)
        return "ok"

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        results = list(pool.map(call, range(6)))
    assert all("answered 500" in r for r in results)
    assert cdn.hits[cdn.path("slow-error")] == 1


def test_provider_caches_on_disk_for_the_next_process(
    cdn: FakeCdn, sdk_js: bytes, missing: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    SdkProvider(base_url=cdn.base("ce"), local_path=missing, cache_dir=cache).get()
    assert (cache / "session-replay-browser-1.51.6-min.js").read_bytes() == sdk_js

    later = SdkProvider(base_url=cdn.base("error"), local_path=missing, cache_dir=cache)
    assert later.get().body == sdk_js
    assert cdn.hits == Counter({cdn.path("ce"): 1})


def test_provider_replaces_a_tampered_disk_cache(
    cdn: FakeCdn, sdk_js: bytes, missing: Path, tmp_path: Path
) -> None:
    cached = tmp_path / "session-replay-browser-1.51.6-min.js"
    cached.write_bytes(b"alert('tampered')")
    provider = SdkProvider(base_url=cdn.base("raw"), local_path=missing, cache_dir=tmp_path)
    assert provider.get().body == sdk_js
    assert cached.read_bytes() == sdk_js
    assert cdn.hits == Counter({cdn.path("raw"): 1})


def test_provider_survives_an_unwritable_cache_dir(
    cdn: FakeCdn, missing: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_bytes(b"")
    provider = SdkProvider(base_url=cdn.base("ce"), local_path=missing, cache_dir=not_a_dir)
    with caplog.at_level(logging.WARNING, logger="replay_middleware.sdk"):
        assert provider.get().version == SDK_VERSION
    assert "cannot cache the SDK" in caplog.text


def test_provider_uses_an_injected_client(cdn: FakeCdn, missing: Path) -> None:
    seen: list[str] = []
    hooks = {"request": [lambda r: seen.append(str(r.url))]}
    with httpx.Client(verify=TLS, event_hooks=hooks) as client:
        provider = SdkProvider(base_url=cdn.base("ce"), local_path=missing, client=client)
        provider.get()
        assert not client.is_closed  # the caller's client is the caller's to close
    assert seen == [cdn_url(SDK_VERSION, cdn.base("ce"))]


def test_provider_uses_an_injected_transport(sdk_js: bytes, missing: Path) -> None:
    requested: list[httpx.URL] = []

    def handler(request: httpx.Request) -> httpx.Response:
        requested.append(request.url)
        return httpx.Response(200, content=gzip.compress(sdk_js))

    provider = SdkProvider(local_path=missing, transport=httpx.MockTransport(handler))
    assert provider.get().body == sdk_js
    assert [str(u) for u in requested] == [cdn_url()]


# --- AsyncSdkProvider ----------------------------------------------------------------------


@pytest.mark.anyio
async def test_async_provider_serves_the_local_file_without_network(
    cdn: FakeCdn, sdk_js: bytes
) -> None:
    provider = AsyncSdkProvider(base_url=cdn.base("error"))
    bundle = await provider.get()
    assert bundle.body == sdk_js
    assert await provider.get() is bundle
    assert cdn.hits == Counter()


@pytest.mark.anyio
async def test_async_provider_fetches_once_for_concurrent_callers(
    cdn: FakeCdn, sdk_js: bytes, missing: Path
) -> None:
    provider = AsyncSdkProvider(base_url=cdn.base("slow"), local_path=missing)
    bundles: list[SdkBundle] = []

    async def call() -> None:
        bundles.append(await provider.get())

    async with anyio.create_task_group() as tg:
        for _ in range(8):
            tg.start_soon(call)
    assert len(bundles) == 8
    assert all(b is bundles[0] for b in bundles)
    assert bundles[0].body == sdk_js
    assert cdn.hits == Counter({cdn.path("slow"): 1})


@pytest.mark.anyio
async def test_async_provider_retries_a_failed_fetch_once_per_interval(
    cdn: FakeCdn, missing: Path
) -> None:
    clock = FakeClock()
    provider = AsyncSdkProvider(base_url=cdn.base("flaky"), local_path=missing, clock=clock)
    cdn.route("flaky", Route(500))
    with pytest.raises(SdkUnavailable, match="answered 500"):
        await provider.get()
    clock.now += 59
    with pytest.raises(SdkUnavailable, match="next attempt in 1 s"):
        await provider.get()
    assert cdn.hits[cdn.path("flaky")] == 1

    cdn.routes[cdn.path("flaky")] = cdn.routes[cdn.path("ce")]
    clock.now += 1
    assert (await provider.get()).version == SDK_VERSION
    assert cdn.hits[cdn.path("flaky")] == 2


@pytest.mark.anyio
async def test_async_provider_failures_do_not_stampede(cdn: FakeCdn, missing: Path) -> None:
    cdn.route("slow-error", Route(500, delay=0.2))
    provider = AsyncSdkProvider(base_url=cdn.base("slow-error"), local_path=missing)
    errors: list[str] = []

    async def call() -> None:
        try:
            await provider.get()
        except SdkUnavailable as exc:
            errors.append(str(exc))

    async with anyio.create_task_group() as tg:
        for _ in range(6):
            tg.start_soon(call)
    assert len(errors) == 6
    assert cdn.hits[cdn.path("slow-error")] == 1


@pytest.mark.anyio
async def test_async_provider_caches_on_disk_for_the_next_process(
    cdn: FakeCdn, sdk_js: bytes, missing: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    await AsyncSdkProvider(base_url=cdn.base("raw"), local_path=missing, cache_dir=cache).get()
    assert (cache / "session-replay-browser-1.51.6-min.js").read_bytes() == sdk_js

    later = AsyncSdkProvider(base_url=cdn.base("error"), local_path=missing, cache_dir=cache)
    assert (await later.get()).body == sdk_js
    assert cdn.hits == Counter({cdn.path("raw"): 1})


@pytest.mark.anyio
async def test_async_provider_uses_an_injected_client(cdn: FakeCdn, missing: Path) -> None:
    async with httpx.AsyncClient(verify=TLS) as client:
        provider = AsyncSdkProvider(base_url=cdn.base("ce"), local_path=missing, client=client)
        assert (await provider.get()).version == SDK_VERSION
        assert not client.is_closed
    assert cdn.hits == Counter({cdn.path("ce"): 1})


@pytest.mark.anyio
async def test_async_provider_uses_an_injected_transport(sdk_js: bytes, missing: Path) -> None:
    transport = httpx.MockTransport(lambda request: httpx.Response(200, content=sdk_js))
    provider = AsyncSdkProvider(local_path=missing, transport=transport)
    assert (await provider.get()).body == sdk_js
