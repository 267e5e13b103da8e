"""Per-request overhead of ReplayWSGIMiddleware against a bare WSGI app, side by side.

In-process calls (no server): the app is called with a hand-built environ, its iterable is
consumed and closed, as a WSGI server would. Rounds of all variants are interleaved; medians
of rounds are reported. ``python benchmarks/wsgi.py`` prints the section on its own.
"""

from __future__ import annotations

import gc
import io
import logging
import statistics
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any

from replay_middleware import ReplayConfig, ReplayWSGIMiddleware

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def make_wsgi_app(body: bytes, content_type: str) -> WSGIApp:
    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        start_response(
            "200 OK", [("Content-Type", content_type), ("Content-Length", str(len(body)))]
        )
        return [body]

    return app


def environ(path: str) -> dict[str, Any]:
    return {
        "REQUEST_METHOD": "GET",
        "SCRIPT_NAME": "",
        "PATH_INFO": path,
        "QUERY_STRING": "",
        "SERVER_NAME": "example.test",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "HTTP_HOST": "example.test",
        "HTTP_ACCEPT": "text/html,*/*",
        "HTTP_USER_AGENT": "bench",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(b""),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }


def _start_response(
    status: str, headers: list[tuple[str, str]], exc_info: Any = None
) -> Callable[[bytes], None]:
    return lambda data: None


def per_request_us(app: WSGIApp, path: str, n: int) -> float:
    base = environ(path)
    start = time.thread_time()  # CPU time: other processes' slices are not ours
    for _ in range(n):
        result = app(dict(base), _start_response)
        for _chunk in result:
            pass
        close = getattr(result, "close", None)
        if close is not None:
            close()
    return (time.thread_time() - start) / n * 1e6


def measure(rounds: int, n: int, json_body: bytes, html_body: bytes) -> dict[str, float]:
    config = ReplayConfig(
        sample_rate=1.0, debug_header=False, secret_key="bench-secret-key-0123456789abcdef"
    )
    json_app = make_wsgi_app(json_body, "application/json")
    html_app = make_wsgi_app(html_body, "text/html; charset=utf-8")
    variants: dict[str, tuple[WSGIApp, str]] = {
        "wsgi_json_bare": (json_app, "/api"),
        "wsgi_json_replay": (ReplayWSGIMiddleware(json_app, config=config), "/api"),
        "wsgi_html_bare": (html_app, "/"),
        "wsgi_html_replay_injected": (ReplayWSGIMiddleware(html_app, config=config), "/"),
    }
    samples: dict[str, list[float]] = {k: [] for k in variants}
    for app, path in variants.values():
        per_request_us(app, path, max(1, n // 10))
    gc.disable()
    try:
        for _ in range(rounds):
            for name, (app, path) in variants.items():
                samples[name].append(per_request_us(app, path, n))
    finally:
        gc.enable()
    return {k: statistics.median(v) for k, v in samples.items()}


def wsgi_section(rounds: int, n: int, json_body: bytes, html_body: bytes) -> str:
    r = measure(rounds, n, json_body, html_body)
    json_over = r["wsgi_json_replay"] - r["wsgi_json_bare"]
    html_over = r["wsgi_html_replay_injected"] - r["wsgi_html_bare"]
    lines = [
        "## WSGI adapter",
        "",
        f"In-process WSGI calls, iterable consumed and closed; {rounds} interleaved rounds of {n} "
        "requests; medians of rounds; CPU time of the calling thread. A new visitor each time.",
        "",
        "| Variant | CPU µs / request | overhead vs bare (µs) |",
        "|---|---:|---:|",
    ]
    for name, bare in (
        ("wsgi_json_bare", "wsgi_json_bare"),
        ("wsgi_json_replay", "wsgi_json_bare"),
        ("wsgi_html_bare", "wsgi_html_bare"),
        ("wsgi_html_replay_injected", "wsgi_html_bare"),
    ):
        lines.append(f"| {name} | {r[name]:.2f} | {r[name] - r[bare]:.2f} |")
    lines += [
        "",
        f"- JSON response ({len(json_body)} B): ReplayWSGIMiddleware adds {json_over:.2f} µs "
        f"({r['wsgi_json_replay'] / r['wsgi_json_bare']:.2f}× the bare app).",
        f"- 30 KB HTML page ({len(html_body)} B), sampled and injected: adds {html_over:.2f} µs "
        f"({r['wsgi_html_replay_injected'] / r['wsgi_html_bare']:.2f}× the bare app).",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    logging.disable(logging.WARNING)
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent))
    from page_cost import HTML_30K, JSON_BODY

    print(wsgi_section(7, 1000, JSON_BODY, HTML_30K))
