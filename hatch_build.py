"""Wheel build hook: the wheel carries the verified npm files, or it is not built.

The Session Replay SDK bundle and the inspector's rrweb-player are fetched from npm by
``scripts/setup.sh`` into ``static/vendor/`` and never committed. A wheel built without them
would still inject the recorder while ``/_replay/sdk/<version>.js`` answers 503 whenever
Amplitude's CDN is out of reach, so :class:`VendoredFilesHook` makes sure they are there
before hatchling collects ``static/``:

1. files already in ``static/vendor/`` with their pinned sha256 are used as they are;
2. otherwise they are taken from the npm tarball in ``.cache/npm/`` (where setup.sh keeps
   it) if its sha512 matches the registry's pinned integrity, or else from ``npm pack``
   into that cache (the same command and checks as setup.sh), then hash-checked and written;
3. if that fails (no npm, offline, a hash mismatch) the build stops with a message saying
   what is missing and how to fix it. ``REPLAY_MIDDLEWARE_ALLOW_NO_SDK=1`` builds the wheel
   without them on purpose: the middleware then fetches the SDK once from Amplitude's CDN at
   run time and the inspector says the player is not installed.

Editable installs (``pip install -e .``, which setup.sh runs before fetching) are left
alone: they serve the checkout's ``static/`` directly. The pins are read from
``scripts/setup.sh``, which setup.sh's own fetch uses too; the package's run-time copies of the
sha256 (replay_middleware/sdk.py, inspector.py) are checked against them by
tests/test_wheel.py and tests/test_inspector.py.

Standard library and hatchling only: pip runs this in an isolated environment holding just
hatchling.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

from hatchling.builders.config import BuilderConfig
from hatchling.builders.hooks.plugin.interface import BuildHookInterface

#: Set to 1 to build a wheel without the npm files on purpose (a CDN-only wheel).
ALLOW_ENV = "REPLAY_MIDDLEWARE_ALLOW_NO_SDK"

SETUP_SCRIPT = "scripts/setup.sh"
CACHE_DIR = ".cache/npm"  # setup.sh's NPM_CACHE_DIR
NPM_TIMEOUT = 300.0  # seconds for one `npm pack`, retries included

# A literal assignment in setup.sh: NAME="value" (no expansion inside), maybe a comment after.
_ASSIGNMENT = re.compile(r'^([A-Z][A-Z0-9_]*)="([^"$`\\]*)"[ \t]*(?:#.*)?$', re.MULTILINE)


class VendorFile(NamedTuple):
    """One file taken from an npm tarball into ``static/``."""

    member: str  # its path inside the tarball
    dest: str  # its path under static/, as the package looks it up
    sha256: str  # hex, pinned


class NpmPackage(NamedTuple):
    """A pinned npm release and the files the wheel takes from it."""

    name: str
    version: str
    integrity: str  # the registry's dist.integrity, "sha512-<base64>"
    files: tuple[VendorFile, ...]

    @property
    def spec(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def tarball(self) -> str:
        """The file name ``npm pack`` gives it (``@scope/name`` becomes ``scope-name``)."""
        return f"{self.name.removeprefix('@').replace('/', '-')}-{self.version}.tgz"


class VendorError(Exception):
    """A pinned npm file could not be obtained or did not verify."""


def read_pins(setup_script: Path) -> tuple[NpmPackage, ...]:
    """The npm packages and files pinned by ``scripts/setup.sh``.

    Destination names follow replay_middleware/sdk.py's ``vendor_path`` and inspector.py's
    ``PLAYER_FILES``. Raises ``VendorError`` if the script or one of its pins is missing.
    """
    try:
        text = setup_script.read_text(encoding="utf-8")
    except OSError as exc:
        raise VendorError(f"cannot read the pins in {setup_script}: {exc}") from None
    pins = {m[1]: m[2] for m in _ASSIGNMENT.finditer(text)}

    def pin(name: str) -> str:
        try:
            return pins[name]
        except KeyError:
            raise VendorError(f'{setup_script} has no {name}="..." line') from None

    sdk_version = pin("SDK_VERSION")
    player_version = pin("PLAYER_VERSION")
    return (
        NpmPackage(
            pin("SDK_PACKAGE"),
            sdk_version,
            pin("SDK_TARBALL_INTEGRITY"),
            (
                VendorFile(
                    pin("SDK_BUNDLE_MEMBER"),
                    f"vendor/session-replay-browser-{sdk_version}-min.js",
                    pin("SDK_BUNDLE_SHA256"),
                ),
            ),
        ),
        NpmPackage(
            pin("PLAYER_PACKAGE"),
            player_version,
            pin("PLAYER_TARBALL_INTEGRITY"),
            (
                VendorFile(
                    pin("PLAYER_JS_MEMBER"),
                    f"vendor/rrweb-player-{player_version}.min.js",
                    pin("PLAYER_JS_SHA256"),
                ),
                VendorFile(
                    pin("PLAYER_CSS_MEMBER"),
                    f"vendor/rrweb-player-{player_version}.min.css",
                    pin("PLAYER_CSS_SHA256"),
                ),
            ),
        ),
    )


def _sri_sha512(data: bytes) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode("ascii")


def _has_sha256(path: Path, sha256: str) -> bool:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest() == sha256
    except OSError:
        return False


def _write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; the wheel records the mode
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _npm_pack(package: NpmPackage, cache: Path, log: Callable[[str], None]) -> bytes:
    """``npm pack`` the release into ``cache``, as setup.sh does; the tarball's bytes."""
    npm = shutil.which("npm")
    if npm is None:
        raise VendorError("npm is not on PATH, and no verified tarball is in .cache/npm")
    log(f"fetching {package.spec} with npm pack")
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache, prefix="pack.") as tmp:
        try:
            subprocess.run(
                [npm, "pack", "--silent", package.spec],
                cwd=tmp,
                env={**os.environ, "npm_config_update_notifier": "false"},
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=NPM_TIMEOUT,
                check=True,
            )
        except subprocess.CalledProcessError as exc:
            detail = " ".join((exc.stderr or "").split()[-40:]) or f"exit status {exc.returncode}"
            raise VendorError(f"`npm pack {package.spec}` failed: {detail}") from None
        except subprocess.TimeoutExpired:
            raise VendorError(
                f"`npm pack {package.spec}` took more than {NPM_TIMEOUT:.0f} s"
            ) from None
        produced = Path(tmp) / package.tarball
        try:
            data = produced.read_bytes()
        except OSError:
            raise VendorError(
                f"`npm pack {package.spec}` did not produce {package.tarball}"
            ) from None
        actual = _sri_sha512(data)
        if actual != package.integrity:
            raise VendorError(
                f"{package.spec} from npm has integrity {actual}, not the pinned "
                f"{package.integrity}"
            )
        os.replace(produced, cache / package.tarball)
    return data


