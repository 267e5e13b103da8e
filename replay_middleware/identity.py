"""Identity: the device id and session id a request belongs to (SPEC I1-I5).

Sans-IO: takes a ``RequestInfo`` and the current time in ms, returns frozen values; the
adapters write the cookie.

Sources, first match wins:

1. the app's ``identify`` hook;
2. the Amplitude Analytics Browser SDK cookie ``AMP_<first 10 chars of api_key>`` (PROTOCOL
   §7.1), so replays line up with analytics events;
3. Segment's ``ajs_anonymous_id`` + ``analytics_session_id`` cookies (PROTOCOL §7.2), while
   Segment's session is fresh;
4. our own signed cookie (``<device>.<session>.<last activity>.<signature>``, readable by the
   browser loader, signed with itsdangerous);
5. a fresh identity: UUID4 device, session id = now in ms.

A missing, malformed, expired or tampered cookie never raises (I2): a fresh identity is minted
and the reason is logged at debug level.

What the signature protects, and what it does not: it makes our cookie tamper-proof. A visitor
cannot forge a ``replay_id`` cookie we accept, nor alter the device id, session id or last
activity of one we issued (a changed value is discarded and fresh ids are minted), so sources
4 and 5 only ever yield ids the server minted or accepted. It does not stop a visitor from
choosing its ids: sources 2 and 3 are unsigned by design (I3; the analytics SDKs write them
in the browser, and replays must line up with their events), so a visitor who writes an
``AMP_<key10>`` cookie (with an ``api_key``) or Segment's two cookies gets the ids it chose,
within the plausibility checks below, and then our cookie signed with them. The app's
``identify`` hook chooses ids too. The ids label recordings; they are not credentials. Nothing
here authenticates a visitor or grants access by id. See docs/behaviour.md ("Identity").
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import re
from binascii import b2a_base64
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import unquote

from itsdangerous import Signer

from ._fast import frozen_new, random16
from .config import ReplayConfig
from .request import RequestInfo

__all__ = [
    "Identity",
    "IdentityCodec",
    "IdentityResult",
    "derive_secret_key",
    "resolve_identity",
]

logger = logging.getLogger("replay_middleware.identity")

# Session ids are ms epoch timestamps. Amplitude answers 200 + "X-Session-Replay-Event-Skipped:
# 4004" (session out of valid range) for unrealistic ones (PROTOCOL §9), so ids from unsigned
# sources (AMP, Segment, the hook) must look like a timestamp after 2015 and not in the future.
_MIN_SESSION_MS = 1_420_070_400_000  # 2015-01-01
_FUTURE_SLACK_MS = 24 * 3600 * 1000
_DEVICE_ID = re.compile(r"[A-Za-z0-9._:@+=-]{1,128}")
_OUR_DEVICE_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")
_SEGMENT_SESSION_LENGTH_MS = 30 * 60 * 1000  # Segment's default sessionLength
_MAX_COOKIE_CHARS = 4096


@dataclass(frozen=True)
class Identity:
    """The ids one request is attributed to."""

    device_id: str
    session_id: int
    last_activity: int
    source: str = "cookie"  # "cookie" | "new" | "amplitude" | "segment" | "hook"


@dataclass(frozen=True)
class IdentityResult:
    """The identity plus what the adapter must do about the cookie."""

    identity: Identity
    #: The cookie must be (re)written: new ids, a new session or moved last activity. The
    #: value is signed only when the adapter actually writes it (``IdentityCodec.dumps``).
    write_cookie: bool
    #: Why a fresh identity or session was started (debug logging, tests), or None.
    event: str | None = None
    #: Our cookie verified with an older ``secret_key`` (rotation): ``write_cookie`` is then
    #: set, so the next page that may carry a cookie re-issues it signed with the newest.
    old_key: bool = False


def derive_secret_key(app_secret: str | bytes) -> str:
    """The cookie signing key derived from a framework's secret (Django's or Flask's
    ``SECRET_KEY``), for when ``secret_key`` is not set.

    An HMAC-SHA256 with a purpose string, hex-encoded: any non-empty secret works, whatever
    its length (so it always meets ``secret_key``'s 16-character minimum), and the project's
    key itself is never used as is. ``bytes`` (Flask's ``os.urandom`` keys) are used as they
    are; a ``str`` as its UTF-8 encoding.
    """
    raw = app_secret if isinstance(app_secret, bytes) else app_secret.encode()
    return hmac.new(raw, b"replay_middleware.identity-cookie", hashlib.sha256).hexdigest()


def _hmac_pads(key: bytes) -> tuple[hashlib._Hash, hashlib._Hash]:
    """SHA-1 states after ``key XOR ipad`` and ``key XOR opad`` (RFC 2104, block 64 bytes)."""
    if len(key) > 64:
        key = hashlib.sha1(key).digest()
    key = key.ljust(64, b"\0")
    return (
        hashlib.sha1(key.translate(_IPAD)),
        hashlib.sha1(key.translate(_OPAD)),
    )


_URLSAFE = bytes.maketrans(b"+/", b"-_")
_IPAD = bytes(x ^ 0x36 for x in range(256))
_OPAD = bytes(x ^ 0x5C for x in range(256))


class IdentityCodec:
    """Signs and reads our identity cookie value: ``device.session.last.signature``.

    The format is itsdangerous' ``Signer`` (HMAC-SHA1 over a key derived from the secret and a
    salt, base64url signature); the derived keys are computed once and the HMAC is the one-shot
    C implementation, since this runs on every request.

    ``secret_key`` is one key or several, newest last, as itsdangerous takes them: values are
    signed with the newest and verified with each key in turn, newest first, so a fleet can
    rotate its secret without losing its visitors' device ids (``read`` says which matched).
    """

    def __init__(self, secret_key: str | Sequence[str]) -> None:
        signer = Signer(secret_key, salt="replay-middleware.identity.v1")
        if not signer.secret_keys:
            raise ValueError("IdentityCodec needs at least one secret key")
        # Newest first: the common case (a cookie we signed lately) costs one HMAC.
        self._keys = tuple(signer.derive_key(key) for key in reversed(signer.secret_keys))
        self._key = self._keys[0]
        # HMAC-SHA1 (RFC 2104) with the keyed inner and outer states hashed once per key: a
        # signature is then two copies and two short updates (hmac.digest re-keys each time).
        self._pads = {key: _hmac_pads(key) for key in self._keys}

    def _signature(self, payload: bytes, key: bytes | None = None) -> bytes:
        """itsdangerous' signature: base64url of the HMAC-SHA1, without padding."""
        inner, outer = self._pads[key or self._key]
        inner = inner.copy()
        inner.update(payload)
        outer = outer.copy()
        outer.update(inner.digest())
        # base64url without padding: a 20-byte digest is 28 base64 characters, one "=".
        return b2a_base64(outer.digest(), newline=False)[:27].translate(_URLSAFE)

    def dumps(self, identity: Identity) -> str:
        payload = f"{identity.device_id}.{identity.session_id}.{identity.last_activity}"
        signature = self._signature(payload.encode("ascii")).decode("ascii")
        return f"{payload}.{signature}"

    def loads(self, value: str) -> Identity | None:
        """The identity in ``value``, or None when it is malformed or its signature is bad."""
        read = self.read(value)
        return read[0] if read is not None else None

    def read(self, value: str) -> tuple[Identity, bool] | None:
        """``loads``, plus whether ``value`` was signed with an older key than the newest
        (it should be re-issued); None when it is malformed or no key's signature matches."""
        if not value or len(value) > _MAX_COOKIE_CHARS or not value.isascii():
            return None
        payload, sep, signature = value.rpartition(".")
        if not sep:
            return None
        parts = payload.split(".")
        if len(parts) != 3:
            return None
        device, session, last = parts
        # (isascii() held for the whole value, so isdigit() means ASCII digits only.)
        if not (session.isdigit() and last.isdigit() and _OUR_DEVICE_ID.fullmatch(device)):
            return None
        # A constant-time comparison per key, of the signature as we write it (base64url, no
        # padding: another spelling of the same bytes is refused); which key matched is no
        # secret. The newest key first: the common case costs one HMAC.
        raw = payload.encode("ascii")
        expected = signature.encode("ascii")
        if hmac.compare_digest(expected, self._signature(raw)):
            old_key = False
        elif any(hmac.compare_digest(expected, self._signature(raw, k)) for k in self._keys[1:]):
            old_key = True
        else:
            return None
        identity = frozen_new(
            Identity,
            device_id=device,
            session_id=int(session),
            last_activity=int(last),
            source="cookie",
        )
        return identity, old_key


def _plausible_session(value: object, now_ms: int) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int) and _MIN_SESSION_MS <= value <= now_ms + _FUTURE_SLACK_MS:
        return value
    return None


