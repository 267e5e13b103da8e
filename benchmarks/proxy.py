"""The upload proxy over real sockets: added latency, throughput and memory, side by side.

Three processes, all on 127.0.0.1:

- the fake Amplitude (``tests/fake_amplitude.py``, ``keep_bodies_up_to=0``) in a child process;
- the proxy: uvicorn serving a trivial ASGI app wrapped in ``ReplayMiddleware`` (proxy mode,
  upstreams at the fake), in a child process for the latency part;
- the client (``httpx.AsyncClient``, ``trust_env=False``), in this process.

Latency and throughput: SDK-shaped gzip bodies of ~2 KB and ~200 KB with 1 and 32 concurrent
clients, *direct* (client → fake) against *proxied* (client → uvicorn + ReplayMiddleware → fake).
Rounds of direct and proxied alternate (the order flips each round) so drift on the shared
machine hits both alike; latencies are pooled over the rounds, throughput is the median round.

Memory: one 10 MiB upload of incompressible bytes labelled gzip, through a uvicorn server
running in a thread of *this* process (so ``tracemalloc`` and ``/proc/self/status`` see the
middleware), with the fake in its child process (its buffers are not counted). The upload is
checked byte-identical upstream through the sha256 the fake records.

Every loop is bounded (request counts, deadlines; the child processes exit when their stdin
closes or after ``CHILD_LIFETIME_S``).

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
import math
import os
import platform
import random
import select
import socket
import statistics
import subprocess
import sys
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
REQUESTS = {1: 300, 32: 1500}  # per side (direct, proxied) and configuration, over all rounds
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
    config = ReplayConfig(api_key=KEY, secret_key=SECRET, upload_mode="proxy")
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


# --- part 1: latency and throughput ----------------------------------------------------------


@dataclass
class Side:
    latencies: list[float] = field(default_factory=list)  # seconds, all rounds
    rates: list[float] = field(default_factory=list)  # requests/s, one per round
    errors: int = 0  # measured requests that failed
    warmup_errors: int = 0
    client_cpu_s: float = 0.0  # CPU of each process over the measured requests
    proxy_cpu_s: float = 0.0
    fake_cpu_s: float = 0.0
    upstream_conns: int = 0  # connections the fake accepted during the measured requests

    def cpu_ms(self, seconds: float) -> float:
        return seconds / len(self.latencies) * 1000

    @property
    def p50_ms(self) -> float:
        return statistics.median(self.latencies) * 1000

    @property
    def p95_ms(self) -> float:
        ordered = sorted(self.latencies)
        return ordered[math.ceil(0.95 * len(ordered)) - 1] * 1000

    @property
    def rate(self) -> float:
        return statistics.median(self.rates)


async def _batch(
    client: httpx.AsyncClient,
    url: str,
    body: bytes,
    n: int,
    concurrency: int,
    side: Side,
    timed: bool,
) -> float:
    """``n`` POSTs by ``concurrency`` workers; latencies go to ``side`` if ``timed``; wall s."""
    left = n

    async def worker() -> None:
        nonlocal left
        while left > 0:  # bounded: every pass takes one of the n requests
            left -= 1
            t0 = time.perf_counter()
            try:
                response = await client.post(url, content=body, headers=HEADERS)
                ok = response.status_code == 200
            except httpx.HTTPError:
                ok = False
            dt = time.perf_counter() - t0
            if timed:
                side.latencies.append(dt)
                side.errors += not ok
            else:
                side.warmup_errors += not ok

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(min(concurrency, n))))
    return time.perf_counter() - start


async def measure_latency(
    fake: Child, proxy: Child, rounds: int, scale: float
) -> dict[tuple[str, int], dict[str, Side]]:
    bodies = {label: sdk_body(size) for label, size in SIZES}
    targets = {
        "direct": f"{fake.url}{TRACK_PATH}?{QUERY}",
        "proxied": f"{proxy.url}{PROXY_PATH}?{QUERY}",
    }
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64, keepalive_expiry=60)
    results: dict[tuple[str, int], dict[str, Side]] = {}
    async with httpx.AsyncClient(
        limits=limits, trust_env=False, timeout=REQUEST_TIMEOUT_S
    ) as client:
        for label, _ in SIZES:
            body = bodies[label]
            for conc in CONCURRENCY:
                sides = {"direct": Side(), "proxied": Side()}
                per_round = max(1, round(REQUESTS[conc] * scale / rounds))
                for name, url in targets.items():  # warm-up: connections, pools, caches
                    await _batch(client, url, body, max(50, 4 * conc), conc, sides[name], False)
                gc.collect()
                for r in range(rounds):
                    order = ("direct", "proxied") if r % 2 == 0 else ("proxied", "direct")
                    for name in order:
                        side = sides[name]
                        await _batch(client, targets[name], body, conc, conc, side, False)
                        conns0 = fake.ask("stats")["connections_opened"]
                        cpu0 = (time.process_time(), proxy.cpu_s(), fake.cpu_s())
                        wall = await _batch(
                            client, targets[name], body, per_round, conc, side, True
                        )
                        side.client_cpu_s += time.process_time() - cpu0[0]
                        side.proxy_cpu_s += proxy.cpu_s() - cpu0[1]
                        side.fake_cpu_s += fake.cpu_s() - cpu0[2]
                        side.upstream_conns += fake.ask("stats")["connections_opened"] - conns0
                        side.rates.append(per_round / wall)
                results[(label, conc)] = sides
    return results


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
    memory: Memory,
    rounds: int,
    body_sizes: dict[str, int],
    load: tuple[float, float],
) -> str:
    cores = os.cpu_count() or 0
    lines = [
        "## Upload proxy",
        "",
        "Written by `make bench` (`benchmarks/proxy.py`). Real sockets on 127.0.0.1, HTTP/1.1",
        "keep-alive. *Direct*: client → fake Amplitude (`tests/fake_amplitude.py`). *Proxied*:",
        "client → uvicorn serving a trivial app wrapped in `ReplayMiddleware` (proxy mode) → the same",
        "fake. The client (one `httpx.AsyncClient`, pool of 64), the proxy and the fake run in three",
        f"processes that **share this machine's {cores} cores**: a proxied request also pays for the",
        "proxy's CPU being taken from the client and the fake, and at 32 clients the client itself is",
        "CPU-bound, so read the ratios as what a proxy costs on a saturated box, not on its own cores.",
        f"{rounds} interleaved rounds per configuration (direct and proxied alternate, order flipped",
        "each round), after warm-up; latency percentiles over all requests of all rounds, requests/s",
        "the median round. Quote the ratios; absolute times move with the machine.",
        "",
        f"- Machine: {cpu_model()}, {cores} cores, {platform.machine()}, Python "
        f"{platform.python_version()}, {platform.system()}; uvicorn {uvicorn.__version__} (h11, "
        f"asyncio loop), httpx {httpx.__version__}",
        f"- Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; 1-minute load average "
        f"{load[0]:.2f} before the run (other work on the machine), {load[1]:.2f} at its end "
        "(this benchmark's processes included)",
        '- Bodies: gzip of `{"version":1,"events":[...]}` with rrweb-like event strings: '
        + ", ".join(f"{label} = {size} B" for label, size in body_sizes.items()),
        "",
        "| Body | Clients | Requests per side | p50 ms direct / proxied | p50 ratio "
        "| p95 ms direct / proxied | p95 ratio | req/s direct / proxied | req/s ratio "
        "| proxy CPU ms / request |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    errors = warmup_errors = 0
    for (label, conc), sides in results.items():
        d, p = sides["direct"], sides["proxied"]
        errors += d.errors + p.errors
        warmup_errors += d.warmup_errors + p.warmup_errors
        lines.append(
            f"| {label} | {conc} | {len(p.latencies)} | {d.p50_ms:.2f} / {p.p50_ms:.2f} "
            f"| **{p.p50_ms / d.p50_ms:.2f}** | {d.p95_ms:.2f} / {p.p95_ms:.2f} "
            f"| {p.p95_ms / d.p95_ms:.2f} | {d.rate:.0f} / {p.rate:.0f} | **{p.rate / d.rate:.2f}** "
            f"| {p.cpu_ms(p.proxy_cpu_s):.2f} |"
        )
    lines.append("")
    client_bound = []
    for (label, conc), sides in results.items():
        d, p = sides["direct"], sides["proxied"]
        busy = [s.cpu_ms(s.client_cpu_s) * s.rate / 1000 for s in (d, p)]
        if conc > 1 and max(busy) >= 0.8:  # with one client a busy client is just serial
            client_bound.append(f"{label} × {conc}")
        lines.append(
            f"- {label}, {conc} client{'s' if conc > 1 else ''}: the proxy adds "
            f"{p.p50_ms - d.p50_ms:.2f} ms at the median (×{p.p50_ms / d.p50_ms:.2f}), "
            f"{p.p95_ms - d.p95_ms:.2f} ms at p95 (×{p.p95_ms / d.p95_ms:.2f}); throughput "
            f"×{p.rate / d.rate:.2f} (rounds: {min(d.rates):.0f}–{max(d.rates):.0f} direct, "
            f"{min(p.rates):.0f}–{max(p.rates):.0f} proxied req/s). CPU ms per request: client {d.cpu_ms(d.client_cpu_s):.2f} "
            f"direct / {p.cpu_ms(p.client_cpu_s):.2f} proxied (client process busy "
            f"{busy[0]:.2f} / {busy[1]:.2f} cores), fake {d.cpu_ms(d.fake_cpu_s):.2f} / "
            f"{p.cpu_ms(p.fake_cpu_s):.2f}. Upstream connections opened while measuring: "
            f"{d.upstream_conns} direct, {p.upstream_conns} proxied."
        )
    if client_bound:
        lines.append(
            f"- Client-bound ({', '.join(client_bound)}): the single-process client keeps about one "
            "core busy, so it, not the proxy, sets the pace and the latency/throughput ratios there "
            "sit near 1 or even below it, and move a lot between runs. httpx's pool costs more CPU per request as connections grow "
            "(httpcore's `_assign_requests_to_connections`, encode/httpcore#1035). Compare the "
            "proxy's CPU per request instead; the 1-client rows are the added latency."
        )
    lines.append(
        f"- Failed requests (non-200 or transport error): {errors} measured, {warmup_errors} in "
        "warm-up" + ("." if errors == 0 else " — **the figures above are not trustworthy**.")
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
    """Run both parts and return the ``## Upload proxy`` markdown section."""
    logging.disable(logging.WARNING)
    load_before = os.getloadavg()[0]
    fake = Child.start("--child-fake")
    try:
        memory = measure_memory(fake)  # first, while this process's heap is still small
        proxy = Child.start("--child-proxy", fake.url)
        try:
            results = asyncio.run(measure_latency(fake, proxy, rounds, scale))
        finally:
            proxy.stop()
    finally:
        fake.stop()
    sizes = {label: len(sdk_body(size)) for label, size in SIZES}
    return report(results, memory, rounds, sizes, (load_before, os.getloadavg()[0]))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--scale", type=float, default=1.0, help="multiply the request counts")
    parser.add_argument("--child-fake", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--child-proxy", metavar="UPSTREAM_URL", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_fake:
        child_fake()
    elif args.child_proxy:
        child_proxy(args.child_proxy)
    else:
        print(upload_proxy_section(args.rounds, args.scale))


if __name__ == "__main__":
    main()
