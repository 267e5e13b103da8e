"""``python -m replay_middleware doctor [URL]``: see :mod:`replay_middleware.doctor`."""

from __future__ import annotations

import sys

from .doctor import main

if __name__ == "__main__":
    sys.exit(main())
