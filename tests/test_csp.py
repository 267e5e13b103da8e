"""Tests for replay_middleware.csp: the CSP parse → merge → serialize core (notes/csp.md (a)).

Every table states the app's policy and the exact expected header in the canonical Z1 form
(``None`` = the value must come back as the very same object). Rule ids are in the param ids.
"""

from __future__ import annotations

import dataclasses
import string
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from replay_middleware.csp import (
    BLOB,
    NONE,
    REASON_CONNECT_BLOCKED,
    REASON_CONNECT_NONE,
    REASON_META_AMBIGUOUS,
    REASON_SANDBOX,
    REASON_SANDBOX_OPAQUE,
    REASON_SCRIPT_BLOCKED,
    REASON_SCRIPT_NONE,
    SELF,
    STRICT_DYNAMIC,
    UNSAFE_INLINE,
    CspNeeds,
    CspResult,
    Directive,
    Policy,
    allows,
    merge_meta_csp,
    merge_response_csp,
    merge_response_csp_uncached,
    new_nonce,
    parse_policy_list,
    url_sources,
)

CSP = "Content-Security-Policy"
CSPRO = "Content-Security-Policy-Report-Only"
N = "0urN0nce_-x"  # the per-response nonce passed in (a valid base64-value)
NT = f"'nonce-{N}'"

LOADER = "/_replay/loader-3f2a9c.js"
SDK = "/_replay/sdk/1.51.6.js"
CDN_SDK = "https://cdn.amplitude.com/libs/session-replay-browser-1.51.6-min.js.gz"
US_TRACK = "https://api-sr.amplitude.com/sessions/v2/track"
US_CONFIG = "https://sr-client-cfg.amplitude.com/config/KEY"
EU_TRACK = "https://api-sr.eu.amplitude.com/sessions/v2/track"
EU_CONFIG = "https://sr-client-cfg.eu.amplitude.com/config/KEY"
US_HOSTS = "https://api-sr.amplitude.com https://sr-client-cfg.amplitude.com"
EU_HOSTS = "https://api-sr.eu.amplitude.com https://sr-client-cfg.eu.amplitude.com"
SHOP = "https://shop.example"
SHOP_PREFIX = "https://shop.example/_replay/"

# First-party SDK and proxy, no public origin configured: 'self' is the source (C2).
FIRST_PARTY = CspNeeds(
    script_urls=(LOADER, SDK),
    script_source=SELF,
    connect_urls=("/_replay/track", "/_replay/config/KEY"),
    connect_sources=(SELF, SELF),
)
# First-party with a configured public origin: path-scoped sources (C2, C4).
WITH_ORIGIN = dataclasses.replace(
    FIRST_PARTY,
    script_source=SHOP_PREFIX,
    connect_sources=(SHOP_PREFIX, SHOP_PREFIX),
    public_origin=SHOP,
)
# "direct" mode: the SDK talks to Amplitude's regional hosts.
DIRECT_US = dataclasses.replace(
    FIRST_PARTY,
    connect_urls=(US_TRACK, US_CONFIG),
    connect_sources=("https://api-sr.amplitude.com", "https://sr-client-cfg.amplitude.com"),
)
DIRECT_EU = dataclasses.replace(
    FIRST_PARTY,
    connect_urls=(EU_TRACK, EU_CONFIG),
    connect_sources=("https://api-sr.eu.amplitude.com", "https://sr-client-cfg.eu.amplitude.com"),
)
# SDK bundle from the CDN; the loader stays first-party.
CDN = dataclasses.replace(
    FIRST_PARTY, script_urls=(LOADER, CDN_SDK), script_source="https://cdn.amplitude.com"
)

NEEDS = {
    "first_party": FIRST_PARTY,
    "origin": WITH_ORIGIN,
    "direct_us": DIRECT_US,
    "direct_eu": DIRECT_EU,
    "cdn": CDN,
}


def merge_one(
    value: str,
    needs: CspNeeds = FIRST_PARTY,
    *,
    report_only: bool = False,
    app_nonce: str | None = None,
) -> CspResult:
    return merge_response_csp(
        [(CSPRO if report_only else CSP, value)], needs, N, app_nonce=app_nonce
    )


def assert_merged(result: CspResult, value: str, expected: str | None) -> None:
    """``expected`` None: feasible and the very same value object back; else the exact string."""
    assert result.feasible, result.reason
    assert result.reason is None
    if expected is None:
        assert result.changed is False
        assert result.headers[0][1] is value
    else:
        assert result.changed is True
        assert result.headers[0][1] == expected


# =============================================================================================
# The two policies of the example app (exact results)
# =============================================================================================


def test_example_app_strict_dynamic_policy_is_left_alone_and_its_nonce_reused() -> None:
    value = "default-src 'self'; script-src 'nonce-abc' 'strict-dynamic'"
    headers = ((CSP, value),)
    result = merge_response_csp(headers, FIRST_PARTY, N)
    # N2: 'nonce-abc' is in the only policy that needs one; C2: /_replay/* matches 'self';
    # W4: 'strict-dynamic' in script-src → no worker-src.
    assert result == CspResult(
        feasible=True,
        reason=None,
        headers=headers,
        nonce="abc",
        use_web_worker=True,
        trusted_types=False,
        changed=False,
    )
    assert result.headers is headers


def test_example_app_strict_dynamic_policy_in_direct_mode_gets_connect_src() -> None:
    value = "default-src 'self'; script-src 'nonce-abc' 'strict-dynamic'"
    result = merge_one(value, DIRECT_US)
    assert_merged(
        result,
        value,
        "default-src 'self'; script-src 'nonce-abc' 'strict-dynamic'; "
        f"connect-src 'self' {US_HOSTS}",
    )
    assert result.nonce == "abc"
    assert result.nonce_in_headers is False


def test_example_app_unsafe_inline_allowlist_policy() -> None:
    value = (
        "default-src 'self'; script-src 'self' 'unsafe-inline' https://cdn.example.com; "
        "style-src 'self' 'unsafe-inline'"
    )
    result = merge_one(value)
    # S3: inline_ok → no nonce; our first-party scripts already match 'self'.
    # W5: worker-src created from script-src's URL sources + blob:.
    assert_merged(
        result,
        value,
        "default-src 'self'; script-src 'self' 'unsafe-inline' https://cdn.example.com; "
        "style-src 'self' 'unsafe-inline'; worker-src 'self' https://cdn.example.com blob:",
    )
    assert result.nonce == N
    assert result.use_web_worker is True
    assert result.nonce_in_headers is False


def test_example_app_unsafe_inline_allowlist_policy_with_cdn_sdk() -> None:
    value = (
        "default-src 'self'; script-src 'self' 'unsafe-inline' https://cdn.example.com; "
        "style-src 'self' 'unsafe-inline'"
    )
    assert_merged(
        merge_one(value, CDN),
        value,
        "default-src 'self'; script-src 'self' 'unsafe-inline' https://cdn.example.com "
        "https://cdn.amplitude.com; style-src 'self' 'unsafe-inline'; "
        "worker-src 'self' https://cdn.example.com blob:",
    )


# =============================================================================================
# G1 / P2: which headers are looked at
# =============================================================================================


def test_no_csp_header_changes_nothing_and_creates_nothing() -> None:
    headers = (("Content-Type", "text/html"), ("Set-Cookie", "a=b"))
    result = merge_response_csp(headers, FIRST_PARTY, N, app_nonce="app")
    assert result == CspResult(True, None, headers, N, True, False, False)
    assert result.headers is headers


def test_empty_header_list() -> None:
    assert merge_response_csp([], FIRST_PARTY, N) == CspResult(
        True, None, (), N, True, False, False
    )


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("content-security-policy", id="P2-lowercase"),
        pytest.param("CONTENT-SECURITY-POLICY", id="P2-uppercase"),
        pytest.param("Content-Security-Policy", id="P2-canonical"),
    ],
)
def test_header_names_are_case_insensitive(name: str) -> None:
    result = merge_response_csp([(name, "script-src 'self'")], FIRST_PARTY, N)
    assert result.headers == ((name, f"script-src 'self' {NT}; worker-src 'self' blob:"),)


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("X-Content-Security-Policy", id="legacy-x-header"),
        pytest.param("X-WebKit-CSP", id="legacy-webkit-header"),
        pytest.param("Content-Security-Policy-Report-Only-X", id="lookalike"),
    ],
)
def test_other_header_names_are_ignored(name: str) -> None:
    headers = ((name, "script-src 'none'"),)
    result = merge_response_csp(headers, FIRST_PARTY, N)
    assert result.feasible and not result.changed and result.headers is headers


# =============================================================================================
# A: parsing
# =============================================================================================

PARSING_CASES = [
    pytest.param(
        "SCRIPT-SRC 'self'",
        f"SCRIPT-SRC 'self' {NT}; worker-src 'self' blob:",
        id="A1-names-case-insensitive-original-text-kept",
    ),
    pytest.param(
        "script-src 'self'; script-src 'none'",
        f"script-src 'self' {NT}; script-src 'none'; worker-src 'self' blob:",
        id="A1-first-occurrence-wins-later-untouched",
    ),
    pytest.param(
        "script-src 'self' caf\xe9.example; script-src 'none' 'unsafe-inline'",
        "script-src 'self' caf\xe9.example; script-src 'none' 'unsafe-inline' 'self'; "
        "worker-src blob:",
        id="A1-non-ascii-directive-skipped-next-one-governs",
    ),
    pytest.param(
        "script-src 'self' caf\xe9.example; default-src 'self'",
        f"script-src 'self' caf\xe9.example; default-src 'self'; script-src 'self' {NT}; "
        "worker-src 'self' blob:",
        id="A1-non-ascii-script-src-invisible-default-src-governs",
    ),
    pytest.param("", None, id="A1-empty-value"),
    pytest.param(";", None, id="A1-only-semicolon"),
    pytest.param(" ; ;\t; ", None, id="A1-only-separators"),
    pytest.param("script-src 'n\xf6ne'", None, id="A1-policy-of-non-ascii-directives-discarded"),
    pytest.param(
        "default-src 'self';;script-src 'self'",
        f"default-src 'self'; script-src 'self' {NT}; worker-src 'self' blob:",
        id="A1-double-semicolon",
    ),
    pytest.param(
        "script-src\t'self'\r\n 'unsafe-eval'",
        f"script-src 'self' 'unsafe-eval' {NT}; worker-src 'self' blob:",
        id="A1-ascii-whitespace-tab-crlf",
    ),
    pytest.param("script-src\xa0'none'", None, id="A1-nbsp-is-not-whitespace"),
    pytest.param("script-src\x0b'none'", None, id="A1-vertical-tab-is-not-whitespace"),
    pytest.param("script-src\x1f'none'", None, id="A1-unit-separator-is-not-whitespace"),
    pytest.param(
        "script-src 'none' 'self'",
        f"script-src 'none' 'self' {NT}; worker-src 'self' blob:",
        id="A2-none-with-other-sources-is-not-explicit-none",
    ),
]


