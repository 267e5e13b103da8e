from __future__ import annotations

import re

import pytest

from replay_middleware import ReplayConfig


def test_defaults_are_local_mode() -> None:
    config = ReplayConfig()
    assert config.local_mode
    assert config.prefix == "/_replay"
    assert config.sample_rate == 0.0
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
            {"public_origin": "https://x.example/path"}, "public_origin", id="origin-path"
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
