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

    def framed_headers(self) -> list[tuple[str, str]]:
        """``headers`` plus a ``Content-Length`` for the body when none is set and the status
        allows a body (RFC 9110 §8.6). Every adapter sends these, so an endpoint's answer is
        framed by its length (not chunked, whatever the server) in every framework."""
        if (
            self.status < 200
            or self.status in (204, 304)
            or any(name.lower() == "content-length" for name, _ in self.headers)
        ):
            return list(self.headers)
        return [*self.headers, ("content-length", str(len(self.body)))]
