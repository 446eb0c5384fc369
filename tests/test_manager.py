"""Model manager: load once, share concurrent loads, LRU eviction under a budget that frees memory."""
import gc
import threading
import time
import weakref

import psutil
import pytest
import torch

from demo.backends.transformers import on_transformers
from demo.loaded import LoadedModel
from demo.manager import ERROR, LOADING, NOT_LOADED, READY, UNAVAILABLE, ModelLoadError, ModelManager
from demo.params import GenerationParams
from demo.registry import parse_registry
from adapters.generic import TemplateAdapter

MB = 2**20


def registry_of(*ids, path="/tmp"):
    models = "".join(f"  - id: {i}\n    name: {i}\n    source: {{path: {path}}}\n" for i in ids)
    return parse_registry("models:\n" + models)


def fake_loader(size_mb=64, delay=0.0, calls=None, fail=()):
    def load(entry):
        if calls is not None:
            calls.append(entry.id)
        time.sleep(delay)
        if entry.id in fail:
            raise OSError(f"{entry.id}/model.safetensors is corrupt")
        model = torch.nn.Linear(1024, size_mb * MB // 4096, bias=False)
        return on_transformers(LoadedModel(entry.id, model, None, TemplateAdapter(), GenerationParams(), None))
    return load


def test_loads_on_first_use_and_caches():
    calls = []
    manager = ModelManager(registry_of("a"), 10**9, fake_loader(8, calls=calls))
    assert manager.state("a").status == NOT_LOADED
    first = manager.get("a")
    assert manager.get("a") is first and calls == ["a"]
    assert manager.state("a").status == READY and manager.state("a").memory_bytes == 8 * MB


def test_concurrent_requests_wait_for_the_same_load():
    calls = []
    manager = ModelManager(registry_of("a"), 10**9, fake_loader(8, delay=0.5, calls=calls))
    results = []
    threads = [threading.Thread(target=lambda: results.append(manager.get("a"))) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.1)
    assert manager.state("a").status == LOADING
    for t in threads:
        t.join()
    assert calls == ["a"] and len({id(r) for r in results}) == 1


def test_lru_eviction_keeps_the_budget_and_frees_the_memory():
    manager = ModelManager(registry_of("a", "b", "c"), 450 * MB, fake_loader(200))
    process = psutil.Process()
    a = weakref.ref(manager.get("a").model)
    manager.get("b")
    manager.get("a")  # a is now the most recently used
    gc.collect()
    before = process.memory_info().rss
    manager.get("c")  # 600 MB > 450: evicts b, the least recently used
    assert manager.loaded_ids() == ["a", "c"]
    assert manager.state("b").status == NOT_LOADED
    assert manager.used_bytes() <= 450 * MB
    after = process.memory_info().rss
    # c's 200 MB came in and b's 200 MB went out: RSS did not grow by a model's size
    assert after - before < 100 * MB
    assert a() is not None
    manager.unload("a")
    gc.collect()
    assert a() is None
    assert process.memory_info().rss < after - 150 * MB


def test_failing_load_shows_its_error_and_leaves_others_working():
    manager = ModelManager(registry_of("good", "bad"), 10**9, fake_loader(8, fail={"bad"}))
    with pytest.raises(ModelLoadError, match="bad: OSError: bad/model.safetensors is corrupt"):
        manager.get("bad")
    state = manager.state("bad")
    assert state.status == ERROR and "corrupt" in state.detail
    assert manager.get("good").id == "good"
    assert manager.state("good").status == READY


def test_missing_weights_are_listed_unavailable_with_the_reason():
    manager = ModelManager(registry_of("gone", path="/nonexistent/folder"), 10**9, fake_loader())
    state = manager.state("gone")
    assert state.status == UNAVAILABLE and state.detail == "folder /nonexistent/folder does not exist"


def test_real_models_failure_isolation_and_eviction_that_frees_memory(tmp_path, registry):
    """On the real default model: a broken folder fails alone; a tiny budget evicts and frees memory."""
    from tests.tiny import make_tiny_chat_model

    make_tiny_chat_model(tmp_path / "tiny")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{not json")
    smollm_source = registry.get("smollm2-135m").source
    text = ("models:\n"
            f"  - {{id: smollm, name: SmolLM2, dtype: bfloat16, engine: transformers, source: {{package: {smollm_source.package}, "
            f"file: {smollm_source.file}}}}}\n"
            f"  - {{id: tiny, name: Tiny, source: {{path: {tmp_path / 'tiny'}}}}}\n"
            f"  - {{id: broken, name: Broken, source: {{path: {tmp_path / 'broken'}}}}}\n")
    manager = ModelManager(parse_registry(text), memory_budget_bytes=2**30)
    with pytest.raises(ModelLoadError, match="broken"):
        manager.get("broken")
    assert manager.state("broken").status == ERROR

    from demo.engine import complete

    smollm = manager.get("smollm")
    reply = complete(smollm, [{"role": "user", "content": "What is the capital of France?"}],
                     smollm.defaults.override({"greedy": True, "max_new_tokens": 16}))
    assert "Paris" in reply.text
    model_ref = weakref.ref(smollm.model)
    size = smollm.memory_bytes
    manager.budget = size + MB  # too small for both
    del smollm, reply
    gc.collect()
    rss_loaded = psutil.Process().memory_info().rss
    manager.get("tiny")  # smollm + tiny > budget: smollm, the least recently used, goes
    assert manager.loaded_ids() == ["tiny"]
    assert model_ref() is None
    assert psutil.Process().memory_info().rss < rss_loaded - size // 2
