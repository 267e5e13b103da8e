"""Per-request overhead of replay-middleware, measured side by side in one run.

Writes BENCHMARKS.md. Every variant is an ASGI app called in-process (no sockets, no server) with
a hand-built scope; rounds of all variants are interleaved so drift on a shared machine hits
them alike, and the median round is reported. Ratios are the figures to quote; absolute
microseconds move with the machine. Then appends the upload proxy's section (benchmarks/proxy.py:
real sockets on 127.0.0.1; added latency, throughput and memory of the proxy), the slow-loris
section (benchmarks/slowloris.py: honest uploads next to 200 slow-loris connections), local mode
under hostile uploads (benchmarks/local_uploads.py: memory, stall, the store's WAL) and the
page-exit section (benchmarks/page_exit.py: what a short page view uploads, in chromium).

    python benchmarks/run.py [--rounds 15] [--requests 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import platform
import statistics
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from local_uploads import local_uploads_section  # benchmarks/local_uploads.py
from page_exit import page_exit_section  # benchmarks/page_exit.py
from proxy import upload_proxy_section  # benchmarks/proxy.py (this script's folder)
from slowloris import slowloris_section  # benchmarks/slowloris.py
from starlette.middleware.gzip import GZipMiddleware
from wsgi import wsgi_section  # benchmarks/wsgi.py

from replay_middleware import ReplayConfig, ReplayMiddleware
from replay_middleware.identity import Identity

App = Callable[[dict[str, Any], Any, Any], Awaitable[None]]

JSON_BODY = json.dumps(
    {"items": [{"id": i, "name": f"item {i}", "ok": True} for i in range(40)]}
).encode()
_PARA = b"<p>" + b"Lorem ipsum dolor sit amet, consectetur adipiscing elit. " * 8 + b"</p>\n"
HTML_30K = (
    b'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>Bench</title>\n'
    b'<link rel="stylesheet" href="/static/app.css">\n</head>\n<body>\n'
    + _PARA * (30_000 // len(_PARA))
    + b"</body>\n</html>\n"
)


def make_app(body: bytes, content_type: bytes) -> App:
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        # A fresh header list per response: GZipMiddleware edits the list it is given.
        await send({"type": "http.response.start", "status": 200, "headers": list(headers)})
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
            (b"user-agent", b"bench"),
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


async def per_request_us(app: App, path: str, n: int, cookie: str = "") -> float:
    s = scope(path, cookie)
    start = time.perf_counter()
    for _ in range(n):
        await app(dict(s), receive, send)
    return (time.perf_counter() - start) / n * 1e6


async def measure(rounds: int, n: int) -> dict[str, float]:
    config = ReplayConfig(sample_rate=1.0, debug_header=False)
    json_app = make_app(JSON_BODY, b"application/json")
    html_app = make_app(HTML_30K, b"text/html; charset=utf-8")
    injected = ReplayMiddleware(html_app, config=config)
    # A returning visitor: a valid identity cookie, so the cost is verify + re-sign, not mint.
    visitor = Identity(
        "9f0c1b2a-1234-4abc-8abc-0123456789ab", int(time.time() * 1000), int(time.time() * 1000)
    )
    cookie = f"replay_id={injected.engine.codec.dumps(visitor)}"
    unsampled = ReplayMiddleware(html_app, config=ReplayConfig(sample_rate=0.0, debug_header=False))
    variants: dict[str, tuple[App, str, str]] = {
        "json_bare": (json_app, "/api", ""),
        "json_gzip": (GZipMiddleware(json_app, minimum_size=500), "/api", ""),
        "json_replay": (ReplayMiddleware(json_app, config=config), "/api", ""),
        "html_bare": (html_app, "/", ""),
        "html_gzip": (GZipMiddleware(html_app, minimum_size=500), "/", ""),
        "html_replay_injected": (injected, "/", ""),
        "html_replay_injected_returning": (injected, "/", cookie),
        "html_replay_unsampled": (unsampled, "/", ""),
    }
    samples: dict[str, list[float]] = {k: [] for k in variants}
    for app, path, c in variants.values():
        await per_request_us(app, path, n // 10, c)  # warm up
    gc.disable()
    try:
        for _ in range(rounds):
            for name, (app, path, c) in variants.items():
                samples[name].append(await per_request_us(app, path, n, c))
    finally:
        gc.enable()
    return {k: statistics.median(v) for k, v in samples.items()}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument(
        "--output", default=str(Path(__file__).resolve().parent.parent / "BENCHMARKS.md")
    )
    args = parser.parse_args()
    logging.disable(logging.WARNING)  # the local-mode start-up warnings are not the point here
    r = asyncio.run(measure(args.rounds, args.requests))
    ours = r["json_replay"] - r["json_bare"]
    gzip = r["json_gzip"] - r["json_bare"]
    inject = r["html_replay_injected"] - r["html_bare"]
    unsampled = r["html_replay_unsampled"] - r["html_bare"]
    lines = [
        "# Benchmarks",
        "",
        "Written by `make bench` (`benchmarks/run.py`). In-process ASGI calls with a hand-built scope,",
        f"{args.rounds} interleaved rounds of {args.requests} requests per variant; medians of rounds.",
        "Absolute times drift on shared machines: quote the ratios, measured side by side in this run.",
        "",
        f"- Machine: {cpu_model()}, {platform.machine()}, Python {platform.python_version()}, {platform.system()}",
        f"- Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        "",
        "| Variant | µs / request | overhead vs bare (µs) |",
        "|---|---:|---:|",
    ]
    for name, bare in (
        ("json_bare", "json_bare"),
        ("json_gzip", "json_bare"),
        ("json_replay", "json_bare"),
        ("html_bare", "html_bare"),
        ("html_gzip", "html_bare"),
        ("html_replay_injected", "html_bare"),
        ("html_replay_injected_returning", "html_bare"),
        ("html_replay_unsampled", "html_bare"),
    ):
        lines.append(f"| {name} | {r[name]:.2f} | {r[name] - r[bare]:.2f} |")
    lines += [
        "",
        f"- JSON response ({len(JSON_BODY)} B): replay-middleware adds {ours:.2f} µs, GZipMiddleware adds "
        f"{gzip:.2f} µs; ratio ours/gzip = **{ours / gzip:.2f}** (budget: ≤ 1.00).",
        f"- 30 KB HTML page ({len(HTML_30K)} B), sampled: injection adds {inject:.2f} µs per request "
        f"(identity, decision, CSP, snippet, streaming injector); GZipMiddleware on the same page adds "
        f"{r['html_gzip'] - r['html_bare']:.2f} µs; ratio injection/gzip = **{inject / (r['html_gzip'] - r['html_bare']):.2f}**.",
        f"- Same page for a returning visitor (valid cookie): {r['html_replay_injected_returning'] - r['html_bare']:.2f} µs.",
        f"- Same page, unsampled session: {unsampled:.2f} µs (no snippet, cookie only).",
        "",
    ]
    # The same pages through the WSGI adapter (benchmarks/wsgi.py), side by side with a bare app.
    lines += ["", wsgi_section(args.rounds, args.requests, JSON_BODY, HTML_30K)]
    Path(args.output).write_text("\n".join(lines))
    print("\n".join(lines))
    # Sections of their own, appended in turn: the upload proxy over real sockets
    # (benchmarks/proxy.py), honest uploads next to 200 slow-loris connections
    # (benchmarks/slowloris.py), local mode under hostile uploads: memory, stall, WAL
    # (benchmarks/local_uploads.py), and what a short page view uploads, in a real browser
    # (benchmarks/page_exit.py).
    for make_section in (
        upload_proxy_section,
        slowloris_section,
        local_uploads_section,
        page_exit_section,
    ):
        section = make_section()
        with Path(args.output).open("a") as out:
            out.write("\n" + section)
        print("\n" + section)


if __name__ == "__main__":
    main()
