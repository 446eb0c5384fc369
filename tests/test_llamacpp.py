"""The llama.cpp engine on the real default model (the embedded SmolLM2-135M Q4_1 GGUF)."""
from __future__ import annotations

import json
import threading
import time

import pytest

from demo.backends import llama_cpp_status
from demo.engine import CancelToken, complete, stream_chat, stream_ids
from tests.conftest import DEFAULT_ID

pytestmark = pytest.mark.skipif(not llama_cpp_status()[0], reason=llama_cpp_status()[1])

FRANCE = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def llama(registry):
    from demo.manager import ModelManager
    from demo.registry import Registry

    entry = registry.get(DEFAULT_ID).model_copy(update={"engine": "llama.cpp"})
    manager = ModelManager(Registry([entry]))
    loaded = manager.get(entry.id)
    yield loaded
    manager.unload(entry.id)


@pytest.fixture(scope="module")
def bare(llama):
    from llama_cpp import Llama

    backend = llama.backend
    return Llama(model_path=str(backend.model.path), n_ctx=llama.context_length,
                 n_threads=backend.model.settings.n_threads, flash_attn=True, type_k=8, type_v=8,
                 verbose=False)  # the engine's attention and q8_0 cache (GGML_TYPE_Q8_0); not the library's defaults


def greedy(loaded, n):
    return loaded.defaults.override({"greedy": True, "repetition_penalty": 1.0, "max_new_tokens": n})


def bare_greedy(bare, ids, n, stop_ids):
    out = []
    for token in bare.generate(ids, top_k=1, temp=0.0, repeat_penalty=1.0, reset=True):
        out.append(int(token))
        if token in stop_ids or len(out) >= n:
            return out
    return out


def test_it_runs_on_llama_cpp_with_the_weights_quantized(llama):
    assert llama.engine == "llama.cpp" and llama.model is None
    assert "quantized in memory" in llama.decode_plan and llama.quant.label.startswith("GGUF (Q4_1 file")
    file_bytes = llama.backend.model.path.stat().st_size
    assert llama.backend.model.model_bytes() <= file_bytes  # 4.5 bits a weight, as on disk