def _plausible_device(value: object) -> str | None:
    if isinstance(value, str) and _DEVICE_ID.fullmatch(value):
        return value
    return None


def _amplitude_cookie(value: str, now_ms: int) -> tuple[str, int] | None:
    """Decode ``btoa(encodeURIComponent(JSON.stringify(obj)))`` (AC storage/cookie.js:215).

    Rails 7 adds one more URL-encoding layer, which the SDK also accepts (:338-362).
    """
    if len(value) > _MAX_COOKIE_CHARS:
        return None
    for candidate in (value, unquote(value)):
        try:
            raw = base64.b64decode(candidate + "=" * (-len(candidate) % 4), validate=True)
            data = json.loads(unquote(raw.decode("ascii")))
        except (ValueError, UnicodeError):
            continue
        if not isinstance(data, dict):
            return None
        device = _plausible_device(data.get("deviceId"))
        session = _plausible_session(data.get("sessionId"), now_ms)
        if device and session:
            return device, session
        return None
    return None


def _segment_cookies(cookies: Mapping[str, str], now_ms: int) -> tuple[str, int] | None:
    anon = cookies.get("ajs_anonymous_id")
    session_raw = cookies.get("analytics_session_id")
    if not anon or not session_raw:
        return None
    anon = unquote(anon).strip()
    if len(anon) >= 2 and anon[0] == anon[-1] == '"':
        anon = anon[1:-1]  # analytics.js stores the id JSON-encoded
    device = _plausible_device(anon)
    session = _plausible_session(session_raw, now_ms)
    if not device or not session:
        return None
    last = _plausible_session(cookies.get("analytics_session_id.last_access"), now_ms) or session
    if now_ms - last >= _SEGMENT_SESSION_LENGTH_MS:
        return None  # Segment will start a new session on its next event; ours decides now
    return device, session


