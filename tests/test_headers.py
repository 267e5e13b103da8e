from __future__ import annotations

import pytest

from replay_middleware.cookies import dump_cookie
from replay_middleware.headers import is_shared_cacheable, media_type, parse_content_length
from replay_middleware.request import RequestInfo, parse_cookie_header


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        pytest.param([], False, id="none"),
        pytest.param([("cache-control", "public")], True, id="public"),
        pytest.param([("cache-control", "s-maxage=60")], True, id="s-maxage"),
        pytest.param([("cache-control", "max-age=60")], True, id="max-age"),
        pytest.param([("cache-control", "max-age=0")], False, id="max-age-0"),
        pytest.param([("cache-control", "private, max-age=60")], False, id="private"),
        pytest.param([("cache-control", "public, no-store")], False, id="no-store"),
        pytest.param([("surrogate-control", "max-age=60")], True, id="surrogate"),
        pytest.param([("expires", "Thu, 01 Jan 2099 00:00:00 GMT")], True, id="expires"),
        pytest.param([("Cache-Control", "PUBLIC")], True, id="case"),
        pytest.param([("cache-control", "max-age=abc")], False, id="garbage"),
    ],
)
def test_shared_cacheable(headers: list[tuple[str, str]], expected: bool) -> None:
    assert is_shared_cacheable(headers) is expected


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
