"""The Session Replay SDK bundle that the middleware serves first-party (SPEC P8).

The middleware serves ``@amplitude/session-replay-browser``'s IIFE bundle at
``{prefix}/sdk/<version>.js`` with immutable caching and an SRI hash. Use :class:`SdkProvider`
(WSGI) or :class:`AsyncSdkProvider` (ASGI) to get the verified bytes. They are taken from, in
order:

1. the vendored file ``static/vendor/session-replay-browser-<version>-min.js``, which
   ``scripts/setup.sh`` copies from the npm package after checking the tarball's npm integrity
   hash (the wheel ships it as ``replay_middleware/static/vendor/...``);
2. the provider's optional disk cache directory;
3. Amplitude's CDN (``CDN_BASE``), fetched once, then kept in memory and in the disk cache.

Whatever the source, the bytes are served only if their sha256 matches the pin for that version
in :data:`SDK_PINS`; only pinned versions are served at all. The SRI value is the one pinned
(PROTOCOL §6: computed over the decoded JS from the npm file).

Importing this module imports no network client: the httpx client is passed in, or created
only when a provider needs to fetch.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import threading
import time
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    import httpx

__all__ = [
    "CDN_BASE",
    "RETRY_INTERVAL",
    "SDK_PINS",
    "SDK_VERSION",
    "AsyncSdkProvider",
    "SdkBundle",
    "SdkPin",
    "SdkProvider",
    "SdkUnavailable",
    "cdn_url",
    "fetch_cdn",
    "fetch_cdn_async",
    "load_local",
    "pin_for",
    "static_dir",
    "vendor_path",
    "verify_bundle",
]

logger = logging.getLogger("replay_middleware.sdk")

#: The SDK version the middleware loads by default: the one PROTOCOL.md was established on.
SDK_VERSION: Final = "1.51.6"

#: Amplitude's documented CDN folder (PROTOCOL §6); the file is ``<name>-<version>-min.js.gz``.
CDN_BASE: Final = "https://cdn.amplitude.com/libs"

#: Seconds before a failed fetch may be tried again: one upstream attempt per minute at most,
#: however many requests ask for the SDK meanwhile.
RETRY_INTERVAL: Final = 60.0

# Far above the real sizes (472 630 B decoded, 141 539 B gzipped for 1.51.6); caps memory if
# the CDN, or whatever answers in its place, sends something unexpected.
_MAX_BUNDLE_BYTES: Final = 16 * 1024 * 1024
_GZIP_MAGIC: Final = b"\x1f\x8b"
_DEFAULT_TIMEOUT: Final = 10.0


@dataclass(frozen=True)
class SdkPin:
    """What a served bundle of one version must hash to."""

    sha256: str  # hex, of the decoded JS
    sri: str  # the ``integrity`` attribute value, over the same bytes


#: The versions we have tested and their hashes. Adding one means: vendor it with
#: scripts/setup.sh (its npm integrity pinned there) and run the browser tests against it.
SDK_PINS: Final[Mapping[str, SdkPin]] = MappingProxyType(
    {
        "1.51.6": SdkPin(
            sha256="a006604a150e206796151c57e09bbb7f93dd2bddc99e3b07a24f69bb31373171",
            sri="sha384-l/p6t3pX6w6y1J1fIoQx0i0rQvHkcCZKgRXZXJZDfF5md24VYoNzsA8PyIXvX2SU",
        ),
    }
)


class SdkUnavailable(Exception):
    """The pinned SDK bundle could not be obtained, or what was obtained failed verification."""


@dataclass(frozen=True)
class SdkBundle:
    """A verified SDK bundle, ready to serve.

    ``etag`` is a strong entity tag (quotes included) derived from the sha256 of ``body``.
    """

    version: str
    body: bytes = field(repr=False)
    sri: str
    etag: str


def pin_for(version: str) -> SdkPin:
    """The pin of ``version``; ``ValueError`` naming the pinned versions if there is none."""
    try:
        return SDK_PINS[version]
    except KeyError:
        known = ", ".join(sorted(SDK_PINS))
        raise ValueError(
            f"unknown Session Replay SDK version {version!r}; pinned versions: {known}"
        ) from None


def static_dir() -> Path:
    """The ``static/`` folder: inside the package when installed from the wheel (pyproject
    force-includes ``static`` as ``replay_middleware/static``), else the checkout's ``static/``.
    """
    packaged = Path(__file__).parent / "static"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parent.parent / "static"


def _file_name(version: str) -> str:
    return f"session-replay-browser-{version}-min.js"


def vendor_path(version: str = SDK_VERSION) -> Path:
    """Where ``scripts/setup.sh`` puts the bundle of ``version`` (which may not exist)."""
    pin_for(version)
    return static_dir() / "vendor" / _file_name(version)


def cdn_url(version: str = SDK_VERSION, base_url: str = CDN_BASE) -> str:
    """The CDN object of ``version``: ``<base_url>/session-replay-browser-<version>-min.js.gz``."""
    pin_for(version)
    return f"{base_url.rstrip('/')}/{_file_name(version)}.gz"


def verify_bundle(version: str, body: bytes) -> SdkBundle:
    """Wrap ``body`` as the bundle of ``version`` if it matches the pinned sha256.

    Raises ``SdkUnavailable`` on a mismatch, ``ValueError`` for an unpinned version.
    """
    pin = pin_for(version)
    digest = hashlib.sha256(body).hexdigest()
    if digest != pin.sha256:
        raise SdkUnavailable(
            f"SDK {version}: sha256 {digest} does not match the pinned {pin.sha256}"
        )
    return SdkBundle(version=version, body=body, sri=pin.sri, etag=f'"{digest}"')


def load_local(version: str = SDK_VERSION, *, path: Path | None = None) -> SdkBundle | None:
    """Read and verify the vendored bundle (or the file at ``path``).

    Returns ``None`` if the file is missing (logged at debug level), unreadable or does not
    match the pin (logged as an error on ``replay_middleware.sdk``: a tampered or corrupted
    file is never served). ``ValueError`` for an unpinned version.
    """
    file = vendor_path(version) if path is None else path
    try:
        body = file.read_bytes()
    except FileNotFoundError:
        logger.debug("no SDK file at %s", file)
        return None
    except OSError as exc:
        logger.error("cannot read the SDK file %s: %s", file, exc)
        return None
    try:
        return verify_bundle(version, body)
    except SdkUnavailable as exc:
        logger.error("ignoring the SDK file %s: %s", file, exc)
        return None


# --- the CDN: pure parts shared by the sync and async fetches ------------------------------


def _check_status(url: str, response: httpx.Response) -> None:
    if response.status_code == 200:
        return
    detail = ""
    if response.is_redirect:
        # Redirects are never followed (SPEC P1): the pin would catch a wrong body anyway,
        # but where our traffic goes must not be up to the answer.
        detail = f" (redirect to {response.headers.get('location', '?')!r}, not followed)"
    raise SdkUnavailable(f"GET {url} answered {response.status_code}{detail}")


class _BodyReader:
    """Collects a streamed body, refusing more than ``_MAX_BUNDLE_BYTES``."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._chunks: list[bytes] = []
        self._size = 0

    def add(self, chunk: bytes) -> None:
        self._size += len(chunk)
        if self._size > _MAX_BUNDLE_BYTES:
            raise SdkUnavailable(f"GET {self._url}: body larger than {_MAX_BUNDLE_BYTES} bytes")
        self._chunks.append(chunk)

    def bundle(self, version: str) -> SdkBundle:
        body = b"".join(self._chunks)
        # The CDN object is a .js.gz: served with Content-Encoding: gzip, httpx has decoded it
        # already; served as a plain gzip file, the magic number is still there.
        if body.startswith(_GZIP_MAGIC):
            body = _gunzip(self._url, body)
        try:
            return verify_bundle(version, body)
        except SdkUnavailable as exc:
            raise SdkUnavailable(f"GET {self._url}: {exc}") from None


