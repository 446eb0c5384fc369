"""Structured output: `response_format` json_object / json_schema as a grammar (llguidance) that masks logits.

`json_constraint(tokenizer, response_format)` compiles and checks the grammar once per request (an unsupported
schema is a `ConstraintError` with llguidance's reason); `JsonLogitsProcessor` then keeps every sampled token
inside the grammar, and lets the model stop (eos) only where the JSON is complete.

What a token costs on top of plain decoding (bench: `python -m demo bench --structured`): llguidance's mask
for the next token (Rust, typically well under a millisecond), and setting the forbidden scores to -inf,
done here with numpy over the packed bitmask (llguidance.torch's own helper is a torch.compile kernel, which
compiles for seconds on a CPU's first call). The tokenizer's llguidance copy (about a second to build) is
made once per tokenizer, not once per request.
"""
from __future__ import annotations

import threading
import weakref
from typing import Any

import numpy as np
import torch


class ConstraintError(ValueError):
    """The request's response_format cannot be enforced; the message says why."""


def json_schema_of(response_format: dict) -> Any | None:
    """The JSON schema a response_format asks for ({"type": "object"} for json_object); None for text."""
    kind = response_format.get("type", "text")
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "object"}
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("schema", {}), dict):
            raise ConstraintError("response_format.json_schema: expected {\"name\": ..., \"schema\": {...}}")
        return spec.get("schema", {})
    raise ConstraintError(f"response_format.type: {kind!r} is not text, json_object or json_schema")


def json_constraint(tokenizer, response_format: dict, stop_ids: list[int], vocab_size: int) -> "JsonLogitsProcessor":
    import llguidance

    schema = json_schema_of(response_format)
    if schema is None:
        raise ConstraintError("response_format.type: text needs no constraint")
    ll_tokenizer = _ll_tokenizer(tokenizer, vocab_size, tuple(stop_ids))
    try:
        grammar = llguidance.LLMatcher.grammar_from_json_schema(
            schema, defaults={"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "})
    except ValueError as e:
        raise ConstraintError(f"response_format: {e}") from None
    processor = JsonLogitsProcessor(ll_tokenizer, grammar, vocab_size)
    if processor.matcher.is_error():  # the grammar compiles when the matcher is made: once, here
        raise ConstraintError(f"response_format: the schema cannot be enforced: {processor.matcher.get_error()}")
    return processor


_tokenizers: "weakref.WeakKeyDictionary[Any, dict]" = weakref.WeakKeyDictionary()
_tokenizers_lock = threading.Lock()


def _ll_tokenizer(tokenizer, vocab_size: int, stop_ids: tuple[int, ...]):
    """llguidance's view of a Hugging Face tokenizer (its vocabulary as bytes), built once per tokenizer."""
    import llguidance.hf

    with _tokenizers_lock:
        made = _tokenizers.setdefault(tokenizer, {})
        key = (vocab_size, stop_ids)
        if key not in made:
            try:
                made[key] = llguidance.hf.from_tokenizer(tokenizer, n_vocab=vocab_size, eos_token=list(stop_ids) or None)
            except Exception as e:  # a slow or non-HF tokenizer (ChatGLM3, Qwen1)
                raise ConstraintError(f"this model's tokenizer cannot be used for constrained decoding ({e})") from None
        return made[key]


class JsonLogitsProcessor:
    """A hub logits processor (demo.stream.LogitsProcessor: one row's ids so far and next-token scores, as a
    torch tensor or a numpy array, so every local engine can run it): tokens outside the grammar get -inf,
    in place."""

    def __init__(self, ll_tokenizer, grammar: str, vocab_size: int):
        import llguidance
        import llguidance.numpy

        self.matcher = llguidance.LLMatcher(ll_tokenizer, grammar, log_level=0)
        self.bitmask = llguidance.numpy.allocate_token_bitmask(1, vocab_size)
        self.prompt_len: int | None = None
        self.consumed = 0

    def __call__(self, ids, scores):
        if self.prompt_len is None:
            self.prompt_len = len(ids)
        new = ids[self.prompt_len + self.consumed:]
        if len(new):
            self.matcher.consume_tokens(list(new))
            self.consumed += len(new)
        if self.matcher.is_error():
            raise RuntimeError(f"constrained decoding failed: {self.matcher.get_error()}")
        self.matcher.unsafe_compute_mask_ptr(self.bitmask.ctypes.data, self.bitmask.nbytes)
        blocked = self.blocked(scores.shape[-1])
        if isinstance(scores, np.ndarray):
            np.putmask(scores, blocked, -np.inf)
        elif scores.device.type == "cpu" and scores.dtype in (torch.float32, torch.float64):
            # numpy on the tensor's memory: 0.1 ms, where torch's masked_fill_ took 12 ms on 2 busy cores
            # (it wakes its thread pool for 49k elements)
            np.putmask(scores.numpy(), blocked, -np.inf)
        else:  # another dtype or device: the same mask, in torch
            scores.masked_fill_(torch.from_numpy(blocked).to(scores.device), float("-inf"))
        return scores

    def blocked(self, width: int) -> np.ndarray:
        """True for every token the grammar forbids next, over `width` scores (any beyond the mask: forbidden)."""
        # bit b of 32-bit word w allows token 32*w + b: little-endian bytes, least significant bit first
        allowed = np.unpackbits(self.bitmask.astype("<i4", copy=False).view(np.uint8), bitorder="little")
        if allowed.size < width:
            allowed = np.concatenate([allowed, np.zeros(width - allowed.size, np.uint8)])
        return allowed[:width] == 0
