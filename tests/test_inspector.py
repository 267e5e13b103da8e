"""inspector.py: the local-mode inspector pages, who may see them, and their hygiene (SPEC L2)."""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import html5lib
import pytest

from replay_middleware.config import ReplayConfig
from replay_middleware.engine import HttpResponse, ReplayEngine
from replay_middleware.inspector import (
    INSPECTOR_CSP,
    PLAYER_FILES,
    PLAYER_VERSION,
    Inspector,
    PageStay,
    VisitSpan,
    _duration,
    derive_inspector_token,
    inspector_token_for,
    page_stays,
    visit_span,
)
from replay_middleware.local_store import LocalStore
from replay_middleware.request import RequestInfo
from replay_middleware.sdk import static_dir

ROOT = Path(__file__).resolve().parents[1]
STATIC = ROOT / "static"
PREFIX = "/_replay"
BASE = PREFIX + "/inspect"
DEVICE = "3f1c2b9e-device"
SESSION = "1735689600000"
TOKEN = "inspector-token-0123456789abcdef"
T0 = 1735689600000
HOSTILE_URL = "https://shop.test/?q=</script><script>alert(1)</script>\"'&x=<b>"
HOSTILE_DEVICE = 'dev"<img src=x onerror=alert(1)>/../x'
NS = "{http://www.w3.org/1999/xhtml}"


def events(href: str = "https://shop.test/a") -> list[dict[str, Any]]:
    return [
        {"type": 4, "timestamp": T0, "data": {"href": href, "width": 1280, "height": 720}},
        {"type": 2, "timestamp": T0 + 1, "data": {"node": {"type": 0, "childNodes": []}}},
        {"type": 3, "timestamp": T0 + 5000, "data": {"source": 2, "type": 2, "id": 1}},
    ]


def upload(
    store: LocalStore,
    *,
    device: str = DEVICE,
    session: str = SESSION,
    href: str = "https://shop.test/a",
    kind: str = "replay",
    body: bytes | None = None,
) -> None:
    if body is None:
        body = json.dumps({"version": 1, "events": [json.dumps(e) for e in events(href)]}).encode()
    query = f"device_id={_q(device)}&session_id={_q(session)}&type={kind}"
    store.add(query, {"x-client-url": href}, body, T0 + 10)


def _q(value: str) -> str:
    return quote(value, safe="")


def url_change(ts: int, href: str) -> dict[str, Any]:
    """The SDK's URL-tracking plugin event: a client-side navigation."""
    return {
        "type": 6,
        "timestamp": ts,
        "data": {"plugin": "amplitude/url-tracking@1", "payload": {"href": href}},
    }


def upload_events(
    store: LocalStore, evs: list[dict[str, Any]], received_ms: int, *, session: str = SESSION
) -> None:
    body = json.dumps({"version": 1, "events": [json.dumps(e) for e in evs]}).encode()
    query = f"device_id={_q(DEVICE)}&session_id={_q(session)}&type=replay"
    assert store.add(query, {}, body, received_ms).error is None


def text_of(element: ET.Element) -> str:
    return "".join(element.itertext()).strip()


def get(
    inspector: Inspector,
    path: str,
    *,
    client: str | None = "127.0.0.1",
    host: str = "127.0.0.1:8000",
    method: str = "GET",
    headers: list[tuple[str, str]] | None = None,
    query: str = "",
    cookie: bool = True,
) -> HttpResponse:
    """A request to the inspector; with ``cookie`` it carries the inspector's cookie, as every
    request after the ``?token=`` visit does."""
    pairs = [("host", host), *(headers or [])]
    if cookie:
        pairs.append(("cookie", f"{inspector.cookie_name}={inspector.token}"))
    return inspector.handle(
        RequestInfo.from_pairs(method, path, pairs, query_string=query, client=client)
    )


def header(response: HttpResponse, name: str) -> str | None:
    values = [v for k, v in response.headers if k.lower() == name]
    assert len(values) <= 1, values
    return values[0] if values else None


def parse(response: HttpResponse) -> ET.Element:
    document: ET.Element = html5lib.parse(response.body.decode("utf-8"))
    return document


@pytest.fixture
def vendored_player() -> Path:
    """The real player files, as scripts/setup.sh vendored them."""
    for file in PLAYER_FILES:
        if not (STATIC / file.name).is_file():
            pytest.fail(f"{STATIC / file.name} is missing: run `make setup`", pytrace=False)
    return STATIC


@pytest.fixture
def static_root(tmp_path: Path, vendored_player: Path) -> Path:
    root = tmp_path / "static"
    (root / "vendor").mkdir(parents=True)
    for name in ("inspector.js", "inspector.css", *(f.name for f in PLAYER_FILES)):
        shutil.copyfile(vendored_player / name, root / name)
    return root


@pytest.fixture
def store(tmp_path: Path) -> Iterator[LocalStore]:
    with LocalStore(tmp_path / "store") as s:
        yield s


@pytest.fixture
def inspector(store: LocalStore, static_root: Path) -> Inspector:
    return Inspector(store, PREFIX, token=TOKEN, static_root=static_root)


# --- pages -----------------------------------------------------------------------------------


def test_list_page_shows_the_sessions(store: LocalStore, inspector: Inspector) -> None:
    upload(store)
    upload(store, session="1735689700000")

    response = get(inspector, BASE)

    assert response.status == 200
    rows = parse(response).findall(f".//{NS}table/{NS}tbody/{NS}tr")
    assert len(rows) == 2
    cells = [(c.text or "") for c in rows[1].findall(f"{NS}td")]
    assert cells[0] == DEVICE
    link = rows[1].find(f".//{NS}a")
    assert link is not None and link.get("href") == f"{BASE}/{DEVICE}/{SESSION}"
    assert link.text == SESSION
    assert "https://shop.test/a" in ET.tostring(rows[1], encoding="unicode")
    assert b"2025-01-01 00:00:00 UTC" in response.body


