"""with_replay() with the real segment-analytics-python client in sync mode, its batch upload
pointed at a local capture server: the tests check the JSON it would have sent to Segment (R2)."""

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
from segment.analytics import Client
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from replay_middleware import ReplayConfig, ReplayContext, ReplayMiddleware, current_replay
from replay_middleware.segment import with_replay

from .capture import Capture, capture_server, in_request

pytestmark = pytest.mark.anyio

REPLAY_ID = "[Amplitude] Session Replay ID"


@pytest.fixture
def capture(monkeypatch: pytest.MonkeyPatch) -> Iterator[Capture]:
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")  # requests must not send 127.0.0.1 to a proxy
    with capture_server() as server:
        yield server


@pytest.fixture
def segment(capture: Capture) -> Client:
    # sync_mode: track() posts the batch before returning, on the caller's thread.
    return Client("test-write-key", host=capture.url, sync_mode=True, max_retries=0)


def sent(capture: Capture, count: int = 1) -> list[dict[str, Any]]:
    """The messages Segment's batch endpoint received, once ``count`` of them have arrived."""
    return capture.wait_for(count, lambda body: body["batch"])




async def test_sampled_request_adds_the_replay_id(segment: Client, capture: Capture) -> None:
    ctx = await in_request(
        lambda: segment.track("user-42", "Checkout", with_replay({"plan": "pro"}))
    )
    [message] = sent(capture)
    assert ctx.sampled
    assert capture.posts[0][0] == "/v1/batch"
    assert message["event"] == "Checkout"
    assert message["userId"] == "user-42"
    assert message["properties"] == {"plan": "pro", REPLAY_ID: ctx.replay_id}


async def test_no_properties_gives_just_the_replay_id(segment: Client, capture: Capture) -> None:
    ctx = await in_request(lambda: segment.track("user-42", "Paid", with_replay()))
    [message] = sent(capture)
    assert message["properties"] == {REPLAY_ID: ctx.replay_id}


async def test_callers_properties_are_not_modified() -> None:
    props = {"plan": "pro"}
    merged: list[dict[str, Any]] = []
    ctx = await in_request(lambda: merged.append(with_replay(props)))
    assert props == {"plan": "pro"}
    assert merged == [{"plan": "pro", REPLAY_ID: ctx.replay_id}]


async def test_explicit_replay_id_wins(segment: Client, capture: Capture) -> None:
    explicit = {REPLAY_ID: "browser-device/1700000000000"}
    await in_request(lambda: segment.track("user-42", "Checkout", with_replay(explicit)))
    [message] = sent(capture)
    assert message["properties"] == explicit


async def test_unsampled_request_leaves_properties_unchanged(
    segment: Client, capture: Capture
) -> None:
    ctx = await in_request(
        lambda: segment.track("user-42", "Checkout", with_replay({"plan": "pro"})),
        sample_rate=0.0,
    )
    [message] = sent(capture)
    assert not ctx.sampled
    assert message["properties"] == {"plan": "pro"}


def test_outside_a_request_leaves_properties_unchanged(segment: Client, capture: Capture) -> None:
    segment.track("user-42", "Nightly job", with_replay({"n": 1}))
    [message] = sent(capture)
    assert message["properties"] == {"n": 1}
    assert with_replay() == {}


async def test_thread_started_with_copied_context_gets_the_replay_id(
    segment: Client, capture: Capture
) -> None:
    def track() -> None:
        segment.track("user-42", "Receipt emailed", with_replay())

    def start_thread() -> None:
        thread = threading.Thread(target=contextvars.copy_context().run, args=(track,))
        thread.start()
        thread.join(timeout=5)

    ctx = await in_request(start_thread)
    [message] = sent(capture)
    assert message["properties"] == {REPLAY_ID: ctx.replay_id}


async def test_asyncio_to_thread_copies_the_context(segment: Client, capture: Capture) -> None:
    seen: list[ReplayContext] = []

    def track() -> None:
        segment.track("user-42", "Exported", with_replay())

    async def endpoint(request: Request) -> PlainTextResponse:
        ctx = current_replay()
        assert ctx is not None
        seen.append(ctx)
        await asyncio.to_thread(track)
        return PlainTextResponse("ok")

    app = ReplayMiddleware(
        Starlette(routes=[Route("/", endpoint)]), config=ReplayConfig(sample_rate=1)
    )
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://test"
    ) as http:
        assert (await http.get("/")).status_code == 200
    [message] = sent(capture)
    assert message["properties"] == {REPLAY_ID: seen[0].replay_id}


async def test_plain_thread_has_no_request_context(segment: Client, capture: Capture) -> None:
    # Documented: threading.Thread starts with an empty context (use copy_context().run).
    def start_thread() -> None:
        thread = threading.Thread(
            target=lambda: segment.track("user-42", "Receipt emailed", with_replay())
        )
        thread.start()
        thread.join(timeout=5)

    await in_request(start_thread)
    [message] = sent(capture)
    assert message["properties"] == {}


def test_module_does_not_import_segments_library() -> None:
    code = "import sys, replay_middleware.segment\nprint('segment' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
