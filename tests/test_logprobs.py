"""Per-token logprobs (the API's logprobs/top_logprobs) through the engine's one streaming path.

A scripted model with known scores checks the numbers and the stop-string holdback; the real default model
checks both transformers paths (the batched loop, generate()). The llama.cpp engine's check is in
tests/test_llamacpp.py, the official client's in tests/test_public_demo.py.
"""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import torch

from demo.engine import stream_chat
from demo.logprobs import FLOOR, distribution, token_entry
from demo.params import GenerationParams
from tests.fakes import EOS, scripted

HI = [{"role": "user", "content": "hi"}]
FRANCE = [{"role": "user", "content": "What is the capital of France?"}]


def entries_of(chunks) -> list:
    return [e for c in chunks for e in c.logprobs]


def known_scores(steps: int) -> torch.Tensor:
    return torch.randn(steps, EOS + 1, generator=torch.Generator().manual_seed(0)) * 3


def test_each_entry_is_the_log_softmax_of_its_steps_scores():
    text = "Hi é!"  # é is two byte tokens: its text comes with the second
    script = [*text.encode(), EOS]
    scores = known_scores(len(script))
    scores[0, EOS] = 30.0  # the most likely first token is the end: named by its token, as it decodes to nothing
    loaded = scripted(script, scores=scores)
    chunks = list(stream_chat(loaded, HI, GenerationParams(greedy=True, logprobs=3)))
    entries, expected = entries_of(chunks), torch.log_softmax(scores, dim=-1)
    assert [e.token_id for e in entries] == script[:-1]  # the end token is not part of the reply
    for n, entry in enumerate(entries):
        assert entry.logprob == pytest.approx(expected[n, script[n]].item(), abs=1e-5)
        best = expected[n].topk(3)
        assert [t.token_id for t in entry.top] == best.indices.tolist()
        assert [t.logprob for t in entry.top] == pytest.approx(best.values.tolist(), abs=1e-5)
    assert [e.token for e in entries] == ["H", "i", " ", "", "é", "!"]
    assert "".join(e.token for e in entries) == chunks[-1].text == text
    assert entries[0].top[0].token == "<eos>"
    assert all("".join(e.token for e in c.logprobs) == c.delta for c in chunks)  # each delta carries its own


def test_held_back_tokens_come_out_with_their_text_and_a_cut_stop_string_never():
    # "ST" is held back (it may start STOP), then released; later "S" is held, and "TX" cuts the reply after it
    script = [*b"a ST STX b", EOS]
    loaded = scripted(script, stop_strings=["STOP", "TX"], scores=known_scores(len(script)))
    chunks = list(stream_chat(loaded, HI, GenerationParams(greedy=True, logprobs=0)))
    assert chunks[-1].text == "a ST S" and chunks[-1].finish_reason == "stop"
    assert [e.token for e in entries_of(chunks)] == ["a", " ", "S", "T", " ", "S"]
    assert all("".join(e.token for e in c.logprobs) == c.delta for c in chunks)
    assert "".join(c.delta for c in chunks) == "a ST S"  # the "S" released by the cut is in the last delta
    assert all(e.top == () for e in entries_of(chunks))  # top_logprobs 0: the token's own logprob only


def test_nothing_is_computed_when_not_asked():
    script = [*b"ok", EOS]
    loaded = scripted(script, scores=known_scores(len(script)))
    chunks = list(stream_chat(loaded, HI, GenerationParams(greedy=True)))
    assert chunks[-1].text == "ok" and all(c.logprobs is None for c in chunks)
    assert not loaded.model.saw_processors  # no recorder in generate(): no log-softmax per step


def test_a_masked_token_is_never_an_alternative_and_no_logprob_is_infinite():
    scores = np.full(10, -np.inf, dtype=np.float32)
    scores[[2, 7]] = [1.0, 0.0]  # a grammar allows two tokens
    entry = token_entry(distribution(scores), 2, top=5)
    assert [t.token_id for t in entry.top] == [2, 7]
    assert entry.logprob == pytest.approx(-np.log1p(np.exp(-1.0)), abs=1e-6)
    assert token_entry(distribution(scores), 3, top=0).logprob == FLOOR


# -- the real default model -------------------------------------------------------------------------
def greedy(loaded, **values):
    return loaded.defaults.override({"greedy": True, "max_new_tokens": 12, "logprobs": 5, **values})


def identity(ids, scores):  # a no-op logits processor: the request then runs in generate(), not the loop
    return scores


@pytest.mark.parametrize("path", ["loop", "generate"])
def test_greedy_tokens_are_the_most_likely_and_spell_the_reply(smollm, path):
    assert smollm.decoder is not None  # the batched loop serves a request without logits processors
    processors = [identity] if path == "generate" else []
    chunks = list(stream_chat(smollm, FRANCE, greedy(smollm, repetition_penalty=1.0), logits_processors=processors))
    entries = entries_of(chunks)
    stops = set(smollm.adapter.stop_token_ids(smollm.tokenizer, smollm.extra_stop_ids))
    assert [e.token_id for e in entries] == [i for i in chunks[-1].output_ids if i not in stops]
    assert "".join(e.token for e in entries) == chunks[-1].text and "Paris" in chunks[-1].text
    for e in entries:
        assert e.top[0].token_id == e.token_id and e.top[0].logprob == e.logprob == max(t.logprob for t in e.top)
        assert e.top[0].token == e.token
    # The penalty changes the choice, not the numbers: both paths report the model's scores before it.
    penalized = entries_of(stream_chat(smollm, FRANCE, greedy(smollm, repetition_penalty=3.0, max_new_tokens=1),
                                       logits_processors=processors))
    assert penalized[0].top == entries[0].top  # the same 5 tokens and logprobs, though it may pick another


# -- a remote (openai engine) --------------------------------------------------------------------------
class _Remote(BaseHTTPRequestHandler):
    """An OpenAI-compatible server that streams a fixed reply with logprobs, and keeps the last request body."""

    tokens = ["a", " S", "TOP", " b"]
    body: dict = {}

    def do_POST(self):
        type(self).body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        for k, token in enumerate(self.tokens):
            entry = {"token": token, "logprob": -0.5 * k, "bytes": list(token.encode()),
                     "top_logprobs": [{"token": token, "logprob": -0.5 * k, "bytes": None}]}
            choice = {"index": 0, "delta": {"content": token}, "logprobs": {"content": [entry]}}
            self.wfile.write(f"data: {json.dumps({'choices': [choice]})}\n\n".encode())
        self.wfile.write(b"data: [DONE]\n\n")

    def log_message(self, *args):
        pass


def test_a_remotes_logprobs_are_asked_for_and_passed_on_cut_with_its_stop_string():
    from demo.remote import RemoteModel

    server = ThreadingHTTPServer(("127.0.0.1", 0), _Remote)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        params = GenerationParams(logprobs=1, stop=("STOP",))
        remote = RemoteModel("r", f"http://127.0.0.1:{server.server_port}/v1", "r", None, params)
        chunks = list(remote.stream_remote(HI, params))
    finally:
        server.shutdown()
    assert (_Remote.body["logprobs"], _Remote.body["top_logprobs"]) == (True, 1)
    assert chunks[-1].text == "a " and chunks[-1].finish_reason == "stop"
    entries = entries_of(chunks)  # " S" straddles the cut: released whole with " "; "TOP" and " b" never
    assert [(e.token, e.logprob, [t.token for t in e.top]) for e in entries] == [("a", 0.0, ["a"]),
                                                                                (" S", -0.5, [" S"])]
