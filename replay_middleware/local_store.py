"""LocalStore: local-mode uploads kept in SQLite on this machine (SPEC L1, L2).

Use it when there is no API key: the local ``{prefix}/track`` endpoint calls
``store.add(query_string, headers, body, received_ms)`` for every upload (the same call as the
in-memory ``MemoryStore``), and the inspector (``inspector.py``) reads sessions and their rrweb
events back. This module does I/O (one SQLite file); the decoding it relies on is the sans-IO
``payloads.py``.

The store:

- is one file, ``<path>/replay.sqlite3`` (stdlib ``sqlite3``), in WAL mode so the inspector's
  reads do not wait for uploads, with a busy timeout so several worker processes can share it;
  the directory is created private (0700) and gets a ``.gitignore`` of ``*``, as recordings are
  the visitors' data;
- is bounded: ``max_bytes`` caps the database's pages in use plus its write-ahead log (the
  ``-wal`` file). The WAL is allowed ``max_bytes // 4`` (at most ``_WAL_LIMIT``): SQLite
  truncates it to that after a checkpoint (``journal_size_limit``), and after a write that
  leaves it larger, and after every rollback, it is checkpointed and truncated at once
  (``wal_checkpoint(TRUNCATE)``; a rolled-back write would otherwise leave its pages there until
  a later write). The pages get the rest: after each upload, while they exceed it, whole
  **sessions** are evicted, least recently uploaded first (a session cut in half cannot be
  replayed: its full snapshot would be gone). The session being written is never evicted for
  another; an upload that would push a single session past the cap on its own is not stored
  (it is counted on the session as an error; one larger than the cap by itself is not even
  written). The file stays near its share (freed pages are reused, not returned to the file
  system);
- decodes with bounded memory (``payloads.py``), one upload at a time
  (``_CONCURRENT_DECODES``): an upload past a decoding limit is not stored at all
  (``AddResult.too_large``: the endpoint answers 413 and the SDK sends it again in halves);
- is thread-safe: one connection behind a lock (ASGI apps may call it from a thread pool);
- is versioned: ``PRAGMA user_version`` holds ``SCHEMA_VERSION``; a file of another version is
  emptied and recreated, with a warning (it holds disposable development data).
- is opened lazily: constructing it touches no file; the first ``add`` or read (or ``open()``)
  creates the directory and the database.

What is kept per upload: device and session ids, the ``type`` query value, received time,
bytes on the wire, the page URL (``X-Client-Url``), the SDK's own headers (an allowlist: never
``Cookie`` or ``Authorization``), and the query string without ``api_key``. Decoded rrweb events
are kept once per session (deduplicated by ``payloads.fingerprint``: page exit sends its tail
twice), interaction events in their own table. A body that cannot be decoded is kept raw, with
the decode error, and counted. ``add`` never raises.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import parse_qsl, urlencode

from .payloads import (
    MAX_DECODED_BYTES,
    META_EVENT,
    PLUGIN_EVENT,
    URL_TRACKING_PLUGIN,
    DecodedPayload,
    DecodeError,
    decode_payload,
    event_href,
    parse_track_query,
)

__all__ = [
    "DEFAULT_MAX_BYTES",
    "FILE_NAME",
    "MIN_MAX_BYTES",
    "SCHEMA_VERSION",
    "AddResult",
    "LocalStore",
    "SessionSummary",
    "UploadRecord",
]

logger = logging.getLogger("replay_middleware")

#: Bumped whenever the tables change; a file with another version is recreated.
SCHEMA_VERSION: Final = 1
FILE_NAME: Final = "replay.sqlite3"
DEFAULT_MAX_BYTES: Final = 256 * 1024 * 1024
#: The empty schema takes about a dozen 4 KiB pages; a smaller cap could never be met.
MIN_MAX_BYTES: Final = 128 * 1024
#: Pages listed per session at most (a hostile client could send endless distinct URLs).
MAX_PAGES_PER_SESSION: Final = 100

# The most the WAL may keep between writes (a quarter of a smaller cap): the size SQLite
# truncates it to after a checkpoint, and past which a write truncates it at once.
_WAL_LIMIT = 8 * 1024 * 1024
# Uploads decoded at once, per store: each may take up to 64 MiB (payloads.MAX_DECODE_MEMORY
# and the body), and each decoding thread competes for the GIL with the app's event loop: with
# two at once, small requests next to bombs took up to 60-120 ms; with one, 30-48 ms
# (BENCHMARKS.md, "Local mode: hostile uploads"). Others wait their turn in their worker
# thread (ASGI and Django's async path decode off the event loop).
_CONCURRENT_DECODES = 1
_BUSY_TIMEOUT_S = 10.0
_MAX_ID = 256
_MAX_HEADER = 2048
# The SDK's own request headers (PROTOCOL §1.2) and a few that help reading an upload. Anything
# else (Cookie, Authorization, the app's custom headers) is never written to disk.
_KEPT_HEADERS = frozenset(
    {
        "accept",
        "content-encoding",
        "content-length",
        "content-type",
        "origin",
        "referer",
        "user-agent",
        "x-client-library",
        "x-client-sample-rate",
        "x-client-url",
        "x-client-version",
        "x-sampling-hash-alg",
    }
)
_SECRET_QUERY = frozenset({"api_key"})

_SCHEMA = (
    """CREATE TABLE sessions (
        id INTEGER PRIMARY KEY,
        device_id TEXT NOT NULL,
        session_id TEXT NOT NULL,
        first_received_ms INTEGER NOT NULL,
        last_received_ms INTEGER NOT NULL,
        first_event_ms INTEGER,
        last_event_ms INTEGER,
        event_count INTEGER NOT NULL DEFAULT 0,
        interaction_count INTEGER NOT NULL DEFAULT 0,
        upload_count INTEGER NOT NULL DEFAULT 0,
        error_count INTEGER NOT NULL DEFAULT 0,
        wire_bytes INTEGER NOT NULL DEFAULT 0,
        UNIQUE (device_id, session_id)
    )""",
    "CREATE INDEX sessions_by_age ON sessions (last_received_ms, id)",
    """CREATE TABLE uploads (
        id INTEGER PRIMARY KEY,
        sid INTEGER NOT NULL,
        type TEXT NOT NULL,
        received_ms INTEGER NOT NULL,
        wire_bytes INTEGER NOT NULL,
        decoded_bytes INTEGER,
        compressed INTEGER NOT NULL,
        version INTEGER,
        page_url TEXT,
        query TEXT NOT NULL,
        headers TEXT NOT NULL,
        events_added INTEGER NOT NULL DEFAULT 0,
        duplicates INTEGER NOT NULL DEFAULT 0,
        skipped INTEGER NOT NULL DEFAULT 0,
        error TEXT,
        raw BLOB
    )""",
    "CREATE INDEX uploads_by_session ON uploads (sid, id)",
    """CREATE TABLE events (
        id INTEGER PRIMARY KEY,
        sid INTEGER NOT NULL,
        upload_id INTEGER NOT NULL,
        timestamp INTEGER NOT NULL,
        type INTEGER NOT NULL,
        fingerprint BLOB NOT NULL,
        json TEXT NOT NULL
    )""",
    "CREATE UNIQUE INDEX events_dedupe ON events (sid, fingerprint)",
    "CREATE INDEX events_by_time ON events (sid, timestamp, id)",
    """CREATE TABLE interactions (
        id INTEGER PRIMARY KEY,
        sid INTEGER NOT NULL,
        upload_id INTEGER NOT NULL,
        timestamp INTEGER,
        kind TEXT NOT NULL,
        page_url TEXT,
        fingerprint BLOB NOT NULL,
        json TEXT NOT NULL
    )""",
    "CREATE UNIQUE INDEX interactions_dedupe ON interactions (sid, fingerprint)",
    """CREATE TABLE pages (
        sid INTEGER NOT NULL,
        url TEXT NOT NULL,
        first_ms INTEGER NOT NULL,
        PRIMARY KEY (sid, url)
    )""",
)
_TABLES = ("sessions", "uploads", "events", "interactions", "pages")


@dataclass(frozen=True)
class AddResult:
    """What ``add`` did with one upload.

    ``upload_id`` is None when nothing could be written (``error`` says why). ``added`` and
    ``duplicates`` count the decoded events (replay or interaction) that were new to the
    session or already stored; ``error`` is the decode error (the raw body was kept), "store
    full" or a storage failure. ``too_large``: the upload was past a decoding limit
    (``payloads.DecodeError.too_large``) and nothing of it was written.
    """

    upload_id: int | None
    kind: str
    added: int = 0
    duplicates: int = 0
    error: str | None = None
    too_large: bool = False


@dataclass(frozen=True)
class SessionSummary:
    """One recorded session, as the inspector lists it.

    ``start_ms`` is the first event's timestamp (else the session id when it is a millisecond
    timestamp, as the SDK's are, else the first upload's arrival); ``first_event_ms`` and
    ``last_event_ms`` the first and last rrweb event's (None without events): the replay's
    length, not the visit's (the inspector's ``visit_span`` is that). ``pages`` are the URLs
    seen, each once, in order of first sight: Meta events' ``data.href``, the SDK's
    URL-tracking plugin events and the ``X-Client-Url`` header. ``wire_bytes`` adds up the
    upload bodies as received.
    """

    device_id: str
    session_id: str
    start_ms: int
    last_event_ms: int | None
    first_received_ms: int
    last_received_ms: int
    pages: tuple[str, ...]
    event_count: int
    interaction_count: int
    upload_count: int
    error_count: int
    wire_bytes: int
    first_event_ms: int | None = None


@dataclass(frozen=True)
class UploadRecord:
    """One stored upload, without its body."""

    id: int
    type: str
    received_ms: int
    wire_bytes: int
    decoded_bytes: int | None
    compressed: bool
    version: int | None
    page_url: str | None
    query: str
    headers: Mapping[str, str]
    added: int
    duplicates: int
    skipped: int
    error: str | None
    has_raw: bool


class LocalStore:
    """Local-mode uploads in one SQLite file; see the module docstring for the contract.

    ``path`` is the directory (created if missing); ``max_bytes`` the size cap (at least
    ``MIN_MAX_BYTES``); ``max_decoded_bytes`` the decompression cap per upload. ``ValueError``
    for a bad cap.

    Construction touches no file: the directory and the database are created on first use
    (so an app in local mode that never records, or a test that builds many middlewares,
    leaves nothing on disk). Call ``open()`` at start-up to fail early instead: it raises
    ``OSError`` or ``sqlite3.Error`` if the file cannot be opened. The reading methods raise
    those too; ``add`` never raises.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        max_decoded_bytes: int = MAX_DECODED_BYTES,
    ) -> None:
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int):
            raise ValueError("max_bytes must be an int")
        if max_bytes < MIN_MAX_BYTES:
            raise ValueError(f"max_bytes must be at least {MIN_MAX_BYTES} (got {max_bytes})")
        self.directory = Path(path)
        self.file = self.directory / FILE_NAME
        self.max_bytes = max_bytes
        self.max_decoded_bytes = max_decoded_bytes
        # The WAL's share of the cap; the pages in use get the rest.
        self._wal_limit = min(_WAL_LIMIT, max_bytes // 4)
        self._pages_cap = max_bytes - self._wal_limit
        self._wal_file = self.directory / f"{FILE_NAME}-wal"
        self._decoding = threading.BoundedSemaphore(_CONCURRENT_DECODES)
        self._lock = threading.RLock()
        self._conn: sqlite3.Connection | None = None
        self._closed = False

    # -- lifecycle ----------------------------------------------------------------------------

    def open(self) -> None:
        """Create the directory and open (or create) the database now; idempotent."""
        with self._lock:
            self._connection()

    def _connection(self) -> sqlite3.Connection:
        """The open connection, opened on first use. Call with the lock held."""
        if self._conn is not None:
            return self._conn
        if self._closed:
            raise sqlite3.ProgrammingError("the local store is closed")
        _prepare_directory(self.directory, self.file)
        conn = sqlite3.connect(
            str(self.file),
            timeout=_BUSY_TIMEOUT_S,
            isolation_level=None,  # we issue BEGIN/COMMIT ourselves
            check_same_thread=False,  # guarded by self._lock
        )
        try:
            self._setup(conn)
            self._trim_wal(conn)  # a WAL left larger by an older version or a crash
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        return conn

    def _setup(self, conn: sqlite3.Connection) -> None:
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":  # pragma: no cover - e.g. a file system without mmap
            logger.warning("replay-middleware: local store %s is not in WAL mode", self.file)
        # NORMAL is durable across application crashes in WAL mode; a power loss may drop the
        # last uploads, which is fine for development recordings.
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute(f"PRAGMA journal_size_limit={self._wal_limit}")
        with _transaction(conn):
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version != SCHEMA_VERSION:
                existing = [
                    row[0]
                    for row in conn.execute(
                        "SELECT name FROM sqlite_master WHERE type='table'"
                        " AND name NOT LIKE 'sqlite_%'"
                    )
                ]
                if existing:
                    logger.warning(
                        "replay-middleware: local store %s has schema version %s (this version "
                        "uses %s); its recordings are discarded",
                        self.file,
                        version,
                        SCHEMA_VERSION,
                    )
                for name in existing:
                    conn.execute(f'DROP TABLE IF EXISTS "{name}"')
                for statement in _SCHEMA:
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            # The cap may have been lowered since the file was written.
            self._evict(conn, keep_sid=None)

    def close(self) -> None:
        """Close the connection (idempotent). The store must not be used afterwards."""
        with self._lock:
            self._closed = True
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> LocalStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def _write_transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock, _transaction(self._connection()) as conn:
            yield conn

    # -- writing ------------------------------------------------------------------------------

    def add(
        self, query_string: str, headers: Mapping[str, str], body: bytes, received_ms: int
    ) -> AddResult:
        """Store one ``/track`` upload; never raises (failures are logged and returned)."""
        kind = "replay"
        try:
            query = parse_track_query(query_string)
            kind = _clip(query.get("type"), 32) or "replay"
            with self._decoding:
                decoded = decode_payload(
                    body,
                    query_string=query_string,
                    content_encoding=_header(headers, "content-encoding"),
                    max_decoded_bytes=self.max_decoded_bytes,
                )
            if isinstance(decoded, DecodeError) and decoded.too_large:
                # Not a broken upload: the SDK splits it and sends the halves (PROTOCOL §2).
                logger.info("replay-middleware: local upload refused: %s", decoded.reason)
                return AddResult(None, kind, error=decoded.reason, too_large=True)
            return self._add(query, kind, query_string, headers, body, received_ms, decoded)
        except Exception as exc:
            logger.exception("replay-middleware: local store could not save an upload")
            return AddResult(None, kind, error=f"store error: {type(exc).__name__}")

    def _add(
        self,
        query: Mapping[str, str],
        kind: str,
        query_string: str,
        headers: Mapping[str, str],
        body: bytes,
        received_ms: int,
        decoded: DecodedPayload | DecodeError,
    ) -> AddResult:
        device_id = _clip(query.get("device_id"), _MAX_ID)
        session_id = _clip(query.get("session_id"), _MAX_ID)
        kept = {
            name: _clip(value, _MAX_HEADER)
            for name, value in ((k.lower(), v) for k, v in headers.items())
            if name in _KEPT_HEADERS and isinstance(value, str)
        }
        page_url = _clip(kept.get("x-client-url"), _MAX_HEADER) or None
        stored_query = urlencode(
            [
                (k, v)
                for k, v in parse_qsl(query_string, keep_blank_values=True)[:50]
                if k not in _SECRET_QUERY
            ]
        )
        received_ms = int(received_ms)
        wire = len(body)
        upload = {
            "type": kind,
            "received_ms": received_ms,
            "wire_bytes": wire,
            "page_url": page_url,
            "query": stored_query,
            "headers": json.dumps(kept, ensure_ascii=False),
        }
        rolled_back = False
        result: AddResult | None = None
        with self._lock:
            with self._write_transaction() as conn:
                sid = self._session(conn, device_id, session_id, received_ms)
                # One larger than the cap by itself is not even written: its pages would only
                # grow the WAL before being rolled back.
                if _stored_size(decoded, body) <= self._pages_cap:
                    result = self._write(conn, sid, kind, upload, body, decoded)
                    if not self._evict(conn, keep_sid=sid):
                        # This one session alone is over the cap: undo the upload.
                        conn.execute("ROLLBACK")
                        conn.execute("BEGIN IMMEDIATE")
                        sid = self._session(conn, device_id, session_id, received_ms)
                        result, rolled_back = None, True
                if result is None:  # not stored: just counted
                    conn.execute(
                        "UPDATE sessions SET upload_count = upload_count + 1, error_count ="
                        " error_count + 1, wire_bytes = wire_bytes + ?, last_received_ms ="
                        " max(last_received_ms, ?) WHERE id = ?",
                        (wire, received_ms, sid),
                    )
                    logger.warning(
                        "replay-middleware: local store full (max_bytes=%d): an upload of "
                        "session %s was not stored",
                        self.max_bytes,
                        session_id,
                    )
            # The rolled-back pages stay in the WAL file until a checkpoint resets it.
            self._trim_wal(conn, force=rolled_back)
        return result or AddResult(
            None, kind, error="store full: this session alone exceeds max_bytes"
        )

    @staticmethod
    def _session(conn: sqlite3.Connection, device_id: str, session_id: str, now: int) -> int:
        conn.execute(
            "INSERT OR IGNORE INTO sessions (device_id, session_id, first_received_ms,"
            " last_received_ms) VALUES (?, ?, ?, ?)",
            (device_id, session_id, now, now),
        )
        row = conn.execute(
            "SELECT id FROM sessions WHERE device_id = ? AND session_id = ?",
            (device_id, session_id),
        ).fetchone()
        return int(row[0])

    def _write(
        self,
        conn: sqlite3.Connection,
        sid: int,
        kind: str,
        upload: dict[str, Any],
        body: bytes,
        decoded: DecodedPayload | DecodeError,
    ) -> AddResult:
        failed = isinstance(decoded, DecodeError)
        cursor = conn.execute(
            "INSERT INTO uploads (sid, type, received_ms, wire_bytes, decoded_bytes, compressed,"
            " version, page_url, query, headers, error, raw)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                sid,
                upload["type"],
                upload["received_ms"],
                upload["wire_bytes"],
                None if isinstance(decoded, DecodeError) else decoded.decoded_bytes,
                int(decoded.compressed),
                None if isinstance(decoded, DecodeError) else decoded.version,
                upload["page_url"],
                upload["query"],
                upload["headers"],
                decoded.reason if isinstance(decoded, DecodeError) else None,
                body if failed else None,
            ),
        )
        upload_id = int(cursor.lastrowid or 0)
        pages: list[tuple[str, int]] = []
        if upload["page_url"]:
            pages.append((upload["page_url"], upload["received_ms"]))
        added = duplicates = new_interactions = 0
        first = last = None
        if isinstance(decoded, DecodedPayload):
            before = conn.total_changes
            conn.executemany(
                "INSERT OR IGNORE INTO events (sid, upload_id, timestamp, type, fingerprint, json)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (
                    (sid, upload_id, e.timestamp, e.type, e.fingerprint, e.json)
                    for e in decoded.events
                ),
            )
            new_events = conn.total_changes - before
            before = conn.total_changes
            conn.executemany(
                "INSERT OR IGNORE INTO interactions (sid, upload_id, timestamp, kind, page_url,"
                " fingerprint, json) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    (sid, upload_id, e.timestamp, e.kind, e.page_url, e.fingerprint, e.json)
                    for e in decoded.interactions
                ),
            )
            new_interactions = conn.total_changes - before
            added = new_events + new_interactions
            duplicates = len(decoded.events) + len(decoded.interactions) - added
            stamps = [e.timestamp for e in decoded.events]
            if stamps:
                first, last = min(stamps), max(stamps)
            pages = [(e.href, e.timestamp) for e in decoded.events if e.href] + pages
            conn.execute(
                "UPDATE uploads SET events_added = ?, duplicates = ?, skipped = ? WHERE id = ?",
                (added, duplicates, decoded.skipped, upload_id),
            )
        else:
            new_events = 0
        self._add_pages(conn, sid, pages)
        conn.execute(
            "UPDATE sessions SET"
            " last_received_ms = max(last_received_ms, :now),"
            " first_event_ms = CASE WHEN :first IS NULL THEN first_event_ms"
            "   ELSE min(coalesce(first_event_ms, :first), :first) END,"
            " last_event_ms = CASE WHEN :last IS NULL THEN last_event_ms"
            "   ELSE max(coalesce(last_event_ms, :last), :last) END,"
            " event_count = event_count + :events,"
            " interaction_count = interaction_count + :interactions,"
            " upload_count = upload_count + 1,"
            " error_count = error_count + :failed,"
            " wire_bytes = wire_bytes + :wire"
            " WHERE id = :sid",
            {
                "now": upload["received_ms"],
                "first": first,
                "last": last,
                "events": new_events,
                "interactions": new_interactions,
                "failed": int(failed),
                "wire": upload["wire_bytes"],
                "sid": sid,
            },
        )
        return AddResult(
            upload_id,
            kind,
            added=added,
            duplicates=duplicates,
            error=decoded.reason if isinstance(decoded, DecodeError) else None,
        )

    @staticmethod
    def _add_pages(conn: sqlite3.Connection, sid: int, pages: Iterable[tuple[str, int]]) -> None:
        count = conn.execute("SELECT count(*) FROM pages WHERE sid = ?", (sid,)).fetchone()[0]
        for url, first_ms in pages:
            if count >= MAX_PAGES_PER_SESSION:
                break
            cursor = conn.execute(
                "INSERT OR IGNORE INTO pages (sid, url, first_ms) VALUES (?, ?, ?)",
                (sid, url, first_ms),
            )
            if cursor.rowcount > 0:
                count += 1
            else:
                conn.execute(
                    "UPDATE pages SET first_ms = min(first_ms, ?) WHERE sid = ? AND url = ?",
                    (first_ms, sid, url),
                )

    @staticmethod
    def _used_bytes(conn: sqlite3.Connection) -> int:
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        free = conn.execute("PRAGMA freelist_count").fetchone()[0]
        size = conn.execute("PRAGMA page_size").fetchone()[0]
        return int((pages - free) * size)

    def _wal_bytes(self) -> int:
        try:
            return self._wal_file.stat().st_size
        except FileNotFoundError:
            return 0

    def _trim_wal(self, conn: sqlite3.Connection, *, force: bool = False) -> None:
        """Checkpoint and truncate the WAL when it is over its share of the cap (or ``force``,
        after a rollback). Outside a transaction, with the lock held. Another process reading
        may keep some frames: they go with a later write."""
        if self._wal_bytes() > (0 if force else self._wal_limit):
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()

    def _evict(self, conn: sqlite3.Connection, *, keep_sid: int | None) -> bool:
        """Evict least recently uploaded sessions until the pages in use fit their share of
        the cap; False if impossible."""
        while self._used_bytes(conn) > self._pages_cap:
            row = conn.execute(
                "SELECT id, device_id, session_id FROM sessions WHERE id IS NOT ?"
                " ORDER BY last_received_ms, id LIMIT 1",
                (keep_sid,),
            ).fetchone()
            if row is None:
                return False
            logger.info(
                "replay-middleware: local store over %d bytes: evicting session %s/%s",
                self.max_bytes,
                row[1],
                row[2],
            )
            self._delete_session(conn, int(row[0]))
        return True

    @staticmethod
    def _delete_session(conn: sqlite3.Connection, sid: int) -> None:
        for table in ("events", "interactions", "pages", "uploads"):
            conn.execute(f"DELETE FROM {table} WHERE sid = ?", (sid,))
        conn.execute("DELETE FROM sessions WHERE id = ?", (sid,))

    def clear(self) -> None:
        """Delete every recording and shrink the file."""
        with self._lock:
            with self._write_transaction() as conn:
                for table in _TABLES:
                    conn.execute(f"DELETE FROM {table}")
            conn.execute("VACUUM")
            self._trim_wal(conn, force=True)  # VACUUM wrote the whole file through the WAL

    # -- reading ------------------------------------------------------------------------------

    def sessions(self, limit: int = 100) -> list[SessionSummary]:
        """The ``limit`` most recently uploaded sessions, newest first."""
        with self._lock:
            conn = self._connection()
            rows = conn.execute(
                f"SELECT {_SESSION_COLUMNS} FROM sessions"
                " ORDER BY last_received_ms DESC, id DESC LIMIT ?",
                (max(0, int(limit)),),
            ).fetchall()
            return [self._summary(conn, row) for row in rows]

    def session(self, device_id: str, session_id: str) -> SessionSummary | None:
        """One session's summary, or None if it is not stored."""
        with self._lock:
            conn = self._connection()
            row = conn.execute(
                f"SELECT {_SESSION_COLUMNS} FROM sessions WHERE device_id = ? AND session_id = ?",
                (device_id, session_id),
            ).fetchone()
            return None if row is None else self._summary(conn, row)

    @staticmethod
    def _summary(conn: sqlite3.Connection, row: tuple[Any, ...]) -> SessionSummary:
        sid, device_id, session_id, first_recv, last_recv, first_ev, last_ev, *counts = row
        pages = tuple(
            r[0]
            for r in conn.execute(
                "SELECT url FROM pages WHERE sid = ? ORDER BY first_ms, rowid", (sid,)
            )
        )
        if first_ev is not None:
            start = int(first_ev)
        elif session_id.isascii() and session_id.isdigit() and len(session_id) <= 16:
            start = int(session_id)  # the SDK's session id is the session's start in ms
        else:
            start = int(first_recv)
        events, interactions, uploads, errors, wire = (int(c) for c in counts)
        return SessionSummary(
            device_id=device_id,
            session_id=session_id,
            start_ms=start,
            last_event_ms=None if last_ev is None else int(last_ev),
            first_received_ms=int(first_recv),
            last_received_ms=int(last_recv),
            pages=pages,
            event_count=events,
            interaction_count=interactions,
            upload_count=uploads,
            error_count=errors,
            wire_bytes=wire,
            first_event_ms=None if first_ev is None else int(first_ev),
        )

    @staticmethod
    def _sid(conn: sqlite3.Connection, device_id: str, session_id: str) -> int | None:
        row = conn.execute(
            "SELECT id FROM sessions WHERE device_id = ? AND session_id = ?",
            (device_id, session_id),
        ).fetchone()
        return None if row is None else int(row[0])

    def events(self, device_id: str, session_id: str) -> list[dict[str, Any]]:
        """The session's rrweb events in timestamp order (arrival order on ties); [] if none."""
        return self._session_json("events", device_id, session_id)

    def interactions(self, device_id: str, session_id: str) -> list[dict[str, Any]]:
        """The session's interaction events (clicks, scrolls) in timestamp order."""
        return self._session_json("interactions", device_id, session_id)

    def _session_json(self, table: str, device_id: str, session_id: str) -> list[dict[str, Any]]:
        assert table in ("events", "interactions")  # a constant, never user input
        rows = self._session_rows(
            device_id, session_id, f"SELECT json FROM {table} WHERE sid = ? ORDER BY timestamp, id"
        )
        return [json.loads(row[0]) for row in rows]

    def _session_rows(
        self, device_id: str, session_id: str, sql: str, *params: object
    ) -> list[tuple[Any, ...]]:
        """The rows of ``sql`` (its first parameter is the session's row id, then ``params``)
        for a stored session; [] when the session is unknown."""
        with self._lock:
            conn = self._connection()
            sid = self._sid(conn, device_id, session_id)
            if sid is None:
                return []
            return list(conn.execute(sql, (sid, *params)).fetchall())

    def page_marks(self, device_id: str, session_id: str) -> list[tuple[int, str]]:
        """``(timestamp, url)`` of every event that reports the page, in timestamp order
        (arrival order on ties): rrweb Meta events (``data.href``, one per page load and per
        full snapshot) and the SDK's URL-tracking plugin events (client-side navigation).
        Uploads that arrived out of order are read back in event order. [] if none."""
        # instr() keeps other plugins' events (console logs: many, large) out of Python.
        rows = self._session_rows(
            device_id,
            session_id,
            "SELECT timestamp, type, json FROM events WHERE sid = ? AND (type = ?"
            " OR (type = ? AND instr(json, ?) > 0)) ORDER BY timestamp, id",
            META_EVENT,
            PLUGIN_EVENT,
            URL_TRACKING_PLUGIN,
        )
        marks: list[tuple[int, str]] = []
        for timestamp, kind, text in rows:
            try:
                event = json.loads(text)
            except ValueError:  # pragma: no cover - only valid JSON is stored
                continue
            # payloads.py owns the rule (the same one that fills the pages table on upload).
            href = event_href(kind, event.get("data") if isinstance(event, dict) else None)
            if href is not None:
                marks.append((int(timestamp), href))
        return marks

    def uploads(self, device_id: str, session_id: str) -> list[UploadRecord]:
        """The session's uploads in arrival order, bodies left out."""
        rows = self._session_rows(
            device_id,
            session_id,
            "SELECT id, type, received_ms, wire_bytes, decoded_bytes, compressed, version,"
            " page_url, query, headers, events_added, duplicates, skipped, error,"
            " raw IS NOT NULL FROM uploads WHERE sid = ? ORDER BY id",
        )
        return [
            UploadRecord(
                id=r[0],
                type=r[1],
                received_ms=r[2],
                wire_bytes=r[3],
                decoded_bytes=r[4],
                compressed=bool(r[5]),
                version=r[6],
                page_url=r[7],
                query=r[8],
                headers=json.loads(r[9]),
                added=r[10],
                duplicates=r[11],
                skipped=r[12],
                error=r[13],
                has_raw=bool(r[14]),
            )
            for r in rows
        ]

    def raw_body(self, upload_id: int) -> bytes | None:
        """The body of an upload that could not be decoded (others are not kept raw)."""
        with self._lock:
            conn = self._connection()
            row = conn.execute("SELECT raw FROM uploads WHERE id = ?", (upload_id,)).fetchone()
        return None if row is None or row[0] is None else bytes(row[0])

    def used_bytes(self) -> int:
        """Bytes of database pages in use plus the WAL file (what ``max_bytes`` caps)."""
        with self._lock:
            return self._used_bytes(self._connection()) + self._wal_bytes()


