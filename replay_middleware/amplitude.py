"""``SessionReplayPlugin``: an enrichment plugin for Amplitude's Python SDK
(``amplitude-analytics``) that tags backend events with the current request's replay (SPEC R2).

Use it when the server tracks events with the official SDK and the session may be recorded by
replay-middleware::

    from amplitude import Amplitude
    from replay_middleware.amplitude import SessionReplayPlugin

    client = Amplitude("YOUR_AMPLITUDE_API_KEY")
    client.add(SessionReplayPlugin())

Every event tracked while a recorded request is being handled then carries
``"[Amplitude] Session Replay ID": "<device>/<session>"`` in its ``event_properties`` (and the
request's ``device_id`` and ``session_id`` when the event has none), so Amplitude links it to
the replay. Outside a request, or in a request whose session is not recorded, events pass
through unchanged.

Context: the request is found through ``current_replay()``, a contextvar. The SDK runs
plugins synchronously inside ``client.track()`` on the caller's thread (amplitude-analytics
``Timeline.process``: before → enrichment → destination, the destination only queueing a copy
for its worker threads), so the plugin sees the caller's context: the request's own thread or
task, a thread pool that copies the context (``asyncio.to_thread``, Starlette's
``run_in_threadpool``) and ``contextvars.copy_context().run``. A plain ``threading.Thread``
starts with an empty context and its events are left untouched; start it with
``threading.Thread(target=contextvars.copy_context().run, args=(fn,))``.

Requires the ``amplitude`` extra: ``pip install "replay-middleware[amplitude]"``.
"""

from __future__ import annotations

from typing import Any

try:
    from amplitude import BaseEvent, EventPlugin, PluginType  # type: ignore[import-untyped]
    from amplitude.event import (  # type: ignore[import-untyped]
        GroupIdentifyEvent,
        IdentifyEvent,
    )
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "replay_middleware.amplitude needs Amplitude's Python SDK: "
        'pip install "replay-middleware[amplitude]" (or amplitude-analytics)'
    ) from exc

from .context import current_replay

__all__ = ["SessionReplayPlugin"]


class SessionReplayPlugin(EventPlugin):  # type: ignore[misc]  # amplitude-analytics is untyped
    """Adds the current request's Session Replay ID to events tracked during the request.

    For an event tracked while a recorded request is handled (``current_replay().sampled``):

    - ``event_properties["[Amplitude] Session Replay ID"]`` is set to ``"<device>/<session>"``,
      unless the event already carries that property: an explicit value (say, a replay id the
      browser sent along) wins.
    - ``device_id`` is set to the request's device id when the event has none, and
      ``session_id`` to the request's session id (milliseconds) when the event has none and
      its device is the request's: a session id is only meaningful with its own device.

    Identify and group-identify events (``$identify``, ``$groupidentify``) update properties
    rather than happen in the session, and pass through unchanged, as do all events outside a
    request or in a request whose session is not recorded. The plugin keeps no state; one
    instance can serve any number of clients.
    """

    def __init__(self) -> None:
        super().__init__(PluginType.ENRICHMENT)

    def execute(self, event: BaseEvent) -> BaseEvent:
        """Enrich ``event`` in place and return it (the SDK's plugin contract)."""
        if isinstance(event, (IdentifyEvent, GroupIdentifyEvent)):
            return event
        ctx = current_replay()
        if ctx is None or not ctx.sampled:
            return event
        # A copy: the caller may reuse its properties dict for other events.
        properties: dict[str, Any] = dict(event.event_properties or {})
        for key, value in ctx.properties().items():
            properties.setdefault(key, value)
        event["event_properties"] = properties
        if not event.device_id:
            event["device_id"] = ctx.device_id
        if event.session_id is None and event.device_id == ctx.device_id:
            event["session_id"] = ctx.session_id
        return event
