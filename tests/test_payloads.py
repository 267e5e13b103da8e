"""payloads.py: every upload shape the SDK sends, hostile bodies, and the dedupe fingerprint."""

from __future__ import annotations

import gzip
import json
import tracemalloc
import zlib
from typing import Any

import pytest

from replay_middleware.payloads import (
    MAX_DECODED_BYTES,
    DecodedPayload,
    DecodeError,
    decode_payload,
    fingerprint,
    parse_track_query,
)

REPLAY_QS = "device_id=dev-1&session_id=1735689600000&type=replay"
BEACON_QS = REPLAY_QS + "&api_key=0123456789abcdef"
INTERACTION_QS = "device_id=dev-1&session_id=1735689600000&type=interaction&api_key=k"

META: dict[str, Any] = {
    "type": 4,
    "timestamp": 1735689600100,
    "data": {"href": "https://shop.test/a?x=1"},
}
FULL: dict[str, Any] = {
    "type": 2,
    "timestamp": 1735689600150,
    "data": {"node": {"type": 0, "childNodes": []}},
}
INCR: dict[str, Any] = {
    "type": 3,
    "timestamp": 1735689601000,
    "data": {"source": 2, "type": 2, "id": 7},
}
URL_PLUGIN: dict[str, Any] = {
    "type": 6,
    "timestamp": 1735689602000,
    "data": {
        "plugin": "amplitude/url-tracking@1",
        "payload": {"href": "https://shop.test/b", "type": "url-change-event"},
    },
}
CLICK: dict[str, Any] = {
    "x": 10,
    "y": 20,
    "selector": "#buy",
    "timestamp": 1735689603000,
    "viewportWidth": 1280,
    "viewportHeight": 720,
    "pageUrl": "https://shop.test/a",
    "type": "click",
    "count": 1,
}
SCROLL: dict[str, Any] = {
    "maxScrollX": 0,
    "maxScrollY": 900,
    "maxScrollWidth": 1280,
    "maxScrollHeight": 3000,
    "viewportHeight": 720,
    "viewportWidth": 1280,
    "pageUrl": "https://shop.test/a",
    "timestamp": 1735689604000,
    "type": "scroll",
}


def sdk_event(event: dict[str, Any]) -> str:
    """An rrweb event as the SDK frames it: a JSON string, keys type/timestamp/data."""
    return json.dumps(event, separators=(",", ":"))


def body(version: int, events: list[Any]) -> bytes:
    return json.dumps({"version": version, "events": events}, separators=(",", ":")).encode()


def decoded(result: DecodedPayload | DecodeError) -> DecodedPayload:
    assert isinstance(result, DecodedPayload), result
    return result


def error(result: DecodedPayload | DecodeError) -> str:
    assert isinstance(result, DecodeError), result
    return result.reason


# --- the shapes the SDK sends ----------------------------------------------------------------


def test_gzipped_v1_upload() -> None:
    raw = body(1, [sdk_event(e) for e in (META, FULL, INCR)])

    result = decoded(
        decode_payload(gzip.compress(raw), query_string=REPLAY_QS, content_encoding="gzip")
    )

    assert (result.kind, result.version, result.compressed) == ("replay", 1, True)
    assert result.decoded_bytes == len(raw)
    assert [json.loads(e.json) for e in result.events] == [META, FULL, INCR]
    assert [(e.type, e.timestamp) for e in result.events] == [
        (4, 1735689600100),
        (2, 1735689600150),
        (3, 1735689601000),
    ]
    assert (result.skipped, result.dropped, result.interactions) == (0, 0, ())


def test_event_text_is_kept_as_sent() -> None:
    text = '{"type":3,"timestamp":5,"delay":2,"data":{"source":1}}'

    [event] = decoded(decode_payload(body(1, [text]), query_string=REPLAY_QS)).events

    assert event.json == text


def test_plain_v1_upload_without_transport_compression() -> None:
    raw = body(1, [sdk_event(META), sdk_event(FULL)])

    result = decoded(decode_payload(raw, query_string=REPLAY_QS))

    assert (result.kind, result.version, result.compressed) == ("replay", 1, False)
    assert len(result.events) == 2