@pytest.mark.parametrize(("value", "expected"), PARSING_CASES)
def test_parsing(value: str, expected: str | None) -> None:
    assert_merged(merge_one(value), value, expected)


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("script-src 'none'", id="A2-quoted-none"),
        pytest.param("script-src 'NONE'", id="A2-none-case-insensitive"),
        pytest.param("script-src", id="A2-empty-value"),
        pytest.param("script-src   ", id="A2-whitespace-only-value"),
    ],
)
def test_explicit_none_forms(value: str) -> None:
    result = merge_one(value)
    assert (result.feasible, result.reason, result.changed) == (False, REASON_SCRIPT_NONE, False)


@pytest.mark.parametrize(
    ("value", "count"),
    [
        pytest.param("default-src 'self'", 1, id="one"),
        pytest.param("default-src 'self', script-src 'none'", 2, id="two"),
        pytest.param("default-src 'self',script-src 'none'", 2, id="two-no-space"),
        pytest.param("default-src 'self',", 1, id="trailing-comma"),
        pytest.param(",, ,", 0, id="only-commas"),
        pytest.param("a, ;, b\xe9 c", 1, id="empty-and-non-ascii-dropped"),
        pytest.param("", 0, id="empty"),
    ],
)
def test_parse_policy_list_counts(value: str, count: int) -> None:
    assert len(parse_policy_list(value)) == count


def test_policy_lookup_and_directive_fields() -> None:
    policy = Policy.parse("Script-Src 'self'; img-src *; script-src 'none'; conn\xe9ct-src x")
    assert policy.get("script-src") == Directive("Script-Src", ("'self'",), "script-src")
    assert policy.get("SCRIPT-SRC") is policy.get("script-src")
    assert "img-src" in policy and "connect-src" not in policy and 3 not in policy
    assert policy.directives[3].key is None
    assert policy.get("conn\xe9ct-src") is None
    assert not policy.is_empty
    assert Policy.parse(" ; b\xe9 ; ").is_empty


def test_policy_edits_return_copies_and_serialize_canonically() -> None:
    text = "  Script-Src   'self'  ;img-src * ;;"
    policy = Policy.parse(text)
    assert policy.serialize() is text
    edited = policy.with_appended("script-src", [NT]).with_added("worker-src", [BLOB])
    assert edited.serialize() == f"Script-Src 'self' {NT}; img-src *; worker-src blob:"
    assert policy.serialize() is text
    assert policy.with_replaced("img-src", []).serialize() == "Script-Src 'self'; img-src"
    with pytest.raises(KeyError):
        policy.with_appended("connect-src", [SELF])
    with pytest.raises(ValueError):
        policy.with_added("IMG-SRC", [SELF])


@pytest.mark.parametrize(
    ("tokens", "explicit_none"),
    [
        pytest.param((), True, id="empty"),
        pytest.param(("'none'",), True, id="none"),
        pytest.param(("'None'",), True, id="none-mixed-case"),
        pytest.param(("'none'", "'none'"), False, id="two-nones"),
        pytest.param(("'none'", "'self'"), False, id="none-and-self"),
        pytest.param(("none",), False, id="unquoted-none-is-a-host"),
    ],
)
def test_directive_explicit_none(tokens: tuple[str, ...], explicit_none: bool) -> None:
    assert Directive("script-src", tokens, "script-src").is_explicit_none is explicit_none


def test_url_sources_keeps_only_url_matching_tokens_in_order() -> None:
    tokens = (
        "'self'",
        "'unsafe-inline'",
        "'nonce-abc'",
        "'sha256-abc='",
        "https:",
        "*.example.com",
        "'none'",
        "*",
        "data:",
        "'strict-dynamic'",
        "https://x.example:8443/p/",
        "'SELF'",
        "'report-sample'",
        "'wasm-unsafe-eval'",
        "not a source!",
    )
    assert url_sources(tokens) == (
        "'self'",
        "https:",
        "*.example.com",
        "*",
        "data:",
        "https://x.example:8443/p/",
        "'SELF'",
    )


# =============================================================================================
# allows(): CSP3 §6.7.2 URL matching subset (A4)
# =============================================================================================

ALLOWS_CASES = [
    # *
    pytest.param("https://x.example/a", ["*"], None, True, id="star-https"),
    pytest.param("http://x.example/a", ["*"], None, True, id="star-http"),
    pytest.param("/_replay/x", ["*"], None, True, id="star-relative"),
    pytest.param("blob:https://shop.example/uuid", ["*"], SHOP, False, id="star-not-blob"),
    pytest.param("data:text/javascript,1", ["*"], SHOP, False, id="star-not-data"),
    pytest.param("wss://x.example/", ["*"], SHOP, False, id="star-not-wss"),
    pytest.param("ftp://x.example/", ["*"], "ftp://shop.example", True, id="star-same-scheme"),
    # scheme sources
    pytest.param("https://x.example/", ["https:"], None, True, id="scheme-https"),
    pytest.param("https://x.example/", ["HTTPS:"], None, True, id="scheme-case"),
    pytest.param("https://x.example/", ["http:"], None, True, id="scheme-http-upgrades"),
    pytest.param("http://x.example/", ["https:"], None, False, id="scheme-no-downgrade"),
    pytest.param("wss://x.example/", ["ws:"], None, True, id="scheme-ws-to-wss"),
    pytest.param("https://x.example/", ["ws:"], None, True, id="scheme-ws-to-https"),
    pytest.param("https://x.example/", ["wss:"], None, True, id="scheme-wss-to-https"),
    pytest.param("http://x.example/", ["wss:"], None, False, id="scheme-wss-not-http"),
    pytest.param("blob:https://shop.example/u", ["blob:"], SHOP, True, id="scheme-blob"),
    pytest.param("blob:https://shop.example/u", ["BLOB:"], SHOP, True, id="scheme-blob-case"),
    pytest.param("/_replay/x", ["https:"], None, False, id="scheme-relative-unknown-page"),
    pytest.param("/_replay/x", ["https:"], SHOP, True, id="scheme-relative-https-page"),
    pytest.param("/_replay/x", ["http:"], None, True, id="scheme-relative-http-covers-both"),
    # host sources
    pytest.param(US_TRACK, ["https://api-sr.amplitude.com"], None, True, id="host-exact"),
    pytest.param(US_TRACK, ["HTTPS://API-SR.Amplitude.COM"], None, True, id="host-case"),
    pytest.param(US_TRACK, ["api-sr.amplitude.com"], None, True, id="host-schemeless-https"),
    pytest.param(
        "http://api.example/", ["api.example"], None, False, id="host-schemeless-http-unknown"
    ),
    pytest.param(
        "http://api.example/",
        ["api.example"],
        "http://shop.example",
        True,
        id="host-schemeless-http-page",
    ),
    pytest.param(
        "http://api.example/", ["api.example"], SHOP, False, id="host-schemeless-no-downgrade"
    ),
    pytest.param(US_TRACK, ["http://api-sr.amplitude.com"], None, True, id="host-http-upgrade"),
    pytest.param(US_TRACK, ["https://api.amplitude.com"], None, False, id="host-other"),
    pytest.param(US_TRACK, ["https://*.amplitude.com"], None, True, id="wildcard"),
    pytest.param(US_TRACK, ["*.amplitude.com"], None, True, id="wildcard-schemeless"),
    pytest.param(EU_TRACK, ["https://*.amplitude.com"], None, True, id="wildcard-any-depth"),
    pytest.param(
        "https://amplitude.com/x",
        ["https://*.amplitude.com"],
        None,
        False,
        id="wildcard-not-apex",
    ),
    pytest.param(
        "https://evilamplitude.com/", ["*.amplitude.com"], None, False, id="wildcard-label-edge"
    ),
    pytest.param("https://x.example/", ["https://*"], None, True, id="host-star"),
    # ports
    pytest.param("https://x.example:8443/", ["https://x.example:8443"], None, True, id="port-eq"),
    pytest.param("https://x.example:8443/", ["https://x.example"], None, False, id="port-none"),
    pytest.param("https://x.example/", ["https://x.example:8443"], None, False, id="port-other"),
    pytest.param("https://x.example:8443/", ["https://x.example:*"], None, True, id="port-star"),
    pytest.param("https://x.example/", ["https://x.example:443"], None, True, id="port-default"),
    pytest.param(
        "https://x.example:443/", ["https://x.example"], None, True, id="port-explicit-default"
    ),
    pytest.param("https://x.example/", ["http://x.example:80"], None, False, id="port-80-not-443"),
    # paths
    pytest.param(CDN_SDK, ["https://cdn.amplitude.com/libs/"], None, True, id="path-prefix"),
    pytest.param(
        "https://cdn.amplitude.com/libsx/a.js",
        ["https://cdn.amplitude.com/libs/"],
        None,
        False,
        id="path-prefix-segment-boundary",
    ),
    pytest.param("https://x.example/a.js", ["https://x.example/a.js"], None, True, id="path-exact"),
    pytest.param(
        "https://x.example/a.js/b",
        ["https://x.example/a.js"],
        None,
        False,
        id="path-exact-not-prefix",
    ),
    pytest.param(
        "https://x.example/libs/a",
        ["https://x.example/l%69bs/"],
        None,
        True,
        id="path-percent-decoded",
    ),
    pytest.param("https://x.example", ["https://x.example/"], None, True, id="path-root"),
    # 'self'
    pytest.param("/_replay/track", ["'self'"], None, True, id="self-relative-no-origin"),
    pytest.param("_replay/track", ["'self'"], None, True, id="self-path-relative"),
    pytest.param("/_replay/track", ["'SELF'"], None, True, id="self-case"),
    pytest.param("https://shop.example/x", ["'self'"], SHOP, True, id="self-same-origin"),
    pytest.param("https://shop.example/x", ["'self'"], None, False, id="self-unknown-origin"),
    pytest.param("https://other.example/x", ["'self'"], SHOP, False, id="self-other-host"),
    pytest.param("https://shop.example:8443/x", ["'self'"], SHOP, False, id="self-other-port"),
    pytest.param(
        "https://shop.example/x", ["'self'"], "http://shop.example", True, id="self-upgrade"
    ),
    pytest.param("wss://shop.example/x", ["'self'"], "https://shop.example", True, id="self-wss"),
    pytest.param(
        "http://shop.example/x", ["'self'"], "https://shop.example", False, id="self-no-downgrade"
    ),
    pytest.param("blob:https://shop.example/uuid", ["'self'"], SHOP, False, id="self-never-blob"),
    pytest.param("//evil.example/x", ["'self'"], None, False, id="self-scheme-relative"),
    pytest.param("/\\evil.example/x", ["'self'"], None, False, id="self-backslash-host"),
    pytest.param(" //evil.example/x", ["'self'"], None, False, id="self-leading-space"),
    # relative URLs with and without a public origin
    pytest.param("/_replay/t", [SHOP_PREFIX], SHOP, True, id="relative-path-source-origin"),
    pytest.param("/_replay/t", [SHOP_PREFIX], None, False, id="relative-path-source-no-origin"),
    pytest.param(
        "/_replay/t", ["https://shop.example/static/"], SHOP, False, id="relative-other-path"
    ),
    # lists
    pytest.param(US_TRACK, [], None, False, id="empty-list"),
    pytest.param("/_replay/t", ["'none'"], None, False, id="none-alone"),
    pytest.param(US_TRACK, ["'none'", "https:"], None, True, id="none-ignored-with-others"),
    pytest.param(
        US_TRACK,
        ["'nonce-abc'", "'sha256-abc='", "'strict-dynamic'", "'unsafe-inline'"],
        None,
        False,
        id="keywords-never-match-urls",
    ),
    pytest.param("https://10.0.0.1/", ["https://10.0.0.1"], None, False, id="ip-never-matches"),
    pytest.param(
        "http://127.0.0.1:8000/x", ["http://127.0.0.1:8000"], None, True, id="ip-loopback"
    ),
    pytest.param("https://[::1", ["*"], None, False, id="malformed-url"),
    pytest.param("https://x.example:99999/", ["*"], None, False, id="malformed-port"),
    pytest.param(
        "https://x.example/",
        ["https://x.example?q", "x..y", "::"],
        None,
        False,
        id="malformed-sources",
    ),
    pytest.param("https://x.example/", ["*"], "not an origin", True, id="malformed-origin"),
]