def test_list_page_with_a_trailing_slash(store: LocalStore, inspector: Inspector) -> None:
    assert get(inspector, BASE + "/").status == 200


def test_empty_list_says_how_to_record(inspector: Inspector) -> None:
    response = get(inspector, BASE)

    assert response.status == 200
    assert b"No sessions recorded yet" in response.body


def test_pages_carry_their_own_security_headers(store: LocalStore, inspector: Inspector) -> None:
    upload(store)

    for path in (BASE, f"{BASE}/{DEVICE}/{SESSION}", f"{BASE}/{DEVICE}/404"):
        response = get(inspector, path)
        assert header(response, "content-type") == "text/html; charset=utf-8"
        assert header(response, "cache-control") == "no-store"
        assert header(response, "content-security-policy") == INSPECTOR_CSP
        assert header(response, "x-frame-options") == "DENY"
        assert header(response, "x-content-type-options") == "nosniff"
        assert header(response, "referrer-policy") == "no-referrer"
        assert header(response, "content-length") == str(len(response.body))


def test_csp_allows_no_inline_script_and_no_framing() -> None:
    directives = dict(d.strip().split(" ", 1) for d in INSPECTOR_CSP.split(";"))

    assert directives["default-src"] == "'none'"
    assert directives["script-src"] == "'self'"
    assert directives["frame-ancestors"] == "'none'"
    assert "unsafe-eval" not in INSPECTOR_CSP


def test_session_page_holds_the_player_and_no_inline_script(
    store: LocalStore, inspector: Inspector
) -> None:
    upload(store)

    response = get(inspector, f"{BASE}/{DEVICE}/{SESSION}")

    assert response.status == 200
    document = parse(response)
    scripts = document.findall(f".//{NS}script")
    # Both deferred: they run in document order, the player first.
    assert [(s.get("src"), s.get("defer")) for s in scripts] == [
        (f"{BASE}/static/vendor/rrweb-player-{PLAYER_VERSION}.min.js", ""),
        (f"{BASE}/static/inspector.js", ""),
    ]
    assert all(not (s.text or "").strip() for s in scripts)
    styles = [e.get("href") for e in document.findall(f".//{NS}link[@rel='stylesheet']")]
    assert f"{BASE}/static/vendor/rrweb-player-{PLAYER_VERSION}.min.css" in styles
    player = document.find(f".//{NS}div[@id='player']")
    assert player is not None
    assert player.get("data-events-url") == f"{BASE}/{DEVICE}/{SESSION}/events.json"
    assert b"3 rrweb events" in response.body
    assert b"run <code>make setup</code>" not in response.body


def test_session_page_lists_pages_and_upload_errors(
    store: LocalStore, inspector: Inspector
) -> None:
    upload(store)
    upload(store, body=b"\x1f\x8bbroken")

    response = get(inspector, f"{BASE}/{DEVICE}/{SESSION}")

    assert b"invalid gzip data" in response.body
    assert b"1 could not be stored or decoded" in response.body
    pages = parse(response).findall(f".//{NS}table[@class='stays']//{NS}td[@title]")
    assert [p.text for p in pages] == ["https://shop.test/a"]


def test_hostile_values_are_escaped(store: LocalStore, inspector: Inspector) -> None:
    upload(store, device=HOSTILE_DEVICE, href=HOSTILE_URL)
    session_path = f"{BASE}/{_q(HOSTILE_DEVICE)}/{SESSION}"

    for response in (get(inspector, BASE), get(inspector, f"{BASE}/{HOSTILE_DEVICE}/{SESSION}")):
        assert response.status == 200
        text = response.body.decode()
        assert "<script>alert(1)" not in text
        assert "<img src=x" not in text
        assert "&lt;/script&gt;&lt;script&gt;alert(1)&lt;/script&gt;&#34;&#39;" in text
        document = parse(response)
        # Exactly the scripts the template has: the hostile values made none.
        assert all(
            s.get("src", "").startswith(BASE + "/static/") for s in document.iter(f"{NS}script")
        )
        assert document.find(f".//{NS}img") is None
    listing = parse(get(inspector, BASE))
    link = listing.find(f".//{NS}tbody//{NS}a")
    assert link is not None and link.get("href") == session_path
    urls = [e.text for e in listing.iter() if e.get("class") == "url"]
    assert urls == [HOSTILE_URL]


def test_device_id_with_a_slash_resolves(store: LocalStore, inspector: Inspector) -> None:
    upload(store, device="a/b")

    # The adapters hand over the decoded path: %2F is "/" again.
    assert get(inspector, f"{BASE}/a/b/{SESSION}").status == 200
    assert get(inspector, f"{BASE}/a/b/{SESSION}/events.json").status == 200


def test_events_json_is_the_decoded_events_pretty(store: LocalStore, inspector: Inspector) -> None:
    upload(store, href=HOSTILE_URL)

    response = get(inspector, f"{BASE}/{DEVICE}/{SESSION}/events.json")

    assert response.status == 200
    assert header(response, "content-type") == "application/json; charset=utf-8"
    assert header(response, "cache-control") == "no-store"
    assert header(response, "x-content-type-options") == "nosniff"
    assert json.loads(response.body) == events(HOSTILE_URL)
    assert response.body.startswith(b'[\n  {\n    "type": 4')


