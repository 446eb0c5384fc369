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


@pytest.fixture(scope="session", autouse=True)
def hub_cache(tmp_path_factory):
    """Natively converted checkpoints go to a per-session cache, not the user's ~/.cache/demo-hub."""
    with pytest.MonkeyPatch.context() as patch:
        cache = tmp_path_factory.mktemp("hub-cache")
        patch.setenv("HUB_CACHE", str(cache))
        yield cache
