"""``current_replay()`` and ``get_replay_properties()``: the decision of the request being
handled, from a contextvar the adapters set (SPEC §1, R1). Sans-IO."""

from __future__ import annotations

from contextvars import ContextVar, Token
from typing import Protocol

from .decision import ReplayContext

__all__ = ["current_replay", "get_replay_properties"]


class ContextSource(Protocol):
    """What the adapters store per request: the decision, computed on first use (so a JSON
    response whose handler never asks costs no identity or sampling work)."""

    def context(self) -> ReplayContext: ...


_current: ContextVar[ContextSource | None] = ContextVar("replay_middleware_context", default=None)


def current_replay() -> ReplayContext | None:
    """The ``ReplayContext`` of the request being handled, or None outside a request."""
    source = _current.get()
    return None if source is None else source.context()


def get_replay_properties() -> dict[str, str]:
    """``{"[Amplitude] Session Replay ID": "<device>/<session>"}`` inside a request whose
    session is recorded, else ``{}`` — add it to backend analytics events (R1)."""
    ctx = current_replay()
    return {} if ctx is None else ctx.properties()


def set_current(source: ContextSource | None) -> Token[ContextSource | None]:
    return _current.set(source)


def reset_current(token: Token[ContextSource | None]) -> None:
    _current.reset(token)
