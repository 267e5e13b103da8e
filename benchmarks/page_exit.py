"""What a short page view leaves behind: uploads, bytes and completeness per SDK option set.

The real SDK bundle in Debian's chromium (Playwright), pages served by the middleware in local
mode under uvicorn on 127.0.0.1; a tee in front of the middleware logs every upload the server
receives (wire bytes, gzip or not, decoded events). Each visit opens a long page, does what the
scenario says, then leaves for a page the middleware does not record, and waits for stragglers.
A replay is *complete* when a full snapshot (rrweb type 2) holding the page's last paragraph
arrived, and *has the tail* when the marker the scenario added just before leaving arrived.

    python benchmarks/page_exit.py [--repeat 3]     # prints the BENCHMARKS.md section

Each option set is the middleware's ``sdk_options``; ``eager`` is the shipped default
(``SDK_DEFAULT_OPTIONS``). See docs/page-exit.md for what the figures mean.
"""

from __future__ import annotations

import argparse
import gzip
import json
import logging
import platform
import random
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvicorn
from playwright.sync_api import Page, sync_playwright
from starlette.applications import Starlette
from starlette.responses import HTMLResponse
from starlette.routing import Route

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from proxy import cpu_model  # benchmarks/proxy.py (this script's folder)

from replay_middleware import ReplayConfig, ReplayMiddleware

CHROMIUM = "/usr/bin/chromium"
END = "END-OF-PAGE-MARKER"
TAIL = "TAIL-MARKER"
WORDS = [
    "river",
    "stone",
    "lantern",
    "orbit",
    "meadow",
    "copper",
    "harbor",
    "violet",
    "thunder",
    "pepper",
    "saddle",
    "marble",
    "falcon",
    "quartz",
    "ember",
    "willow",
    "cobalt",
    "tundra",
    "velvet",
    "anchor",
    "cinder",
    "maple",
    "glacier",
]

OPTION_SETS: dict[str, dict[str, Any]] = {
    "SDK defaults": {"eagerFullSnapshotSend": False},
    "eager (shipped)": {},
    "eager, no worker": {"useWebWorker": False},
    "eager, flush ≤ 3 s": {"flushIntervalConfig": {"minIntervalMs": 1000, "maxIntervalMs": 3000}},
}


def article(kb: int, seed: int = 7) -> str:
    """About ``kb`` KiB of varied paragraphs, then the end marker."""
    rng = random.Random(seed)
    parts: list[str] = []
    size = 0
    i = 0
    while size < kb * 1024:
        words = " ".join(f"{rng.choice(WORDS)}{rng.randint(0, 9999)}" for _ in range(36))
        p = f"<p>§{i}. {words}.</p>\n"
        parts.append(p)
        size += len(p)
        i += 1
    parts.append(f'<p id="end">{END}</p>')
    return "".join(parts)


def page_html(kb: int) -> str:
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>Article</title>'
        f"</head><body><h1>Article of {kb} KB</h1>{article(kb)}</body></html>"
    )


@dataclass
class Upload:
    at: float
    wire: int
    gzip: bool
    beacon: bool
    text: str


@dataclass
class Tee:
    """ASGI wrapper that logs every body POSTed to ``/_replay/track``."""

    app: Any
    log: list[Upload] = field(default_factory=list)
    t0: float = 0.0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not scope["path"].endswith("/track"):
            return await self.app(scope, receive, send)
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        body = b"".join(chunks)
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        zipped = headers.get("content-encoding") == "gzip"
        try:
            text = (gzip.decompress(body) if zipped else body).decode()
        except (OSError, UnicodeDecodeError):
            text = ""
        beacon = b"api_key=" in scope["query_string"]
        self.log.append(Upload(time.monotonic() - self.t0, len(body), zipped, beacon, text))
        replayed = False

        async def again() -> dict[str, Any]:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return dict(await receive())

        return await self.app(scope, again, send)


def has_snapshot_with_end(uploads: list[Upload]) -> bool:
    for upload in uploads:
        try:
            events = json.loads(upload.text)["events"]
        except (ValueError, KeyError, TypeError):
            continue
        for raw in events:
            event = json.loads(raw) if isinstance(raw, str) else raw
            if event.get("type") == 2 and END in json.dumps(event):
                return True
    return False


def serve(app: Any) -> str:
    sock = socket.socket()
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True).start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    return f"http://127.0.0.1:{port}"


def build(options: dict[str, Any], kb: int) -> Tee:
    big = page_html(kb)

    async def long_page(request: Any) -> HTMLResponse:
        return HTMLResponse(big)

    async def elsewhere(request: Any) -> HTMLResponse:
        return HTMLResponse("<!DOCTYPE html><html><head></head><body>not recorded</body></html>")

    inner = Starlette(routes=[Route("/article", long_page), Route("/elsewhere", elsewhere)])
    config = ReplayConfig(
        sample_rate=1.0,
        local_store_dir=tempfile.mkdtemp(prefix="page-exit-"),
        exclude=("/elsewhere",),
        sdk_options=options,
    )
    return Tee(ReplayMiddleware(inner, config=config))