def test_prompt_ids_are_the_adapters_and_those_of_prompt_json(llama, tmp_path, capsys):
    from demo.cli import main

    (tmp_path / "m.json").write_text(json.dumps(FRANCE))
    assert main(["prompt", DEFAULT_ID, "--messages", str(tmp_path / "m.json"), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    last = complete(llama, FRANCE, greedy(llama, 8))
    assert last.prompt_ids == shown["input_ids"]
    assert last.prompt_ids == llama.adapter.build_prompt(llama.tokenizer, FRANCE).input_ids


def test_greedy_equals_bare_llama_cpp_python_on_the_same_ids(llama, bare):
    prompt = llama.adapter.build_prompt(llama.tokenizer, FRANCE)
    last = complete(llama, FRANCE, greedy(llama, 24))
    assert last.output_ids == bare_greedy(bare, prompt.input_ids, 24, prompt.stop_token_ids)
    assert last.text and last.finish_reason in ("stop", "length")


def test_stop_string_is_held_back_and_ends_it(llama):
    reference = complete(llama, FRANCE, greedy(llama, 24)).text
    stop = reference.split()[2]  # a word in the middle of what it says alone
    ids = llama.adapter.build_prompt(llama.tokenizer, FRANCE).input_ids
    chunks = list(stream_ids(llama, ids, greedy(llama, 24), stop_strings=[stop]))
    shown = "".join(c.delta for c in chunks)
    assert chunks[-1].finish_reason == "stop"
    assert shown == reference[:reference.index(stop)]
    assert all(c.text == shown[:len(c.text)] for c in chunks)  # no part of the stop string ever shown


def test_stop_ends_it_within_a_token_and_frees_its_sequence(llama):
    cancel = CancelToken()
    stream = stream_chat(llama, [{"role": "user", "content": "Count from 1 to 500."}], greedy(llama, 400), cancel)
    seen = 0
    for chunk in stream:
        seen = len(chunk.output_ids)
        if seen >= 5:
            cancel.cancel()
        if chunk.finish_reason:
            break
    assert chunk.finish_reason == "cancelled" and seen <= 7
    assert wait_until(lambda: not llama.backend.loop.active)


def test_a_client_that_goes_away_ends_its_generation(llama):
    stream = stream_chat(llama, [{"role": "user", "content": "Write a long story about a cat."}], greedy(llama, 400))
    for _, _chunk in zip(range(5), stream):
        pass
    stream.close()  # what the API's handler does when its client disconnects
    assert wait_until(lambda: not llama.backend.loop.active)


def test_four_concurrent_requests_each_give_what_they_give_alone(llama):
    questions = ["What is the capital of France?", "Name three colours.", "What is 2 plus 2?",
                 "Say hello in Spanish."]
    asks = [[{"role": "user", "content": q}] for q in questions]
    alone = [complete(llama, m, greedy(llama, 24)).output_ids for m in asks]
    together = [None] * 4
    start = threading.Barrier(4)

    def one(k):
        start.wait()
        together[k] = complete(llama, asks[k], greedy(llama, 24)).output_ids

    threads = [threading.Thread(target=one, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert together == alone


def test_seeded_sampling_repeats_and_differs_from_greedy(llama):
    sampled = llama.defaults.override({"temperature": 1.0, "top_p": 0.95, "top_k": 40, "seed": 3,
                                       "max_new_tokens": 16})
    first = complete(llama, FRANCE, sampled).output_ids
    assert complete(llama, FRANCE, sampled).output_ids == first
    assert complete(llama, FRANCE, sampled.override({"seed": 4})).output_ids != first


def test_generate_cli_on_both_engines(capsys):
    from demo.cli import main

    ids = "1,9690,198,3057,314,253,5356,30,2,198,1,4093,198"
    for engine in ("llama.cpp", "transformers"):
        assert main(["generate", DEFAULT_ID, "--engine", engine, "--input-ids", ids, "--greedy",
                     "--max-new-tokens", "4", "--json"]) == 0
        result = json.loads(capsys.readouterr().out)
        assert result["prompt_ids"] == [int(i) for i in ids.split(",")] and len(result["output_ids"]) == 4


def wait_until(check, timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return check()


def test_bench_llama_part_at_a_tiny_size(llama):
    from bench.llamacpp import TARGETS, llama_bench, ratios
    from bench.report import finite_numbers
    from demo.registry import load_registry

    entry = load_registry().get(DEFAULT_ID)
    report = llama_bench(entry, prompt_tokens=24, new_tokens=6, clients=(1, 2), repeats=1, log=lambda _: None)
    assert finite_numbers(report) == [] and report["engine"] == "llama.cpp"
    assert report["greedy_equal_to_bare"] and all(c["each_equal_to_one_client"] for c in report["concurrency"])
    assert {"llama_engine_vs_bare_decode", "llama_cold_load_s", "llama_2_clients_vs_1"} <= set(ratios(report))
    assert {key for key, *_ in TARGETS} >= {"llama_engine_vs_bare_decode", "llama_rss_growth_vs_file"}


def test_logprobs_greedy_tokens_are_the_most_likely_and_spell_the_reply(llama):
    chunks = list(stream_chat(llama, FRANCE, greedy(llama, 12).override({"logprobs": 3})))
    entries = [e for c in chunks for e in c.logprobs]
    stops = set(llama.adapter.stop_token_ids(llama.tokenizer, llama.extra_stop_ids))
    assert [e.token_id for e in entries] == [i for i in chunks[-1].output_ids if i not in stops]
    assert "".join(e.token for e in entries) == chunks[-1].text  # here "L'Étoile, la Marseillaise,"
    assert all(e.top[0].token_id == e.token_id and e.top[0].logprob == e.logprob >= e.top[1].logprob for e in entries)
