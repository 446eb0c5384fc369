"""Shared fixtures: the real default model, loaded once per test session."""
from __future__ import annotations

import pytest

from demo.registry import load_registry
from tests.app_server import hub_server  # noqa: F401  (the real server process, for the app tests)

DEFAULT_ID = "smollm2-135m"


@pytest.fixture(scope="session")
def registry():
    return load_registry()


@pytest.fixture(scope="session")
def smollm(registry):
    from demo.loader import load_entry

    return load_entry(registry.get(DEFAULT_ID))