def test_interactions_json(store: LocalStore, inspector: Inspector) -> None:
    click = {"type": "click", "x": 1, "y": 2, "timestamp": T0 + 3, "pageUrl": "https://a.test/"}
    upload(store, kind="interaction", body=json.dumps({"version": 1, "events": [click]}).encode())

    response = get(inspector, f"{BASE}/{DEVICE}/{SESSION}/interactions.json")

    assert json.loads(response.body) == [click]


def test_unknown_session_is_a_404_page(inspector: Inspector) -> None:
    response = get(inspector, f"{BASE}/{DEVICE}/999")

    assert response.status == 404
    assert b"Session not found" in response.body
    assert get(inspector, f"{BASE}/{DEVICE}/999/events.json").status == 404


@pytest.mark.parametrize(
    "path",
    [
        pytest.param(f"{BASE}/only-one-segment", id="one-segment"),
        pytest.param(f"{BASE}//{SESSION}", id="empty-device"),
        pytest.param(f"{BASE}/static/../../pyproject.toml", id="traversal"),
        pytest.param(f"{BASE}/static/vendor/", id="static-dir"),
        pytest.param(f"{BASE}/static/loader.js", id="static-not-listed"),
        pytest.param(BASE + "x", id="prefix-lookalike"),
        pytest.param(PREFIX + "/track", id="other-endpoint"),
    ],
)
def test_unknown_paths_are_404(inspector: Inspector, path: str) -> None:
    response = get(inspector, path)

    assert (response.status, response.body) == (404, b"Not Found")


def test_head_has_the_headers_and_no_body(store: LocalStore, inspector: Inspector) -> None:
    upload(store)

    full = get(inspector, BASE)
    head = get(inspector, BASE, method="HEAD")

    assert (head.status, head.body) == (200, b"")
    assert header(head, "content-length") == str(len(full.body))


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE"])
def test_other_methods_are_405(inspector: Inspector, method: str) -> None:
    response = get(inspector, BASE, method=method)

    assert (response.status, header(response, "allow")) == (405, "GET, HEAD")


# --- the visit and its pages --------------------------------------------------------------------

S = T0  # a session id's start: the session's first request
MIN = 60_000


@pytest.mark.parametrize(
    ("session_id", "first_event", "last_event", "first_received", "last_received", "expected"),
    [
        pytest.param(
            str(S), S + 2000, S + 5 * MIN, S + 10_000, S + 5 * MIN + 3000,
            (S, S + 5 * MIN + 3000), id="session-start-to-last-upload",
        ),
        pytest.param(
            str(S), S + 2000, S + 5 * MIN, S + 10_000, S + 4 * MIN,
            (S, S + 5 * MIN), id="last-event-after-last-upload",
        ),
        pytest.param(
            str(S + 3000), S + 1000, S + 9000, S + 5000, S + 9500,
            (S + 1000, S + 9500), id="browser-clock-behind-the-session-id",
        ),
        pytest.param(
            str(S), None, None, S + 4000, S + 8000, (S, S + 8000), id="no-events",
        ),
        pytest.param(
            "abc", S + 2000, S + 3000, S + 2500, S + 6000,
            (S + 2000, S + 6000), id="session-id-not-a-timestamp",
        ),
        pytest.param(
            "1", S + 2000, S + 3000, S + 2500, S + 6000,
            (S + 2000, S + 6000), id="session-id-too-short",
        ),
        pytest.param(
            str(S - 25 * 60 * MIN), S + 2000, S + 3000, S + 2500, S + 6000,
            (S + 2000, S + 6000), id="session-id-more-than-a-day-earlier",
        ),
        pytest.param(
            str(S - 23 * 60 * MIN), S + 2000, S + 3000, S + 2500, S + 6000,
            (S - 23 * 60 * MIN, S + 6000), id="session-id-hours-earlier",
        ),
        pytest.param(
            str(S), S, S, S, S, (S, S), id="single-event-received-at-once",
        ),
    ],
)  # fmt: skip
def test_visit_span(
    session_id: str,
    first_event: int | None,
    last_event: int | None,
    first_received: int,
    last_received: int,
    expected: tuple[int, int],
) -> None:
    span = visit_span(
        session_id,
        first_event_ms=first_event,
        last_event_ms=last_event,
        first_received_ms=first_received,
        last_received_ms=last_received,
    )

    assert (span.start_ms, span.end_ms) == expected
    assert span.duration_ms == expected[1] - expected[0]


def test_visit_span_never_ends_before_it_starts() -> None:
    # A browser clock far ahead: the events come after the (server-clock) uploads.
    span = visit_span(
        "x", first_event_ms=S + 9000, last_event_ms=S + 9000, first_received_ms=S,
        last_received_ms=S,
    )  # fmt: skip

    assert span == VisitSpan(S, S + 9000)


def test_page_stays_for_full_page_loads() -> None:
    marks = [(S, "/a"), (S + 30_000, "/b"), (S + 95_000, "/c")]

    assert page_stays(marks, last_event_ms=S + 100_000) == [
        PageStay("/a", S, S + 30_000),
        PageStay("/b", S + 30_000, S + 95_000),
        PageStay("/c", S + 95_000, S + 100_000),
    ]


def test_page_stays_follow_spa_url_changes_and_merge_repeats() -> None:
    marks = [
        (S, "/shop"),  # Meta of the page load
        (S + 3, "/shop"),  # the URL-tracking plugin's first report
        (S + 4000, "/shop/cart"),  # pushState
        (S + 9000, "/shop/cart"),  # Meta of a later full snapshot
        (S + 12_000, "/shop"),  # back
    ]

    stays = page_stays(marks, last_event_ms=S + 20_000)

    assert [(p.url, p.start_ms, p.duration_ms) for p in stays] == [
        ("/shop", S, 4000),
        ("/shop/cart", S + 4000, 8000),
        ("/shop", S + 12_000, 8000),
    ]


