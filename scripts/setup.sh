#!/usr/bin/env bash
# Prepare a checkout for development, tests and CI: the virtualenv, the pinned Session Replay
# SDK bundle (SPEC P8), the pinned rrweb-player for the local inspector (SPEC L2) and Debian's
# chromium for the browser tests.
#
# Idempotent and fast on a second run: each step checks what is already there (a stamp on the
# hash of pyproject.toml, the pinned hashes of the SDK files, the chromium binary).
# Env: PYTHON=/path/to/python3 to choose the interpreter that creates .venv.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

# The SDK pin. Change these together (and replay_middleware/sdk.py's pin table). hatch_build.py,
# the wheel's build hook, reads the NAME="value" lines below: keep them literal.
SDK_PACKAGE="@amplitude/session-replay-browser"
SDK_VERSION="1.51.6"
# dist.integrity of the npm tarball, as the registry publishes it.
SDK_TARBALL_INTEGRITY="sha512-iA4KrGjjSG9h0HO5yM4UBhoJZlK0Rnk+iStTNmV3z41wu5GuPMnYb/MMfpHQK7Y/u3pdLQ/Jj1MYs5QlFd8ZYQ=="
# The IIFE bundle we serve, in the tarball, and its sha256.
SDK_BUNDLE_MEMBER="package/lib/scripts/session-replay-browser-min.js"
SDK_BUNDLE_SHA256="a006604a150e206796151c57e09bbb7f93dd2bddc99e3b07a24f69bb31373171"

# The inspector's replay player (SPEC L2). Change these together (and
# replay_middleware/inspector.py's PLAYER_VERSION and PLAYER_FILES).
PLAYER_PACKAGE="rrweb-player"
PLAYER_VERSION="2.0.0-alpha.20"
PLAYER_TARBALL_INTEGRITY="sha512-3ZCv1ksUxuIOn3Vn/eWrwWs9Xy+4KVjISD+q26ZLfisZ3hZ0CPgYG3iC22pmmycIeMS2svOfvf7gPh7jExwpUA=="
# The player's bundle and stylesheet, in the tarball, and their sha256.
PLAYER_JS_MEMBER="package/dist/rrweb-player.umd.min.cjs"
PLAYER_CSS_MEMBER="package/dist/style.min.css"
PLAYER_JS_SHA256="cd435a95dada57d789d098222b33f141a97e1924d239d8be9d650f9173f98279"
PLAYER_CSS_SHA256="ce5e96298e20e7262e317ef8d51aacd8e75cd14cfa66aaff43ceecbb7a3e132a"

NPM_CACHE_DIR="$ROOT/.cache/npm"
SDK_TARBALL="$NPM_CACHE_DIR/amplitude-session-replay-browser-$SDK_VERSION.tgz"
SDK_UNPACKED="$NPM_CACHE_DIR/session-replay-browser-$SDK_VERSION"
SDK_VENDORED="$ROOT/static/vendor/session-replay-browser-$SDK_VERSION-min.js"
PLAYER_TARBALL="$NPM_CACHE_DIR/rrweb-player-$PLAYER_VERSION.tgz"
PLAYER_JS="$ROOT/static/vendor/rrweb-player-$PLAYER_VERSION.min.js"
PLAYER_CSS="$ROOT/static/vendor/rrweb-player-$PLAYER_VERSION.min.css"
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

# --- (a2) a Python >= 3.12 venv for the Django 6 built-in CSP tests (tests/django6/) ------
# Django 6 needs Python >= 3.12; .venv may be older. tests/test_django6.py runs tests/django6/
# in this venv (and skips only when no such Python exists: keep its search in sync with this).
VENV6="$ROOT/.venv-django6"
VENV6_STAMP="$VENV6/.replay-middleware-setup"
find_python312() {
    local candidate
    for candidate in python3.13 python3.12 /root/.pyenv/versions/3.1[2-9]*/bin/python3.1*; do
        case "$candidate" in *-config) continue ;; esac
        if command -v "$candidate" >/dev/null 2>&1 \
            && "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null; then
            # The real interpreter, not a pyenv shim (a venv must not point at a shim).
            "$candidate" -c 'import sys; print(sys.executable)'
            return 0
        fi
    done
    return 1
}
if PY6="$(find_python312)"; then
    PY6_VERSION="$("$PY6" -c 'import platform; print(platform.python_version())')"
    VENV6_WANT="$PYPROJECT_HASH $PY6 $PY6_VERSION"
    if ! "$VENV6/bin/python" -c '' >/dev/null 2>&1 \
        || [ "$(cat "$VENV6_STAMP" 2>/dev/null || true)" != "$VENV6_WANT" ]; then
        say "creating .venv-django6 with $PY6 ($PY6_VERSION): Django 6, pytest, replay-middleware"
        rm -rf "$VENV6"
        "$PY6" -m venv "$VENV6"
        "$VENV6/bin/python" -m pip install --disable-pip-version-check --quiet \
            'django>=6.0,<7' pytest -e .
        printf '%s\n' "$VENV6_WANT" >"$VENV6_STAMP"
    else
        say ".venv-django6 up to date"
    fi
else
    say "no Python >= 3.12; the Django 6 built-in CSP tests will be skipped"
fi