@pytest.mark.parametrize(("url", "sources", "origin", "expected"), ALLOWS_CASES)
def test_allows(url: str, sources: list[str], origin: str | None, expected: bool) -> None:
    assert allows(url, sources, origin=origin) is expected


# =============================================================================================
# F: feasibility (and G5 all-or-nothing)
# =============================================================================================

INFEASIBLE_CASES = [
    pytest.param("sandbox", REASON_SANDBOX, id="F1-sandbox-empty"),
    pytest.param("sandbox allow-forms allow-same-origin", REASON_SANDBOX, id="F1-no-allow-scripts"),
    pytest.param("default-src 'self'; Sandbox", REASON_SANDBOX, id="F1-sandbox-name-case"),
    pytest.param("sandbox; script-src 'none'", REASON_SANDBOX, id="F1-before-F2"),
    pytest.param("sandbox allow-scripts", REASON_SANDBOX_OPAQUE, id="F1-opaque-origin"),
    pytest.param("SANDBOX ALLOW-SCRIPTS", REASON_SANDBOX_OPAQUE, id="F1-opaque-origin-case"),
    pytest.param(
        "sandbox allow-scripts allow-forms allow-popups; script-src 'self'",
        REASON_SANDBOX_OPAQUE,
        id="F1-opaque-origin-with-other-flags",
    ),
    pytest.param(
        "sandbox allow-scripts; script-src 'none'", REASON_SANDBOX_OPAQUE, id="F1-opaque-before-F2"
    ),
    pytest.param(
        "default-src 'self', sandbox allow-scripts",
        REASON_SANDBOX_OPAQUE,
        id="F1-opaque-comma-joined",
    ),
    pytest.param(
        "sandbox allow-scripts, sandbox allow-same-origin allow-scripts allow-forms",
        REASON_SANDBOX_OPAQUE,
        id="F1-opaque-one-policy-is-enough",
    ),
    pytest.param(
        "sandbox allow-scripts, sandbox allow-same-origin",
        REASON_SANDBOX,
        id="F1-no-scripts-wins-over-opaque",
    ),
    pytest.param("script-src 'none'", REASON_SCRIPT_NONE, id="F2-script-src-none"),
    pytest.param("script-src", REASON_SCRIPT_NONE, id="F2-script-src-empty"),
    pytest.param(
        "script-src-elem 'none'; script-src 'self'", REASON_SCRIPT_NONE, id="F2-elem-none"
    ),
    pytest.param(
        "default-src 'self'; script-src 'none'", REASON_SCRIPT_NONE, id="F2-not-rescued-by-default"
    ),
    pytest.param("connect-src 'none'", REASON_CONNECT_NONE, id="F3-connect-none"),
    pytest.param("connect-src", REASON_CONNECT_NONE, id="F3-connect-empty"),
    pytest.param(
        "script-src 'self'; connect-src 'none'", REASON_CONNECT_NONE, id="F3-with-script-ok"
    ),
    pytest.param(
        "default-src 'self', connect-src 'none'", REASON_CONNECT_NONE, id="G5-comma-joined"
    ),
]


@pytest.mark.parametrize(("value", "reason"), INFEASIBLE_CASES)
def test_infeasible(value: str, reason: str) -> None:
    headers = (("Content-Type", "text/html"), (CSP, value))
    result = merge_response_csp(headers, FIRST_PARTY, N)
    assert (result.feasible, result.reason, result.changed) == (False, reason, False)
    assert result.headers is headers
    assert result.nonce == N


FEASIBLE_EDGE_CASES = [
    pytest.param("sandbox allow-scripts allow-same-origin", None, id="F1-allow-scripts"),
    pytest.param("SANDBOX ALLOW-SAME-ORIGIN ALLOW-SCRIPTS", None, id="F1-allow-scripts-case"),
    pytest.param(
        "sandbox allow-scripts allow-same-origin; script-src 'self'",
        f"sandbox allow-scripts allow-same-origin; script-src 'self' {NT}; worker-src 'self' blob:",
        id="F1-allow-scripts-merged",
    ),
    pytest.param(
        "default-src 'none'",
        f"default-src 'none'; script-src {NT}; connect-src 'self'; worker-src blob:",
        id="F2-default-src-none-is-not-F2",
    ),
    pytest.param(
        "script-src-elem 'self'; script-src 'none'",
        f"script-src-elem 'self' {NT}; script-src 'none'",
        id="F2-only-governing-elem-counts",
    ),
    pytest.param("script-src-attr 'none'", None, id="F2-script-src-attr-does-not-govern-elements"),
    pytest.param(
        "default-src 'none'; connect-src 'self'",
        f"default-src 'none'; connect-src 'self'; script-src {NT}; worker-src blob:",
        id="F3-default-none-connect-self",
    ),
    pytest.param(
        "connect-src 'none' 'self'",
        None,
        id="F3-none-with-other-source-is-not-none",
    ),
]


@pytest.mark.parametrize(("value", "expected"), FEASIBLE_EDGE_CASES)
def test_feasible_edges(value: str, expected: str | None) -> None:
    assert_merged(merge_one(value), value, expected)


def test_G5_one_infeasible_field_blocks_every_edit() -> None:
    headers = (
        (CSP, "script-src 'self'"),
        ("Vary", "Cookie"),
        (CSP, "sandbox allow-forms"),
        (CSPRO, "script-src 'self'"),
    )
    result = merge_response_csp(headers, FIRST_PARTY, N)
    assert (result.feasible, result.reason, result.changed) == (False, REASON_SANDBOX, False)
    assert result.headers is headers


@pytest.mark.parametrize(
    "order", [pytest.param((0, 1), id="opaque-first"), pytest.param((1, 0), id="opaque-second")]
)
def test_F1_a_policy_blocking_scripts_is_reported_whatever_the_field_order(
    order: tuple[int, int],
) -> None:
    fields = [(CSP, "sandbox allow-scripts"), (CSP, "script-src 'self'; sandbox allow-forms")]
    headers = tuple(fields[i] for i in order)
    result = merge_response_csp(headers, FIRST_PARTY, N)
    assert (result.feasible, result.reason, result.changed) == (False, REASON_SANDBOX, False)


def test_F1_opaque_sandbox_in_report_only_does_not_block() -> None:
    headers = [(CSP, "script-src 'self'"), (CSPRO, "sandbox allow-scripts; script-src 'self'")]
    result = merge_response_csp(headers, FIRST_PARTY, N)
    assert (result.feasible, result.reason) == (True, None)


def test_F1_opaque_sandbox_is_not_lifted_by_override_explicit_none() -> None:
    needs = dataclasses.replace(FIRST_PARTY, override_explicit_none=True)
    assert merge_one("sandbox allow-scripts", needs).reason == REASON_SANDBOX_OPAQUE


def test_R1_report_only_never_decides_feasibility() -> None:
    headers = [
        (CSP, "script-src 'self'"),
        (CSPRO, "sandbox; script-src 'none'; connect-src 'none'"),
    ]
    result = merge_response_csp(headers, FIRST_PARTY, N)
    assert result.feasible
    assert result.headers == (
        (CSP, f"script-src 'self' {NT}; worker-src 'self' blob:"),
        headers[1],
    )


OVERRIDE_CASES = [
    pytest.param("script-src 'none'", FIRST_PARTY, f"script-src {NT}", False, id="F5-script-none"),
    pytest.param("script-src", FIRST_PARTY, f"script-src {NT}", False, id="F5-script-empty"),
    pytest.param(
        "script-src-elem 'none'; script-src 'self'",
        FIRST_PARTY,
        f"script-src-elem {NT}; script-src 'self' {NT}; worker-src 'self' blob:",
        True,
        id="F5-elem-none",
    ),
    pytest.param(
        "connect-src 'none'", FIRST_PARTY, "connect-src 'self'", True, id="F5-connect-none-dedup"
    ),
    pytest.param(
        "connect-src 'none'; img-src 'self'",
        DIRECT_US,
        f"connect-src {US_HOSTS}; img-src 'self'",
        True,
        id="F5-connect-none-direct",
    ),
    pytest.param(
        "Connect-Src 'NONE'", WITH_ORIGIN, f"Connect-Src {SHOP_PREFIX}", True, id="F5-name-kept"
    ),
]


@pytest.mark.parametrize(("value", "needs", "expected", "worker"), OVERRIDE_CASES)
def test_override_explicit_none(value: str, needs: CspNeeds, expected: str, worker: bool) -> None:
    result = merge_one(value, dataclasses.replace(needs, override_explicit_none=True))
    assert_merged(result, value, expected)
    # W3 still respected: an explicit 'none' for workers is not overridden (W6: original policy).
    assert result.use_web_worker is worker


def test_override_does_not_lift_sandbox() -> None:
    needs = dataclasses.replace(FIRST_PARTY, override_explicit_none=True)
    assert merge_one("sandbox; script-src 'none'", needs).reason == REASON_SANDBOX


def test_override_leaves_report_only_none_alone() -> None:
    needs = dataclasses.replace(FIRST_PARTY, override_explicit_none=True)
    value = "script-src 'none'; connect-src 'none'"
    assert_merged(merge_one(value, needs, report_only=True), value, None)


@pytest.mark.parametrize(
    ("value", "needs", "reason"),
    [
        pytest.param(
            "script-src 'unsafe-inline' https://cdn.example.com",
            CDN,
            REASON_SCRIPT_BLOCKED,
            id="S3-one-source-cannot-admit-loader-and-cdn",
        ),
        pytest.param(
            "default-src 'unsafe-inline' https://cdn.example.com",
            CDN,
            REASON_SCRIPT_BLOCKED,
            id="S4-one-source-cannot-admit-loader-and-cdn",
        ),
        pytest.param(
            "connect-src https://api.example",
            dataclasses.replace(DIRECT_US, connect_sources=("https://api-sr.amplitude.com",) * 2),
            REASON_CONNECT_BLOCKED,
            id="C2-source-does-not-cover-url",
        ),
    ],
)
def test_sources_that_cannot_admit_our_urls_are_infeasible(
    value: str, needs: CspNeeds, reason: str
) -> None:
    result = merge_one(value, needs)
    assert (result.feasible, result.reason, result.changed) == (False, reason, False)


