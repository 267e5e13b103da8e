from __future__ import annotations

import subprocess
import sys

import replay_middleware


def test_all_matches_exports() -> None:
    exported = {name for name in dir(replay_middleware) if not name.startswith("_")}
    assert set(replay_middleware.__all__) <= exported
    assert {
        "ReplayConfig",
        "ReplayMiddleware",
        "ReplayContext",
        "current_replay",
        "get_replay_properties",
        "is_session_in_sample",
    } <= set(replay_middleware.__all__)


def test_import_pulls_in_no_framework_or_network_client() -> None:
    code = (
        "import sys, replay_middleware\n"
        "bad = [m for m in ('starlette', 'fastapi', 'django', 'flask', 'werkzeug', 'httpx', 'httpcore',"
        " 'amplitude', 'segment')"
        " if m in sys.modules]\n"
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
