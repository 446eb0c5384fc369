"""Structured output: `response_format` json_object / json_schema as a grammar (llguidance) that masks logits.

`json_constraint(tokenizer, response_format)` compiles and checks the grammar once per request (an unsupported
schema is a `ConstraintError` with llguidance's reason); `JsonLogitsProcessor` then keeps every sampled token
inside the grammar, and lets the model stop (eos) only where the JSON is complete.
"""
from __future__ import annotations

from typing import Any

import torch


class ConstraintError(ValueError):
    """The request's response_format cannot be enforced; the message says why."""


def json_constraint(tokenizer, response_format: dict, stop_ids: list[int], vocab_size: int) -> "JsonLogitsProcessor":
    import llguidance
    import llguidance.hf

    kind = response_format.get("type")
    if kind == "json_object":
        schema: Any = {"type": "object"}
    elif kind == "json_schema":
        spec = response_format.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("schema", {}), dict):
            raise ConstraintError("response_format.json_schema: expected {\"name\": ..., \"schema\": {...}}")
        schema = spec.get("schema", {})
    else:
        raise ConstraintError(f"response_format.type: {kind!r} is not text, json_object or json_schema")
    try:
        ll_tokenizer = llguidance.hf.from_tokenizer(tokenizer, n_vocab=vocab_size, eos_token=list(stop_ids) or None)
    except Exception as e:  # a slow or non-HF tokenizer (ChatGLM3, Qwen1)
        raise ConstraintError(f"this model's tokenizer cannot be used for constrained decoding ({e})") from None
    try:
        grammar = llguidance.LLMatcher.grammar_from_json_schema(
            schema, defaults={"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "})
    except ValueError as e:
        raise ConstraintError(f"response_format: {e}") from None
    is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar, ll_tokenizer)
    if is_error:
        raise ConstraintError(f"response_format: the schema cannot be enforced: {messages[0]}")
    return JsonLogitsProcessor(ll_tokenizer, grammar, vocab_size)


class JsonLogitsProcessor:
    """A hub logits processor (demo.stream.LogitsProcessor: one row's ids so far and next-token scores, as a
    torch tensor or a numpy array, so every local engine can run it): tokens outside the grammar get -inf."""

    def __init__(self, ll_tokenizer, grammar: str, vocab_size: int):
        import llguidance
        import llguidance.torch

        self.matcher = llguidance.LLMatcher(ll_tokenizer, grammar, log_level=0)
        self.bitmask = llguidance.torch.allocate_token_bitmask(1, vocab_size)
        self.prompt_len: int | None = None
        self.consumed = 0

    def __call__(self, ids, scores):
        import llguidance.torch

        if self.prompt_len is None:
            self.prompt_len = len(ids)
        new = list(ids[self.prompt_len + self.consumed:])
        if new:
            self.matcher.consume_tokens(new)
            self.consumed += len(new)
        if self.matcher.is_error():
            raise RuntimeError(f"constrained decoding failed: {self.matcher.get_error()}")
        llguidance.torch.fill_next_token_bitmask(self.matcher, self.bitmask)
        row = torch.as_tensor(scores)  # shares a numpy array's memory: masked in place either way
        llguidance.torch.apply_token_bitmask_inplace(row.unsqueeze(0), self.bitmask.to(row.device))
        return scores