def test_connect_blocked_in_report_only_is_merged_anyway() -> None:
    needs = dataclasses.replace(DIRECT_US, connect_sources=("https://api-sr.amplitude.com",) * 2)
    headers = [(CSP, "img-src *"), (CSPRO, "connect-src https://api.example")]
    result = merge_response_csp(headers, needs, N)
    assert result.feasible
    assert result.headers == (
        headers[0],
        (CSPRO, "connect-src https://api.example https://api-sr.amplitude.com"),
    )


def test_script_blocked_in_report_only_is_merged_anyway() -> None:
    value = "script-src 'unsafe-inline' https://cdn.example.com"
    assert_merged(
        merge_one(value, CDN, report_only=True),
        value,
        "script-src 'unsafe-inline' https://cdn.example.com https://cdn.amplitude.com; "
        "worker-src https://cdn.example.com blob:",
    )


# =============================================================================================
# N: nonce choice and reuse
# =============================================================================================


def test_new_nonce_is_128_bit_base64url_without_padding() -> None:
    nonces = {new_nonce() for _ in range(200)}
    assert len(nonces) == 200
    for nonce in nonces:
        assert len(nonce) == 22  # 16 bytes → 22 base64url chars, no padding
        assert set(nonce) <= set(string.ascii_letters + string.digits + "-_")


NONCE_CASES: list[Any] = [
    pytest.param(
        [(CSP, "script-src 'nonce-abc'")],
        None,
        "abc",
        [(CSP, "script-src 'nonce-abc'; worker-src blob:")],
        id="N2-reuse-single-policy-other-edits-still-made",
    ),
    pytest.param(
        [(CSP, "script-src 'NONCE-abc'")],
        None,
        "abc",
        [(CSP, "script-src 'NONCE-abc'; worker-src blob:")],
        id="N2-nonce-prefix-case-insensitive",
    ),
    pytest.param(
        [(CSP, "script-src 'nonce-abc=='; worker-src blob:")],
        None,
        "abc==",
        None,
        id="N2-padded-nonce-reused-nothing-changed",
    ),
    pytest.param(
        [(CSP, "script-src 'nonce-abc'; worker-src 'none'"), (CSP, "script-src 'nonce-abc'")],
        None,
        "abc",
        None,
        id="N2-same-nonce-in-every-policy",
    ),
    pytest.param(
        [
            (
                CSP,
                "script-src 'nonce-abc'; worker-src blob:, script-src 'nonce-xyz' 'nonce-abc'; "
                "worker-src blob:",
            )
        ],
        None,
        "abc",
        None,
        id="N2-common-nonce-across-comma-joined",
    ),
    pytest.param(
        [
            (CSP, "script-src 'nonce-abc'; worker-src blob:"),
            (CSP, "script-src 'nonce-xyz'; worker-src blob:"),
        ],
        None,
        N,
        [
            (CSP, f"script-src 'nonce-abc' {NT}; worker-src blob:"),
            (CSP, f"script-src 'nonce-xyz' {NT}; worker-src blob:"),
        ],
        id="N2-different-nonces-ours-everywhere",
    ),
    pytest.param(
        [
            (CSP, "script-src 'nonce-ABC'; worker-src blob:"),
            (CSP, "script-src 'nonce-abc'; worker-src blob:"),
        ],
        None,
        N,
        [
            (CSP, f"script-src 'nonce-ABC' {NT}; worker-src blob:"),
            (CSP, f"script-src 'nonce-abc' {NT}; worker-src blob:"),
        ],
        id="N2-nonce-values-case-sensitive",
    ),
    pytest.param(
        [
            (CSP, "script-src 'nonce-app' 'self'; worker-src blob:"),
            (CSP, "default-src 'self'; worker-src blob:"),
        ],
        None,
        N,
        [
            (CSP, f"script-src 'nonce-app' 'self' {NT}; worker-src blob:"),
            (CSP, f"default-src 'self'; worker-src blob:; script-src 'self' {NT}"),
        ],
        id="N2-missing-in-one-policy-N4-app-nonce-stays-first",
    ),
    pytest.param(
        [
            (CSP, "script-src 'nonce-abc'; worker-src blob:"),
            (CSP, "script-src 'self' 'unsafe-inline'; worker-src blob:"),
        ],
        None,
        "abc",
        None,
        id="N2-inline-ok-policy-needs-no-nonce",
    ),
    pytest.param(
        [(CSP, "script-src 'nonce-first' 'nonce-app'; worker-src blob:")],
        "app",
        "app",
        None,
        id="N2-verified-app-nonce-preferred",
    ),
    pytest.param(
        [(CSP, "script-src 'nonce-first' 'nonce-second'; worker-src blob:")],
        None,
        "first",
        None,
        id="N2-first-common-nonce-without-app-nonce",
    ),
    pytest.param(
        [(CSP, "script-src 'nonce-abc'; worker-src blob:")],
        "zzz",
        "abc",
        None,
        id="N2-unverified-app-nonce-ignored",
    ),
    pytest.param(
        [(CSP, "script-src 'self'; worker-src blob:")],
        "zzz",
        N,
        [(CSP, f"script-src 'self' {NT}; worker-src blob:")],
        id="N2-app-nonce-not-in-header-never-used",
    ),
    pytest.param(
        [(CSP, "script-src 'self' 'unsafe-inline'; worker-src blob:")],
        "app",
        N,
        None,
        id="N2-no-policy-needs-a-nonce",
    ),
    pytest.param(
        [(CSP, "script-src 'nonce-a*c' 'nonce-'; worker-src blob:")],
        "a*c",
        N,
        [(CSP, f"script-src 'nonce-a*c' 'nonce-' {NT}; worker-src blob:")],
        id="N2-invalid-nonce-sources-never-reused",
    ),
    pytest.param(
        [
            (CSP, "script-src 'nonce-abc'; worker-src blob:"),
            (CSPRO, "script-src 'nonce-xyz'; worker-src blob:"),
        ],
        None,
        N,
        [
            (CSP, f"script-src 'nonce-abc' {NT}; worker-src blob:"),
            (CSPRO, f"script-src 'nonce-xyz' {NT}; worker-src blob:"),
        ],
        id="N2-report-only-being-merged-counts",
    ),
    pytest.param(
        [(CSP, "default-src 'self' 'nonce-abc'")],
        None,
        "abc",
        [(CSP, "default-src 'self' 'nonce-abc'; worker-src 'self' blob:")],
        id="N2-S4-nonce-in-default-src-no-script-src-created",
    ),
    pytest.param(
        [(CSP, "script-src-elem 'nonce-abc'; script-src 'self'; worker-src blob:")],
        None,
        N,
        [(CSP, f"script-src-elem 'nonce-abc' {NT}; script-src 'self' {NT}; worker-src blob:")],
        id="N2-S5-needs-the-nonce-in-both",
    ),
    pytest.param(
        [(CSP, "script-src-elem 'nonce-abc'; script-src 'nonce-abc'; worker-src blob:")],
        None,
        "abc",
        None,
        id="N2-S5-nonce-in-both-reused",
    ),
]


@pytest.mark.parametrize(("headers", "app_nonce", "nonce", "expected"), NONCE_CASES)
def test_nonce_choice(
    headers: list[tuple[str, str]],
    app_nonce: str | None,
    nonce: str,
    expected: list[tuple[str, str]] | None,
) -> None:
    result = merge_response_csp(headers, FIRST_PARTY, N, app_nonce=app_nonce)
    assert result.feasible
    assert result.nonce == nonce
    if expected is None:
        assert not result.changed
        assert result.headers == tuple(headers)
    else:
        assert result.changed
        assert result.headers == tuple(expected)
    assert result.nonce_in_headers is (expected is not None and nonce == N)


def test_N2_report_only_not_merged_does_not_block_reuse() -> None:
    headers = [(CSP, "script-src 'nonce-abc'; worker-src blob:"), (CSPRO, "script-src 'self'")]
    needs = dataclasses.replace(FIRST_PARTY, merge_report_only=False)
    result = merge_response_csp(headers, needs, N)
    assert (result.nonce, result.changed) == ("abc", False)


@pytest.mark.parametrize(
    "nonce", ["", "a b", "abc'", "abc;", "abc===", "\xe9t\xe9", "<script"], ids=repr
)
def test_invalid_nonce_argument_is_rejected(nonce: str) -> None:
    with pytest.raises(ValueError, match="base64-value"):
        merge_response_csp([], FIRST_PARTY, nonce)
    with pytest.raises(ValueError, match="base64-value"):
        merge_meta_csp("script-src 'self'", FIRST_PARTY, nonce)


# =============================================================================================
# S: scripts
# =============================================================================================

