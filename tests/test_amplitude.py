"""SessionReplayPlugin with the real amplitude-analytics client, its HTTP V2 upload pointed at a
local capture server: the tests check the JSON the SDK would have sent to Amplitude (R2)."""

from __future__ import annotations

import asyncio
import contextvars
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from amplitude import Amplitude, BaseEvent, Config, EventOptions, Identify, IdentifyEvent
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from werkzeug.test import Client as WerkzeugClient

from replay_middleware import (
    ReplayConfig,
    ReplayContext,
    ReplayMiddleware,
    ReplayWSGIMiddleware,
    current_replay,
)
from replay_middleware.amplitude import SessionReplayPlugin

from .capture import Capture, capture_server, in_request

pytestmark = pytest.mark.anyio

REPLAY_ID = "[Amplitude] Session Replay ID"


@pytest.fixture
def capture(monkeypatch: pytest.MonkeyPatch) -> Iterator[Capture]:
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")  # urllib must not send 127.0.0.1 to a proxy
    with capture_server() as server:
        yield server


@pytest.fixture
def client(capture: Capture) -> Iterator[Amplitude]:
    config = Config(server_url=f"{capture.url}/2/httpapi", flush_interval_millis=20)
    amp = Amplitude("test-api-key", config)
    amp.add(SessionReplayPlugin())
    yield amp
    amp.shutdown()


def sent(capture: Capture, count: int = 1) -> list[dict[str, Any]]:
    """The event bodies Amplitude received, once ``count`` of them have arrived."""
    return capture.wait_for(count, lambda body: body["events"])




async def test_sampled_request_adds_replay_id_device_and_session(
    client: Amplitude, capture: Capture
) -> None:
    ctx = await in_request(
        lambda: client.track(
            BaseEvent("Checkout", user_id="user-42", event_properties={"plan": "pro"})
        )
    )
    [event] = sent(capture)
    assert ctx.sampled
    assert event["event_type"] == "Checkout"
    assert event["user_id"] == "user-42"
    assert event["event_properties"] == {
        "plan": "pro",
        REPLAY_ID: f"{ctx.device_id}/{ctx.session_id}",
    }
    assert event["device_id"] == ctx.device_id
    assert event["session_id"] == ctx.session_id


async def test_event_without_properties_gets_the_replay_id(
    client: Amplitude, capture: Capture
) -> None:
    ctx = await in_request(lambda: client.track(BaseEvent("Paid", user_id="user-42")))
    [event] = sent(capture)
    assert event["event_properties"] == {REPLAY_ID: ctx.replay_id}


async def test_callers_properties_dict_is_not_modified(client: Amplitude, capture: Capture) -> None:
    props = {"plan": "pro"}
    await in_request(
        lambda: client.track(BaseEvent("Checkout", user_id="u-42", event_properties=props))
    )
    sent(capture)
    assert props == {"plan": "pro"}


async def test_events_own_device_is_kept_and_gets_no_foreign_session(
    client: Amplitude, capture: Capture
) -> None:
    ctx = await in_request(
        lambda: client.track(BaseEvent("Checkout", user_id="user-42", device_id="other-device"))
    )
    [event] = sent(capture)
    assert event["device_id"] == "other-device"
    assert "session_id" not in event
    assert event["event_properties"] == {REPLAY_ID: ctx.replay_id}


async def test_events_own_session_is_kept(client: Amplitude, capture: Capture) -> None:
    def track() -> None:
        ctx = current_replay()
        assert ctx is not None
        client.track(BaseEvent("Checkout", device_id=ctx.device_id, session_id=1234567890123))

    ctx = await in_request(track)
    [event] = sent(capture)
    assert event["device_id"] == ctx.device_id
    assert event["session_id"] == 1234567890123


async def test_explicit_replay_id_wins(client: Amplitude, capture: Capture) -> None:
    explicit = {REPLAY_ID: "browser-device/1700000000000"}
    await in_request(
        lambda: client.track(BaseEvent("Checkout", user_id="user-42", event_properties=explicit))
    )
    [event] = sent(capture)
    assert event["event_properties"] == explicit