def test_page_stays_of_a_single_event_session() -> None:
    assert page_stays([(S, "/a")], last_event_ms=S) == [PageStay("/a", S, S)]


def test_page_stays_without_a_last_event_end_at_their_start() -> None:
    assert page_stays([(S, "/a")], last_event_ms=None) == [PageStay("/a", S, S)]
    assert page_stays([(S + 10, "/a")], last_event_ms=S) == [PageStay("/a", S + 10, S + 10)]


def test_page_stays_sort_out_of_order_marks() -> None:
    # Uploads arrived out of order; equal timestamps keep their given order.
    marks = [(S + 50, "/c"), (S, "/a"), (S + 20, "/b"), (S + 20, "/b2")]

    stays = page_stays(marks, last_event_ms=S + 60)

    assert [(p.url, p.start_ms, p.end_ms) for p in stays] == [
        ("/a", S, S + 20),
        ("/b", S + 20, S + 20),
        ("/b2", S + 20, S + 50),
        ("/c", S + 50, S + 60),
    ]


def test_page_stays_of_no_marks() -> None:
    assert page_stays([], last_event_ms=S) == []


def test_list_page_shows_the_visit_span_and_the_replay_length(
    store: LocalStore, inspector: Inspector
) -> None:
    # Events from T0 + 2 s to T0 + 62 s, the last upload received at T0 + 75 s.
    upload_events(
        store,
        [
            {"type": 4, "timestamp": T0 + 2000, "data": {"href": "https://shop.test/a"}},
            {"type": 2, "timestamp": T0 + 2001, "data": {"node": {"type": 0, "childNodes": []}}},
        ],
        T0 + 5000,
    )
    upload_events(store, [url_change(T0 + 62_000, "https://shop.test/b")], T0 + 75_000)

    response = get(inspector, BASE)

    document = parse(response)
    headers = [text_of(th) for th in document.findall(f".//{NS}thead//{NS}th")]
    assert headers[2:5] == ["Visit start", "Visit span", "Replay length"]
    cells = [text_of(td) for td in document.findall(f".//{NS}tbody/{NS}tr/{NS}td")]
    assert cells[2:5] == ["2025-01-01 00:00:00 UTC", "1 min 15 s", "1 min 00 s"]


def test_session_page_shows_the_visit_and_the_pages_with_their_times(
    store: LocalStore, inspector: Inspector
) -> None:
    # The second page's batch is received first; the session id is T0 (its first request).
    upload_events(
        store,
        [
            {"type": 4, "timestamp": T0 + 65_000, "data": {"href": "https://shop.test/pay"}},
            {"type": 2, "timestamp": T0 + 65_001, "data": {"node": {"type": 0}}},
            {"type": 3, "timestamp": T0 + 70_000, "data": {"source": 2, "type": 2, "id": 1}},
        ],
        T0 + 71_000,
    )
    upload_events(
        store,
        [
            {"type": 4, "timestamp": T0 + 1500, "data": {"href": "https://shop.test/"}},
            {"type": 2, "timestamp": T0 + 1501, "data": {"node": {"type": 0}}},
            url_change(T0 + 1502, "https://shop.test/"),
            url_change(T0 + 20_500, "https://shop.test/cart"),
        ],
        T0 + 72_000,
    )

    response = get(inspector, f"{BASE}/{DEVICE}/{SESSION}")

    document = parse(response)
    visit = document.find(f".//{NS}dd[@id='visit']")
    assert visit is not None
    assert text_of(visit).startswith(
        "1 min 12 s, 2025-01-01 00:00:00 UTC to 2025-01-01 00:01:12 UTC"
    )
    replay = document.find(f".//{NS}dd[@id='replay']")
    assert replay is not None and text_of(replay).startswith("1 min 08 s ")
    rows = document.findall(f".//{NS}table[@class='stays']/{NS}tbody/{NS}tr")
    assert [[text_of(td) for td in row.findall(f"{NS}td")][:5] for row in rows] == [
        ["1", "https://shop.test/", "+0:01", "2025-01-01 00:00:01 UTC", "19 s"],
        ["2", "https://shop.test/cart", "+0:20", "2025-01-01 00:00:20 UTC", "44 s"],
        ["3", "https://shop.test/pay", "+1:05", "2025-01-01 00:01:05 UTC", "5 s"],
    ]
    buttons = document.findall(f".//{NS}button[@class='seek']")
    assert [b.get("data-seek-ms") for b in buttons] == [
        str(T0 + 1500),
        str(T0 + 20_500),
        str(T0 + 65_000),
    ]
    # Enabled by inspector.js once the player holds the events.
    assert all(b.get("disabled") == "" for b in buttons)


def test_session_page_without_page_events_lists_the_upload_urls(
    store: LocalStore, inspector: Inspector
) -> None:
    body = json.dumps({"version": 1, "events": [json.dumps(events()[2])]}).encode()
    upload(store, body=body, href="https://shop.test/from-header")

    response = get(inspector, f"{BASE}/{DEVICE}/{SESSION}")

    document = parse(response)
    assert document.find(f".//{NS}table[@class='stays']") is None
    assert b"No recorded event reports the page" in response.body
    pages = document.findall(f".//{NS}ol/{NS}li")
    assert [p.text for p in pages] == ["https://shop.test/from-header"]


