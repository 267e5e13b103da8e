"""The Django 6 built-in CSP tests (tests/django6/), run in .venv-django6.

Django 6 (``django.middleware.csp.ContentSecurityPolicyMiddleware``, ``SECURE_CSP``) needs
Python >= 3.12, and .venv may be older, so scripts/setup.sh builds a second venv with Django 6
and this test runs the suite there in a subprocess. It skips only when this machine has no
Python >= 3.12 (the same search as setup.sh); a missing venv otherwise is a failure.
"""

from __future__ import annotations

import glob
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
VENV_PYTHON = ROOT / ".venv-django6" / "bin" / "python"
SUITE = "tests/django6/csp_builtin.py"
TIMEOUT = 300


def find_python312() -> str | None:
    """A Python >= 3.12, searched as scripts/setup.sh's ``find_python312`` does."""
    candidates = [shutil.which("python3.13"), shutil.which("python3.12")]
    candidates += sorted(glob.glob("/root/.pyenv/versions/3.1[2-9]*/bin/python3.1*"))
    for candidate in candidates:
        if candidate is None or candidate.endswith("-config"):
            continue
        try:
            result = subprocess.run(
                [candidate, "-c", "import sys; sys.exit(sys.version_info < (3, 12))"],
                capture_output=True,
                timeout=30,
            )
        except (OSError, subprocess.TimeoutExpired):
            continue
        if result.returncode == 0:  # a pyenv shim for a version not selected fails here
            return candidate
    return None


def test_django6_builtin_csp_suite() -> None:
    if not VENV_PYTHON.exists():
        python = find_python312()
        if python is None:
            pytest.skip("no Python >= 3.12 on this machine (Django 6 needs it)")
        pytest.fail(f".venv-django6 is missing although {python} exists: run make setup")
    try:
        result = subprocess.run(
            [str(VENV_PYTHON), "-m", "pytest", SUITE, "-q", "-p", "no:cacheprovider"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"the Django 6 suite did not finish in {TIMEOUT}s:\n{exc.stdout or ''}")
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"Django 6 suite failed (exit {result.returncode}):\n{output}"
    assert " passed" in output and "skipped" not in output, output
