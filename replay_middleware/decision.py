"""The per-request decision: is this session recorded here, and why (SPEC D1-D2, H1).

Sans-IO and pure: ``decide`` maps a request, its identity and the effective sampling settings
to a frozen ``ReplayContext``; ``response_skip_reason`` maps a status line and headers to the
reason a response cannot carry the recorder (or None).

D1 order, first failing check wins, each with a reason code:
request not eligible (method, fragment, iframe) → excluded route → opted out (config, the
visitor's own opt-out cookie, GPC, DNT, consent) → ``should_record`` gate → remote
``capture_enabled: false`` → forced → in sample → not in sample.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from ._fast import frozen_new
from .config import ReplayConfig
from .headers import index_headers, media_type, parse_cache_control, parse_content_length
from .identity import Identity
from .request import RequestInfo
from .routes import RouteRules
from .sampling import is_session_in_sample

__all__ = [
    "MARKER_HEADER",
    "ReplayContext",
    "decide",
    "request_skip_reason",
    "response_skip_reason",
]

logger = logging.getLogger("replay_middleware.decision")

#: Set on every response we injected into (H8); an outer copy of the middleware sees it and
#: leaves the response alone.
MARKER_HEADER = "x-replay-middleware"
#: The decision and its reason (O2); off by default, on in local mode.
DECISION_HEADER = "x-replay-decision"

RECORDING_REASONS = frozenset({"in_sample", "forced"})


@dataclass(frozen=True)
class ReplayContext:
    """What replay-middleware decided for one request.

    ``sampled`` is True when this session is recorded on this route (whatever the response
    turns out to be: an API call of a recorded session is "sampled", so backend events can
    carry the replay id, R1). ``reason`` is the first D1 check that decided, and for a request
    that cannot receive the recorder (a POST, a fragment) it names that instead.
    """

    device_id: str
    session_id: int
    sampled: bool
    reason: str
    sample_rate: float
    forced: bool = False
    identity_source: str = "cookie"
    #: The request may receive an injected page (GET, not a fragment/iframe request).
    eligible: bool = True

    @property
    def replay_id(self) -> str:
        """``<device>/<session>``, Amplitude's "[Amplitude] Session Replay ID" format."""
        return f"{self.device_id}/{self.session_id}"

    def properties(self) -> dict[str, str]:
        """R1: the replay property for analytics events, or {} when not recorded."""
        if not self.sampled:
            return {}
        return {"[Amplitude] Session Replay ID": self.replay_id}


def _call_gate(name: str, fn: object, request: RequestInfo, default: bool | None) -> bool | None:
    try:
        result = fn(request)  # type: ignore[operator]
    except Exception:
        logger.exception("%s callable raised; treating it as %r", name, default)
        return default
    return None if result is None else bool(result)


def request_skip_reason(request: RequestInfo, config: ReplayConfig) -> str | None:
    """H1's request-side checks: GET only; no fragment or iframe requests unless configured."""
    if request.method != "GET":
        return "method_not_get"
    h = request.headers
    dest = h.get("sec-fetch-dest")
    if dest is not None:
        dest = dest.strip().lower()
    if not config.inject_into_fragments:
        if "hx-request" in h and "hx-boosted" not in h:
            return "fragment_request"
        if "turbo-frame" in h or "x-up-target" in h or "x-pjax" in h:
            return "fragment_request"
        if dest == "empty":
            return "fragment_request"
    if not config.inject_into_iframes and dest in ("iframe", "frame"):
        return "iframe_request"
    return None


