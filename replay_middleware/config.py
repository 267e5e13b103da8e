"""ReplayConfig: every option of replay-middleware, validated once at start-up.

Sans-IO: this module reads no files and opens no sockets; ``from_env`` only reads the mapping
it is given (``os.environ`` by default).

A ``ReplayConfig`` is a frozen, keyword-only dataclass. Bad values raise ``ValueError`` whose
message names the option and the accepted values, so a typo in a settings file fails at start-up
rather than silently disabling recording. ``from_env`` and ``from_mapping`` accept the same
option names (case-insensitive, with or without the ``REPLAY_`` prefix) and coerce strings.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal, Union

if TYPE_CHECKING:
    from .request import RequestInfo

__all__ = [
    "BLOCKED_PREFIX_PATTERNS",
    "DEFAULT_INJECT_STATUS",
    "SDK_OPTIONS",
    "ReplayConfig",
    "RouteRule",
]

#: A route rule: a glob string ("/admin/*"), a compiled regex, or a predicate
#: ``(path, request_info) -> bool``.
RouteRule = Union[str, "re.Pattern[str]", Callable[[str, "RequestInfo"], bool]]

#: 200-299 and 400-599, except 204/205 (no body) and 206 (partial): SPEC §2.
DEFAULT_INJECT_STATUS: frozenset[int] = frozenset(
    s for s in (*range(200, 300), *range(400, 600)) if s not in (204, 205, 206)
)

#: SDK init options that may be passed through ``sdk_options`` (PROTOCOL §4.1). Options the
#: middleware owns (apiKey, ids, URLs, sampleRate, serverZone, privacyConfig, optOut) are not
#: here: they have their own settings. ``handleSendEvents``/``handleFetchConfig``/
#: ``loggerProvider`` are functions and cannot travel in JSON.
SDK_OPTIONS: frozenset[str] = frozenset(
    {
        "flushMaxRetries",
        "logLevel",
        "debugMode",
        "shouldInlineStylesheet",
        "inlineImages",
        "storeType",
        "useWebWorker",
        "enableTransportCompression",
        "sendTimeoutMs",
        "performanceConfig",
        "flushIntervalConfig",
        "maxPersistedEventsSizeBytes",
        "maxSingleEventSizeBytes",
        "eagerFullSnapshotSend",
        "captureFullSnapshotOnFocus",
        "fullSnapshotIntervalMs",
        "captureAdoptedStyleSheets",
        "applyBackgroundColorToBlockedElements",
        "enableUrlChangePolling",
        "urlChangePollingInterval",
        "captureDocumentTitle",
        "interactionConfig",
        "crossOriginIframes",
        "userProperties",
        "instanceName",
    }
)

#: SDK init options the middleware sets unless ``sdk_options`` says otherwise (docs/page-exit.md).
#: ``eagerFullSnapshotSend``: the SDK keeps the first full snapshot in the page until its flush
#: timer fires or the page is left; on page exit its worker's upload dies with the document
#: and the beacon keeps the events that fit in 64 KiB (``sendBeacon``), so any page whose
#: snapshot is over ~64 KB replayed blank after a short view. Sent eagerly, the snapshot leaves
#: ~0.3 s after init with a regular gzip upload.
SDK_DEFAULT_OPTIONS: Mapping[str, Any] = MappingProxyType({"eagerFullSnapshotSend": True})

_MASK_LEVELS = ("light", "medium", "conservative")
_PRIVACY_KEYS = {
    "defaultMaskLevel",
    "blockSelector",
    "maskSelector",
    "unmaskSelector",
    "maskAttributes",
    "urlMaskLevels",
}
_SAMESITE = ("Lax", "Strict", "None")
_CLIENT_IP = ("mask", "full", "drop")
#: Path patterns that the common ad-block filter lists (EasyPrivacy, uBlock Origin's "uBlock
#: filters – Privacy", AdGuard Tracking Protection) match on first-party URLs; a ``prefix``
#: containing one gets the loader, the SDK and the uploads blocked for many visitors, so it
#: triggers a start-up warning (SPEC O4). Matched case-insensitively against
#: ``prefix + "/"``, so a pattern ending in "/" matches a whole segment.
#:
#: ===================  ==================================================================
#: pattern              typical list rule it stands for
#: ===================  ==================================================================
#: ``amplitude``        ``/amplitude.``, ``/amplitude-``, ``||amplitude.com^`` (the vendor)
#: ``analytics``        ``/analytics/``, ``/analytics.js``, ``_analytics.``
#: ``track``            ``/track/``, ``/tracking/``, ``/tracker.``, ``/trackevent``
#: ``telemetry``        ``/telemetry/``, ``/telemetry.``
#: ``beacon``           ``/beacon/``, ``/beacon.``, ``/beacons/``
#: ``/collect``         ``/collect?``, ``/collect/``, ``/collector/`` (GA-style collectors)
#: ``replay-browser``   ``session-replay-browser`` (the SDK bundle's own file name)
#: ``session-replay``   ``/session-replay/``, ``sessionreplay``-style vendor paths
#: ``sessionreplay``    (same, without the dash)
#: ``/sr/``             ``/sr/`` segments (session-recording collectors)
#: ``/stats/``          ``/stats/``, ``/stats.`` (generic hit counters)
#: ``/metrics/``        ``/metrics/`` collectors
#: ===================  ==================================================================
#:
#: The default ``/_replay`` matches none of them; nor does a neutral name such as ``/_rm``.
BLOCKED_PREFIX_PATTERNS: tuple[str, ...] = (
    "amplitude",
    "analytics",
    "track",
    "telemetry",
    "beacon",
    "/collect",
    "replay-browser",
    "session-replay",
    "sessionreplay",
    "/sr/",
    "/stats/",
    "/metrics/",
)


class _ModeDefaultRate(float):
    """``sample_rate`` as the user left it: unset. ``__post_init__`` resolves it to 1.0 in local
    mode (a new user sees recordings at once, issue 7) and 0.0 with an ``api_key`` (SPEC 2;
    the project's remote config then decides), keeping this type as the mark.

    A float, so the field is a plain ``float`` to every reader; a type of its own, so a rate
    the user chose (even ``0.0``) is told apart from the default, also when
    ``dataclasses.replace`` passes the resolved value back in (a local config replaced into
    one with an ``api_key`` then falls back to 0.0 rather than keeping local mode's 1.0).
    """

    __slots__ = ()


#: The default of ``ReplayConfig.sample_rate`` before ``__post_init__`` resolves it.
_UNSET_RATE = _ModeDefaultRate(0.0)


def _callable_or_none(name: str, value: object) -> None:
    if value is not None and not callable(value):
        raise ValueError(f"ReplayConfig: {name} must be a callable or None (got {value!r})")


@dataclass(frozen=True, kw_only=True)
class ReplayConfig:
    """All options of replay-middleware; see the README's configuration table.

    Defaults give local mode (no ``api_key``): uploads stay on this machine, and every session
    is recorded unless ``sample_rate`` is set.
    """

    # Project
    api_key: str | None = None
    server_zone: str = "US"
    sample_rate: float = _UNSET_RATE  # unset: 1.0 in local mode, 0.0 with an api_key
    opt_out: bool = False
    # First-party endpoints
    prefix: str = "/_replay"
    public_origin: str | None = None
    # Restricted routes
    exclude: tuple[RouteRule, ...] = ()
    include: tuple[RouteRule, ...] | None = None
    # Identity
    cookie_name: str = "replay_id"
    cookie_domain: str | None = None
    cookie_secure: bool | Literal["auto"] = "auto"
    cookie_samesite: str = "Lax"
    device_max_age: int = 365 * 24 * 3600
    session_timeout: int = 30 * 60
    secret_key: str | Sequence[str] | None = None  # stored as a tuple, oldest first
    identify: Callable[[RequestInfo], tuple[str, int] | None] | None = None
    # Privacy
    privacy: Mapping[str, Any] = field(default_factory=dict)
    route_mask_levels: Mapping[str, str] = field(default_factory=dict)
    respect_gpc: bool = True
    respect_dnt: bool = False
    consent: Callable[[RequestInfo], bool | None] | None = None
    # Injection
    max_scan_bytes: int = 256 * 1024
    inject_status: frozenset[int] = DEFAULT_INJECT_STATUS
    inject_into_fragments: bool = False
    inject_into_iframes: bool = False
    # CSP
    csp: str = "merge"
    csp_report_only_merge: bool = True
    # SDK
    sdk_version: str = "1.51.6"
    sdk_source: str = "first-party"
    sdk_options: Mapping[str, Any] = field(default_factory=dict)
    # Proxy (used by the upload proxy)
    upload_mode: str = "proxy"
    upstream_timeout: float = 8.0
    max_upload_bytes: int = 10 * 1024 * 1024
    client_body_timeout: float = 5.0
    max_uploads_per_client: int = 8
    upload_memory_bytes: int = 1024 * 1024
    trusted_proxies: tuple[str, ...] = ()
    forward_client_ip: str = "mask"
    config_cache_ttl: float = 60.0
    http_client: Any = None
    # Local mode
    local_store_dir: str = ".replay-middleware"
    local_store_max_bytes: int = 256 * 1024 * 1024
    inspector_allow: tuple[str, ...] = ()
    inspector_token: str | None = None
    # Gates
    force_sample: Callable[[RequestInfo], bool] | None = None
    should_record: Callable[[RequestInfo], bool] | None = None
    # Operability
    debug_header: bool | None = None

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        if self.api_key is not None:
            if not isinstance(self.api_key, str) or not re.fullmatch(
                r"[A-Za-z0-9_-]{1,128}", self.api_key
            ):
                raise ValueError(
                    "ReplayConfig: api_key must be the project's API key "
                    "(1-128 characters of A-Z, a-z, 0-9, '_' or '-'), or None for local mode"
                )
            if not self.secret_key:
                raise ValueError(
                    "ReplayConfig: secret_key is required when api_key is set "
                    "(it signs the identity cookie); only local mode may run without one"
                )
        zone = str(self.server_zone).strip().upper()
        if zone not in ("US", "EU"):
            raise ValueError(
                f"ReplayConfig: server_zone must be one of 'US', 'EU' (got {self.server_zone!r})"
            )
        set_(self, "server_zone", zone)
        rate = self.sample_rate
        if isinstance(rate, _ModeDefaultRate):
            rate = _ModeDefaultRate(1.0 if self.api_key is None else 0.0)
        if (
            isinstance(rate, bool)
            or not isinstance(rate, (int, float))
            or not math.isfinite(rate)
            or not 0 <= rate <= 1
        ):
            raise ValueError(
                f"ReplayConfig: sample_rate must be a number from 0 to 1 (got {rate!r})"
            )
        if round(float(rate), 6) != float(rate):
            raise ValueError(
                f"ReplayConfig: sample_rate supports at most 6 decimals, as the SDK (got {rate!r})"
            )
        set_(self, "sample_rate", rate if isinstance(rate, _ModeDefaultRate) else float(rate))
        if not re.fullmatch(r"(/[A-Za-z0-9._~-]+)+", self.prefix or ""):
            raise ValueError(
                "ReplayConfig: prefix must start with '/', must not end with '/', and may hold only "
                f"letters, digits and '._~-' in its segments (got {self.prefix!r})"
            )
        if self.public_origin is not None and not re.fullmatch(
            r"https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?", self.public_origin
        ):
            raise ValueError(
                "ReplayConfig: public_origin must be a scheme and host such as "
                f"'https://shop.example' with no path (got {self.public_origin!r})"
            )
        set_(self, "exclude", _rules("exclude", self.exclude))
        if self.include is not None:
            set_(self, "include", _rules("include", self.include))
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", self.cookie_name or ""):
            raise ValueError(
                f"ReplayConfig: cookie_name must be 1-64 characters of A-Z, a-z, 0-9, '_' or '-' (got {self.cookie_name!r})"
            )
        if self.cookie_domain is not None and not re.fullmatch(
            r"\.?[A-Za-z0-9.-]+", self.cookie_domain
        ):
            raise ValueError(
                f"ReplayConfig: cookie_domain must be a host name (got {self.cookie_domain!r})"
            )
        if self.cookie_secure not in (True, False, "auto"):
            raise ValueError(
                f"ReplayConfig: cookie_secure must be True, False or 'auto' (got {self.cookie_secure!r})"
            )
        samesite = str(self.cookie_samesite).capitalize()
        if samesite not in _SAMESITE:
            raise ValueError(
                f"ReplayConfig: cookie_samesite must be one of 'Lax', 'Strict', 'None' (got {self.cookie_samesite!r})"
            )
        if samesite == "None" and self.cookie_secure is False:
            raise ValueError(
                "ReplayConfig: cookie_samesite='None' requires cookie_secure True or 'auto'"
            )
        set_(self, "cookie_samesite", samesite)
        _positive_int("device_max_age", self.device_max_age)
        _positive_int("session_timeout", self.session_timeout)
        _positive_int("max_scan_bytes", self.max_scan_bytes)
        _positive_int("max_upload_bytes", self.max_upload_bytes)
        _positive_int("upload_memory_bytes", self.upload_memory_bytes)
        if (
            isinstance(self.max_uploads_per_client, bool)
            or not isinstance(self.max_uploads_per_client, int)
            or self.max_uploads_per_client < 0
        ):
            raise ValueError(
                "ReplayConfig: max_uploads_per_client must be an integer, 0 for no cap "
                f"(got {self.max_uploads_per_client!r})"
            )
        if not (
            isinstance(self.client_body_timeout, (int, float))
            and not isinstance(self.client_body_timeout, bool)
            and 0 < self.client_body_timeout <= 60
        ):
            raise ValueError(
                "ReplayConfig: client_body_timeout must be seconds in (0, 60] "
                f"(got {self.client_body_timeout!r})"
            )
        if self.secret_key is not None:
            set_(self, "secret_key", _secret_keys(self.secret_key))
        for name in ("identify", "consent", "force_sample", "should_record"):
            _callable_or_none(name, getattr(self, name))
        set_(self, "privacy", _privacy(self.privacy))
        levels = dict(self.route_mask_levels)
        for glob, level in levels.items():
            if not isinstance(glob, str) or not glob.startswith("/") or level not in _MASK_LEVELS:
                raise ValueError(
                    "ReplayConfig: route_mask_levels maps path globs starting with '/' to one of "
                    f"{', '.join(map(repr, _MASK_LEVELS))} (got {glob!r}: {level!r})"
                )
        set_(self, "route_mask_levels", MappingProxyType(levels))
        status = frozenset(self.inject_status)
        if not all(isinstance(s, int) and 100 <= s <= 599 for s in status):
            raise ValueError(
                "ReplayConfig: inject_status must be a set of HTTP status codes 100-599"
            )
        set_(self, "inject_status", status - {204, 205, 206, 304})
        if self.csp not in ("merge", "off"):
            raise ValueError(f"ReplayConfig: csp must be one of 'merge', 'off' (got {self.csp!r})")
        if self.sdk_source not in ("first-party", "cdn"):
            raise ValueError(
                f"ReplayConfig: sdk_source must be one of 'first-party', 'cdn' (got {self.sdk_source!r})"
            )
        if not re.fullmatch(r"[0-9]+\.[0-9]+\.[0-9]+", self.sdk_version):
            raise ValueError(
                f"ReplayConfig: sdk_version must be a version such as '1.51.6' (got {self.sdk_version!r})"
            )
        opts = dict(self.sdk_options)
        unknown = sorted(set(opts) - SDK_OPTIONS)
        if unknown:
            raise ValueError(
                f"ReplayConfig: sdk_options has unknown option(s) {', '.join(map(repr, unknown))}; "
                f"accepted: {', '.join(sorted(SDK_OPTIONS))}"
            )
        try:
            json.dumps(opts, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ValueError(
                f"ReplayConfig: sdk_options must be JSON-serialisable ({exc})"
            ) from None
        set_(self, "sdk_options", MappingProxyType(opts))
        if not (
            isinstance(self.upstream_timeout, (int, float)) and 0 < self.upstream_timeout <= 60
        ):
            raise ValueError(
                f"ReplayConfig: upstream_timeout must be seconds in (0, 60] (got {self.upstream_timeout!r})"
            )
        if self.upload_mode not in ("proxy", "direct"):
            raise ValueError(
                f"ReplayConfig: upload_mode must be one of 'proxy', 'direct' (got {self.upload_mode!r})"
            )
        _positive_int("local_store_max_bytes", self.local_store_max_bytes)
        if not isinstance(self.local_store_dir, str) or not self.local_store_dir.strip():
            raise ValueError("ReplayConfig: local_store_dir must be a directory path")
        set_(self, "inspector_allow", tuple(str(a) for a in self.inspector_allow))
        if self.inspector_token is not None and not (
            isinstance(self.inspector_token, str)
            and re.fullmatch(r"[A-Za-z0-9._~-]{16,256}", self.inspector_token)
        ):
            raise ValueError(
                "ReplayConfig: inspector_token must be 16-256 URL-safe characters "
                "(A-Z, a-z, 0-9, '.', '_', '~', '-'), or None for a token derived from "
                "secret_key (a random one without it)"
            )
        if self.forward_client_ip not in _CLIENT_IP:
            raise ValueError(
                f"ReplayConfig: forward_client_ip must be one of 'mask', 'full', 'drop' (got {self.forward_client_ip!r})"
            )
        set_(self, "trusted_proxies", tuple(str(p) for p in self.trusted_proxies))
        if not (
            isinstance(self.config_cache_ttl, (int, float)) and 0 <= self.config_cache_ttl <= 3600
        ):
            raise ValueError(
                f"ReplayConfig: config_cache_ttl must be seconds in [0, 3600] (got {self.config_cache_ttl!r})"
            )

    # -- derived values ------------------------------------------------------------------

    @property
    def secret_keys(self) -> tuple[str, ...]:
        """The signing keys, oldest first (empty without ``secret_key``): cookies are signed
        with the last and verified with any (key rotation)."""
        keys = self.secret_key
        return keys if isinstance(keys, tuple) else ()

    @property
    def signing_key(self) -> str | None:
        """The newest ``secret_key``: it signs cookies and derives the inspector token."""
        return self.secret_keys[-1] if self.secret_keys else None

    @functools.cached_property
    def opt_out_cookie_name(self) -> str:
        """The visitor's own opt-out cookie (``<cookie_name>_optout``, set by the loader)."""
        return f"{self.cookie_name}_optout"

    @property
    def local_mode(self) -> bool:
        """No API key: uploads stay on this machine (SPEC L1)."""
        return self.api_key is None

    @property
    def show_debug_header(self) -> bool:
        """O2: the decision header is off by default and on in local mode."""
        return self.local_mode if self.debug_header is None else self.debug_header

    @property
    def sample_rate_is_default(self) -> bool:
        """``sample_rate`` was not given (constructor argument, ``REPLAY_SAMPLE_RATE``, a
        settings key), so it is the mode's default: 1.0 in local mode, 0.0 with an api_key."""
        return isinstance(self.sample_rate, _ModeDefaultRate)

    @property
    def blocked_prefix_patterns(self) -> tuple[str, ...]:
        """The ``BLOCKED_PREFIX_PATTERNS`` that ``prefix`` contains (empty: none)."""
        lowered = self.prefix.lower() + "/"
        return tuple(p for p in BLOCKED_PREFIX_PATTERNS if p in lowered)

    def startup_warnings(self) -> list[str]:
        """Human-readable warnings for the start-up log (SPEC O4); the middleware logs them
        once, on its first request."""
        warnings: list[str] = []
        if self.local_mode:
            recorded = (
                "; every session is recorded (sample_rate defaults to 1 in local mode)"
                if self.sample_rate_is_default
                else ""
            )
            warnings.append(
                "replay-middleware runs in local mode (no api_key): recordings stay on this "
                f"machine and nothing is sent to Amplitude{recorded}"
            )
        if self.sample_rate == 0 and self.force_sample is None:
            if self.local_mode:
                # Local mode has no remote config to raise the rate: nothing will ever record.
                warnings.append(
                    "sample_rate is 0 in local mode, so this middleware RECORDS NOTHING (every "
                    "decision is not_in_sample). Remove sample_rate to record every session, "
                    "or set it above 0"
                )
            else:
                warnings.append(
                    "sample_rate is 0: no session will be recorded unless the project's remote "
                    "config sets a sample rate"
                )
        blocked = self.blocked_prefix_patterns
        if blocked:
            warnings.append(
                f"prefix {self.prefix!r} contains {', '.join(map(repr, blocked))}, which "
                "ad-blocker lists (EasyPrivacy, uBlock Origin) match: many visitors will load "
                "no recorder and send nothing; choose a neutral prefix such as '/_replay'"
            )
        return warnings

    # -- constructors --------------------------------------------------------------------

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> ReplayConfig:
        """Build a config from a mapping (a Django settings dict, ``app.config`` slice...).

        Keys are option names, case-insensitive, with or without a ``REPLAY_`` prefix. String
        values are coerced like environment variables; other values are used as they are.
        Unknown keys raise ``ValueError`` naming the key and the accepted ones.
        """
        fields = {f.name: f for f in dataclasses.fields(cls)}
        kwargs: dict[str, Any] = {}
        for raw_key, value in data.items():
            key = str(raw_key).lower()
            if key.startswith("replay_"):
                key = key[len("replay_") :]
            if key not in fields:
                raise ValueError(
                    f"ReplayConfig: unknown option {raw_key!r}; accepted: {', '.join(sorted(fields))}"
                )
            kwargs[key] = _coerce(key, value) if isinstance(value, str) else value
        return cls(**kwargs)

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, *, prefix: str = "REPLAY_"
    ) -> ReplayConfig:
        """Build a config from ``REPLAY_*`` environment variables.

        Lists (``REPLAY_EXCLUDE``, ``REPLAY_INCLUDE``, ``REPLAY_TRUSTED_PROXIES``) are
        comma-separated; mappings (``REPLAY_PRIVACY``, ``REPLAY_SDK_OPTIONS``,
        ``REPLAY_ROUTE_MASK_LEVELS``) are JSON. ``REPLAY_SECRET_KEY`` is one key, or several
        as a JSON array, newest last (``'["old...", "new..."]'``): keys may hold any character,
        so no separator would be safe. Callables cannot come from the environment.
        Variables with the prefix that name no option raise ``ValueError``.
        """
        if environ is None:
            import os

            environ = os.environ
        data = {k[len(prefix) :]: v for k, v in environ.items() if k.startswith(prefix)}
        return cls.from_mapping(data)


_CALLABLE_FIELDS = {"identify", "consent", "force_sample", "should_record", "http_client"}
_BOOL_FIELDS = {
    "opt_out",
    "respect_gpc",
    "respect_dnt",
    "inject_into_fragments",
    "inject_into_iframes",
    "csp_report_only_merge",
}
_INT_FIELDS = {
    "device_max_age",
    "session_timeout",
    "max_scan_bytes",
    "max_upload_bytes",
    "max_uploads_per_client",
    "upload_memory_bytes",
    "local_store_max_bytes",
}
_FLOAT_FIELDS = {"sample_rate", "upstream_timeout", "config_cache_ttl", "client_body_timeout"}
_LIST_FIELDS = {"exclude", "include", "trusted_proxies", "inspector_allow"}
_JSON_FIELDS = {"privacy", "sdk_options", "route_mask_levels"}
_OPTIONAL_STR = {"api_key", "secret_key", "cookie_domain", "public_origin", "inspector_token"}


def _parse_bool(key: str, value: str) -> bool:
    v = value.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise ValueError(
        f"ReplayConfig: {key} must be a boolean: true/false, 1/0, yes/no, on/off (got {value!r})"
    )


def _coerce(key: str, value: str) -> Any:
    """Coerce one string value (environment variable or settings string) to the field's type."""
    if key in _CALLABLE_FIELDS:
        raise ValueError(f"ReplayConfig: {key} must be a callable; it cannot be given as a string")
    if key in _BOOL_FIELDS:
        return _parse_bool(key, value)
    if key in ("cookie_secure", "debug_header"):
        if value.strip().lower() == "auto" and key == "cookie_secure":
            return "auto"
        return _parse_bool(key, value)
    try:
        if key in _INT_FIELDS:
            return int(value.strip())
        if key in _FLOAT_FIELDS:
            return float(value.strip())
    except ValueError:
        raise ValueError(f"ReplayConfig: {key} must be a number (got {value!r})") from None
    if key in _LIST_FIELDS:
        return tuple(part.strip() for part in value.split(",") if part.strip())
    if key in _JSON_FIELDS:
        try:
            parsed = json.loads(value)
        except ValueError as exc:
            raise ValueError(f"ReplayConfig: {key} must be a JSON object ({exc})") from None
        if not isinstance(parsed, dict):
            raise ValueError(f"ReplayConfig: {key} must be a JSON object (got {value!r})")
        return parsed
    if key == "inject_status":
        try:
            return frozenset(int(p) for p in value.replace(" ", "").split(",") if p)
        except ValueError:
            raise ValueError(
                f"ReplayConfig: inject_status must be comma-separated status codes (got {value!r})"
            ) from None
    if key == "secret_key" and value.strip().startswith("["):
        # Several keys (rotation): a JSON array, newest last. Keys may hold any character, so
        # no separator is safe, and a plain string must keep meaning one key.
        try:
            keys = json.loads(value)
        except ValueError as exc:
            raise ValueError(
                f"ReplayConfig: secret_key starting with '[' must be a JSON array of keys ({exc})"
            ) from None
        return tuple(keys)  # a JSON text starting with "[" is an array
    if key in _OPTIONAL_STR:
        return value.strip() or None
    return value.strip()


def _secret_keys(value: object) -> tuple[str, ...]:
    """``secret_key`` as a tuple of keys, oldest first: one string, or a non-empty sequence of
    them with the newest last; each at least 16 characters. Messages never echo a key."""
    keys = (value,) if isinstance(value, str) else value
    if isinstance(keys, (bytes, bytearray)) or not isinstance(keys, Sequence) or not keys:
        raise ValueError(
            "ReplayConfig: secret_key must be a string of at least 16 characters, or a "
            "non-empty sequence of them with the newest last (key rotation)"
        )
    for index, key in enumerate(keys):
        if not isinstance(key, str) or len(key) < 16:
            where = "secret_key" if isinstance(value, str) else f"secret_key[{index}]"
            got = f"{len(key)} characters" if isinstance(key, str) else type(key).__name__
            raise ValueError(
                f"ReplayConfig: {where} must be a string of at least 16 characters (got {got})"
            )
    return tuple(keys)


def _positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"ReplayConfig: {name} must be a positive integer (got {value!r})")


