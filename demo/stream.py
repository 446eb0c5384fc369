"""The values a generation streams, and the protocol every engine behind a registry entry implements.

A leaf module: it imports nothing from `demo` or `adapters`, so any layer may use it. `demo.engine`
re-exports the names (CancelToken, Chunk, Stats, GenerationError) for the callers that import them there.

An engine backend (transformers in-process, llama.cpp, an OpenAI-compatible server) is anything with the
`Backend` shape below. The engine above it (demo/engine.py: limits, the admission queue, stop holdback,
stats, cancel, timeouts) talks to it only through this protocol and never asks which one it is.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Protocol, Sequence, runtime_checkable

TRANSFORMERS, LLAMA_CPP, OPENAI = "transformers", "llama.cpp", "openai"
ENGINES = (TRANSFORMERS, LLAMA_CPP, OPENAI)

# Set once when the server shuts down (SIGTERM, Ctrl-C): every request's CancelToken then reads cancelled,
# so every engine ends its open streams within a step. demo.limits re-exports it.
SHUTDOWN = threading.Event()


class CancelToken:
    """One per request: Stop, a new message or a disconnect calls `cancel()`."""

    def __init__(self):
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set() or SHUTDOWN.is_set()

    def __deepcopy__(self, memo) -> "CancelToken":
        # Gradio deep-copies session state; a copy belongs to no request yet, so it starts fresh.
        return CancelToken()


@dataclass
class Stats:
    prompt_tokens: int = 0
    new_tokens: int = 0
    queue_s: float = 0.0  # waiting for the model to be free
    ttft_s: float | None = None  # generation start to first token
    elapsed_s: float = 0.0
    tokens_per_s: float = 0.0  # decode rate after the first token

    def summary(self) -> str:
        ttft = f"{self.ttft_s * 1000:.0f} ms" if self.ttft_s is not None else "n/a"
        return f"{self.new_tokens} tokens · {self.tokens_per_s:.1f} tok/s · first token {ttft}"


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token's log-probability, and its `top` most likely alternatives at that step (best first,
    each a TokenLogprob without alternatives). `token` is the text the token added to the reply (the engine
    fills it in; "" for the first part of a character split across tokens); `token_id` is None for a
    remote's entries."""

    token: str
    logprob: float
    token_id: int | None = None
    top: tuple["TokenLogprob", ...] = ()


@dataclass
class Chunk:
    text: str  # the reply so far
    delta: str
    stats: Stats
    finish_reason: str | None = None  # stop | length | cancelled | error, on the last chunk only
    error: str | None = None
    output_ids: list[int] = field(default_factory=list)  # new ids so far (stop id included)
    prompt_ids: list[int] = field(default_factory=list)
    code: str | None = None  # with an error: what kind (demo/limits.py), so the API can pick a status
    # When the request asked for them (GenerationParams.logprobs): the entries of the tokens released with
    # this chunk's delta (held back and cut with the text); None when not asked or not given (a remote).
    logprobs: list[TokenLogprob] | None = None
    # From an engine whose server splits the reply itself (an OpenAI-compatible remote): `text` and `delta`
    # are then the answer only, and these hold the reasoning (so far, and this chunk's) and the whole tool
    # calls so far (adapters.replyparse.ToolCall). Token-level engines leave them empty: the family's parser
    # (demo/replies.py) splits their text.
    reasoning: str = ""
    reasoning_delta: str = ""
    tool_calls: list = field(default_factory=list)


class GenerationError(RuntimeError):
    pass


# A logits processor sees the ids so far (prompt and output) and the next token's scores, and returns
# the scores to sample from (e.g. a grammar masks the tokens it forbids). Engines whose capabilities say
# `logits_processors` apply every one in `Prompt.logits_processors` at every step, before sampling.
LogitsProcessor = Callable[[Sequence[int], Any], Any]


@dataclass
class Prompt:
    """What one generation is asked for.

    An engine with exact prompt ids gets `input_ids` (the family adapter's, those of `prompt --json`) with
    the stop ids and strings; a remote engine that applies its own template gets `messages`.
    """

    input_ids: list[int] = field(default_factory=list)
    stop_ids: list[int] = field(default_factory=list)
    stop_strings: list[str] = field(default_factory=list)
    messages: list[dict] | None = None
    logits_processors: list[LogitsProcessor] = field(default_factory=list)
    # For an engine that takes messages: the request's other OpenAI fields its server enforces itself
    # (tools, tool_choice, response_format, chat_template_kwargs).
    request_fields: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Capabilities:
    batching: bool  # several requests are decoded together, not one after another
    exact_prompt_ids: bool  # it takes the adapter's prompt ids (else: messages, templated elsewhere)
    logits_processors: bool  # it applies Prompt.logits_processors (grammars plug in here)


@runtime_checkable
class Backend(Protocol):
    """One engine serving one loaded registry entry. Loading is the engine's `load(entry)` function
    (demo.loader picks it by the entry's `engine`); the rest is this object."""

    name: str  # transformers | llama.cpp | openai
    capabilities: Capabilities

    @property
    def decode_plan(self) -> str:  # how it decodes, in words (shown in the Models tab, /metrics, bench)
        ...

    def memory_bytes(self) -> int:  # bytes it holds for this model (weights, caches)
        ...

    def unload(self) -> None:  # stop its threads and free what it holds; idempotent
        ...

    def stream(self, prompt: Prompt, params, cancel: CancelToken, stall_timeout_s: float = 120.0,
               timeout_s: float | None = None) -> Iterator[Chunk]:
        """The reply to `prompt`, chunk by chunk; the last chunk has finish_reason and full stats.
        `cancel` ends it within a token; so does closing the iterator (a client that went away)."""
        ...