def decide(
    request: RequestInfo,
    identity: Identity,
    config: ReplayConfig,
    routes: RouteRules,
    *,
    sample_rate: float | None = None,
    capture_enabled: bool = True,
    page_request: bool = True,
) -> ReplayContext:
    """Decide for one request (D1). ``sample_rate`` is the effective rate (S2): the project's
    remote config when known, else ``config.sample_rate``. ``page_request`` False (the loader's
    ``/session`` call) skips the request-eligibility checks, which only concern pages."""
    rate = config.sample_rate if sample_rate is None else sample_rate
    forced = False
    reason: str
    route_reason = routes.excluded(request.path, request) if routes.active else None
    if route_reason is not None:
        reason = route_reason
    else:
        reason = _opt_out_reason(request, config) or ""
        gate = config.should_record
        if (
            not reason
            and gate is not None
            and not _call_gate("should_record", gate, request, False)
        ):
            reason = "should_record_false"
        if not reason and not capture_enabled:
            reason = "capture_disabled"
        if not reason and config.force_sample is not None:
            forced = bool(_call_gate("force_sample", config.force_sample, request, False))
            if forced:
                reason = "forced"
        if not reason:
            reason = (
                "in_sample" if is_session_in_sample(identity.session_id, rate) else "not_in_sample"
            )
    sampled = reason in RECORDING_REASONS
    request_reason = request_skip_reason(request, config) if page_request else None
    return frozen_new(
        ReplayContext,
        device_id=identity.device_id,
        session_id=identity.session_id,
        sampled=sampled,
        reason=request_reason or reason,
        sample_rate=rate,
        forced=forced,
        identity_source=identity.source,
        eligible=request_reason is None,
    )


def _opt_out_reason(request: RequestInfo, config: ReplayConfig) -> str | None:
    if config.opt_out:
        return "opted_out_config"
    if request.cookies.get(config.opt_out_cookie_name):
        return "opted_out_user"
    if config.respect_gpc and request.headers.get("sec-gpc", "").strip() == "1":
        return "opted_out_gpc"
    if config.respect_dnt and request.headers.get("dnt", "").strip() == "1":
        return "opted_out_dnt"
    # No answer (None) or an error means no consent: recording needs a yes.
    if config.consent is not None and not _call_gate("consent", config.consent, request, False):
        return "no_consent"
    return None


# Charsets whose bytes are not ASCII-compatible: we never decode, so we cannot inject (H6).
_NON_ASCII_CHARSETS = (
    "utf-16",
    "utf-32",
    "ucs-2",
    "ucs-4",
    "utf16",
    "utf32",
    "iso-2022",
    "utf-7",
    "cp1026",
    "ibm",
)


class _Unknown:
    """The type of ``_UNKNOWN``: an argument the caller did not compute."""


_UNKNOWN = _Unknown()


def response_skip_reason(
    status: int,
    headers: Sequence[tuple[str, str]],
    config: ReplayConfig,
    *,
    by_name: dict[str, list[str]] | None = None,
    length: int | bool | _Unknown | None = _UNKNOWN,
) -> str | None:
    """H1's response-side checks, H5's framing checks and H8's marker, in a fixed order.

    ``by_name``: ``headers.index_headers(headers)`` when the caller has it already;
    ``length``: ``headers.parse_content_length(headers)``, likewise."""
    if status not in config.inject_status:
        return "status"
    if by_name is None:
        by_name = index_headers(headers)
    if MARKER_HEADER in by_name:
        return "already_injected"
    ctypes = by_name.get("content-type", ())
    reason = _content_type_reason(ctypes[0] if len(ctypes) == 1 else None)
    if reason is not None:
        return reason
    for value in by_name.get("content-encoding", ()):
        if any(e.strip().lower() not in ("", "identity") for e in value.split(",")):
            return "encoded"
    disposition = by_name.get("content-disposition")
    if disposition and disposition[0].split(";", 1)[0].strip().lower() == "attachment":
        return "attachment"
    if "cache-control" in by_name and "no-transform" in parse_cache_control(
        by_name["cache-control"]
    ):
        return "no_transform"
    if status == 206 or "content-range" in by_name:
        return "partial"
    if "content-length" in by_name:
        if isinstance(length, _Unknown):
            length = parse_content_length(headers, by_name=by_name)
        if length is False:
            return "bad_length"
    return None


@functools.lru_cache(maxsize=256)
def _content_type_reason(value: str | None) -> str | None:
    """"not_html" or "charset" for a Content-Type value, else None (a site sends a handful
    of distinct values, so the parse is cached)."""
    mtype, params = media_type(value)
    if mtype != "text/html":
        return "not_html"
    charset = params.get("charset", "").strip().lower()
    if charset.startswith(_NON_ASCII_CHARSETS):
        return "charset"
    return None
