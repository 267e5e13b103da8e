"""local_store.py: SQLite storage of local-mode uploads (SPEC L1, L2)."""

from __future__ import annotations

import gzip
import json
import logging
import os
import sqlite3
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from replay_middleware import local_store
from replay_middleware.local_store import (
    FILE_NAME,
    MAX_PAGES_PER_SESSION,
    MIN_MAX_BYTES,
    SCHEMA_VERSION,
    LocalStore,
)

DEVICE = "dev-1"
SESSION = "1735689600000"
T0 = 1735689600000
COOKIE = "sessionid=super-secret-cookie-value"
BEARER = "Bearer 0123456789abcdef-secret-key"


def event(kind: int, ts: int, **data: Any) -> dict[str, Any]:
    return {"type": kind, "timestamp": ts, "data": data}


def meta(ts: int, href: str) -> dict[str, Any]:
    return event(4, ts, href=href, width=1280, height=720)


def full(ts: int, text: str = "hello") -> dict[str, Any]:
    return event(2, ts, node={"type": 0, "childNodes": [{"type": 3, "textContent": text}]})


def incr(ts: int, n: int = 0) -> dict[str, Any]:
    return event(3, ts, source=2, type=2, id=n)


def payload(version: int, events: list[dict[str, Any]], *, compress: bool = False) -> bytes:
    raw = json.dumps(
        {"version": version, "events": [json.dumps(e, separators=(",", ":")) for e in events]}
    ).encode()
    return gzip.compress(raw) if compress else raw


def query(device: str = DEVICE, session: str = SESSION, kind: str = "replay", **extra: str) -> str:
    parts = [f"device_id={device}", f"session_id={session}", f"type={kind}"]
    return "&".join(parts + [f"{k}={v}" for k, v in extra.items()])


def fetch_headers(url: str = "https://shop.test/a") -> dict[str, str]:
    return {
        "content-type": "application/json",
        "content-encoding": "gzip",
        "authorization": BEARER,
        "cookie": COOKIE,
        "x-client-version": "1.51.6",
        "x-client-library": "standalone/1.51.6",
        "x-client-url": url,
        "x-client-sample-rate": "1",
        "x-sampling-hash-alg": "xxhash32",
        "x-app-secret": "not-for-the-store",
    }


@pytest.fixture
def store(tmp_path: Path) -> Iterator[LocalStore]:
    with LocalStore(tmp_path / "replays") as s:
        yield s