def test_session_page_caps_the_page_rows(
    store: LocalStore, inspector: Inspector, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("replay_middleware.inspector._PAGE_LIMIT", 2)
    upload_events(store, [url_change(T0 + i, f"https://shop.test/{i}") for i in range(5)], T0 + 9)

    response = get(inspector, f"{BASE}/{DEVICE}/{SESSION}")

    assert len(parse(response).findall(f".//{NS}table[@class='stays']/{NS}tbody/{NS}tr")) == 2
    assert b"And 3 more page changes, not shown." in response.body


@pytest.mark.parametrize(
    ("ms", "text"),
    [
        pytest.param(0, "0 s", id="zero"),
        pytest.param(400, "< 1 s", id="sub-second"),
        pytest.param(59_999, "59 s", id="seconds"),
        pytest.param(61_000, "1 min 01 s", id="minutes"),
        pytest.param(3_726_000, "1 h 02 min", id="hours"),
    ],
)
def test_durations_read_as_people_write_them(ms: int, text: str) -> None:
    assert _duration(ms) == text


# --- static files ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "content_type"),
    [
        ("inspector.js", "text/javascript; charset=utf-8"),
        ("inspector.css", "text/css; charset=utf-8"),
        (f"vendor/rrweb-player-{PLAYER_VERSION}.min.js", "text/javascript; charset=utf-8"),
        (f"vendor/rrweb-player-{PLAYER_VERSION}.min.css", "text/css; charset=utf-8"),
    ],
)
def test_static_files(
    inspector: Inspector, static_root: Path, name: str, content_type: str
) -> None:
    response = get(inspector, f"{BASE}/static/{name}")

    assert response.status == 200
    assert response.body == (static_root / name).read_bytes()
    assert header(response, "content-type") == content_type
    assert header(response, "x-content-type-options") == "nosniff"


def test_inspector_js_uses_no_eval_or_inline_handlers() -> None:
    source = (STATIC / "inspector.js").read_text()

    for banned in ("eval(", "new Function", "innerHTML", 'setAttribute("on'):
        assert banned not in source


def test_pinned_player_hashes_match_the_vendored_files(vendored_player: Path) -> None:
    for file in PLAYER_FILES:
        assert hashlib.sha256((vendored_player / file.name).read_bytes()).hexdigest() == file.sha256


def test_setup_script_pins_the_same_player() -> None:
    script = (ROOT / "scripts" / "setup.sh").read_text()

    assert f'PLAYER_VERSION="{PLAYER_VERSION}"' in script
    assert f'PLAYER_JS_SHA256="{PLAYER_FILES[0].sha256}"' in script
    assert f'PLAYER_CSS_SHA256="{PLAYER_FILES[1].sha256}"' in script


# --- missing or altered player files -----------------------------------------------------------


def test_missing_player_says_run_make_setup(store: LocalStore, static_root: Path) -> None:
    for file in PLAYER_FILES:
        (static_root / file.name).unlink()
    inspector = Inspector(store, PREFIX, token=TOKEN, static_root=static_root)
    upload(store)

    response = get(inspector, f"{BASE}/{DEVICE}/{SESSION}")

    assert response.status == 200
    assert b"is not installed: run <code>make setup</code>" in response.body
    document = parse(response)
    assert [s.get("src") for s in document.iter(f"{NS}script")] == [f"{BASE}/static/inspector.js"]
    assert document.find(f".//{NS}div[@id='player']") is None
    assert document.find(f".//{NS}button") is None, "nothing to seek without the player"
    assert b"events.json" in response.body
    assert get(inspector, f"{BASE}/static/{PLAYER_FILES[0].name}").status == 404
    assert get(inspector, BASE).status == 200


def test_altered_player_is_not_served(store: LocalStore, static_root: Path) -> None:
    target = static_root / PLAYER_FILES[0].name
    target.write_bytes(target.read_bytes() + b"\nalert(1);")
    inspector = Inspector(store, PREFIX, token=TOKEN, static_root=static_root)
    upload(store)

    response = get(inspector, f"{BASE}/{DEVICE}/{SESSION}")

    assert b"does not match its pinned sha256: run <code>make setup</code>" in response.body
    assert get(inspector, f"{BASE}/static/{PLAYER_FILES[0].name}").status == 404


# --- who may look --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("client", "host"),
    [
        pytest.param("127.0.0.1", "127.0.0.1:8000", id="ipv4"),
        pytest.param("127.8.9.10", "localhost:8000", id="ipv4-loopback-net"),
        pytest.param("::1", "[::1]:8000", id="ipv6"),
        pytest.param("::ffff:127.0.0.1", "localhost", id="ipv4-mapped"),
        pytest.param("127.0.0.1", "myapp.localhost:5000", id="dot-localhost"),
        pytest.param("127.0.0.1", "LOCALHOST.", id="host-case-and-dot"),
    ],
)
def test_loopback_clients_are_served(inspector: Inspector, client: str, host: str) -> None:
    assert get(inspector, BASE, client=client, host=host).status == 200


@pytest.mark.parametrize(
    ("client", "host"),
    [
        pytest.param("192.168.1.20", "192.168.1.10:8000", id="lan"),
        pytest.param("203.0.113.9", "shop.test", id="internet"),
        pytest.param(None, "localhost", id="no-client"),
        pytest.param("unix-socket", "localhost", id="not-an-address"),
        # DNS rebinding: another site's name resolving to 127.0.0.1.
        pytest.param("127.0.0.1", "evil.test", id="rebinding"),
        pytest.param("127.0.0.1", "", id="no-host"),
        pytest.param("127.0.0.1", "localhost.evil.test", id="localhost-prefix"),
    ],
)
def test_other_clients_get_the_plain_404(
    store: LocalStore, inspector: Inspector, client: str | None, host: str
) -> None:
    upload(store)

    for path in (BASE, f"{BASE}/{DEVICE}/{SESSION}", f"{BASE}/{DEVICE}/{SESSION}/events.json"):
        for method in ("GET", "POST"):
            response = get(inspector, path, client=client, host=host, method=method)
            assert (response.status, response.body) == (404, b"Not Found")
            assert header(response, "content-security-policy") is None


