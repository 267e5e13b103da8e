"""The wheel carries the package, its templates and static/ with the pinned npm files; installed
alone it serves the loader and the SDK.

Wheels are built without network: hatchling from the test venv, no build isolation, and a
``PATH`` without npm, so hatch_build.py can only use files already there or the tarballs
``make setup`` left in ``.cache/npm``. The install test puts the wheel with ``--no-deps`` into
a fresh venv; the runtime dependencies come from the test venv through a ``.pth`` line, so
the only copy of replay_middleware there is the wheel's.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

from hatch_build import ALLOW_ENV, VendorError, read_pins
from replay_middleware.inspector import PLAYER_FILES
from replay_middleware.sdk import SDK_PINS, SDK_VERSION, static_dir, vendor_path

from .test_sdist import build_sdist, unpack

ROOT = Path(__file__).resolve().parent.parent
PINS = read_pins(ROOT / "scripts" / "setup.sh")
VENDORED = {
    f"replay_middleware/static/{file.dest}": file.sha256
    for package in PINS
    for file in package.files
}
REFUSAL = "cannot build a replay-middleware wheel without its pinned npm files"


@pytest.fixture
def no_npm_env(tmp_path: Path) -> dict[str, str]:
    """The environment of a build that cannot fetch: an empty PATH, no opt-out."""
    empty = tmp_path / "bin"
    empty.mkdir()
    env = {k: v for k, v in os.environ.items() if k != ALLOW_ENV}
    env["PATH"] = str(empty)
    return env


@pytest.fixture(scope="module")
def sdist_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The unpacked sdist: sources only, no static/vendor, no .cache."""
    sdist = build_sdist(ROOT, tmp_path_factory.mktemp("sdist"))
    return unpack(sdist, tmp_path_factory.mktemp("unpacked"))


@pytest.fixture
def tree(sdist_tree: Path, tmp_path: Path) -> Path:
    """A fresh copy of the unpacked sdist, for one test to build from."""
    return Path(shutil.copytree(sdist_tree, tmp_path / "src"))