# --- (b) the SDK bundle from npm, verified ---------------------------------------------------
need_npm() {
    command -v npm >/dev/null 2>&1 && return 0
    if is_root; then
        say "npm missing: installing Debian's nodejs and npm"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm
    else
        die "npm is required to fetch the SDK and rrweb-player; run: sudo apt-get install nodejs npm"
    fi
}

# sha512 in npm's SRI form ("sha512-<base64>") and hex sha256 of a file.
sri_sha512() { "$PY" - "$1" <<'EOF'
import base64, hashlib, sys
with open(sys.argv[1], "rb") as f:
    print("sha512-" + base64.b64encode(hashlib.sha512(f.read()).digest()).decode())
EOF
}
hex_sha256() { sha256sum "$1" | cut -d' ' -f1; }

# fetch_tarball PACKAGE VERSION TARBALL INTEGRITY: `npm pack` into the cache unless a tarball
# with the pinned sha512 integrity is already there; a mismatch removes it and stops.
fetch_tarball() {
    local package="$1" version="$2" tarball="$3" integrity="$4" actual
    mkdir -p "$NPM_CACHE_DIR"
    if [ -f "$tarball" ] && [ "$(sri_sha512 "$tarball")" = "$integrity" ]; then
        return 0
    fi
    need_npm
    say "fetching $package@$version with npm pack"
    rm -f "$tarball"
    (cd "$NPM_CACHE_DIR" && npm_config_update_notifier=false npm pack --silent \
        "$package@$version" >/dev/null)
    [ -f "$tarball" ] || die "npm pack did not produce $tarball"
    actual="$(sri_sha512 "$tarball")"
    if [ "$actual" != "$integrity" ]; then
        rm -f "$tarball"
        die "integrity mismatch for $package@$version: got $actual"
    fi
}

if [ -f "$SDK_VENDORED" ] && [ "$(hex_sha256 "$SDK_VENDORED")" = "$SDK_BUNDLE_SHA256" ] \
    && [ -f "$SDK_UNPACKED/package/lib/cjs/sampling.js" ]; then
    say "SDK $SDK_VERSION already vendored"
else
    fetch_tarball "$SDK_PACKAGE" "$SDK_VERSION" "$SDK_TARBALL" "$SDK_TARBALL_INTEGRITY"
    say "unpacking into ${SDK_UNPACKED#"$ROOT"/}/package"
    tmp="$(mktemp -d "$NPM_CACHE_DIR/unpack.XXXXXX")"
    trap 'rm -rf "$tmp"' EXIT
    chmod 755 "$tmp"
    tar -xzf "$SDK_TARBALL" -C "$tmp"
    rm -rf "$SDK_UNPACKED"
    mv "$tmp" "$SDK_UNPACKED"
    bundle="$SDK_UNPACKED/$SDK_BUNDLE_MEMBER"
    [ "$(hex_sha256 "$bundle")" = "$SDK_BUNDLE_SHA256" ] \
        || die "sha256 mismatch for $bundle (expected $SDK_BUNDLE_SHA256)"
    cp "$bundle" "$SDK_VENDORED.tmp"
    mv "$SDK_VENDORED.tmp" "$SDK_VENDORED"
    say "vendored ${SDK_VENDORED#"$ROOT"/}"
fi

# --- (b2) rrweb-player for the local inspector, verified --------------------------------------
if [ -f "$PLAYER_JS" ] && [ "$(hex_sha256 "$PLAYER_JS")" = "$PLAYER_JS_SHA256" ] \
    && [ -f "$PLAYER_CSS" ] && [ "$(hex_sha256 "$PLAYER_CSS")" = "$PLAYER_CSS_SHA256" ]; then
    say "rrweb-player $PLAYER_VERSION already vendored"
else
    fetch_tarball "$PLAYER_PACKAGE" "$PLAYER_VERSION" "$PLAYER_TARBALL" "$PLAYER_TARBALL_INTEGRITY"
    ptmp="$(mktemp -d "$NPM_CACHE_DIR/unpack.XXXXXX")"
    trap 'rm -rf "${tmp:-}" "$ptmp"' EXIT
    tar -xzf "$PLAYER_TARBALL" -C "$ptmp" "$PLAYER_JS_MEMBER" "$PLAYER_CSS_MEMBER"
    [ "$(hex_sha256 "$ptmp/$PLAYER_JS_MEMBER")" = "$PLAYER_JS_SHA256" ] \
        || { rm -rf "$ptmp"; die "sha256 mismatch for $PLAYER_JS_MEMBER (expected $PLAYER_JS_SHA256)"; }
    [ "$(hex_sha256 "$ptmp/$PLAYER_CSS_MEMBER")" = "$PLAYER_CSS_SHA256" ] \
        || { rm -rf "$ptmp"; die "sha256 mismatch for $PLAYER_CSS_MEMBER (expected $PLAYER_CSS_SHA256)"; }
    cp "$ptmp/$PLAYER_JS_MEMBER" "$PLAYER_JS.tmp"
    cp "$ptmp/$PLAYER_CSS_MEMBER" "$PLAYER_CSS.tmp"
    mv "$PLAYER_JS.tmp" "$PLAYER_JS"
    mv "$PLAYER_CSS.tmp" "$PLAYER_CSS"
    rm -rf "$ptmp"
    say "vendored ${PLAYER_JS#"$ROOT"/} and ${PLAYER_CSS#"$ROOT"/}"
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
