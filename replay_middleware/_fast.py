"""``frozen_new``: build a frozen dataclass instance without its generated ``__init__``.

A frozen dataclass's ``__init__`` sets every field through ``object.__setattr__`` (about
0.15 µs a field); the per-request path builds several such values, so it fills the instance's
``__dict__`` in one call instead. Only for dataclasses with a ``__dict__`` (no ``slots``), no
``__post_init__`` and no field defaults left out: every field must be passed.
"""

from __future__ import annotations

from typing import Any, TypeVar

T = TypeVar("T")


def frozen_new(cls: type[T], /, **fields: Any) -> T:
    """``cls(**fields)`` for a frozen dataclass, faster; ``fields`` must name every field."""
    obj = object.__new__(cls)
    obj.__dict__.update(fields)
    return obj
