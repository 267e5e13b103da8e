"""payloads.py: every upload shape the SDK sends, hostile bodies, and the dedupe fingerprint."""

from __future__ import annotations

import gzip
import json
import tracemalloc
import zlib
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from replay_middleware import payloads
from replay_middleware.payloads import (
    MAX_DECODED_BYTES,
    MAX_DEPTH,
    MAX_EVENTS,
    DecodedPayload,
    DecodeError,
    InteractionEvent,
    ReplayEvent,
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
    assert (result.skipped, result.interactions) == (0, ())


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
        pytest.param(b"{}", 'body has no "events" list', id="empty-object"),
        pytest.param(
            b'{"events": [], "events": "x"}', 'body has no "events" list', id="events-replaced"
        ),
        pytest.param(
            b'{"events": [], "events": []}',
            'body has more than one "events" list',
            id="events-twice",
        ),
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


def gzip_of(head: bytes, unit: bytes, size_mib: float, tail: bytes = b"") -> bytes:
    """``head``, then ``unit`` repeated to ``size_mib`` MiB, then ``tail``, gzipped (a bomb:
    repetition compresses about 1000:1), without holding the inflated bytes."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    chunk = unit * ((1 << 20) // len(unit))
    out = [compressor.compress(head)]
    out += [compressor.compress(chunk) for _ in range(int(size_mib))]
    out.append(compressor.compress(unit * int((size_mib % 1) * (1 << 20) // len(unit))))
    return b"".join([*out, compressor.compress(tail), compressor.flush()])


def too_large(result: DecodedPayload | DecodeError) -> str:
    assert isinstance(result, DecodeError) and result.too_large, result
    return result.reason


def traced_peak(call: Callable[[], Any]) -> tuple[Any, int]:
    tracemalloc.start()
    try:
        result = call()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


TINY_EVENT = json.dumps(sdk_event({"type": 3, "timestamp": 1, "data": {"source": 2}})).encode()


def test_gzip_past_the_default_cap_is_too_large() -> None:
    bomb = gzip_of(b'{"version":1,"events":["', b"a", MAX_DECODED_BYTES / (1 << 20) + 1, b'"]}')

    result = decode_payload(bomb, content_encoding="gzip")

    assert too_large(result) == f"gzip body inflates past {MAX_DECODED_BYTES} bytes"


def test_the_issue_bomb_stops_early_with_little_memory() -> None:
    # Issue 8: 51 KB of gzip inflating to 50 MB of {} events took 1.3 GB to parse whole.
    bomb = gzip_of(b'{"version":1,"events":[', b"{},", 50, b"{}]}")
    assert len(bomb) < 60_000

    result, peak = traced_peak(lambda: decode_payload(bomb, query_string=REPLAY_QS))

    assert too_large(result) == f"more than {MAX_EVENTS} events"
    assert peak < 16 << 20


def test_gzip_bomb_memory_stays_near_one_piece() -> None:
    # 256 MiB of one string in about 256 KiB: the decoded size cap stops it, and the text
    # held is what was read of it (here 1 MiB), not the bomb.
    bomb = gzip_of(b'{"events":["', b"a", 256, b'"]}')

    result, peak = traced_peak(lambda: decode_payload(bomb, max_decoded_bytes=1 << 20))

    assert too_large(result) == f"gzip body inflates past {1 << 20} bytes"
    assert peak < 6 << 20


def test_not_json_past_the_first_piece_stops_there() -> None:
    bomb = gzip_of(b"", b"\x00", 64)

    result, peak = traced_peak(lambda: decode_payload(bomb))

    assert error(result) == "body is not JSON (Expecting value)"
    assert peak < 4 << 20


def test_plain_body_past_the_cap_is_too_large() -> None:
    raw = body(1, [sdk_event(META)] * 100)

    assert too_large(decode_payload(raw, max_decoded_bytes=1000)) == "body larger than 1000 bytes"


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        pytest.param(
            b'{"events":[' + b",".join([TINY_EVENT] * 6000) + b"]}",
            "more than 5000 events",
            id="many-tiny-events",
        ),
        pytest.param(
            b'{"events":[' + b"0," * 999_999 + b"0]}",
            "more than 5000 events",
            id="a-million-bad-elements",
        ),
        pytest.param(
            # One event of 1 MiB of nested lists: json.loads would build 35 MiB of lists.
            json.dumps(
                {"events": [sdk_event({"type": 2, "timestamp": 1, "data": [[[]]] * 200_000})]}
            ).encode(),
            "decoding needs more than 4194304 bytes of memory",
            id="one-giant-event",
        ),
        pytest.param(
            b'{"events":[{"type":5,"timestamp":1,"data":[' + b'"ab",' * 300_000 + b'"ab"]}]}',
            "decoding needs more than 4194304 bytes of memory",
            id="one-giant-object-element",
        ),
        pytest.param(
            b'{"events":["' + b"a" * (3 << 20) + b'"]}',
            "decoding needs more than 4194304 bytes of memory",
            id="one-huge-string",
        ),
    ],
)
def test_uploads_past_a_limit_are_too_large_with_bounded_memory(raw: bytes, reason: str) -> None:
    result, peak = traced_peak(lambda: decode_payload(raw, max_events=5000, max_memory=4 << 20))

    assert too_large(result) == reason
    assert peak < (4 << 20) + (2 << 20)  # what is counted is an upper bound


def test_a_huge_string_costs_its_size() -> None:
    # A 6 MiB string element is not an event: skipped, after holding the string about twice.
    raw = b'{"events":["' + b"a" * (6 << 20) + b'"]}'

    result, peak = traced_peak(lambda: decode_payload(raw))

    assert decoded(result).skipped == 1
    assert peak < 20 << 20


def test_deep_nesting_in_a_large_event_is_skipped() -> None:
    # Past _C_TOKENS the event is read by _scan: MAX_DEPTH levels (the event object and its
    # data list are two of them), no recursion.
    filler = ",".join(["0"] * 110_000)

    def event(depth: int) -> str:
        return (
            '{"type":2,"timestamp":1,"data":['
            + filler
            + ","
            + "[" * (depth - 2)
            + "]" * (depth - 2)
            + "]}"
        )

    ok, deep = event(MAX_DEPTH), event(MAX_DEPTH + 1)

    result = decoded(decode_payload(body(1, [deep, ok])))

    assert (len(result.events), result.skipped) == (1, 1)


def test_limits_are_configurable() -> None:
    events = [sdk_event({**INCR, "timestamp": i}) for i in range(1000)]

    assert too_large(decode_payload(body(1, events), max_events=100)) == "more than 100 events"
    assert len(decoded(decode_payload(body(1, events), max_events=1000)).events) == 1000
    assert too_large(decode_payload(body(1, events), max_memory=100_000)).startswith(
        "decoding needs more than 100000 bytes"
    )


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


# --- reading a piece at a time, and large events ------------------------------------------------

JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4)
    ),
    max_leaves=25,
)
EVENTS = st.fixed_dictionaries(
    {
        "type": st.sampled_from([2, 3, 4, 6, 9]),
        "timestamp": st.integers(0, 2**54),
        "data": JSON_VALUES,
    }
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    events=st.lists(st.one_of(EVENTS, JSON_VALUES), max_size=5),
    as_strings=st.booleans(),
    ascii_only=st.booleans(),
    indent=st.sampled_from([None, 1]),
    compress=st.booleans(),
    interaction=st.booleans(),
)
def test_decoding_is_the_same_whatever_the_pieces_and_the_parser(
    monkeypatch: pytest.MonkeyPatch,
    events: list[Any],
    as_strings: bool,
    ascii_only: bool,
    indent: int | None,
    compress: bool,
    interaction: bool,
) -> None:
    # Elements as the SDK frames them (JSON strings) or as objects; the body read in pieces of
    # a few bytes (values cut anywhere), and every event read by _scan instead of json.loads.
    elements = [json.dumps(e, ensure_ascii=ascii_only) if as_strings else e for e in events]
    raw = json.dumps({"version": 1, "events": elements}, ensure_ascii=ascii_only, indent=indent)
    data = gzip.compress(raw.encode()) if compress else raw.encode()
    query = INTERACTION_QS if interaction else REPLAY_QS
    expected = decode_payload(data, query_string=query)

    monkeypatch.setattr(payloads, "_CHUNK", 3)
    monkeypatch.setattr(payloads, "_C_TOKENS", -1)

    assert decode_payload(data, query_string=query) == expected
    if isinstance(expected, DecodedPayload):
        kept: list[ReplayEvent | InteractionEvent] = [*expected.events, *expected.interactions]
        assert [e.fingerprint for e in kept] == [fingerprint(json.loads(e.json)) for e in kept]


@pytest.mark.parametrize(
    "raw",
    [
        b'{"events": [1,]}',
        b'{"events": [1 2]}',
        b'{"events": [], }',
        b'{"events" []}',
        b"{events: []}",
        b'{"events": [tru]}',
        b'{"events": [01]}',
        b'{"events": ["\\x"]}',
        b'{"events": ["a\x01"]}',
        b'{"events": [{"a" 1}]}',
        b'{"events": [{1: 2}]}',
        b'{"events": []} []',
        b'{"events": [',
        b'{"events": [{"a": [1, {"b": ',
        b'{"events": [[1',
        b'{"events": [[1 2]]}',
    ],
)
def test_malformed_json_is_refused_whatever_the_pieces(
    monkeypatch: pytest.MonkeyPatch, raw: bytes
) -> None:
    with pytest.raises(ValueError):
        json.loads(raw)
    for chunk in (1, 2, 5, 256 * 1024):
        monkeypatch.setattr(payloads, "_CHUNK", chunk)
        result = decode_payload(raw)
        assert isinstance(result, DecodeError) and not result.too_large, (chunk, result)
        assert result.reason.startswith("body is not JSON"), (chunk, result)


def test_a_large_event_is_read_as_json_loads_reads_it() -> None:
    # A full snapshot past _C_TOKENS goes to _scan (and the pure-Python encoder for its
    # fingerprint); the result is the same as for a small one.
    nodes = [
        {"type": 2, "tagName": "td", "attributes": {"class": f"c{i} \u00e9"}, "id": i}
        for i in range(10_000)
    ]
    event = {"type": 2, "timestamp": 5, "data": {"node": {"childNodes": nodes}, "x": 1.5e-7}}
    text = sdk_event(event)

    [decoded_event] = decoded(decode_payload(body(1, [text]))).events

    assert decoded_event.json == text
    assert decoded_event.fingerprint == fingerprint(event)


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
