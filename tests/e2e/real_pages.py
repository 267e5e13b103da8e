"""Real-size pages for the browser suites (issue 7): visits and what their replay must hold.

A visit opens a page, stays as a visitor would (``short``: 2 s without touching it, the common
case; ``long``: 6 s of reading with the wheel), then leaves for a page the middleware does not
record (``/account/billing`` is excluded in every example's test config). What was uploaded
must hold a full snapshot (rrweb type 2) with the page's last text: a replay of the page with
its content, not the blank one a short view used to leave (docs/page-exit.md).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import httpx
from playwright.sync_api import Page, expect

ROOT = Path(__file__).resolve().parents[2]
UNRECORDED = "/account/billing"
STAYS = ("short", "long")
ARTICLE_KB = (150, 400)
#: The Django admin's user changelist with every row (the example seeds 200 users).
ADMIN_CHANGELIST = "/admin/auth/user/?all="
ADMIN_PASSWORD = "e2e-admin-Pa55word"
ADMIN_LAST_ROW = "user199"
FULL_SNAPSHOT = 2
WAIT_S = 15.0
#: The inspector token every example server of the browser suites is given (``inspector_token``
#: or ``REPLAY_INSPECTOR_TOKEN``): the inspector answers 404 without it.
INSPECTOR_TOKEN = "e2e-inspector-token-0123456789"


def article_path(kb: int) -> str:
    return f"/article?kb={kb}"


def failed_uploads(page: Page) -> list[str]:
    """Uploads the page starts and the browser reports as failed from now on (an upload cut
    off by the page's exit, or an answer the browser gave up on: ``net::ERR_ABORTED``)."""
    failed: list[str] = []
    page.on(
        "requestfailed",
        lambda r: failed.append(f"{r.url} {r.failure}") if "/_replay/track" in r.url else None,
    )
    return failed


def stay_and_leave(page: Page, base: str, stay: str) -> None:
    """Stay on the current page as ``stay`` says, then open an unrecorded page."""
    if stay == "short":
        page.wait_for_timeout(2000)
    else:
        for _ in range(12):
            page.mouse.wheel(0, 600)
            page.wait_for_timeout(500)
    page.goto(base + UNRECORDED)


def snapshot_holds(events: Iterable[Any], text: str) -> bool:
    """Whether a full snapshot among ``events`` (decoded rrweb events) holds ``text``."""
    return any(
        isinstance(e, dict) and e.get("type") == FULL_SNAPSHOT and text in json.dumps(e)
        for e in events
    )


def ids(page: Page) -> tuple[str, str]:
    """The device and session id of the page's identity cookie."""
    [cookie] = [c for c in page.context.cookies() if c["name"] == "replay_id"]
    device, session = cookie["value"].strip('"').split(".")[:2]
    return device, session


def wait_for_stored_snapshot(base: str, device: str, session: str, text: str) -> None:
    """Poll the local inspector's events of the session until a full snapshot holds ``text``."""
    url = f"{base}/_replay/inspect/{device}/{session}/events.json"
    deadline = time.monotonic() + WAIT_S
    seen: list[int] = []
    with httpx.Client(trust_env=False, timeout=5.0) as client:
        # ?token= answers a 303 that sets the inspector's cookie; the client keeps it.
        client.get(f"{url}?token={INSPECTOR_TOKEN}", follow_redirects=True)
        while time.monotonic() < deadline:
            response = client.get(url)
            if response.status_code == 200:
                events = response.json()
                if snapshot_holds(events, text):
                    return
                seen = [e.get("type") for e in events if isinstance(e, dict)]
            time.sleep(0.25)
    raise AssertionError(f"no full snapshot holding {text!r} in the store; event types {seen}")


def assert_player_shows(
    page: Page, base: str, device: str, session: str, text: str, *, from_page: str | None = None
) -> None:
    """The inspector's session page replays the snapshot: ``text`` is in the player's frame
    (after "Replay from here" on the last visited page whose URL holds ``from_page``)."""
    page.goto(f"{base}/_replay/inspect/{device}/{session}?token={INSPECTOR_TOKEN}")
    page.wait_for_function("() => window.__replayInspector", timeout=WAIT_S * 1000)
    if from_page is not None:
        row = page.locator("table.stays tbody tr").filter(
            has=page.locator("td.page-url", has_text=from_page)
        )
        button = row.last.locator("button.seek")
        expect(button).to_be_enabled(timeout=WAIT_S * 1000)
        button.click()
    frame = page.frame_locator(".replayer-wrapper iframe")
    frame.get_by_text(text, exact=False).first.wait_for(timeout=WAIT_S * 1000)


def seed_django_db(path: Path) -> dict[str, str]:
    """Create the Django example's database at ``path`` (tables, ``admin``, 199 users); returns
    the environment a server needs to use it."""
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("REPLAY_")},
        "PYTHONPATH": str(ROOT),
        "DJANGO_SECRET_KEY": "e2e-only-secret-key-0123456789abcdef",
        "DJANGO_EXAMPLE_DB": str(path),
        "DJANGO_EXAMPLE_ADMIN_PASSWORD": ADMIN_PASSWORD,
    }
    subprocess.run(
        [sys.executable, "-m", "examples.django_app", "seed"],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
        timeout=120,
    )
    return {"DJANGO_EXAMPLE_DB": str(path)}


def admin_sign_in(page: Page, base: str) -> None:
    """Sign in to the Django admin as ``admin``; ends on the changelist of all users."""
    page.goto(base + "/admin/login/?next=" + ADMIN_CHANGELIST.replace("?", "%3F"))
    page.fill("#id_username", "admin")
    page.fill("#id_password", ADMIN_PASSWORD)
    with page.expect_navigation():
        page.click("input[type=submit]")
    assert page.locator("#result_list tbody tr").count() == 200
