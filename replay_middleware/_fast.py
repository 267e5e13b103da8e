"""Hot-path helpers: ``frozen_new`` and ``random16``.

``frozen_new`` builds a frozen dataclass instance without its generated ``__init__``.

A frozen dataclass's ``__init__`` sets every field through ``object.__setattr__`` (about
0.15 µs a field); the per-request path builds several such values, so it fills the instance's
``__dict__`` in one call instead. Only for dataclasses with a ``__dict__`` (no ``slots``), no
``__post_init__`` and no field defaults left out: every field must be passed.
"""

from __future__ import annotations

import os
from collections import deque
from typing import Any, TypeVar

T = TypeVar("T")


def frozen_new(cls: type[T], /, **fields: Any) -> T:
    """``cls(**fields)`` for a frozen dataclass, faster; ``fields`` must name every field."""
    obj = object.__new__(cls)
    obj.__dict__.update(fields)
    return obj


# -- random bytes ------------------------------------------------------------------------------

#: 16-byte blocks of the OS's CSPRNG, read 256 at a time: ``os.urandom`` is a system call
#: (about 0.45 µs, more with cold caches), and a page takes one or two (a nonce; a new
#: visitor's device id). ``deque.popleft`` is atomic, so concurrent threads never get the same
#: block; the pool is emptied in a forked child (``os.register_at_fork``), so worker processes
#: forked from a preloaded app never share blocks with their parent or with each other.
_POOL: deque[bytes] = deque()
_POOL_BLOCKS = 256


def random16() -> bytes:
    """16 bytes from the OS's CSPRNG (what ``os.urandom(16)`` returns), drawn from a pool."""
    try:
        return _POOL.popleft()
    except IndexError:
        data = os.urandom(16 * _POOL_BLOCKS)
        _POOL.extend([data[i : i + 16] for i in range(16, len(data), 16)])
        return data[:16]


if hasattr(os, "register_at_fork"):  # not on Windows, which has no fork either
    os.register_at_fork(after_in_child=_POOL.clear)