async def test_unsampled_request_leaves_event_unchanged(
    client: Amplitude, capture: Capture
) -> None:
    ctx = await in_request(
        lambda: client.track(
            BaseEvent("Checkout", user_id="user-42", event_properties={"plan": "pro"})
        ),
        sample_rate=0.0,
    )
    [event] = sent(capture)
    assert not ctx.sampled
    assert event["event_properties"] == {"plan": "pro"}
    assert "device_id" not in event
    assert "session_id" not in event


def test_outside_a_request_leaves_event_unchanged(client: Amplitude, capture: Capture) -> None:
    client.track(BaseEvent("Nightly job", user_id="user-42", event_properties={"n": 1}))
    [event] = sent(capture)
    assert event["event_properties"] == {"n": 1}
    assert "device_id" not in event
    assert "session_id" not in event


async def test_identify_event_is_left_alone(client: Amplitude, capture: Capture) -> None:
    await in_request(
        lambda: client.identify(Identify().set("plan", "pro"), EventOptions(user_id="user-42"))
    )
    [event] = sent(capture)
    assert event["event_type"] == IdentifyEvent().event_type
    assert "event_properties" not in event
    assert "device_id" not in event


async def test_thread_started_with_copied_context_gets_the_replay_id(
    client: Amplitude, capture: Capture
) -> None:
    def track() -> None:
        client.track(BaseEvent("Receipt emailed", user_id="user-42"))

    def start_thread() -> None:
        thread = threading.Thread(target=contextvars.copy_context().run, args=(track,))
        thread.start()
        thread.join(timeout=5)

    ctx = await in_request(start_thread)
    [event] = sent(capture)
    assert event["event_properties"] == {REPLAY_ID: ctx.replay_id}
    assert event["session_id"] == ctx.session_id


async def test_asyncio_to_thread_copies_the_context(client: Amplitude, capture: Capture) -> None:
    seen: list[ReplayContext] = []

    async def endpoint(request: Request) -> PlainTextResponse:
        ctx = current_replay()
        assert ctx is not None
        seen.append(ctx)
        await asyncio.to_thread(client.track, BaseEvent("Exported", user_id="user-42"))
        return PlainTextResponse("ok")

    app = ReplayMiddleware(
        Starlette(routes=[Route("/", endpoint)]), config=ReplayConfig(sample_rate=1)
    )
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://test"
    ) as http:
        assert (await http.get("/")).status_code == 200
    [event] = sent(capture)
    assert event["event_properties"] == {REPLAY_ID: seen[0].replay_id}


async def test_plain_thread_has_no_request_context(client: Amplitude, capture: Capture) -> None:
    # Documented: threading.Thread starts with an empty context (use copy_context().run).
    def start_thread() -> None:
        thread = threading.Thread(
            target=client.track, args=(BaseEvent("Receipt emailed", user_id="user-42"),)
        )
        thread.start()
        thread.join(timeout=5)

    await in_request(start_thread)
    [event] = sent(capture)
    assert "event_properties" not in event
    assert "device_id" not in event


def test_wsgi_request_adds_the_replay_id(client: Amplitude, capture: Capture) -> None:
    seen: list[ReplayContext] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        ctx = current_replay()
        assert ctx is not None
        seen.append(ctx)
        client.track(BaseEvent("Checkout", user_id="user-42"))
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    wsgi = ReplayWSGIMiddleware(app, config=ReplayConfig(sample_rate=1))
    assert WerkzeugClient(wsgi).post("/checkout").status_code == 200
    [event] = sent(capture)
    assert event["event_properties"] == {REPLAY_ID: seen[0].replay_id}
    assert event["device_id"] == seen[0].device_id
    assert event["session_id"] == seen[0].session_id


def test_missing_sdk_import_error_names_the_extra() -> None:
    code = (
        "import sys\n"
        "sys.modules['amplitude'] = None\n"
        "try:\n"
        "    import replay_middleware.amplitude\n"
        "except ImportError as e:\n"
        "    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert 'pip install "replay-middleware[amplitude]"' in out.stdout