def _gunzip(url: str, data: bytes) -> bytes:
    decompressor = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)  # gzip container only
    try:
        out = decompressor.decompress(data, _MAX_BUNDLE_BYTES)
    except zlib.error as exc:
        raise SdkUnavailable(f"GET {url}: invalid gzip body ({exc})") from None
    if decompressor.unconsumed_tail:
        raise SdkUnavailable(f"GET {url}: gzip body inflates past {_MAX_BUNDLE_BYTES} bytes")
    if not decompressor.eof:
        raise SdkUnavailable(f"GET {url}: truncated gzip body")
    return out


def fetch_cdn(version: str, client: httpx.Client, *, base_url: str = CDN_BASE) -> SdkBundle:
    """Download and verify the bundle of ``version`` from ``base_url`` with ``client``.

    Redirects are not followed. Raises ``SdkUnavailable`` on a network error, a status other
    than 200, an oversized or invalid body, or a hash mismatch; ``ValueError`` for an unpinned
    version.
    """
    import httpx

    url = cdn_url(version, base_url)
    reader = _BodyReader(url)
    try:
        with client.stream("GET", url, follow_redirects=False) as response:
            _check_status(url, response)
            for chunk in response.iter_bytes():
                reader.add(chunk)
    except httpx.HTTPError as exc:
        raise SdkUnavailable(f"GET {url} failed: {exc!r}") from exc
    return reader.bundle(version)