@contextlib.contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        # Some errors (SQLITE_FULL, ...) have rolled the transaction back already.
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


_SESSION_COLUMNS = (
    "id, device_id, session_id, first_received_ms, last_received_ms, first_event_ms,"
    " last_event_ms, event_count, interaction_count, upload_count, error_count, wire_bytes"
)


def _stored_size(decoded: DecodedPayload | DecodeError, body: bytes) -> int:
    """At least the bytes an upload takes in the database: its events' text, or the raw body
    kept when it could not be decoded."""
    if isinstance(decoded, DecodeError):
        return len(body)
    return sum(len(e.json) for e in decoded.events) + sum(len(e.json) for e in decoded.interactions)


def _clip(value: str | None, limit: int) -> str:
    if not value:
        return ""
    # Lone surrogates cannot be stored as UTF-8; header values decoded as latin-1 are fine.
    return value[:limit].encode("utf-8", "replace").decode("utf-8")


def _header(headers: Mapping[str, str], name: str) -> str | None:
    for key, value in headers.items():
        if key.lower() == name:
            return value
    return None


def _prepare_directory(directory: Path, file: Path) -> None:
    """Create the store's directory (private) with a ``.gitignore``, and the file (0600)."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    ignore = directory / ".gitignore"
    if not ignore.exists():
        with contextlib.suppress(OSError):  # read-only checkouts: not worth failing for
            ignore.write_text("# Created by replay-middleware: local recordings.\n*\n")
    if not file.exists():
        os.close(os.open(file, os.O_CREAT | os.O_WRONLY, 0o600))
