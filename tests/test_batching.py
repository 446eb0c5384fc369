"""The batched decode loop on the real default model: a reply is the same with or without other users, and
with an exact decode plan (`decode: {exact: true}`, HUB_EXACT_DECODE=1) exactly bare `generate`'s."""
import threading
import time

import pytest
import torch

from demo.batching import BatchedDecoder, can_batch
from demo.engine import CancelToken, complete, stream_chat

PROMPTS = ["What is the capital of France?", "List three colours.",
           "Write one sentence about the sea, then stop.", "Explain in detail how bread is made, step by step."]
N = 20


def chat(text):
    return [{"role": "user", "content": text}]


def greedy(loaded, n=N):
    return loaded.defaults.override({"greedy": True, "repetition_penalty": 1.0, "max_new_tokens": n})


def bare(loaded, text, n=N) -> list[int]:
    prompt = loaded.adapter.build_prompt(loaded.tokenizer, chat(text), None, n, loaded.extra_stop_ids)
    ids = torch.tensor([prompt.input_ids])
    out = loaded.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                max_new_tokens=n, eos_token_id=prompt.stop_token_ids,
                                pad_token_id=prompt.stop_token_ids[0], temperature=None, top_p=None, top_k=None)
    return out[0, ids.shape[1]:].tolist()


@pytest.fixture(scope="module")
def stock(smollm, registry):
    """The default model as stock transformers: a model of its own, as the hub's copy may be packed (demo.prepack)."""
    from dataclasses import replace

    from bench.run import bare_model
    from tests.conftest import DEFAULT_ID

    return replace(smollm, model=bare_model(registry.get(DEFAULT_ID))[0])


@pytest.fixture(scope="module")
def references(stock):
    """Greedy tokens of stock transformers for PROMPTS."""
    return [bare(stock, p) for p in PROMPTS]


@pytest.fixture(scope="module")
def alone(smollm):
    """Greedy tokens of the hub for PROMPTS, one request at a time (default: folded heads, paired rows)."""
    lean = smollm.decoder.lean
    assert lean.fold_heads and lean.pair_rows
    return [complete(smollm, chat(p), greedy(smollm)).output_ids for p in PROMPTS]


@pytest.fixture(scope="module")
def exact(registry):
    """The default model loaded with an exact decode plan: every step bitwise as `generate` computes it."""
    from demo.loader import load_entry
    from tests.conftest import DEFAULT_ID

    entry = registry.get(DEFAULT_ID).model_copy(update={"engine": "transformers"})
    loaded = load_entry(entry.model_copy(update={"decode": entry.decode.model_copy(update={"exact": True})}))
    assert loaded.plan.exact and not (loaded.plan.fold_heads or loaded.plan.pair_rows)
    yield loaded
    loaded.decoder.close(wait_s=5)


