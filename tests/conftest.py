"""Shared pytest fixtures."""

from __future__ import annotations

import pytest


@pytest.fixture
def anyio_backend() -> str:
    """Run `@pytest.mark.anyio` tests on asyncio (the plugin ships with anyio)."""
    return "asyncio"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Run the browser tests last.

    Playwright's sync API keeps an asyncio loop running in the main thread for as long as the
    session-scoped browser lives; async tests scheduled after it could not start their own loop.
    """
    items.sort(key=lambda item: item.get_closest_marker("e2e") is not None)


# The fake Amplitude server (tests/fake_amplitude.py), for the proxy tests and benchmarks.
from .fake_amplitude import fake_amplitude  # noqa: E402, F401
