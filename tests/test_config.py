from __future__ import annotations

import dataclasses
import inspect
import re
from collections.abc import Callable
from typing import Any

import pytest

from replay_middleware import ReplayConfig
from replay_middleware import config as config_module
from replay_middleware.config import BLOCKED_PREFIX_PATTERNS


def test_defaults_are_local_mode() -> None:
    config = ReplayConfig()
    assert config.local_mode
    assert config.prefix == "/_replay"
    assert config.sample_rate == 1.0  # local mode records every session unless told otherwise
    assert config.sample_rate_is_default
    assert config.show_debug_header


def test_api_key_requires_secret_key() -> None:
    with pytest.raises(ValueError, match="secret_key is required"):
        ReplayConfig(api_key="abc123")


def test_server_zone_is_normalised() -> None:
    assert ReplayConfig(server_zone=" eu ").server_zone == "EU"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        pytest.param({"server_zone": "APAC"}, "server_zone must be one of 'US', 'EU'", id="zone"),
        pytest.param(
            {"sample_rate": 1.5}, "sample_rate must be a number from 0 to 1", id="rate-high"
        ),
        pytest.param({"sample_rate": 0.1234567}, "at most 6 decimals", id="rate-decimals"),
        pytest.param({"sample_rate": True}, "sample_rate must be a number", id="rate-bool"),
        pytest.param({"prefix": "_replay"}, "prefix must start with '/'", id="prefix-no-slash"),
        pytest.param({"prefix": "/_replay/"}, "must not end with '/'", id="prefix-trailing"),
        pytest.param(
            {"cookie_samesite": "sometimes"}, "cookie_samesite must be one of", id="samesite"
        ),
        pytest.param({"csp": "replace"}, "csp must be one of 'merge', 'off'", id="csp"),
        pytest.param({"sdk_options": {"trackServerUrl": "x"}}, "unknown option", id="sdk-option"),
        pytest.param(
            {"privacy": {"defaultMaskLevel": "max"}}, "defaultMaskLevel must be one of", id="mask"
        ),
        pytest.param({"exclude": ("admin",)}, "globs must start with '/'", id="glob"),
        pytest.param(
            {"forward_client_ip": "yes"}, "forward_client_ip must be one of", id="client-ip"
        ),
        pytest.param(
            {"client_body_timeout": 0}, "client_body_timeout must be seconds", id="body-timeout"
        ),
        pytest.param({"max_uploads_per_client": -1}, "0 for no cap", id="per-client-negative"),
        pytest.param({"max_uploads_per_client": True}, "0 for no cap", id="per-client-bool"),
        pytest.param(
            {"upload_memory_bytes": 0}, "upload_memory_bytes must be a positive", id="memory"
        ),
        pytest.param(
            {"public_origin": "https://x.example/path"}, "public_origin", id="origin-path"
        ),
        pytest.param({"inspector_token": ""}, "inspector_token must be 16-256", id="token-empty"),
        pytest.param(
            {"inspector_token": "short-token"}, "inspector_token must be 16-256", id="token-short"
        ),
        pytest.param(
            {"inspector_token": "has spaces and = 0123456789"},
            "URL-safe characters",
            id="token-unsafe",
        ),
    ],
)
def test_bad_values_name_the_key_and_accepted_values(
    kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        ReplayConfig(**kwargs)  # type: ignore[arg-type]


def test_from_env_coerces_types() -> None:
    config = ReplayConfig.from_env(
        {
            "REPLAY_API_KEY": "key123",
            "REPLAY_SECRET_KEY": "s" * 32,
            "REPLAY_SAMPLE_RATE": "0.25",
            "REPLAY_RESPECT_DNT": "yes",
            "REPLAY_EXCLUDE": "/admin/*, /account/billing",
            "REPLAY_PRIVACY": '{"defaultMaskLevel": "conservative"}',
            "REPLAY_SESSION_TIMEOUT": "600",
            "OTHER": "ignored",
        }
    )
    assert config.api_key == "key123"
    assert config.sample_rate == 0.25
    assert config.respect_dnt is True
    assert config.exclude == ("/admin/*", "/account/billing")
    assert config.privacy["defaultMaskLevel"] == "conservative"
    assert config.session_timeout == 600
    assert not config.local_mode


def test_inspector_token_from_env() -> None:
    token = "a-token-from-the-env-0123456789_~."

    assert ReplayConfig.from_env({"REPLAY_INSPECTOR_TOKEN": token}).inspector_token == token
    # Empty, as a shell leaves an unset variable in a template: the default (derived/random).
    assert ReplayConfig.from_env({"REPLAY_INSPECTOR_TOKEN": " "}).inspector_token is None


def test_slow_client_options_from_env() -> None:
    config = ReplayConfig.from_env(
        {
            "REPLAY_CLIENT_BODY_TIMEOUT": "2.5",
            "REPLAY_MAX_UPLOADS_PER_CLIENT": "0",
            "REPLAY_UPLOAD_MEMORY_BYTES": "262144",
        }
    )
    assert (config.client_body_timeout, config.max_uploads_per_client) == (2.5, 0)
    assert config.upload_memory_bytes == 262144


def test_from_env_rejects_unknown_variables() -> None:
    with pytest.raises(ValueError, match="unknown option 'SAMPEL_RATE'"):
        ReplayConfig.from_env({"REPLAY_SAMPEL_RATE": "1"})


def test_from_env_rejects_bad_booleans() -> None:
    with pytest.raises(ValueError, match="respect_gpc must be a boolean"):
        ReplayConfig.from_env({"REPLAY_RESPECT_GPC": "perhaps"})


def test_from_mapping_accepts_any_case_and_prefix() -> None:
    config = ReplayConfig.from_mapping(
        {"SAMPLE_RATE": 0.5, "replay_cookie_name": "rid", "Opt_Out": "true"}
    )
    assert (config.sample_rate, config.cookie_name, config.opt_out) == (0.5, "rid", True)


def test_from_mapping_rejects_callables_as_strings() -> None:
    with pytest.raises(ValueError, match="consent must be a callable"):
        ReplayConfig.from_mapping({"consent": "myapp.consent"})


def test_inject_status_never_contains_bodiless_or_partial_codes() -> None:
    config = ReplayConfig(inject_status=frozenset({200, 204, 206, 404}))
    assert config.inject_status == frozenset({200, 404})


def test_startup_warnings_flag_blocked_prefix_words() -> None:
    warnings = ReplayConfig(prefix="/amplitude").startup_warnings()
    assert any("ad-blocker" in w for w in warnings)
    assert any("local mode" in w for w in warnings)


@pytest.mark.parametrize(
    ("prefix", "matched"),
    [
        pytest.param("/amplitude", ("amplitude",), id="amplitude"),
        pytest.param("/Analytics", ("analytics",), id="analytics-any-case"),
        pytest.param("/track", ("track",), id="track"),
        pytest.param("/_tracking", ("track",), id="tracking"),
        pytest.param("/telemetry", ("telemetry",), id="telemetry"),
        pytest.param("/beacon", ("beacon",), id="beacon"),
        pytest.param("/collect", ("/collect",), id="collect"),
        pytest.param("/replay-browser", ("replay-browser",), id="replay-browser"),
        pytest.param("/app/session-replay", ("session-replay",), id="session-replay"),
        pytest.param("/sessionreplay", ("sessionreplay",), id="sessionreplay"),
        pytest.param("/sr", ("/sr/",), id="sr-segment"),
        pytest.param("/x/stats", ("/stats/",), id="stats"),
        pytest.param("/metrics", ("/metrics/",), id="metrics"),
        pytest.param("/amplitude-track", ("amplitude", "track"), id="two-patterns"),
        pytest.param("/_replay", (), id="default"),
        pytest.param("/_rm", (), id="neutral"),
        pytest.param("/srv", (), id="sr-needs-a-whole-segment"),
        pytest.param("/statsd-ui", (), id="stats-needs-a-whole-segment"),
        pytest.param("/collection", ("/collect",), id="collect-is-a-path-start"),
    ],
)
def test_prefix_is_checked_against_the_ad_block_table(
    prefix: str, matched: tuple[str, ...]
) -> None:
    config = ReplayConfig(prefix=prefix)
    assert config.blocked_prefix_patterns == matched
    blocked = [w for w in config.startup_warnings() if "ad-blocker lists" in w]
    assert len(blocked) == (1 if matched else 0)
    if matched:
        assert all(repr(p) in blocked[0] for p in matched)


def test_ad_block_table_is_documented_row_by_row() -> None:
    source = inspect.getsource(config_module)
    for pattern in BLOCKED_PREFIX_PATTERNS:
        assert f"#: ``{pattern}``" in source, pattern


KEYED: dict[str, Any] = {"api_key": "key123", "secret_key": "s" * 32}


@pytest.mark.parametrize(
    ("build", "rate", "default"),
    [
        pytest.param(lambda: ReplayConfig(), 1.0, True, id="local-unset"),
        pytest.param(lambda: ReplayConfig(**KEYED), 0.0, True, id="api-key-unset"),
        pytest.param(lambda: ReplayConfig(sample_rate=0), 0.0, False, id="local-explicit-0"),
        pytest.param(lambda: ReplayConfig(sample_rate=0.5), 0.5, False, id="local-explicit"),
        pytest.param(
            lambda: ReplayConfig(sample_rate=1, **KEYED), 1.0, False, id="api-key-explicit"
        ),
        pytest.param(lambda: ReplayConfig.from_env({}), 1.0, True, id="env-unset"),
        pytest.param(
            lambda: ReplayConfig.from_env({"REPLAY_SAMPLE_RATE": "0"}), 0.0, False, id="env-0"
        ),
        pytest.param(
            lambda: ReplayConfig.from_mapping({"sample_rate": 0.0}), 0.0, False, id="mapping-0"
        ),
        pytest.param(lambda: ReplayConfig.from_mapping({}), 1.0, True, id="mapping-unset"),
    ],
)
def test_sample_rate_defaults_to_one_in_local_mode_only_when_unset(
    build: Callable[[], ReplayConfig], rate: float, default: bool
) -> None:
    config = build()
    assert (config.sample_rate, config.sample_rate_is_default) == (rate, default)
    assert type(config.sample_rate) is float or default  # explicit rates are plain floats


def test_replace_keeps_an_unset_rate_unset() -> None:
    local = ReplayConfig()
    keyed = dataclasses.replace(local, **KEYED)
    assert (keyed.sample_rate, keyed.sample_rate_is_default) == (0.0, True)
    back = dataclasses.replace(keyed, api_key=None)
    assert (back.sample_rate, back.sample_rate_is_default) == (1.0, True)
    chosen = dataclasses.replace(ReplayConfig(sample_rate=0.25), **KEYED)
    assert (chosen.sample_rate, chosen.sample_rate_is_default) == (0.25, False)


def test_unset_rate_in_local_mode_says_every_session_is_recorded() -> None:
    warnings = ReplayConfig().startup_warnings()
    assert any("every session is recorded" in w for w in warnings)
    assert not any("RECORDS NOTHING" in w for w in warnings)


def test_explicit_zero_in_local_mode_warns_records_nothing() -> None:
    warnings = ReplayConfig(sample_rate=0).startup_warnings()
    assert any("sample_rate is 0 in local mode" in w and "RECORDS NOTHING" in w for w in warnings)


def test_explicit_zero_with_force_sample_does_not_warn() -> None:
    warnings = ReplayConfig(sample_rate=0, force_sample=lambda r: True).startup_warnings()
    assert not any("RECORDS NOTHING" in w for w in warnings)


def test_unset_rate_with_api_key_keeps_the_remote_config_warning() -> None:
    warnings = ReplayConfig(**KEYED).startup_warnings()
    assert any("unless the project's remote config sets a sample rate" in w for w in warnings)


# -- secret_key: one key or several, newest last (issue 9) ------------------------------------

OLD, NEW = "o" * 16, "n" * 20


@pytest.mark.parametrize(
    ("value", "keys"),
    [
        pytest.param(NEW, (NEW,), id="str"),
        pytest.param([OLD, NEW], (OLD, NEW), id="list"),
        pytest.param((OLD, NEW), (OLD, NEW), id="tuple"),
        pytest.param((NEW,), (NEW,), id="one-tuple"),
    ],
)
def test_secret_key_is_normalised_to_a_tuple_newest_last(
    value: str | list[str] | tuple[str, ...], keys: tuple[str, ...]
) -> None:
    config = ReplayConfig(secret_key=value)
    assert config.secret_key == keys == config.secret_keys
    assert config.signing_key == NEW


def test_without_secret_key_there_are_no_keys() -> None:
    config = ReplayConfig()
    assert (config.secret_key, config.secret_keys, config.signing_key) == (None, (), None)


def test_replace_keeps_the_normalised_keys() -> None:
    config = dataclasses.replace(ReplayConfig(secret_key=[OLD, NEW]), sample_rate=0.5)
    assert config.secret_keys == (OLD, NEW)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        pytest.param(
            "short", r"secret_key must be a string of at least 16 characters \(got 5 ch", id="short"
        ),
        pytest.param(
            [OLD, "short"], r"secret_key\[1\] must be .* \(got 5 characters\)", id="short-in-list"
        ),
        pytest.param([OLD, 42], r"secret_key\[1\] must be .* \(got int\)", id="not-str"),
        pytest.param([], "non-empty sequence", id="empty"),
        pytest.param(b"b" * 16, "non-empty sequence", id="bytes"),
        pytest.param(12345, "non-empty sequence", id="int"),
    ],
)
def test_bad_secret_keys_are_rejected_without_echoing_them(value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        ReplayConfig(secret_key=value)  # type: ignore[arg-type]
    assert OLD not in str(info.value)


def test_api_key_with_an_empty_key_list_requires_secret_key() -> None:
    with pytest.raises(ValueError, match="secret_key is required"):
        ReplayConfig(api_key="key123", secret_key=())


@pytest.mark.parametrize(
    ("env", "keys"),
    [
        pytest.param(NEW, (NEW,), id="one"),
        pytest.param(f"  {NEW}  ", (NEW,), id="stripped"),
        pytest.param("a, b c,d-0123456789", ("a, b c,d-0123456789",), id="separators-are-key"),
        pytest.param(f'["{OLD}", "{NEW}"]', (OLD, NEW), id="json-list"),
        pytest.param("", None, id="empty"),
    ],
)
def test_secret_key_from_env(env: str, keys: tuple[str, ...] | None) -> None:
    assert ReplayConfig.from_env({"REPLAY_SECRET_KEY": env}).secret_key == keys


@pytest.mark.parametrize(
    ("env", "message"),
    [
        pytest.param(f'["{OLD}", ', "must be a JSON array of keys", id="bad-json"),
        pytest.param('["short"]', r"secret_key\[0\] must be", id="short"),
        pytest.param("[]", "non-empty sequence", id="empty-list"),
    ],
)
def test_bad_secret_key_lists_from_env_are_rejected(env: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ReplayConfig.from_env({"REPLAY_SECRET_KEY": env})


def test_secret_key_list_from_mapping() -> None:
    config = ReplayConfig.from_mapping({"SECRET_KEY": [OLD, NEW]})
    assert config.secret_keys == (OLD, NEW)