SCRIPT_CASES = [
    # S1
    pytest.param("first_party", "img-src 'self'", None, id="S1-no-script-directive"),
    pytest.param("first_party", "style-src 'self'; object-src 'none'", None, id="S1-unrelated"),
    # S3 non-inline → nonce
    pytest.param(
        "first_party",
        "script-src https://cdn.example.com",
        f"script-src https://cdn.example.com {NT}; worker-src https://cdn.example.com blob:",
        id="S3-host-allowlist-gets-nonce",
    ),
    pytest.param(
        "first_party",
        "script-src 'sha256-abc='; worker-src blob:",
        f"script-src 'sha256-abc=' {NT}; worker-src blob:",
        id="S3-hash-only-gets-nonce",
    ),
    pytest.param(
        "first_party",
        "script-src 'self' 'unsafe-inline' 'sha256-abc='; worker-src blob:",
        f"script-src 'self' 'unsafe-inline' 'sha256-abc=' {NT}; worker-src blob:",
        id="S3-hash-disables-unsafe-inline-so-nonce",
    ),
    pytest.param(
        "first_party",
        "script-src 'unsafe-inline' 'strict-dynamic'",
        f"script-src 'unsafe-inline' 'strict-dynamic' {NT}",
        id="S3-strict-dynamic-disables-unsafe-inline-so-nonce",
    ),
    pytest.param(
        "first_party",
        "script-src 'strict-dynamic'",
        f"script-src 'strict-dynamic' {NT}",
        id="S3-strict-dynamic-without-nonce",
    ),
    # S3 inline_ok → never a nonce; a source only if needed
    pytest.param(
        "first_party",
        "script-src 'self' 'unsafe-inline'; worker-src blob:",
        None,
        id="S3-inline-ok-self-covers-first-party",
    ),
    pytest.param(
        "first_party",
        "script-src 'SELF' 'UNSAFE-INLINE'; worker-src blob:",
        None,
        id="S3-inline-ok-keywords-case-insensitive",
    ),
    pytest.param(
        "first_party",
        "script-src 'unsafe-inline' https://cdn.example.com",
        "script-src 'unsafe-inline' https://cdn.example.com 'self'; "
        "worker-src https://cdn.example.com blob:",
        id="S3-inline-ok-adds-self-not-nonce",
    ),
    pytest.param(
        "first_party",
        "script-src 'unsafe-inline' 'nonce-' 'sha256-'; worker-src blob:",
        "script-src 'unsafe-inline' 'nonce-' 'sha256-' 'self'; worker-src blob:",
        id="S3-invalid-nonce-and-hash-do-not-disable-unsafe-inline",
    ),
    pytest.param(
        "first_party",
        "script-src 'unsafe-inline' *; worker-src blob:",
        None,
        id="S3-inline-ok-star-covers-first-party",
    ),
    pytest.param(
        "origin",
        "script-src 'unsafe-inline' https://cdn.example.com; worker-src blob:",
        f"script-src 'unsafe-inline' https://cdn.example.com {SHOP_PREFIX}; worker-src blob:",
        id="S3-inline-ok-adds-public-origin-prefix",
    ),
    pytest.param(
        "origin",
        "script-src 'unsafe-inline' https://shop.example/_replay/; worker-src blob:",
        None,
        id="S3-inline-ok-path-prefix-already-covers",
    ),
    pytest.param(
        "origin",
        "script-src 'unsafe-inline' https:; worker-src blob:",
        None,
        id="S3-inline-ok-https-scheme-covers-known-https-origin",
    ),
    pytest.param(
        "first_party",
        "script-src 'unsafe-inline' https:; worker-src blob:",
        "script-src 'unsafe-inline' https: 'self'; worker-src blob:",
        id="S3-inline-ok-https-scheme-unknown-page-scheme",
    ),
    pytest.param(
        "cdn",
        "script-src 'self' 'unsafe-inline'; worker-src blob:",
        "script-src 'self' 'unsafe-inline' https://cdn.amplitude.com; worker-src blob:",
        id="S3-inline-ok-cdn-sdk-adds-cdn-host",
    ),
    pytest.param(
        "cdn",
        "script-src 'self' 'unsafe-inline' https://cdn.amplitude.com/libs/; worker-src blob:",
        None,
        id="S3-inline-ok-cdn-path-covers",
    ),
    pytest.param(
        "cdn",
        "script-src 'self' 'unsafe-inline' *.amplitude.com; worker-src blob:",
        None,
        id="S3-inline-ok-cdn-wildcard-covers",
    ),
    pytest.param(
        "cdn",
        "script-src 'self'; worker-src blob:",
        f"script-src 'self' {NT}; worker-src blob:",
        id="S3-cdn-not-inline-nonce-only",
    ),
    # S4
    pytest.param(
        "first_party",
        "default-src 'self'",
        f"default-src 'self'; script-src 'self' {NT}; worker-src 'self' blob:",
        id="S4-create-script-src-copy-of-default-src",
    ),
    pytest.param(
        "first_party",
        "default-src 'self' 'unsafe-eval' 'wasm-unsafe-eval' 'sha256-abc=' "
        "'unsafe-hashes' 'report-sample' https://x.example 'strict-dynamic'",
        "default-src 'self' 'unsafe-eval' 'wasm-unsafe-eval' 'sha256-abc=' "
        "'unsafe-hashes' 'report-sample' https://x.example 'strict-dynamic'; "
        "script-src 'self' 'unsafe-eval' 'wasm-unsafe-eval' 'sha256-abc=' "
        f"'unsafe-hashes' 'report-sample' https://x.example 'strict-dynamic' {NT}",
        id="S4-verbatim-copy-keeps-eval-hashes-strict-dynamic",
    ),
    pytest.param(
        "first_party",
        "default-src 'none'; img-src 'self'",
        f"default-src 'none'; img-src 'self'; script-src {NT}; connect-src 'self'; "
        "worker-src blob:",
        id="S4-default-src-none-just-the-nonce",
    ),
    pytest.param(
        "first_party",
        "default-src",
        f"default-src; script-src {NT}; connect-src 'self'; worker-src blob:",
        id="S4-default-src-empty",
    ),
    pytest.param(
        "first_party",
        "default-src 'self' 'unsafe-inline'",
        "default-src 'self' 'unsafe-inline'; worker-src 'self' blob:",
        id="S4-inline-ok-covered-no-script-src-created",
    ),
    pytest.param(
        "first_party",
        "default-src 'unsafe-inline' https:",
        "default-src 'unsafe-inline' https:; script-src 'unsafe-inline' https: 'self'; "
        "connect-src https: 'self'; worker-src https: blob:",
        id="S4-inline-ok-copy-plus-source",
    ),
    pytest.param(
        "origin",
        "default-src 'unsafe-inline' https:",
        "default-src 'unsafe-inline' https:; worker-src https: blob:",
        id="S4-inline-ok-covered-with-known-origin",
    ),
    pytest.param(
        "first_party",
        "default-src 'self' blob:",
        f"default-src 'self' blob:; script-src 'self' blob: {NT}",
        id="S4-copy-carries-apps-own-blob",
    ),
    # S5
    pytest.param(
        "first_party",
        "script-src-elem 'self'; script-src 'self'",
        f"script-src-elem 'self' {NT}; script-src 'self' {NT}; worker-src 'self' blob:",
        id="S5-both-get-nonce",
    ),
    pytest.param(
        "first_party",
        "script-src-elem 'nonce-abc'; script-src 'self' 'unsafe-inline'",
        "script-src-elem 'nonce-abc'; script-src 'self' 'unsafe-inline'; worker-src 'self' blob:",
        id="S5-each-independently-inline-ok-secondary",
    ),
    pytest.param(
        "first_party",
        "script-src-elem 'self' 'unsafe-inline'; script-src https://x.example",
        f"script-src-elem 'self' 'unsafe-inline'; script-src https://x.example {NT}; "
        "worker-src https://x.example blob:",
        id="S5-inline-ok-elem-nonce-secondary",
    ),
    pytest.param(
        "first_party",
        "script-src-elem 'self'; default-src 'self'",
        f"script-src-elem 'self' {NT}; default-src 'self'; worker-src 'self' blob:",
        id="S5-elem-only-no-script-src-created",
    ),
    pytest.param(
        "first_party",
        "script-src-attr 'none'; script-src 'self'",
        f"script-src-attr 'none'; script-src 'self' {NT}; worker-src 'self' blob:",
        id="S5-never-touch-script-src-attr",
    ),
    # G3 / G4: directives we never touch
    pytest.param(
        "first_party",
        "default-src 'self'; style-src 'self'; child-src 'self'; frame-src 'none'; "
        "base-uri 'none'; report-uri /csp",
        "default-src 'self'; style-src 'self'; child-src 'self'; frame-src 'none'; "
        f"base-uri 'none'; report-uri /csp; script-src 'self' {NT}; worker-src 'self' blob:",
        id="G3-other-directives-untouched",
    ),
]


@pytest.mark.parametrize(("needs", "value", "expected"), SCRIPT_CASES)
def test_scripts(needs: str, value: str, expected: str | None) -> None:
    assert_merged(merge_one(value, NEEDS[needs]), value, expected)


def test_S4_copy_keeps_an_app_nonce_that_cannot_be_reused() -> None:
    headers = [(CSP, "default-src 'self' 'nonce-q'; worker-src blob:"), (CSP, "script-src 'self'")]
    result = merge_response_csp(headers, FIRST_PARTY, N)
    assert result.nonce == N
    assert result.headers == (
        (CSP, f"default-src 'self' 'nonce-q'; worker-src blob:; script-src 'self' 'nonce-q' {NT}"),
        (CSP, f"script-src 'self' {NT}; worker-src 'self' blob:"),
    )


def test_S5_secondary_explicit_none_left_alone_and_workers_off() -> None:
    value = "script-src-elem 'self'; script-src 'none'"
    result = merge_one(value)
    assert_merged(result, value, f"script-src-elem 'self' {NT}; script-src 'none'")
    assert result.use_web_worker is False  # W3: workers governed by script-src 'none'


def test_S3_inline_ok_never_adds_a_nonce() -> None:
    result = merge_one("script-src 'unsafe-inline'", CDN)
    assert result.reason == REASON_SCRIPT_BLOCKED  # loader not allowed, one source can't fix
    value = "script-src 'unsafe-inline' 'self'; worker-src blob:"
    result = merge_one(value, CDN)
    assert NT not in result.headers[0][1]
    assert result.nonce_in_headers is False


# =============================================================================================
# C: connections
# =============================================================================================

CONNECT_CASES = [
    pytest.param("first_party", "connect-src 'self'", None, id="C2-self-covers-first-party"),
    pytest.param(
        "first_party",
        "connect-src https://api.example",
        "connect-src https://api.example 'self'",
        id="C2-self-added-once-for-two-urls",
    ),
    pytest.param("first_party", "connect-src *", None, id="C2-star-covers-first-party"),
    pytest.param(
        "origin",
        "connect-src https://api.example",
        f"connect-src https://api.example {SHOP_PREFIX}",
        id="C2-public-origin-prefix-added-once",
    ),
    pytest.param("origin", "connect-src 'self'", None, id="C2-origin-self-covers"),
    pytest.param("origin", f"connect-src {SHOP_PREFIX}", None, id="C2-origin-prefix-covers"),
    pytest.param("origin", f"connect-src {SHOP}", None, id="C2-origin-host-covers"),
    pytest.param(
        "origin",
        "connect-src https://shop.example/api/",
        f"connect-src https://shop.example/api/ {SHOP_PREFIX}",
        id="C2-origin-other-path-not-covered",
    ),
    pytest.param(
        "direct_us",
        "connect-src 'self'",
        f"connect-src 'self' {US_HOSTS}",
        id="C2-direct-us-hosts",
    ),
    pytest.param(
        "direct_eu",
        "connect-src 'self'",
        f"connect-src 'self' {EU_HOSTS}",
        id="C2-direct-eu-hosts",
    ),
    pytest.param(
        "direct_us",
        "connect-src 'self' https://api-sr.amplitude.com",
        "connect-src 'self' https://api-sr.amplitude.com https://sr-client-cfg.amplitude.com",
        id="C2-only-the-missing-config-host",
    ),
    pytest.param(
        "direct_us",
        "connect-src 'self' https://sr-client-cfg.amplitude.com",
        "connect-src 'self' https://sr-client-cfg.amplitude.com https://api-sr.amplitude.com",
        id="C2-only-the-missing-track-host",
    ),
    pytest.param("direct_us", "connect-src https://*.amplitude.com", None, id="C2-wildcard-covers"),
    pytest.param("direct_eu", "connect-src *.amplitude.com", None, id="C2-wildcard-covers-eu"),
    pytest.param("direct_us", "connect-src https:", None, id="C2-https-scheme-covers"),
    pytest.param("direct_us", "connect-src *", None, id="C2-star-covers"),
    pytest.param(
        "direct_us",
        "connect-src api-sr.amplitude.com sr-client-cfg.amplitude.com",
        None,
        id="C2-schemeless-hosts-cover-https",
    ),
    pytest.param(
        "direct_us",
        "connect-src http://api-sr.amplitude.com http://sr-client-cfg.amplitude.com",
        None,
        id="C2-http-sources-upgrade",
    ),
    pytest.param(
        "direct_us",
        "connect-src https://api-sr.amplitude.com/sessions/ https://sr-client-cfg.amplitude.com/",
        None,
        id="C2-path-prefixes-cover",
    ),
    pytest.param(
        "direct_us",
        "connect-src https://api-sr.amplitude.com:8443 https://sr-client-cfg.amplitude.com",
        "connect-src https://api-sr.amplitude.com:8443 https://sr-client-cfg.amplitude.com "
        "https://api-sr.amplitude.com",
        id="C2-wrong-port-not-covered",
    ),
    pytest.param(
        "direct_eu",
        f"connect-src 'self' {US_HOSTS}",
        f"connect-src 'self' {US_HOSTS} {EU_HOSTS}",
        id="C2-us-hosts-do-not-cover-eu",
    ),
    pytest.param(
        "direct_us",
        "connect-src 'none' 'self'",
        f"connect-src 'none' 'self' {US_HOSTS}",
        id="C2-Z2-none-next-to-sources-kept",
    ),
    # C3: creation from default-src
    pytest.param(
        "direct_us",
        "default-src 'self' https://fonts.example 'unsafe-inline' 'nonce-abc' 'sha256-x='",
        "default-src 'self' https://fonts.example 'unsafe-inline' 'nonce-abc' 'sha256-x='; "
        f"connect-src 'self' https://fonts.example {US_HOSTS}; "
        "worker-src 'self' https://fonts.example blob:",
        id="C3-create-from-url-sources-of-default-src",
    ),
    pytest.param(
        "direct_us",
        "default-src 'none'; script-src 'nonce-abc'; worker-src blob:",
        f"default-src 'none'; script-src 'nonce-abc'; worker-src blob:; connect-src {US_HOSTS}",
        id="C3-default-none-only-our-sources",
    ),
    pytest.param(
        "first_party",
        "default-src 'none'; script-src 'nonce-abc'; worker-src blob:",
        "default-src 'none'; script-src 'nonce-abc'; worker-src blob:; connect-src 'self'",
        id="C3-default-none-first-party-self",
    ),
    pytest.param(
        "origin",
        "default-src 'none'; script-src 'nonce-abc'; worker-src blob:",
        f"default-src 'none'; script-src 'nonce-abc'; worker-src blob:; connect-src {SHOP_PREFIX}",
        id="C3-default-none-public-origin",
    ),
    pytest.param(
        "direct_us",
        "default-src https:; script-src 'nonce-abc'; worker-src blob:",
        None,
        id="C3-default-src-covers-nothing-created",
    ),
    pytest.param(
        "direct_us",
        "default-src 'none'; connect-src https://*.amplitude.com; script-src 'nonce-abc'",
        "default-src 'none'; connect-src https://*.amplitude.com; script-src 'nonce-abc'; "
        "worker-src blob:",
        id="C3-connect-src-governs-over-default-src",
    ),
    pytest.param(
        "direct_us",
        "script-src 'nonce-abc'; worker-src blob:",
        None,
        id="C1-no-connect-no-default-unrestricted",
    ),
]


