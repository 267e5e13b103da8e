from __future__ import annotations

from typing import Any

import pytest

from replay_middleware.cookies import dump_cookie
from replay_middleware.headers import (
    SfToken,
    cache_directives,
    is_shared_cacheable,
    media_type,
    parse_content_length,
    parse_sf_dictionary,
)
from replay_middleware.request import RequestInfo, parse_cookie_header

NOW = 1_700_000_000.0  # Tue, 14 Nov 2023 22:13:20 GMT
LM = ("last-modified", "Mon, 01 Jan 2024 00:00:00 GMT")
FUTURE = "Thu, 01 Jan 2099 00:00:00 GMT"
PAST = "Sun, 06 Nov 1994 08:49:37 GMT"


def _p(id: str, headers: list[tuple[str, str]], expected: bool, status: int = 200) -> Any:
    return pytest.param(headers, status, expected, id=id)


SHARED_CACHEABLE = [
    _p("none", [], False),
    # Cache-Control, RFC 9111 §5.2.2
    _p("public", [("cache-control", "public")], True),
    _p("s-maxage", [("cache-control", "s-maxage=60")], True),
    _p("s-maxage-0", [("cache-control", "s-maxage=0")], True),
    _p("max-age", [("cache-control", "max-age=60")], True),
    _p("max-age-quoted", [("cache-control", 'max-age="60"')], True),
    _p("max-age-0", [("cache-control", "max-age=0")], False),
    _p("max-age-000", [("cache-control", "max-age=000")], False),
    _p("max-age-huge", [("cache-control", "max-age=" + "9" * 5000)], True),
    _p("max-age-garbage", [("cache-control", "max-age=abc")], False),
    _p("max-age-first-wins", [("cache-control", "max-age=60, max-age=0")], True),
    _p("max-age-first-wins-0", [("cache-control", "max-age=0, max-age=60")], False),
    _p("case-insensitive-names", [("Cache-Control", "PUBLIC")], True),
    _p("private", [("cache-control", "private, max-age=60")], False),
    _p("private-upper", [("cache-control", "max-age=60, PRIVATE")], False),
    _p("no-store", [("cache-control", "public, no-store")], False),
    _p("no-store-with-arg", [("cache-control", 'public, no-store="x"')], False),
    _p("no-store-second-line", [("cache-control", "public"), ("cache-control", "no-store")], False),
    _p(
        "private-second-line",
        [("cache-control", "max-age=60"), ("cache-control", "private")],
        False,
    ),
    _p("lines-combine", [("cache-control", "no-transform"), ("cache-control", "max-age=9")], True),
    # §5.2.2.7 / §5.2.2.4: field-qualified forms only restrict the listed fields
    _p("private-qualified", [("cache-control", 'max-age=600, private="Set-Cookie"')], True),
    _p("private-qualified-token", [("cache-control", "max-age=600, private=Set-Cookie")], True),
    _p(
        "private-qualified-list",
        [("cache-control", 'private="Set-Cookie, X-A", max-age=600')],
        True,
    ),
    _p("private-qualified-escape", [("cache-control", r'private="a\"b, c", public')], True),
    _p(
        "private-qualified-and-bare",
        [("cache-control", 'private="Set-Cookie", private, public')],
        False,
    ),
    _p("no-cache-with-max-age", [("cache-control", "no-cache, max-age=600")], True),
    _p("no-cache-qualified", [("cache-control", 'no-cache="Set-Cookie", max-age=600')], True),
    _p("unterminated-quote", [("cache-control", 'public, private="Set-Cookie')], True),
    # §5.3 Expires (explicit freshness; invalid means already expired; max-age wins)
    _p("expires-future", [("expires", FUTURE)], True),
    _p("expires-past", [("expires", PAST)], False),
    _p("expires-zero", [("expires", "0")], False),
    _p("expires-garbage", [("expires", "soon")], False),
    _p("expires-rfc850", [("expires", "Thursday, 01-Jan-99 00:00:00 GMT")], False),
    _p("expires-asctime", [("expires", "Thu Jan  1 00:00:00 2099")], True),
    _p("expires-vs-date", [("expires", PAST), ("date", "Sat, 05 Nov 1994 08:49:37 GMT")], True),
    _p("expires-private", [("expires", FUTURE), ("cache-control", "private")], False),
    _p("expires-no-cache", [("expires", FUTURE), ("cache-control", "no-cache")], True),
    _p(
        "expires-qualified-no-cache", [("expires", FUTURE), ("cache-control", 'no-cache="a"')], True
    ),
    _p("max-age-0-beats-expires", [("expires", FUTURE), ("cache-control", "max-age=0")], False),
    _p("max-age-beats-past-expires", [("expires", PAST), ("cache-control", "max-age=9")], True),
    _p("past-expires-blocks-heuristic", [("expires", "0"), LM], False),
    # §4.2.2 heuristic freshness (statuses of RFC 9110 §15.1)
    _p("heuristic-200", [LM], True),
    _p("heuristic-203", [LM], True, 203),
    _p("heuristic-404", [LM], True, 404),
    _p("heuristic-410", [LM], True, 410),
    _p("heuristic-501", [LM], True, 501),
    _p("heuristic-not-500", [LM], False, 500),
    _p("heuristic-not-201", [LM], False, 201),
    _p("heuristic-needs-last-modified", [("etag", '"x"')], False),
    _p("heuristic-not-no-cache", [LM, ("cache-control", "no-cache")], False),
    _p("heuristic-qualified-no-cache", [LM, ("cache-control", 'no-cache="Set-Cookie"')], True),
    _p("heuristic-not-private", [LM, ("cache-control", "private")], False),
    _p("heuristic-qualified-private", [LM, ("cache-control", 'private="Set-Cookie"')], True),
    _p("heuristic-not-no-store", [LM, ("cache-control", "no-store")], False),
    _p("heuristic-not-max-age-0", [LM, ("cache-control", "max-age=0")], False),
    _p("heuristic-with-must-revalidate", [LM, ("cache-control", "must-revalidate")], True),
    _p("pragma-ignored", [LM, ("pragma", "no-cache")], True),
    _p("pragma-alone", [("pragma", "no-cache")], False),
    # Surrogate-Control (any)
    _p("surrogate", [("surrogate-control", "max-age=60")], True),
    _p(
        "surrogate-over-private",
        [("surrogate-control", "max-age=60"), ("cache-control", "private")],
        True,
    ),
    # RFC 9213 targeted fields (RFC 8941 Dictionaries)
    _p("cdn", [("CDN-Cache-Control", "max-age=600")], True),
    _p(
        "cdn-over-private",
        [("cache-control", "private"), ("cdn-cache-control", "max-age=600")],
        True,
    ),
    _p(
        "cdn-over-no-store",
        [("cache-control", "no-store"), ("cdn-cache-control", "max-age=9")],
        True,
    ),
    _p("cloudflare", [("Cloudflare-CDN-Cache-Control", "max-age=600")], True),
    _p("vercel", [("vercel-cdn-cache-control", "s-maxage=60")], True),
    _p("cdn-public", [("cdn-cache-control", "public")], True),
    _p("cdn-none", [("cdn-cache-control", "none")], True),  # RFC 9213 §3.1's example
    _p("cdn-none-500", [("cdn-cache-control", "none")], False, 500),
    _p("cdn-max-age-500", [("cdn-cache-control", "max-age=60")], True, 500),
    _p("cdn-max-age-0", [("cdn-cache-control", "max-age=0")], True),
    _p("cdn-no-store", [("cdn-cache-control", "no-store")], False),
    _p("cdn-no-store-false-ignored", [("cdn-cache-control", "no-store=?0, max-age=60")], True),
    _p("cdn-private", [("cdn-cache-control", "private, max-age=60")], False),
    _p("cdn-private-qualified", [("cdn-cache-control", 'private="Set-Cookie", max-age=60')], True),
    _p(
        "cdn-private-inner-list", [("cdn-cache-control", 'private=("Set-Cookie"), max-age=9')], True
    ),
    _p("cdn-decimal-max-age", [("cdn-cache-control", "max-age=1.5")], True),  # 200: heuristic
    _p("cdn-decimal-max-age-500", [("cdn-cache-control", "max-age=1.5")], False, 500),
    _p("cdn-params-ignored", [("cdn-cache-control", "max-age=60;x=1, public")], True),
    _p(
        "cdn-lines-combine",
        [("cdn-cache-control", "max-age=60"), ("cdn-cache-control", "no-store")],
        False,
    ),
    _p("cdn-last-key-wins", [("cdn-cache-control", 'private, private="a"')], True),
    _p("cdn-uppercase-key-invalid", [("cdn-cache-control", "Max-Age=60")], False),
    _p("cdn-empty-ignored", [("cdn-cache-control", "")], False),
    _p("cdn-trailing-comma-invalid", [("cdn-cache-control", "max-age=60,")], False),
    _p("cdn-bad-string-invalid", [("cdn-cache-control", 'private="\u00e9"')], False),
    _p(
        "cdn-invalid-falls-back",
        [("cdn-cache-control", "max-age=60,"), ("cache-control", "public")],
        True,
    ),
    _p(
        "cdn-one-of-two-allows",
        [("cdn-cache-control", "no-store"), ("x-cdn-cache-control", "public")],
        True,
    ),
    _p("not-a-targeted-name", [("cdn-cache-controller", "public")], False),
    _p(
        "cdn-no-store-cc-public",
        [("cdn-cache-control", "no-store"), ("cache-control", "public")],
        True,
    ),
]


