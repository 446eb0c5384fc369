"""Fakes for engine tests where the model is not the point: a byte tokenizer and a scripted model."""
from __future__ import annotations

import threading
import time

import torch

from adapters.base import ChatAdapter
from demo.backends.transformers import on_transformers
from demo.loaded import LoadedModel
from demo.params import GenerationParams

EOS = 256


class ByteTokenizer:
    """Token i < 256 is byte i; 256 is <eos>. Multi-byte characters span several tokens."""

    eos_token, eos_token_id, pad_token_id, unk_token, unk_token_id = "<eos>", EOS, EOS, None, None
    chat_template = None

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids, skip_special_tokens=True) -> str:
        data = bytes(i for i in ids if i < 256)
        return data.decode("utf-8", errors="replace")

    def convert_tokens_to_ids(self, token):
        return EOS if token == "<eos>" else None

    def convert_ids_to_tokens(self, i):
        return "<eos>" if i == EOS else chr(i)


class EchoAdapter(ChatAdapter):
    """Prompt = bytes of the last message; nothing else."""

    family = "echo"

    def build_ids(self, tokenizer, messages):
        return tokenizer.encode(messages[-1]["content"])


class ScriptedModel:
    """`generate` replays a script of token ids, honouring streamer, stopping criteria, eos and max_new_tokens.

    With `scores` ([steps, vocab]), step n's logits processors see row n, as generate() would show them."""

    def __init__(self, script: list[int], step_s: float = 0.0, crash_after: int | None = None, scores=None):
        self.script, self.step_s, self.crash_after, self.scores = script, step_s, crash_after, scores
        self.saw_processors = False
        self.steps_run = 0
        self.finished = threading.Event()
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def parameters(self):
        return iter([self.dummy])

    def buffers(self):
        return iter([])

    def generate(self, input_ids, streamer, generation_config, stopping_criteria, logits_processor=None, **_):
        try:
            streamer.put(input_ids[0])
            ids = input_ids
            eos = set(generation_config.eos_token_id or [])
            self.saw_processors = bool(logits_processor)
            for n, token in enumerate(self.script[:generation_config.max_new_tokens]):
                if self.crash_after is not None and n == self.crash_after:
                    raise RuntimeError("scripted crash")
                time.sleep(self.step_s)
                if self.scores is not None:
                    for processor in logits_processor or []:
                        processor(ids, self.scores[n:n + 1].clone())
                ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
                self.steps_run += 1
                streamer.put(torch.tensor([token]))
                if token in eos or any(bool(c(ids, None).all()) for c in stopping_criteria):
                    break
            streamer.end()
        finally:
            self.finished.set()


def scripted(text_or_ids, step_s: float = 0.0, crash_after: int | None = None,
             stop_strings=(), max_new_tokens: int = 512, scores=None) -> LoadedModel:
    script = list(text_or_ids.encode("utf-8")) if isinstance(text_or_ids, str) else list(text_or_ids)
    adapter = EchoAdapter()
    adapter.stop_strings = tuple(stop_strings)
    model = ScriptedModel(script, step_s, crash_after, scores)
    return on_transformers(LoadedModel(id="scripted", model=model, tokenizer=ByteTokenizer(),
                       adapter=adapter, defaults=GenerationParams(max_new_tokens=max_new_tokens, greedy=True),
                       context_length=None))
