"""``with_replay()``: the Session Replay ID for events sent with Segment's Python library
(``segment-analytics-python``), SPEC R2. Sans-IO.

Segment's library has no plugin hook on the server side: ``track()`` builds the message and
queues it (or posts it, in ``sync_mode``) right away. So the integration is a one-liner around
the properties you pass::

    import segment.analytics as analytics
    from replay_middleware.segment import with_replay

    analytics.track(user_id, "Checkout", with_replay({"plan": "pro"}))

Inside a request whose session is recorded, the properties gain
``"[Amplitude] Session Replay ID": "<device>/<session>"``, which Segment forwards to Amplitude
as an event property, linking the event to the replay. Elsewhere they are returned unchanged
(as a new dict). Like ``get_replay_properties()``, it reads the request from a contextvar:
call it on the request's thread or task, or where the context was copied
(``asyncio.to_thread``, ``contextvars.copy_context().run``); a plain ``threading.Thread``
starts with an empty context and gets nothing added.

This module does not import Segment's library (it only shapes a dict), so it needs no extra;
the ``segment`` extra installs the library itself: ``pip install "replay-middleware[segment]"``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .context import get_replay_properties

__all__ = ["with_replay"]


def with_replay(properties: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A new dict: ``properties`` plus the current request's Session Replay ID.

    The replay id is added only inside a request whose session is recorded, and only when
    ``properties`` does not already hold ``"[Amplitude] Session Replay ID"``: an explicit value
    wins. ``properties`` itself is never modified; ``None`` counts as ``{}``.
    """
    merged = dict(properties or {})
    for key, value in get_replay_properties().items():
        merged.setdefault(key, value)
    return merged
