"""The first-party upload proxy's I/O, one import away (SPEC P4, P5, P7): a thin re-export.

The code lives in three modules split along their seams (issue 10):

- :mod:`replay_middleware.upstream_core`: what both twins share, without network I/O (request
  admission, header relay, the outcome log, the body gate and spool, the reply types);
- :mod:`replay_middleware.upstream_async`: :class:`AsyncUploadProxy`, for ASGI (and Django
  under ASGI), with its own pooled HTTP/1.1 connections to Amplitude;
- :mod:`replay_middleware.upstream_sync`: :class:`UploadProxy`, the blocking twin for WSGI and
  Django.

Adapters import from here::

    from replay_middleware.upstream import AsyncUploadProxy, ResponseAborted

Importing this module does not import httpx; constructing a proxy does.
"""

from __future__ import annotations

from .upstream_async import AsyncUploadProxy
from .upstream_core import (
    AsyncProxyReply,
    Message,
    NullCookieJar,
    ProxyReply,
    Receive,
    ResponseAborted,
    Send,
)
from .upstream_sync import UploadProxy

__all__ = [
    "AsyncProxyReply",
    "AsyncUploadProxy",
    "Message",
    "NullCookieJar",
    "ProxyReply",
    "Receive",
    "ResponseAborted",
    "Send",
    "UploadProxy",
]