@pytest.mark.parametrize(("needs", "value", "expected"), CONNECT_CASES)
def test_connect(needs: str, value: str, expected: str | None) -> None:
    assert_merged(merge_one(value, NEEDS[needs]), value, expected)


BAD_NEEDS = [
    pytest.param({"script_source": "*"}, id="G3-star"),
    pytest.param({"script_source": "https:"}, id="G3-bare-scheme"),
    pytest.param({"script_source": "blob:"}, id="G3-blob"),
    pytest.param({"script_source": "'unsafe-inline'"}, id="G3-unsafe-inline"),
    pytest.param({"script_source": "'strict-dynamic'"}, id="G3-strict-dynamic"),
    pytest.param({"script_source": "https://*.amplitude.com"}, id="G3-wildcard-host"),
    pytest.param({"script_source": "cdn.amplitude.com"}, id="G3-schemeless"),
    pytest.param(
        {"connect_sources": ("'self'", "https://a.example; script-src *")}, id="G3-injection"
    ),
    pytest.param({"connect_sources": ("'self'", "https://a.example:*")}, id="G3-wildcard-port"),
    pytest.param({"connect_sources": ("'self'",)}, id="length-mismatch"),
    pytest.param({"public_origin": "shop.example"}, id="C4-origin-without-scheme"),
    pytest.param({"public_origin": "https://shop.example/app"}, id="C4-origin-with-path"),
    pytest.param({"public_origin": "javascript:alert(1)"}, id="C4-origin-javascript"),
    pytest.param({"public_origin": "https://u@shop.example"}, id="C4-origin-userinfo"),
]