def add_session(
    store: LocalStore,
    session: str,
    received_ms: int,
    *,
    device: str = DEVICE,
    filler: int = 0,
) -> None:
    """One upload of a replayable session; ``filler`` adds incompressible bytes."""
    text = os.urandom(filler // 2).hex() if filler else "hello"
    events = [meta(received_ms, "https://shop.test/"), full(received_ms + 1, text)]
    result = store.add(query(device, session), {}, payload(1, events), received_ms)
    assert result.error is None, result


# --- the file ----------------------------------------------------------------------------------


def test_construction_touches_no_file(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "replays")
    store.close()

    assert not (tmp_path / "replays").exists()


def test_open_creates_the_file_up_front(tmp_path: Path) -> None:
    with LocalStore(tmp_path / "a" / "b") as store:
        store.open()
        store.open()

        assert store.file.is_file()


def test_open_reports_an_unusable_directory(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")

    with LocalStore(tmp_path / "file") as store, pytest.raises(OSError):
        store.open()


def test_file_is_wal_private_and_ignored_by_git(store: LocalStore) -> None:
    store.open()
    assert store.file == store.directory / FILE_NAME
    with sqlite3.connect(store.file) as other:
        assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert other.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    other.close()
    assert stat.S_IMODE(store.directory.stat().st_mode) == 0o700
    assert stat.S_IMODE(store.file.stat().st_mode) == 0o600
    assert (store.directory / ".gitignore").read_text().splitlines()[-1] == "*"


def test_reopening_keeps_the_recordings(tmp_path: Path) -> None:
    with LocalStore(tmp_path) as first:
        add_session(first, SESSION, T0)
    with LocalStore(tmp_path) as second:
        assert [s.session_id for s in second.sessions()] == [SESSION]
        assert len(second.events(DEVICE, SESSION)) == 2


def test_other_schema_version_is_recreated(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    tmp_path.mkdir(exist_ok=True)
    with sqlite3.connect(tmp_path / FILE_NAME) as old:
        old.execute("CREATE TABLE sessions (whatever TEXT)")
        old.execute("PRAGMA user_version=99")
    old.close()

    with caplog.at_level(logging.WARNING, "replay_middleware"), LocalStore(tmp_path) as store:
        add_session(store, SESSION, T0)
        assert [s.session_id for s in store.sessions()] == [SESSION]
    assert "schema version 99" in caplog.text


@pytest.mark.parametrize("bad", [0, MIN_MAX_BYTES - 1, -5])
def test_max_bytes_below_the_minimum_is_refused(tmp_path: Path, bad: int) -> None:
    with pytest.raises(ValueError, match="max_bytes must be at least"):
        LocalStore(tmp_path, max_bytes=bad)


def test_max_bytes_must_be_an_int(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="max_bytes must be an int"):
        LocalStore(tmp_path, max_bytes=1e9)  # type: ignore[arg-type]


# --- what an upload stores -----------------------------------------------------------------------


def test_gzipped_upload_is_decoded_and_counted(store: LocalStore) -> None:
    body = payload(1, [meta(T0, "https://shop.test/a"), full(T0 + 5)], compress=True)

    result = store.add(query(), fetch_headers(), body, T0 + 100)

    assert (result.kind, result.added, result.duplicates, result.error) == ("replay", 2, 0, None)
    [upload] = store.uploads(DEVICE, SESSION)
    assert (upload.type, upload.received_ms, upload.wire_bytes) == ("replay", T0 + 100, len(body))
    assert (upload.compressed, upload.version, upload.has_raw) == (True, 1, False)
    assert upload.decoded_bytes == len(gzip.decompress(body))
    assert upload.page_url == "https://shop.test/a"
    assert upload.query == query()
    [summary] = store.sessions()
    assert (summary.device_id, summary.session_id) == (DEVICE, SESSION)
    assert (summary.start_ms, summary.last_event_ms) == (T0, T0 + 5)
    assert (summary.event_count, summary.upload_count, summary.wire_bytes) == (2, 1, len(body))


def test_page_exit_duplicates_are_stored_once(store: LocalStore) -> None:
    tail = [incr(T0 + 10, 1), incr(T0 + 20, 2), incr(T0 + 30, 3)]
    store.add(query(), {}, payload(1, [meta(T0, "https://a.test/"), full(T0 + 1)]), T0)

    fetched = store.add(query(), fetch_headers(), payload(1, tail, compress=True), T0 + 40)
    beacon = store.add(query(api_key="k"), {}, payload(2, tail), T0 + 41)

    assert (fetched.added, fetched.duplicates) == (3, 0)
    assert (beacon.added, beacon.duplicates) == (0, 3)
    assert [e["timestamp"] for e in store.events(DEVICE, SESSION)] == [
        T0,
        T0 + 1,
        T0 + 10,
        T0 + 20,
        T0 + 30,
    ]
    [summary] = store.sessions()
    assert (summary.event_count, summary.upload_count) == (5, 3)


def test_same_event_in_another_session_is_not_a_duplicate(store: LocalStore) -> None:
    body = payload(1, [meta(T0, "https://a.test/"), full(T0 + 1)])

    store.add(query(session="1"), {}, body, T0)
    other = store.add(query(session="2"), {}, body, T0)

    assert other.added == 2


def test_events_come_back_in_timestamp_order(store: LocalStore) -> None:
    # A retried batch can arrive after a later one.
    store.add(query(), {}, payload(1, [incr(T0 + 50, 5), incr(T0 + 60, 6)]), T0 + 70)
    store.add(query(), {}, payload(1, [meta(T0, "https://a.test/"), full(T0 + 1)]), T0 + 80)
    store.add(query(), {}, payload(1, [incr(T0 + 50, 7)]), T0 + 90)  # tie: arrival order

    events = store.events(DEVICE, SESSION)

    assert [(e["timestamp"], e["data"].get("id")) for e in events] == [
        (T0, None),
        (T0 + 1, None),
        (T0 + 50, 5),
        (T0 + 50, 7),
        (T0 + 60, 6),
    ]


def test_pages_come_from_meta_url_tracking_and_the_header(store: LocalStore) -> None:
    spa = event(6, T0 + 50, plugin="amplitude/url-tracking@1", payload={"href": "https://a.test/b"})
    store.add(
        query(),
        {"X-Client-Url": "https://a.test/a"},
        payload(1, [meta(T0, "https://a.test/a"), full(T0 + 1), spa]),
        T0 + 10,
    )
    store.add(query(), {"x-client-url": "https://a.test/c"}, payload(1, [incr(T0 + 90)]), T0 + 100)

    [summary] = store.sessions()

    assert summary.pages == ("https://a.test/a", "https://a.test/b", "https://a.test/c")


def url_change(ts: int, href: str) -> dict[str, Any]:
    """The SDK's URL-tracking plugin event (SR src/plugins/url-tracking-plugin.ts)."""
    return event(
        6,
        ts,
        plugin="amplitude/url-tracking@1",
        payload={"href": href, "title": "", "type": "url-change-event"},
    )


def test_page_marks_are_meta_and_url_tracking_events_in_time_order(store: LocalStore) -> None:
    console = event(6, T0 + 30, plugin="rrweb/console@1", payload={"href": "https://a.test/x"})
    # The second page's batch arrives before the first page's (a retried upload).
    store.add(query(), {}, payload(1, [meta(T0 + 60, "https://a.test/c"), incr(T0 + 70)]), T0 + 80)
    store.add(
        query(),
        {"x-client-url": "https://a.test/a"},
        payload(
            1,
            [
                meta(T0, "https://a.test/a"),
                full(T0 + 1),
                url_change(T0 + 2, "https://a.test/a"),
                console,
                url_change(T0 + 40, "https://a.test/b"),
                event(4, T0 + 50, width=1, height=1),  # a Meta event without href
            ],
        ),
        T0 + 90,
    )

    assert store.page_marks(DEVICE, SESSION) == [
        (T0, "https://a.test/a"),
        (T0 + 2, "https://a.test/a"),
        (T0 + 40, "https://a.test/b"),
        (T0 + 60, "https://a.test/c"),
    ]
    assert store.page_marks(DEVICE, "404") == []


def test_summary_keeps_the_first_and_last_event(store: LocalStore) -> None:
    store.add(query(), {}, payload(1, [incr(T0 + 50), incr(T0 + 60)]), T0 + 70)
    store.add(query(), {}, payload(1, [meta(T0 + 5, "https://a.test/"), full(T0 + 6)]), T0 + 80)

    [summary] = store.sessions()

    assert (summary.first_event_ms, summary.last_event_ms) == (T0 + 5, T0 + 60)
    assert (summary.first_received_ms, summary.last_received_ms) == (T0 + 70, T0 + 80)


def test_summary_without_events_has_no_event_times(store: LocalStore) -> None:
    store.add(query(), {}, b"\x1f\x8bbroken", T0 + 5)

    [summary] = store.sessions()

    assert (summary.first_event_ms, summary.last_event_ms) == (None, None)


def test_pages_per_session_are_capped(store: LocalStore) -> None:
    for i in range(MAX_PAGES_PER_SESSION + 20):
        store.add(query(), {"x-client-url": f"https://a.test/{i}"}, payload(1, []), T0 + i)

    assert len(store.sessions()[0].pages) == MAX_PAGES_PER_SESSION


def test_interactions_are_stored_apart_and_deduplicated(store: LocalStore) -> None:
    click = {"type": "click", "x": 1, "y": 2, "timestamp": T0 + 5, "pageUrl": "https://a.test/"}
    scroll = {"type": "scroll", "maxScrollY": 900, "timestamp": T0 + 9}
    body = json.dumps({"version": 1, "events": [scroll, click]}).encode()

    first = store.add(query(kind="interaction", api_key="k"), {}, body, T0 + 10)
    again = store.add(query(kind="interaction"), {"content-type": "text/plain"}, body, T0 + 11)

    assert (first.kind, first.added, again.duplicates) == ("interaction", 2, 2)
    assert store.interactions(DEVICE, SESSION) == [click, scroll]
    assert store.events(DEVICE, SESSION) == []
    [summary] = store.sessions()
    assert (summary.interaction_count, summary.event_count) == (2, 0)
    # No rrweb event: the start is the session id (the SDK's session start in ms).
    assert summary.start_ms == int(SESSION)


def test_undecodable_body_is_kept_raw_with_its_error(store: LocalStore) -> None:
    result = store.add(query(), {"content-encoding": "gzip"}, b"\x1f\x8bnot really gzip", T0)

    assert result.upload_id is not None
    assert result.error is not None and result.error.startswith("invalid gzip data")
    [upload] = store.uploads(DEVICE, SESSION)
    assert (upload.error, upload.has_raw) == (result.error, True)
    assert store.raw_body(upload.id) == b"\x1f\x8bnot really gzip"
    [summary] = store.sessions()
    assert (summary.upload_count, summary.error_count, summary.event_count) == (1, 1, 0)
    assert summary.start_ms == int(SESSION)


def test_decoded_uploads_are_not_kept_raw(store: LocalStore) -> None:
    result = store.add(query(), {}, payload(1, [incr(T0)]), T0)

    assert result.upload_id is not None and store.raw_body(result.upload_id) is None
    assert store.raw_body(12345) is None


def test_invalid_events_are_counted_as_skipped(store: LocalStore) -> None:
    body = json.dumps({"version": 1, "events": ["nope", json.dumps(incr(T0))]}).encode()

    store.add(query(), {}, body, T0)

    [upload] = store.uploads(DEVICE, SESSION)
    assert (upload.added, upload.skipped, upload.error) == (1, 1, None)


def test_cookies_credentials_and_the_api_key_never_reach_the_disk(store: LocalStore) -> None:
    headers = {**fetch_headers(), "Cookie": COOKIE, "Authorization": BEARER}
    store.add(query(api_key="0123456789abcdef-secret-key"), headers, b"\x1f\x8bbad", T0)
    store.add(query(), headers, payload(1, [incr(T0)], compress=True), T0)

    [upload, _] = store.uploads(DEVICE, SESSION)
    assert set(upload.headers) == {
        "content-type",
        "content-encoding",
        "x-client-version",
        "x-client-library",
        "x-client-url",
        "x-client-sample-rate",
        "x-sampling-hash-alg",
    }
    assert "api_key" not in upload.query
    on_disk = b"".join(
        p.read_bytes() for p in store.directory.iterdir() if p.name.startswith(FILE_NAME)
    )
    for secret in (b"super-secret-cookie-value", b"secret-key", b"not-for-the-store"):
        assert secret not in on_disk


def test_missing_ids_are_stored_under_empty_ones(store: LocalStore) -> None:
    result = store.add("", {}, payload(1, [incr(T0)]), T0)

    assert result.added == 1
    assert [(s.device_id, s.session_id) for s in store.sessions()] == [("", "")]


def test_non_numeric_session_without_events_starts_at_its_first_upload(
    store: LocalStore,
) -> None:
    store.add(query(session="abc"), {}, b"junk", T0 + 7)

    assert store.session(DEVICE, "abc").start_ms == T0 + 7  # type: ignore[union-attr]


def test_hostile_ids_and_urls_are_cut(store: LocalStore) -> None:
    long = "x" * 5000

    store.add(query(device=long, session=long), {"x-client-url": long}, payload(1, []), T0)

    [summary] = store.sessions()
    assert len(summary.device_id) == len(summary.session_id) == 256
    assert len(summary.pages[0]) == 2048


def test_unknown_session_reads_empty(store: LocalStore) -> None:
    assert store.session(DEVICE, "nope") is None
    assert store.events(DEVICE, "nope") == []
    assert store.interactions(DEVICE, "nope") == []
    assert store.uploads(DEVICE, "nope") == []


# --- sessions ----------------------------------------------------------------------------------


def test_sessions_are_newest_upload_first_and_limited(store: LocalStore) -> None:
    for i in range(5):
        add_session(store, str(T0 + i), T0 + i * 1000)
    add_session(store, str(T0 + 1), T0 + 9000)  # a new upload makes a session recent again

    assert [s.session_id for s in store.sessions()] == [str(T0 + n) for n in (1, 4, 3, 2, 0)]
    assert [s.session_id for s in store.sessions(limit=2)] == [str(T0 + 1), str(T0 + 4)]


def test_clear_removes_everything(store: LocalStore) -> None:
    add_session(store, SESSION, T0)

    store.clear()

    assert store.sessions() == []
    assert store.events(DEVICE, SESSION) == []
    add_session(store, SESSION, T0)
    assert len(store.sessions()) == 1


# --- the size cap ------------------------------------------------------------------------------


def test_cap_evicts_whole_sessions_oldest_upload_first(tmp_path: Path) -> None:
    cap = 512 * 1024
    with LocalStore(tmp_path, max_bytes=cap) as store:
        for i in range(40):  # about 30 KiB each, 1.2 MiB in all
            add_session(store, str(T0 + i), T0 + i * 1000, filler=30_000)
            assert store.used_bytes() <= cap

        kept = sorted(int(s.session_id) - T0 for s in store.sessions(100))
        assert 5 < len(kept) < 40
        assert kept == list(range(40 - len(kept), 40)), "a suffix: the newest sessions"
        for s in store.sessions(100):  # every kept session is whole
            assert [e["type"] for e in store.events(s.device_id, s.session_id)] == [4, 2]
        gone = str(T0)
        assert store.events(DEVICE, gone) == [] and store.uploads(DEVICE, gone) == []


def test_cap_keeps_a_recently_updated_old_session(tmp_path: Path) -> None:
    with LocalStore(tmp_path, max_bytes=256 * 1024) as store:
        add_session(store, "old", T0, filler=30_000)
        for i in range(30):
            add_session(store, str(i), T0 + (i + 1) * 1000, filler=30_000)
            add_session(store, "old", T0 + (i + 1) * 1000 + 1)  # still active

        assert "old" in {s.session_id for s in store.sessions(100)}


def test_session_alone_over_the_cap_is_not_stored_but_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with LocalStore(tmp_path, max_bytes=MIN_MAX_BYTES) as store:
        add_session(store, SESSION, T0)
        huge = payload(1, [full(T0 + 5, os.urandom(100_000).hex())])

        with caplog.at_level(logging.WARNING, "replay_middleware"):
            result = store.add(query(), {}, huge, T0 + 10)

        assert (result.upload_id, result.error) == (
            None,
            "store full: this session alone exceeds max_bytes",
        )
        assert "local store full" in caplog.text
        [summary] = store.sessions()
        assert (summary.event_count, summary.upload_count, summary.error_count) == (2, 2, 1)
        assert summary.wire_bytes > len(huge)
        assert len(store.uploads(DEVICE, SESSION)) == 1
        assert store.used_bytes() <= MIN_MAX_BYTES


def test_lowered_cap_applies_when_the_store_is_opened(tmp_path: Path) -> None:
    with LocalStore(tmp_path) as big:
        for i in range(20):
            add_session(big, str(i), T0 + i, filler=30_000)
    with LocalStore(tmp_path, max_bytes=256 * 1024) as small:
        assert small.used_bytes() <= 256 * 1024
        assert "19" in {s.session_id for s in small.sessions(100)}
        assert "0" not in {s.session_id for s in small.sessions(100)}


def wal_bytes(store: LocalStore) -> int:
    wal = store.directory / f"{FILE_NAME}-wal"
    return wal.stat().st_size if wal.exists() else 0


def big_upload(ts: int, size: int) -> bytes:
    """Full snapshots of incompressible text, ``size`` bytes in all, in events of 100 KB."""
    return payload(1, [full(ts + i, os.urandom(50_000).hex()) for i in range(size // 100_000)])


def test_rolled_back_upload_leaves_no_wal(tmp_path: Path) -> None:
    # Issue 8: the rolled-back pages stayed in the WAL (here about 2.5 MiB) until a later write.
    cap = 4 << 20
    with LocalStore(tmp_path, max_bytes=cap) as store:
        assert store.add(query(), {}, big_upload(T0, 2_000_000), T0).error is None

        result = store.add(query(), {}, big_upload(T0 + 100, 2_000_000), T0 + 10)

        assert result.error == "store full: this session alone exceeds max_bytes"
        assert wal_bytes(store) == 0
        assert store.used_bytes() <= cap
        [summary] = store.sessions()
        assert (summary.event_count, summary.upload_count, summary.error_count) == (20, 2, 1)


def test_upload_larger_than_the_cap_by_itself_is_not_written(tmp_path: Path) -> None:
    with LocalStore(tmp_path, max_bytes=1 << 20) as store:
        add_session(store, SESSION, T0)

        result = store.add(query(), {}, big_upload(T0 + 100, 3_000_000), T0 + 10)

        assert result.error == "store full: this session alone exceeds max_bytes"
        assert wal_bytes(store) <= (1 << 20) // 4  # its share of the cap, not the 3 MB
        assert store.used_bytes() <= 1 << 20


def test_used_bytes_counts_the_wal(store: LocalStore) -> None:
    add_session(store, SESSION, T0, filler=200_000)

    with sqlite3.connect(store.file) as other:
        pages, free, size = (
            other.execute(f"PRAGMA {name}").fetchone()[0]
            for name in ("page_count", "freelist_count", "page_size")
        )

    assert wal_bytes(store) > 0
    assert store.used_bytes() == (pages - free) * size + wal_bytes(store)


def test_wal_is_kept_under_its_share_of_the_cap(tmp_path: Path) -> None:
    cap = 1 << 20
    with LocalStore(tmp_path, max_bytes=cap) as store:
        for i in range(20):
            add_session(store, str(T0 + i), T0 + i * 1000, filler=100_000)
            assert wal_bytes(store) <= cap // 4
            assert store.used_bytes() <= cap


def test_clear_truncates_the_wal(store: LocalStore) -> None:
    for i in range(5):
        add_session(store, str(T0 + i), T0 + i, filler=200_000)

    store.clear()

    assert wal_bytes(store) == 0


def test_upload_past_a_decoding_limit_is_not_stored(tmp_path: Path) -> None:
    with LocalStore(tmp_path, max_decoded_bytes=1000) as store:
        body = payload(1, [meta(T0, "https://shop.test/")] * 20)

        result = store.add(query(), {}, body, T0)

        assert (result.upload_id, result.too_large) == (None, True)
        assert result.error == "body larger than 1000 bytes"
        assert store.sessions() == []


def test_one_upload_is_decoded_at_a_time(
    store: LocalStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    decoding = most = 0
    lock = threading.Lock()
    real = local_store.decode_payload

    def slow_decode(*args: Any, **kwargs: Any) -> Any:
        nonlocal decoding, most
        with lock:
            decoding += 1
            most = max(most, decoding)
        time.sleep(0.05)
        with lock:
            decoding -= 1
        return real(*args, **kwargs)

    monkeypatch.setattr(local_store, "decode_payload", slow_decode)
    threads = [
        threading.Thread(target=add_session, args=(store, str(T0 + i), T0 + i)) for i in range(6)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert most == 1
    assert len(store.sessions()) == 6


# --- concurrency and failures ------------------------------------------------------------------


def test_concurrent_adds_from_threads(store: LocalStore) -> None:
    threads, per_thread = 8, 25
    barrier = threading.Barrier(threads)
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            barrier.wait()
            for i in range(per_thread):
                # Each thread its own session, plus one shared session with overlapping events.
                store.add(query(session=f"t{n}"), {}, payload(1, [incr(T0 + i, i)]), T0 + i)
                store.add(query(session="shared"), {}, payload(1, [incr(T0 + i, i)]), T0 + i)
                store.sessions()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    pool = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()

    assert errors == []
    counts = {s.session_id: (s.event_count, s.upload_count) for s in store.sessions(100)}
    assert counts.pop("shared") == (per_thread, threads * per_thread)
    assert counts == {f"t{n}": (per_thread, per_thread) for n in range(threads)}


def test_add_never_raises(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = LocalStore(tmp_path)
    store.close()

    with caplog.at_level(logging.ERROR, "replay_middleware"):
        result = store.add(query(), {}, payload(1, [incr(T0)]), T0)

    assert result.upload_id is None
    assert result.error == "store error: ProgrammingError"
    assert "could not save an upload" in caplog.text


def test_add_survives_a_hostile_header_mapping(store: LocalStore) -> None:
    class Exploding(dict[str, str]):
        def items(self) -> Any:
            raise RuntimeError("boom")

    result = store.add(query(), Exploding(), payload(1, []), T0)

    assert result.error == "store error: RuntimeError"
    assert store.sessions() == []
