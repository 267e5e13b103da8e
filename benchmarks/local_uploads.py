"""Local mode under hostile uploads: memory and stall per upload, the store's WAL after a refusal.

Three measurements, each in fresh processes (so one cannot warm or bloat the next):

- **memory**: one upload to ``{prefix}/track`` through the ASGI middleware, in-process (no
  server), in a child process whose VmHWM is reset just before it; the figure is the peak RSS
  added by the upload (VmHWM after minus VmRSS before), as benchmarks/proxy.py measures;
- **stall**: uvicorn serving a local-mode app in a child process; a client in this process
  sends small requests back to back (keep-alive) while another thread posts uploads; the
  figure is the slowest small request that overlapped the uploads, next to the slowest without
  them (the GIL is shared by the event loop and the thread decoding the upload);
- **WAL**: the ``-wal`` file next to the store after an upload that did not fit the store's cap
  was rolled back.

The uploads: the issue's bomb (about 51 KB of gzip inflating to 50 MB of ``{}`` events), a bomb of
tiny rrweb event strings that stays under the decoded-size cap (so the event limits stop it),
a real large batch (a 6 MB upload: ten full snapshots of the 400 KB article page, rrweb-shaped,
and 2 000 incremental events), and the largest single full snapshots the limits admit: 8.6 MB
of JSON for a text page (a 6 MB article), 3.5 MB for a DOM-heavy one (a table of 3 000 rows,
42 000 nodes).

    python benchmarks/local_uploads.py                 # prints the BENCHMARKS.md section
    PYTHONPATH=<older checkout> python benchmarks/local_uploads.py --json > before.json
    python benchmarks/local_uploads.py --before before.json

The second form measures another version of the package (run it from outside the checkout);
the third shows those figures next to this version's.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import gzip
import json
import os
import platform
import random
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from proxy import cpu_model, proc_status_kb, reset_peak_rss  # benchmarks/proxy.py (this folder)

TRACK = "/_replay/track"
QUERY = "device_id=bench-device&session_id=1735689600000&type=replay"
T0 = 1735689600000
LOOPBACK_HEADERS = [(b"host", b"127.0.0.1"), (b"content-type", b"application/json")]


# --- bodies ------------------------------------------------------------------------------------


def document(events: list[Any]) -> bytes:
    return json.dumps({"version": 1, "events": events}, separators=(",", ":")).encode()


def event_text(kind: int, ts: int, data: Any) -> str:
    """An rrweb event as the SDK frames it: JSON text, keys type/timestamp/data."""
    return json.dumps({"type": kind, "timestamp": ts, "data": data}, separators=(",", ":"))


class _Ids:
    def __init__(self) -> None:
        self.last = 0

    def __call__(self) -> int:
        self.last += 1
        return self.last


def _element(ids: _Ids, tag: str, children: list[Any], **attributes: str) -> dict[str, Any]:
    return {
        "type": 2,
        "tagName": tag,
        "attributes": attributes,
        "childNodes": children,
        "id": ids(),
    }


def _text(ids: _Ids, text: str) -> dict[str, Any]:
    return {"type": 3, "textContent": text, "id": ids()}


def _snapshot(body: list[Any], ids: _Ids) -> dict[str, Any]:
    head = _element(ids, "head", [_element(ids, "title", [_text(ids, "Bench")])])
    html = _element(ids, "html", [head, _element(ids, "body", body)], lang="en")
    return {"node": {"type": 0, "childNodes": [html], "id": ids()}, "initialOffset": {}}


def article_snapshot(kb: int, seed: int = 0) -> dict[str, Any]:
    """rrweb's full snapshot of the e2e article page (tests/e2e: paragraphs of words, ``kb`` KB
    of HTML); the recorded one of the 400 KB page is 548 KB of JSON, this one 540 KB."""
    rng = random.Random(seed)
    words = ("saddle", "falcon", "lantern", "orbit", "velvet", "cobalt", "stone", "quartz")
    ids = _Ids()
    body: list[Any] = [_element(ids, "h1", [_text(ids, f"Article of {kb} KB")])]
    size = 0
    n = 0
    while size < kb * 1000:
        text = f"\u00a7{n}. " + " ".join(
            f"{rng.choice(words)}{rng.randrange(10_000)}" for _ in range(36)
        )
        body += [_element(ids, "p", [_text(ids, text)]), _text(ids, "\n")]
        size += len(text) + 8
        n += 1
    return _snapshot(body, ids)


def table_snapshot(rows: int) -> dict[str, Any]:
    """A DOM-heavy page (an admin change list): ``rows`` rows of six cells with links,
    checkboxes and classes; about 1.4 KB of snapshot JSON per row."""
    ids = _Ids()
    trs = []
    for r in range(rows):
        cells = [
            _element(ids, "td", [_element(ids, "input", [], type="checkbox", name="_selected")]),
            _element(
                ids, "th", [_element(ids, "a", [_text(ids, f"user{r}")], href=f"/admin/u/{r}/")]
            ),
            *(
                _element(ids, "td", [_text(ids, f"{field}{r}")], **{"class": f"field-{field}"})
                for field in ("email", "first", "last", "staff")
            ),
        ]
        trs.append(_element(ids, "tr", cells, **{"class": "row1" if r % 2 else "row2"}))
    table = _element(ids, "table", [_element(ids, "tbody", trs)], id="result_list")
    return _snapshot([table], ids)


def incremental(i: int) -> str:
    data = {"source": 1, "positions": [{"x": i % 1280, "y": i % 720, "id": 9, "timeOffset": -5}]}
    return event_text(3, T0 + 1000 + i, data)


def real_batch() -> bytes:
    """A 6 MB batch, gzipped as the SDK sends it: Meta, then ten full snapshots of the 400 KB
    article page (ten client-side navigations, each snapshot sent eagerly), 2 000 incremental
    events."""
    events = [event_text(4, T0, {"href": "http://127.0.0.1/article", "width": 1280, "height": 720})]
    events += [event_text(2, T0 + 10 + i, article_snapshot(400, seed=i)) for i in range(10)]
    events += [incremental(i) for i in range(2000)]
    return gzip.compress(document(events))


def dom_heavy_upload(rows: int) -> bytes:
    """One full snapshot of ``table_snapshot(rows)``, gzipped."""
    return gzip.compress(document([event_text(2, T0 + 1, table_snapshot(rows))]))


def bomb_objects(mib: int = 50) -> bytes:
    """The issue's bomb: ~51 KB of gzip inflating to ``mib`` MiB of ``{}`` events."""
    head, tail = b'{"version":1,"events":[', b"{}]}"
    count = (mib * 1024 * 1024 - len(head) - len(tail)) // 3
    compressor = zlib_gzip()
    out = [compressor.compress(head)]
    chunk = b"{}," * 100_000
    for _ in range(count // 100_000):
        out.append(compressor.compress(chunk))
    out.append(compressor.compress(tail))
    out.append(compressor.flush())
    return b"".join(out)


def bomb_strings(mib: float = 15.5) -> bytes:
    """Tiny valid rrweb events (JSON strings, as the SDK frames them) under the decoded-size
    cap: about 390 000 of them, so the event count and memory limits must stop it."""
    one = json.dumps(event_text(3, T0, {"source": 2, "type": 1, "id": 7})).encode()
    count = int(mib * 1024 * 1024) // (len(one) + 1)
    return gzip.compress(b'{"version":1,"events":[' + b",".join([one] * count) + b"]}")


def zlib_gzip() -> Any:
    import zlib

    return zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)