async def fetch_cdn_async(
    version: str, client: httpx.AsyncClient, *, base_url: str = CDN_BASE
) -> SdkBundle:
    """The async twin of :func:`fetch_cdn`."""
    import httpx

    url = cdn_url(version, base_url)
    reader = _BodyReader(url)
    try:
        async with client.stream("GET", url, follow_redirects=False) as response:
            _check_status(url, response)
            async for chunk in response.aiter_bytes():
                reader.add(chunk)
    except httpx.HTTPError as exc:
        raise SdkUnavailable(f"GET {url} failed: {exc!r}") from exc
    return reader.bundle(version)


# --- providers ---------------------------------------------------------------------------


class _ProviderBase:
    """State and disk handling shared by the sync and async providers."""

    def __init__(
        self,
        version: str,
        *,
        cache_dir: Path | str | None,
        local_path: Path | None,
        base_url: str,
        timeout: float,
        retry_interval: float,
        clock: Callable[[], float],
    ) -> None:
        pin_for(version)  # ValueError now, not on the first request
        self.version = version
        self._local_path = vendor_path(version) if local_path is None else local_path
        self._cache_path = None if cache_dir is None else Path(cache_dir) / _file_name(version)
        self._base_url = base_url
        self._timeout = timeout
        self._retry_interval = retry_interval
        self._clock = clock
        self._bundle: SdkBundle | None = None
        # (monotonic time, error) of the last failure; guarded by the subclass's lock.
        self._failure: tuple[float, SdkUnavailable] | None = None

    def _raise_if_backing_off(self) -> None:
        if self._failure is None:
            return
        failed_at, error = self._failure
        wait = self._retry_interval - (self._clock() - failed_at)
        if wait > 0:
            raise SdkUnavailable(f"{error} (next attempt in {wait:.0f} s)")

    def _record_failure(self, error: SdkUnavailable) -> None:
        self._failure = (self._clock(), error)
        logger.error(
            "Session Replay SDK %s unavailable: %s; retrying in %.0f s at the earliest",
            self.version,
            error,
            self._retry_interval,
        )

    def _load_from_disk(self) -> SdkBundle | None:
        bundle = load_local(self.version, path=self._local_path)
        if bundle is None and self._cache_path is not None:
            bundle = load_local(self.version, path=self._cache_path)
        return bundle

    def _save_to_cache(self, bundle: SdkBundle) -> None:
        if self._cache_path is None:
            return
        # Write then rename, so that a concurrent reader (another process) never sees half a
        # file; a failure only costs the next process a fetch.
        try:
            self._cache_path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self._cache_path.parent, prefix=".sdk-")
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(bundle.body)
                os.replace(tmp, self._cache_path)
            except BaseException:
                os.unlink(tmp)
                raise
        except OSError as exc:
            logger.warning("cannot cache the SDK in %s: %s", self._cache_path, exc)


