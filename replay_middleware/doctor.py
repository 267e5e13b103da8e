"""``python -m replay_middleware doctor [URL]``: the seed's troubleshooting list, automated (SPEC O3).

What it is: a command that checks a configuration (``--app module:attr`` or ``REPLAY_*``) and,
given a URL, fetches the page and the first-party endpoints it names and reports whether the
recorder can start there. Each check is a frozen :class:`Check` (ok / warn / fail, with the
fix); the exit status is 1 when any check fails.

Two layers: the analysis functions (``*_checks``) take plain values (HTML text, header lists,
bytes) and are tested without a network; :func:`url_checks` is the thin httpx layer that
fetches (a sync ``Client``, ``trust_env=False``, bounded timeouts, redirects followed only on
the page's own origin). Not imported by ``replay_middleware/__init__`` (it needs httpx and
BeautifulSoup); the CSP analysis reuses :mod:`replay_middleware.csp`'s parser and matcher.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import importlib
import json
import os
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal
from urllib.parse import urljoin, urlsplit

from .config import BLOCKED_PREFIX_PATTERNS, ReplayConfig
from .csp import BLOB, STRICT_DYNAMIC, Policy, allows, parse_policy_list
from .decision import DECISION_HEADER
from .proxy import CONFIG_QUERY, DEFAULT_UPSTREAMS
from .sampling import is_session_in_sample
from .snippet import DATA_BLOCK_ID

__all__ = ["Check", "config_checks", "csp_checks", "load_app_config", "main", "snippet_checks"]

Status = Literal["ok", "warn", "fail"]
LOADER_ID = "replay-middleware-loader"
#: Decision reasons that explain an absent snippet without anything being broken.
_BENIGN_REASONS = frozenset(
    {
        "not_in_sample",
        "excluded_route",
        "not_included",
        "opted_out_config",
        "opted_out_user",
        "opted_out_gpc",
        "opted_out_dnt",
        "no_consent",
        "should_record_false",
        "capture_disabled",
        "already_injected",
    }
)


@dataclass(frozen=True)
class Check:
    """One result line: ``name`` (short, stable), ``status``, what was seen, and the fix."""

    name: str
    status: Status
    message: str
    fix: str = ""

    def line(self) -> str:
        label = {"ok": "ok  ", "warn": "warn", "fail": "FAIL"}[self.status]
        text = f"{label} {self.name}: {self.message}"
        return f"{text} — fix: {self.fix}" if self.fix and self.status != "ok" else text


def _ok(name: str, message: str) -> Check:
    return Check(name, "ok", message)


def _warn(name: str, message: str, fix: str = "") -> Check:
    return Check(name, "warn", message, fix)


def _fail(name: str, message: str, fix: str) -> Check:
    return Check(name, "fail", message, fix)


# =============================================================================================
# Configuration checks
# =============================================================================================


def adblock_check(prefix: str) -> Check:
    """The prefix against the patterns common ad-block lists match (config.py's table)."""
    lowered = prefix.lower() + "/"
    hits = [p for p in BLOCKED_PREFIX_PATTERNS if p in lowered]
    if hits:
        return _fail(
            "adblock",
            f"prefix {prefix!r} contains {', '.join(map(repr, hits))}, which ad-block lists match",
            "choose a neutral prefix such as '/_replay'",
        )
    return _ok("adblock", f"prefix {prefix!r} matches no common filter-list pattern")


def config_checks(config: ReplayConfig) -> list[Check]:
    """What can be said about a configuration without a running app."""
    checks: list[Check] = []
    if config.local_mode:
        checks.append(
            _ok("mode", "local mode (no api_key): uploads stay on this machine, inspector on")
        )
    else:
        checks.append(_ok("mode", f"api_key set (…{(config.api_key or '')[-4:]}), proxy mode"))
        checks.append(
            _warn(
                "server_zone",
                f"server_zone is {config.server_zone}; whether the key's project lives there "
                "cannot be checked offline",
                "compare with the project's region in Amplitude (EU projects need 'EU')",
            )
        )
    if config.sample_rate == 0 and config.force_sample is None:
        if config.local_mode:
            # Local mode has no remote config that could raise the rate.
            checks.append(
                _fail(
                    "sample_rate",
                    "sample_rate is 0 in local mode: nothing is recorded",
                    "remove sample_rate (local mode then records every session) or raise it",
                )
            )
        else:
            checks.append(
                _warn(
                    "sample_rate",
                    "sample_rate is 0: nothing is recorded unless the project's remote config "
                    "sets a rate",
                    "set sample_rate above 0, or a sample rate in Amplitude's settings",
                )
            )
    else:
        checks.append(_ok("sample_rate", f"sample_rate {float(config.sample_rate):g}"))
    checks.append(adblock_check(config.prefix))
    if config.secret_keys:
        checks.append(_ok("secret_key", f"{len(config.secret_keys)} signing key(s) set"))
    else:
        checks.append(
            _warn(
                "secret_key",
                "no secret_key: each process signs cookies with a random key",
                "set secret_key (or SECRET_KEY in Flask/Django) when several processes serve the site",
            )
        )
    origin = config.public_origin
    if origin is not None and not origin.startswith("https://"):
        checks.append(
            _warn(
                "public_origin",
                f"public_origin {origin!r} is not https",
                "use the https origin in production",
            )
        )
    elif origin is not None:
        checks.append(_ok("public_origin", origin))
    if config.sdk_source == "cdn":
        checks.append(_ok("sdk_bundle", "SDK from Amplitude's CDN (sdk_source='cdn')"))
    else:
        from .sdk import vendor_path

        path = vendor_path(config.sdk_version)
        if path.is_file():
            checks.append(_ok("sdk_bundle", f"SDK {config.sdk_version} vendored at {path}"))
        else:
            checks.append(
                _warn(
                    "sdk_bundle",
                    f"{path} is missing: the SDK is downloaded once from the CDN at first use",
                    "run `make setup` in a checkout, or install a wheel that carries the bundle",
                )
            )
    return checks


def _find_config(obj: Any, depth: int = 0) -> ReplayConfig | None:
    """The ReplayConfig an app object holds: a replay middleware (``.engine.config``), a
    Starlette/FastAPI app (``user_middleware``), a Flask app (its extension), Django's
    handlers (the settings), or a wrapper whose ``.app``/``.wsgi_app`` holds one of these."""
    if depth > 10 or obj is None:
        return None
    if isinstance(obj, ReplayConfig):
        return obj
    engine = getattr(obj, "engine", None)
    if isinstance(getattr(engine, "config", None), ReplayConfig):
        return engine.config  # type: ignore[union-attr,no-any-return]
    for item in getattr(obj, "user_middleware", None) or ():
        cls = getattr(item, "cls", None)
        if getattr(cls, "__name__", "") == "ReplayMiddleware":
            kwargs = getattr(item, "kwargs", {}) or {}
            args = getattr(item, "args", ()) or ()
            config = kwargs.get("config", args[0] if args else None)
            return config if isinstance(config, ReplayConfig) else ReplayConfig()
    extensions = getattr(obj, "extensions", None)
    if isinstance(extensions, Mapping) and "replay_middleware" in extensions:
        return _find_config(extensions["replay_middleware"].middleware_for(obj), depth + 1)
    if type(obj).__module__.startswith("django.core.handlers"):
        from .django import config_from_settings

        return config_from_settings()
    for attr in ("wsgi_app", "app"):
        inner = getattr(obj, attr, None)
        if inner is not None and inner is not obj:
            found = _find_config(inner, depth + 1)
            if found is not None:
                return found
    return None


def load_app_config(spec: str) -> ReplayConfig:
    """``module:attr`` (or ``module:factory()``, called without arguments) → its config.

    ``ValueError`` when nothing in the object holds a replay middleware.
    """
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ValueError(f"--app must look like 'module:attr' or 'module:factory()', got {spec!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    obj: Any = importlib.import_module(module_name)
    call = attr.endswith("()")
    for part in attr.removesuffix("()").split("."):
        obj = getattr(obj, part)
    if call:
        obj = obj()
    config = _find_config(obj)
    if config is None:
        raise ValueError(f"{spec}: no replay middleware found (is it installed on this app?)")
    return config


def default_config() -> ReplayConfig:
    """Without ``--app``: Django's settings when ``DJANGO_SETTINGS_MODULE`` is set, else the
    ``REPLAY_*`` environment."""
    if os.environ.get("DJANGO_SETTINGS_MODULE"):
        import django

        django.setup()
        from .django import config_from_settings

        return config_from_settings()
    return ReplayConfig.from_env()


# =============================================================================================
# Page checks (pure: HTML text and header lists)
# =============================================================================================


@dataclass(frozen=True)
class Snippet:
    """What the page's snippet says (the data block's JSON and the loader tag)."""

    data: Mapping[str, Any]
    loader_src: str
    nonce: str | None


def _get(headers: Sequence[tuple[str, str]], name: str) -> list[str]:
    return [v for k, v in headers if k.lower() == name]


def snippet_checks(
    html: str, decision: str | None
) -> tuple[list[Check], Snippet | None, list[str]]:
    """The data block and the loader: present, in ``<head>``, exactly once; their values.

    Returns the checks, the snippet (None when unusable) and the ``<meta http-equiv>`` CSP
    policies found in ``<head>``. ``decision`` is the ``x-replay-decision`` header, if any.
    """
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(html, "html.parser")
    metas = [
        str(m.get("content") or "")
        for m in soup.find_all("meta")
        if str(m.get("http-equiv") or "").lower() == "content-security-policy"
        and m.find_parent("body") is None
    ]
    blocks = soup.find_all("script", id=DATA_BLOCK_ID)
    loaders = soup.find_all("script", id=LOADER_ID)
    checks: list[Check] = []
    if not blocks and not loaders:
        if decision in _BENIGN_REASONS:
            checks.append(
                _warn(
                    "snippet",
                    f"not injected: the decision header says {decision!r}",
                    "expected for this visitor/route; try another page or --session-id",
                )
            )
        elif decision and decision.startswith("csp_"):
            checks.append(
                _fail(
                    "snippet",
                    f"not injected: the page's CSP makes it impossible ({decision})",
                    "relax the directive named by the reason (see the csp checks and docs/behaviour.md)",
                )
            )
        elif decision:
            checks.append(
                _fail(
                    "snippet",
                    f"not injected: the decision header says {decision!r}",
                    "see docs/behaviour.md for the reason code",
                )
            )
        else:
            checks.append(
                _fail(
                    "snippet",
                    "no snippet and no x-replay-decision header in the page",
                    "is the middleware installed (outermost), is the page HTML, and is it the "
                    "right URL? With an api_key set debug_header=True to see the decision",
                )
            )
        return checks, None, metas
    for label, found in (("data block", blocks), ("loader", loaders)):
        if len(found) != 1:
            checks.append(
                _fail(
                    "snippet",
                    f"the {label} appears {len(found)} times",
                    "install the middleware once and place the snippet by hand at most once",
                )
            )
            return checks, None, metas
    block, loader = blocks[0], loaders[0]
    for label, tag in (("data block", block), ("loader", loader)):
        if tag.find_parent("head") is None:
            status_fail = tag.find_parent("body") is not None
            msg = f"the {label} is outside <head>"
            fix = "put {% replay_snippet %} / replay_snippet() in <head>, or let the middleware inject it"
            checks.append(_fail("snippet", msg, fix) if status_fail else _warn("snippet", msg, fix))
    try:
        data = json.loads(block.string or "")
    except ValueError:
        checks.append(
            _fail("snippet", "the data block is not JSON", "do not edit the snippet by hand")
        )
        return checks, None, metas
    if not isinstance(data, dict) or data.get("v") != 1:
        checks.append(
            _fail("snippet", "the data block has no version 1 config", "upgrade the snippet")
        )
        return checks, None, metas
    if not checks:
        checks.append(_ok("snippet", "data block and loader in <head>, exactly once"))
    nonce = loader.get("nonce")
    return (
        checks,
        Snippet(data, str(loader.get("src") or ""), None if nonce is None else str(nonce)),
        metas,
    )


def _governing(policy: Policy, names: Iterable[str]) -> tuple[str, ...] | None:
    for name in names:
        directive = policy.get(name)
        if directive is not None:
            return directive.tokens
    return None


def _script_allowed(url: str, tokens: Sequence[str], nonce: str | None, origin: str) -> bool:
    lowered = [t.lower() for t in tokens]
    if nonce and f"'nonce-{nonce}'".lower() in lowered:
        return True
    if STRICT_DYNAMIC in lowered:
        return False  # URL sources and 'self' are ignored under 'strict-dynamic' (CSP3 §8.2)
    return allows(url, tokens, origin=origin)


def _policy_problems(
    policy: Policy,
    *,
    origin: str,
    loader_url: str,
    sdk_url: str,
    nonce: str | None,
    connect_urls: Sequence[str],
    use_worker: bool,
) -> tuple[list[str], list[str]]:
    """(problems that block the recorder, softer notes) for one policy."""
    problems: list[str] = []
    notes: list[str] = []
    scripts = _governing(policy, ("script-src-elem", "script-src", "default-src"))
    if scripts is not None:
        if not _script_allowed(loader_url, scripts, nonce, origin):
            problems.append(f"the loader ({loader_url}) is not allowed by script-src")
        # The loader creates the SDK's tag with the nonce: 'strict-dynamic' or the nonce admit it.
        lowered = [t.lower() for t in scripts]
        if STRICT_DYNAMIC not in lowered and not _script_allowed(sdk_url, scripts, nonce, origin):
            problems.append(f"the SDK ({sdk_url}) is not allowed by script-src")
    workers = _governing(policy, ("worker-src", "child-src", "script-src", "default-src"))
    if use_worker and workers is not None and not any(t.lower() == BLOB for t in workers):
        if any(t.lower() == STRICT_DYNAMIC for t in workers):
            # csp.py W4: under 'strict-dynamic' worker rules are browser-dependent; the
            # middleware leaves them alone and the SDK falls back to the main thread.
            notes.append("blob: workers may be blocked under 'strict-dynamic' (the SDK falls back)")
        else:
            problems.append(
                "blob: workers are not allowed (worker-src) and useWebWorker is not false"
            )
    connect = _governing(policy, ("connect-src", "default-src"))
    if connect is not None:
        for url in connect_urls:
            if not allows(url, connect, origin=origin):
                problems.append(f"connect-src blocks {url}")
    return problems, notes


def csp_checks(
    headers: Sequence[tuple[str, str]],
    metas: Sequence[str],
    snippet: Snippet,
    *,
    origin: str,
) -> list[Check]:
    """Every policy (each header field, each comma-separated policy, each ``<meta>``) against
    what the snippet loads: the loader, the SDK, blob: workers, the upload/config endpoints.
    Report-only policies give warnings, enforced ones failures."""
    data = snippet.data
    sdk_url = str((data.get("sdk") or {}).get("url") or "")
    options = data.get("options") or {}
    use_worker = options.get("useWebWorker", True) is not False
    connect_urls = _connect_urls(data)
    sources: list[tuple[str, str, bool]] = []
    for value in _get(headers, "content-security-policy"):
        sources.append(("header", value, True))
    for value in _get(headers, "content-security-policy-report-only"):
        sources.append(("report-only header", value, False))
    for value in metas:
        sources.append(("<meta>", value, True))
    checks: list[Check] = []
    for where, value, enforced in sources:
        for policy in parse_policy_list(value):
            problems, notes = _policy_problems(
                policy,
                origin=origin,
                loader_url=snippet.loader_src,
                sdk_url=sdk_url,
                nonce=snippet.nonce,
                connect_urls=connect_urls,
                use_worker=use_worker,
            )
            short = policy.text if len(policy.text) <= 80 else policy.text[:77] + "..."
            if not problems and notes:
                checks.append(_warn("csp", f"{where} policy {short!r}: " + "; ".join(notes)))
                continue
            if not problems:
                checks.append(_ok("csp", f"{where} policy allows the recorder: {short}"))
                continue
            msg = f"{where} policy {short!r}: " + "; ".join(problems)
            fix = (
                "keep csp='merge' and the middleware outermost so it sees the final policy; "
                "add the nonce/'self', blob: to worker-src and the first-party origin to connect-src"
            )
            checks.append(
                _fail("csp", msg, fix) if enforced else _warn("csp", msg + " (report-only)", fix)
            )
    if not sources:
        checks.append(_ok("csp", "no Content-Security-Policy on the page"))
    return checks


def _connect_urls(data: Mapping[str, Any]) -> list[str]:
    endpoints = data.get("endpoints")
    key = str(data.get("apiKey") or "")
    if isinstance(endpoints, Mapping):
        return [str(endpoints.get("track") or ""), f"{endpoints.get('config')}/{key}"]
    zone = str((data.get("options") or {}).get("serverZone") or "US")
    try:
        return [DEFAULT_UPSTREAMS.track_url(zone, ""), DEFAULT_UPSTREAMS.config_url(zone, key)]
    except KeyError:
        return []


def asset_check(
    name: str, status: int, headers: Sequence[tuple[str, str]], *, media: str, cache: str
) -> Check:
    """A first-party endpoint's answer: 200, the media type, and a ``Cache-Control`` holding
    ``cache`` (``immutable`` or ``no-store``)."""
    ctype = ",".join(_get(headers, "content-type")).lower()
    cc = ",".join(_get(headers, "cache-control")).lower()
    if status != 200:
        return _fail(
            name,
            f"answered {status}",
            "check the prefix and that the middleware serves it (and no blocker/proxy rewrites it)",
        )
    if media not in ctype:
        return _fail(
            name,
            f"content-type {ctype!r}, expected {media}",
            "do not let another layer rewrite first-party responses",
        )
    if cache not in cc:
        return _warn(
            name,
            f"cache-control {cc!r}, expected {cache}",
            "let the middleware's caching headers through your CDN/proxy",
        )
    return _ok(name, f"200 {media}, cache-control {cc}")


def sri_check(body: bytes, integrity: str) -> Check:
    """The SDK bytes against the SRI in the data block (any of its sha256/384/512 hashes)."""
    for item in integrity.split():
        algo, _, expected = item.partition("-")
        if algo in ("sha256", "sha384", "sha512"):
            actual = base64.b64encode(hashlib.new(algo, body).digest()).decode()
            if actual == expected:
                return _ok("sdk_sri", f"the SDK matches its {algo} integrity hash")
    return _fail(
        "sdk_sri",
        "the SDK's bytes do not match the data block's integrity hash: the browser will refuse it",
        "reinstall the package / rerun `make setup`; make sure no proxy rewrites the file",
    )


def remote_config_check(status: int, headers: Sequence[tuple[str, str]], body: bytes) -> Check:
    """``/config/<key>``: 2xx JSON with ``configs.sessionReplay``."""
    if not 200 <= status < 300:
        return _fail(
            "remote_config",
            f"answered {status}",
            "check api_key/server_zone (403: the key is not a configured one) and that the upstream is reachable",
        )
    try:
        data = json.loads(body)
    except ValueError:
        return _fail(
            "remote_config", "answer is not JSON", "check what answers the config endpoint"
        )
    if not isinstance(data, dict) or "sessionReplay" not in (data.get("configs") or {}):
        return _fail(
            "remote_config",
            "no configs.sessionReplay in the answer",
            "check the API key: Amplitude answers this for a valid browser key",
        )
    return _ok("remote_config", f"{status} JSON with configs.sessionReplay")


def cookie_check(set_cookies: Sequence[str], name: str, *, https: bool) -> Check:
    """The identity cookie's attributes: Secure on https, a SameSite, and not HttpOnly (the
    loader reads the ids)."""
    for header in set_cookies:
        first, *attrs = [part.strip() for part in header.split(";")]
        if first.partition("=")[0] != name:
            continue
        flags = {a.partition("=")[0].lower(): a.partition("=")[2] for a in attrs}
        if https and "secure" not in flags:
            return _fail(
                "cookie",
                f"{name} lacks Secure on an https page",
                "keep cookie_secure='auto' and make the server see https (X-Forwarded-Proto)",
            )
        if "httponly" in flags:
            return _fail(
                "cookie",
                f"{name} is HttpOnly: the loader cannot read the ids",
                "do not rewrite the cookie's attributes",
            )
        samesite = flags.get("samesite", "")
        return _ok(
            "cookie",
            f"{name} set (SameSite={samesite or 'unset'}{', Secure' if 'secure' in flags else ''})",
        )
    return _warn(
        "cookie",
        f"no {name} cookie on this response",
        "expected for opted-out visitors, restricted routes and shared-cacheable pages",
    )


def sampling_checks(snippet: Snippet, decision: str | None, session_id: int | None) -> list[Check]:
    """The decision header, the page's rate, and what the SDK's rule gives a session id."""
    data = snippet.data
    rate = float((data.get("options") or {}).get("sampleRate", 0) or 0)
    checks = [
        _ok("decision", f"x-replay-decision: {decision}")
        if decision
        else _ok("decision", "no decision header (off outside local mode)")
    ]
    ids = data.get("ids") or {}
    sid = ids.get("sessionId")
    if data.get("record") and sid is not None and not is_session_in_sample(sid, rate):
        checks.append(
            _fail(
                "sampling",
                f"session {sid} is marked recorded but the SDK's rule at rate {rate:g} drops it",
                "report a bug: server and SDK sampling disagree",
            )
        )
    elif rate == 0:
        checks.append(
            _warn(
                "sampling",
                "the page's sampleRate is 0: the SDK records nothing",
                "raise sample_rate (or the project's remote rate)",
            )
        )
    else:
        checks.append(
            _ok(
                "sampling",
                f"sampleRate {rate:g}"
                + (f", session {sid} recorded: {data.get('record')}" if sid is not None else ""),
            )
        )
    if session_id is not None:
        inside = is_session_in_sample(session_id, rate)
        checks.append(
            _ok(
                "sampling",
                f"session {session_id} at rate {rate:g} is {'in' if inside else 'NOT in'} the sample",
            )
        )
    return checks


def amp_cookie_check(cookies: Mapping[str, str], snippet: Snippet) -> Check | None:
    """The Amplitude Analytics cookie's ids against the ones the page uses (I3)."""
    from .identity import _amplitude_cookie, amplitude_cookie_name

    key = str(snippet.data.get("apiKey") or "")
    name = amplitude_cookie_name(key) if key else ""
    if not name or name not in cookies:
        return None
    amp = _amplitude_cookie(cookies[name], int(time.time() * 1000))
    if amp is None:
        return _warn(
            "amp_cookie",
            f"{name} is not a readable Amplitude cookie",
            "check the Analytics SDK's cookie options",
        )
    ids = snippet.data.get("ids") or {}
    if not ids:
        return _ok("amp_cookie", f"{name} present; the page's ids are resolved in the browser")
    if (ids.get("deviceId"), ids.get("sessionId")) != amp:
        return _fail(
            "amp_cookie",
            f"device/session ids differ: {name} has {amp}, the page {ids.get('deviceId')}/{ids.get('sessionId')}",
            "with an api_key the AMP cookie wins; in local mode it is not read; check the identify hook",
        )
    return _ok("amp_cookie", f"{name} and the page agree on the device/session ids")


def zone_check(snippet: Snippet, expect_zone: str | None) -> Check:
    zone = str((snippet.data.get("options") or {}).get("serverZone") or "US")
    key = str(snippet.data.get("apiKey") or "")
    if key == "local":
        return _ok("key_zone", "local mode: no key or region to match")
    if expect_zone is None:
        return _warn(
            "key_zone",
            f"serverZone {zone}; the key's region cannot be checked offline",
            "pass --expect-zone US|EU to compare",
        )
    if zone.upper() != expect_zone.upper():
        return _fail(
            "key_zone",
            f"serverZone {zone}, expected {expect_zone.upper()}",
            f"set server_zone={expect_zone.upper()!r}",
        )
    return _ok("key_zone", f"serverZone {zone} as expected")


# =============================================================================================
# The HTTP layer
# =============================================================================================


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def url_checks(
    url: str,
    *,
    timeout: float = 10.0,
    session_id: int | None = None,
    expect_zone: str | None = None,
    cookies: Mapping[str, str] | None = None,
    transport: Any = None,
) -> list[Check]:
    """Fetch ``url`` and the endpoints its snippet names; every check of a live page."""
    import httpx

    origin = _origin(url)
    checks: list[Check] = []
    with httpx.Client(
        trust_env=False,
        timeout=timeout,
        follow_redirects=False,
        cookies=dict(cookies or {}),
        transport=transport,
    ) as client:
        try:
            response = client.get(url)
            for _ in range(5):  # same-origin redirects only
                location = response.headers.get("location")
                if not response.is_redirect or location is None:
                    break
                target = urljoin(str(response.url), location)
                if _origin(target) != origin:
                    checks.append(
                        _warn(
                            "page",
                            f"redirects off-origin to {target}; not followed",
                            "give doctor the final URL",
                        )
                    )
                    break
                response = client.get(target)
        except httpx.HTTPError as exc:
            return [
                _fail(
                    "page", f"GET {url} failed: {exc!r}", "is the server running and the URL right?"
                )
            ]
        headers = list(response.headers.multi_items())
        decision = response.headers.get(DECISION_HEADER)
        ctype = response.headers.get("content-type", "")
        if response.status_code >= 400 or "html" not in ctype.lower():
            checks.append(
                _warn(
                    "page",
                    f"{response.status_code} {ctype or 'no content-type'}",
                    "doctor expects an HTML page",
                )
            )
        else:
            checks.append(_ok("page", f"{response.status_code} {ctype}"))
        found, snippet, metas = snippet_checks(response.text, decision)
        checks += found
        if snippet is None:
            checks += _csp_without_snippet(headers, metas)
            return checks
        data = snippet.data
        checks += csp_checks(headers, metas, snippet, origin=origin)
        name = str((data.get("session") or {}).get("cookie") or "replay_id")
        checks.append(
            cookie_check(
                response.headers.get_list("set-cookie"), name, https=url.startswith("https:")
            )
        )
        checks += sampling_checks(snippet, decision, session_id)
        prefix = snippet.loader_src.rsplit("/", 1)[0]
        checks.append(adblock_check(urlsplit(prefix).path or prefix))
        checks.append(zone_check(snippet, expect_zone))
        amp = amp_cookie_check({**dict(client.cookies), **dict(cookies or {})}, snippet)
        if amp is not None:
            checks.append(amp)

        def fetch(path: str) -> httpx.Response | Check:
            try:
                return client.get(urljoin(url, path))
            except httpx.HTTPError as exc:
                return _fail(path, f"GET failed: {exc!r}", "is the endpoint reachable?")

        def asset(name: str, path: str, media: str, cache: str) -> httpx.Response | None:
            """GET ``path`` and check its answer as ``name``; the response when it came."""
            response = fetch(path)
            if isinstance(response, Check):
                checks.append(response)
                return None
            headers = list(response.headers.multi_items())
            checks.append(
                asset_check(name, response.status_code, headers, media=media, cache=cache)
            )
            return response

        asset("loader", snippet.loader_src, "javascript", "immutable")
        sdk = data.get("sdk") or {}
        sdk_response = asset("sdk", str(sdk.get("url") or ""), "javascript", "immutable")
        if sdk_response is not None and sdk_response.status_code == 200:
            checks.append(sri_check(sdk_response.content, str(sdk.get("integrity") or "")))
        session_url = str((data.get("session") or {}).get("url") or f"{prefix}/session")
        asset("session", session_url, "json", "no-store")
        endpoints = data.get("endpoints")
        if isinstance(endpoints, Mapping):
            config_url = f"{endpoints.get('config')}/{data.get('apiKey')}?{CONFIG_QUERY}"
            remote = fetch(config_url)
            checks.append(
                remote
                if isinstance(remote, Check)
                else remote_config_check(
                    remote.status_code, list(remote.headers.multi_items()), remote.content
                )
            )
        else:
            checks.append(
                _ok("remote_config", "direct mode: the SDK fetches its config from Amplitude")
            )
    return checks


def _csp_without_snippet(headers: Sequence[tuple[str, str]], metas: Sequence[str]) -> list[Check]:
    """Without a snippet there is nothing to match; still name the policies that block every
    external script or every connection (the usual reason a CSP skips injection)."""
    checks: list[Check] = []
    values = [*_get(headers, "content-security-policy"), *metas]
    for value in values:
        for policy in parse_policy_list(value):
            scripts = _governing(policy, ("script-src-elem", "script-src", "default-src"))
            connect = _governing(policy, ("connect-src", "default-src"))
            if scripts is not None and (not scripts or [t.lower() for t in scripts] == ["'none'"]):
                checks.append(
                    _fail(
                        "csp",
                        f"policy {policy.text!r} allows no script at all",
                        "allow 'self' or a nonce in script-src",
                    )
                )
            if connect is not None and (not connect or [t.lower() for t in connect] == ["'none'"]):
                checks.append(
                    _fail(
                        "csp",
                        f"policy {policy.text!r} allows no connection (connect-src 'none')",
                        "allow 'self' (the first-party endpoints) in connect-src",
                    )
                )
    return checks


# =============================================================================================
# The command
# =============================================================================================


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="replay-middleware", description="replay-middleware tools"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    doctor = sub.add_parser("doctor", help="check a configuration and, with a URL, a live page")
    doctor.add_argument("url", nargs="?", help="a page of the app (http or https)")
    doctor.add_argument("--app", help="module:attr (or module:factory()) of the app to check")
    doctor.add_argument("--json", action="store_true", help="print the checks as a JSON list")
    doctor.add_argument("--session-id", type=int, help="say whether this session id is sampled")
    doctor.add_argument("--timeout", type=float, default=10.0, help="seconds per request (10)")
    doctor.add_argument(
        "--expect-zone", choices=("US", "EU", "us", "eu"), help="the project's region"
    )
    doctor.add_argument(
        "--cookie",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="send this cookie (e.g. the AMP_ cookie)",
    )
    return parser


def run(args: argparse.Namespace) -> list[Check]:
    checks: list[Check] = []
    if args.app or not args.url:
        try:
            config = load_app_config(args.app) if args.app else default_config()
        except Exception as exc:
            checks.append(
                _fail(
                    "config",
                    f"cannot load the configuration: {exc}",
                    "check --app / the REPLAY_* variables",
                )
            )
        else:
            checks += config_checks(config)
    if args.url:
        cookies = dict(c.partition("=")[::2] for c in args.cookie)
        checks += url_checks(
            args.url,
            timeout=args.timeout,
            session_id=args.session_id,
            expect_zone=args.expect_zone,
            cookies=cookies,
        )
    return checks


def main(argv: Sequence[str] | None = None) -> int:
    """The console script: print the checks; exit 1 when any failed."""
    args = build_parser().parse_args(argv)
    checks = run(args)
    if args.json:
        print(json.dumps([asdict(c) for c in checks], indent=2))
    else:
        for check in checks:
            print(check.line())
    return 1 if any(c.status == "fail" for c in checks) else 0