@pytest.mark.parametrize(("headers", "status", "expected"), SHARED_CACHEABLE)
def test_shared_cacheable(headers: list[tuple[str, str]], status: int, expected: bool) -> None:
    assert is_shared_cacheable(headers, status, now=NOW) is expected


def test_expires_without_date_uses_the_clock() -> None:
    headers = [("expires", "Thu, 01 Jan 2099 00:00:00 GMT")]
    assert is_shared_cacheable(headers) is True
    assert is_shared_cacheable(headers, now=5_000_000_000.0) is False  # year 2128


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        pytest.param(["a, B=1"], [("a", None), ("b", "1")], id="plain"),
        pytest.param([' x = "q, r" , y'], [("x", "q, r"), ("y", None)], id="quoted-comma"),
        pytest.param(['x="a\\"b"'], [("x", 'a"b')], id="quoted-pair"),
        pytest.param(["a,,b", ""], [("a", None), ("b", None)], id="empty-items"),
        pytest.param(["a", "b=2"], [("a", None), ("b", "2")], id="lines"),
        pytest.param(['p="x" junk, q'], [("p", "x"), ("q", None)], id="junk-after-quote"),
        pytest.param(["=1, c"], [("c", None)], id="nameless"),
    ],
)
def test_cache_directives(values: list[str], expected: list[tuple[str, str | None]]) -> None:
    assert cache_directives(values) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param("a, b=1, c=?0", {"a": True, "b": 1, "c": False}, id="booleans-integers"),
        pytest.param('s="x\\"y", t=tok/en:1', {"s": 'x"y', "t": "tok/en:1"}, id="string-token"),
        pytest.param("d=-1.25, e=:aGk=:", {"d": -1.25, "e": b"aGk="}, id="decimal-binary"),
        pytest.param('l=(1 "a" b);p, m', {"l": [1, "a", "b"], "m": True}, id="inner-list"),
        pytest.param("a;x=1;y, b=2;z=?1", {"a": True, "b": 2}, id="parameters"),
        pytest.param("a=1, a=2", {"a": 2}, id="last-wins"),
        pytest.param("  a  ,b  ", {"a": True, "b": True}, id="whitespace"),
        pytest.param("", {}, id="empty"),
        pytest.param("a,", None, id="trailing-comma"),
        pytest.param("A=1", None, id="uppercase-key"),
        pytest.param("a=1234567890123456", None, id="integer-too-long"),
        pytest.param("a=1.2345", None, id="decimal-too-precise"),
        pytest.param('a="unterminated', None, id="unterminated-string"),
        pytest.param('a="\\n"', None, id="bad-escape"),
        pytest.param("a=?2", None, id="bad-boolean"),
        pytest.param("a=(1 2", None, id="unterminated-inner-list"),
        pytest.param("a=(1,2)", None, id="comma-in-inner-list"),
        pytest.param("a b", None, id="missing-comma"),
        pytest.param("a=:x", None, id="bad-binary"),
        pytest.param("a=@1", None, id="date-unsupported"),
    ],
)
def test_parse_sf_dictionary(value: str, expected: dict[str, object] | None) -> None:
    result = parse_sf_dictionary(value)
    assert result == expected
    if result is not None and "t" in result:
        assert isinstance(result["t"], SfToken)


