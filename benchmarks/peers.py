"""replay-middleware next to its peers, side by side in one run (issue 10, goal 4).

Every peer is an ASGI middleware around the same bare app, called in-process with a hand-built
scope like ``run.py`` (no sockets, no server):

- *ours*: ``ReplayMiddleware``, local mode, sampled, a fixed ``secret_key``: a new visitor, so
  every request mints an identity, signs a cookie and injects the snippet before ``</head>``;
- *New Relic*: the Python agent's own ``ASGIBrowserMiddleware`` (``newrelic/api/asgi_application.py``),
  one per request as ``ASGIApplicationWrapper`` builds it, with a stand-in for the agent's
  transaction whose ``browser_timing_header()`` does the pure part of the real one (obfuscated
  transaction name, JSON, ``_js_agent_header_fragment``). The middleware buffers until
  ``verify_body_exists`` sees ``<body`` (or 64 KiB), then ``insert_html_snippet`` puts the header
  after the charset ``<meta>``. No agent is started, no account, no network: the figures are the
  HTML insertion alone, not the agent's transaction around it;
- *BeautifulSoup*: the whole body buffered, parsed with ``html.parser``, the snippet appended to
  ``<head>``, serialized;
- *str.replace*: the whole body buffered, decoded, the first ``</head>`` replaced by
  snippet + ``</head>``, encoded;
- *GZip*: Starlette's ``GZipMiddleware`` (``minimum_size=500``, its defaults otherwise);
- *bare*: the app alone.

Every injector inserts about the same number of bytes (our snippet's size). Pages are the
given size of paragraphs after a small head or a 50 KB one (inline ``<style>`` and ``<meta>``
filler, so ``</head>`` is 50 KB in), sent in one chunk, 4 KB chunks or 64-byte chunks. Each
peer's output is checked once per cell (snippet exactly once, before ``<body``; gzip and
bare give the page back; ``Content-Length`` right), so a broken peer cannot look fast.

    python benchmarks/peers.py [--rounds 7] [--quick] [--before ../other-checkout]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import gzip
import importlib.util
import logging
import os
import platform
import random
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType, SimpleNamespace

from bs4 import BeautifulSoup
from newrelic.api.asgi_application import (  # type: ignore[import-untyped]
    ASGIBrowserMiddleware,
)
from newrelic.api.web_transaction import (  # type: ignore[import-untyped]
    _encode_nonce,
    _js_agent_header_fragment,
)
from newrelic.common.encoding_utils import (  # type: ignore[import-untyped]
    json_encode,
    obfuscate,
)
from page_cost import _PARA, receive, scope  # benchmarks/page_cost.py
from proxy import cpu_model  # benchmarks/proxy.py
from starlette.middleware.gzip import GZipMiddleware
from starlette.types import ASGIApp as App
from starlette.types import Message, Receive, Scope, Send

import replay_middleware

KB = 1000

OURS, BEFORE, NEWRELIC, SOUP, REPLACE, GZIP, BARE = (
    "ours",
    "ours before",
    "New Relic",
    "BeautifulSoup",
    "str.replace",
    "GZip",
    "bare",
)
#: A peer's name and how it wraps the bare app.
Peers = dict[str, Callable[[App], App]]

# --- pages -----------------------------------------------------------------------------------

_HEAD_OPEN = (
    b'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>Bench</title>\n'
    b'<link rel="stylesheet" href="/static/app.css">\n'
)
_HEAD_CLOSE = b"</head>\n"
_BODY_OPEN = b"<body>\n"
_TAIL = b"</body>\n</html>\n"
_META = b'<meta name="description" content="A page whose head carries its critical CSS inline.">\n'
_RULE = b".card-%05d { margin: 0 4px 8px; padding: 12px; color: #1f2933; border-radius: 4px; }\n"


def head(size: int) -> bytes:
    """A ``<head>`` of about ``size`` bytes: the usual tags, then ``<meta>`` and inline CSS."""
    out = _HEAD_OPEN
    if size > len(out) + len(_HEAD_CLOSE):
        rules = b"".join(_RULE % i for i in range(size // len(_RULE)))
        filler = _META * 8 + b"<style>\n" + rules + b"</style>\n"
        out += filler[: size - len(out) - len(_HEAD_CLOSE) - len(b"</style>\n")]
        out = out[: out.rfind(b"\n") + 1] + b"</style>\n"
    return out + _HEAD_CLOSE


def page(body_size: int, head_size: int) -> bytes:
    """``body_size`` bytes of paragraphs after a head of ``head_size`` bytes."""
    return head(head_size) + _BODY_OPEN + _PARA * max(1, body_size // len(_PARA)) + _TAIL


def split(body: bytes, chunk: int | None) -> list[bytes]:
    if chunk is None:
        return [body]
    return [body[i : i + chunk] for i in range(0, len(body), chunk)]


def chunked_app(chunks: list[bytes], delay: float = 0.0) -> App:
    """The bare app: ``chunks`` as body messages, ``delay`` seconds before each after the first."""
    headers = [
        (b"content-type", b"text/html; charset=utf-8"),
        (b"content-length", str(sum(map(len, chunks))).encode()),
    ]
    last = len(chunks) - 1

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        # Fresh header list and messages per response: GZipMiddleware edits what it is given.
        await send({"type": "http.response.start", "status": 200, "headers": list(headers)})
        for i, chunk in enumerate(chunks):
            if delay and i:
                await asyncio.sleep(delay)
            await send({"type": "http.response.body", "body": chunk, "more_body": i < last})

    return app


# --- peers -----------------------------------------------------------------------------------

SECRET = "bench-secret-key-0123456789abcdef"
OUR_MARKER = b'id="replay-middleware-config"'
PEER_MARKER = b"replay-bench-snippet"
SNIPPET_BYTES = 780  # about what ours inserts for a new visitor (config JSON + loader tag)


def _pad(prefix: str, suffix: str) -> str:
    return prefix + "/" * max(0, SNIPPET_BYTES - len(prefix) - len(suffix)) + suffix


#: What the BeautifulSoup and str.replace injectors insert.
PEER_SNIPPET = _pad(
    '<script type="application/json" id="replay-bench-snippet">{"v":1,"pad":"', '"}</script>'
)
#: New Relic's loader comes from its collector at connect time; a stand-in, padded below to
#: make the header as long as the other snippets.
_NR_LOADER = f"/* {PEER_MARKER.decode()} */"


class _NewRelicTransaction:
    """What ``ASGIBrowserMiddleware`` reads of the agent's ``WebTransaction``.

    ``browser_timing_header`` follows ``newrelic/api/web_transaction.py`` minus the agent's
    bookkeeping: the transaction name obfuscated with the first 13 characters of the license
    key, the ``NREUM.info`` JSON, ``_js_agent_header_fragment``, the ASCII check, and the
    "only once" flag.
    """

    enabled = True
    autorum_disabled = False
    settings = SimpleNamespace(browser_monitoring=SimpleNamespace(content_type=["text/html"]))

    def __init__(self, path: str) -> None:
        self.path = path
        self.start_time = time.time()
        self.rum_header_generated = False

    def browser_timing_header(self, nonce: str | None = None) -> str:
        info = {
            "beacon": "bam.nr-data.net",
            "errorBeacon": "bam.nr-data.net",
            "licenseKey": "NRJS-0123456789abcdef012",
            "applicationID": "123456789",
            "transactionName": obfuscate(f"WebTransaction/Uri{self.path}", "0123456789abc"),
            "queueTime": 0,
            "applicationTime": int((time.time() - self.start_time) * 1000),
            "agent": "",
        }
        header: str = _js_agent_header_fragment % (
            _encode_nonce(nonce),
            json_encode(info),
            _NR_LOADER,
        )
        header.encode("ascii")
        self.rum_header_generated = True
        return header


_NR_LOADER += "/" * (SNIPPET_BYTES - len(_NewRelicTransaction("/").browser_timing_header()))


class NewRelicBrowser:
    """New Relic's ``ASGIBrowserMiddleware``, a fresh one per request as the agent makes it."""

    def __init__(self, app: App) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        transaction = _NewRelicTransaction(scope["path"])
        await ASGIBrowserMiddleware(self.app, transaction)(scope, receive, send)