@pytest.mark.parametrize("changes", BAD_NEEDS)
def test_needs_validation(changes: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        dataclasses.replace(FIRST_PARTY, **changes)


def test_needs_accepts_lists_and_normalises_to_tuples() -> None:
    needs = CspNeeds(
        script_urls=[LOADER],  # type: ignore[arg-type]
        script_source="https://shop.example:8443/_replay/",
        connect_urls=["/_replay/track"],  # type: ignore[arg-type]
        connect_sources=["'SELF'"],  # type: ignore[arg-type]
        public_origin="https://shop.example:8443/",
    )
    assert needs.script_urls == (LOADER,)
    assert needs.connect_sources == ("'SELF'",)


# =============================================================================================
# W: workers
# =============================================================================================

WORKER_CASES = [
    pytest.param("first_party", "img-src 'self'", None, True, id="W1-no-governing-directive"),
    pytest.param("first_party", "worker-src blob:", None, True, id="W2-worker-src-has-blob"),
    pytest.param(
        "first_party", "worker-src 'self' BLOB:", None, True, id="W2-blob-case-insensitive"
    ),
    pytest.param("first_party", "child-src blob:", None, True, id="W2-child-src-has-blob"),
    pytest.param(
        "first_party",
        "script-src 'self' blob:",
        f"script-src 'self' blob: {NT}",
        True,
        id="W2-script-src-has-blob",
    ),
    pytest.param(
        "first_party",
        "worker-src 'none'; script-src 'self'",
        f"worker-src 'none'; script-src 'self' {NT}",
        False,
        id="W3-worker-src-none",
    ),
    pytest.param(
        "first_party",
        "worker-src; script-src 'self'",
        f"worker-src; script-src 'self' {NT}",
        False,
        id="W3-worker-src-empty",
    ),
    pytest.param(
        "first_party",
        "child-src 'none'; script-src 'self'",
        f"child-src 'none'; script-src 'self' {NT}",
        False,
        id="W3-child-src-none",
    ),
    pytest.param(
        "first_party",
        "worker-src 'self'; child-src 'none'",
        "worker-src 'self' blob:; child-src 'none'",
        True,
        id="W3-only-the-governing-directive-counts",
    ),
    pytest.param(
        "first_party",
        "default-src 'none'; script-src 'nonce-abc'",
        "default-src 'none'; script-src 'nonce-abc'; connect-src 'self'; worker-src blob:",
        True,
        id="W5-script-src-governs-not-default-none",
    ),
    pytest.param(
        "first_party",
        "script-src 'nonce-abc' 'strict-dynamic'",
        None,
        True,
        id="W4-strict-dynamic-in-script-src",
    ),
    pytest.param(
        "first_party",
        "default-src 'self' 'strict-dynamic'",
        f"default-src 'self' 'strict-dynamic'; script-src 'self' 'strict-dynamic' {NT}",
        True,
        id="W4-strict-dynamic-in-default-src",
    ),
    pytest.param(
        "first_party",
        "worker-src 'strict-dynamic'",
        "worker-src 'strict-dynamic' blob:",
        True,
        id="W4-not-for-explicit-worker-src",
    ),
    pytest.param(
        "first_party",
        "child-src 'self'; script-src 'nonce-abc' 'strict-dynamic'",
        "child-src 'self'; script-src 'nonce-abc' 'strict-dynamic'; worker-src 'self' blob:",
        True,
        id="W4-child-src-governs-not-script-src",
    ),
    pytest.param(
        "first_party",
        "worker-src 'self' https://w.example",
        "worker-src 'self' https://w.example blob:",
        True,
        id="W5-append-to-worker-src",
    ),
    pytest.param(
        "first_party",
        "child-src 'self' https://w.example",
        "child-src 'self' https://w.example; worker-src 'self' https://w.example blob:",
        True,
        id="W5-create-from-child-src-never-edit-child-src",
    ),
    pytest.param(
        "first_party",
        "script-src 'self' 'unsafe-inline' 'unsafe-eval' https://w.example *.cdn.example data:",
        "script-src 'self' 'unsafe-inline' 'unsafe-eval' https://w.example *.cdn.example data:; "
        "worker-src 'self' https://w.example *.cdn.example data: blob:",
        True,
        id="W5-create-from-url-sources-of-script-src",
    ),
    pytest.param(
        "first_party",
        "default-src https://w.example",
        f"default-src https://w.example; script-src https://w.example {NT}; "
        "connect-src https://w.example 'self'; worker-src https://w.example blob:",
        True,
        id="W5-create-from-default-src",
    ),
    pytest.param(
        "first_party",
        "default-src 'none'",
        f"default-src 'none'; script-src {NT}; connect-src 'self'; worker-src blob:",
        True,
        id="W5-W6-default-none-just-blob",
    ),
]


@pytest.mark.parametrize(("needs", "value", "expected", "worker"), WORKER_CASES)
def test_workers(needs: str, value: str, expected: str | None, worker: bool) -> None:
    result = merge_one(value, NEEDS[needs])
    assert_merged(result, value, expected)
    assert result.use_web_worker is worker


def test_use_worker_off_skips_worker_rules() -> None:
    value = "script-src 'self'"
    result = merge_one(value, dataclasses.replace(FIRST_PARTY, use_worker=False))
    assert_merged(result, value, f"script-src 'self' {NT}")
    assert result.use_web_worker is False


def test_W3_in_one_policy_turns_workers_off_for_all_and_no_blob_anywhere() -> None:
    headers = [(CSP, "worker-src 'none'; script-src 'self'"), (CSP, "script-src 'self'")]
    result = merge_response_csp(headers, FIRST_PARTY, N)
    assert result.use_web_worker is False
    assert result.headers == (
        (CSP, f"worker-src 'none'; script-src 'self' {NT}"),
        (CSP, f"script-src 'self' {NT}"),
    )


def test_W3_in_report_only_does_not_turn_workers_off() -> None:
    headers = [(CSP, "script-src 'self'"), (CSPRO, "worker-src 'none'; script-src 'self'")]
    result = merge_response_csp(headers, FIRST_PARTY, N)
    assert result.use_web_worker is True
    assert result.headers == (
        (CSP, f"script-src 'self' {NT}; worker-src 'self' blob:"),
        (CSPRO, f"worker-src 'none'; script-src 'self' {NT}"),
    )


# =============================================================================================
# T: Trusted Types
# =============================================================================================

TT_CASES = [
    pytest.param(
        [(CSP, "require-trusted-types-for 'script'; script-src 'nonce-abc'")],
        False,
        True,
        False,
        None,
        id="T1-workers-off-nothing-added",
    ),
    pytest.param(
        [(CSP, "require-trusted-types-for 'script'; script-src 'nonce-abc'")],
        True,
        True,
        True,
        [(CSP, "require-trusted-types-for 'script'; script-src 'nonce-abc'; worker-src blob:")],
        id="T1-worker-under-tt-opt-in",
    ),
    pytest.param(
        [(CSP, "REQUIRE-TRUSTED-TYPES-FOR 'SCRIPT'; script-src 'self'")],
        False,
        True,
        False,
        [(CSP, f"REQUIRE-TRUSTED-TYPES-FOR 'SCRIPT'; script-src 'self' {NT}")],
        id="T1-case-insensitive",
    ),
    pytest.param(
        [(CSP, "require-trusted-types-for 'script'; trusted-types app; script-src 'self'")],
        False,
        True,
        False,
        [(CSP, f"require-trusted-types-for 'script'; trusted-types app; script-src 'self' {NT}")],
        id="T1-T2-trusted-types-never-touched",
    ),
    pytest.param(
        [(CSP, "trusted-types app; script-src 'self'")],
        False,
        False,
        True,
        [(CSP, f"trusted-types app; script-src 'self' {NT}; worker-src 'self' blob:")],
        id="T1-trusted-types-alone-does-not-require",
    ),
    pytest.param(
        [(CSP, "script-src 'self', require-trusted-types-for 'script'")],
        False,
        True,
        False,
        [(CSP, f"script-src 'self' {NT}, require-trusted-types-for 'script'")],
        id="T1-any-enforced-policy",
    ),
    pytest.param(
        [(CSP, "script-src 'self'"), (CSPRO, "require-trusted-types-for 'script'")],
        False,
        False,
        True,
        [
            (CSP, f"script-src 'self' {NT}; worker-src 'self' blob:"),
            (CSPRO, "require-trusted-types-for 'script'"),
        ],
        id="T1-report-only-does-not-count",
    ),
    pytest.param(
        [(CSP, "require-trusted-types-for 'scriptx'; script-src 'nonce-abc'; worker-src blob:")],
        False,
        False,
        True,
        None,
        id="T1-unknown-sink-group",
    ),
]


@pytest.mark.parametrize(
    ("headers", "worker_under_tt", "trusted_types", "worker", "expected"), TT_CASES
)
def test_trusted_types(
    headers: list[tuple[str, str]],
    worker_under_tt: bool,
    trusted_types: bool,
    worker: bool,
    expected: list[tuple[str, str]] | None,
) -> None:
    needs = dataclasses.replace(FIRST_PARTY, worker_under_tt=worker_under_tt)
    result = merge_response_csp(headers, needs, N)
    assert result.feasible
    assert result.trusted_types is trusted_types
    assert result.use_web_worker is worker
    assert result.headers == tuple(expected if expected is not None else headers)
    assert result.changed is (expected is not None)


# =============================================================================================
# R: report-only
# =============================================================================================

REPORT_ONLY_CASES = [
    pytest.param(
        "script-src 'self'",
        True,
        f"script-src 'self' {NT}; worker-src 'self' blob:",
        id="R2-merged-like-enforced",
    ),
    pytest.param("script-src 'self'", False, None, id="R2-off-untouched"),
    pytest.param(
        "script-src 'none'; connect-src https://api.example",
        True,
        "script-src 'none'; connect-src https://api.example 'self'",
        id="R2-script-none-left-others-merged",
    ),
    pytest.param(
        "script-src-elem 'none'; script-src 'self'",
        True,
        "script-src-elem 'none'; script-src 'self'; worker-src 'self' blob:",
        id="R2-elem-none-left-including-secondary",
    ),
    pytest.param(
        "connect-src 'none'; script-src 'self'",
        True,
        f"connect-src 'none'; script-src 'self' {NT}; worker-src 'self' blob:",
        id="R2-connect-none-left",
    ),
    pytest.param(
        "worker-src 'none'; script-src 'self'",
        True,
        f"worker-src 'none'; script-src 'self' {NT}",
        id="R2-worker-none-left",
    ),
    pytest.param(
        "sandbox; script-src 'self'",
        True,
        f"sandbox; script-src 'self' {NT}; worker-src 'self' blob:",
        id="R1-sandbox-does-not-block",
    ),
    pytest.param(
        "default-src 'none'",
        True,
        f"default-src 'none'; script-src {NT}; connect-src 'self'; worker-src blob:",
        id="R2-default-none-handled-by-S4-C3-W5",
    ),
]


@pytest.mark.parametrize(("value", "merge", "expected"), REPORT_ONLY_CASES)
def test_report_only(value: str, merge: bool, expected: str | None) -> None:
    needs = dataclasses.replace(FIRST_PARTY, merge_report_only=merge)
    result = merge_one(value, needs, report_only=True)
    assert_merged(result, value, expected)
    assert result.headers[0][0] == CSPRO  # G2: never turned into an enforced policy
    assert result.use_web_worker is True


def test_R2_enforced_and_report_only_share_one_nonce() -> None:
    headers = [(CSPRO, "default-src 'self'"), (CSP, "script-src 'self'")]
    result = merge_response_csp(headers, FIRST_PARTY, N)
    assert result.headers == (
        (CSPRO, f"default-src 'self'; script-src 'self' {NT}; worker-src 'self' blob:"),
        (CSP, f"script-src 'self' {NT}; worker-src 'self' blob:"),
    )


def test_R2_report_only_only_injects_normally() -> None:
    result = merge_one("script-src 'none'", report_only=True)
    assert (result.feasible, result.changed) == (True, False)


# =============================================================================================
# M: meta policies
# =============================================================================================

META_CASES = [
    pytest.param(
        "script-src 'self'",
        f"script-src 'self' {NT}; worker-src 'self' blob:",
        True,
        id="M2-merged",
    ),
    pytest.param("img-src 'self'", None, True, id="M2-nothing-to-do"),
    pytest.param("", None, True, id="M2-empty-content"),
    pytest.param(" ; ", None, True, id="M2-no-directives"),
    pytest.param(
        "sandbox; script-src 'self'",
        f"sandbox; script-src 'self' {NT}; worker-src 'self' blob:",
        True,
        id="M-sandbox-ignored-in-meta",
    ),
    pytest.param(
        "sandbox allow-scripts; script-src 'self'",
        f"sandbox allow-scripts; script-src 'self' {NT}; worker-src 'self' blob:",
        True,
        id="M-opaque-sandbox-ignored-in-meta",
    ),
    pytest.param(
        f"script-src {NT}; worker-src blob:",
        None,
        True,
        id="M-chosen-nonce-already-present",
    ),
    pytest.param(
        "default-src 'none'",
        f"default-src 'none'; script-src {NT}; connect-src 'self'; worker-src blob:",
        True,
        id="M-default-none",
    ),
    pytest.param(
        "worker-src 'none'; script-src 'self'",
        f"worker-src 'none'; script-src 'self' {NT}",
        False,
        id="M-W3-worker-none",
    ),
    pytest.param(
        "script-src 'self' 'unsafe-inline'; worker-src blob:",
        None,
        True,
        id="M-S3-inline-ok",
    ),
]


@pytest.mark.parametrize(("content", "expected", "worker"), META_CASES)
def test_meta(content: str, expected: str | None, worker: bool) -> None:
    result = merge_meta_csp(content, FIRST_PARTY, N)
    assert result.feasible and result.reason is None
    assert result.use_web_worker is worker
    if expected is None:
        assert result.changed is False and result.content is content
    else:
        assert result.changed is True and result.content == expected


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        pytest.param("script-src 'none'", REASON_SCRIPT_NONE, id="F2"),
        pytest.param("default-src 'self'; connect-src 'none'", REASON_CONNECT_NONE, id="F3"),
        pytest.param(
            "default-src 'self', script-src 'none'", REASON_META_AMBIGUOUS, id="comma-joined"
        ),
        pytest.param("script-src 'self',", REASON_META_AMBIGUOUS, id="trailing-comma"),
    ],
)
def test_meta_infeasible(content: str, reason: str) -> None:
    result = merge_meta_csp(content, FIRST_PARTY, N)
    assert (result.feasible, result.reason, result.changed) == (False, reason, False)
    assert result.content is content


def test_meta_comma_without_any_policy_is_harmless() -> None:
    result = merge_meta_csp(" , ,", FIRST_PARTY, N)
    assert (result.feasible, result.changed) == (True, False)


def test_meta_trusted_types() -> None:
    result = merge_meta_csp("require-trusted-types-for 'script'; script-src 'self'", FIRST_PARTY, N)
    assert (result.trusted_types, result.use_web_worker) == (True, False)
    assert result.content == f"require-trusted-types-for 'script'; script-src 'self' {NT}"


def test_meta_override_explicit_none() -> None:
    needs = dataclasses.replace(FIRST_PARTY, override_explicit_none=True)
    result = merge_meta_csp("script-src 'none'", needs, N)
    assert (result.feasible, result.content) == (True, f"script-src {NT}")


def test_meta_uses_the_nonce_the_header_merge_chose() -> None:
    header = merge_one("script-src 'nonce-abc'; worker-src blob:")
    assert header.nonce == "abc"
    meta = merge_meta_csp("script-src 'self'; worker-src blob:", FIRST_PARTY, header.nonce)
    assert meta.content == "script-src 'self' 'nonce-abc'; worker-src blob:"


def test_meta_in_direct_mode() -> None:
    result = merge_meta_csp("default-src 'self'", DIRECT_US, N)
    assert result.content == (
        f"default-src 'self'; script-src 'self' {NT}; connect-src 'self' {US_HOSTS}; "
        "worker-src 'self' blob:"
    )


# =============================================================================================
# Z: serialization, multiple fields, comma-joined policies
# =============================================================================================

SERIALIZATION_CASES = [
    pytest.param(
        "Script-Src 'self' 'self' 'none'",
        f"Script-Src 'self' 'self' 'none' {NT}; worker-src 'self' 'self' blob:",
        id="Z2-no-dedup-or-cleanup-name-case-kept",
    ),
    pytest.param(
        "default-src 'none'; img-src 'self'; font-src 'self'",
        f"default-src 'none'; img-src 'self'; font-src 'self'; script-src {NT}; "
        "connect-src 'self'; worker-src blob:",
        id="Z1-new-directives-at-end-in-fixed-order",
    ),
    pytest.param(
        "worker-src 'self'; default-src 'none'",
        f"worker-src 'self' blob:; default-src 'none'; script-src {NT}; connect-src 'self'",
        id="Z1-appends-in-place-creates-at-end",
    ),
    pytest.param(
        "script-src 'self';",
        f"script-src 'self' {NT}; worker-src 'self' blob:",
        id="Z1-trailing-semicolon",
    ),
    pytest.param(
        "  script-src    'self'   ;   img-src   *  ",
        f"script-src 'self' {NT}; img-src *; worker-src 'self' blob:",
        id="Z1-single-spaces",
    ),
    pytest.param(
        "img-src  'self' ;  , script-src 'self'",
        f"img-src  'self' ;, script-src 'self' {NT}; worker-src 'self' blob:",
        id="Z1-untouched-policy-byte-identical-in-joined-field",
    ),
    pytest.param(
        "script-src 'self',script-src 'self'",
        f"script-src 'self' {NT}; worker-src 'self' blob:, "
        f"script-src 'self' {NT}; worker-src 'self' blob:",
        id="Z1-rejoined-with-comma-space",
    ),
    pytest.param(
        "script-src 'self',, img-src *,",
        f"script-src 'self' {NT}; worker-src 'self' blob:, img-src *",
        id="Z1-blank-segments-dropped-on-rewrite",
    ),
    pytest.param(
        "img-src   *  ,  font-src 'self' ;",
        None,
        id="Z1-untouched-field-same-object",
    ),
    pytest.param(
        "script-src 'self'; conn\xe9ct-src x; img-src *",
        f"script-src 'self' {NT}; conn\xe9ct-src x; img-src *; worker-src 'self' blob:",
        id="Z1-non-ascii-directive-kept-in-place",
    ),
]


