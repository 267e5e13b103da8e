"""Every benchmark of the project, side by side in one run; writes BENCHMARKS.md.

Sections, in order: the fixed cost per page (benchmarks/page_cost.py: in-process ASGI, the
matrix of visitor kinds and page shapes, CPU time), the WSGI adapter (benchmarks/wsgi.py),
then, appended one by one (``REPLAY_BENCH_BEFORE=<older checkout>`` adds that build's
figures to the peers and real-server sections): the peers side by side (benchmarks/peers.py: New Relic's HTML
insertion, BeautifulSoup, str.replace, GZipMiddleware, over page sizes, heads and chunkings,
first byte and memory), real servers under wrk (benchmarks/servers.py: uvicorn + Starlette,
gunicorn + Flask, 30 KB page and 2 KB JSON), the upload proxy over real sockets (benchmarks/proxy.py), honest
uploads next to 200 slow-loris connections (benchmarks/slowloris.py), local mode under hostile
uploads (benchmarks/local_uploads.py) and what a short page view uploads, in chromium
(benchmarks/page_exit.py). Ratios are the figures to quote; absolute microseconds move with
the machine.

    python benchmarks/run.py [--rounds 15] [--requests 2000]
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import time
from pathlib import Path

from local_uploads import local_uploads_section  # benchmarks/local_uploads.py
from page_cost import HTML_30K, JSON_BODY, page_cost_section  # benchmarks/page_cost.py
from page_exit import page_exit_section  # benchmarks/page_exit.py
from peers import peers_section  # benchmarks/peers.py
from proxy import cpu_model, upload_proxy_section  # benchmarks/proxy.py (this script's folder)
from servers import servers_section  # benchmarks/servers.py
from slowloris import slowloris_section  # benchmarks/slowloris.py
from wsgi import wsgi_section  # benchmarks/wsgi.py


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument(
        "--output", default=str(Path(__file__).resolve().parent.parent / "BENCHMARKS.md")
    )
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    lines = [
        "# Benchmarks",
        "",
        "Written by `make bench` (`benchmarks/run.py`), every section measured side by side in one",
        "run. Absolute times drift on shared machines: quote the ratios and the differences.",
        "",
        f"- Machine: {cpu_model()}, {os.cpu_count()} cores, {platform.machine()}, "
        f"Python {platform.python_version()}, {platform.system()}",
        f"- Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        "",
        page_cost_section(args.rounds, args.requests),
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
    # REPLAY_BENCH_BEFORE=<an older checkout> adds its figures beside this one's in the peers
    # and real-server sections (same rounds, same run).
    before = os.environ.get("REPLAY_BENCH_BEFORE") or None
    for make_section in (
        lambda: peers_section(before=before),
        servers_section,
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