CASES: dict[str, Callable[[], bytes]] = {
    "bomb-50MB-objects": bomb_objects,
    "bomb-15MB-tiny-events": bomb_strings,
    "real-6MB-batch": real_batch,
    "largest-text-snapshot": lambda: gzip.compress(
        document([event_text(2, T0 + 1, article_snapshot(6000))])
    ),
    "largest-dom-snapshot": lambda: dom_heavy_upload(3000),
}


# --- memory: one upload in a child process -----------------------------------------------------


def local_app(store_dir: str, **options: Any) -> Any:
    from replay_middleware import ReplayConfig, ReplayMiddleware

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        body = b'{"ok":true}'
        headers = [(b"content-type", b"application/json"), (b"content-length", b"11")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return ReplayMiddleware(app, ReplayConfig(local_store_dir=store_dir, **options))


async def post(app: Any, body: bytes) -> int:
    """One upload through the ASGI app, delivered in 64 KiB chunks as a server would."""
    chunks = [body[i : i + 65536] for i in range(0, len(body), 65536)] or [b""]
    headers = [*LOOPBACK_HEADERS, (b"content-length", str(len(body)).encode())]
    if body[:2] == b"\x1f\x8b":
        headers.append((b"content-encoding", b"gzip"))
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": TRACK,
        "raw_path": TRACK.encode(),
        "query_string": QUERY.encode(),
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }
    status = 0

    async def receive() -> dict[str, Any]:
        if chunks:
            chunk = chunks.pop(0)
            return {"type": "http.request", "body": chunk, "more_body": bool(chunks)}
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(scope, receive, send)
    return status


