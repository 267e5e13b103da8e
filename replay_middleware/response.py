"""HttpResponse: a complete response of a first-party endpoint. Sans-IO."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["HttpResponse"]


@dataclass(frozen=True)
class HttpResponse:
    """A complete response of a first-party endpoint."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes = b""
