"""Real servers under load: throughput and latency of the bare app against the same app wrapped
in replay-middleware, side by side (issue 10, goal 2).

- **uvicorn + Starlette**: one worker, asyncio loop, ``--no-access-log``, with h11 (and httptools
  when the servers' environment has it; the row says which).
- **gunicorn + Flask**: one sync worker, no access log (gunicorn's default). One worker, not two:
  the machine has two cores and ``wrk`` needs one of them; a second worker would take CPU from
  the load generator and the run would measure their contention instead of the app. One worker
  is also what the uvicorn rows run. Sync workers close the connection after every response
  (``Connection: close``), so every gunicorn request here includes a TCP connect.

Apps (``benchmarks/server_apps.py``): ``/page`` a 30 KB HTML page, ``/json`` 2 KB of JSON, both
built once at import; *replay* wraps the app as the README says (``add_middleware`` /
``SessionReplay``), sampled (``sample_rate=1.0``), a ``secret_key``, local mode, no debug
header. Pages are measured for a *new* visitor (no cookie: ids minted, cookie set on every
response) and a *returning* one (``wrk -H 'Cookie: ...'`` with the cookie the server set on a
first request, fetched again each round: verified, re-signed).

Load: Debian's ``wrk``, one thread, ``--latency``, a short fixed duration per run after a
warm-up; the variants' runs alternate and the order flips each round (the machine is shared and
drifts); requests/s is the median round, the ratio to bare the median of the rounds' ratios,
p50/p99 the median of the rounds' percentiles. The CPU time of ``wrk`` (``RUSAGE_CHILDREN``)
and of the server (``/proc/<pid>/stat`` of every process of its group) is recorded for each
run, to show the server is the bottleneck, not ``wrk``; the server's CPU per request, bare over
replay, is the throughput ratio a worker with a core of its own would see, steadier than
requests/s when other work takes the shared cores.

``--profile`` serves one variant with ``server_apps.StackSampler`` (stack samples on the
server's CPU clock) and prints where its CPU time goes, per package and per function of ours.

Code trees: the servers import ``replay_middleware`` from ``--code`` (default: this checkout)
through ``PYTHONPATH``, from a working directory outside the checkout. ``--before PATH`` (or
``REPLAY_BENCH_BEFORE``) adds a third variant running the package of another tree, e.g. the
previous commit, so one run gives bare / before / current side by side.

Every process is bounded: servers run under coreutils ``timeout`` (a lifetime cap) in a
process group of their own, with the parent-death signal set, and are killed at the end and on
errors; each ``wrk`` run has a subprocess timeout.

    python benchmarks/servers.py [--quick] [--before /tmp/before] [--code PATH] [-v]
    python benchmarks/servers.py --profile uvicorn-h11|gunicorn [--bare] [--route page|json]
        [--visitor new|returning] [--seconds 15]

``servers_section()`` returns the BENCHMARKS.md section (benchmarks/run.py).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import hashlib
import http.client
import importlib.metadata
import json
import os
import platform
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from server_apps import PROFILE_ENV  # benchmarks/server_apps.py

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BEFORE_ENV = "REPLAY_BENCH_BEFORE"
WRK = shutil.which("wrk") or "/usr/bin/wrk"
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
# Browser-like request headers: the middleware decides on what a page request looks like.
HEADERS = (
    "Accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
    "Accept-Language: en-US,en;q=0.9",
    "User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/126.0 Safari/537.36",
)
# wrk's summary as one JSON line (its text output rounds latencies to two digits).
WRK_SCRIPT = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"bytes":%d,"p50_us":%d,"p99_us":%d,' ..
    '"mean_us":%.1f,"max_us":%d,"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d}\\n',
    summary.requests, summary.duration, summary.bytes, latency:percentile(50),
    latency:percentile(99), latency.mean, latency.max, e.connect, e.read, e.write, e.status,
    e.timeout))
end
"""
# A saturated server kept less busy than this was short of CPU (other work on the machine).
STARVED_BELOW = 0.6
GOALS = {"page": 0.85, "json": 0.97}  # throughput ratio replay / bare (issue 10, goal 2)


# --- plan --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    route: str  # "page" or "json"
    visitor: str  # "new" or "returning"

    @property
    def label(self) -> str:
        return (
            "30 KB page, new visitor"
            if self.route == "page" and self.visitor == "new"
            else ("30 KB page, returning visitor" if self.route == "page" else "2 KB JSON")
        )


SCENARIOS = (Scenario("page", "new"), Scenario("page", "returning"), Scenario("json", "new"))


@dataclass(frozen=True)
class Variant:
    name: str  # "bare", "before", "current"
    code: Path | None  # the tree whose replay_middleware the server imports; None: bare

    @property
    def label(self) -> str:
        return {"bare": "bare", "before": "replay (before)", "current": "replay"}[self.name]

    @property
    def short(self) -> str:
        return {"bare": "bare", "before": "before", "current": "replay"}[self.name]