def child_memory(case: str) -> None:
    with tempfile.TemporaryDirectory() as store_dir:
        app = local_app(store_dir)
        # Warm-up: imports, the store's file and SQLite, the thread pool.
        small = document([event_text(4, T0, {"href": "http://127.0.0.1/"})])
        assert asyncio.run(post(app, small)) == 200
        body = CASES[case]()
        gc.collect()
        reset_peak_rss()  # VmHWM := VmRSS
        before = proc_status_kb("VmRSS", "VmHWM")
        t0 = time.perf_counter()
        status = asyncio.run(post(app, body))
        seconds = time.perf_counter() - t0
        after = proc_status_kb("VmHWM")
        added = (after["VmHWM"] - before["VmRSS"]) * 1024
        print(json.dumps({"status": status, "seconds": seconds, "added": added, "wire": len(body)}))


def measure_memory(case: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, __file__, "--child-memory", case],
        check=True,
        capture_output=True,
        text=True,
        timeout=600,
    )
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


# --- stall: small requests next to uploads -----------------------------------------------------


def child_server(port_file: str) -> None:
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    Path(port_file).write_text(str(sock.getsockname()[1]))
    with tempfile.TemporaryDirectory() as store_dir:
        config = uvicorn.Config(
            local_app(store_dir), log_level="warning", access_log=False, lifespan="on"
        )
        uvicorn.Server(config).run(sockets=[sock])


def _pings(port: int, stop: threading.Event, latencies: list[tuple[float, float]]) -> None:
    import httpx

    with httpx.Client(base_url=f"http://127.0.0.1:{port}", trust_env=False, timeout=120) as client:
        while not stop.is_set():
            t0 = time.perf_counter()
            client.get("/ping")
            latencies.append((t0, time.perf_counter() - t0))


def measure_stall(bodies: list[bytes], concurrent: int) -> dict[str, Any]:
    import httpx

    with tempfile.TemporaryDirectory() as tmp:
        port_file = Path(tmp) / "port"
        server = subprocess.Popen([sys.executable, __file__, "--child-server", str(port_file)])
        try:
            deadline = time.monotonic() + 30
            while not port_file.exists() or not port_file.read_text():
                if time.monotonic() > deadline:
                    raise RuntimeError("server did not start")
                time.sleep(0.05)
            port = int(port_file.read_text())
            base = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 30
            while True:
                try:
                    httpx.get(base + "/ping", trust_env=False)
                    break
                except httpx.TransportError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
            stop = threading.Event()
            latencies: list[tuple[float, float]] = []
            pinger = threading.Thread(target=_pings, args=(port, stop, latencies))
            pinger.start()
            time.sleep(2.0)  # the baseline
            statuses: list[int] = []

            def upload(body: bytes) -> None:
                headers = {"content-type": "application/json", "content-encoding": "gzip"}
                with httpx.Client(base_url=base, trust_env=False, timeout=120) as client:
                    r = client.post(f"{TRACK}?{QUERY}", content=body, headers=headers)
                    statuses.append(r.status_code)

            start = time.perf_counter()
            for body in bodies:
                workers = [threading.Thread(target=upload, args=(body,)) for _ in range(concurrent)]
                for w in workers:
                    w.start()
                for w in workers:
                    w.join()
            end = time.perf_counter()
            time.sleep(0.5)
            stop.set()
            pinger.join()
        finally:
            server.terminate()
            server.wait(30)
    baseline = [lat for t, lat in latencies if t < start - 0.2]
    during = [lat for t, lat in latencies if start <= t <= end]
    return {
        "statuses": statuses,
        "seconds": end - start,
        "baseline_max": max(baseline),
        "baseline_p50": statistics.median(baseline),
        "during_max": max(during),
        "during_p99": sorted(during)[int(len(during) * 0.99)],
        "during_count": len(during),
    }


# --- the WAL after a refused upload -------------------------------------------------------------