def test_media_type_parsing() -> None:
    assert media_type('TEXT/Html ; charset="UTF-8" ; x=1') == (
        "text/html",
        {"charset": "UTF-8", "x": "1"},
    )
    assert media_type("garbage") == ("", {})
    assert media_type(None) == ("", {})


def test_content_length() -> None:
    assert parse_content_length([]) is None
    assert parse_content_length([("content-length", "12")]) == 12
    assert parse_content_length([("content-length", "12, 12")]) == 12
    assert parse_content_length([("content-length", "12"), ("content-length", "13")]) is False
    assert parse_content_length([("content-length", "-1")]) is False


def test_cookie_header_parsing_is_lenient() -> None:
    assert parse_cookie_header('a=1; b="x y"; ;=3; c; a=2; d==e') == {
        "a": "1",
        "b": "x y",
        "d": "=e",
    }


def test_request_info_joins_repeated_headers() -> None:
    info = RequestInfo.from_pairs(
        "get", "", [("Cookie", "a=1"), ("cookie", "b=2"), ("X", "1"), ("x", "2")]
    )
    assert info.method == "GET" and info.path == "/"
    assert info.cookies == {"a": "1", "b": "2"}
    assert info.header("x") == "1, 2"


def test_dump_cookie() -> None:
    assert (
        dump_cookie("n", "v.1-2", max_age=10, secure=True)
        == "n=v.1-2; Path=/; Max-Age=10; Secure; SameSite=Lax"
    )
    with pytest.raises(ValueError):
        dump_cookie("n", "a;b")