def new_device_id() -> str:
    """A random UUID4 string (``uuid.uuid4()`` is several times slower; this runs per new visitor)."""
    raw = bytearray(random16())
    raw[6] = raw[6] & 0x0F | 0x40  # version 4
    raw[8] = raw[8] & 0x3F | 0x80  # the RFC 4122 variant
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def amplitude_cookie_name(api_key: str) -> str:
    """``AMP_`` + first 10 characters of the key (AC cookie-name.js:2-5)."""
    return f"AMP_{api_key[:10]}"


def resolve_identity(
    request: RequestInfo,
    config: ReplayConfig,
    codec: IdentityCodec,
    now_ms: int,
    *,
    touch: bool = True,
) -> IdentityResult:
    """Resolve the identity of ``request`` at ``now_ms``.

    With ``touch`` (page views, uploads, ``/session``) the session's last activity moves to
    now and a timed-out session rolls over to a new session id; without it (a cacheable
    response that must not carry per-user data) nothing changes and no cookie is written.
    """
    cookies = request.cookies
    own_raw = cookies.get(config.cookie_name)
    read = codec.read(own_raw) if own_raw else None
    own, old_key = read if read is not None else (None, False)
    if own_raw and own is None:
        logger.debug("identity cookie rejected (malformed or bad signature); minting a new one")
    elif old_key:
        logger.debug("identity cookie signed with an older secret_key; re-issuing it")
    timeout_ms = config.session_timeout * 1000

    external: tuple[str, int] | None = None
    source = ""
    if config.identify is not None:
        supplied = config.identify(request)
        if supplied is not None:
            device = _plausible_device(supplied[0])
            session = _plausible_session(supplied[1], now_ms)
            if device and session:
                external, source = (device, session), "hook"
            else:
                logger.debug("identify hook returned implausible ids; ignoring them")
    if external is None and config.api_key:
        amp = cookies.get(amplitude_cookie_name(config.api_key))
        if amp:
            external = _amplitude_cookie(amp, now_ms)
            source = "amplitude" if external else ""
    if external is None:
        external = _segment_cookies(cookies, now_ms)
        source = "segment" if external else ""

    event: str | None = None
    if external is not None:
        identity = Identity(external[0], external[1], now_ms, source)
    elif own is None:
        event = "new_device"
        identity = frozen_new(
            Identity, device_id=new_device_id(), session_id=now_ms, last_activity=now_ms, source="new"
        )
    elif (
        own.session_id > now_ms + _FUTURE_SLACK_MS or own.last_activity > now_ms + _FUTURE_SLACK_MS
    ):
        # A signed cookie from the future means a clock jump on the server; start over.
        event = "clock_skew"
        identity = Identity(own.device_id, now_ms, now_ms, "cookie")
    elif touch and now_ms - own.last_activity > timeout_ms:
        event = "session_timeout"
        identity = Identity(own.device_id, now_ms, now_ms, "cookie")
    elif touch:
        identity = frozen_new(
            Identity,
            device_id=own.device_id,
            session_id=own.session_id,
            last_activity=now_ms,
            source=own.source,
        )
    else:
        identity = own

    return frozen_new(
        IdentityResult,
        identity=identity,
        write_cookie=touch and (old_key or identity != own),
        event=event,
        old_key=old_key,
    )