@pytest.mark.parametrize(
    ("name", "value", "status"),
    [
        pytest.param("x-forwarded-for", "203.0.113.9", 404, id="xff-remote"),
        pytest.param("x-forwarded-for", "127.0.0.1, 203.0.113.9", 404, id="xff-chain"),
        pytest.param("x-forwarded-for", "127.0.0.1", 200, id="xff-loopback"),
        pytest.param("x-real-ip", "10.1.2.3", 404, id="real-ip-remote"),
        pytest.param("forwarded", "for=203.0.113.9;proto=https", 404, id="forwarded-remote"),
        pytest.param("forwarded", 'for="[::1]:4711"', 200, id="forwarded-ipv6-loopback"),
        pytest.param("forwarded", "for=127.0.0.1, for=unknown", 404, id="forwarded-unknown"),
        pytest.param("forwarded", "proto=https", 404, id="forwarded-without-for"),
    ],
)
def test_reverse_proxy_on_the_same_machine_does_not_expose_it(
    inspector: Inspector, name: str, value: str, status: int
) -> None:
    response = get(inspector, BASE, host="localhost", headers=[(name, value)])

    assert response.status == status


def test_allow_list_admits_addresses_and_networks(store: LocalStore, static_root: Path) -> None:
    inspector = Inspector(
        store, PREFIX, token=TOKEN, allow=("192.168.1.20", "10.0.0.0/8"), static_root=static_root
    )

    # An allowed client may use any Host (the LAN address or name it reached the app by).
    assert get(inspector, BASE, client="192.168.1.20", host="devbox.lan:8000").status == 200
    assert get(inspector, BASE, client="10.9.8.7", host="10.0.0.1").status == 200
    assert get(inspector, BASE, client="192.168.1.21", host="devbox.lan").status == 404
    assert get(inspector, BASE, client="11.0.0.1", host="localhost").status == 404
    forwarded = [("x-forwarded-for", "10.1.1.1")]
    assert get(inspector, BASE, host="localhost", headers=forwarded).status == 200


@pytest.mark.parametrize(
    "allow", [pytest.param(("localhost",), id="name"), pytest.param(("10.0.0.0/33",), id="cidr")]
)
def test_bad_allow_entries_are_refused(store: LocalStore, allow: tuple[str, ...]) -> None:
    with pytest.raises(ValueError, match="is not an IP address or network"):
        Inspector(store, PREFIX, token=TOKEN, allow=allow)


def test_allow_must_not_be_a_string(store: LocalStore) -> None:
    with pytest.raises(ValueError, match="not a string"):
        Inspector(store, PREFIX, token=TOKEN, allow="127.0.0.1")


def test_prefix_with_a_trailing_slash(store: LocalStore, static_root: Path) -> None:
    inspector = Inspector(store, PREFIX + "/", token=TOKEN, static_root=static_root)

    assert inspector.base == BASE
    assert inspector.handles(BASE) and inspector.handles(BASE + "/x")
    assert not inspector.handles(PREFIX + "/inspector")


def test_default_static_root_is_the_package_static_dir(store: LocalStore) -> None:
    assert Inspector(store, PREFIX, token=TOKEN).static_root == static_dir()


# --- the token (issue 8 item 3) -------------------------------------------------------------


PATHS = (
    BASE,
    BASE + "/",
    f"{BASE}/{DEVICE}/{SESSION}",
    f"{BASE}/{DEVICE}/{SESSION}/events.json",
    f"{BASE}/{DEVICE}/{SESSION}/interactions.json",
    f"{BASE}/static/inspector.js",
    f"{BASE}/static/{PLAYER_FILES[0].name}",
)


def cookie_attributes(response: HttpResponse) -> tuple[str, dict[str, str]]:
    """The ``Set-Cookie`` of ``response``: ``name=value`` and its attributes (lower-case)."""
    value = header(response, "set-cookie")
    assert value is not None
    pair, *attributes = [part.strip() for part in value.split(";")]
    parsed = {}
    for attribute in attributes:
        name, _, val = attribute.partition("=")
        parsed[name.lower()] = val
    return pair, parsed


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("method", ["GET", "HEAD", "POST"])
def test_without_token_or_cookie_every_path_is_the_plain_404(
    store: LocalStore, inspector: Inspector, path: str, method: str
) -> None:
    upload(store)

    response = get(inspector, path, method=method, cookie=False)

    assert (response.status, response.body) == (404, b"Not Found")
    assert header(response, "set-cookie") is None
    assert header(response, "content-security-policy") is None


@pytest.mark.parametrize(
    ("query", "cookie"),
    [
        pytest.param("token=" + TOKEN[:-1], None, id="query-prefix"),
        pytest.param("token=" + TOKEN + "x", None, id="query-longer"),
        pytest.param("token=" + TOKEN.upper(), None, id="query-case"),
        pytest.param("token=", None, id="query-empty"),
        pytest.param("token", None, id="query-bare"),
        pytest.param(f"token={TOKEN}&token={TOKEN}", None, id="query-twice"),
        pytest.param("token=%C3%A9" + TOKEN, None, id="query-non-ascii"),
        pytest.param("token=wrong", TOKEN, id="wrong-query-beats-a-good-cookie"),
        pytest.param("", "wrong-token-0123456789abcdef", id="cookie-wrong"),
        pytest.param("", "", id="cookie-empty"),
        pytest.param("", "\u00e9" + TOKEN, id="cookie-non-ascii"),
    ],
)
def test_a_wrong_token_is_the_plain_404(
    store: LocalStore, inspector: Inspector, query: str, cookie: str | None
) -> None:
    upload(store)
    headers = [] if cookie is None else [("cookie", f"{inspector.cookie_name}={cookie}")]

    response = get(inspector, BASE, query=query, headers=headers, cookie=False)

    assert (response.status, response.body) == (404, b"Not Found")
    assert header(response, "set-cookie") is None


