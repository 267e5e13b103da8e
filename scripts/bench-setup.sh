#!/usr/bin/env bash
# What `make bench` needs on top of scripts/setup.sh (which it runs first): the `bench` extra in
# .venv (New Relic's agent, aiohttp, pyinstrument: the peers and alternatives measured side by
# side, never runtime dependencies) and Debian's wrk (the load generator) and nginx (the reverse
# proxy a user would otherwise deploy). Idempotent.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="$ROOT/.venv"
STAMP="$VENV/.replay-middleware-bench"

say() { printf 'bench-setup: %s\n' "$*"; }
die() { printf 'bench-setup: ERROR: %s\n' "$*" >&2; exit 1; }

WANT="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ "$(cat "$STAMP" 2>/dev/null || true)" != "$WANT" ]; then
    say "installing replay-middleware[test,bench] into .venv"
    "$VENV/bin/python" -m pip install --disable-pip-version-check --quiet -e '.[test,bench]'
    printf '%s\n' "$WANT" >"$STAMP"
else
    say ".venv has the bench extra"
fi

missing=()
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
[ -x /usr/sbin/nginx ] || command -v nginx >/dev/null 2>&1 || missing+=(nginx-light)
if [ "${#missing[@]}" -gt 0 ]; then
    if [ "$(id -u)" = "0" ]; then
        say "installing Debian's ${missing[*]} (apt-get)"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
        # The package's own service is not wanted: the benchmarks start nginx on loopback.
        if command -v service >/dev/null 2>&1; then service nginx stop >/dev/null 2>&1 || true; fi
    else
        die "missing ${missing[*]}; run: sudo apt-get install ${missing[*]}"
    fi
fi
say "done"