class SdkProvider(_ProviderBase):
    """Thread-safe source of the verified SDK bundle for sync (WSGI) code.

    ``get()`` returns the vendored file when it is there; otherwise it downloads the bundle from
    the CDN once (concurrent callers wait for that one request) and keeps it in memory and, if
    ``cache_dir`` is given, on disk for the next process. A failure raises ``SdkUnavailable``
    and is not retried for ``retry_interval`` seconds: callers meanwhile get ``SdkUnavailable``
    at once.

    ``client`` (an ``httpx.Client``, not closed by the provider) or ``transport`` (for the
    short-lived client the provider otherwise creates) inject the network. ``local_path``
    overrides the vendored file's path; ``clock`` is a monotonic clock, for tests.
    """

    def __init__(
        self,
        version: str = SDK_VERSION,
        *,
        cache_dir: Path | str | None = None,
        client: httpx.Client | None = None,
        transport: httpx.BaseTransport | None = None,
        base_url: str = CDN_BASE,
        local_path: Path | None = None,
        timeout: float = _DEFAULT_TIMEOUT,
        retry_interval: float = RETRY_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(
            version,
            cache_dir=cache_dir,
            local_path=local_path,
            base_url=base_url,
            timeout=timeout,
            retry_interval=retry_interval,
            clock=clock,
        )
        self._client = client
        self._transport = transport
        self._lock = threading.Lock()

    def get(self) -> SdkBundle:
        """The verified bundle; ``SdkUnavailable`` if no source has it."""
        bundle = self._bundle
        if bundle is not None:
            return bundle
        with self._lock:
            if self._bundle is None:
                self._raise_if_backing_off()
                try:
                    bundle = self._load_from_disk()
                    if bundle is None:
                        bundle = self._fetch()
                        self._save_to_cache(bundle)
                except SdkUnavailable as exc:
                    self._record_failure(exc)
                    raise
                self._bundle = bundle
            return self._bundle

    def _fetch(self) -> SdkBundle:
        if self._client is not None:
            return fetch_cdn(self.version, self._client, base_url=self._base_url)
        import httpx

        # A client for this one request (made at most once a minute): nothing to close later.
        with httpx.Client(
            transport=self._transport, timeout=self._timeout, trust_env=False
        ) as client:
            return fetch_cdn(self.version, client, base_url=self._base_url)


class AsyncSdkProvider(_ProviderBase):
    """The async twin of :class:`SdkProvider`, for ASGI code (any anyio backend).

    ``await get()`` behaves as ``SdkProvider.get()``; disk reads and writes run in a worker
    thread. ``client`` is an ``httpx.AsyncClient``, ``transport`` an
    ``httpx.AsyncBaseTransport``.
    """

    def __init__(
        self,
        version: str = SDK_VERSION,
        *,
        cache_dir: Path | str | None = None,
        client: httpx.AsyncClient | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        base_url: str = CDN_BASE,
        local_path: Path | None = None,
        timeout: float = _DEFAULT_TIMEOUT,
        retry_interval: float = RETRY_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        import anyio

        super().__init__(
            version,
            cache_dir=cache_dir,
            local_path=local_path,
            base_url=base_url,
            timeout=timeout,
            retry_interval=retry_interval,
            clock=clock,
        )
        self._client = client
        self._transport = transport
        self._lock = anyio.Lock()

    async def get(self) -> SdkBundle:
        """The verified bundle; ``SdkUnavailable`` if no source has it."""
        import anyio.to_thread

        bundle = self._bundle
        if bundle is not None:
            return bundle
        async with self._lock:
            if self._bundle is None:
                self._raise_if_backing_off()
                try:
                    bundle = await anyio.to_thread.run_sync(self._load_from_disk)
                    if bundle is None:
                        bundle = await self._fetch()
                        await anyio.to_thread.run_sync(self._save_to_cache, bundle)
                except SdkUnavailable as exc:
                    self._record_failure(exc)
                    raise
                self._bundle = bundle
            return self._bundle

    async def _fetch(self) -> SdkBundle:
        if self._client is not None:
            return await fetch_cdn_async(self.version, self._client, base_url=self._base_url)
        import httpx

        async with httpx.AsyncClient(
            transport=self._transport, timeout=self._timeout, trust_env=False
        ) as client:
            return await fetch_cdn_async(self.version, client, base_url=self._base_url)
