"""Print the size of the browser loader (static/loader.js): raw, minified, minified + gzip.

The loader is served on every recorded page view, so its weight is watched (SPEC N3: small).
Minified with rjsmin (the ``test`` extra), gzipped at level 9 as a server or CDN would.

Usage: ``.venv/bin/python scripts/loader_size.py``
"""

from __future__ import annotations

import gzip
import sys
from pathlib import Path

LOADER = Path(__file__).resolve().parent.parent / "static" / "loader.js"


def sizes(source: bytes) -> tuple[int, int, int]:
    """Bytes of ``source`` raw, minified, and minified then gzipped."""
    import rjsmin  # a test-extra dependency, so imported only when measuring

    minified = rjsmin.jsmin(source.decode("utf-8")).encode("utf-8")
    # mtime=0: the figure must not depend on the clock.
    return len(source), len(minified), len(gzip.compress(minified, 9, mtime=0))


def main() -> int:
    raw, minified, gzipped = sizes(LOADER.read_bytes())
    print(f"raw  {raw:6d} B")
    print(f"min  {minified:6d} B")
    print(f"gzip {gzipped:6d} B")
    return 0


if __name__ == "__main__":
    sys.exit(main())