def _tarball(package: NpmPackage, cache: Path, log: Callable[[str], None]) -> bytes:
    """The verified tarball of ``package``: from the cache, else fetched with npm."""
    try:
        data = (cache / package.tarball).read_bytes()
    except OSError:
        pass
    else:
        if _sri_sha512(data) == package.integrity:
            return data
        log(f"ignoring {CACHE_DIR}/{package.tarball}: not the pinned integrity")
    return _npm_pack(package, cache, log)


def _extract(package: NpmPackage, tarball: bytes, files: list[VendorFile], static: Path) -> None:
    with tarfile.open(fileobj=io.BytesIO(tarball), mode="r:gz") as archive:
        for file in files:
            try:
                member = archive.extractfile(file.member)
            except KeyError:
                member = None
            if member is None:
                raise VendorError(f"{package.spec} has no file {file.member}")
            data = member.read()
            actual = hashlib.sha256(data).hexdigest()
            if actual != file.sha256:
                raise VendorError(
                    f"{package.spec}'s {file.member} has sha256 {actual}, not the pinned "
                    f"{file.sha256}"
                )
            _write_atomically(static / file.dest, data)


def ensure_vendored(root: Path, *, log: Callable[[str], None] = lambda _: None) -> dict[str, str]:
    """Make the pinned npm files present and verified under ``root/static``.

    Returns what is still missing after trying: ``{path under root: reason}``; empty when all
    files are in place. Raises ``VendorError`` if the pins themselves cannot be read.
    """
    static = root / "static"
    cache = root / CACHE_DIR
    missing: dict[str, str] = {}
    for package in read_pins(root / SETUP_SCRIPT):
        todo = [f for f in package.files if not _has_sha256(static / f.dest, f.sha256)]
        if not todo:
            continue
        try:
            _extract(package, _tarball(package, cache, log), todo, static)
        except VendorError as exc:
            # Recheck each file: an extraction that failed halfway may have written some.
            for file in todo:
                if not _has_sha256(static / file.dest, file.sha256):
                    missing[f"static/{file.dest}"] = f"{package.spec}: {exc}"
        else:
            log(f"vendored {', '.join(f'static/{f.dest}' for f in todo)} from {package.spec}")
    return missing


def failure_message(missing: Mapping[str, str], root: Path) -> str:
    """What the build says when files are missing: which, why, and the ways out."""
    lines = ["cannot build a replay-middleware wheel without its pinned npm files:"]
    for path, reason in missing.items():
        state = "does not match its pin" if (root / path).exists() else "missing"
        lines.append(f"  {path}: {state}; {reason}")
    lines += [
        "They are fetched from npm, never committed. A wheel without them would inject the",
        "recorder while /_replay/sdk/<version>.js answers 503 whenever Amplitude's CDN is out",
        "of reach. To fix it, either:",
        "  - run `make setup` (or `bash scripts/setup.sh`) in the checkout, then build again;",
        "  - or put npm on PATH, with access to the npm registry, and build again;",
        f"  - or set {ALLOW_ENV}=1 to build a CDN-only wheel on purpose: the",
        "    SDK then comes from Amplitude's CDN at run time, and the inspector has no player.",
    ]
    if any((root / path).exists() for path in missing):
        lines.append(
            f"A file that does not match its pin is never packed, even with {ALLOW_ENV}=1."
        )
    return "\n".join(lines)


class VendoredFilesHook(BuildHookInterface[BuilderConfig]):
    """Before a standard wheel is built, :func:`ensure_vendored` or stop the build."""

    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        if version == "editable":
            return  # served from the checkout's static/, which setup.sh fills afterwards
        root = Path(self.root)
        missing = ensure_vendored(root, log=self.app.display_info)
        if not missing:
            return
        # A file that is there but fails its pin would still be packed: never allowed.
        if os.environ.get(ALLOW_ENV) == "1" and not any((root / path).exists() for path in missing):
            self.app.display_warning(
                f"{ALLOW_ENV} is set: building a wheel without "
                f"{', '.join(missing)}; the SDK will come from Amplitude's CDN at run time"
            )
            return
        raise VendorError(failure_message(missing, root))
