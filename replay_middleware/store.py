"""Local-mode upload store (SPEC L1): uploads stay on this machine.

This is the in-memory store: bounded by count and bytes, oldest out first, thread-safe. It
keeps the raw upload exactly as the SDK sent it (query, headers, body), so nothing is lost
before a decoder or a persistent store looks at it.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = ["MemoryStore", "StoredUpload"]


@dataclass(frozen=True)
class StoredUpload:
    query_string: str
    headers: Mapping[str, str]
    body: bytes = field(repr=False)
    received_ms: int


class MemoryStore:
    """A bounded, in-memory list of uploads (newest last)."""

    def __init__(self, *, max_items: int = 2000, max_bytes: int = 64 * 1024 * 1024) -> None:
        self._items: deque[StoredUpload] = deque()
        self._bytes = 0
        self._max_items = max_items
        self._max_bytes = max_bytes
        self._lock = threading.Lock()

    def add(
        self, query_string: str, headers: Mapping[str, str], body: bytes, received_ms: int
    ) -> None:
        # Never keep the visitor's cookies or credentials, even locally.
        kept = {k: v for k, v in headers.items() if k not in ("cookie", "authorization")}
        item = StoredUpload(query_string, kept, body, received_ms)
        with self._lock:
            self._items.append(item)
            self._bytes += len(body)
            while self._items and (
                len(self._items) > self._max_items or self._bytes > self._max_bytes
            ):
                self._bytes -= len(self._items.popleft().body)

    def uploads(self) -> list[StoredUpload]:
        with self._lock:
            return list(self._items)