def wal_after_rollback() -> dict[str, int]:
    """A store capped at 8 MiB holds a 5 MB session; the same session sends another 5 MB:
    the upload is written, cannot fit, and is rolled back."""
    from replay_middleware.local_store import LocalStore

    first = document([event_text(2, T0 + 1, article_snapshot(400, seed=i)) for i in range(9)])
    second = document(
        [event_text(2, T0 + 100 + i, article_snapshot(400, seed=50 + i)) for i in range(9)]
    )
    with tempfile.TemporaryDirectory() as tmp, LocalStore(tmp, max_bytes=8 << 20) as store:
        store.add(QUERY, {}, first, T0 + 10)
        result = store.add(QUERY, {}, second, T0 + 20)
        assert result.upload_id is None, result
        wal = Path(tmp) / "replay.sqlite3-wal"
        wal_bytes = wal.stat().st_size if wal.exists() else 0
        db = sqlite3.connect(Path(tmp) / "replay.sqlite3")
        pages = db.execute("PRAGMA page_count").fetchone()[0] * 4096
        db.close()
    return {"cap": 8 << 20, "wal": wal_bytes, "db": pages, "upload": len(second)}


# --- report ------------------------------------------------------------------------------------


def _mib(n: float) -> str:
    return f"{n / (1 << 20):.1f} MiB"


STALL_LABEL = "the bombs and the 6 MB batch above, each sent three times at once"


def measure_all() -> dict[str, Any]:
    memory = {case: measure_memory(case) for case in CASES}
    stall = measure_stall([bomb_objects(), bomb_strings(), real_batch()], concurrent=3)
    return {"memory": memory, "stall": stall, "wal": wal_after_rollback()}


def section(now: dict[str, Any], before: dict[str, Any] | None = None) -> str:
    """The BENCHMARKS.md section; ``before``: the same measurements of another version (the
    ``--json`` output of an older checkout), shown next to these."""
    memory, stall, wal = now["memory"], now["stall"], now["wal"]
    then = before["memory"] if before else {}
    lines = [
        "## Local mode: hostile uploads",
        "",
        "`python benchmarks/local_uploads.py`. Peak RSS added by one upload to the local",
        "`/track` (ASGI middleware in-process, a fresh child process per upload, VmHWM reset",
        "just before it)" + (", and the same for the version before (issue 8):" if then else ":"),
        "",
        f"- Machine: {cpu_model()}, {platform.machine()}, {os.cpu_count()} CPUs (shared), "
        f"Python {platform.python_version()}, {platform.system()}",
        f"- Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        "",
        "| upload | on the wire | answer | peak RSS added | time |"
        + (" before: answer | before: RSS | before: time |" if then else ""),
        "|---|---:|---:|---:|---:|" + ("---:|---:|---:|" if then else ""),
    ]
    for case, m in memory.items():
        row = (
            f"| {case} | {m['wire'] / 1000:.0f} KB | {m['status']} | {_mib(m['added'])} "
            f"| {m['seconds']:.2f} s |"
        )
        if case in then:
            b = then[case]
            row += f" {b['status']} | {_mib(b['added'])} | {b['seconds']:.2f} s |"
        lines.append(row)
    lines += ["", _stall_line(stall, "now")]
    if before:
        lines.append(_stall_line(before["stall"], "before"))
    lines += [
        "",
        f"The store's WAL after an upload rolled back (cap {_mib(wal['cap'])}, a "
        f"{_mib(wal['upload'])} upload to a session already holding as much): "
        f"{wal['wal']} bytes, database file {_mib(wal['db'])}"
        + (
            f" (before: WAL {before['wal']['wal']} bytes, database file "
            f"{_mib(before['wal']['db'])})."
            if before
            else "."
        ),
        "",
    ]
    return "\n".join(lines)


def _stall_line(stall: dict[str, Any], which: str) -> str:
    return (
        f"- Small requests next to uploads ({which}; uvicorn, {STALL_LABEL}): the slowest took "
        f"{stall['during_max'] * 1000:.0f} ms (p99 {stall['during_p99'] * 1000:.0f} ms, "
        f"{stall['during_count']} requests over {stall['seconds']:.1f} s of uploads; answers "
        f"{sorted(set(stall['statuses']))}), against {stall['baseline_max'] * 1000:.0f} ms "
        f"without uploads (median {stall['baseline_p50'] * 1000:.1f} ms)."
    )


def local_uploads_section() -> str:
    """For benchmarks/run.py."""
    return section(measure_all())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--child-memory")
    parser.add_argument("--child-server")
    parser.add_argument("--json", action="store_true", help="print the measurements as JSON")
    parser.add_argument("--before", help="a --json output of another version, shown alongside")
    args = parser.parse_args()
    if args.child_memory:
        child_memory(args.child_memory)
        return
    if args.child_server:
        child_server(args.child_server)
        return
    now = measure_all()
    if args.json:
        print(json.dumps(now, indent=1))
        return
    before = json.loads(Path(args.before).read_text()) if args.before else None
    print(section(now, before))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
