"""The fixed cost an HTML page pays for the middleware, per visitor kind and page shape (issue 10).

In-process ASGI calls with a hand-built scope (no sockets, no server), like ``run.py``: every
variant is the same bare app with and without ``ReplayMiddleware``; rounds of all variants
are interleaved and the median round is reported, so the figures to quote are the *added*
microseconds (variant minus its own bare app), measured side by side in one run.

Times are this thread's CPU time (``time.thread_time``), so other processes on a shared
machine do not land in a variant's figure; the in-process loop does no I/O, so CPU time is
its whole cost.

Matrix: new and returning visitor (a valid signed cookie), sampled, 1 KB and 30 KB pages in
one chunk, without a CSP and with a strict nonce CSP that the app sets with a fresh nonce per
response (``script-src 'nonce-…' 'strict-dynamic'; object-src 'none'; base-uri 'none'``);
an unsampled session (new and returning); a JSON response (non-HTML).

    python benchmarks/page_cost.py [--rounds 15] [--requests 2000]
    python benchmarks/page_cost.py --profile html30k_new [--sampling]   # cProfile / pyinstrument
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import json
import logging
import pstats
import secrets
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from replay_middleware import ReplayConfig, ReplayMiddleware
from replay_middleware.identity import Identity

App = Callable[[dict[str, Any], Any, Any], Awaitable[None]]

SECRET = "bench-secret-key-0123456789abcdef"
JSON_BODY = json.dumps(
    {"items": [{"id": i, "name": f"item {i}", "ok": True} for i in range(40)]}
).encode()
_PARA = b"<p>" + b"Lorem ipsum dolor sit amet, consectetur adipiscing elit. " * 8 + b"</p>\n"
_HEAD = (
    b'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>Bench</title>\n'
    b'<link rel="stylesheet" href="/static/app.css">\n</head>\n<body>\n'
)
_TAIL = b"</body>\n</html>\n"


def page(size: int) -> bytes:
    """An HTML page of about ``size`` bytes: a small head, paragraphs, the closing tags."""
    paragraphs = max(0, (size - len(_HEAD) - len(_TAIL)) // len(_PARA))
    return _HEAD + _PARA * paragraphs + _TAIL


HTML_1K = page(1_000)
HTML_30K = page(30_000)
STRICT_CSP = "script-src 'nonce-{}' 'strict-dynamic'; object-src 'none'; base-uri 'none'"


def make_app(body: bytes, content_type: bytes, *, csp: bool = False) -> App:
    """The bare app: one chunk with Content-Length; with ``csp`` a fresh nonce per response."""
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        # A fresh header list per response: GZipMiddleware edits the list it is given.
        out = list(headers)
        if csp:
            policy = STRICT_CSP.format(secrets.token_urlsafe(16))
            out.append((b"content-security-policy", policy.encode()))
        await send({"type": "http.response.start", "status": 200, "headers": out})
        await send({"type": "http.response.body", "body": body})

    return app


def scope(path: str, cookie: str = "") -> dict[str, Any]:
    extra = [(b"cookie", cookie.encode())] if cookie else []
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": [
            (b"host", b"example.test"),
            (b"accept-encoding", b"gzip, deflate, br"),
            (b"user-agent", b"Mozilla/5.0 (X11; Linux x86_64) bench"),
            (b"accept", b"text/html,*/*"),
            *extra,
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 80),
    }


async def receive() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


async def send(message: dict[str, Any]) -> None:
    return None


@dataclass(frozen=True)
class Variant:
    app: App
    path: str
    cookie: str
    bare: str  # the name of the variant this one is compared with ("" for a bare one)


def returning_cookie(middleware: ReplayMiddleware) -> str:
    """A valid identity cookie of a visitor seen a moment ago (verify, no mint)."""
    now = int(time.time() * 1000)
    visitor = Identity("9f0c1b2a-1234-4abc-8abc-0123456789ab", now, now)
    return f"{middleware.config.cookie_name}={middleware.engine.codec.dumps(visitor)}"


def variants() -> dict[str, Variant]:
    sampled = ReplayConfig(sample_rate=1.0, secret_key=SECRET, debug_header=False)
    unsampled = ReplayConfig(sample_rate=0.0, secret_key=SECRET, debug_header=False)
    out: dict[str, Variant] = {}
    json_app = make_app(JSON_BODY, b"application/json")
    out["json_bare"] = Variant(json_app, "/api", "", "")
    out["json_replay"] = Variant(
        ReplayMiddleware(json_app, config=sampled), "/api", "", "json_bare"
    )
    for size_name, body in (("html1k", HTML_1K), ("html30k", HTML_30K)):
        for csp in (False, True):
            base = f"{size_name}{'_csp' if csp else ''}"
            bare = make_app(body, b"text/html; charset=utf-8", csp=csp)
            out[f"{base}_bare"] = Variant(bare, "/", "", "")
            ours = ReplayMiddleware(bare, config=sampled)
            cookie = returning_cookie(ours)
            out[f"{base}_new"] = Variant(ours, "/", "", f"{base}_bare")
            out[f"{base}_returning"] = Variant(ours, "/", cookie, f"{base}_bare")
    off = ReplayMiddleware(make_app(HTML_30K, b"text/html; charset=utf-8"), config=unsampled)
    out["html30k_unsampled_new"] = Variant(off, "/", "", "html30k_bare")
    out["html30k_unsampled_returning"] = Variant(off, "/", returning_cookie(off), "html30k_bare")
    return out


async def per_request_us(v: Variant, n: int) -> float:
    s = scope(v.path, v.cookie)
    app = v.app
    # CPU time of this thread: other processes on a shared machine preempt us, and wall-clock
    # time would charge their slices to whichever variant was running.
    start = time.thread_time()
    for _ in range(n):
        await app(dict(s), receive, send)
    return (time.thread_time() - start) / n * 1e6


async def measure(rounds: int, n: int) -> dict[str, float]:
    table = variants()
    samples: dict[str, list[float]] = {k: [] for k in table}
    for v in table.values():
        await per_request_us(v, max(1, n // 10))  # warm up (and log the start-up notices)
    gc.disable()
    try:
        for _ in range(rounds):
            for name, v in table.items():
                samples[name].append(await per_request_us(v, n))
    finally:
        gc.enable()
    return {k: statistics.median(v) for k, v in samples.items()}


#: The goal of issue 10 for each compared variant: added µs at most.
BUDGET_US = {
    "json_replay": 5.0,
    "html30k_unsampled_new": 15.0,
    "html30k_unsampled_returning": 15.0,
}
INJECTED_BUDGET_US = 45.0


def page_cost_section(rounds: int = 15, n: int = 2000) -> str:
    r = asyncio.run(measure(rounds, n))
    table = variants()
    lines = [
        "## Fixed cost per page",
        "",
        "Written by `make bench` (`benchmarks/page_cost.py`). In-process ASGI calls with a "
        f"hand-built scope; {rounds} interleaved rounds of {n} requests per variant, medians of "
        "rounds, CPU time of the calling thread. *Added* is the variant minus its own bare app in the same run. New visitor: no "
        "cookie (ids minted, cookie signed and set); returning: a valid signed cookie. Strict "
        "CSP: the app sends `script-src 'nonce-…' 'strict-dynamic'; object-src 'none'; "
        "base-uri 'none'` with a fresh nonce per response, which the middleware merges.",
        "",
        "| Variant | CPU µs / request | added µs | budget µs |",
        "|---|---:|---:|---:|",
    ]
    for name, v in table.items():
        if not v.bare:
            lines.append(f"| {name} | {r[name]:.2f} | | |")
            continue
        added = r[name] - r[v.bare]
        budget = BUDGET_US.get(name, INJECTED_BUDGET_US)
        lines.append(f"| {name} | {r[name]:.2f} | **{added:.2f}** | {budget:.0f} |")
    worst = max(
        (r[name] - r[v.bare], name) for name, v in table.items() if v.bare and name not in BUDGET_US
    )
    lines += [
        "",
        f"- Worst injected page: {worst[1]} adds **{worst[0]:.1f} µs** "
        f"(budget {INJECTED_BUDGET_US:.0f} µs).",
        "",
    ]
    return "\n".join(lines)


def profile(name: str, n: int, sampling: bool) -> None:
    v = variants()[name]

    async def loop() -> None:
        await per_request_us(v, n)

    asyncio.run(per_request_us(v, 200))
    if sampling:
        from pyinstrument import Profiler

        profiler = Profiler(interval=0.0001)
        profiler.start()
        asyncio.run(loop())
        profiler.stop()
        print(profiler.output_text(unicode=True, color=False, show_all=False))
        return
    prof = cProfile.Profile()
    prof.enable()
    asyncio.run(loop())
    prof.disable()
    stats = pstats.Stats(prof, stream=sys.stdout)
    stats.sort_stats("tottime").print_stats(30)
    stats.sort_stats("cumulative").print_stats(40)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--profile", metavar="VARIANT")
    parser.add_argument("--sampling", action="store_true", help="pyinstrument instead of cProfile")
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    if args.profile:
        profile(args.profile, args.requests, args.sampling)
        return
    print(page_cost_section(args.rounds, args.requests))


if __name__ == "__main__":
    main()
