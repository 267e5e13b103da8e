"""The sdist holds the sources and nothing else: no venvs, caches or fetched npm files.

Built with ``python -m build --sdist --no-isolation`` (hatchling from the test venv, no
network). The include patterns are anchored at the root, so what lies around a checkout after
``make setup`` (``.venv-django6/``, ``.cache/npm/``, ``static/vendor/``) stays out even when no
``.gitignore`` says so.
"""

from __future__ import annotations

import subprocess
import sys
import tarfile
from pathlib import Path, PurePosixPath

import pytest

ROOT = Path(__file__).resolve().parent.parent

TOP_LEVEL = {
    ".gitignore",  # hatchling always packs it
    "CHANGELOG.md",
    "PKG-INFO",
    "README.md",
    "hatch_build.py",  # the wheel's build hook: a wheel built from the sdist runs it
    "pyproject.toml",
    "replay_middleware",
    "scripts",
    "static",
    "tests",
}
JUNK = {
    ".cache",
    ".git",
    ".hypothesis",
    ".mypy_cache",
    ".pytest_cache",
    ".ruff_cache",
    ".venv",
    ".venv-django6",
    "__pycache__",
    "node_modules",
    "vendor",
}


def build_sdist(source: Path, out: Path) -> Path:
    """Build the sdist of the project at ``source`` into ``out``; the archive's path."""
    built = subprocess.run(
        [sys.executable, "-m", "build", "--sdist", "--no-isolation", "-o", str(out), str(source)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr
    [sdist] = out.glob("replay_middleware-*.tar.gz")
    return sdist


def members(sdist: Path) -> set[str]:
    """The archive's file paths, without the ``replay_middleware-<version>/`` folder."""
    with tarfile.open(sdist) as archive:
        return {
            str(PurePosixPath(*PurePosixPath(m.name).parts[1:]))
            for m in archive.getmembers()
            if m.isfile()
        }


def unpack(sdist: Path, dest: Path) -> Path:
    """Unpack ``sdist`` into ``dest``; the project folder inside it."""
    with tarfile.open(sdist) as archive:
        archive.extractall(dest, filter="data")
    [project] = dest.iterdir()
    return project


@pytest.fixture(scope="module")
def sdist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_sdist(ROOT, tmp_path_factory.mktemp("sdist"))


def test_sdist_top_level_is_the_sources(sdist: Path) -> None:
    assert {name.split("/", 1)[0] for name in members(sdist)} == TOP_LEVEL


def test_sdist_holds_no_venv_cache_or_vendored_file(sdist: Path) -> None:
    names = members(sdist)

    assert [n for n in names if JUNK & set(n.split("/"))] == []
    assert [n for n in names if n.endswith(".pyc")] == []


def test_sdist_holds_the_package_the_browser_files_and_the_build_hook(sdist: Path) -> None:
    names = members(sdist)
    package = {
        path.relative_to(ROOT).as_posix()
        for path in (ROOT / "replay_middleware").rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    }

    assert {n for n in names if n.startswith("replay_middleware/")} == package
    assert {n for n in names if n.startswith(("static/", "scripts/"))} == {
        "scripts/setup.sh",
        "static/inspector.css",
        "static/inspector.js",
        "static/loader.js",
    }
    assert {"replay_middleware/py.typed", "tests/test_sdist.py", "hatch_build.py"} <= names


def test_sdist_patterns_are_anchored_without_gitignore(sdist: Path, tmp_path: Path) -> None:
    # A tree without .gitignore (an export, a copy) and with what `make setup` and the test
    # suite leave around: unanchored "static" or "tests" patterns matched folders in there.
    tree = unpack(sdist, tmp_path / "unpacked")
    (tree / ".gitignore").unlink()
    (tree / "PKG-INFO").unlink()
    for junk in (
        ".venv-django6/lib/python3.12/site-packages/django/contrib/admin/static/admin/js/core.js",
        ".venv-django6/lib/python3.12/site-packages/django/test/__init__.py",
        ".cache/npm/session-replay-browser-1.51.6/package/lib/scripts/tests/x.js",
        "node_modules/rrweb-player/static/x.js",
        "static/vendor/session-replay-browser-1.51.6-min.js",
        "tests/__pycache__/test_sdist.cpython-311.pyc",
        "tests/.hypothesis/examples/x",
    ):
        (tree / junk).parent.mkdir(parents=True, exist_ok=True)
        (tree / junk).write_text("junk\n")

    rebuilt = build_sdist(tree, tmp_path / "out")

    assert members(rebuilt) == members(sdist) - {".gitignore"}
