from __future__ import annotations

import base64
import json
import uuid
from dataclasses import replace
from urllib.parse import quote

import pytest

from replay_middleware import ReplayConfig, RequestInfo
from replay_middleware.identity import Identity, IdentityCodec, IdentityResult, resolve_identity

NOW = 1_735_689_600_000
SECRET = "test-secret-key-0123456789"
CONFIG = ReplayConfig(api_key="0123456789abcdef", secret_key=SECRET)
CODEC = IdentityCodec(SECRET)


def req(cookie: str = "") -> RequestInfo:
    pairs = [("cookie", cookie)] if cookie else []
    return RequestInfo.from_pairs("GET", "/", pairs)


def cookie_of(result: IdentityResult) -> str:
    return CODEC.dumps(result.identity)


def test_first_visit_mints_uuid4_device_and_now_session() -> None:
    result = resolve_identity(req(), CONFIG, CODEC, NOW)
    ident = result.identity
    parsed = uuid.UUID(ident.device_id)
    assert (parsed.version, parsed.variant) == (4, uuid.RFC_4122)
    assert str(parsed) == ident.device_id
    assert ident.session_id == NOW and ident.last_activity == NOW
    assert result.write_cookie and result.event == "new_device"


def test_device_ids_are_random() -> None:
    ids = {resolve_identity(req(), CONFIG, CODEC, NOW).identity.device_id for _ in range(200)}
    assert len(ids) == 200


def test_codec_is_compatible_with_itsdangerous_signer() -> None:
    from itsdangerous import Signer

    ident = resolve_identity(req(), CONFIG, CODEC, NOW).identity
    value = CODEC.dumps(ident)
    signer = Signer(SECRET, salt="replay-middleware.identity.v1")
    assert signer.unsign(value).decode() == f"{ident.device_id}.{NOW}.{NOW}"
    assert CODEC.loads(signer.sign(f"{ident.device_id}.1.2").decode()) is not None


def test_cookie_round_trip_keeps_session_and_slides_activity() -> None:
    first = resolve_identity(req(), CONFIG, CODEC, NOW)
    cookie = f"replay_id={cookie_of(first)}"
    later = resolve_identity(req(cookie), CONFIG, CODEC, NOW + 60_000)
    assert later.identity.device_id == first.identity.device_id
    assert later.identity.session_id == NOW
    assert later.identity.last_activity == NOW + 60_000


def test_session_rolls_over_after_inactivity() -> None:
    first = resolve_identity(req(), CONFIG, CODEC, NOW)
    later = resolve_identity(req(f"replay_id={cookie_of(first)}"), CONFIG, CODEC, NOW + 31 * 60_000)
    assert later.identity.device_id == first.identity.device_id
    assert later.identity.session_id == NOW + 31 * 60_000
    assert later.event == "session_timeout"


def test_without_touch_nothing_changes_and_no_cookie_is_written() -> None:
    first = resolve_identity(req(), CONFIG, CODEC, NOW)
    later = resolve_identity(
        req(f"replay_id={cookie_of(first)}"), CONFIG, CODEC, NOW + 31 * 60_000, touch=False
    )
    assert later.identity.session_id == NOW
    assert not later.write_cookie


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("garbage", id="garbage"),
        pytest.param("", id="empty"),
        pytest.param("x" * 10_000, id="huge"),
        pytest.param(f"{uuid.uuid4()}.{NOW}.{NOW}.forged", id="forged-signature"),
        pytest.param("\u00e9t\u00e9.1.2.3", id="non-ascii"),
    ],
)
def test_bad_cookies_never_raise_and_mint_a_fresh_identity(value: str) -> None:
    result = resolve_identity(req(f"replay_id={value}"), CONFIG, CODEC, NOW)
    assert result.identity.source == "new"


def test_tampered_ids_are_rejected() -> None:
    first = resolve_identity(req(), CONFIG, CODEC, NOW)
    device, session, last, sig = cookie_of(first).split(".")
    tampered = f"{device}.{int(session) - 1}.{last}.{sig}"
    assert (
        resolve_identity(req(f"replay_id={tampered}"), CONFIG, CODEC, NOW).identity.source == "new"
    )


def test_cookie_signed_with_another_secret_is_rejected() -> None:
    other = IdentityCodec("another-secret-key-987654321")
    first = resolve_identity(req(), CONFIG, other, NOW)
    foreign = other.dumps(first.identity)
    assert (
        resolve_identity(req(f"replay_id={foreign}"), CONFIG, CODEC, NOW).identity.source == "new"
    )


def amp_cookie(data: dict[str, object]) -> str:
    return base64.b64encode(quote(json.dumps(data)).encode()).decode()


def test_amplitude_analytics_cookie_wins() -> None:
    value = amp_cookie({"deviceId": "amp-device-1", "sessionId": NOW - 5000, "optOut": False})
    result = resolve_identity(req(f"AMP_0123456789={value}"), CONFIG, CODEC, NOW)
    assert (result.identity.device_id, result.identity.session_id) == ("amp-device-1", NOW - 5000)
    assert result.identity.source == "amplitude"