def hatchling_wheel(
    source: Path, env: dict[str, str], *, target: str = "wheel", hooks_only: bool = False
) -> subprocess.CompletedProcess[str]:
    """Run hatchling's wheel build in ``source`` into ``source/dist``."""
    options = ["--hooks-only"] if hooks_only else []
    return subprocess.run(
        [sys.executable, "-m", "hatchling", "build", "-t", target, "-d", "dist", *options],
        cwd=source,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def fetched_tarballs() -> dict[str, Path]:
    """The tarballs ``make setup`` fetched into ``.cache/npm``, by npm spec."""
    tarballs = {package.spec: ROOT / ".cache" / "npm" / package.tarball for package in PINS}
    for tarball in tarballs.values():
        if not tarball.is_file():
            pytest.fail(f"{tarball} is missing: run `make setup`", pytrace=False)
    return tarballs


def cache_tarballs(tree: Path) -> None:
    """Copy the tarballs ``make setup`` fetched into ``tree/.cache/npm``."""
    cache = tree / ".cache" / "npm"
    cache.mkdir(parents=True)
    for tarball in fetched_tarballs().values():
        shutil.copyfile(tarball, cache / tarball.name)


def vendored_hashes(wheel: Path) -> dict[str, str]:
    with zipfile.ZipFile(wheel) as archive:
        return {
            name: hashlib.sha256(archive.read(name)).hexdigest()
            for name in archive.namelist()
            if name.startswith("replay_middleware/static/vendor/")
        }


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


def test_wheel_installs_alone_and_serves_the_loader(
    tmp_path: Path, no_npm_env: dict[str, str]
) -> None:
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
        env=no_npm_env,
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
    assert not any(n.startswith(("tests/", "examples/", "scripts/", "hatch_build")) for n in names)
    assert vendored_hashes(wheel) == VENDORED

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


# --- the build hook (hatch_build.py) ------------------------------------------------------------


def test_wheel_from_the_sdist_takes_the_npm_files_from_the_cached_tarballs(
    tree: Path, no_npm_env: dict[str, str]
) -> None:
    cache_tarballs(tree)

    built = hatchling_wheel(tree, no_npm_env)

    assert built.returncode == 0, built.stderr
    [wheel] = (tree / "dist").glob("replay_middleware-*.whl")
    assert vendored_hashes(wheel) == VENDORED


# An `npm` on PATH that stands for the registry: it packs the tarballs `make setup` cached
# (or bad bytes, or fails as npm does offline) and logs its arguments.
FAKE_NPM = """#!{python}
import pathlib, shutil, sys
with open({log!r}, "a") as log:
    print(*sys.argv[1:], file=log)
mode, tarball = {mode!r}, pathlib.Path({tarballs!r}[sys.argv[-1]])
if mode == "offline":
    sys.exit("npm error code ENOTFOUND\\nnpm error network request failed")
if mode == "registry":
    shutil.copyfile(tarball, tarball.name)
else:
    pathlib.Path(tarball.name).write_bytes(b"not the tarball")
"""


def fake_npm(env: dict[str, str], mode: str, log: Path) -> None:
    script = Path(env["PATH"]) / "npm"
    script.write_text(
        FAKE_NPM.format(
            python=sys.executable,
            log=str(log),
            mode=mode,
            tarballs={spec: str(path) for spec, path in fetched_tarballs().items()},
        )
    )
    script.chmod(0o755)


def test_wheel_from_the_sdist_fetches_the_npm_files_with_npm_pack(
    tree: Path, no_npm_env: dict[str, str], tmp_path: Path
) -> None:
    fake_npm(no_npm_env, "registry", tmp_path / "npm.log")

    built = hatchling_wheel(tree, no_npm_env)

    assert built.returncode == 0, built.stderr
    [wheel] = (tree / "dist").glob("replay_middleware-*.whl")
    assert vendored_hashes(wheel) == VENDORED
    assert (tmp_path / "npm.log").read_text().splitlines() == [
        f"pack --silent {package.spec}" for package in PINS
    ]
    # Kept where setup.sh looks first, so it need not fetch them again.
    assert sorted(p.name for p in (tree / ".cache" / "npm").iterdir()) == sorted(
        package.tarball for package in PINS
    )


@pytest.mark.parametrize(
    ("mode", "reason"),
    [
        pytest.param(
            "offline",
            f"`npm pack {PINS[0].spec}` failed: npm error code ENOTFOUND",
            id="offline",
        ),
        pytest.param("tampered", f"{PINS[0].spec} from npm has integrity sha512-", id="tampered"),
    ],
)
def test_wheel_build_fails_when_npm_cannot_deliver(
    tree: Path, no_npm_env: dict[str, str], tmp_path: Path, mode: str, reason: str
) -> None:
    fake_npm(no_npm_env, mode, tmp_path / "npm.log")

    built = hatchling_wheel(tree, no_npm_env)

    assert built.returncode != 0
    assert REFUSAL in built.stderr
    assert reason in built.stderr
    assert list(tree.glob(".cache/npm/*.tgz")) == []


def test_wheel_build_without_the_npm_files_fails_saying_what_and_how_to_fix(
    tree: Path, no_npm_env: dict[str, str]
) -> None:
    built = hatchling_wheel(tree, no_npm_env)

    assert built.returncode != 0
    assert REFUSAL in built.stderr
    sdk_file = f"static/vendor/session-replay-browser-{SDK_VERSION}-min.js"
    assert (
        f"{sdk_file}: missing; @amplitude/session-replay-browser@{SDK_VERSION}: npm is not on PATH"
        in built.stderr
    )
    assert "rrweb-player" in built.stderr
    assert "run `make setup` (or `bash scripts/setup.sh`)" in built.stderr
    assert f"set {ALLOW_ENV}=1 to build a CDN-only wheel" in built.stderr
    assert list(tree.glob("dist/*.whl")) == []


@pytest.mark.parametrize(
    ("tamper", "state"),
    [
        pytest.param("vendored", "does not match its pin", id="vendored-file"),
        pytest.param("tarball", "missing", id="cached-tarball"),
    ],
)
def test_wheel_build_refuses_files_that_fail_their_pins(
    tree: Path, no_npm_env: dict[str, str], tamper: str, state: str
) -> None:
    cache_tarballs(tree)
    sdk = PINS[0]
    if tamper == "vendored":
        (tree / "static" / "vendor").mkdir()
        (tree / "static" / sdk.files[0].dest).write_text("/* not the SDK */")
        (tree / ".cache" / "npm" / sdk.tarball).unlink()
    else:
        (tree / ".cache" / "npm" / sdk.tarball).write_bytes(b"not a tarball")

    built = hatchling_wheel(tree, no_npm_env)

    assert built.returncode != 0
    assert REFUSAL in built.stderr
    assert f"static/{sdk.files[0].dest}: {state}; {sdk.spec}:" in built.stderr


def test_cdn_only_wheel_when_asked_for(tree: Path, no_npm_env: dict[str, str]) -> None:
    built = hatchling_wheel(tree, {**no_npm_env, ALLOW_ENV: "1"})

    assert built.returncode == 0, built.stderr
    assert f"{ALLOW_ENV} is set: building a wheel without" in built.stderr + built.stdout
    [wheel] = (tree / "dist").glob("replay_middleware-*.whl")
    assert vendored_hashes(wheel) == {}


def test_opt_out_never_packs_a_file_that_fails_its_pin(
    tree: Path, no_npm_env: dict[str, str]
) -> None:
    (tree / "static" / "vendor").mkdir()
    (tree / "static" / PINS[0].files[0].dest).write_text("/* not the SDK */")

    built = hatchling_wheel(tree, {**no_npm_env, ALLOW_ENV: "1"})

    assert built.returncode != 0
    assert "does not match its pin" in built.stderr


def test_editable_build_needs_no_npm_files(tree: Path, no_npm_env: dict[str, str]) -> None:
    # scripts/setup.sh installs the checkout editable before it fetches the npm files.
    built = hatchling_wheel(tree, no_npm_env, target="wheel:editable", hooks_only=True)

    assert built.returncode == 0, built.stderr
    assert not (tree / "static" / "vendor").exists()


def test_the_hook_reads_the_pins_the_package_serves() -> None:
    sdk, player = PINS

    assert (sdk.name, sdk.version) == ("@amplitude/session-replay-browser", SDK_VERSION)
    [bundle] = sdk.files
    assert static_dir() / bundle.dest == vendor_path(SDK_VERSION)
    assert bundle.sha256 == SDK_PINS[SDK_VERSION].sha256
    assert [(f.dest, f.sha256) for f in player.files] == [(f.name, f.sha256) for f in PLAYER_FILES]


def test_the_hook_names_a_missing_pin(tmp_path: Path) -> None:
    script = tmp_path / "setup.sh"
    text = (ROOT / "scripts" / "setup.sh").read_text()
    script.write_text(text.replace('SDK_BUNDLE_SHA256="', 'SDK_BUNDLE_SHA256="$'))

    with pytest.raises(VendorError, match=re.escape('has no SDK_BUNDLE_SHA256="..." line')):
        read_pins(script)