def test_v2_page_exit_beacon() -> None:
    result = decoded(decode_payload(body(2, [sdk_event(INCR)]), query_string=BEACON_QS))

    assert (result.kind, result.version, result.compressed) == ("replay", 2, False)
    assert [e.type for e in result.events] == [3]


def test_gzip_is_recognised_by_its_magic_bytes_without_the_header() -> None:
    result = decoded(decode_payload(gzip.compress(body(1, [sdk_event(META)]))))

    assert result.compressed and len(result.events) == 1


@pytest.mark.parametrize(
    ("event", "kind"),
    [pytest.param(CLICK, "click", id="click"), pytest.param(SCROLL, "scroll", id="scroll")],
)
def test_interaction_upload(event: dict[str, Any], kind: str) -> None:
    result = decoded(decode_payload(body(1, [event]), query_string=INTERACTION_QS))

    assert (result.kind, result.events) == ("interaction", ())
    [interaction] = result.interactions
    assert (interaction.kind, interaction.timestamp) == (kind, event["timestamp"])
    assert interaction.page_url == "https://shop.test/a"
    assert json.loads(interaction.json) == event


def test_scroll_beacon_sent_as_text_plain_is_json_all_the_same() -> None:
    # sendBeacon(url, string): Content-Type text/plain;charset=UTF-8 (PROTOCOL §1.3).
    raw = json.dumps({"version": 1, "events": [SCROLL]}).encode()

    result = decoded(decode_payload(raw, query_string=INTERACTION_QS, content_encoding=None))

    assert [i.kind for i in result.interactions] == ["scroll"]


def test_interaction_without_a_type_or_timestamp() -> None:
    result = decoded(decode_payload(body(1, [{"x": 1}]), query_string=INTERACTION_QS))

    [interaction] = result.interactions
    assert (interaction.kind, interaction.timestamp, interaction.page_url) == (
        "unknown",
        None,
        None,
    )


def test_interaction_given_as_a_json_string() -> None:
    result = decoded(decode_payload(body(1, [json.dumps(CLICK)]), query_string=INTERACTION_QS))

    assert [i.kind for i in result.interactions] == ["click"]


def test_utf8_bom_is_accepted() -> None:
    result = decode_payload(b"\xef\xbb\xbf" + body(1, [sdk_event(META)]))

    assert len(decoded(result).events) == 1


# --- page URLs -------------------------------------------------------------------------------


def test_meta_and_url_tracking_events_carry_the_page() -> None:
    result = decoded(decode_payload(body(1, [sdk_event(e) for e in (META, FULL, URL_PLUGIN)])))

    assert [e.href for e in result.events] == [
        "https://shop.test/a?x=1",
        None,
        "https://shop.test/b",
    ]


@pytest.mark.parametrize(
    "data",
    [
        pytest.param({"href": 42}, id="href-not-a-string"),
        pytest.param({"href": ""}, id="href-empty"),
        pytest.param("not-an-object", id="data-not-an-object"),
    ],
)
def test_meta_without_a_usable_href(data: Any) -> None:
    event = {"type": 4, "timestamp": 1, "data": data}

    [decoded_event] = decoded(decode_payload(body(1, [sdk_event(event)]))).events

    assert decoded_event.href is None


def test_other_plugins_carry_no_page() -> None:
    other = {"type": 6, "timestamp": 1, "data": {"plugin": "rrweb/console@1", "payload": {}}}
    no_payload = {"type": 6, "timestamp": 1, "data": {"plugin": "amplitude/url-tracking@1"}}

    events = decoded(decode_payload(body(1, [sdk_event(other), sdk_event(no_payload)]))).events

    assert [e.href for e in events] == [None, None]


def test_long_urls_are_cut() -> None:
    event = {"type": 4, "timestamp": 1, "data": {"href": "https://a.test/" + "x" * 5000}}

    [decoded_event] = decoded(decode_payload(body(1, [sdk_event(event)]))).events

    assert decoded_event.href is not None and len(decoded_event.href) == 2048