class BufferingInjector:
    """Buffer the whole HTML body, ``transform`` it, send it with a new ``Content-Length``."""

    def __init__(self, app: App, transform: Callable[[bytes], bytes]) -> None:
        self.app = app
        self.transform = transform

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        start: Message | None = None
        parts: list[bytes] = []

        async def buffered(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                content_type = dict(message["headers"]).get(b"content-type", b"")
                if content_type.startswith(b"text/html"):
                    start = message
                    return
            elif message["type"] == "http.response.body" and start is not None:
                parts.append(message.get("body", b""))
                if message.get("more_body", False):
                    return
                body = self.transform(b"".join(parts))
                headers = [(k, v) for k, v in start["headers"] if k != b"content-length"]
                headers.append((b"content-length", str(len(body)).encode()))
                await send({**start, "headers": headers})
                await send({"type": "http.response.body", "body": body})
                return
            await send(message)

        await self.app(scope, receive, buffered)


def soup_inject(body: bytes) -> bytes:
    soup = BeautifulSoup(body.decode("utf-8"), "html.parser")
    assert soup.head is not None
    soup.head.append(BeautifulSoup(PEER_SNIPPET, "html.parser"))
    return soup.encode("utf-8")


def replace_inject(body: bytes) -> bytes:
    return body.decode("utf-8").replace("</head>", PEER_SNIPPET + "</head>", 1).encode("utf-8")


def ours(package: ModuleType) -> Callable[[App], App]:
    """``ReplayMiddleware`` from ``package``: local mode, every visitor sampled."""

    def wrap(app: App) -> App:
        config = package.ReplayConfig(sample_rate=1.0, debug_header=False, secret_key=SECRET)
        middleware: App = package.ReplayMiddleware(app, config=config)
        return middleware

    return wrap


def older_build(root: str) -> ModuleType:
    """The ``replay_middleware`` package of another checkout, imported under another name.

    Its modules import each other relatively, so both builds live in one process and are
    measured in the same rounds.
    """
    name = "replay_middleware_before"
    folder = os.path.join(os.path.abspath(root), "replay_middleware")
    spec = importlib.util.spec_from_file_location(
        name, os.path.join(folder, "__init__.py"), submodule_search_locations=[folder]
    )
    assert spec is not None and spec.loader is not None, folder
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def peers(before: ModuleType | None = None) -> Peers:
    """Every peer, ``before`` (an older build of ours) next to ours when given."""
    table: Peers = {OURS: ours(replay_middleware)}
    if before is not None:
        table[BEFORE] = ours(before)
    table[NEWRELIC] = NewRelicBrowser
    table[SOUP] = lambda app: BufferingInjector(app, soup_inject)
    table[REPLACE] = lambda app: BufferingInjector(app, replace_inject)
    table[GZIP] = lambda app: GZipMiddleware(app, minimum_size=500)
    table[BARE] = lambda app: app
    return table


async def collect(app: App) -> tuple[list[float], list[Message]]:
    """One request; the messages that left ``app`` and when each did (seconds from the call)."""
    times: list[float] = []
    messages: list[Message] = []
    t0 = time.perf_counter()

    async def recording(message: Message) -> None:
        times.append(time.perf_counter() - t0)
        messages.append(message)

    await app(scope("/"), receive, recording)
    return times, messages


def check(peer: str, messages: list[Message], original: bytes) -> None:
    """Raise unless ``messages`` are a whole, right answer from ``peer`` for ``original``."""
    assert messages[0]["type"] == "http.response.start", (peer, messages[0])
    headers = dict(messages[0]["headers"])
    body = b"".join(m.get("body", b"") for m in messages[1:])
    assert not messages[-1].get("more_body", False), peer
    if b"content-length" in headers:
        assert int(headers[b"content-length"]) == len(body), (peer, "content-length")
    if peer == GZIP:
        assert headers.get(b"content-encoding") == b"gzip", peer
        body = gzip.decompress(body)
    if peer in (GZIP, BARE):
        assert body == original, (peer, "body changed")
        return
    marker = OUR_MARKER if peer in (OURS, BEFORE) else PEER_MARKER
    assert body.count(marker) == 1, (peer, "snippet count", body.count(marker))
    assert body.index(marker) < body.index(b"<body"), (peer, "snippet after <body")


# --- measurement -----------------------------------------------------------------------------

BODY_SIZES = (1 * KB, 30 * KB, 500 * KB, 5000 * KB)
HEAD_SIZES = (0, 50 * KB)
CHUNKINGS: tuple[int | None, ...] = (None, 4096, 64)


async def cpu_us(app: App, n: int) -> float:
    """CPU µs per request over ``n`` requests: this process's CPU time, all its threads (GZip
    compresses large chunks in a worker), not the time it waits for a core on a shared machine.
    """
    s = scope("/")

    async def discard(message: Message) -> None:
        return None

    start = time.process_time()
    for _ in range(n):
        await app(dict(s), receive, discard)
    return (time.process_time() - start) / n * 1e6


@dataclass(frozen=True)
class Cell:
    body_size: int
    head_size: int
    chunk: int | None

    @property
    def label(self) -> str:
        size = _size(self.body_size)
        return f"{size} + 50 KB head" if self.head_size else f"{size}, small head"


async def measure(
    table: Peers, cells: list[Cell], rounds: int, budget: float
) -> dict[Cell, dict[str, float]]:
    """Median CPU µs per request of every peer in every cell (``cpu_us``).

    Each peer first answers one checked request per cell, which also sets how many requests
    it runs per sample: as many as fit in ``budget`` seconds, at least one. Then ``rounds``
    rounds, each going through every cell and every peer, so a burst of other work on the
    machine is spread over all cells rather than hitting one. Peers run in a new order each
    round, and each sample follows one untimed request: after a peer that freed 10 MB, malloc
    may have handed pages back to the kernel, and the next 5 MB allocation pays ~1200 page
    faults, which belong to neither peer.
    """
    prepared: dict[Cell, tuple[dict[str, App], dict[str, int]]] = {}
    for cell in cells:
        original = page(cell.body_size, cell.head_size)
        bare = chunked_app(split(original, cell.chunk))
        apps = {peer: wrap(bare) for peer, wrap in table.items()}
        counts: dict[str, int] = {}
        for peer, app in apps.items():
            t0 = time.process_time()
            _, messages = await collect(app)
            check(peer, messages, original)
            counts[peer] = max(1, min(5000, int(budget / (time.process_time() - t0 + 1e-6))))
        prepared[cell] = apps, counts
    names = list(table)
    samples: dict[Cell, dict[str, list[float]]] = {c: {p: [] for p in names} for c in cells}
    shuffle = random.Random(10).shuffle
    gc.disable()
    try:
        for _ in range(rounds):
            for cell, (apps, counts) in prepared.items():
                shuffle(names)
                for peer in names:
                    await cpu_us(apps[peer], 1)
                    samples[cell][peer].append(await cpu_us(apps[peer], counts[peer]))
                gc.collect()  # BeautifulSoup's trees are cycles: keep the heap from growing
    finally:
        gc.enable()
    return {
        c: {p: statistics.median(v) for p, v in by_peer.items()} for c, by_peer in samples.items()
    }


async def peak_memory(table: Peers, cell: Cell) -> dict[str, int]:
    """tracemalloc peak (bytes) of one request per peer, the page itself not counted."""
    original = page(cell.body_size, cell.head_size)
    bare = chunked_app(split(original, cell.chunk))
    out: dict[str, int] = {}
    for peer, wrap in table.items():
        app = wrap(bare)
        await cpu_us(app, 1)  # warm: lazy imports and caches are not the request
        gc.collect()
        tracemalloc.start()
        try:
            await cpu_us(app, 1)
            out[peer] = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    return out


async def first_byte(
    table: Peers, body_size: int, head_size: int, steps: int, delay: float
) -> dict[str, tuple[float, float]]:
    """(first body byte, last message) in ms for a page streamed slowly, per peer.

    The app sends everything up to ``</head>`` at once, then the body in ``steps`` chunks
    with ``delay`` seconds before each. Median of three requests.
    """
    original = page(body_size, head_size)
    cut = original.index(_HEAD_CLOSE) + len(_HEAD_CLOSE)
    step = -(-(len(original) - cut) // steps)
    chunks = [original[:cut], *split(original[cut:], step)]
    bare = chunked_app(chunks, delay)
    out: dict[str, tuple[float, float]] = {}
    for peer, wrap in table.items():
        app = wrap(bare)
        firsts: list[float] = []
        lasts: list[float] = []
        for _ in range(3):
            times, messages = await collect(app)
            check(peer, messages, original)
            firsts.append(
                next(t for t, m in zip(times, messages, strict=True) if m.get("body")) * 1000
            )
            lasts.append(times[-1] * 1000)
        out[peer] = (statistics.median(firsts), statistics.median(lasts))
    return out


# --- the section -----------------------------------------------------------------------------


def _size(n: int) -> str:
    return f"{n / 1e6:g} MB" if n >= 1_000_000 else f"{n / 1e3:g} KB"


def _time(us: float) -> str:
    if abs(us) >= 1e6:
        return f"{us / 1e6:.2f} s"
    if abs(us) >= 1e4:
        return f"{us / 1e3:.1f} ms"
    if abs(us) >= 1e3:
        return f"{us / 1e3:.2f} ms"
    return f"{us:.1f} µs"


def _mem(n: int) -> str:
    return f"{n / 2**20:.2f} MiB" if n >= 2**20 else f"{n / 2**10:.1f} KiB"


def _chunking(chunk: int | None) -> str:
    return (
        "one chunk"
        if chunk is None
        else f"{chunk} B chunks"
        if chunk < 1024
        else f"{chunk // 1024} KB chunks"
    )


async def _measure_all(
    table: Peers, rounds: int, budget: float, cells: list[Cell], memory_cells: list[Cell]
) -> tuple[
    dict[Cell, dict[str, float]],
    dict[Cell, dict[str, int]],
    dict[str, dict[str, tuple[float, float]]],
]:
    timing = await measure(table, cells, rounds, budget)
    memory = {cell: await peak_memory(table, cell) for cell in memory_cells}
    ttfb = {
        "small head": await first_byte(table, 30 * KB, 0, 5, 0.02),
        "50 KB head": await first_byte(table, 30 * KB, 50 * KB, 5, 0.02),
    }
    return timing, memory, ttfb


def _table(header: list[str], rows: list[list[str]], left: int = 1) -> list[str]:
    """A Markdown table: the first ``left`` columns are labels, the others figures."""
    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * left + "---:|" * (len(header) - left),
        *("| " + " | ".join(row) + " |" for row in rows),
        "",
    ]


def peers_section(rounds: int = 7, quick: bool = False, before: str | None = None) -> str:
    """The peers section of BENCHMARKS.md: per-request overhead, peak memory, first byte.

    ``quick``: at most 3 rounds, 5 ms per sample, no 5 MB pages (about 10 s instead of 1 min).
    ``before``: the root of another checkout whose build is measured next to ours.
    """
    logging.disable(logging.WARNING)  # local mode's start-up warnings are not the point here
    if quick:
        rounds = min(rounds, 3)
    budget = 0.005 if quick else 0.02
    body_sizes = BODY_SIZES[:3] if quick else BODY_SIZES
    cells = [Cell(b, h, c) for c in CHUNKINGS for b in body_sizes for h in HEAD_SIZES]
    big = body_sizes[-2:]
    memory_cells = [Cell(b, 0, c) for b in big for c in (None, 4096)]
    memory_cells.append(Cell(big[-1], 50 * KB, 4096))
    load = os.getloadavg()[0]
    began = time.perf_counter()
    table = peers(older_build(before) if before else None)
    timing, memory, ttfb = asyncio.run(_measure_all(table, rounds, budget, cells, memory_cells))
    took = time.perf_counter() - began
    names = list(table)
    others = [p for p in names if p != BARE]
    lines = [
        "## Peers, side by side",
        "",
        "Written by `make bench` (`benchmarks/peers.py`). The same bare app (a page as",
        "`http.response.body` messages) behind each peer, called in-process with a hand-built",
        "scope: **ours** (`ReplayMiddleware`, local mode, sampled, new visitor: mints and signs an",
        "identity, injects before `</head>`); **New Relic** (the Python agent's own",
        "`ASGIBrowserMiddleware`, one per request as the agent builds it, with a stand-in",
        "transaction whose `browser_timing_header()` does the real one's pure steps; it buffers until",
        "`<body` shows up or 64 KiB, then `insert_html_snippet`; the agent's transaction around it is",
        "not counted, so this is New Relic's floor); **BeautifulSoup** (buffer all, `html.parser`,",
        "append to `<head>`, serialize); **str.replace** (buffer all, decode, replace the first",
        "`</head>`, encode); **GZip** (Starlette's `GZipMiddleware`, level 9, larger chunks in a",
        "worker thread). Every injector inserts about the same bytes (~780 B). Each peer's output",
        "is checked per cell (snippet once, before `<body`; gzip and bare give the page back).",
        f"{rounds} rounds, each through every page and peer (peers shuffled), a peer running as many",
        f"requests per sample as fit in {budget * 1000:g} ms of CPU (at least one), after one untimed",
        "request (so page faults left by the previous peer's big frees are not charged); medians of",
        "rounds. Times are the process's CPU time (`time.process_time`, all threads: GZip compresses",
        "large chunks in a worker), so time spent waiting for a core on a shared machine is not",
        "counted; the first-byte table is wall-clock. Pages: paragraphs of the given size after a",
        'small head (~150 B) or a 50 KB head (inline `<style>` and `<meta>`), so "1 KB + 50 KB head"',
        "is a 51 KB page. Quote the ratios; absolute times move with the machine.",
        "",
        f"- Machine: {cpu_model()}, {os.cpu_count()} cores, {platform.machine()}, Python "
        f"{platform.python_version()}, {platform.system()}; 1-minute load average {load:.2f} before",
        f"- Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; the section took {took:.0f} s;"
        f" ours: replay-middleware from `{os.path.dirname(replay_middleware.__file__)}`"
        + (
            f", *ours before*: from `{os.path.abspath(before)}`, measured in the same rounds"
            if before
            else ""
        ),
        "",
    ]
    for chunk in CHUNKINGS:
        rows = []
        for cell in (c for c in cells if c.chunk == chunk):
            r = timing[cell]
            added = {p: r[p] - r[BARE] for p in others}
            ratio = f"{added[OURS] / added[NEWRELIC]:.2f}"
            rows.append([cell.label, _time(r[BARE]), *(_time(added[p]) for p in others), ratio])
        lines += [
            f"### Time per request, {_chunking(chunk)}",
            "",
            "*bare app*: the app alone; the other columns: the time each peer adds to it.",
            "",
            *_table(["Page", "bare app", *others, "ours / New Relic"], rows),
        ]
    lines += [
        "### Peak memory of one request",
        "",
        "tracemalloc peak (Python heap) during one request, after a warm-up request; the page",
        "itself exists before the call and is not counted.",
        "",
        *_table(
            ["Page", "Chunking", *names],
            [
                [cell.label, _chunking(cell.chunk), *(_mem(m[p]) for p in names)]
                for cell, m in memory.items()
            ],
            left=2,
        ),
        "### First byte of a slowly streamed page",
        "",
        "A 30 KB page: the app sends everything up to `</head>` at once, then the body in 5",
        "chunks with 20 ms before each. ms from the call to the first body byte leaving the",
        "middleware / to the last message; median of three.",
        "",
        *_table(
            ["Peer", *ttfb],
            [
                [peer, *(f"{t[peer][0]:.1f} / {t[peer][1]:.1f}" for t in ttfb.values())]
                for peer in names
            ],
        ),
        *_key_ratios(timing, memory, ttfb),
        "",
    ]
    return "\n".join(lines)


def _key_ratios(
    timing: dict[Cell, dict[str, float]],
    memory: dict[Cell, dict[str, int]],
    ttfb: dict[str, dict[str, tuple[float, float]]],
) -> list[str]:
    def added(cell: Cell, peer: str) -> float:
        return timing[cell][peer] - timing[cell][BARE]

    out = []
    for body in (1 * KB, 30 * KB):
        cell = Cell(body, 0, None)
        if cell in timing:
            was = f" (before: {_time(added(cell, BEFORE))})" if BEFORE in timing[cell] else ""
            out.append(
                f"- {_size(body)} page, small head, one chunk: ours adds {_time(added(cell, OURS))}{was}, "
                f"New Relic {_time(added(cell, NEWRELIC))} (ours / New Relic = **{added(cell, OURS) / added(cell, NEWRELIC):.1f}**), "
                f"str.replace {_time(added(cell, REPLACE))}, GZip {_time(added(cell, GZIP))}, "
                f"BeautifulSoup {_time(added(cell, SOUP))}."
            )
    if all(BEFORE in r for r in timing.values()):
        ratios = sorted(added(c, OURS) / added(c, BEFORE) for c in timing)
        out.append(
            f"- Ours / ours before, added time: median over the {len(ratios)} cells "
            f"**{statistics.median(ratios):.2f}** (from {ratios[0]:.2f} to {ratios[-1]:.2f})."
        )
    by_chunking: dict[str, list[str]] = {}
    for cell in timing:
        if added(cell, OURS) <= added(cell, NEWRELIC):
            by_chunking.setdefault(_chunking(cell.chunk), []).append(cell.label)
    wins = "; ".join(f"{k}: {', '.join(v)}" for k, v in by_chunking.items())
    out.append(
        f"- Ours adds no more than New Relic in {sum(map(len, by_chunking.values()))} of "
        f"{len(timing)} cells" + (f" ({wins})." if wins else ".")
    )
    small = ttfb["small head"]
    out.append(
        f"- First byte, head sent first: ours {small[OURS][0]:.1f} ms, New Relic {small[NEWRELIC][0]:.1f} ms "
        f"(it holds the head until `<body` arrives), the buffering injectors {small[REPLACE][0]:.1f} ms "
        "(the whole page)."
    )
    for cell, m in memory.items():
        if cell.body_size == max(c.body_size for c in memory) and not cell.head_size:
            out.append(
                f"- Memory, {cell.label} in {_chunking(cell.chunk)}: ours {_mem(m[OURS])}, "
                f"New Relic {_mem(m[NEWRELIC])}, str.replace {_mem(m[REPLACE])}, "
                f"BeautifulSoup {_mem(m[SOUP])}, GZip {_mem(m[GZIP])}."
            )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument(
        "--quick", action="store_true", help="3 rounds, 5 ms per sample, no 5 MB pages"
    )
    parser.add_argument(
        "--before", metavar="CHECKOUT", help="also measure the replay_middleware of this checkout"
    )
    args = parser.parse_args()
    print(peers_section(args.rounds, args.quick, args.before))


if __name__ == "__main__":
    main()
