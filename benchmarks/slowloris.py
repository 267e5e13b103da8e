"""Slow-loris uploads against the upload proxy: do honest uploads still get through?

Issue 8, item 1: clients that send a valid key and a large ``Content-Length``, then trickle the
body a byte a second, used to hold every pooled upstream connection until they timed out (and
reconnect at once), so honest uploads got ``503 pool_exhausted``. Since then the body is read
whole before an upstream connection is taken, it must arrive within ``client_body_timeout``
(408), and one client address has at most ``max_uploads_per_client`` uploads in flight (429).

Four processes, all on 127.0.0.1:

- the fake Amplitude (``tests/fake_amplitude.py`` via ``benchmarks/proxy.py``'s child);
- the proxy: uvicorn serving a trivial app wrapped in ``ReplayMiddleware`` (proxy mode,
  ``trusted_proxies=("127.0.0.1",)`` so ``X-Forwarded-For`` gives each client its address),
  restarted for each scenario with that scenario's build and options;
- the attackers: 200 slow-loris connections in their own process (asyncio), each one the
  request head with a valid key, ``Content-Length: 1000000``, the gzip magic (so the body
  passes the proxy's sniff), then one byte a second;
  answered or closed, it reconnects at once. From 200 distinct addresses, or all from one;
- the honest clients, in this process: 20 concurrent clients (one ``X-Forwarded-For`` address
  each) send 1,000 SDK-shaped gzip uploads (four of ~2 KB for one of ~200 KB), no retries,
  each given the SDK's 10 s (``sendTimeoutMs``).

Scenarios, each on a fresh server that first serves the honest uploads alone (the baseline,
back to back, so drift on the shared machine hits both alike): the current code with its
defaults against slow-loris on distinct addresses and on one address, one address again with
the per-client cap off, and the code *before* the fix (commit ``BEFORE``, extracted with ``git
archive`` into a temporary folder; skipped when git or the commit is not there). Fewer honest
uploads go next to the slow-loris where that is slow: 400 on one address with the cap (a
flood of 429s takes the CPU), 200 before the fix (each failure waits out the pool timeout).
Every loop is bounded; the children exit when their stdin closes or after
``CHILD_LIFETIME_S``.

    python benchmarks/slowloris.py [--uploads 1000] [--slow 200]    # prints the section
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from proxy import (  # benchmarks/proxy.py (this script's folder)
    CHILD_LIFETIME_S,
    HEADERS,
    KEY,
    PROXY_PATH,
    QUERY,
    SECRET,
    Child,
    ThreadedUvicorn,
    _reply,
    _stdin_closed_or,
    cpu_model,
    sdk_body,
    trivial_app,
)

ROOT = Path(__file__).resolve().parent.parent
#: The last commit before the slow-client defences: the "before" scenarios run its package.
BEFORE = "b8a5d12"
SDK_TIMEOUT_S = 10.0  # the SDK aborts an upload after sendTimeoutMs (PROTOCOL §1.2)
DECLARED = 1_000_000  # what a slow-loris announces (under max_upload_bytes)
SETTLE_S = 2.0  # after every slow-loris is trickling, before the honest uploads start


# --- the children ------------------------------------------------------------------------------


def child_proxy(upstream_url: str, options_json: str) -> None:
    """Child: uvicorn + ReplayMiddleware with ``options`` (ReplayConfig keyword arguments);
    whichever ``replay_middleware`` is first on the path (PYTHONPATH: the "before" build)."""
    import replay_middleware
    from replay_middleware import ReplayConfig, ReplayMiddleware
    from replay_middleware.proxy import Upstreams

    logging.disable(logging.WARNING)
    options = json.loads(options_json)
    config = ReplayConfig(api_key=KEY, secret_key=SECRET, upload_mode="proxy", **options)
    app = ReplayMiddleware(trivial_app, config=config, upstreams=Upstreams.at(upstream_url))
    server = ThreadedUvicorn(app)

    def announce_then_wait() -> None:
        deadline = time.monotonic() + 20
        while not server.server.started and time.monotonic() < deadline:
            time.sleep(0.01)
        _reply({"port": server.port, "package": str(Path(replay_middleware.__file__).parent)})
        _stdin_closed_or(time.monotonic() + CHILD_LIFETIME_S)
        server.server.should_exit = True

    threading.Thread(target=announce_then_wait, daemon=True).start()
    server.server.run(sockets=[server.sock])


@dataclass
class AttackStats:
    connections: int = 0  # connections opened
    trickling: int = 0  # open right now, head sent
    peak_trickling: int = 0
    bytes_sent: int = 0
    answers: Counter[str] = field(default_factory=Counter)  # status (or "closed") → count


def _head(port: int, address: str) -> bytes:
    lines = [
        f"POST {PROXY_PATH}?{QUERY} HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        f"Authorization: Bearer {KEY}",
        "Content-Type: application/json",
        "Content-Encoding: gzip",
        f"Content-Length: {DECLARED}",
        f"X-Forwarded-For: {address}",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def _slow_loris(port: int, address: str, stats: AttackStats, stop: asyncio.Event) -> None:
    """One attacker: connect, send the head and ``{``, then a byte a second until answered or
    closed; then again at once. Ends when ``stop`` is set."""
    head = _head(port, address) + b"\x1f\x8b"  # gzip magic: passes the proxy's sniff
    while not stop.is_set():
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            stats.answers["connect_error"] += 1
            await asyncio.sleep(0.05)
            continue
        stats.connections += 1
        answer: asyncio.Task[bytes] = asyncio.ensure_future(reader.read(64))
        stopped: asyncio.Task[bool] = asyncio.ensure_future(stop.wait())
        stats.trickling += 1
        stats.peak_trickling = max(stats.peak_trickling, stats.trickling)
        try:
            writer.write(head)
            stats.bytes_sent += len(head)
            for _ in range(DECLARED):  # bounded by the body it declared
                done, _ = await asyncio.wait(
                    {answer, stopped}, timeout=1.0, return_when="FIRST_COMPLETED"
                )
                if done:
                    break
                writer.write(b"\x00")
                stats.bytes_sent += 1
            if answer.done() and not answer.cancelled() and answer.exception() is None:
                data = answer.result()
                parts = data.split(b" ", 2)
                stats.answers[parts[1].decode() if len(parts) > 1 else "closed"] += 1
            elif not stop.is_set():
                stats.answers["closed"] += 1
        except OSError:
            stats.answers["closed"] += 1
        finally:
            stats.trickling -= 1
            for task in (answer, stopped):
                task.cancel()
            writer.close()


def child_attack(port: int, count: int, same_address: bool) -> None:
    """Child: ``count`` slow-loris connections; answers ``stats`` lines with one JSON line;
    stops when stdin closes."""
    stats = AttackStats()
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()

    async def main() -> None:
        def address(i: int) -> str:
            return "198.18.0.66" if same_address else f"198.18.{i // 250}.{i % 250 + 1}"

        tasks = [
            asyncio.ensure_future(_slow_loris(port, address(i), stats, stop)) for i in range(count)
        ]
        await asyncio.gather(*tasks, return_exceptions=True)

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()

    def on_line(command: str) -> None:
        _reply(
            {
                "connections": stats.connections,
                "trickling": stats.trickling,
                "peak_trickling": stats.peak_trickling,
                "bytes_sent": stats.bytes_sent,
                "answers": dict(stats.answers),
            }
        )

    _reply({"started": True})
    _stdin_closed_or(time.monotonic() + CHILD_LIFETIME_S, on_line)
    loop.call_soon_threadsafe(stop.set)
    thread.join(10)


def _spawn(*args: str, pythonpath: str | None = None) -> Child:
    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = pythonpath + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    child = Child(proc)
    child.info = child._read()
    return child


# --- the honest clients ------------------------------------------------------------------------


@dataclass
class Honest:
    statuses: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)  # seconds, every upload
    wall_s: float = 0.0
    server_cpu_s: float = 0.0  # CPU of the proxy's process while they ran
    attack_cpu_s: float = 0.0  # ... and of the slow-loris process

    @property
    def sent(self) -> int:
        return len(self.latencies)

    @property
    def ok(self) -> int:
        return self.statuses["200"]

    def pct(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[max(0, math.ceil(q * len(ordered)) - 1)] * 1000


async def honest_uploads(url: str, n: int, clients: int, bodies: list[bytes]) -> Honest:
    """``n`` uploads by ``clients`` concurrent clients, each with its own address."""
    result = Honest()
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(limits=limits, trust_env=False, timeout=SDK_TIMEOUT_S) as client:
        left = n

        async def worker(w: int) -> None:
            nonlocal left
            headers = {**HEADERS, "x-forwarded-for": f"198.51.100.{w + 1}"}
            i = w
            while left > 0:  # bounded: each pass takes one of the n uploads
                left -= 1
                body = bodies[i % len(bodies)]
                i += 1
                t0 = time.perf_counter()
                try:
                    response = await client.post(url, content=body, headers=headers)
                    status = str(response.status_code)
                except httpx.HTTPError as exc:
                    status = type(exc).__name__
                result.latencies.append(time.perf_counter() - t0)
                result.statuses[status] += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(worker(w) for w in range(clients)))
        result.wall_s = time.perf_counter() - t0
    return result


# --- scenarios -----------------------------------------------------------------------------------


@dataclass
class Scenario:
    name: str
    build: str  # "current" or "before"
    slow: str  # "distinct" or "same"
    options: dict[str, Any]
    uploads: int  # with the slow-loris connections open


@dataclass
class Outcome:
    scenario: Scenario
    baseline: Honest  # the same server just before, without slow-loris connections
    honest: Honest
    attack: dict[str, Any]
    upstream: dict[str, int]
    package: str


def _extract_before(folder: Path) -> bool:
    """``replay_middleware`` (and the ``static`` files it reads) as of commit BEFORE, into
    ``folder``; False if git cannot."""
    try:
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", BEFORE, "replay_middleware", "static"],
            capture_output=True,
            check=True,
            timeout=60,
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return False
    return (folder / "replay_middleware" / "__init__.py").exists()


def run_scenario(
    fake: Child, scenario: Scenario, slow_count: int, uploads: int, before_dir: Path | None
) -> Outcome:
    """One server: warm-up, ``uploads`` honest uploads alone (the baseline), then the
    slow-loris connections and ``scenario.uploads`` honest uploads next to them."""
    pythonpath = str(before_dir) if scenario.build == "before" and before_dir else None
    server = _spawn("--child-proxy", fake.url, json.dumps(scenario.options), pythonpath=pythonpath)
    attack: Child | None = None
    try:
        url = f"http://127.0.0.1:{server.info['port']}{PROXY_PATH}?{QUERY}"
        bodies = [sdk_body(2 * 1024)] * 4 + [sdk_body(200 * 1024)]
        asyncio.run(honest_uploads(url, 40, 20, bodies))  # warm-up: connections, pools
        cpu = server.cpu_s()
        baseline = asyncio.run(honest_uploads(url, uploads, 20, bodies))
        baseline.server_cpu_s = server.cpu_s() - cpu
        before = fake.ask("stats")
        attack = _spawn("--child-attack", str(server.info["port"]), str(slow_count), scenario.slow)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:  # every attacker connected and trickling
            if attack.ask("stats")["peak_trickling"] >= slow_count:
                break
            time.sleep(0.2)
        time.sleep(SETTLE_S)  # before the fix: long enough to take the upstream pool
        cpu, attack_cpu = server.cpu_s(), attack.cpu_s()
        honest = asyncio.run(honest_uploads(url, scenario.uploads, 20, bodies))
        honest.server_cpu_s = server.cpu_s() - cpu
        honest.attack_cpu_s = attack.cpu_s() - attack_cpu
        after = fake.ask("stats")  # the slow-loris bodies still unfinished upstream, if any
        attack_stats = attack.ask("stats")
    finally:
        if attack is not None:
            attack.stop()
        server.stop()
    upstream = {
        "requests": after["track"] - before["track"],
        # Requests the fake has seen whose body never came: a slow-loris reaching Amplitude.
        "incomplete": (after["track"] - after["complete"]) - (before["track"] - before["complete"]),
    }
    package = server.info.get("package", "?")
    return Outcome(scenario, baseline, honest, attack_stats, upstream, package)


def scenarios(
    uploads: int, flood_uploads: int, before_uploads: int, have_before: bool
) -> list[Scenario]:
    trusted = {"trusted_proxies": ["127.0.0.1"]}
    out = [
        Scenario("current, defaults", "current", "distinct", trusted, uploads),
        Scenario("current, defaults", "current", "same", trusted, flood_uploads),
        Scenario(
            "current, `max_uploads_per_client=0`",
            "current",
            "same",
            {**trusted, "max_uploads_per_client": 0},
            uploads,
        ),
    ]
    if have_before:
        out.append(Scenario(f"before (`{BEFORE}`)", "before", "distinct", trusted, before_uploads))
    return out


# --- report --------------------------------------------------------------------------------------


def _label(o: Outcome) -> str:
    count = o.attack["peak_trickling"]
    return f"{count}, {'distinct addresses' if o.scenario.slow == 'distinct' else 'one address'}"


def _rate(h: Honest) -> str:
    return f"{100 * h.ok / h.sent:.1f} %"


def report(
    outcomes: list[Outcome], slow_count: int, load: tuple[float, float], seconds: float
) -> str:
    cores = os.cpu_count() or 0
    lines = [
        "## Slow uploads (slow-loris)",
        "",
        "Written by `make bench` (`benchmarks/slowloris.py`). Real sockets on 127.0.0.1: uvicorn",
        "serving a trivial app wrapped in `ReplayMiddleware` (proxy mode, `trusted_proxies` =",
        "127.0.0.1 so `X-Forwarded-For` gives every client its own address) in one process, the",
        "fake Amplitude in another, the slow-loris connections in a third, the honest clients in",
        f"this one. A slow-loris sends a valid key, `Content-Length: {DECLARED}`, the gzip magic,",
        "then one byte a second; answered or closed, it reconnects at once. Honest clients: 20",
        "concurrent, one address each, SDK-shaped gzip bodies (four of ~2 KB for one of ~200 KB),",
        f"no retries, {SDK_TIMEOUT_S:.0f} s each (the SDK's `sendTimeoutMs`). Each row is one server:",
        "first the honest uploads alone (*without*), then the slow-loris connections, and once",
        f"every one of them is trickling (plus {SETTLE_S:.0f} s) the honest uploads again (*with*). All",
        f"four processes share this machine's {cores} cores with other work: quote the ratios.",
        "",
        f"- Machine: {cpu_model()}, {cores} cores, {platform.machine()}, Python "
        f"{platform.python_version()}, {platform.system()}; uvicorn {uvicorn.__version__}, httpx "
        f"{httpx.__version__}",
        f"- Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; 1-minute load average "
        f"{load[0]:.2f} before, {load[1]:.2f} after; the whole run took {seconds:.0f} s",
        "",
        "| Build | Slow-loris | Honest uploads without / with | Succeeded without / with | p50 ms without / with | p50 ratio | p99 ms without / with | p99 ratio | Failures with | Slow-loris answers | Upstream requests with an unfinished body |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|---|---:|",
    ]
    for o in outcomes:
        b, h, s = o.baseline, o.honest, o.scenario
        failures = (
            ", ".join(f"{k} ×{v}" for k, v in sorted(h.statuses.items()) if k != "200") or "none"
        )
        got = o.attack["answers"]
        answers = ", ".join(f"{k} ×{v}" for k, v in sorted(got.items())) or "none yet"
        lines.append(
            f"| {s.name} | {_label(o)} | {b.sent} / {h.sent} "
            f"| {_rate(b)} / **{_rate(h)}** | {b.pct(0.5):.1f} / {h.pct(0.5):.1f} "
            f"| **{h.pct(0.5) / b.pct(0.5):.2f}** | {b.pct(0.99):.1f} / {h.pct(0.99):.1f} "
            f"| **{h.pct(0.99) / b.pct(0.99):.2f}** | {failures} | {answers} "
            f"| {o.upstream['incomplete']} |"
        )
    lines.append("")
    for o in outcomes:
        s, b, h = o.scenario, o.baseline, o.honest
        lines.append(
            f"- {s.name}, slow-loris {_label(o)}: {o.attack['connections']} slow-loris "
            f"connections opened in all (at most {o.attack['peak_trickling']} at once, "
            f"{o.attack['bytes_sent']} bytes sent). Honest uploads {b.sent / b.wall_s:.0f}/s "
            f"without, {h.sent / h.wall_s:.0f}/s with; proxy CPU {b.server_cpu_s:.1f} s without, "
            f"{h.server_cpu_s:.1f} s with (the slow-loris process: {h.attack_cpu_s:.1f} s)."
        )
    lines += ["", *_findings(outcomes, slow_count), ""]
    return "\n".join(lines)


def _findings(outcomes: list[Outcome], slow_count: int) -> list[str]:
    """What the table says, in words, from this run's figures."""

    def find(build: str, slow: str, capped: bool = True) -> Outcome | None:
        for o in outcomes:
            s = o.scenario
            if (s.build, s.slow) == (build, slow) and (
                s.options.get("max_uploads_per_client") != 0
            ) is capped:
                return o
        return None

    distinct, same = find("current", "distinct"), find("current", "same")
    uncapped, old = find("current", "same", capped=False), find("before", "distinct")
    out = []
    if distinct is not None and same is not None:
        out.append(
            "- Target (issue 8): ≥ 99 % of the honest uploads succeed next to 200 slow-loris "
            f"connections{'' if slow_count == 200 else f' ({slow_count} here)'}. Now: **{_rate(distinct.honest)}** with the slow-loris on distinct "
            f"addresses (p50 ×{distinct.honest.pct(0.5) / distinct.baseline.pct(0.5):.2f}, p99 "
            f"×{distinct.honest.pct(0.99) / distinct.baseline.pct(0.99):.2f}), "
            f"**{_rate(same.honest)}** with them on one address. No slow-loris body reached "
            "the fake Amplitude (last column): each is read whole, holding no upstream "
            "connection, and answered 408 at `client_body_timeout` (5 s)."
        )
    if old is not None:
        failed = old.honest.sent - old.honest.ok
        worst = [k for k, _ in old.honest.statuses.most_common() if k != "200"][:1]
        why = (
            f", most of them {worst[0]} (`pool_exhausted` after the 1 s pool wait)" if worst else ""
        )
        out.append(
            f"- Before the fix, a slow-loris body went up as it trickled in: "
            f"{old.upstream['incomplete']} upstream requests with an unfinished body held "
            f"pooled connections (100 in all) until the 8 s budget ran out, and {failed} of "
            f"{old.honest.sent} honest uploads failed ({_rate(old.honest)} succeeded){why}. "
            "Fewer honest uploads were sent next to the slow-loris there, since each failure "
            "waits out the pool timeout."
        )
    if same is not None and uncapped is not None:
        refused = same.attack["answers"].get("429", 0)
        # The proxy's CPU beyond what as many honest uploads cost it alone.
        alone = same.baseline.server_cpu_s * same.honest.sent / same.baseline.sent
        extra_cpu = same.honest.server_cpu_s - alone
        per = f", about {1000 * extra_cpu / refused:.2f} ms of proxy CPU each" if refused else ""
        out.append(
            f"- One address with the per-client cap (8): the slow-loris beyond the cap get a 429 "
            f"at once and, reconnecting at once, turn into a request flood ({refused} 429s"
            f"{per}, and the flooding process's own CPU on the same 2 cores). The honest uploads "
            f"succeed ({_rate(same.honest)}) but wait for CPU: p50 "
            f"×{same.honest.pct(0.5) / same.baseline.pct(0.5):.2f}. With the cap off the same "
            "connections just trickle, cheap for asyncio (p50 "
            f"×{uncapped.honest.pct(0.5) / uncapped.baseline.pct(0.5):.2f}). A flood is open to "
            "any client either way (bad keys get a 403 at the same cost): that is a rate "
            "limiter's job, in front of the app. The cap bounds what one address can hold where "
            "a connection is expensive: a thread of a WSGI server, up to `upload_memory_bytes` "
            "of memory per upload."
        )
    return out


def slowloris_section(
    uploads: int = 1000, slow: int = 200, before_uploads: int = 200, flood_uploads: int = 400
) -> str:
    """Run every scenario and return the ``## Slow uploads (slow-loris)`` markdown section."""
    logging.disable(logging.WARNING)
    started = time.monotonic()
    load_before = os.getloadavg()[0]
    before_dir = Path(tempfile.mkdtemp(prefix="replay-before-"))
    try:
        have_before = _extract_before(before_dir)
        fake = Child.start("--child-fake")  # benchmarks/proxy.py's child
        try:
            outcomes = [
                run_scenario(fake, scenario, slow, uploads, before_dir if have_before else None)
                for scenario in scenarios(uploads, flood_uploads, before_uploads, have_before)
            ]
        finally:
            fake.stop()
    finally:
        shutil.rmtree(before_dir, ignore_errors=True)
    for o in outcomes:  # the "before" build really ran the old package
        expected = "replay-before-" if o.scenario.build == "before" else str(ROOT)
        if expected not in o.package:
            raise RuntimeError(f"{o.scenario.name} ran {o.package}")
    seconds = time.monotonic() - started
    return report(outcomes, slow, (load_before, os.getloadavg()[0]), seconds)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--uploads", type=int, default=1000)
    parser.add_argument("--slow", type=int, default=200)
    parser.add_argument("--before-uploads", type=int, default=200)
    parser.add_argument("--flood-uploads", type=int, default=400)
    parser.add_argument(
        "--child-proxy", nargs=2, metavar=("UPSTREAM_URL", "OPTIONS"), help=argparse.SUPPRESS
    )
    parser.add_argument(
        "--child-attack", nargs=3, metavar=("PORT", "COUNT", "MODE"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.child_proxy:
        child_proxy(*args.child_proxy)
    elif args.child_attack:
        port, count, mode = args.child_attack
        child_attack(int(port), int(count), mode == "same")
    else:
        print(slowloris_section(args.uploads, args.slow, args.before_uploads, args.flood_uploads))


if __name__ == "__main__":
    main()
