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

    # On the transformers engine, whatever `engine: auto` picks: its users look at the torch model
    # (tests/test_llamacpp.py has the llama.cpp engine on the same file).
    return load_entry(registry.get(DEFAULT_ID).model_copy(update={"engine": "transformers"}))


@pytest.fixture(scope="session", autouse=True)
def hub_cache(tmp_path_factory):
    """Natively converted checkpoints go to a per-session cache, not the user's ~/.cache/demo-hub."""
    with pytest.MonkeyPatch.context() as patch:
        cache = tmp_path_factory.mktemp("hub-cache")
        patch.setenv("HUB_CACHE", str(cache))
        yield cache


@pytest.fixture
def plain_kernel(monkeypatch):
    """Packing (demo.prepack) on any CPU: a private copy of each weight stands in for oneDNN's packed one,
    and F.linear for its kernel. Returns the input shapes the kernel was called with."""
    import torch.nn.functional as F

    import demo.prepack as prepack

    calls = []

    def linear(x, packed, bias):
        calls.append(tuple(x.shape))
        return F.linear(x, packed, bias)

    monkeypatch.setattr(prepack, "_reorder", lambda weight: weight.clone())
    monkeypatch.setattr(prepack, "_linear", linear)
    monkeypatch.setattr(prepack, "_dense", lambda packed: packed.clone())
    return calls