ADD_TAIL = f"(n) => {{ const p = document.createElement('p'); p.textContent = '{TAIL} ' + 'x'.repeat(n); document.body.appendChild(p); }}"


def idle_view(page: Page) -> None:
    """2 s on the page without touching it (the common short view), then leave."""
    page.wait_for_timeout(2000)


def change_at_1_5_s(chars: int) -> Callable[[Page], None]:
    """2 s on the page, ``chars`` characters of new text rendered at 1.5 s, then leave."""

    def visit(page: Page) -> None:
        page.wait_for_timeout(1500)
        page.evaluate(ADD_TAIL, chars)
        page.wait_for_timeout(500)

    return visit


def reading(page: Page) -> None:
    """15 s of reading: a scroll every 500 ms, a small DOM change just before leaving."""
    for i in range(30):
        page.mouse.wheel(0, 300)
        page.wait_for_timeout(500)
        if i == 29:
            page.evaluate(ADD_TAIL, 10)
    page.wait_for_timeout(300)


def quick_exit(page: Page) -> None:
    """Left after 0.2 s, before the SDK's init has finished."""
    page.wait_for_timeout(200)


SCENARIOS: list[tuple[str, int, Callable[[Page], None], bool]] = [
    ("150 KB, 2 s idle", 150, idle_view, False),
    ("400 KB, 2 s idle", 400, idle_view, False),
    ("150 KB, 2 s, DOM change at 1.5 s", 150, change_at_1_5_s(10), True),
    ("150 KB, 15 s reading", 150, reading, True),
    # more than a beacon holds (64 KiB)
    ("150 KB, +100 KB at 1.5 s, 2 s", 150, change_at_1_5_s(100_000), True),
    ("150 KB, 0.2 s", 150, quick_exit, False),
]


@dataclass
class Result:
    complete: int = 0
    tail: int = 0
    requests: int = 0
    gzip_requests: int = 0
    wire: int = 0
    aborted: int = 0
    runs: int = 0
    checks_tail: bool = True


def run(repeat: int) -> tuple[dict[tuple[str, str], Result], str]:
    """The results per (scenario, option set), and the browser's version."""
    results: dict[tuple[str, str], Result] = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        version = browser.version
        try:
            for scenario, kb, visit, tail in SCENARIOS:
                for name, options in OPTION_SETS.items():
                    tee = build(options, kb)
                    base = serve(tee)
                    result = results.setdefault((scenario, name), Result(checks_tail=tail))
                    for _ in range(repeat):
                        context = browser.new_context()
                        page = context.new_page()
                        failed: list[str] = []
                        page.on("requestfailed", lambda r, f=failed: f.append(r.url))
                        tee.log.clear()
                        tee.t0 = time.monotonic()
                        page.goto(base + "/article")
                        visit(page)
                        page.goto(base + "/elsewhere")
                        page.wait_for_timeout(2500)  # stragglers: retries, late beacons
                        context.close()
                        uploads = list(tee.log)
                        result.runs += 1
                        result.complete += has_snapshot_with_end(uploads)
                        result.tail += (not tail) or any(TAIL in u.text for u in uploads)
                        result.requests += len(uploads)
                        result.gzip_requests += sum(u.gzip for u in uploads)
                        result.wire += sum(u.wire for u in uploads)
                        result.aborted += sum("/_replay/track" in u for u in failed)
        finally:
            browser.close()
    return results, version


def page_exit_section(repeat: int = 2) -> str:
    logging.getLogger("replay_middleware").setLevel(logging.ERROR)
    results, chromium_version = run(repeat)
    lines = [
        "## Page exit: what a short view uploads",
        "",
        "Real SDK 1.51.6 in Debian's chromium, the middleware in local mode under uvicorn on "
        "127.0.0.1 (`benchmarks/page_exit.py`). Each visit opens a long page, does what the row "
        "says, then opens a page the middleware does not record. *Complete*: a full snapshot "
        "holding the page's last paragraph arrived. *Tail*: the DOM change made just before "
        "leaving arrived (— where the visit makes none). Requests and bytes are what the "
        f"server received (wire bytes, per visit, mean of {repeat}); *aborted*: uploads the "
        "browser started and cancelled (`net::ERR_ABORTED`).",
        "",
        f"- Machine: {cpu_model()}, {platform.machine()}, Python "
        f"{platform.python_version()}, {platform.system()}; chromium {chromium_version}",
        f"- Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        "",
        "| Visit | SDK options | complete | tail | requests | gzip | KB on the wire | aborted |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for (scenario, name), r in results.items():
        lines.append(
            f"| {scenario} | {name} | {r.complete}/{r.runs} | "
            f"{f'{r.tail}/{r.runs}' if r.checks_tail else '—'} | "
            f"{r.requests / r.runs:.1f} | {r.gzip_requests / r.runs:.1f} | "
            f"{r.wire / r.runs / 1024:.1f} | {r.aborted / r.runs:.1f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    print(page_exit_section(args.repeat))


if __name__ == "__main__":
    main()
