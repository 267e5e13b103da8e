"""The wheel carries the package, its templates and static/; installed alone it serves the loader.

The wheel is built without network (hatchling from the test venv, no build isolation) and
installed with ``--no-deps`` into a fresh venv; the runtime dependencies come from the test
venv through a ``.pth`` line, so the only copy of replay_middleware there is the wheel's.
"""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

SCRIPT = r"""
import asyncio, sys, httpx, replay_middleware
from replay_middleware import ReplayConfig, ReplayMiddleware
from replay_middleware.sdk import static_dir
assert replay_middleware.__file__.startswith(sys.prefix), replay_middleware.__file__
assert str(static_dir()).startswith(sys.prefix), static_dir()

async def app(scope, receive, send):
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/html")]})
    await send({"type": "http.response.body", "body": b"<!doctype html><html><head></head><body></body></html>"})

async def main():
    mw = ReplayMiddleware(app, config=ReplayConfig(sample_rate=1))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=mw), base_url="http://t") as c:
        page = await c.get("/")
        assert mw.engine.loader_path.encode() in page.content, page.content
        loader = await c.get(mw.engine.loader_path)
        assert loader.status_code == 200 and b"replayMiddleware" in loader.content
        sdk = await c.get("/_replay/sdk/1.51.6.js")
        print("sdk", sdk.status_code, len(sdk.content))

asyncio.run(main())
"""


def test_wheel_installs_alone_and_serves_the_loader(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-build-isolation",
            "--no-deps",
            "-q",
            "-w",
            str(dist),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr
    [wheel] = dist.glob("replay_middleware-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "replay_middleware/templates/snippet.html" in names
    assert "replay_middleware/static/loader.js" in names
    assert "replay_middleware/py.typed" in names
    assert not any(n.startswith(("tests/", "examples/")) for n in names)

    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    (Path(site) / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "--no-index",
            "-q",
            "--target",
            site,
            str(wheel),
        ],
        check=True,
        timeout=300,
    )
    out = subprocess.run(
        [str(python), "-c", SCRIPT], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr
    # make setup vendors the SDK into static/, so the wheel serves it without any network.
    assert out.stdout.strip() == "sdk 200 472630"