@dataclass(frozen=True)
class ServerKind:
    name: str  # "uvicorn-h11", "uvicorn-httptools", "gunicorn"
    label: str


# --- child processes ---------------------------------------------------------------------------


def _set_pdeathsig() -> None:  # pragma: no cover - runs in the forked child
    """The child gets SIGTERM when this process dies (Linux prctl PR_SET_PDEATHSIG)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def server_env(code: Path | None, variant: str, store: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REPLAY_")}
    paths = [str(HERE)] + ([str(code)] if code is not None else [])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["REPLAY_BENCH_VARIANT"] = variant
    env["REPLAY_BENCH_STORE"] = str(store)
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # leave no __pycache__ in the trees measured
    return env


def server_command(kind: ServerKind, port: int) -> list[str]:
    if kind.name.startswith("uvicorn"):
        return [
            sys.executable, "-m", "uvicorn", "--factory", "server_apps:starlette_app",
            "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
            "--http", kind.name.split("-", 1)[1], "--loop", "asyncio", "--lifespan", "on",
            "--no-access-log", "--log-level", "warning", "--timeout-keep-alive", "60",
        ]  # fmt: skip
    return [
        sys.executable, "-m", "gunicorn", "server_apps:flask_app()",
        "--bind", f"127.0.0.1:{port}", "--workers", "1", "--worker-class", "sync",
        "--log-level", "warning", "--timeout", "120", "--backlog", "2048",
    ]  # fmt: skip


@dataclass
class Server:
    """One server process group (``timeout`` → the server, and gunicorn's worker)."""

    kind: ServerKind
    variant: Variant
    port: int
    proc: subprocess.Popen[bytes]
    log: Path

    @classmethod
    def start(
        cls,
        kind: ServerKind,
        variant: Variant,
        workdir: Path,
        lifetime_s: float,
        command_wrap: Callable[[list[str]], list[str]] | None = None,
        extra_env: dict[str, str] | None = None,
    ) -> Server:
        port = free_port()
        code = variant.code if variant.name != "bare" else None
        env = server_env(code, "bare" if code is None else "replay", workdir / "store")
        env.update(extra_env or {})
        command = server_command(kind, port)
        if command_wrap is not None:
            command = command_wrap(command)
        log = workdir / f"{kind.name}-{variant.name}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                ["timeout", "--kill-after=5", f"{lifetime_s:.0f}", *command],
                cwd=workdir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: killed as one, measured as one
                preexec_fn=_set_pdeathsig,
            )
        server = cls(kind, variant, port, proc, log)
        try:
            server.wait_ready()
        except BaseException:
            server.stop()
            raise
        return server

    def wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:  # bounded by the deadline
            if self.proc.poll() is not None:
                break
            with contextlib.suppress(OSError, http.client.HTTPException):
                if get(self.port, "/json").status == 200:
                    return
            time.sleep(0.05)
        raise RuntimeError(
            f"{self.kind.name} ({self.variant.name}) did not start:\n"
            + self.log.read_text(errors="replace")[-3000:]
        )

    def pids(self) -> list[int]:
        """Every live process of the server's group (the ``timeout`` wrapper included)."""
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            with contextlib.suppress(OSError, IndexError):
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                if int(fields[2]) == self.proc.pid:  # pgrp
                    found.append(int(entry.name))
        return found

    def cpu_s(self) -> float:
        """User + system CPU seconds of the group's live processes so far."""
        total = 0
        for pid in self.pids():
            with contextlib.suppress(OSError, IndexError):
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                total += int(fields[11]) + int(fields[12])
        return total / os.sysconf("SC_CLK_TCK")

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """SIGTERM to the group, SIGKILL if it lingers; then SIGKILL to whatever is left of the
        group (an orphaned gunicorn worker) while ``timeout``, exited but not yet reaped, still
        holds the group's id, so no other process can have it; then reap."""
        if self.proc.returncode is not None:
            return
        self._signal_group(signal.SIGTERM)
        if not self._exited(timeout_s):
            self._signal_group(signal.SIGKILL)
            self._exited(STOP_TIMEOUT_S)
        self._signal_group(signal.SIGKILL)
        self.proc.wait(timeout=STOP_TIMEOUT_S)

    def _signal_group(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)  # our own child's group, by its id

    def _exited(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for ``timeout`` to exit, without reaping it."""
        deadline = time.monotonic() + timeout_s
        while True:  # bounded by the deadline
            flags = os.WEXITED | os.WNOWAIT | os.WNOHANG
            with contextlib.suppress(ChildProcessError):
                if os.waitid(os.P_PID, self.proc.pid, flags) is not None:
                    return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)


@contextlib.contextmanager
def servers_running(
    kinds: Sequence[ServerKind], variants: Sequence[Variant], workdir: Path, lifetime_s: float
) -> Iterator[dict[tuple[str, str], Server]]:
    started: dict[tuple[str, str], Server] = {}
    try:
        for kind in kinds:
            for variant in variants:
                started[(kind.name, variant.name)] = Server.start(
                    kind, variant, workdir, lifetime_s
                )
        yield started
    finally:
        for server in started.values():
            server.stop()


# --- HTTP helpers ------------------------------------------------------------------------------


@dataclass
class Answer:
    status: int
    headers: list[tuple[str, str]]
    body: bytes


def get(port: int, path: str, cookie: str = "") -> Answer:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        headers = dict(h.split(": ", 1) for h in HEADERS)
        if cookie:
            headers["Cookie"] = cookie
        conn.request("GET", path, headers=headers)
        response = conn.getresponse()
        return Answer(response.status, response.getheaders(), response.read())
    finally:
        conn.close()


def replay_cookie(answer: Answer) -> str:
    """``name=value`` of the identity cookie the middleware set."""
    for name, value in answer.headers:
        if name.lower() == "set-cookie" and value.startswith("replay_id="):
            return value.split(";", 1)[0]
    raise RuntimeError("the replay server set no identity cookie on /page")


@dataclass
class Check:
    """What a replay variant does to a page, checked before measuring."""

    injected: bool
    cookie_new: bool
    cookie_returning: bool
    page_bytes: int


def check_variant(server: Server) -> Check:
    first = get(server.port, "/page")
    injected = first.status == 200 and b"/_replay/" in first.body
    if server.variant.name == "bare":
        return Check(injected, False, False, len(first.body))
    cookie = replay_cookie(first)
    again = get(server.port, "/page", cookie)
    return Check(
        injected=injected and b"/_replay/" in again.body,
        cookie_new=True,
        cookie_returning=any(n.lower() == "set-cookie" for n, _ in again.headers),
        page_bytes=len(first.body),
    )


# --- wrk ---------------------------------------------------------------------------------------


@dataclass
class Run:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    seconds: float
    errors: int
    bytes_per_request: float
    wrk_cpu_s: float
    server_cpu_s: float


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def wrk(server: Server, path: str, conns: int, seconds: float, script: Path, cookie: str) -> Run:
    # wrk takes whole seconds only.
    cmd = [
        WRK,
        "-t1",
        f"-c{conns}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "10s",
        "--latency",
    ]
    cmd += ["-s", str(script)]
    for header in HEADERS + ((f"Cookie: {cookie}",) if cookie else ()):
        cmd += ["-H", header]
    cmd.append(f"http://127.0.0.1:{server.port}{path}")
    cpu0, server0 = children_cpu_s(), server.cpu_s()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 30, check=False)
    wrk_cpu, server_cpu = children_cpu_s() - cpu0, server.cpu_s() - server0
    line = next((s for s in done.stdout.splitlines() if s.startswith("WRKJSON ")), None)
    if done.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stdout}\n{done.stderr}")
    data = json.loads(line.removeprefix("WRKJSON "))
    wall = data["duration_us"] / 1e6
    errors = sum(data[k] for k in ("connect", "read", "write", "status", "timeout"))
    return Run(
        rps=data["requests"] / wall,
        p50_ms=data["p50_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
        requests=data["requests"],
        seconds=wall,
        errors=errors,
        bytes_per_request=data["bytes"] / max(1, data["requests"]),
        wrk_cpu_s=wrk_cpu,
        server_cpu_s=server_cpu,
    )


# --- measuring ---------------------------------------------------------------------------------


@dataclass
class Cell:
    """One variant in one (server, scenario, connections) configuration: its rounds."""

    runs: list[Run] = field(default_factory=list)

    def median(self, attr: str) -> float:
        return float(statistics.median(float(getattr(r, attr)) for r in self.runs))

    @property
    def rps(self) -> float:
        return self.median("rps")

    def ratio_to(self, bare: Cell) -> float:
        """Median over rounds of this variant's req/s over bare's in the same round: runs a few
        seconds apart, so drift on the shared machine largely cancels."""
        pairs = zip(self.runs, bare.runs, strict=True)
        return float(statistics.median(r.rps / b.rps for r, b in pairs))

    def busy(self, attr: str) -> float:
        """Cores kept busy over the measured runs (CPU seconds / wall seconds)."""
        return sum(float(getattr(r, attr)) for r in self.runs) / sum(r.seconds for r in self.runs)

    def cpu_us_per_request(self) -> float:
        return sum(r.server_cpu_s for r in self.runs) / sum(r.requests for r in self.runs) * 1e6


Key = tuple[str, Scenario, int]  # server kind, scenario, connections


def cookies(on: dict[str, Server], scenario: Scenario) -> dict[str, str]:
    """Per variant, the ``Cookie`` value to send: none for a new visitor; for a returning one a
    fresh identity cookie from each replay server (bare is sent the current build's, so every
    variant gets the same request)."""
    if scenario.visitor != "returning":
        return {name: "" for name in on}
    got = {
        name: replay_cookie(get(server.port, "/page"))
        for name, server in on.items()
        if name != "bare"
    }
    got["bare"] = got["current"]
    return got


def measure(
    servers: dict[tuple[str, str], Server],
    kinds: Sequence[ServerKind],
    variants: Sequence[Variant],
    conns: Sequence[int],
    rounds: int,
    seconds: float,
    warmup_s: float,
    script: Path,
    progress: bool,
) -> dict[Key, dict[str, Cell]]:
    results: dict[Key, dict[str, Cell]] = {}
    for kind in kinds:
        for scenario in SCENARIOS:
            path = f"/{scenario.route}"
            for c in conns:
                cells = {v.name: Cell() for v in variants}
                on = {v.name: servers[(kind.name, v.name)] for v in variants}
                jar = cookies(on, scenario)
                for v in variants:  # warm-up, not recorded
                    wrk(on[v.name], path, c, warmup_s, script, jar[v.name])
                for r in range(rounds):
                    jar = cookies(on, scenario)
                    order = list(variants) if r % 2 == 0 else list(reversed(variants))
                    for v in order:
                        run = wrk(on[v.name], path, c, seconds, script, jar[v.name])
                        cells[v.name].runs.append(run)
                        if progress:
                            print(
                                f"  {kind.name} {scenario.label} c={c} round {r + 1} {v.name}: "
                                f"{run.rps:.0f} req/s p50 {run.p50_ms:.2f} ms p99 "
                                f"{run.p99_ms:.2f} ms, wrk {run.wrk_cpu_s / run.seconds:.2f} "
                                f"server {run.server_cpu_s / run.seconds:.2f} cores",
                                file=sys.stderr,
                                flush=True,
                            )
                results[(kind.name, scenario, c)] = cells
    return results


# --- report ------------------------------------------------------------------------------------


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def wrk_version() -> str:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run([WRK, "-v"], capture_output=True, text=True, timeout=10, check=False)
        first = (out.stdout or out.stderr).splitlines()[0]
        return first.split(" [", 1)[0].removeprefix("wrk ")
    return "unknown"


def httptools_in(env: dict[str, str]) -> bool:
    """Whether the servers' Python (with their ``PYTHONPATH``) can import httptools."""
    probe = subprocess.run(
        [sys.executable, "-c", "import httptools"],
        env=env, cwd=tempfile.gettempdir(), capture_output=True, timeout=30, check=False,
    )  # fmt: skip
    return probe.returncode == 0


def _commit(tree: Path) -> str:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(
            ["git", "-C", str(tree), "log", "-1", "--format=%h"],
            capture_output=True, text=True, timeout=10, check=False,
        )  # fmt: skip
        dirty = subprocess.run(
            ["git", "-C", str(tree), "status", "--porcelain", "--", "replay_middleware"],
            capture_output=True, text=True, timeout=10, check=False,
        )  # fmt: skip
        if out.returncode == 0:
            commit = out.stdout.strip() + (" + uncommitted changes" if dirty.stdout.strip() else "")
            return f"{commit}; sources sha256 {_sources_digest(tree)}"
    return f"sources sha256 {_sources_digest(tree)}"


def _sources_digest(tree: Path) -> str:
    """Which state of a tree under edit was measured: a digest of its package's ``*.py``."""
    digest = hashlib.sha256()
    for path in sorted((tree / "replay_middleware").rglob("*.py")):
        digest.update(path.relative_to(tree).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


@dataclass
class Meta:
    kinds: list[ServerKind]
    variants: list[Variant]
    conns: list[int]
    rounds: int
    seconds: float
    warmup_s: float
    checks: dict[tuple[str, str], Check]
    load: tuple[float, float]
    started: float
    finished: float
    httptools: bool
    trees: dict[str, str]  # variant name: the code measured (commit, digest of the sources)


def _fmt_ratio(ratio: float, goal: float | None) -> str:
    if goal is None:
        return f"{ratio:.2f}"
    return f"**{ratio:.2f}**"


def report(results: dict[Key, dict[str, Cell]], meta: Meta) -> str:
    names = [v.name for v in meta.variants]
    replay = [v for v in meta.variants if v.name != "bare"]
    side = " / ".join(v.short for v in meta.variants)
    cores = os.cpu_count() or 0
    trees = "; ".join(f"{v.label}: `{v.code}` ({meta.trees[v.name]})" for v in replay)
    lines = [
        "## Real servers: uvicorn + Starlette, gunicorn + Flask",
        "",
        "Written by `make bench` (`benchmarks/servers.py`, apps in `benchmarks/server_apps.py`).",
        "Each server on 127.0.0.1 runs the same app bare and wrapped in replay-middleware",
        "(sampled, `secret_key`, local mode, no debug header), loaded by Debian's `wrk` (one",
        "thread). uvicorn: one worker, asyncio loop, no access log. gunicorn: one sync worker (the",
        f"{cores} cores are shared with `wrk`; a second worker would contend with it), no access",
        "log; sync workers close the connection after each response, so each request includes a",
        "TCP connect. `/page` is a 30 KB HTML page, `/json` 2 KB of JSON, both prebuilt (the app",
        "does no work of its own: the hardest case for the ratio). *New visitor*: no cookie (ids",
        "minted and a cookie set on every response); *returning*: the identity cookie from a first",
        f"response, fetched again each round. {meta.rounds} rounds of {meta.seconds:g} s per "
        f"variant after a {meta.warmup_s:g} s warm-up;",
        "the variants alternate, the order flipping each round. req/s: the median round; ratio: the",
        "median of the rounds' ratios (a variant's req/s over bare's in the same round); p50/p99:",
        "the median of the rounds' percentiles (wrk's). Server CPU: all processes of the server,",
        "per request; *CPU ratio*: bare's CPU per request over the variant's, the throughput ratio",
        "a worker with a core of its own would see (steadier than req/s when other work on the",
        "machine takes the server's core now and then). Absolute figures move with the machine;",
        "quote the ratios.",
        "",
        f"- Machine: {cpu_model()}, {cores} cores (shared), {platform.machine()}, Python "
        f"{platform.python_version()}, {platform.system()}; uvicorn {version('uvicorn')} "
        f"(h11 {version('h11')}"
        + (f", httptools {version('httptools')}" if meta.httptools else "; httptools not installed")
        + f"), Starlette {version('starlette')}, gunicorn {version('gunicorn')}, "
        f"Flask {version('flask')}, wrk {wrk_version()}",
        f"- Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(meta.started))}; the run took "
        f"{meta.finished - meta.started:.0f} s; 1-minute load average {meta.load[0]:.2f} before, "
        f"{meta.load[1]:.2f} after",
    ]
    if trees:
        lines.append(f"- Code measured: {trees}")
    lines += [
        "",
        f"| Server | Response | wrk -c | req/s {side} | ratio to bare: "
        + " / ".join(v.short for v in replay)
        + f" | p50 ms {side} | p99 ms {side} | server CPU µs / request {side} "
        "| CPU ratio bare / "
        + " / ".join(v.short for v in replay)
        + " | cores busy (least server / most wrk) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    label = {k.name: k.label for k in meta.kinds}
    errors = starved_rows = 0
    for (kind_name, scenario, c), cells in results.items():
        bare = cells["bare"]
        goal = GOALS[scenario.route] if c == max(meta.conns) else None
        ratios = " / ".join(_fmt_ratio(cells[v.name].ratio_to(bare), goal) for v in replay)
        busy_server = min(cells[n].busy("server_cpu_s") for n in names)
        busy_wrk = max(cells[n].busy("wrk_cpu_s") for n in names)
        starved = c == max(meta.conns) and busy_server < STARVED_BELOW
        starved_rows += starved
        errors += sum(r.errors for n in names for r in cells[n].runs)
        rps = " / ".join(f"{cells[n].rps:.0f}" for n in names)
        p50 = " / ".join(f"{cells[n].median('p50_ms'):.2f}" for n in names)
        p99 = " / ".join(f"{cells[n].median('p99_ms'):.2f}" for n in names)
        cpu = " / ".join(f"{cells[n].cpu_us_per_request():.0f}" for n in names)
        cpu_ratios = " / ".join(
            f"{bare.cpu_us_per_request() / cells[v.name].cpu_us_per_request():.2f}" for v in replay
        )
        lines.append(
            f"| {label[kind_name]} | {scenario.label} | {c} | {rps} | {ratios} | {p50} | {p99} "
            f"| {cpu} | {cpu_ratios} | {busy_server:.2f}{' ⚠' if starved else ''} / {busy_wrk:.2f} |"
        )
    lines.append("")
    top = max(meta.conns)
    for kind in meta.kinds:
        parts = []
        for scenario in SCENARIOS:
            cells = results[(kind.name, scenario, top)]
            goal = GOALS[scenario.route]
            figures = ", ".join(
                f"{v.short} **{cells[v.name].ratio_to(cells['bare']):.2f}**" for v in replay
            )
            parts.append(f"{scenario.label} {figures} (goal ≥ {goal:.2f})")
        lines.append(
            f"- **{kind.label}**, requests/s relative to bare at {top} connections: "
            + "; ".join(parts)
            + "."
        )
        # The same goal as a CPU budget: the ratio a server-bound worker reaches is about
        # bare CPU / (bare CPU + added CPU), so ≥ g allows bare × (1/g − 1) µs per request.
        # Per-request CPU is steadier than requests/s on a shared machine.
        parts = []
        for scenario in SCENARIOS:
            cells = results[(kind.name, scenario, top)]
            goal = GOALS[scenario.route]
            bare_us = cells["bare"].cpu_us_per_request()
            added = ", ".join(
                f"{v.short} +{cells[v.name].cpu_us_per_request() - bare_us:.0f} "
                f"(×{bare_us / cells[v.name].cpu_us_per_request():.2f})"
                for v in replay
            )
            parts.append(
                f"{scenario.label}: bare {bare_us:.0f} µs, budget +{bare_us * (1 / goal - 1):.0f}, "
                f"{added}"
            )
        lines.append(
            "  Server CPU per request (µs; added by the middleware, and bare / replay as the "
            "throughput one core would give): " + "; ".join(parts) + "."
        )
    # The load generator is not the bottleneck: per request it needs a fraction of the
    # server's CPU, and while the server's worker is busy (≈ 1 core at most) wrk is not.
    top_cells = [cells[n] for (_, _, c), cells in results.items() if c == top for n in names]

    def per_request(cell: Cell, attr: str) -> float:
        return sum(float(getattr(r, attr)) for r in cell.runs) / sum(r.requests for r in cell.runs)

    headroom = min(per_request(x, "server_cpu_s") / per_request(x, "wrk_cpu_s") for x in top_cells)
    wrk_us = max(per_request(x, "wrk_cpu_s") * 1e6 for x in top_cells)
    server_busy = sorted(r.server_cpu_s / r.seconds for x in top_cells for r in x.runs)
    wrk_busy = sorted(r.wrk_cpu_s / r.seconds for x in top_cells for r in x.runs)
    if starved_rows:
        lines.append(
            f"- ⚠ {starved_rows} row(s) at {top} connections where a server kept less than "
            f"{STARVED_BELOW:.1f} core busy although requests were always waiting: it was waiting "
            "for a core (other work on the machine), so there its req/s says more about that than "
            "about the app; read the CPU ratio."
        )
    lines.append(
        f"- Load generator: at {top} connections `wrk` spent at most {wrk_us:.0f} µs of CPU per "
        f"request, and in every row and variant at least {headroom:.1f}× less than the server, so "
        "on its own core it could send that many times what the server answers. The servers' "
        f"processes kept {server_busy[0]:.2f}–{server_busy[-1]:.2f} cores busy (median "
        f"{statistics.median(server_busy):.2f}), `wrk` {wrk_busy[0]:.2f}–{wrk_busy[-1]:.2f}: one "
        "worker uses at most one core, and what it lacks of a full core went to other work on the "
        "shared machine (load average above). At 1 connection neither side is saturated: those "
        "rows are latency, a request at a time."
    )
    for (kind_name, variant), check in meta.checks.items():
        if variant == "bare":
            continue
        name = next(v.label for v in meta.variants if v.name == variant)
        lines.append(
            f"- {label[kind_name]}, {name}: page injected **{'yes' if check.injected else 'NO'}** "
            f"({check.page_bytes} B served for the 30 KB page); new visitor gets a cookie: "
            f"{'yes' if check.cookie_new else 'no'}; returning visitor's cookie re-set: "
            f"{'yes' if check.cookie_returning else 'no'}."
        )
    lines.append(
        f"- Failed requests (socket errors, non-2xx, timeouts): {errors}"
        + ("." if errors == 0 else " — **the figures above are not trustworthy**.")
    )
    lines.append("")
    return "\n".join(lines)


# --- profile -----------------------------------------------------------------------------------

# gunicorn's hooks run in its worker: the profile spans the worker's life after its start-up.
GUNICORN_PROFILE_CONF = """
def post_worker_init(worker):
    from server_apps import StackSampler

    worker.bench_sampler = StackSampler()
    worker.bench_sampler.start()


def worker_exit(server, worker):
    sampler = getattr(worker, "bench_sampler", None)
    if sampler is not None:
        sampler.stop({out!r})
"""


def _category(path: str) -> str:
    """Who a frame's own time belongs to: our package, a third-party package, or the stdlib."""
    if "/replay_middleware/" in path:
        return "replay_middleware"
    if "site-packages/" in path:
        return path.split("site-packages/", 1)[1].split("/", 1)[0].removesuffix(".py")
    return "stdlib" if path.startswith((sys.base_prefix, sys.prefix)) or "<" in path else "other"


# Frames whose own time is waiting for work, not work (rarely sampled on a CPU clock).
IDLE_FRAMES = {("selectors.py", "select"), ("sync.py", "wait")}


@dataclass
class Profile:
    samples: int = 0
    idle: int = 0
    by_category: dict[str, int] = field(default_factory=dict)
    innermost: dict[str, int] = field(default_factory=dict)  # replay_middleware function
    inclusive: dict[str, int] = field(default_factory=dict)  # ... and what it called


def digest(stacks: list[tuple[list[tuple[str, str]], int]]) -> Profile:
    """Each sample goes to the innermost frame of its stack that is not the stdlib (time in
    ``hmac`` called by the middleware is the middleware's); a ``replay_middleware`` sample also
    to its innermost function of ours, and inclusively to every function of ours on the stack."""
    prof = Profile()
    for stack, n in stacks:  # innermost frame first
        prof.samples += n
        if stack and (Path(stack[0][0]).name, stack[0][1]) in IDLE_FRAMES:
            prof.idle += n
            continue
        owner = next((c for c in (_category(f) for f, _ in stack) if c != "stdlib"), "stdlib")
        prof.by_category[owner] = prof.by_category.get(owner, 0) + n
        if owner != "replay_middleware":
            continue
        ours = [
            f"{path.split('/replay_middleware/', 1)[1]}:{function}"
            for path, function in stack
            if "/replay_middleware/" in path
        ]
        prof.innermost[ours[0]] = prof.innermost.get(ours[0], 0) + n
        for name in dict.fromkeys(ours):  # once per sample, recursion or not
            prof.inclusive[name] = prof.inclusive.get(name, 0) + n
    return prof


def profile_server(
    kind_name: str,
    code: Path | None,
    scenario: Scenario,
    conns: int,
    seconds: float,
    bare: bool = False,
) -> str:
    """Serve the replay variant (or the bare app, to compare the server's own share) with the
    stack sampler (``server_apps.StackSampler``), load it with wrk, and summarise where the
    server's CPU time goes (Markdown)."""
    code = (code or ROOT).resolve()
    kind = next(k for k in plan_kinds(True) if k.name == kind_name)
    workdir = Path(tempfile.mkdtemp(prefix="replay-profile-"))
    out = workdir / "samples.json"
    try:
        script = workdir / "summary.lua"
        script.write_text(WRK_SCRIPT)
        wrap: Callable[[list[str]], list[str]] | None = None
        if kind.name == "gunicorn":
            conf = workdir / "gunicorn_profile.py"
            conf.write_text(GUNICORN_PROFILE_CONF.format(out=str(out)))

            def wrap(command: list[str]) -> list[str]:
                return [*command, "--config", str(conf)]

        server = Server.start(
            kind,
            Variant("bare", None) if bare else Variant("current", code),
            workdir,
            4 * seconds + 120,
            command_wrap=wrap,
            extra_env={PROFILE_ENV: str(out)},  # uvicorn: the app's lifespan samples
        )
        try:
            cookie = (
                replay_cookie(get(server.port, "/page")) if scenario.visitor == "returning" else ""
            )
            run = wrk(server, f"/{scenario.route}", conns, seconds, script, cookie)
        finally:
            server.stop(timeout_s=60)  # the samples are saved as the server shuts down
        if not out.exists():
            raise RuntimeError("no profile written:\n" + server.log.read_text(errors="replace"))
        saved = json.loads(out.read_text())
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    prof = digest([([(f, fn) for f, fn in stack], n) for stack, n in saved["stacks"]])
    busy = max(1, prof.samples - prof.idle)
    # The kernel checks CPU timers once per scheduler tick, so a sample stands for a tick of CPU
    # time rather than the interval asked for: scale the shares to the CPU measured instead.
    cpu_us = run.server_cpu_s * 1e6 / max(1, run.requests)
    us = cpu_us / busy  # µs of CPU per request, per sample

    def table(title: str, counts: dict[str, int], top: int, code_names: bool) -> list[str]:
        rows = ["", f"| {title} | share of the server's CPU | µs / request |", "|---|---:|---:|"]
        for name, n in sorted(counts.items(), key=lambda kv: -kv[1])[:top]:
            shown = f"`{name}`" if code_names else name
            rows.append(f"| {shown} | {n / busy:.1%} | {n * us:.1f} |")
        return rows

    lines = [
        f"Profile: {kind.label}, "
        + ("bare" if bare else f"replay (`{code}`, {_commit(code)})")
        + f", {scenario.label}, "
        f"wrk -c {conns} for {seconds:g} s: {run.rps:.0f} req/s, {cpu_us:.0f} µs of the server's "
        f"CPU per request; {prof.samples} samples of the main thread's stack on the server's CPU "
        f"clock (`ITIMER_PROF`, about one per scheduler tick), {prof.idle} of them idle.",
        *table("Own time (stdlib calls count to their caller)", prof.by_category, 10, False),
        *table("replay_middleware, inclusive (its callees of ours)", prof.inclusive, 15, True),
        *table("replay_middleware, innermost function of ours", prof.innermost, 15, True),
        "",
    ]
    return "\n".join(lines)


# --- entry points ------------------------------------------------------------------------------


def plan_kinds(httptools: bool) -> list[ServerKind]:
    kinds = [ServerKind("uvicorn-h11", "uvicorn (h11) + Starlette")]
    if httptools:
        kinds.append(ServerKind("uvicorn-httptools", "uvicorn (httptools) + Starlette"))
    kinds.append(ServerKind("gunicorn", "gunicorn (sync, 1 worker) + Flask"))
    return kinds


def servers_section(
    quick: bool = False,
    code: Path | None = None,
    before: Path | None = None,
    rounds: int | None = None,
    seconds: float | None = None,
    conns: Sequence[int] = (1, 16),
    progress: bool = False,
    raw: Path | None = None,
) -> str:
    """Run the benchmark and return the ``## Real servers`` Markdown section.

    ``code``: the tree whose ``replay_middleware`` the replay servers import (default: this
    checkout); ``before``: another tree measured side by side (default: ``$REPLAY_BENCH_BEFORE``
    when set). ``quick``: 2 rounds of 1 s, for a try; the default is 5 rounds of 3 s.
    """
    if not Path(WRK).exists():
        raise RuntimeError("wrk is not installed: run scripts/bench-setup.sh (make bench does)")
    code = (code or ROOT).resolve()
    if before is None and os.environ.get(BEFORE_ENV):
        before = Path(os.environ[BEFORE_ENV])
    rounds = rounds or (2 if quick else 5)
    seconds = seconds or (1.0 if quick else 3.0)
    warmup_s = 1.0 if quick else 2.0
    variants = [Variant("bare", None)]
    if before is not None:
        variants.append(Variant("before", before.resolve()))
    variants.append(Variant("current", code))
    started, load0 = time.time(), os.getloadavg()[0]
    trees = {v.name: _commit(v.code) for v in variants if v.code is not None}  # as they start
    workdir = Path(tempfile.mkdtemp(prefix="replay-servers-"))
    try:
        httptools = httptools_in(server_env(code, "bare", workdir))
        kinds = plan_kinds(httptools)
        runs = len(kinds) * len(SCENARIOS) * len(conns) * len(variants)
        estimate = runs * (rounds * (seconds + 0.3) + warmup_s + 0.3)
        lifetime = 2 * estimate + 120  # the cap each server runs under
        script = workdir / "summary.lua"
        script.write_text(WRK_SCRIPT)
        if progress:
            print(f"servers.py: about {estimate:.0f} s of load", file=sys.stderr, flush=True)
        with servers_running(kinds, variants, workdir, lifetime) as servers:
            for (kind_name, variant_name), server in servers.items():
                where = subprocess.run(  # the tree each server really imports
                    [sys.executable, "-c", "import replay_middleware as m; print(m.__file__)"],
                    env=server_env(server.variant.code, "replay", workdir),
                    cwd=workdir, capture_output=True, text=True, timeout=30, check=False,
                )  # fmt: skip
                if server.variant.code and not where.stdout.startswith(str(server.variant.code)):
                    raise RuntimeError(f"{kind_name} {variant_name} imports {where.stdout!r}")
            checks = {key: check_variant(server) for key, server in servers.items()}
            results = measure(
                servers, kinds, variants, conns, rounds, seconds, warmup_s, script, progress
            )
        meta = Meta(
            kinds, variants, list(conns), rounds, seconds, warmup_s, checks,
            (load0, os.getloadavg()[0]), started, time.time(), httptools, trees,
        )  # fmt: skip
        if raw is not None:  # every run, for a closer look
            rows = [
                {"server": k, "route": sc.route, "visitor": sc.visitor, "connections": c,
                 "variant": name, "round": i, **asdict(run)}
                for (k, sc, c), cells in results.items()
                for name, cell in cells.items()
                for i, run in enumerate(cell.runs)
            ]  # fmt: skip
            raw.write_text(json.dumps({"trees": trees, "runs": rows}, indent=1))
        return report(results, meta)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="2 rounds of 1 s (a try)")
    parser.add_argument("--code", type=Path, help="tree the replay servers import (default: here)")
    parser.add_argument(
        "--before", type=Path, help=f"another tree, measured side by side (or ${BEFORE_ENV})"
    )
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--seconds", type=float, help="duration of each wrk run")
    parser.add_argument("--connections", default="1,16", help="wrk -c values, comma-separated")
    parser.add_argument("-v", "--verbose", action="store_true", help="each run on stderr")
    parser.add_argument("--raw", type=Path, help="also write every run to this JSON file")
    parser.add_argument(
        "--profile",
        choices=("uvicorn-h11", "uvicorn-httptools", "gunicorn"),
        help="profile the replay server of --code with a SIGPROF stack sampler instead",
    )
    parser.add_argument("--bare", action="store_true", help="--profile the bare app")
    parser.add_argument("--route", choices=("page", "json"), default="page", help="--profile's")
    parser.add_argument(
        "--visitor", choices=("new", "returning"), default="new", help="--profile's"
    )
    args = parser.parse_args(argv)
    if args.profile:
        c = int(args.connections.split(",")[-1])
        scenario = Scenario(args.route, args.visitor)
        print(profile_server(args.profile, args.code, scenario, c, args.seconds or 10.0, args.bare))
        return
    print(
        servers_section(
            quick=args.quick,
            code=args.code,
            before=args.before,
            rounds=args.rounds,
            seconds=args.seconds,
            conns=[int(c) for c in args.connections.split(",")],
            progress=args.verbose,
            raw=args.raw,
        )
    )


if __name__ == "__main__":
    main()
