from __future__ import annotations

import json
import re

from replay_middleware.snippet import SnippetRenderer, SnippetSettings, dumps_for_html

SETTINGS = SnippetSettings(
    api_key="key",
    loader_url="/_replay/loader-abc.js",
    sdk_url="/_replay/sdk/1.51.6.js",
    sdk_integrity="sha384-xyz",
    session_url="/_replay/session",
    cookie_name="replay_id",
    session_timeout_ms=1_800_000,
    endpoints={"track": "/_replay/track", "config": "/_replay/config"},
    base_options={"serverZone": "US"},
    routes={"exclude": [], "include": None},
)


def test_json_cannot_break_out_of_a_script_element() -> None:
    text = dumps_for_html({"a": "</script><!-- \u2028\u2029 & 'x' >"})
    assert "<" not in text and ">" not in text and "&" not in text and "'" not in text
    assert text.isascii()
    assert json.loads(text) == {"a": "</script><!-- \u2028\u2029 & 'x' >"}


def test_render_is_ascii_and_has_data_block_and_loader_with_nonce() -> None:
    html = SnippetRenderer(SETTINGS).render(
        nonce="N0nce", ids=("dev", 1, 2), record=True, options={"sampleRate": 1}
    )
    assert html.isascii()
    assert html.startswith('<script type="application/json" id="replay-middleware-config">{')
    assert html.endswith(
        '<script async src="/_replay/loader-abc.js" nonce="N0nce" id="replay-middleware-loader"></script>'
    )
    data = json.loads(re.search(r">(\{.*\})</script>", html).group(1))  # type: ignore[union-attr]
    assert data["ids"] == {"deviceId": "dev", "sessionId": 1, "lastActivity": 2}
    assert data["record"] is True
    assert data["options"] == {"serverZone": "US", "sampleRate": 1}
    assert data["optOutCookie"] == "replay_id_optout"


def test_user_agnostic_form_has_no_ids() -> None:
    html = SnippetRenderer(SETTINGS).render(nonce=None, ids=None, record=None)
    assert '"ids":null' in html and '"record":null' in html
    assert "nonce" not in html


def test_hostile_values_are_escaped() -> None:
    settings = SnippetSettings(
        **{
            **SETTINGS.__dict__,
            "base_options": {"userProperties": {"x": "</script><script>alert(1)</script>"}},
        }
    )
    html = SnippetRenderer(settings).render(nonce="n", ids=None, record=None)
    assert html.count("<script") == 2 and html.count("</script>") == 2


def test_trusted_types_mode_adds_a_parser_inserted_sdk_tag() -> None:
    html = SnippetRenderer(SETTINGS).render(nonce="n", ids=None, record=None, static_sdk=True)
    assert (
        '<script async src="/_replay/sdk/1.51.6.js" nonce="n" integrity="sha384-xyz" crossorigin="anonymous" id="replay-middleware-sdk"></script>'
        in html
    )
    assert '"static":true' in html


def test_nonce_must_be_a_base64_value() -> None:
    import pytest

    with pytest.raises(ValueError, match="nonce"):
        SnippetRenderer(SETTINGS).render(nonce='x" onload="alert(1)', ids=None, record=None)


def test_per_request_options_override_base_options_without_leaking() -> None:
    renderer = SnippetRenderer(SETTINGS)
    first = renderer.data(
        ids=None, record=None, options={"serverZone": "EU", "useWebWorker": False}
    )
    second = renderer.data(ids=None, record=None)
    assert first["options"] == {"serverZone": "EU", "useWebWorker": False}
    assert second["options"] == {"serverZone": "US"}
