"""Fixtures for tests/django6 (Django 6 only; imports Django lazily, so the main run, which
visits this folder but collects nothing from it, configures nothing here)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest


@pytest.fixture(autouse=True)
def replay_settings(tmp_path: Path) -> Iterator[None]:
    """Every test gets its own local store."""
    from django.test import override_settings

    from tests.django6 import settings

    options = {**settings.base()["REPLAY_MIDDLEWARE"], "local_store_dir": str(tmp_path / "s")}
    with override_settings(REPLAY_MIDDLEWARE=options):
        yield


class Driver:
    """One Django test client, sync (``Client``) or async (``AsyncClient``), blocking."""

    def __init__(self, mode: str) -> None:
        from django.test import AsyncClient, Client

        self.mode = mode
        self.loop = asyncio.new_event_loop() if mode == "async" else None
        self.client: Any = AsyncClient() if mode == "async" else Client()

    def get(self, url: str, **kwargs: Any) -> Any:
        if self.loop is None:
            return self.client.get(url, **kwargs)
        return self.loop.run_until_complete(self.client.get(url, **kwargs))

    def close(self) -> None:
        if self.loop is not None:
            self.loop.close()


@pytest.fixture(params=["sync", "async"])
def driver(request: pytest.FixtureRequest) -> Iterator[Driver]:
    d = Driver(request.param)
    yield d
    d.close()