def test_amplitude_cookie_with_extra_url_encoding_is_accepted() -> None:
    value = quote(amp_cookie({"deviceId": "amp-device-2", "sessionId": NOW}))
    result = resolve_identity(req(f"AMP_0123456789={value}"), CONFIG, CODEC, NOW)
    assert result.identity.device_id == "amp-device-2"


@pytest.mark.parametrize(
    "data",
    [
        pytest.param({"deviceId": "d", "sessionId": 0}, id="zero-session"),
        pytest.param({"deviceId": "d", "sessionId": NOW * 10}, id="future-session"),
        pytest.param({"deviceId": "<script>", "sessionId": NOW}, id="hostile-device"),
        pytest.param({"sessionId": NOW}, id="no-device"),
    ],
)
def test_implausible_amplitude_cookie_is_ignored(data: dict[str, object]) -> None:
    result = resolve_identity(req(f"AMP_0123456789={amp_cookie(data)}"), CONFIG, CODEC, NOW)
    assert result.identity.source == "new"


def test_segment_cookies_are_an_identity_source_while_fresh() -> None:
    cookie = (
        "ajs_anonymous_id=%22seg-anon-1%22; analytics_session_id=1735689000000; "
        "analytics_session_id.last_access=1735689500000"
    )
    result = resolve_identity(req(cookie), CONFIG, CODEC, NOW)
    assert (result.identity.device_id, result.identity.session_id) == ("seg-anon-1", 1735689000000)
    stale = resolve_identity(req(cookie), CONFIG, CODEC, NOW + 40 * 60_000)
    assert stale.identity.source == "new"


def test_identify_hook_wins_over_everything() -> None:
    config = ReplayConfig(
        api_key="0123456789abcdef", secret_key=SECRET, identify=lambda r: ("user-42", NOW - 1)
    )
    value = amp_cookie({"deviceId": "amp-device-1", "sessionId": NOW - 5000})
    result = resolve_identity(req(f"AMP_0123456789={value}"), config, CODEC, NOW)
    assert (result.identity.device_id, result.identity.session_id, result.identity.source) == (
        "user-42",
        NOW - 1,
        "hook",
    )


# -- secret rotation (issue 9) ---------------------------------------------------------------

OLD_SECRET = "old-secret-key-0123456789"
ROTATED = ReplayConfig(api_key="0123456789abcdef", secret_key=(OLD_SECRET, SECRET))
ROTATED_CODEC = IdentityCodec(ROTATED.secret_keys)


def minted(codec: IdentityCodec) -> Identity:
    """A first visit's identity as its cookie reads back (source "cookie")."""
    return replace(resolve_identity(req(), CONFIG, codec, NOW).identity, source="cookie")


def test_rotated_codec_signs_with_the_newest_key() -> None:
    ident = resolve_identity(req(), CONFIG, CODEC, NOW).identity
    assert ROTATED_CODEC.dumps(ident) == CODEC.dumps(ident)


def test_rotated_codec_is_compatible_with_itsdangerous_key_lists() -> None:
    from itsdangerous import Signer

    signer = Signer([OLD_SECRET, SECRET], salt="replay-middleware.identity.v1")
    ident = resolve_identity(req(), CONFIG, CODEC, NOW).identity
    assert ROTATED_CODEC.dumps(ident) == signer.sign(CODEC.dumps(ident).rsplit(".", 1)[0]).decode()
    assert signer.unsign(IdentityCodec(OLD_SECRET).dumps(ident))


def test_cookie_signed_with_an_old_key_is_kept_and_reissued() -> None:
    old = minted(IdentityCodec(OLD_SECRET))
    cookie = f"replay_id={IdentityCodec(OLD_SECRET).dumps(old)}"
    # Same ms, so nothing but the key calls for a new cookie.
    result = resolve_identity(req(cookie), ROTATED, ROTATED_CODEC, NOW)
    assert result.identity == old
    assert result.old_key and result.write_cookie and result.event is None
    assert CODEC.loads(ROTATED_CODEC.dumps(result.identity)) == old


def test_cookie_signed_with_the_newest_key_is_not_old() -> None:
    first = minted(CODEC)
    result = resolve_identity(req(f"replay_id={CODEC.dumps(first)}"), ROTATED, ROTATED_CODEC, NOW)
    assert result.identity == first
    assert not result.old_key and not result.write_cookie


def test_old_key_cookie_is_not_rewritten_without_touch() -> None:
    old = minted(IdentityCodec(OLD_SECRET))
    cookie = f"replay_id={IdentityCodec(OLD_SECRET).dumps(old)}"
    result = resolve_identity(req(cookie), ROTATED, ROTATED_CODEC, NOW, touch=False)
    assert result.identity == old and result.old_key and not result.write_cookie


def test_cookie_signed_with_an_unknown_key_gets_a_fresh_identity() -> None:
    stranger = IdentityCodec("unknown-secret-key-0123456789")
    old = resolve_identity(req(), CONFIG, stranger, NOW).identity
    result = resolve_identity(req(f"replay_id={stranger.dumps(old)}"), ROTATED, ROTATED_CODEC, NOW)
    assert result.identity.device_id != old.device_id
    assert result.event == "new_device" and not result.old_key


def test_codec_needs_a_key() -> None:
    with pytest.raises(ValueError, match="at least one secret key"):
        IdentityCodec(())
