"""The Django example under a real server in a subprocess (Django can be configured once per
process, and tests/test_django.py configures it for its own settings).

``DjangoServers(log_dir)`` starts ``examples.django_app`` under gunicorn (WSGI, sync mode) or
uvicorn (ASGI, async mode) on 127.0.0.1 with ``REPLAY_*`` environment variables, waits until
it answers, and stops every server it started at ``stop_all()``.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
START_S = 20.0
STOP_S = 10.0
COMMANDS = {
    "gunicorn-wsgi": ["gunicorn", "examples.django_app.wsgi:application", "--threads", "4"],
    "uvicorn-asgi": ["uvicorn", "examples.django_app.asgi:application", "--host", "127.0.0.1"],
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


class DjangoServers:
    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, kind: str = "gunicorn-wsgi", **env: str) -> str:
        """Start the example; ``env`` holds ``REPLAY_*`` (or other) variables, verbatim."""
        port = free_port()
        command = [sys.executable, "-m", *COMMANDS[kind]]
        command += (
            ["--port", str(port)] if kind == "uvicorn-asgi" else ["--bind", f"127.0.0.1:{port}"]
        )
        environment = {
            **{k: v for k, v in os.environ.items() if not k.startswith("REPLAY_")},
            "PYTHONPATH": str(ROOT),
            "DJANGO_SECRET_KEY": "e2e-only-secret-key-0123456789abcdef",
            **env,
        }
        log_path = self.log_dir / f"django-{kind}-{port}.log"
        with log_path.open("wb") as log:  # the child keeps its own handle
            proc = subprocess.Popen(command, cwd=ROOT, env=environment, stdout=log, stderr=log)
        self.procs.append(proc)
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + START_S
        while True:
            assert proc.poll() is None, log_path.read_text()
            try:
                with httpx.Client(trust_env=False, timeout=1.0) as client:
                    if client.get(base + "/api/whoami").status_code == 200:
                        return base
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"{kind} did not start: {log_path.read_text()}")
            time.sleep(0.1)

    def stop_all(self) -> None:
        for proc in self.procs:
            proc.terminate()
            try:
                proc.wait(STOP_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        self.procs.clear()