# --- hostile bodies --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        pytest.param(b"", "body is not JSON (Expecting value)", id="empty"),
        pytest.param(b"not json", "body is not JSON (Expecting value)", id="not-json"),
        pytest.param(b"\xff\xfe{}", "body is not UTF-8", id="not-utf8"),
        pytest.param(b"[1, 2]", "body is not a JSON object", id="array"),
        pytest.param(b'"text"', "body is not a JSON object", id="string"),
        pytest.param(b'{"version": 1}', 'body has no "events" list', id="no-events"),
        pytest.param(b'{"events": "x"}', 'body has no "events" list', id="events-string"),
        pytest.param(b'{"events": {"a": 1}}', 'body has no "events" list', id="events-object"),
        pytest.param(b'{"events": [], "x": NaN}', "body is not JSON (NaN is not JSON)", id="nan"),
        pytest.param(
            b"[" * 100_000 + b"]" * 100_000, "body is not JSON (nested too deeply)", id="deep"
        ),
        pytest.param(b'{"events": [' + b"9" * 5000 + b"]}", "body is not JSON", id="huge-int"),
    ],
)
def test_bad_bodies_are_errors(raw: bytes, reason: str) -> None:
    assert error(decode_payload(raw, query_string=REPLAY_QS)).startswith(reason)


def test_bad_gzip_is_an_error() -> None:
    result = decode_payload(b"\x1f\x8b" + b"\x00" * 40, content_encoding="gzip")

    assert error(result).startswith("invalid gzip data")
    assert isinstance(result, DecodeError) and result.compressed