def test_the_token_of_another_inspector_is_refused(store: LocalStore, static_root: Path) -> None:
    other = Inspector(store, PREFIX, token="another-token-0123456789", static_root=static_root)
    inspector = Inspector(store, PREFIX, token=TOKEN, static_root=static_root)
    cookie = [("cookie", f"{other.cookie_name}={other.token}")]

    assert get(inspector, BASE, query="token=" + other.token, cookie=False).status == 404
    assert get(inspector, BASE, headers=cookie, cookie=False).status == 404
    # Two servers on one host (cookies ignore the port) keep a cookie each.
    assert other.cookie_name != inspector.cookie_name


def test_token_in_the_query_sets_the_cookie_and_redirects_without_it(
    inspector: Inspector,
) -> None:
    response = get(inspector, BASE, query="token=" + TOKEN, cookie=False)

    assert response.status == 303
    assert header(response, "location") == BASE
    assert response.body == b""
    pair, attributes = cookie_attributes(response)
    assert pair == f"{inspector.cookie_name}={TOKEN}"
    assert inspector.cookie_name.startswith("replay_inspect_")
    assert attributes == {"path": BASE, "httponly": "", "samesite": "Strict"}
    assert header(response, "cache-control") == "no-store"
    assert header(response, "referrer-policy") == "no-referrer"


def test_sign_in_keeps_the_path_and_the_other_query_fields(
    store: LocalStore, inspector: Inspector
) -> None:
    path = f"{BASE}/{HOSTILE_DEVICE}/{SESSION}"
    response = get(inspector, path, query=f"t=5&token={TOKEN}&x=a%20b", cookie=False)

    assert response.status == 303
    location = header(response, "location")
    assert location == f"{BASE}/{quote(HOSTILE_DEVICE, safe='/')}/{SESSION}?t=5&x=a+b"
    assert TOKEN not in location


def test_sign_in_from_a_link_on_another_site_refreshes_instead_of_redirecting(
    inspector: Inspector,
) -> None:
    # The browser would not send the SameSite=Strict cookie on a redirect of a cross-site
    # navigation; a refresh from the inspector's own page is a same-site navigation.
    response = get(
        inspector,
        BASE,
        query=f"token={TOKEN}&a=1&b=2",
        headers=[("sec-fetch-site", "cross-site")],
        cookie=False,
    )

    assert response.status == 200
    assert header(response, "location") is None
    pair, attributes = cookie_attributes(response)
    assert pair == f"{inspector.cookie_name}={TOKEN}"
    assert attributes == {"path": BASE, "httponly": "", "samesite": "Strict"}
    assert header(response, "content-security-policy") == INSPECTOR_CSP
    assert header(response, "referrer-policy") == "no-referrer"
    assert header(response, "content-length") == str(len(response.body))
    [meta] = parse(response).findall(f".//{NS}meta[@http-equiv='refresh']")
    assert meta.get("content") == f"0; url={BASE}?a=1&b=2"
    assert TOKEN.encode() not in response.body
    assert b"<script" not in response.body


@pytest.mark.parametrize("site", ["same-origin", "same-site", "none"])
def test_sign_in_from_this_site_or_the_address_bar_redirects(
    inspector: Inspector, site: str
) -> None:
    response = get(
        inspector,
        BASE,
        query=f"token={TOKEN}",
        headers=[("sec-fetch-site", site)],
        cookie=False,
    )

    assert response.status == 303


def test_sign_in_over_https_sets_a_secure_cookie(inspector: Inspector) -> None:
    request = RequestInfo.from_pairs(
        "GET",
        BASE,
        [("host", "localhost:8443")],
        query_string="token=" + TOKEN,
        scheme="https",
        client="127.0.0.1",
    )

    response = inspector.handle(request)

    _, attributes = cookie_attributes(response)
    assert "secure" in attributes


def test_sign_in_with_head_redirects_too(inspector: Inspector) -> None:
    response = get(inspector, BASE, query="token=" + TOKEN, method="HEAD", cookie=False)

    assert response.status == 303 and header(response, "set-cookie") is not None


def test_sign_in_by_post_is_405(inspector: Inspector) -> None:
    response = get(inspector, BASE, query="token=" + TOKEN, method="POST", cookie=False)

    assert response.status == 405
    assert header(response, "set-cookie") is None


@pytest.mark.parametrize("path", PATHS)
def test_the_cookie_opens_every_path(store: LocalStore, inspector: Inspector, path: str) -> None:
    upload(store)

    response = get(inspector, path)

    assert response.status == 200
    assert header(response, "set-cookie") is None


def test_the_cookie_among_the_apps_cookies(inspector: Inspector) -> None:
    cookie = f"session=abc; {inspector.cookie_name}={TOKEN}; replay_id=x"

    response = get(inspector, BASE, headers=[("cookie", cookie)], cookie=False)

    assert response.status == 200


@pytest.mark.parametrize(
    ("client", "host", "headers"),
    [
        pytest.param("203.0.113.9", "shop.test", [], id="remote-client"),
        pytest.param("127.0.0.1", "evil.test", [], id="rebinding"),
        pytest.param("127.0.0.1", "localhost", [("x-forwarded-for", "203.0.113.9")], id="xff"),
    ],
)
def test_the_loopback_rule_still_applies_with_a_valid_token(
    inspector: Inspector, client: str, host: str, headers: list[tuple[str, str]]
) -> None:
    signed_in = get(inspector, BASE, client=client, host=host, headers=headers)
    sign_in = get(
        inspector, BASE, client=client, host=host, headers=headers, query="token=" + TOKEN
    )

    assert (signed_in.status, sign_in.status) == (404, 404)
    assert header(sign_in, "set-cookie") is None


