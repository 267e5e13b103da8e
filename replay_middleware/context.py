"""``current_replay()`` and ``get_replay_properties()``: the decision of the request being
handled, from a contextvar the adapters set (SPEC §1, R1). Sans-IO."""

from __future__ import annotations

from contextvars import ContextVar, Token

from .decision import ReplayContext

__all__ = ["current_replay", "get_replay_properties"]

_current: ContextVar[ReplayContext | None] = ContextVar("replay_middleware_context", default=None)


def current_replay() -> ReplayContext | None:
    """The ``ReplayContext`` of the request being handled, or None outside a request."""
    return _current.get()


def get_replay_properties() -> dict[str, str]:
    """``{"[Amplitude] Session Replay ID": "<device>/<session>"}`` inside a request whose
    session is recorded, else ``{}`` — add it to backend analytics events (R1)."""
    ctx = _current.get()
    return {} if ctx is None else ctx.properties()


def set_current(ctx: ReplayContext | None) -> Token[ReplayContext | None]:
    return _current.set(ctx)


def reset_current(token: Token[ReplayContext | None]) -> None:
    _current.reset(token)
