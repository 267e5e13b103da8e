"""replay-middleware: Amplitude Session Replay for Python web apps, added from the server.

Importing the package imports no web framework and no network client.
"""

from __future__ import annotations

from .asgi import ReplayMiddleware
from .config import ReplayConfig
from .context import current_replay, get_replay_properties
from .decision import ReplayContext
from .request import RequestInfo
from .sampling import is_session_in_sample
from .wsgi import ReplayWSGIMiddleware

__all__ = [
    "ReplayConfig",
    "ReplayContext",
    "ReplayMiddleware",
    "ReplayWSGIMiddleware",
    "RequestInfo",
    "current_replay",
    "get_replay_properties",
    "is_session_in_sample",
]

__version__ = "0.1.0.dev0"
