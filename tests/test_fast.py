"""``frozen_new`` (issue 10): the per-request values it builds behave as their constructors'."""

from __future__ import annotations

import dataclasses

import pytest

from replay_middleware._fast import frozen_new
from replay_middleware.config import ReplayConfig
from replay_middleware.decision import ReplayContext, decide
from replay_middleware.identity import Identity, IdentityResult
from replay_middleware.request import RequestInfo
from replay_middleware.routes import RouteRules

FIELDS = {
    "device_id": "d",
    "session_id": 1,
    "sampled": True,
    "reason": "in_sample",
    "sample_rate": 1.0,
    "forced": False,
    "identity_source": "cookie",
    "eligible": True,
}


def test_equal_hashable_frozen_and_repr_like_the_constructor() -> None:
    fast, slow = frozen_new(ReplayContext, **FIELDS), ReplayContext(**FIELDS)
    assert fast == slow and hash(fast) == hash(slow) and repr(fast) == repr(slow)
    assert dataclasses.asdict(fast) == dataclasses.asdict(slow)
    assert dataclasses.replace(fast, reason="x") == dataclasses.replace(slow, reason="x")
    with pytest.raises(dataclasses.FrozenInstanceError):
        fast.sampled = False  # type: ignore[misc]


def test_every_field_is_set_by_the_hot_paths() -> None:
    # decide() and resolve_identity() build these with frozen_new: no field may be missing.
    request = RequestInfo.from_pairs("GET", "/", [("cookie", "a=b")])
    ctx = decide(request, Identity("d", 1, 1), ReplayConfig(sample_rate=1.0), RouteRules((), None))
    for value in (ctx, IdentityResult(Identity("d", 1, 1), False)):
        assert set(vars(value)) >= {f.name for f in dataclasses.fields(value)}


def test_request_info_fast_constructor_matches_from_pairs() -> None:
    pairs = [("Cookie", "a=1"), ("cookie", "b=2"), ("X-A", "1"), ("x-a", "2"), ("Host", "h")]
    lowered: dict[str, str] = {}
    for name, value in pairs:
        key = name.lower()
        sep = "; " if key == "cookie" else ", "
        lowered[key] = lowered[key] + sep + value if key in lowered else value
    fast = RequestInfo.from_lowered("get", "", lowered, "q=1", "https", "1.2.3.4")
    slow = RequestInfo.from_pairs(
        "get", "", pairs, query_string="q=1", scheme="https", client="1.2.3.4"
    )
    assert fast == slow and fast.cookies == slow.cookies == {"a": "1", "b": "2"}


def test_random16_blocks_are_unique_across_threads_and_fresh_after_fork() -> None:
    import os
    import threading

    from replay_middleware._fast import random16

    seen: list[bytes] = []
    lock = threading.Lock()

    def draw() -> None:
        mine = [random16() for _ in range(700)]
        with lock:
            seen.extend(mine)

    threads = [threading.Thread(target=draw) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(seen) == len(set(seen)) == 2800 and all(len(b) == 16 for b in seen)
    if not hasattr(os, "fork"):
        return
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next block must not be the parent's next block
        os.write(write, random16())
        os._exit(0)
    os.waitpid(pid, 0)
    child = os.read(read, 16)
    assert child != random16()