def _rules(name: str, rules: Iterable[RouteRule] | str) -> tuple[RouteRule, ...]:
    if isinstance(rules, str):
        rules = (rules,)
    out: list[RouteRule] = []
    for rule in rules:
        if isinstance(rule, str):
            if not rule.startswith("/") and not rule.startswith("*"):
                raise ValueError(
                    f"ReplayConfig: {name} globs must start with '/' or '*' (got {rule!r})"
                )
        elif not isinstance(rule, re.Pattern) and not callable(rule):
            raise ValueError(
                f"ReplayConfig: {name} rules must be globs, compiled regexes or callables (got {rule!r})"
            )
        out.append(rule)
    return tuple(out)


def _privacy(privacy: Mapping[str, Any]) -> Mapping[str, Any]:
    data = dict(privacy)
    unknown = sorted(set(data) - _PRIVACY_KEYS)
    if unknown:
        raise ValueError(
            f"ReplayConfig: privacy has unknown key(s) {', '.join(map(repr, unknown))}; "
            f"accepted: {', '.join(sorted(_PRIVACY_KEYS))}"
        )
    level = data.get("defaultMaskLevel")
    if level is not None and level not in _MASK_LEVELS:
        raise ValueError(
            f"ReplayConfig: privacy.defaultMaskLevel must be one of {', '.join(map(repr, _MASK_LEVELS))} (got {level!r})"
        )
    for key in ("maskSelector", "unmaskSelector", "maskAttributes"):
        if key in data and not (
            isinstance(data[key], list) and all(isinstance(s, str) for s in data[key])
        ):
            raise ValueError(f"ReplayConfig: privacy.{key} must be a list of strings")
    block = data.get("blockSelector")
    if block is not None and not (
        isinstance(block, str)
        or (isinstance(block, list) and all(isinstance(s, str) for s in block))
    ):
        raise ValueError(
            "ReplayConfig: privacy.blockSelector must be a string or a list of strings"
        )
    levels = data.get("urlMaskLevels")
    if levels is not None and not (
        isinstance(levels, list)
        and all(
            isinstance(x, dict)
            and isinstance(x.get("match"), str)
            and x.get("maskLevel") in _MASK_LEVELS
            for x in levels
        )
    ):
        raise ValueError(
            "ReplayConfig: privacy.urlMaskLevels must be a list of {'match': glob, 'maskLevel': level}"
        )
    return MappingProxyType(data)