def test_a_bare_reverse_proxy_on_the_same_machine_gets_404_without_the_token(
    store: LocalStore, inspector: Inspector
) -> None:
    # nginx `proxy_pass http://127.0.0.1:8000;` with no forwarding header: the peer and the
    # Host are loopback, so only the token tells the remote visitor from the developer.
    upload(store)
    for path in PATHS:
        response = get(inspector, path, client="127.0.0.1", host="127.0.0.1:8000", cookie=False)
        assert (response.status, response.body) == (404, b"Not Found")


@pytest.mark.parametrize(
    "token",
    [
        pytest.param("short-token", id="short"),
        pytest.param("", id="empty"),
        pytest.param("token with spaces 0123456789", id="spaces"),
        pytest.param("token;path=/;0123456789", id="cookie-syntax"),
        pytest.param("x" * 257, id="too-long"),
    ],
)
def test_bad_tokens_are_refused(store: LocalStore, token: str) -> None:
    with pytest.raises(ValueError, match="16-256 URL-safe characters"):
        Inspector(store, PREFIX, token=token)


def test_sign_in_url(inspector: Inspector) -> None:
    assert inspector.sign_in_url == f"{BASE}?token={TOKEN}"


def test_configured_token_wins() -> None:
    assert inspector_token_for(TOKEN, "a secret key of some length") == TOKEN


def test_token_derived_from_the_secret_is_stable_and_keeps_the_secret() -> None:
    secret = "the-fleet-secret-key-0123456789"

    token = inspector_token_for(None, secret)

    assert token == derive_inspector_token(secret) == inspector_token_for(None, secret)
    assert token != derive_inspector_token(secret + "x")
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", token)
    assert secret not in token


def test_without_a_secret_the_token_is_random_per_call() -> None:
    first, second = inspector_token_for(None, None), inspector_token_for(None, None)

    assert first != second
    assert len(first) >= 43


# --- the token in the engine: which one, and the start-up URL ----------------------------------


def _engine(tmp_path: Path, **options: Any) -> ReplayEngine:
    return ReplayEngine(ReplayConfig(local_store_dir=str(tmp_path / "store"), **options))


def test_engines_sharing_a_secret_key_share_the_token(tmp_path: Path) -> None:
    # Workers of one app (gunicorn -w 4, uvicorn --workers) accept each other's cookie.
    secret = "the-fleet-secret-key-0123456789"
    first, second = _engine(tmp_path, secret_key=secret), _engine(tmp_path, secret_key=secret)

    assert first.inspector is not None and second.inspector is not None
    assert first.inspector.token == second.inspector.token == derive_inspector_token(secret)
    assert first.inspector.cookie_name == second.inspector.cookie_name


def test_rotated_secret_keys_derive_the_token_from_the_newest(tmp_path: Path) -> None:
    old, new = "the-old-fleet-secret-0123456789", "the-new-fleet-secret-0123456789"
    engine = _engine(tmp_path, secret_key=[old, new])

    assert engine.inspector is not None
    assert engine.inspector.token == derive_inspector_token(new) != derive_inspector_token(old)


def test_engines_without_a_secret_key_have_their_own_token(tmp_path: Path) -> None:
    first, second = _engine(tmp_path), _engine(tmp_path)

    assert first.inspector is not None and second.inspector is not None
    assert first.inspector.token != second.inspector.token


def test_configured_token_is_the_engines(tmp_path: Path) -> None:
    engine = _engine(tmp_path, inspector_token=TOKEN, secret_key="another-secret-0123456789")

    assert engine.inspector is not None and engine.inspector.token == TOKEN


def test_no_inspector_with_an_api_key(tmp_path: Path) -> None:
    engine = _engine(tmp_path, api_key="k" * 32, secret_key="a-secret-key-0123456789")

    assert engine.inspector is None


def _first_request_log(engine: ReplayEngine, caplog: pytest.LogCaptureFixture) -> list[str]:
    caplog.set_level(logging.WARNING, "replay_middleware")
    engine.announce()
    return [r.getMessage() for r in caplog.records if r.name == "replay_middleware"]


def test_startup_log_prints_the_inspector_url_with_the_token(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    engine = _engine(tmp_path)
    assert engine.inspector is not None

    messages = _first_request_log(engine, caplog)

    [line] = [m for m in messages if "?token=" in m]
    assert f"open {BASE}?token={engine.inspector.token} to replay them" in line


def test_startup_log_uses_the_public_origin(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    engine = _engine(tmp_path, public_origin="http://127.0.0.1:8000", inspector_token=TOKEN)

    messages = _first_request_log(engine, caplog)

    assert any(f"open http://127.0.0.1:8000{BASE}?token={TOKEN} " in m for m in messages)


def test_startup_log_never_holds_the_secret_key(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "the-fleet-secret-key-0123456789"

    messages = _first_request_log(_engine(tmp_path, secret_key=secret), caplog)

    assert any(derive_inspector_token(secret) in m for m in messages)
    assert not any(secret in m for m in messages)


def test_startup_log_holds_no_token_with_an_api_key(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    engine = _engine(
        tmp_path, api_key="k" * 32, secret_key="a-secret-key-0123456789", inspector_token=TOKEN
    )

    messages = _first_request_log(engine, caplog)

    assert not any("token" in m for m in messages)
