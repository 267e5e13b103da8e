"""The sans-IO proxy core on plain values (STYLE 19): tables of inputs and expected decisions.

Numbers in ids refer to the test list of notes/proxy.md §5; the same cases run over real
sockets in test_upstream.py. Which cases do not apply, and why, is in docs/proxy.md.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import re
import subprocess
import sys
import threading
from collections.abc import Mapping
from typing import Any

import pytest

from replay_middleware import ReplayConfig, RequestInfo
from replay_middleware.proxy import (
    CLIENT_BUSY,
    CONFIG_FALLBACK_BODY,
    CONFIG_STALE_IF_ERROR,
    DEFAULT_UPSTREAMS,
    DROPPED_IP,
    PAYLOAD_TOO_LARGE_TEXT,
    Breaker,
    ClientSlots,
    ConfigEntry,
    ConfigPlan,
    ConfigSlot,
    KeyMap,
    Rejection,
    RemoteSampling,
    TrackPlan,
    TrackQuery,
    TrustedProxies,
    UploadCounter,
    UploadDeadlines,
    Upstreams,
    check_framing,
    check_track_key,
    check_track_query,
    client_address,
    client_key,
    config_entry,
    config_is_fresh,
    config_reply,
    config_should_fetch,
    error_response,
    fault_response,
    filter_response_headers,
    forwarded_ip,
    key_id,
    looks_like_a_proxy,
    parse_ip,
    plan_config,
    plan_track,
    redact_url,
    remote_sampling,
    resolve_client_ip,
    sniff_body,
    strip_hop_by_hop,
    upload_deadlines,
    upstream_request_headers,
    upstream_status_is_redirect,
    with_content_length,
)

US_KEY = "0123456789abcdef0123456789abcdef"
EU_KEY = "fedcba9876543210fedcba9876543210"
KEYS = KeyMap({US_KEY: "US", EU_KEY: "eu"})
QUERY = "device_id=dev-1&session_id=1735689600000&type=replay"
SDK_SPLIT_RULE = re.compile(r"payload.*exceed", re.IGNORECASE)  # PROTOCOL §1.4


def req(
    method: str = "POST",
    path: str = "/_replay/track",
    headers: Mapping[str, str] | list[tuple[str, str]] = (),  # type: ignore[assignment]
    query: str = QUERY,
    client: str | None = "203.0.113.7",
) -> RequestInfo:
    pairs = list(headers.items()) if isinstance(headers, Mapping) else list(headers)
    return RequestInfo.from_pairs(method, path, pairs, query_string=query, client=client)


def plan(request: RequestInfo, **kw: Any) -> TrackPlan | Rejection:
    options: dict[str, Any] = {
        "keys": KEYS,
        "upstreams": DEFAULT_UPSTREAMS,
        "trusted": TrustedProxies(),
        "ip_mode": "mask",
        "max_upload_bytes": 10 * 1024 * 1024,
    }
    options.update(kw)
    return plan_track(request, **options)


def test_module_imports_no_network_client_or_framework() -> None:
    code = (
        "import sys, replay_middleware.proxy\n"
        "bad = [m for m in ('httpx', 'httpcore', 'h11', 'starlette', 'django', 'flask') if m in sys.modules]\n"
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


# --- upstream URLs (P1, cases 1, 2, 6) -------------------------------------------------------


def test_default_upstreams_are_amplitudes_regional_endpoints() -> None:
    assert DEFAULT_UPSTREAMS.track_url("US", QUERY) == (
        f"https://api-sr.amplitude.com/sessions/v2/track?{QUERY}"
    )
    assert DEFAULT_UPSTREAMS.track_url("EU", QUERY) == (
        f"https://api-sr.eu.amplitude.com/sessions/v2/track?{QUERY}"
    )
    assert DEFAULT_UPSTREAMS.config_url("US", US_KEY) == (
        f"https://sr-client-cfg.amplitude.com/config/{US_KEY}?config_group=browser"
    )
    assert DEFAULT_UPSTREAMS.config_url("EU", EU_KEY) == (
        f"https://sr-client-cfg.eu.amplitude.com/config/{EU_KEY}?config_group=browser"
    )


def test_upstreams_at_a_local_origin_keep_amplitudes_paths() -> None:
    up = Upstreams.at("http://127.0.0.1:8123/")
    assert up.track_url("US", "a=b") == "http://127.0.0.1:8123/sessions/v2/track?a=b"
    assert up.track_url("EU", "") == "http://127.0.0.1:8123/eu/sessions/v2/track"
    assert up.config_url("EU", "k") == "http://127.0.0.1:8123/eu/config/k?config_group=browser"


@pytest.mark.parametrize(
    ("track", "config"),
    [
        pytest.param({"US": "https://a/t"}, dict(DEFAULT_UPSTREAMS.config), id="missing-zone"),
        pytest.param(
            {"US": "https://a/t", "EU": "https://b/t", "STAGING": "https://c/t"},
            dict(DEFAULT_UPSTREAMS.config),
            id="extra-zone",
        ),
        pytest.param({"US": "https://a/t?x=1", "EU": "https://b/t"}, {}, id="query"),
        pytest.param({"US": "https://a/t/", "EU": "https://b/t"}, {}, id="trailing-slash"),
        pytest.param({"US": "ftp://a/t", "EU": "https://b/t"}, {}, id="scheme"),
    ],
)
def test_upstreams_reject_bad_bases(track: dict[str, str], config: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="Upstreams"):
        Upstreams(track=track, config=config or dict(DEFAULT_UPSTREAMS.config))


@pytest.mark.parametrize(
    ("url", "logged"),
    [
        (
            f"https://api-sr.amplitude.com/sessions/v2/track?{QUERY}&api_key={US_KEY}",
            "https://api-sr.amplitude.com/sessions/v2/track",
        ),
        (
            f"https://sr-client-cfg.amplitude.com/config/{US_KEY}?config_group=browser",
            f"https://sr-client-cfg.amplitude.com/config/{key_id(US_KEY)}",
        ),
    ],
)
def test_redact_url_drops_query_and_key(url: str, logged: str) -> None:
    assert redact_url(url) == logged
    assert US_KEY not in redact_url(url)


# --- keys (P2, cases 3-6, 13, 52) -------------------------------------------------------------


def test_key_map_from_config_with_extra_keys() -> None:
    config = ReplayConfig(api_key=US_KEY, server_zone="eu", secret_key="s" * 32)
    keys = KeyMap.from_config(config, extra={EU_KEY: "US"})
    assert keys.match(US_KEY) == (US_KEY, "EU")
    assert keys.match(EU_KEY) == (EU_KEY, "US")
    assert keys.primary == US_KEY
    assert len(keys) == 2
    assert US_KEY not in repr(keys) and key_id(US_KEY) in repr(keys)


def test_key_map_fails_closed_without_keys() -> None:  # case 52
    with pytest.raises(ValueError, match="at least one"):
        KeyMap({})
    with pytest.raises(ValueError, match="local mode"):
        KeyMap.from_config(ReplayConfig())


@pytest.mark.parametrize(
    "keys",
    [
        pytest.param({"bad key": "US"}, id="space"),
        pytest.param({"../x": "US"}, id="traversal"),
        pytest.param({"": "US"}, id="empty"),
        pytest.param({US_KEY: "STAGING"}, id="zone"),
    ],
)
def test_key_map_rejects_bad_entries(keys: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="KeyMap"):
        KeyMap(keys)


def test_key_lookup_compares_every_key_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, bytes]] = []
    original = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return original(a, b)

    monkeypatch.setattr("replay_middleware.proxy.hmac.compare_digest", spy)
    assert KEYS.match(US_KEY) == (US_KEY, "US")  # found first, yet both are compared
    assert len(calls) == 2
    assert KEYS.match("nope") is None
    assert KEYS.match(None) is None and KEYS.match("") is None


def test_key_id_is_short_stable_and_not_the_key() -> None:
    assert key_id(US_KEY) == key_id(US_KEY)
    assert re.fullmatch(r"k-[0-9a-f]{8}", key_id(US_KEY))
    assert US_KEY[:8] not in key_id(US_KEY)
    assert key_id("\udcff" * 1000).startswith("k-")  # any string, bounded work


@pytest.mark.parametrize(
    ("authorization", "query_key", "expected"),
    [
        pytest.param(f"Bearer {US_KEY}", None, (US_KEY, "US", True), id="bearer"),
        pytest.param(f"bearer  {EU_KEY} ", None, (EU_KEY, "EU", True), id="bearer-case-spaces"),
        pytest.param(None, US_KEY, (US_KEY, "US", False), id="beacon-query"),
        pytest.param(f"Bearer {US_KEY}", US_KEY, (US_KEY, "US", True), id="both-same"),
        pytest.param("Basic dXNlcjpwYXNz", US_KEY, (US_KEY, "US", False), id="basic-is-site-auth"),
        pytest.param(
            f"Bearer {US_KEY}", EU_KEY, Rejection(400, "key_ambiguous"), id="5-both-differ"
        ),
        pytest.param(
            "Bearer site.jwt.token", US_KEY, Rejection(400, "key_ambiguous"), id="13-jwt+query"
        ),
        pytest.param(
            "Bearer site.jwt.token", None, Rejection(403, "key_unknown"), id="13-site-jwt"
        ),
        pytest.param(None, "not-a-key", Rejection(403, "key_unknown"), id="4-unknown-query"),
        pytest.param(None, None, Rejection(403, "key_missing"), id="3-absent"),
        pytest.param("Bearer ", None, Rejection(403, "key_missing"), id="empty-bearer"),
        pytest.param("Basic dXNlcjpwYXNz", None, Rejection(403, "key_missing"), id="basic-only"),
        pytest.param(f"Bearer {US_KEY[:-1]}", None, Rejection(403, "key_unknown"), id="prefix"),
        pytest.param(f"Bearer {US_KEY}x", None, Rejection(403, "key_unknown"), id="longer"),
    ],
)
def test_check_track_key(
    authorization: str | None, query_key: str | None, expected: object
) -> None:
    assert check_track_key(KEYS, authorization, query_key) == expected


# --- track query -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        pytest.param(QUERY, TrackQuery(QUERY, "replay", None), id="sdk"),
        pytest.param(
            f"{QUERY}&api_key={US_KEY}",
            TrackQuery(f"{QUERY}&api_key={US_KEY}", "replay", US_KEY),
            id="beacon",
        ),
        pytest.param(
            "device_id=a&session_id=1&type=interaction&api_key=k",
            TrackQuery("device_id=a&session_id=1&type=interaction&api_key=k", "interaction", "k"),
            id="interaction",
        ),
        pytest.param(
            "type=replay&session_id=1&device_id=a%2Fb+c*d.e_f-g~",
            TrackQuery("type=replay&session_id=1&device_id=a%2Fb+c*d.e_f-g~", "replay", None),
            id="any-order-encoded",
        ),
        pytest.param(
            "device_id=a&session_id=1&type=%72eplay",
            TrackQuery("device_id=a&session_id=1&type=%72eplay", "replay", None),
            id="escaped-type",
        ),
    ],
)
def test_track_query_accepted_verbatim(query: str, expected: TrackQuery) -> None:
    assert check_track_query(query) == expected


@pytest.mark.parametrize(
    "query",
    [
        pytest.param("", id="empty"),
        pytest.param("device_id=a&session_id=1", id="no-type"),
        pytest.param("session_id=1&type=replay", id="no-device"),
        pytest.param("device_id=a&session_id=1&type=other", id="bad-type"),
        pytest.param(f"{QUERY}&region=us", id="2-region"),
        pytest.param(f"{QUERY}&type=replay", id="duplicate"),
        pytest.param("device_id=&session_id=1&type=replay", id="empty-value"),
        pytest.param("device_id&session_id=1&type=replay", id="no-equals"),
        pytest.param("device_id=a%zz&session_id=1&type=replay", id="bad-escape"),
        pytest.param("device_id=a b&session_id=1&type=replay", id="space"),
        pytest.param("device_id=a#b&session_id=1&type=replay", id="hash"),
        pytest.param("device_id=a\r\nb&session_id=1&type=replay", id="crlf"),
        pytest.param("device_id=é&session_id=1&type=replay", id="non-ascii"),
        pytest.param(f"{QUERY}&", id="trailing-amp"),
        pytest.param("device_id=" + "a" * 3000 + "&session_id=1&type=replay", id="too-long"),
    ],
)
def test_track_query_rejected(query: str) -> None:
    assert check_track_query(query) == Rejection(400, "bad_query")


# --- framing and size (cases 16, 23-25, 27, 28) ---------------------------------------------


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        pytest.param({}, None, id="none"),
        pytest.param({"content-length": "1234"}, 1234, id="length"),
        pytest.param({"content-length": " 0 "}, 0, id="zero-ows"),
        pytest.param({"transfer-encoding": "chunked"}, None, id="chunked"),
        pytest.param({"content-length": "10485760"}, 10485760, id="at-cap"),
        pytest.param({"content-length": "10485761"}, Rejection(413, "too_large"), id="23-over-cap"),
        pytest.param({"content-length": "12000000"}, Rejection(413, "too_large"), id="23-12MB"),
        pytest.param(
            {"content-length": "5", "transfer-encoding": "chunked"},
            Rejection(400, "bad_framing"),
            id="16-cl-and-te",
        ),
        pytest.param({"content-length": "5, 7"}, Rejection(400, "bad_framing"), id="16-two-cl"),
        pytest.param({"content-length": "5, 5"}, Rejection(400, "bad_framing"), id="16-dup-cl"),
        pytest.param({"content-length": "-1"}, Rejection(400, "bad_framing"), id="negative"),
        pytest.param({"content-length": "0x10"}, Rejection(400, "bad_framing"), id="hex"),
        pytest.param({"content-length": "١٢"}, Rejection(400, "bad_framing"), id="unicode-digits"),
        pytest.param({"content-length": "9" * 30}, Rejection(400, "bad_framing"), id="huge"),
        pytest.param(
            {"transfer-encoding": "gzip, chunked"}, Rejection(400, "bad_framing"), id="te-gzip"
        ),
    ],
)
def test_check_framing(headers: dict[str, str], expected: object) -> None:
    assert check_framing(headers, 10 * 1024 * 1024) == expected


def test_upload_counter_trips_at_the_cap() -> None:
    counter = UploadCounter(limit=100)
    assert counter.add(60) is None
    assert counter.add(40) is None  # exactly the cap is fine
    assert counter.add(1) == Rejection(413, "too_large")
    assert counter.total == 101


def test_upload_counter_checks_the_declared_length() -> None:  # case 25
    longer = UploadCounter(limit=100, declared=10)
    assert longer.add(11) == Rejection(400, "body_longer_than_declared")
    shorter = UploadCounter(limit=100, declared=10)
    assert shorter.add(9) is None
    assert shorter.finish() == Rejection(400, "body_shorter_than_declared")
    exact = UploadCounter(limit=100, declared=10)
    assert exact.add(10) is None and exact.finish() is None


@pytest.mark.parametrize(
    ("head", "complete", "expected"),
    [
        pytest.param(b"\x1f\x8b\x08\x00", False, True, id="gzip"),
        pytest.param(b"\x1f\x8bgarbage", True, True, id="26-invalid-gzip-passes"),
        pytest.param(b"\x1f", False, None, id="gzip-need-more"),
        pytest.param(b"\x1f", True, False, id="one-byte"),
        pytest.param(b'{"version":1,"events":[]}', True, True, id="json"),
        pytest.param(b" \r\n[1]", True, True, id="json-array-ws"),
        pytest.param(b"", True, True, id="28-empty"),
        pytest.param(b"", False, None, id="nothing-yet"),
        pytest.param(b"   ", False, None, id="blanks-need-more"),
        pytest.param(b"   ", True, False, id="only-blanks"),
        pytest.param(b" " * 2000, False, False, id="too-many-blanks"),
        pytest.param(b"<html>", True, False, id="27-html"),
        pytest.param(b"PK\x03\x04", True, False, id="27-zip"),
        pytest.param(b"\xef\xbb\xbf{}", True, False, id="bom"),
    ],
)
def test_sniff_body(head: bytes, complete: bool, expected: bool | None) -> None:
    assert sniff_body(head, complete) is expected


# --- request headers (P3, cases 12-15, 17) -----------------------------------------------------

SDK_HEADERS = {
    "content-type": "application/json",
    "content-encoding": "gzip",
    "accept": "*/*",
    "authorization": f"Bearer {US_KEY}",
    "x-client-version": "1.51.6",
    "x-client-library": "standalone/1.51.6",
    "x-client-url": "https://shop.example/cart?x=1",
    "x-client-sample-rate": "1",
    "x-sampling-hash-alg": "xxhash32",
    "user-agent": "Mozilla/5.0",
}


def forwarded(headers: Mapping[str, str], **kw: Any) -> list[tuple[str, str]] | Rejection:
    options: dict[str, Any] = {
        "bearer_key": US_KEY,
        "forwarded_for": "203.0.113.0",
        "content_length": None,
        "user_agent": "replay-middleware",
    }
    options.update(kw)
    return upstream_request_headers(headers, **options)


def test_sdk_headers_are_forwarded_with_proxy_set_ones() -> None:
    out = forwarded(SDK_HEADERS, content_length=1234)
    assert out == [
        ("content-type", "application/json"),
        ("content-encoding", "gzip"),
        ("accept", "*/*"),
        ("x-client-version", "1.51.6"),
        ("x-client-library", "standalone/1.51.6"),
        ("x-client-url", "https://shop.example/cart?x=1"),
        ("x-client-sample-rate", "1"),
        ("x-sampling-hash-alg", "xxhash32"),
        ("user-agent", "Mozilla/5.0"),
        ("authorization", f"Bearer {US_KEY}"),
        ("x-forwarded-for", "203.0.113.0"),
        ("accept-encoding", "identity"),
        ("content-length", "1234"),
    ]


@pytest.mark.parametrize(
    "name",
    [
        "cookie",
        "x-csrftoken",
        "host",
        "forwarded",
        "x-forwarded-for",
        "x-forwarded-host",
        "x-forwarded-proto",
        "x-real-ip",
        "true-client-ip",
        "cf-connecting-ip",
        "x-region",
        "origin",
        "referer",
        "accept-encoding",
        "expect",
        "proxy-authorization",
        "content-length",
        "transfer-encoding",
        "keep-alive",
        "te",
        "upgrade",
    ],
)
def test_other_request_headers_never_reach_upstream(name: str) -> None:  # cases 12, 17
    out = forwarded({name: "spoof.example, 1.2.3.4"}, bearer_key=None)
    assert isinstance(out, list)
    assert [v for k, v in out if k == name] in ([], ["203.0.113.0"], ["identity"])
    assert "spoof.example, 1.2.3.4" not in [v for _, v in out]


def test_connection_named_headers_are_dropped_before_proxy_sets_its_own() -> None:  # case 14
    headers = {
        **SDK_HEADERS,
        "connection": "close, X-Forwarded-For, Authorization, x-client-url",
        "x-forwarded-for": "6.6.6.6",
        "keep-alive": "timeout=5",
        "te": "trailers",
        "upgrade": "h2c",
        "proxy-authorization": "Basic eA==",
    }
    out = forwarded(headers)
    assert isinstance(out, list)
    names = [k for k, _ in out]
    assert "x-client-url" not in names  # named by Connection: hop-by-hop
    assert ("x-forwarded-for", "203.0.113.0") in out  # the proxy's, not the client's
    assert ("authorization", f"Bearer {US_KEY}") in out  # from the configured key
    assert not {"connection", "keep-alive", "te", "upgrade", "proxy-authorization"} & set(names)


def test_beacon_without_bearer_gets_no_authorization_upstream() -> None:
    out = forwarded({"content-type": "application/json"}, bearer_key=None)
    assert isinstance(out, list)
    assert "authorization" not in dict(out)
    assert dict(out)["user-agent"] == "replay-middleware"


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("https://x/\r\nX-Injected: 1", id="crlf"),
        pytest.param("https://x/\nX-Injected: 1", id="lf"),
        pytest.param("https://x/\rfoo", id="cr"),
        pytest.param("a\x00b", id="nul"),
        pytest.param("a\x1bb", id="esc"),
        pytest.param("a\x7fb", id="del"),
    ],
)
def test_control_characters_in_forwarded_values_are_rejected(value: str) -> None:  # case 15
    assert forwarded({**SDK_HEADERS, "x-client-url": value}) == Rejection(400, "bad_header")


def test_control_characters_in_dropped_headers_do_not_matter() -> None:
    assert isinstance(forwarded({**SDK_HEADERS, "cookie": "a=\x00"}), list)


def test_tabs_and_obs_text_are_kept_and_ows_trimmed() -> None:
    out = forwarded({"x-client-url": " https://x/\tcafé "}, bearer_key=None)
    assert isinstance(out, list)
    assert ("x-client-url", "https://x/\tcafé") in out


def test_strip_hop_by_hop_handles_repeated_connection_fields() -> None:
    pairs = [
        ("Connection", "x-a"),
        ("connection", " X-B ,"),
        ("X-A", "1"),
        ("x-b", "2"),
        ("x-c", "3"),
    ]
    assert strip_hop_by_hop(pairs) == [("x-c", "3")]


# --- response headers (case 18, 29, 35) --------------------------------------------------------

UPSTREAM_RESPONSE = [
    ("Content-Type", "application/json"),
    ("Content-Length", "12"),
    ("Content-Encoding", "gzip"),
    ("Retry-After", "30"),
    ("X-Session-Replay-Event-Skipped", "4005"),
    ("Cache-Control", "no-cache"),
    ("Set-Cookie", "AWSALB=abc; Path=/"),
    ("Strict-Transport-Security", "max-age=31536000; includeSubDomains"),
    ("Alt-Svc", 'h3=":443"'),
    ("Clear-Site-Data", '"*"'),
    ("Access-Control-Allow-Origin", "*"),
    ("Access-Control-Allow-Credentials", "true"),
    ("Content-Security-Policy", "default-src 'none'"),
    ("Server", "nginx"),
    ("Via", "1.1 cloudfront"),
    ("Connection", "keep-alive"),
    ("Transfer-Encoding", "chunked"),
    ("Date", "Tue, 01 Jan 2030 00:00:00 GMT"),
]


def test_response_headers_allowlist_raw() -> None:
    assert filter_response_headers(UPSTREAM_RESPONSE) == [
        ("content-type", "application/json"),
        ("content-length", "12"),
        ("content-encoding", "gzip"),
        ("retry-after", "30"),
        ("x-session-replay-event-skipped", "4005"),
        ("cache-control", "no-cache"),
    ]


def test_response_headers_for_decoded_bodies_drop_length_and_encoding() -> None:  # case 29
    names = [k for k, _ in filter_response_headers(UPSTREAM_RESPONSE, raw=False)]
    assert "content-length" not in names and "content-encoding" not in names


def test_response_headers_named_by_connection_are_dropped() -> None:
    pairs = [("Connection", "Retry-After"), ("Retry-After", "1"), ("Content-Type", "text/plain")]
    assert filter_response_headers(pairs) == [("content-type", "text/plain")]


# --- client IP (P6, cases 19-21) ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("203.0.113.7", "203.0.113.7"),
        (" 203.0.113.7:5678 ", "203.0.113.7"),
        ("2001:db8::1", "2001:db8::1"),
        ("[2001:db8::1]:443", "2001:db8::1"),
        ("::ffff:198.51.100.9", "198.51.100.9"),
        ("fe80::1%eth0", "fe80::1"),
        ("unknown", None),
        ("testclient", None),
        ("", None),
        (None, None),
        ("1.2.3", None),
    ],
)
def test_parse_ip(text: str | None, expected: str | None) -> None:
    ip = parse_ip(text)
    assert (str(ip) if ip is not None else None) == expected


TRUSTED = TrustedProxies.parse(["10.0.0.0/8", "192.0.2.1", "2001:db8:ffff::/48"])


@pytest.mark.parametrize(
    ("peer", "xff", "expected"),
    [
        pytest.param("203.0.113.7", "1.2.3.4", "203.0.113.7", id="19-spoof-from-untrusted-peer"),
        pytest.param("203.0.113.7", None, "203.0.113.7", id="direct"),
        pytest.param(
            "10.0.0.5", "1.2.3.4, 198.51.100.9", "198.51.100.9", id="20-rightmost-untrusted"
        ),
        pytest.param(
            "10.0.0.5", "198.51.100.9, 10.1.1.1, 192.0.2.1", "198.51.100.9", id="trusted-hops"
        ),
        pytest.param("10.0.0.5", "10.2.2.2, 10.1.1.1", "10.2.2.2", id="all-trusted-leftmost"),
        pytest.param("10.0.0.5", "1.2.3.4, garbage", None, id="garbage-hop"),
        pytest.param("10.0.0.5", "", "10.0.0.5", id="trusted-no-xff"),
        pytest.param("::ffff:10.0.0.5", "198.51.100.9", "198.51.100.9", id="mapped-peer-trusted"),
        pytest.param("2001:db8:ffff::1", "[2001:db8:1::5]:1234", "2001:db8:1::5", id="v6-chain"),
        pytest.param("testclient", "1.2.3.4", None, id="unparsable-peer"),
        pytest.param(None, "1.2.3.4", None, id="no-peer"),
    ],
)
def test_resolve_client_ip(peer: str | None, xff: str | None, expected: str | None) -> None:
    ip = resolve_client_ip(peer, xff, TRUSTED)
    assert (str(ip) if ip is not None else None) == expected


@pytest.mark.parametrize("trusted", [TRUSTED, TrustedProxies()], ids=["trusted", "none-trusted"])
@pytest.mark.parametrize("mode", ["mask", "full", "drop"])
@pytest.mark.parametrize(
    ("peer", "xff"),
    [
        ("203.0.113.7", "1.2.3.4"),
        ("10.0.0.5", "1.2.3.4, 198.51.100.9"),
        ("10.0.0.5", "1.2.3.4, garbage"),
        ("2001:db8:ffff::1", "[2001:db8:1::5]:1234"),
        ("10.0.0.5", ", ".join(["10.1.1.1"] * 60) + ", 198.51.100.9"),  # long: not cached
        (None, None),
    ],
)
def test_client_address_memo_equals_the_functions_it_caches(
    peer: str | None, xff: str | None, trusted: TrustedProxies, mode: str
) -> None:
    ip = resolve_client_ip(peer, xff, trusted)
    expected = (forwarded_ip(ip, mode), client_key(ip))
    assert client_address(peer, xff, trusted, mode) == expected
    assert client_address(peer, xff, trusted, mode) == expected  # from the cache


def test_trusted_proxies_parse_rejects_garbage_and_maps_v4_in_v6() -> None:
    with pytest.raises(ValueError, match="trusted_proxies"):
        TrustedProxies.parse(["10.0.0.0/8", "not-an-ip"])
    mapped = TrustedProxies.parse(["::ffff:10.0.0.0/104"])
    assert ipaddress.ip_address("10.9.9.9") in mapped
    assert "10.9.9.9" not in mapped  # only addresses, not strings


@pytest.mark.parametrize(
    ("ip", "mode", "expected"),
    [
        pytest.param("198.51.100.7", "mask", "198.51.100.0", id="21-mask-v4"),
        pytest.param("2001:db8:1234:5678::1", "mask", "2001:db8:1234::", id="21-mask-v6"),
        pytest.param("::ffff:198.51.100.7", "mask", "198.51.100.0", id="21-mask-mapped"),
        pytest.param("198.51.100.7", "full", "198.51.100.7", id="full"),
        pytest.param("2001:db8::1", "full", "2001:db8::1", id="full-v6"),
        pytest.param("198.51.100.7", "drop", DROPPED_IP, id="21-drop"),
        pytest.param(None, "mask", DROPPED_IP, id="unknown-mask"),
        pytest.param(None, "full", DROPPED_IP, id="unknown-full"),
    ],
)
def test_forwarded_ip(ip: str | None, mode: str, expected: str) -> None:
    assert forwarded_ip(parse_ip(ip), mode) == expected
    assert expected  # never an absent header (Matomo lesson)


# --- plans (cases 1-7, 9, 23, 48) ---------------------------------------------------------------


def test_plan_track_us() -> None:  # case 1
    p = plan(req(headers={**SDK_HEADERS, "cookie": "sessionid=s", "content-length": "99"}))
    assert isinstance(p, TrackPlan)
    assert p.url == f"https://api-sr.amplitude.com/sessions/v2/track?{QUERY}"
    assert (p.zone, p.content_length, p.type, p.key_id) == ("US", 99, "replay", key_id(US_KEY))
    assert ("x-forwarded-for", "203.0.113.0") in p.headers
    assert "cookie" not in dict(p.headers)
    assert US_KEY not in repr(p)


def test_plan_track_eu_key_ignores_client_region_hints() -> None:  # case 2
    p = plan(req(headers={"authorization": f"Bearer {EU_KEY}", "x-region": "us"}))
    assert isinstance(p, TrackPlan)
    assert p.url.startswith("https://api-sr.eu.amplitude.com/sessions/v2/track?")
    assert plan(req(headers={"authorization": f"Bearer {EU_KEY}"}, query=f"{QUERY}&region=us")) == (
        Rejection(400, "bad_query")
    )


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"])
def test_plan_track_other_methods_405(method: str) -> None:  # case 7
    rejection = plan(req(method=method, headers={"authorization": f"Bearer {US_KEY}"}))
    assert rejection == Rejection(405, "method_not_allowed", allow="POST")
    assert isinstance(rejection, Rejection)
    assert ("allow", "POST") in rejection.response().headers


def test_plan_track_checks_the_key_before_the_size() -> None:
    big = {"content-length": "99999999"}
    assert plan(req(headers=big)) == Rejection(403, "key_missing")
    assert plan(req(headers={**big, "authorization": f"Bearer {US_KEY}"})) == Rejection(
        413, "too_large"
    )


def test_plan_track_header_injection_is_a_client_error() -> None:
    headers = {"authorization": f"Bearer {US_KEY}", "x-client-url": "a\r\nb"}
    assert plan(req(headers=headers)) == Rejection(400, "bad_header")


def test_plan_track_client_ip_modes() -> None:
    headers = {"authorization": f"Bearer {US_KEY}", "x-forwarded-for": "1.2.3.4, 198.51.100.9"}
    trusted = TrustedProxies.parse(["10.0.0.0/8"])
    for mode, expected in (
        ("mask", "198.51.100.0"),
        ("full", "198.51.100.9"),
        ("drop", DROPPED_IP),
    ):
        p = plan(req(headers=headers, client="10.0.0.2"), trusted=trusted, ip_mode=mode)
        assert isinstance(p, TrackPlan)
        assert dict(p.headers)["x-forwarded-for"] == expected


def test_plan_config() -> None:  # case 6
    p = plan_config(
        req("GET", f"/_replay/config/{EU_KEY}", query="config_group=browser"),
        EU_KEY,
        keys=KEYS,
        upstreams=DEFAULT_UPSTREAMS,
    )
    assert p == ConfigPlan(
        url=f"https://sr-client-cfg.eu.amplitude.com/config/{EU_KEY}?config_group=browser",
        key=EU_KEY,
        zone="EU",
        key_id=key_id(EU_KEY),
        head=False,
    )
    head = plan_config(req("HEAD", query=""), US_KEY, keys=KEYS, upstreams=DEFAULT_UPSTREAMS)
    assert isinstance(head, ConfigPlan) and head.head


@pytest.mark.parametrize(
    ("method", "query", "key", "expected"),
    [
        pytest.param(
            "POST",
            "config_group=browser",
            US_KEY,
            Rejection(405, "method_not_allowed", allow="GET, HEAD"),
            id="7-post",
        ),
        pytest.param(
            "GET",
            "config_group=browser&x=1",
            US_KEY,
            Rejection(400, "bad_query"),
            id="48-extra-query",
        ),
        pytest.param(
            "GET", "config_group=other", US_KEY, Rejection(400, "bad_query"), id="48-other-group"
        ),
        pytest.param(
            "GET", "api_key=" + US_KEY, US_KEY, Rejection(400, "bad_query"), id="48-docs-form"
        ),
        pytest.param(
            "GET", "config_group=browser", "unknown", Rejection(403, "key_unknown"), id="6-unknown"
        ),
        pytest.param("GET", "", "../../admin", Rejection(403, "key_unknown"), id="9-dotdot"),
        pytest.param("GET", "", "..%2F..%2Fadmin", Rejection(403, "key_unknown"), id="9-encoded"),
        pytest.param("GET", "", "%252e%252e%252f", Rejection(403, "key_unknown"), id="9-double"),
        pytest.param("GET", "", f"{US_KEY}/../x", Rejection(403, "key_unknown"), id="9-suffix"),
        pytest.param("GET", "", f"{US_KEY};x=1", Rejection(403, "key_unknown"), id="9-params"),
        pytest.param("GET", "", f"{US_KEY}\\", Rejection(403, "key_unknown"), id="9-backslash"),
    ],
)
def test_plan_config_rejections(method: str, query: str, key: str, expected: Rejection) -> None:
    got = plan_config(req(method, query=query), key, keys=KEYS, upstreams=DEFAULT_UPSTREAMS)
    assert got == expected


# --- responses and faults (P4, P5) ------------------------------------------------------------


def test_413_wording_makes_the_sdk_split_the_batch() -> None:  # case 23
    response = Rejection(413, "too_large").response()
    assert response.status == 413
    assert SDK_SPLIT_RULE.search(response.body.decode())
    assert SDK_SPLIT_RULE.search(PAYLOAD_TOO_LARGE_TEXT)


def test_403_body_says_nothing_about_keys() -> None:  # case 3
    for reason in ("key_unknown", "key_missing"):
        response = Rejection(403, reason).response()
        assert json.loads(response.body) == {"error": "forbidden"}
        assert ("cache-control", "no-store") in response.headers


@pytest.mark.parametrize(
    ("kind", "status", "retry_after"),
    [
        ("upstream_connect", 502, None),
        ("upstream_reset", 502, None),
        ("upstream_redirect", 502, None),
        ("upstream_error", 502, None),
        ("upstream_timeout", 504, None),
        ("pool_exhausted", 503, "1"),
        ("client_timeout", 408, None),
        ("something_new", 502, None),
    ],
)
def test_fault_statuses_are_retryable_by_the_sdk(
    kind: str, status: int, retry_after: str | None
) -> None:
    response = fault_response(kind)
    assert response.status == status
    assert status in (408, 502, 503, 504)  # PROTOCOL §2: retried; never another 4xx
    assert dict(response.headers).get("retry-after") == retry_after
    assert json.loads(response.body) == {"error": kind}


def test_breaker_open_carries_retry_after() -> None:
    assert dict(fault_response("breaker_open", retry_after=7).headers)["retry-after"] == "7"
    assert dict(error_response(400, "x").headers)["content-type"] == "application/json"


@pytest.mark.parametrize(
    ("status", "redirect"),
    [
        (200, False),
        (301, True),
        (302, True),
        (307, True),
        (308, True),
        (304, True),
        (413, False),
        (500, False),
    ],
)
def test_upstream_redirects_are_not_passed_on(status: int, redirect: bool) -> None:  # case 11
    assert upstream_status_is_redirect(status) is redirect


def test_breaker_opens_after_threshold_and_half_opens() -> None:  # case 33
    b = Breaker(threshold=3, open_for=10.0)
    for t in (0.0, 1.0):
        b = b.record(False, t)
        assert b.retry_after(t) is None
    b = b.record(False, 2.0)
    assert b.retry_after(2.0) == 10
    assert b.retry_after(11.5) == 1
    assert b.retry_after(12.0) is None  # half-open: requests go up again
    b = b.record(False, 12.5)  # one more failure re-opens at once
    assert b.retry_after(12.5) == 10
    b = b.record(True, 30.0)
    assert b == Breaker(threshold=3, open_for=10.0)


def test_breaker_threshold_zero_never_opens() -> None:
    b = Breaker(threshold=0)
    for t in range(100):
        b = b.record(False, float(t))
    assert b.retry_after(100.0) is None


# --- remote config (S2, cases 46-47) ----------------------------------------------------------


def cfg(replay: object) -> bytes:
    return json.dumps({"configs": {"sessionReplay": replay}}).encode()


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        pytest.param(
            cfg({"sr_sampling_config": {"sample_rate": 0.1, "capture_enabled": True}}),
            RemoteSampling(0.1, True),
            id="rate",
        ),
        pytest.param(
            cfg({"sr_sampling_config": {"sample_rate": 1}}),
            RemoteSampling(1.0, False),
            id="capture-missing-is-false",
        ),
        pytest.param(
            cfg({"sr_sampling_config": {"capture_enabled": False, "sample_rate": 0.5}}),
            RemoteSampling(0.5, False),
            id="disabled",
        ),
        pytest.param(
            cfg({"sr_sampling_config": {"capture_enabled": True}}),
            RemoteSampling(None, True),
            id="no-rate",
        ),
        pytest.param(
            cfg({"sr_sampling_config": {}}), RemoteSampling(None, True), id="empty-sampling"
        ),
        pytest.param(cfg({}), RemoteSampling(None, True), id="empty-replay"),
        pytest.param(
            cfg({"sr_privacy_config": {"defaultMaskLevel": "light"}}),
            RemoteSampling(None, True),
            id="no-sampling",
        ),
        pytest.param(
            cfg({"sr_sampling_config": [1, 2]}),
            RemoteSampling(None, True),
            id="sampling-not-object",
        ),
        pytest.param(
            cfg({"sr_sampling_config": {"sample_rate": "0.5", "capture_enabled": True}}),
            RemoteSampling(None, True),
            id="rate-string",
        ),
        pytest.param(
            cfg({"sr_sampling_config": {"sample_rate": True, "capture_enabled": 1}}),
            RemoteSampling(None, True),
            id="rate-bool-capture-int",
        ),
        pytest.param(
            cfg({"sr_sampling_config": {"capture_enabled": "false"}}),
            RemoteSampling(None, True),
            id="js-truthy-string",
        ),
        pytest.param(
            cfg({"sr_sampling_config": {"capture_enabled": 0.0}}),
            RemoteSampling(None, False),
            id="js-falsy-zero",
        ),
        pytest.param(
            cfg(
                {
                    "sr_sampling_config": {"capture_enabled": True},
                    "sr_targeting_config": {"key": "flag"},
                }
            ),
            RemoteSampling(None, True, targeting=True),
            id="targeting",
        ),
        pytest.param(
            b'{"configs":{"sessionReplay":{"sr_sampling_config":{"sample_rate":NaN,"capture_enabled":true}}}}',
            RemoteSampling(None, True),
            id="nan",
        ),
        pytest.param(
            b'{"configs":{"sessionReplay":{"sr_sampling_config":{"sample_rate":1e999,"capture_enabled":true}}}}',
            RemoteSampling(None, True),
            id="inf",
        ),
        pytest.param(b'{"configs":{}}', RemoteSampling(None, False), id="no-session-replay"),
        pytest.param(
            b'{"configs":{"sessionReplay":null}}', RemoteSampling(None, False), id="replay-null"
        ),
        pytest.param(b'{"configs":[]}', RemoteSampling(None, False), id="configs-list"),
        pytest.param(b"[]", RemoteSampling(None, False), id="top-list"),
        pytest.param(b"", RemoteSampling(None, False), id="empty"),
        pytest.param(b"<html>", RemoteSampling(None, False), id="html"),
        pytest.param(b"\xff\xfe\x00garbage", RemoteSampling(None, False), id="bad-utf"),
        pytest.param(
            b"[" * 100_000 + b"]" * 100_000, RemoteSampling(None, False), id="deep-nesting"
        ),
        pytest.param(
            b'{"configs":{"sessionReplay":' * 5000 + b"{}" + b"}}" * 5000,
            RemoteSampling(None, False),
            id="deep-objects",
        ),
    ],
)
def test_remote_sampling(body: bytes, expected: RemoteSampling) -> None:
    assert remote_sampling(body) == expected


GOOD = cfg({"sr_sampling_config": {"sample_rate": 0.25, "capture_enabled": True}})


@pytest.mark.parametrize(
    ("status", "ctype", "body", "cached"),
    [
        pytest.param(200, "application/json", GOOD, True, id="200-json"),
        pytest.param(200, "text/plain", GOOD, True, id="200-json-mislabelled"),
        pytest.param(200, "application/json", b"<html>", False, id="200-not-json"),
        pytest.param(200, "application/json", b"[]", False, id="200-json-array"),
        pytest.param(500, "application/json", GOOD, False, id="500"),
        pytest.param(304, "application/json", GOOD, False, id="304"),
        pytest.param(200, "application/json", b" " * (2 * 1024 * 1024), False, id="too-big"),
    ],
)
def test_only_200_json_objects_are_cached(
    status: int, ctype: str, body: bytes, cached: bool
) -> None:
    entry = config_entry(status, ctype, body, now=5.0)
    assert (entry is not None) is cached
    if entry is not None:
        assert entry.content_type == "application/json"
        assert entry.fetched_at == 5.0
        assert entry.sampling == RemoteSampling(0.25, True)


def slot_at(fetched_at: float | None, failed_at: float | None = None) -> ConfigSlot:
    entry = None if fetched_at is None else config_entry(200, "application/json", GOOD, fetched_at)
    return ConfigSlot(entry=entry, failed_at=failed_at)


@pytest.mark.parametrize(
    ("slot", "now", "fresh", "fetch"),
    [
        pytest.param(None, 0.0, False, True, id="nothing-cached"),
        pytest.param(slot_at(100.0), 159.0, True, False, id="within-ttl"),
        pytest.param(slot_at(100.0), 160.0, False, True, id="ttl-over"),
        pytest.param(
            slot_at(100.0, failed_at=161.0), 162.0, False, False, id="backoff-after-failure"
        ),
        pytest.param(slot_at(100.0, failed_at=161.0), 163.0, False, True, id="backoff-over"),
        pytest.param(slot_at(None, failed_at=10.0), 11.0, False, False, id="no-copy-backoff"),
    ],
)
def test_config_freshness_and_fetch_policy(
    slot: ConfigSlot | None, now: float, fresh: bool, fetch: bool
) -> None:
    assert config_is_fresh(slot, now, ttl=60.0) is fresh
    assert config_should_fetch(slot, now, ttl=60.0, backoff=2.0) is fetch


def test_ttl_zero_always_fetches() -> None:
    assert config_should_fetch(slot_at(10.0), 10.0, ttl=0.0, backoff=2.0)


@pytest.mark.parametrize(
    ("slot", "now", "just_fetched", "source", "body"),
    [
        pytest.param(slot_at(100.0), 120.0, False, "fresh", GOOD, id="46-fresh"),
        pytest.param(slot_at(100.0), 100.0 + 3600, False, "stale", GOOD, id="47-stale-if-error"),
        pytest.param(
            slot_at(100.0),
            100.0 + CONFIG_STALE_IF_ERROR,
            False,
            "fallback",
            CONFIG_FALLBACK_BODY,
            id="too-old",
        ),
        pytest.param(None, 0.0, False, "fallback", CONFIG_FALLBACK_BODY, id="47-no-copy"),
        pytest.param(
            slot_at(None, failed_at=1.0),
            2.0,
            False,
            "fallback",
            CONFIG_FALLBACK_BODY,
            id="failed-no-copy",
        ),
        pytest.param(slot_at(100.0), 500.0, True, "fresh", GOOD, id="just-fetched-ttl-0"),
    ],
)
def test_config_reply(
    slot: ConfigSlot | None, now: float, just_fetched: bool, source: str, body: bytes
) -> None:
    response, got = config_reply(slot, now, ttl=60.0, just_fetched=just_fetched)
    assert (got, response.status, response.body) == (source, 200, body)  # never 401/403/5xx
    headers = dict(response.headers)
    assert headers["content-type"] == "application/json"
    assert headers["cache-control"] == "no-store"
    assert headers["content-length"] == str(len(body))


def test_config_reply_head_has_length_but_no_body() -> None:
    response, _ = config_reply(slot_at(1.0), 2.0, ttl=60.0, head=True)
    assert response.body == b"" and dict(response.headers)["content-length"] == str(len(GOOD))


def test_fallback_config_lets_the_sdk_record_with_local_settings() -> None:
    # PROTOCOL §1.5: {"configs":{"sessionReplay":{}}} → capture with the local sampleRate.
    assert remote_sampling(CONFIG_FALLBACK_BODY) == RemoteSampling(None, True)


def test_config_entry_repr_hides_the_body() -> None:
    entry = config_entry(200, "application/json", GOOD, 1.0)
    assert isinstance(entry, ConfigEntry)
    assert "sr_sampling_config" not in repr(entry)


# --- slow clients (cases 43-45) -------------------------------------------------------------


@pytest.mark.parametrize(
    ("ip", "expected"),
    [
        pytest.param("198.51.100.7", "198.51.100.7", id="v4-whole-address"),
        pytest.param("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64", id="v6-its-64"),
        pytest.param("2001:db8:1:2:ffff::9", "2001:db8:1:2::/64", id="v6-same-64"),
        pytest.param("::ffff:198.51.100.7", "198.51.100.7", id="v4-mapped"),
        pytest.param(None, None, id="unknown-not-counted"),
    ],
)
def test_client_key(ip: str | None, expected: str | None) -> None:
    assert client_key(parse_ip(ip)) == expected


def test_plan_track_carries_the_client_key_after_trusted_proxies() -> None:  # case 45
    headers = {"authorization": f"Bearer {US_KEY}", "x-forwarded-for": "6.6.6.6, 198.51.100.9"}
    trusted = TrustedProxies.parse(["10.0.0.0/8"])
    behind = plan(req(headers=headers, client="10.0.0.2"), trusted=trusted)
    direct = plan(req(headers=headers, client="203.0.113.7"))  # the XFF of a stranger: ignored
    unknown = plan(req(headers={"authorization": f"Bearer {US_KEY}"}, client=None))
    assert isinstance(behind, TrackPlan) and behind.client == "198.51.100.9"
    assert isinstance(direct, TrackPlan) and direct.client == "203.0.113.7"
    assert isinstance(unknown, TrackPlan) and unknown.client is None
    assert "198.51.100.9" not in repr(behind)  # addresses are never logged


def test_client_slots_cap_each_client_and_free_on_release() -> None:  # case 45
    slots = ClientSlots(2)
    assert [slots.acquire("a"), slots.acquire("a"), slots.acquire("a")] == [True, True, False]
    assert slots.acquire("b")  # another client is not affected
    slots.release("a")
    assert slots.acquire("a")
    for key in ("a", "a", "b"):
        slots.release(key)
    assert slots.in_flight() == 0
    slots.release("a")  # an extra release never goes below zero
    assert slots.in_flight("a") == 0 and slots.acquire("a") and slots.acquire("a")


def test_client_slots_ignore_unknown_addresses_and_a_zero_limit() -> None:
    assert all(ClientSlots(1).acquire(None) for _ in range(5))
    off = ClientSlots(0)
    assert all(off.acquire("a") for _ in range(50)) and off.in_flight() == 0
    with pytest.raises(ValueError, match="0 \\(no cap\\) or more"):
        ClientSlots(-1)


def test_client_slots_hold_under_threads() -> None:
    slots = ClientSlots(3)
    over: list[int] = []
    barrier = threading.Barrier(8)

    def worker() -> None:
        barrier.wait()
        for _ in range(2000):
            if slots.acquire("a"):
                if slots.in_flight("a") > 3:
                    over.append(slots.in_flight("a"))
                slots.release("a")

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert over == [] and slots.in_flight() == 0


def test_client_busy_is_a_429_the_sdk_retries_with_retry_after() -> None:
    response = CLIENT_BUSY.response()
    assert response.status == 429  # PROTOCOL §2: 408, 429 and 5xx are retried
    assert dict(response.headers)["retry-after"] == "1"
    assert json.loads(response.body) == {"error": "client_busy"}


@pytest.mark.parametrize(
    ("client", "trusted", "expected"),
    [
        pytest.param("10.0.0.5", (), True, id="private-no-trusted"),
        pytest.param("127.0.0.1", (), True, id="loopback-no-trusted"),
        pytest.param("fd00:1::/64", (), True, id="ula-v6"),
        pytest.param("10.0.0.5", ("10.0.0.0/8",), False, id="trusted-configured"),
        pytest.param("8.8.8.8", (), False, id="public"),
        pytest.param(None, (), False, id="unknown"),
    ],
)
def test_looks_like_a_proxy(client: str | None, trusted: tuple[str, ...], expected: bool) -> None:
    assert looks_like_a_proxy(client, TrustedProxies.parse(trusted)) is expected


@pytest.mark.parametrize(
    ("body_timeout", "expected"),
    [
        pytest.param(5.0, UploadDeadlines(body=105.0, total=108.0), id="body-first"),
        pytest.param(30.0, UploadDeadlines(body=108.0, total=108.0), id="capped-by-total"),
    ],
)
def test_upload_deadlines(body_timeout: float, expected: UploadDeadlines) -> None:  # case 43
    deadlines = upload_deadlines(100.0, client_body_timeout=body_timeout, upstream_timeout=8.0)
    assert deadlines == expected
    assert deadlines.total_left(104.0) == 4.0  # the upstream gets what the body left


def test_with_content_length_replaces_any_declared_length() -> None:
    headers = [("content-type", "application/json"), ("content-length", "99")]
    assert with_content_length(headers, 42) == [
        ("content-type", "application/json"),
        ("content-length", "42"),
    ]
    assert with_content_length([], 0) == [("content-length", "0")]