def run_at_once(loaded, requests, delays=None):
    """Run (messages, params, cancel) requests on threads, starting each after its delay; last chunks."""
    results = [None] * len(requests)

    def one(i, messages, params, cancel):
        time.sleep((delays or [0] * len(requests))[i])
        results[i] = complete(loaded, messages, params, cancel=cancel)

    threads = [threading.Thread(target=one, args=(i, *r)) for i, r in enumerate(requests)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return results


def test_the_default_model_is_served_by_the_batched_loop(smollm):
    assert can_batch(smollm.model) and isinstance(smollm.decoder, BatchedDecoder) and smollm.plan.loop


def test_a_model_the_loop_cannot_batch_keeps_the_generate_path():
    from demo.decoding import prepare
    from tests.test_fastdecode import make_tiny_llama

    model = make_tiny_llama()
    model.set_attn_implementation("eager")  # the loop needs SDPA to attend row by row
    plan, decoder = prepare(model, "none", None)
    assert decoder is None and not plan.loop and "cannot be batched" in plan.reason


def test_exact_the_loop_alone_gives_exactly_bare_generate(exact, references):
    for text, reference in zip(PROMPTS[:2], references):
        assert complete(exact, chat(text), greedy(exact)).output_ids == reference


def four_at_once(loaded):
    requests = [(chat(p), greedy(loaded), CancelToken()) for p in PROMPTS]
    results = run_at_once(loaded, requests, delays=[0, 0, 0.3, 0.6])  # later ones join a running batch
    assert all(r.finish_reason in ("stop", "length") for r in results)
    return [r.output_ids for r in results]


def test_four_at_once_with_staggered_joins_give_what_each_gets_alone(smollm, alone):
    assert four_at_once(smollm) == alone


def test_exact_four_at_once_give_exactly_bare_generate(exact, references):
    assert four_at_once(exact) == references


def test_rows_admitted_together_share_attention_calls_and_stay_exact(exact, monkeypatch):
    """Two prompts of one length, admitted in one round: one attention call for both rows, each row what
    it gets alone (in bf16, the exact plan's dtype: the CPU's fp32 kernel mixes rows, demo.fastdecode)."""
    import demo.fastdecode as fastdecode

    smollm = exact

    pair = ["What is the capital of France?", "What is the capital of Spain?"]
    prompts = [smollm.adapter.build_prompt(smollm.tokenizer, chat(p), None, N, smollm.extra_stop_ids) for p in pair]
    assert len(prompts[0].input_ids) == len(prompts[1].input_ids)
    decoder = smollm.decoder
    assert decoder.lean is not None and decoder.lean.group_rows
    expected = [complete(smollm, chat(p), greedy(smollm)).output_ids for p in pair]
    first_prefill, real_sdpa, rows_per_call = decoder._prefill, fastdecode._sdpa, []

    def prefill_once_both_wait(request):  # hold the first prefill until the second request is queued
        deadline = time.monotonic() + 30
        while decoder.pending.empty() and time.monotonic() < deadline:
            time.sleep(0.001)
        monkeypatch.setattr(decoder, "_prefill", first_prefill)
        first_prefill(request)

    def counting_sdpa(attention, q, keys, values, fold=False):
        rows_per_call.append(q.shape[0])
        return real_sdpa(attention, q, keys, values, fold)

    monkeypatch.setattr(decoder, "_prefill", prefill_once_both_wait)
    monkeypatch.setattr(fastdecode, "_sdpa", counting_sdpa)
    results = run_at_once(smollm, [(chat(p), greedy(smollm), CancelToken()) for p in pair])
    assert [r.output_ids for r in results] == expected
    assert 2 in rows_per_call


def test_cancelling_one_row_leaves_the_others_exact(smollm, alone):
    cancel = CancelToken()
    stream = stream_chat(smollm, chat("Count from 1 to 500."), greedy(smollm, 300), cancel)
    others = {}
    thread = threading.Thread(target=lambda: others.update(r=run_at_once(
        smollm, [(chat(p), greedy(smollm), CancelToken()) for p in PROMPTS[:2]])))
    seen = 0
    for chunk in stream:
        seen = chunk.stats.new_tokens
        if seen == 3:
            thread.start()
        if seen >= 8:
            cancel.cancel()
            break
    last = list(stream)[-1]
    thread.join(120)
    assert last.finish_reason == "cancelled" and last.stats.new_tokens <= seen + 2
    assert [r.output_ids for r in others["r"]] == alone[:2]


def test_per_request_sampling_next_to_a_greedy_row(smollm, alone):
    sampled = smollm.defaults.override({"temperature": 0.9, "top_p": 0.95, "top_k": 40, "seed": 7,
                                        "max_new_tokens": N, "repetition_penalty": 1.1})
    by_itself = complete(smollm, chat(PROMPTS[3]), sampled).output_ids
    together = run_at_once(smollm, [(chat(PROMPTS[3]), sampled, CancelToken()),
                                    (chat(PROMPTS[0]), greedy(smollm), CancelToken())])
    assert together[0].output_ids == by_itself  # the seed belongs to the request, not to the batch
    assert together[1].output_ids == alone[0]
    other_seed = complete(smollm, chat(PROMPTS[3]), sampled.override({"seed": 8})).output_ids
    assert other_seed != by_itself


def test_a_failing_step_ends_those_replies_with_an_error_and_the_loop_goes_on(smollm):
    loaded = smollm
    batcher = loaded.decoder
    real_step = batcher._step
    calls = {"n": 0}

    def failing_step():
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("simulated out of memory")
        real_step()

    batcher._step = failing_step
    try:
        last = complete(loaded, chat(PROMPTS[0]), greedy(loaded))
    finally:
        del batcher._step
    assert last.finish_reason == "error" and "simulated out of memory" in last.error
    assert complete(loaded, chat(PROMPTS[1]), greedy(loaded, 4)).finish_reason == "length"


def test_close_ends_the_loop_thread(smollm):
    complete(smollm, chat(PROMPTS[0]), greedy(smollm, 2))
    batcher = smollm.decoder
    thread = batcher._thread
    assert thread is not None and thread.is_alive()
    batcher.close(wait_s=5)
    assert not thread.is_alive()


def test_a_row_that_fails_to_sample_ends_alone_and_the_others_go_on(smollm, alone, monkeypatch):
    """Issue 18's poison: a tiny temperature turns the probabilities into NaN. stream_chat refuses it up front;
    here it goes past that check (stream_ids), once failing at its prefill and once mid-decode, beside two
    greedy rows that must still give exactly what they give alone."""
    import demo.batching as batching
    from demo.engine import stream_ids

    real_sampling = batching.sampling_of

    class Exploding:  # a processor that fails on its third step, like a kernel error in one row
        calls = 0

        def __call__(self, ids, scores):
            self.calls += 1
            if self.calls == 3:
                raise RuntimeError("row kernel failed")
            return scores

    def sampling(params, device):
        processors, generator = real_sampling(params, device)
        if params.seed == 666:
            processors.append(Exploding())
        return processors, generator

    monkeypatch.setattr(batching, "sampling_of", sampling)
    prompt = smollm.adapter.build_prompt(smollm.tokenizer, chat(PROMPTS[2]), None, N, smollm.extra_stop_ids)
    poisons = {"nan": smollm.defaults.override({"temperature": 1e-45, "greedy": False, "max_new_tokens": N}),
               "mid": greedy(smollm).override({"seed": 666})}
    outcomes = {}

    def poison(name):
        time.sleep(0.3)  # the greedy rows are decoding by now
        outcomes[name] = list(stream_ids(smollm, prompt.input_ids, poisons[name], CancelToken(),
                                         prompt.stop_token_ids))[-1]

    threads = [threading.Thread(target=poison, args=(name,)) for name in poisons]
    for t in threads:
        t.start()
    results = run_at_once(smollm, [(chat(p), greedy(smollm), CancelToken()) for p in PROMPTS[:2]])
    for t in threads:
        t.join(120)
    assert outcomes["nan"].finish_reason == "error" and "probability tensor" in outcomes["nan"].error
    assert outcomes["mid"].finish_reason == "error" and "row kernel failed" in outcomes["mid"].error
    assert outcomes["mid"].stats.new_tokens == 2
    assert [r.output_ids for r in results] == alone[:2]
    assert complete(smollm, chat(PROMPTS[0]), greedy(smollm)).output_ids == alone[0]  # the loop goes on


def test_a_job_plan_prefills_waiting_prompts_together_and_each_reply_is_its_own(tmp_path, monkeypatch):
    """`prefill_together` (a batch job's plan): prompts that wait at a step go through one left-padded call;
    each row still gets, greedy, the tokens it gets prefilled alone (float32, a tiny random Llama)."""
    from demo.batchjob import sole_user
    from demo.loader import load_entry
    from demo.registry import parse_registry
    from tests.tiny import make_tiny_chat_model

    folder = make_tiny_chat_model(tmp_path / "tiny", hidden=128)
    registry = parse_registry(f"""
models:
  - {{id: alone, name: Alone, source: {{path: "{folder}"}}, dtype: float32, engine: transformers}}
  - {{id: job, name: Job, source: {{path: "{folder}"}}, dtype: float32, engine: transformers,
      decode: {{rows: 16, prefill_together: true}}}}
""")
    alone, job = load_entry(registry.get("alone")), load_entry(registry.get("job"))
    assert job.plan.prefill_together and not alone.plan.prefill_together
    groups = []
    original = BatchedDecoder._prefill_together
    monkeypatch.setattr(BatchedDecoder, "_prefill_together",
                        lambda self, requests: (groups.append(len(requests)), original(self, requests))[1])
    texts = [p * k for k in (1, 2) for p in PROMPTS]  # eight prompts of different lengths
    expected = [complete(alone, chat(t), greedy(alone, 8)).output_ids for t in texts]
    sole_user(job, len(texts))  # as `batch` admits them
    results = run_at_once(job, [(chat(t), greedy(job, 8), CancelToken()) for t in texts])
    assert [r.output_ids for r in results] == expected
    assert sum(groups) == len(texts) and max(groups) >= 2, groups
    for loaded in (alone, job):
        loaded.decoder.close(wait_s=5)
