"""The upload proxy over real sockets: added latency, throughput, CPU and memory, side by side.

Processes, all on 127.0.0.1:

- the fake Amplitude (``tests/fake_amplitude.py``, ``keep_bodies_up_to=0``) in a child process;
- the proxy: uvicorn serving a trivial ASGI app wrapped in ``ReplayMiddleware`` (proxy mode,
  upstreams at the fake, no per-client cap), in a child process;
- nginx ``proxy_pass`` to the same fake (one worker, ``master_process off``, config, pid, logs
  and temp files in a temp dir, stopped at the end and bounded by ``timeout``): the reference a
  user would otherwise deploy;
- the load: ``wrk`` (``-t1 -c1`` and ``-t1 -c32``, fixed short runs, a Lua script sets method,
  body and headers), so the load generator is not the bottleneck.

Latency, throughput and CPU: SDK-shaped gzip bodies of ~2 KB and ~200 KB with 1 and 32
connections, *direct* (wrk → fake), *proxied* (wrk → uvicorn + ReplayMiddleware → fake) and
*nginx* (wrk → nginx → fake), interleaved rounds (the order rotates each round) so drift on the
shared machine hits all alike; medians over the rounds; the server's CPU per request from
``/proc/<pid>/stat``.

Clients: the HTTP clients the proxy could use upstream (httpx, httpcore's pool, aiohttp if
installed — a benchmark extra, never a runtime dependency —, h11 on asyncio streams, and
``replay_middleware.upstream_http``), one upload at a time against the fake, in a child process.

Memory: one 10 MiB upload of incompressible bytes labelled gzip, through a uvicorn server
running in a thread of *this* process (so ``tracemalloc`` and ``/proc/self/status`` see the
middleware), with the fake in its child process (its buffers are not counted). The upload is
checked byte-identical upstream through the sha256 the fake records.

Every loop is bounded (durations, request counts, deadlines; the child processes exit when their
stdin closes or after ``CHILD_LIFETIME_S``).

    python benchmarks/proxy.py [--rounds 5] [--scale 1.0]      # prints the BENCHMARKS.md section
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import gzip
import hashlib
import json
import logging
import os
import platform
import random
import re
import select
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx
import uvicorn

from replay_middleware import ReplayConfig, ReplayMiddleware
from replay_middleware.proxy import Upstreams

ROOT = Path(__file__).resolve().parent.parent
KEY = "0123456789abcdef0123456789abcdef"
SECRET = "bench-secret-key-0123456789abcdef"
QUERY = "device_id=bench-device-1&session_id=1735689600000&type=replay"
TRACK_PATH = "/sessions/v2/track"  # the fake's US upload path (Upstreams.at)
PROXY_PATH = "/_replay/track"
HEADERS = {
    "authorization": f"Bearer {KEY}",
    "content-type": "application/json",
    "content-encoding": "gzip",
}
SIZES = (("2 KB", 2 * 1024), ("200 KB", 200 * 1024))
CONCURRENCY = (1, 32)
BIG_UPLOAD = 10 * 1024 * 1024  # = ReplayConfig.max_upload_bytes (the cap is inclusive)
CHILD_LIFETIME_S = 600.0  # a child left behind stops by itself
START_TIMEOUT_S = 20.0
REQUEST_TIMEOUT_S = 30.0

App = Callable[[dict[str, Any], Any, Any], Any]


# --- payloads --------------------------------------------------------------------------------


def _event(rng: random.Random, ts: int) -> str:
    """One rrweb-like event, serialised (the SDK sends events as JSON strings)."""
    words = ("cart", "item", "price", "checkout", "user", "button", "total", "shipping", "save")
    kind = rng.random()
    if kind < 0.6:  # mouse / scroll positions
        data: dict[str, Any] = {
            "source": rng.choice((1, 3, 6)),
            "positions": [
                {
                    "x": rng.randrange(1920),
                    "y": rng.randrange(4000),
                    "id": rng.randrange(900),
                    "timeOffset": -rng.randrange(500),
                }
                for _ in range(rng.randrange(1, 6))
            ],
        }
        etype = 3
    elif kind < 0.9:  # DOM mutations with some text
        data = {
            "source": 0,
            "texts": [],
            "attributes": [
                {"id": rng.randrange(900), "attributes": {"class": f"c-{rng.getrandbits(24):06x}"}}
            ],
            "adds": [
                {
                    "parentId": rng.randrange(900),
                    "nextId": None,
                    "node": {
                        "type": 3,
                        "textContent": " ".join(
                            rng.choice(words) for _ in range(rng.randrange(2, 9))
                        )
                        + f" {rng.randrange(10**6)}",
                        "id": rng.randrange(900, 90_000),
                    },
                }
            ],
            "removes": [],
        }
        etype = 3
    else:  # input
        data = {
            "source": 5,
            "text": "*" * rng.randrange(1, 20),
            "isChecked": False,
            "id": rng.randrange(900),
        }
        etype = 3
    return json.dumps({"type": etype, "data": data, "timestamp": ts}, separators=(",", ":"))


def sdk_body(target: int, seed: int = 1) -> bytes:
    """gzip of ``{"version":1,"events":[...]}`` with the most events that stay ≤ ``target``."""
    rng = random.Random(seed)
    events: list[str] = []
    ts = 1_735_689_600_000

    def packed(n: int) -> bytes:
        while len(events) < n:
            events.append(_event(rng, ts + 37 * len(events)))
        doc = json.dumps({"version": 1, "events": events[:n]}, separators=(",", ":"))
        return gzip.compress(doc.encode(), compresslevel=6, mtime=0)

    lo, hi = 1, 2
    while len(packed(hi)) <= target:  # bounded: each step doubles the event count
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if len(packed(mid)) <= target else (lo, mid)
    return packed(lo)


def big_body() -> bytes:
    """10 MiB of random bytes behind a gzip header (the proxy never decompresses)."""
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03"
    return header + os.urandom(BIG_UPLOAD - len(header))


# --- the servers -----------------------------------------------------------------------------


async def trivial_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:  # ends at lifespan.shutdown
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/plain")],
        }
    )
    await send({"type": "http.response.body", "body": b"ok"})


def proxied_app(upstream_url: str) -> ReplayMiddleware:
    # No per-client cap: wrk's 32 connections all come from 127.0.0.1, where the default cap
    # of 8 uploads in flight would answer most of them 429 (that cap has its own figures in
    # the slow-loris section).
    config = ReplayConfig(
        api_key=KEY, secret_key=SECRET, upload_mode="proxy", max_uploads_per_client=0
    )
    return ReplayMiddleware(trivial_app, config=config, upstreams=Upstreams.at(upstream_url))


class ThreadedUvicorn:
    """uvicorn on a socket bound here (port known up front), in a thread of this process."""

    def __init__(self, app: App) -> None:
        # proto=IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets whose proto says
        # TCP, and accepted sockets inherit the listener's. With proto 0, uvicorn's response
        # head and body (two writes) meet Nagle + delayed ACK: ~40 ms per keep-alive request.
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port: int = self.sock.getsockname()[1]
        self.server = uvicorn.Server(
            uvicorn.Config(
                app,
                host="127.0.0.1",
                port=self.port,
                log_level="warning",
                access_log=False,
                lifespan="on",
                timeout_keep_alive=30,
            )
        )
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )

    def start(self) -> None:
        self.thread.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(START_TIMEOUT_S)
        self.sock.close()
        if self.thread.is_alive():
            raise RuntimeError("uvicorn did not stop")


def _stdin_closed_or(deadline: float, on_line: Callable[[str], None] | None = None) -> None:
    """Block until stdin closes or ``deadline``; hand each line to ``on_line``."""
    while (left := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select([sys.stdin], [], [], min(left, 1.0))
        if not ready:
            continue
        line = sys.stdin.readline()
        if not line:
            return
        if on_line is not None:
            on_line(line.strip())


def _reply(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def child_fake() -> None:
    """Child: the fake Amplitude; answers ``stats`` lines on stdin with one JSON line."""
    sys.path.insert(0, str(ROOT))
    from tests.fake_amplitude import FakeAmplitude

    with FakeAmplitude(keep_bodies_up_to=0) as fake:
        _reply({"port": fake.port})

        def on_line(command: str) -> None:
            tracks = fake.requests_for("track")
            last = tracks[-1] if tracks else None
            _reply(
                {
                    "track": len(tracks),
                    "complete": sum(r.complete for r in tracks),
                    "connections_opened": fake.connections_opened,
                    "last": None
                    if last is None
                    else {
                        "size": last.size,
                        "sha256": last.sha256,
                        "complete": last.complete,
                        "content_encoding": last.header("content-encoding"),
                        "content_length": last.header("content-length"),
                        "transfer_encoding": last.header("transfer-encoding"),
                    },
                }
            )

        _stdin_closed_or(time.monotonic() + CHILD_LIFETIME_S, on_line)


def child_proxy(upstream_url: str) -> None:
    """Child: uvicorn + ReplayMiddleware in the main thread, until stdin closes."""
    logging.disable(logging.WARNING)
    server = ThreadedUvicorn(proxied_app(upstream_url))

    def announce_then_wait() -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not server.server.started and time.monotonic() < deadline:
            time.sleep(0.01)
        _reply({"port": server.port})
        _stdin_closed_or(time.monotonic() + CHILD_LIFETIME_S)
        server.server.should_exit = True

    threading.Thread(target=announce_then_wait, daemon=True).start()
    server.server.run(sockets=[server.sock])


@dataclass
class Child:
    """A child process of this script, talking JSON lines over stdin/stdout."""

    proc: subprocess.Popen[str]
    info: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def start(cls, *args: str) -> Child:
        proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        child = cls(proc)
        child.info = child._read()
        return child

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], START_TIMEOUT_S)
        line = self.proc.stdout.readline() if ready else ""
        if not line:
            self.stop()
            raise RuntimeError(f"benchmark child {self.proc.args[2:]} did not answer")
        result: dict[str, Any] = json.loads(line)
        return result

    def ask(self, command: str) -> dict[str, Any]:
        stdin: IO[str] | None = self.proc.stdin
        assert stdin is not None
        stdin.write(command + "\n")
        stdin.flush()
        return self._read()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.info['port']}"

    def cpu_s(self) -> float:
        """User + system CPU seconds of the child so far (all its threads)."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()  # our own child, by its handle
            self.proc.wait(timeout=5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


# --- part 1: latency and throughput, with wrk -------------------------------------------------

WRK = shutil.which("wrk") or "/usr/bin/wrk"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
WRK_SECONDS = 3  # per run; each configuration runs direct, proxied and nginx `rounds` times
WRK_SCRIPT = """
wrk.method = "POST"
local f = io.open(os.getenv("REPLAY_BENCH_BODY"), "rb")
wrk.body = f:read("*all")
f:close()
wrk.headers["Authorization"] = "Bearer KEY"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Content-Encoding"] = "gzip"
"""
TARGETS = ("direct", "proxied", "nginx")


@dataclass
class Run:
    """One wrk run: requests, seconds, latency percentiles (ms), errors, server CPU seconds."""

    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    errors: int
    cpu_s: float  # the proxy's (uvicorn or nginx) CPU during the run; 0 for direct

    @property
    def rate(self) -> float:
        return self.requests / self.seconds


@dataclass
class Side:
    runs: list[Run] = field(default_factory=list)

    def _median(self, values: list[float]) -> float:
        return statistics.median(values)

    @property
    def rate(self) -> float:
        return self._median([r.rate for r in self.runs])

    @property
    def p50_ms(self) -> float:
        return self._median([r.p50_ms for r in self.runs])

    @property
    def p99_ms(self) -> float:
        return self._median([r.p99_ms for r in self.runs])

    @property
    def cpu_ms(self) -> float:
        """Server CPU per request over all runs."""
        requests = sum(r.requests for r in self.runs)
        return sum(r.cpu_s for r in self.runs) / max(requests, 1) * 1000

    @property
    def errors(self) -> int:
        return sum(r.errors for r in self.runs)


def _ms(text: str) -> float:
    """A wrk duration (``812.00us``, ``1.53ms``, ``2.01s``) in ms."""
    for unit, factor in (("us", 0.001), ("ms", 1.0), ("s", 1000.0)):
        if text.endswith(unit):
            return float(text[: -len(unit)]) * factor
    return float(text)


def wrk(url: str, body_file: Path, script: Path, conns: int, seconds: int) -> Run:
    """``wrk -t1 -c<conns> -d<seconds>s --latency``: one load thread (the machine has two cores:
    wrk, the proxy and the fake share them). Bounded by ``timeout``."""
    env = {**os.environ, "REPLAY_BENCH_BODY": str(body_file)}
    out = subprocess.run(
        [
            "timeout",
            str(seconds + 20),
            WRK,
            "-t1",
            f"-c{conns}",
            f"-d{seconds}s",
            "--latency",
            "--timeout",
            "10s",
            "-s",
            str(script),
            url,
        ],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    percentiles = dict(re.findall(r"^\s+(50|99)%\s+(\S+)\s*$", out, re.M))
    summary = re.search(r"(\d+) requests in ([\d.]+)(ms|s|m),", out)
    if summary is None or not {"50", "99"} <= set(percentiles):
        raise RuntimeError(f"wrk output not understood: {out!r}")
    scale = {"ms": 0.001, "s": 1.0, "m": 60.0}[summary.group(3)]
    requests, wall = int(summary.group(1)), float(summary.group(2)) * scale
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors += int(non2xx.group(1)) if non2xx else 0
    return Run(requests, wall, _ms(percentiles["50"]), _ms(percentiles["99"]), errors, 0.0)


def pid_cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Nginx:
    """nginx ``proxy_pass`` to the same fake: the reference a user would otherwise deploy.
    One process (``master_process off``), config, pid, logs and temp files in a temp dir,
    request bodies buffered (nginx's default), upstream keep-alive; stopped by :meth:`stop`
    and, whatever happens, by ``timeout`` after ``CHILD_LIFETIME_S``."""

    def __init__(self, upstream_port: int, tmp: Path) -> None:
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()
        conf = tmp / "nginx.conf"
        conf.write_text(
            f"""daemon off;
master_process off;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    client_max_body_size 11m;
    client_body_buffer_size 1m;
    keepalive_requests 100000;
    upstream fake {{ server 127.0.0.1:{upstream_port}; keepalive 64; }}
    server {{
        listen 127.0.0.1:{self.port};
        location / {{
            proxy_pass http://fake;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Cookie "";
            proxy_redirect off;
        }}
    }}
}}
"""
        )
        self.proc = subprocess.Popen(
            [
                "timeout",
                str(int(CHILD_LIFETIME_S)),
                NGINX,
                "-p",
                str(tmp),
                "-c",
                str(conf),
                "-e",
                str(tmp / "error.log"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("nginx did not start") from None
                time.sleep(0.05)
        self.pid = int((tmp / "nginx.pid").read_text())
        self.version = (
            subprocess.run([NGINX, "-v"], capture_output=True, text=True)
            .stderr.strip()
            .removeprefix("nginx version: ")
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.proc.terminate()  # timeout passes SIGTERM on to nginx: fast shutdown
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)


def measure_throughput(
    fake: Child, proxy: Child, nginx: Nginx | None, rounds: int, seconds: int, tmp: Path
) -> dict[tuple[str, int], dict[str, Side]]:
    """wrk against the fake directly, through the proxy, and through nginx, interleaved: each
    round runs the three in turn (the order rotates each round)."""
    if not Path(WRK).exists():
        raise RuntimeError("benchmarks/proxy.py needs wrk (Debian: apt-get install wrk)")
    script = tmp / "post.lua"
    script.write_text(WRK_SCRIPT.replace("KEY", KEY))
    urls = {
        "direct": (f"{fake.url}{TRACK_PATH}?{QUERY}", None),
        "proxied": (f"{proxy.url}{PROXY_PATH}?{QUERY}", proxy.proc.pid),
    }
    if nginx is not None:
        urls["nginx"] = (f"{nginx.url}{TRACK_PATH}?{QUERY}", nginx.pid)
    results: dict[tuple[str, int], dict[str, Side]] = {}
    for label, size in SIZES:
        body_file = tmp / f"body-{size}"
        body_file.write_bytes(sdk_body(size))
        for conns in CONCURRENCY:
            sides = {name: Side() for name in urls}
            for url, _ in urls.values():  # warm-up: connections, pools, caches
                wrk(url, body_file, script, conns, 1)
            names = list(urls)
            for r in range(rounds):
                for name in names[r % len(names) :] + names[: r % len(names)]:
                    url, pid = urls[name]
                    cpu0 = pid_cpu_s(pid) if pid else 0.0
                    run = wrk(url, body_file, script, conns, seconds)
                    run.cpu_s = pid_cpu_s(pid) - cpu0 if pid else 0.0
                    sides[name].runs.append(run)
            results[(label, conns)] = sides
    return results


# --- part 1b: HTTP clients for the upstream, side by side --------------------------------------


def child_clients(upstream_url: str, body_file: str, n: int) -> None:
    """Child: CPU and latency of one upload through each candidate client, sequential on one
    kept-alive connection to the fake; one JSON line per client (issue 10: "measure the
    alternatives side by side and choose on the figures")."""
    body = Path(body_file).read_bytes()
    url = f"{upstream_url}{TRACK_PATH}?{QUERY}"
    headers = [
        ("content-type", "application/json"),
        ("content-encoding", "gzip"),
        ("authorization", f"Bearer {KEY}"),
        ("accept-encoding", "identity"),
        ("user-agent", "replay-middleware"),
        ("x-forwarded-for", "203.0.113.0"),
        ("content-length", str(len(body))),
    ]

    async def measure(name: str, one: Callable[[], Any]) -> None:
        for _ in range(50):
            await one()
        latencies = []
        cpu0, t0 = time.process_time(), time.perf_counter()
        for _ in range(n):
            start = time.perf_counter()
            await one()
            latencies.append(time.perf_counter() - start)
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - t0
        _reply(
            {
                "client": name,
                "cpu_ms": cpu / n * 1000,
                "p50_ms": statistics.median(latencies) * 1000,
                "rate": n / wall,
            }
        )

    async def main() -> None:
        import httpcore

        async with httpx.AsyncClient(trust_env=False, follow_redirects=False) as client:

            async def via_httpx() -> None:
                request = httpx.Request("POST", url, headers=headers, content=body)
                response = await client.send(request, stream=True)
                async for _ in response.aiter_raw():
                    pass
                await response.aclose()

            await measure("httpx.AsyncClient (before)", via_httpx)
            raw = [(k.encode(), v.encode()) for k, v in headers]
            async with httpcore.AsyncConnectionPool(max_connections=100) as pool:

                async def via_httpcore() -> None:
                    async with pool.stream("POST", url, headers=raw, content=body) as response:
                        async for _ in response.aiter_stream():
                            pass

                await measure("httpcore.AsyncConnectionPool", via_httpcore)
                # httpcore retries a failing `import sniffio` on every request when it is
                # not installed (anyio >= 4.11 no longer needs it): what that costs.
                if "sniffio" not in sys.modules:
                    try:
                        import sniffio  # noqa: F401
                    except ImportError:
                        sys.modules["sniffio"] = None  # type: ignore[assignment]
                        await measure("httpx, sniffio import cached", via_httpx)
                        await measure("httpcore, sniffio import cached", via_httpcore)
                        del sys.modules["sniffio"]
        try:
            import aiohttp
        except ImportError:
            aiohttp = None
        if aiohttp is not None:
            async with aiohttp.ClientSession(
                auto_decompress=False, cookie_jar=aiohttp.DummyCookieJar(), trust_env=False
            ) as session:

                async def via_aiohttp() -> None:
                    async with session.post(
                        url, data=body, headers=dict(headers), allow_redirects=False
                    ) as response:
                        async for _ in response.content.iter_any():
                            pass

                await measure("aiohttp.ClientSession", via_aiohttp)
        import h11

        reader, writer = await asyncio.open_connection(
            "127.0.0.1", int(upstream_url.rsplit(":", 1)[1])
        )
        target = f"{TRACK_PATH}?{QUERY}"
        h11_headers = [*headers, ("host", upstream_url.split("//", 1)[1])]

        async def via_h11() -> None:
            conn = h11.Connection(h11.CLIENT)
            writer.write(conn.send(h11.Request(method="POST", target=target, headers=h11_headers)))
            writer.write(conn.send(h11.Data(data=body)))
            writer.write(conn.send(h11.EndOfMessage()))
            await writer.drain()
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(await reader.read(65536))
                elif isinstance(event, h11.EndOfMessage):
                    break

        await measure("h11 on asyncio streams", via_h11)
        writer.close()
        try:
            from replay_middleware.upstream_http import UpstreamPool
        except ImportError:  # the code before issue 10 (BEFORE figures)
            return
        own = UpstreamPool()
        size = len(body)

        async def via_own() -> None:
            response = await own.post(url, headers, [body], size)
            async for _ in response.iter_raw():
                pass
            await response.aclose()

        await measure("upstream_http.UpstreamPool (after)", via_own)
        await own.aclose()

    asyncio.run(main())
    _reply({"done": True})


def measure_clients(fake: Child, tmp: Path, n: int) -> list[dict[str, Any]]:
    body_file = tmp / "clients-body"
    body_file.write_bytes(sdk_body(2 * 1024))
    proc = subprocess.Popen(
        [
            sys.executable,
            str(Path(__file__).resolve()),
            "--child-clients",
            fake.url,
            str(body_file),
            str(n),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    child = Child(proc)
    rows: list[dict[str, Any]] = []
    try:
        while True:  # bounded: the child prints one line per client, then "done"
            row = child._read()
            if row.get("done"):
                break
            rows.append(row)
    finally:
        child.stop()
    return rows


# --- part 2: memory during a 10 MiB upload ---------------------------------------------------


def raw_upload(port: int, body: bytes, chunk: int = 64 * 1024) -> int:
    """POST ``body`` on a plain socket, sent from a memoryview (the client allocates nothing
    per chunk, so tracemalloc sees the server); returns the status."""
    head = (
        f"POST {PROXY_PATH}?{QUERY} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Authorization: Bearer {KEY}\r\nContent-Type: application/json\r\n"
        f"Content-Encoding: gzip\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", port), timeout=REQUEST_TIMEOUT_S) as sock:
        sock.sendall(head.encode())
        view = memoryview(body)
        for i in range(0, len(view), chunk):
            sock.sendall(view[i : i + chunk])
        answer = b""
        while len(answer) < 1 << 20:  # bounded: the proxy's answers are tiny
            data = sock.recv(65536)
            if not data:
                break
            answer += data
    status_line = answer.split(b"\r\n", 1)[0].split()
    return int(status_line[1]) if len(status_line) > 1 else 0


def proc_status_kb(*names: str) -> dict[str, int]:
    values: dict[str, int] = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in names:
            values[name] = int(rest.split()[0])
    return values


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux ≥ 4.0: ``5`` to clear_refs)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


@dataclass
class Memory:
    size: int
    identical: bool
    status: int
    seconds: float
    rss_before_kb: int
    rss_after_kb: int
    hwm_before_kb: int
    hwm_after_kb: int
    hwm_reset: bool
    traced_peak: int
    traced_identical: bool


def measure_memory(fake: Child) -> Memory:
    server = ThreadedUvicorn(proxied_app(fake.url))
    server.start()
    try:
        # Warm-up: the proxy's httpx client (and its TLS context) and a pooled connection.
        for _ in range(3):
            if raw_upload(server.port, sdk_body(2 * 1024)) != 200:
                raise RuntimeError("warm-up upload through the proxy failed")
        body = big_body()
        digest = hashlib.sha256(body).hexdigest()

        def arrived() -> bool:
            last = fake.ask("stats")["last"]
            return bool(
                last
                and last["complete"]
                and (last["size"], last["sha256"]) == (len(body), digest)
                and last["content_encoding"] == "gzip"
                and last["content_length"] == str(len(body))
                and last["transfer_encoding"] is None
            )

        # RSS: no tracemalloc (its own bookkeeping would show in RSS).
        gc.collect()
        hwm_reset = reset_peak_rss()
        before = proc_status_kb("VmRSS", "VmHWM")
        t0 = time.perf_counter()
        status = raw_upload(server.port, body)
        seconds = time.perf_counter() - t0
        after = proc_status_kb("VmRSS", "VmHWM")
        identical = status == 200 and arrived()

        # Python-heap peak of the whole process (server thread included) around the upload.
        gc.collect()
        tracemalloc.start()
        try:
            baseline = tracemalloc.get_traced_memory()[0]
            traced_status = raw_upload(server.port, body)
            peak = tracemalloc.get_traced_memory()[1] - baseline
        finally:
            tracemalloc.stop()
        traced_identical = traced_status == 200 and arrived()
    finally:
        server.stop()
    return Memory(
        size=len(body),
        identical=identical,
        status=status,
        seconds=seconds,
        rss_before_kb=before["VmRSS"],
        rss_after_kb=after["VmRSS"],
        hwm_before_kb=before["VmHWM"],
        hwm_after_kb=after["VmHWM"],
        hwm_reset=hwm_reset,
        traced_peak=peak,
        traced_identical=traced_identical,
    )


# --- report ----------------------------------------------------------------------------------


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _mib(n: float) -> str:
    return f"{n / (1024 * 1024):.1f} MiB"


def report(
    results: dict[tuple[str, int], dict[str, Side]],
    clients: list[dict[str, Any]],
    memory: Memory,
    rounds: int,
    seconds: int,
    body_sizes: dict[str, int],
    load: tuple[float, float],
    nginx_version: str | None,
) -> str:
    cores = os.cpu_count() or 0
    wrk_version = subprocess.run([WRK, "-v"], capture_output=True, text=True).stdout.split()[1:2]
    lines = [
        "## Upload proxy",
        "",
        "Written by `make bench` (`benchmarks/proxy.py`). Real sockets on 127.0.0.1, HTTP/1.1",
        "keep-alive, load from `wrk` (one thread, 1 or 32 connections, SDK-shaped POSTs). *Direct*:",
        "wrk → fake Amplitude (`tests/fake_amplitude.py`, a threaded stdlib server). *Proxied*: wrk →",
        "uvicorn serving a trivial app wrapped in `ReplayMiddleware` (proxy mode) → the same fake.",
        "*nginx*: wrk → nginx `proxy_pass` (one worker, upstream keep-alive, bodies buffered) → the",
        "same fake: the reference a user would otherwise deploy. wrk, the server and the fake **share",
        f"this machine's {cores} cores**, so the proxy's CPU is taken from the fake and from wrk.",
        f"{rounds} interleaved rounds of {seconds} s per configuration (direct, proxied and nginx in",
        "turn, the order rotating each round), after a warm-up; latency percentiles and requests/s",
        "are the median round, CPU per request is the server process's (uvicorn's or nginx's) user +",
        "system time over all rounds divided by their requests. Quote the ratios and deltas; absolute",
        "times move with the machine.",
        "",
        f"- Machine: {cpu_model()}, {cores} cores, {platform.machine()}, Python "
        f"{platform.python_version()}, {platform.system()}; uvicorn {uvicorn.__version__} (h11, "
        f"asyncio loop), httpx {httpx.__version__}, wrk {''.join(wrk_version) or '?'}, nginx "
        f"{nginx_version or 'not run'}",
        f"- Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; 1-minute load average "
        f"{load[0]:.2f} before the run (other work on the machine), {load[1]:.2f} at its end "
        "(this benchmark's processes included)",
        '- Bodies: gzip of `{"version":1,"events":[...]}` with rrweb-like event strings: '
        + ", ".join(f"{label} = {size} B" for label, size in body_sizes.items()),
        "",
        "| Body | Clients | Path | p50 ms | p99 ms | p50 added ms | req/s | req/s ratio to direct "
        "| server CPU ms / request |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    errors = 0
    for (label, conc), sides in results.items():
        d = sides["direct"]
        for name, side in sides.items():
            errors += side.errors
            direct = name == "direct"
            lines.append(
                f"| {label} | {conc} | {name} | {side.p50_ms:.2f} | {side.p99_ms:.2f} "
                f"| {'' if direct else f'{side.p50_ms - d.p50_ms:+.2f}'} | {side.rate:.0f} "
                f"| {'1' if direct else f'**{side.rate / d.rate:.2f}**'} "
                f"| {'' if direct else f'{side.cpu_ms:.3f}'} |"
            )
    lines.append("")
    for (label, conc), sides in results.items():
        d, p = sides["direct"], sides["proxied"]
        n = sides.get("nginx")
        ref = (
            f"; nginx adds {n.p50_ms - d.p50_ms:.2f} ms, ×{n.rate / d.rate:.2f}, "
            f"{n.cpu_ms:.3f} ms CPU"
            if n is not None
            else ""
        )
        lines.append(
            f"- {label}, {conc} client{'s' if conc > 1 else ''}: the proxy adds "
            f"{p.p50_ms - d.p50_ms:.2f} ms at the median and {p.p99_ms - d.p99_ms:.2f} ms at p99; "
            f"throughput ×{p.rate / d.rate:.2f} of direct (rounds {min(r.rate for r in p.runs):.0f}–"
            f"{max(r.rate for r in p.runs):.0f} req/s); {p.cpu_ms:.3f} ms of CPU per upload{ref}."
        )
    lines += [
        "- Direct, the fake answers a kept-alive POST in about 0.1 ms of its own CPU, so any proxy in",
        "  the path (a second hop, two more socket reads and writes per request, on the same two",
        "  cores) halves or worse the direct rate: compare the proxied rows with the nginx rows.",
        f"- Failed requests (socket errors or non-2xx): {errors}"
        + ("." if errors == 0 else " — **the figures above are not trustworthy**."),
    ]
    if clients:
        lines += [
            "",
            "HTTP clients for the upstream side, side by side (issue 10): one 2 KB upload at a time on",
            "one kept-alive connection to the same fake, in a process of its own; CPU is that process's",
            "per upload (request written, response read to its end). The proxy used httpx before;",
            "`replay_middleware.upstream_http` is what it uses now when it makes its own client (an",
            "injected `http_client` is still used as given). aiohttp is a benchmark extra only.",
            "",
            "| Client | CPU ms / upload | p50 ms | uploads/s |",
            "|---|---:|---:|---:|",
        ]
        for row in clients:
            lines.append(
                f"| {row['client']} | {row['cpu_ms']:.3f} | {row['p50_ms']:.3f} | {row['rate']:.0f} |"
            )
    rss_delta = (memory.rss_after_kb - memory.rss_before_kb) * 1024
    hwm_delta = (memory.hwm_after_kb - memory.hwm_before_kb) * 1024
    mb_s = memory.size / memory.seconds / 1e6
    identical = memory.identical and memory.traced_identical
    if memory.hwm_reset:
        hwm = (
            f"VmHWM (reset just before the upload) {memory.hwm_before_kb / 1024:.1f} → "
            f"{memory.hwm_after_kb / 1024:.1f} MiB: peak Δ {_mib(hwm_delta)}, "
            f"ratio peak Δ / body = **{hwm_delta / memory.size:.3f}**"
        )
    else:
        hwm = (
            f"VmHWM {memory.hwm_before_kb / 1024:.1f} → {memory.hwm_after_kb / 1024:.1f} MiB "
            "(could not be reset: the high-water mark since the process started)"
        )
    lines += [
        "",
        f"Memory, one 10 MiB upload ({memory.size} B of random bytes behind a gzip header, exactly",
        "the default `max_upload_bytes`): uvicorn + `ReplayMiddleware` run in a thread of the",
        "benchmark process, the fake in its own process (its buffers are not counted); the body is",
        "sent from a plain socket out of a buffer allocated beforehand, so what is allocated during the",
        "upload is the server's.",
        "",
        f"- Arrived upstream byte-identical (size and sha256 as recorded by the fake, `Content-Encoding:"
        f" gzip`, same `Content-Length`): **{'yes' if identical else 'NO'}** (status {memory.status},"
        f" {memory.seconds:.2f} s, {mb_s:.0f} MB/s).",
        f"- tracemalloc peak during the upload (Python heap, whole process): **{_mib(memory.traced_peak)}**"
        f" for a {_mib(memory.size)} body, ratio peak / body = **{memory.traced_peak / memory.size:.3f}**.",
        f"- RSS (a separate upload, without tracemalloc): VmRSS {memory.rss_before_kb / 1024:.1f} → "
        f"{memory.rss_after_kb / 1024:.1f} MiB (Δ {_mib(rss_delta)}); {hwm}. Both include the 10 MiB "
        "body this process holds to send.",
        "",
    ]
    return "\n".join(lines)


def upload_proxy_section(rounds: int = 5, scale: float = 1.0) -> str:
    """Run the parts and return the ``## Upload proxy`` markdown section. ``scale`` multiplies
    the length of each wrk run (``WRK_SECONDS``) and the uploads per client alternative."""
    logging.disable(logging.WARNING)
    load_before = os.getloadavg()[0]
    seconds = max(1, round(WRK_SECONDS * scale))
    nginx_version = None
    with tempfile.TemporaryDirectory(prefix="replay-bench-") as tmp_name:
        tmp = Path(tmp_name)
        fake = Child.start("--child-fake")
        try:
            memory = measure_memory(fake)  # first, while this process's heap is still small
            clients = measure_clients(fake, tmp, max(200, round(2000 * scale)))
            proxy = Child.start("--child-proxy", fake.url)
            try:
                nginx = Nginx(fake.info["port"], tmp) if Path(NGINX).exists() else None
                try:
                    nginx_version = nginx.version if nginx else None
                    results = measure_throughput(fake, proxy, nginx, rounds, seconds, tmp)
                finally:
                    if nginx is not None:
                        nginx.stop()
            finally:
                proxy.stop()
        finally:
            fake.stop()
    sizes = {label: len(sdk_body(size)) for label, size in SIZES}
    return report(
        results,
        clients,
        memory,
        rounds,
        seconds,
        sizes,
        (load_before, os.getloadavg()[0]),
        nginx_version,
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--scale", type=float, default=1.0, help="multiply the run lengths")
    parser.add_argument("--child-fake", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--child-proxy", metavar="UPSTREAM_URL", help=argparse.SUPPRESS)
    parser.add_argument("--child-clients", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_fake:
        child_fake()
    elif args.child_clients:
        url, body_file, n = args.child_clients
        child_clients(url, body_file, int(n))
    elif args.child_proxy:
        child_proxy(args.child_proxy)
    else:
        print(upload_proxy_section(args.rounds, args.scale))


if __name__ == "__main__":
    main()
