"""HttpResponse: the endpoints' complete answers are framed by their length."""

from __future__ import annotations

import pytest

from replay_middleware.response import HttpResponse


@pytest.mark.parametrize(
    ("response", "length"),
    [
        pytest.param(
            HttpResponse(200, [("content-type", "application/json")], b"{}"), "2", id="adds"
        ),
        pytest.param(HttpResponse(503, [], b""), "0", id="empty-body"),
        pytest.param(HttpResponse(200, [("Content-Length", "7")], b""), "7", id="kept-head"),
        pytest.param(HttpResponse(304, [("etag", '"x"')]), None, id="not-modified"),
        pytest.param(HttpResponse(204, []), None, id="no-content"),
    ],
)
def test_framed_headers(response: HttpResponse, length: str | None) -> None:
    headers = response.framed_headers()
    lengths = [v for k, v in headers if k.lower() == "content-length"]
    assert lengths == ([] if length is None else [length])
    assert headers[: len(response.headers)] == response.headers
