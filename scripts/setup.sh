#!/usr/bin/env bash
# Prepare a checkout for development, tests and CI: the virtualenv, the pinned Session Replay
# SDK bundle (SPEC P8) and Debian's chromium for the browser tests.
#
# Idempotent and fast on a second run: each step checks what is already there (a stamp on the
# hash of pyproject.toml, the pinned hashes of the SDK files, the chromium binary).
# Env: PYTHON=/path/to/python3 to choose the interpreter that creates .venv.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

# The SDK pin. Change all four together (and replay_middleware/sdk.py's pin table).
SDK_PACKAGE="@amplitude/session-replay-browser"
SDK_VERSION="1.51.6"
# dist.integrity of the npm tarball, as the registry publishes it.
SDK_TARBALL_INTEGRITY="sha512-iA4KrGjjSG9h0HO5yM4UBhoJZlK0Rnk+iStTNmV3z41wu5GuPMnYb/MMfpHQK7Y/u3pdLQ/Jj1MYs5QlFd8ZYQ=="
# sha256 of package/lib/scripts/session-replay-browser-min.js (the IIFE bundle we serve).
SDK_BUNDLE_SHA256="a006604a150e206796151c57e09bbb7f93dd2bddc99e3b07a24f69bb31373171"

NPM_CACHE_DIR="$ROOT/.cache/npm"
SDK_TARBALL="$NPM_CACHE_DIR/amplitude-session-replay-browser-$SDK_VERSION.tgz"
SDK_UNPACKED="$NPM_CACHE_DIR/session-replay-browser-$SDK_VERSION"
SDK_VENDORED="$ROOT/static/vendor/session-replay-browser-$SDK_VERSION-min.js"
VENV="$ROOT/.venv"
VENV_STAMP="$VENV/.replay-middleware-setup"

say() { printf 'setup: %s\n' "$*"; }
die() { printf 'setup: ERROR: %s\n' "$*" >&2; exit 1; }
is_root() { [ "$(id -u)" = "0" ]; }

# --- (a) Python >= 3.10 and the virtualenv -------------------------------------------------
find_python() {
    local candidate
    for candidate in ${PYTHON:-} python3 python3.13 python3.12 python3.11 python3.10; do
        if command -v "$candidate" >/dev/null 2>&1 \
            && "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
            command -v "$candidate"
            return 0
        fi
    done
    return 1
}

PY="$(find_python)" || die "no Python >= 3.10 found (tried \$PYTHON, python3, python3.1x)"

# A venv whose interpreter no longer runs (e.g. its Python was removed) is rebuilt.
if ! "$VENV/bin/python" -c '' >/dev/null 2>&1; then
    say "creating .venv with $PY ($("$PY" -c 'import platform; print(platform.python_version())'))"
    rm -rf "$VENV"
    "$PY" -m venv "$VENV"
fi

# hatchling force-includes static/ in the wheel; it must exist before any install.
mkdir -p "$ROOT/static/vendor"

PYPROJECT_HASH="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ "$(cat "$VENV_STAMP" 2>/dev/null || true)" != "$PYPROJECT_HASH" ]; then
    say "installing replay-middleware[test] into .venv (pyproject.toml changed)"
    "$VENV/bin/python" -m pip install --disable-pip-version-check --quiet -e '.[test]'
    printf '%s\n' "$PYPROJECT_HASH" >"$VENV_STAMP"
else
    say ".venv up to date"
fi

# --- (b) the SDK bundle from npm, verified ---------------------------------------------------
# sha512 in npm's SRI form ("sha512-<base64>") and hex sha256 of a file.
sri_sha512() { "$PY" - "$1" <<'EOF'
import base64, hashlib, sys
with open(sys.argv[1], "rb") as f:
    print("sha512-" + base64.b64encode(hashlib.sha512(f.read()).digest()).decode())
EOF
}
hex_sha256() { sha256sum "$1" | cut -d' ' -f1; }

if [ -f "$SDK_VENDORED" ] && [ "$(hex_sha256 "$SDK_VENDORED")" = "$SDK_BUNDLE_SHA256" ] \
    && [ -f "$SDK_UNPACKED/package/lib/cjs/sampling.js" ]; then
    say "SDK $SDK_VERSION already vendored"
else
    mkdir -p "$NPM_CACHE_DIR"
    if [ ! -f "$SDK_TARBALL" ] || [ "$(sri_sha512 "$SDK_TARBALL")" != "$SDK_TARBALL_INTEGRITY" ]; then
        command -v npm >/dev/null 2>&1 || {
            if is_root; then
                say "npm missing: installing Debian's nodejs and npm"
                apt-get update -qq
                DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm
            else
                die "npm is required to fetch the SDK; run: sudo apt-get install nodejs npm"
            fi
        }
        say "fetching $SDK_PACKAGE@$SDK_VERSION with npm pack"
        rm -f "$SDK_TARBALL"
        (cd "$NPM_CACHE_DIR" && npm_config_update_notifier=false npm pack --silent \
            "$SDK_PACKAGE@$SDK_VERSION" >/dev/null)
        [ -f "$SDK_TARBALL" ] || die "npm pack did not produce $SDK_TARBALL"
        actual="$(sri_sha512 "$SDK_TARBALL")"
        if [ "$actual" != "$SDK_TARBALL_INTEGRITY" ]; then
            rm -f "$SDK_TARBALL"
            die "integrity mismatch for $SDK_PACKAGE@$SDK_VERSION: got $actual"
        fi
    fi
    say "unpacking into ${SDK_UNPACKED#"$ROOT"/}/package"
    tmp="$(mktemp -d "$NPM_CACHE_DIR/unpack.XXXXXX")"
    trap 'rm -rf "$tmp"' EXIT
    chmod 755 "$tmp"
    tar -xzf "$SDK_TARBALL" -C "$tmp"
    rm -rf "$SDK_UNPACKED"
    mv "$tmp" "$SDK_UNPACKED"
    bundle="$SDK_UNPACKED/package/lib/scripts/session-replay-browser-min.js"
    [ "$(hex_sha256 "$bundle")" = "$SDK_BUNDLE_SHA256" ] \
        || die "sha256 mismatch for $bundle (expected $SDK_BUNDLE_SHA256)"
    cp "$bundle" "$SDK_VENDORED.tmp"
    mv "$SDK_VENDORED.tmp" "$SDK_VENDORED"
    say "vendored ${SDK_VENDORED#"$ROOT"/}"
fi

# --- (c) Debian's chromium for the browser tests (Playwright drives it; no `playwright install`)
if [ -x /usr/bin/chromium ]; then
    say "chromium present"
elif is_root; then
    say "installing Debian's chromium (apt-get)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium
    [ -x /usr/bin/chromium ] || die "apt-get install chromium did not provide /usr/bin/chromium"
else
    say "WARNING: /usr/bin/chromium is missing and this is not root; the browser tests will"
    say "         fail until you run: sudo apt-get install chromium"
fi

say "done"