def test_truncated_gzip_is_an_error() -> None:
    data = gzip.compress(body(1, [sdk_event(META)] * 50))

    assert error(decode_payload(data[: len(data) // 2])) == "truncated gzip data"


def test_content_encoding_gzip_on_a_plain_body_is_an_error() -> None:
    result = decode_payload(body(1, []), content_encoding="gzip")

    assert error(result) == "Content-Encoding says gzip but the body is not gzip"


def gzip_zeros(size_mib: int) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    chunk = b"\x00" * (1 << 20)
    return b"".join(compressor.compress(chunk) for _ in range(size_mib)) + compressor.flush()


def test_gzip_bomb_is_refused_past_the_default_cap() -> None:
    bomb = gzip_zeros(MAX_DECODED_BYTES // (1 << 20) + 1)  # compresses about 1000:1

    result = decode_payload(bomb, content_encoding="gzip")

    assert error(result) == f"gzip body inflates past {MAX_DECODED_BYTES} bytes"


def test_gzip_bomb_stops_at_the_cap() -> None:
    # 256 MiB of zeros in about 256 KiB: memory must stay near the 1 MiB cap, not the bomb.
    bomb = gzip_zeros(256)
    tracemalloc.start()
    try:
        result = decode_payload(bomb, max_decoded_bytes=1 << 20)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()

    assert error(result) == f"gzip body inflates past {1 << 20} bytes"
    assert peak < 4 << 20


def test_decoded_size_cap_is_configurable() -> None:
    data = gzip.compress(body(1, [sdk_event(META)] * 100))

    assert error(decode_payload(data, max_decoded_bytes=1000)).startswith("gzip body inflates")
    assert error(decode_payload(gzip.decompress(data), max_decoded_bytes=1000)).startswith(
        "body larger than 1000 bytes"
    )


@pytest.mark.parametrize(
    "element",
    [
        pytest.param("not json", id="string-not-json"),
        pytest.param("[1]", id="string-array"),
        pytest.param(42, id="number"),
        pytest.param(None, id="null"),
        pytest.param(["a"], id="array"),
        pytest.param({"type": 7, "timestamp": 1, "data": {}}, id="type-out-of-range"),
        pytest.param({"type": -1, "timestamp": 1, "data": {}}, id="type-negative"),
        pytest.param({"type": True, "timestamp": 1, "data": {}}, id="type-bool"),
        pytest.param({"type": "2", "timestamp": 1, "data": {}}, id="type-string"),
        pytest.param({"type": 2, "timestamp": "1", "data": {}}, id="timestamp-string"),
        pytest.param({"type": 2, "timestamp": 2**60, "data": {}}, id="timestamp-huge"),
        pytest.param({"type": 2, "data": {}}, id="no-timestamp"),
        pytest.param({"type": 2, "timestamp": 1}, id="no-data"),
        pytest.param('{"type": 2, "timestamp": Infinity, "data": {}}', id="timestamp-infinity"),
    ],
)
def test_invalid_replay_events_are_skipped(element: Any) -> None:
    good = sdk_event(META)

    result = decoded(decode_payload(body(1, [good, element, good.replace("100", "101")])))

    assert (len(result.events), result.skipped) == (2, 1)


@pytest.mark.parametrize(
    "element",
    [
        pytest.param("not json", id="string-not-json"),
        pytest.param(42, id="number"),
        pytest.param([CLICK], id="array"),
    ],
)
def test_invalid_interactions_are_skipped(element: Any) -> None:
    result = decoded(decode_payload(body(1, [CLICK, element]), query_string=INTERACTION_QS))

    assert (len(result.interactions), result.skipped) == (1, 1)


def test_replay_events_given_as_objects_are_accepted() -> None:
    [event] = decoded(decode_payload(body(1, [META]))).events

    assert json.loads(event.json) == META


def test_huge_event_counts_are_capped() -> None:
    events = [sdk_event({**INCR, "timestamp": i}) for i in range(1000)]

    result = decoded(decode_payload(body(1, events), max_events=100))

    assert (len(result.events), result.dropped) == (100, 900)
    assert result.events[-1].timestamp == 99


def test_a_million_bad_elements_cost_bounded_work() -> None:
    result = decoded(decode_payload(b'{"events":[' + b"0," * 999_999 + b"0]}"))

    assert (result.events, result.skipped, result.dropped) == ((), 100_000, 900_000)


def test_unknown_version_is_kept_as_none() -> None:
    raw = json.dumps({"version": "1", "events": [sdk_event(META)]}).encode()

    assert decoded(decode_payload(raw)).version is None


def test_lone_surrogates_become_storable_text() -> None:
    # "\ud800" in the outer JSON puts a lone surrogate in the event string; UTF-8 cannot hold it.
    raw = (
        b'{"events":["{\\"type\\":4,\\"timestamp\\":1,'
        b'\\"data\\":{\\"href\\":\\"https://a.test/\\ud800\\"}}"]}'
    )

    [event] = decoded(decode_payload(raw)).events

    assert json.loads(event.json)["timestamp"] == 1
    event.json.encode("utf-8")
    assert event.href == "https://a.test/?"


# --- the dedupe fingerprint -------------------------------------------------------------------


def test_same_event_in_fetch_and_beacon_has_one_fingerprint() -> None:
    events = [sdk_event(e) for e in (META, FULL, INCR)]
    fetched = decoded(decode_payload(gzip.compress(body(1, events)), query_string=REPLAY_QS))
    beacon = decoded(decode_payload(body(2, events), query_string=BEACON_QS))

    assert [e.fingerprint for e in fetched.events] == [e.fingerprint for e in beacon.events]


def test_fingerprint_ignores_key_order_and_whitespace() -> None:
    reordered = json.dumps({"data": INCR["data"], "timestamp": INCR["timestamp"], "type": 3})
    spaced = json.dumps(INCR, indent=2)

    result = decoded(decode_payload(body(1, [sdk_event(INCR), reordered, spaced])))

    assert len({e.fingerprint for e in result.events}) == 1
    assert fingerprint(INCR) == result.events[0].fingerprint
    assert len(fingerprint(INCR)) == 20  # sha1


def test_different_events_have_different_fingerprints() -> None:
    later = {**INCR, "timestamp": INCR["timestamp"] + 1}

    assert fingerprint(INCR) != fingerprint(later)


# --- the query -------------------------------------------------------------------------------


def test_parse_track_query_takes_the_first_value() -> None:
    assert parse_track_query("device_id=a&device_id=b&session_id=1&type=replay") == {
        "device_id": "a",
        "session_id": "1",
        "type": "replay",
    }


def test_parse_track_query_is_bounded() -> None:
    query = "&".join(f"k{i}=v" for i in range(1000))

    assert len(parse_track_query(query)) == 50