@pytest.mark.parametrize(("value", "expected"), SERIALIZATION_CASES)
def test_serialization(value: str, expected: str | None) -> None:
    assert_merged(merge_one(value), value, expected)


def test_other_headers_and_order_untouched() -> None:
    headers = (
        ("content-type", "text/html; charset=utf-8"),
        ("content-security-policy", "script-src 'self'"),
        ("set-cookie", "a=1"),
        ("content-security-policy", "img-src *"),
        ("content-security-policy-report-only", "default-src 'self'"),
        ("set-cookie", "b=2"),
    )
    result = merge_response_csp(headers, FIRST_PARTY, N)
    assert [name for name, _ in result.headers] == [name for name, _ in headers]
    for index in (0, 2, 3, 5):
        assert result.headers[index] is headers[index]
    assert result.headers[1] == (
        "content-security-policy",
        f"script-src 'self' {NT}; worker-src 'self' blob:",
    )
    assert result.headers[4] == (
        "content-security-policy-report-only",
        f"default-src 'self'; script-src 'self' {NT}; worker-src 'self' blob:",
    )
    assert isinstance(result.headers, tuple)


def test_multiple_fields_are_merged_independently() -> None:
    headers = [
        (CSP, "default-src 'self'"),
        (CSP, "script-src 'nonce-abc' 'strict-dynamic'; connect-src https://api.example"),
        (CSP, "object-src 'none'"),
    ]
    result = merge_response_csp(headers, DIRECT_US, N)
    assert result.nonce == N  # 'nonce-abc' is not in the first policy
    assert result.headers == (
        (
            CSP,
            f"default-src 'self'; script-src 'self' {NT}; connect-src 'self' {US_HOSTS}; "
            "worker-src 'self' blob:",
        ),
        (
            CSP,
            f"script-src 'nonce-abc' 'strict-dynamic' {NT}; "
            f"connect-src https://api.example {US_HOSTS}",
        ),
        headers[2],
    )
    assert result.headers[2] is headers[2]


def test_comma_joined_policies_are_merged_independently() -> None:
    value = "default-src 'self', script-src 'nonce-x', connect-src https://api.example"
    assert_merged(
        merge_one(value),
        value,
        f"default-src 'self'; script-src 'self' {NT}; worker-src 'self' blob:, "
        f"script-src 'nonce-x' {NT}; worker-src blob:, "
        "connect-src https://api.example 'self'",
    )


def test_merging_is_idempotent_for_the_same_nonce() -> None:
    value = (
        "default-src 'none', script-src-elem 'self'; script-src 'self' 'unsafe-inline', "
        "connect-src https://api.example; worker-src 'self'"
    )
    first = merge_one(value, DIRECT_US)
    second = merge_response_csp(first.headers, DIRECT_US, N)
    assert first.changed and not second.changed
    assert second.nonce == N


# =============================================================================================
# Hostile input
# =============================================================================================

HOSTILE_CASES = [
    pytest.param(
        "script-src 'self'\x00; connect-src *",
        f"script-src 'self'\x00 {NT}; connect-src *; worker-src blob:",
        id="nul-in-token-is-not-self",
    ),
    pytest.param(
        "script-src 'self' caf\xe9.example; default-src 'none'",
        f"script-src 'self' caf\xe9.example; default-src 'none'; script-src {NT}; "
        "connect-src 'self'; worker-src blob:",
        id="latin1-bytes-make-directive-invisible",
    ),
    pytest.param(",,,", None, id="only-commas"),
    pytest.param(";;;,;;", None, id="only-separators"),
    pytest.param("\x00\x01\x02", None, id="control-characters-only"),
    pytest.param("\r\n\r\n", None, id="crlf-only"),
    pytest.param(
        "script-src 'nonce-abc' 'nonce-abc' 'nonce-abc'; worker-src blob:",
        None,
        id="repeated-nonce",
    ),
    pytest.param(
        "script-src ''; worker-src blob:",
        f"script-src '' {NT}; worker-src blob:",
        id="empty-quotes-token",
    ),
    pytest.param("\u2028script-src 'none'", None, id="unicode-line-separator"),
    pytest.param(
        "script-src 'self' \"'unsafe-inline'\"; worker-src blob:",
        f"script-src 'self' \"'unsafe-inline'\" {NT}; worker-src blob:",
        id="double-quoted-keyword-is-not-a-keyword",
    ),
]


@pytest.mark.parametrize(("value", "expected"), HOSTILE_CASES)
def test_hostile_values(value: str, expected: str | None) -> None:
    assert_merged(merge_one(value), value, expected)


def test_huge_policy_is_merged() -> None:
    hosts = " ".join(f"https://h{i}.example" for i in range(50_000))
    value = f"script-src {hosts} 'unsafe-inline'; img-src *"
    result = merge_one(value)
    assert result.feasible
    assert result.headers[0][1] == (
        f"script-src {hosts} 'unsafe-inline' 'self'; img-src *; worker-src {hosts} blob:"
    )


def test_huge_garbage_token_and_many_directives() -> None:
    value = "script-src " + "a" * 1_000_000 + "!; " + "; ".join(["img-src *"] * 20_000)
    result = merge_one(value)
    assert result.feasible and result.changed
    assert result.headers[0][1].startswith("script-src " + "a" * 1_000_000 + f"! {NT}; img-src *")


def test_many_header_fields() -> None:
    headers = [(CSP, "script-src 'nonce-abc'; worker-src blob:")] * 2_000
    result = merge_response_csp(headers, FIRST_PARTY, N)
    assert (result.feasible, result.changed, result.nonce) == (True, False, "abc")


def test_empty_and_weird_header_values_never_raise() -> None:
    headers = [(CSP, ""), (CSP, " "), (CSPRO, ","), (CSP, "\x7f"), (CSP, "\xff\xfe")]
    result = merge_response_csp(headers, FIRST_PARTY, N)
    assert (result.feasible, result.changed) == (True, False)
    assert result.headers == tuple(headers)


CSP_ALPHABET = st.sampled_from(
    [
        "script-src",
        "script-src-elem",
        "default-src",
        "connect-src",
        "worker-src",
        "child-src",
        "sandbox",
        "allow-scripts",
        "allow-same-origin",
        "require-trusted-types-for",
        "'script'",
        NONE,
        SELF,
        UNSAFE_INLINE,
        STRICT_DYNAMIC,
        "'nonce-abc'",
        "'nonce-xyz'",
        "'sha256-abc='",
        BLOB,
        "https:",
        "*",
        "https://*.amplitude.com",
        "https://api-sr.amplitude.com",
        "https://shop.example/_replay/",
        "data:",
        " ",
        " ",
        " ",
        ";",
        ",",
        "\t",
        "\x00",
        "\xe9",
        "\xa0",
        "'",
        "SCRIPT-SRC",
    ]
)


@settings(
    max_examples=400,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    values=st.lists(st.lists(CSP_ALPHABET, max_size=25).map("".join), max_size=3),
    report_only=st.lists(st.booleans(), min_size=3, max_size=3),
    needs=st.sampled_from([FIRST_PARTY, WITH_ORIGIN, DIRECT_US, CDN]),
)
def test_property_never_raises_and_a_second_merge_changes_nothing(
    values: list[str], report_only: list[bool], needs: CspNeeds
) -> None:
    headers = [(CSPRO if ro else CSP, v) for v, ro in zip(values, report_only, strict=False)]
    result = merge_response_csp(headers, needs, N)
    if not result.feasible or not result.changed:
        assert result.headers == tuple(headers)
        assert all(a is b for a, b in zip(result.headers, headers, strict=True))
        return
    # Everything we need is now in place: merging the output again is a no-op (G5 stable).
    again = merge_response_csp(result.headers, needs, N)
    assert again.feasible
    assert not again.changed, (result.headers, again.headers)
    assert again.use_web_worker == result.use_web_worker


# The cache (issue 10): merge_response_csp answers from a per-process cache keyed by the
# policies with their nonce values replaced by stand-ins. It must give exactly what the full
# merge gives, on the first sight of a policy set and on every later response with other
# nonces; the alphabet adds case variants, padded values, glued and broken nonce tokens.
CACHE_ALPHABET = st.sampled_from(
    [
        "script-src ",
        "default-src ",
        "connect-src ",
        "worker-src ",
        "require-trusted-types-for 'script'",
        "sandbox allow-scripts",
        SELF,
        UNSAFE_INLINE,
        STRICT_DYNAMIC,
        "'nonce-abc'",
        "'NONCE-abc'",
        "'nonce-xyz=='",
        "'nonce-abc''nonce-xyz'",
        "'nonce-'",
        "'nonce-ab c'",
        "'sha256-abc='",
        "https://abc.example",
        "https:",
        "*",
        "https://api-sr.amplitude.com",
        "blob:",
        " ",
        " ",
        ";",
        ",",
    ]
)


@settings(
    max_examples=400,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    values=st.lists(st.lists(CACHE_ALPHABET, max_size=14).map("".join), min_size=1, max_size=3),
    report_only=st.lists(st.booleans(), min_size=3, max_size=3),
    needs=st.sampled_from([FIRST_PARTY, WITH_ORIGIN, DIRECT_US, CDN]),
    app=st.sampled_from([None, "abc", "xyz==", "other"]),
    renamed=st.sampled_from([("abc", "Q9w_"), ("xyz", "abc"), ("abc", "abc")]),
)
@example(  # two common nonces: the app's, second, must be the one chosen (N2)
    values=["script-src 'nonce-abc' 'nonce-xyz=='"],
    report_only=[False, False, False],
    needs=FIRST_PARTY,
    app="xyz==",
    renamed=("abc", "Q9w_"),
)
def test_property_cached_merge_is_the_full_merge(
    values: list[str],
    report_only: list[bool],
    needs: CspNeeds,
    app: str | None,
    renamed: tuple[str, str],
) -> None:
    headers = [("Server", "x")] + [
        (CSPRO if ro else CSP, v) for v, ro in zip(values, report_only, strict=False)
    ]
    # The second response: the same policies with other nonce values (and our other nonce).
    old, new = renamed
    later = [(k, v.replace(old, new)) for k, v in headers]
    later_app = app.replace(old, new) if app is not None else None
    for hs, our, app_nonce in ((headers, N, app), (later, "an0ther", later_app)):
        for _ in range(2):  # a miss (or a hit from the other response), then a hit
            cached = merge_response_csp(hs, needs, our, app_nonce=app_nonce)
            full = merge_response_csp_uncached(hs, needs, our, app_nonce=app_nonce)
            assert cached == full, (hs, app_nonce)


def test_cache_stays_bounded() -> None:
    needs = dataclasses.replace(FIRST_PARTY)
    for i in range(600):
        merge_response_csp([(CSP, f"script-src 'self' https://h{i}.example")], needs, N)
    assert len(needs.merge_cache) <= 256
