"""The streaming engine: one path for every caller (UI, CLI, API, tests).

A producer hands token ids to a TextIteratorStreamer queue (whose timeout guards against a dead
producer); this thread decodes them, holds back partial characters and partial stop strings, and yields a
`Chunk` per step. The producer is the model's batched decode loop (demo/batching.py: every request of a
model shares one forward pass per step) where the model allows it, else `model.generate` on a worker
thread, one generation at a time per model. A per-request `CancelToken` ends either producer: the loop
reads it every step, and for `generate` a StoppingCriteria reads it.
"""
from __future__ import annotations

import os
import queue
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Iterator, Sequence

import torch
from transformers import (GenerationConfig, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList,
                          TextIteratorStreamer)

from adapters.base import NO_OPTIONS, AdapterError, ChatOptions, ContextTooLong

from .limits import CONTEXT_TOO_LONG, INVALID, TIMEOUT, LimitError, capped, check_messages
from .batching import BatchedDecoder, can_batch
from .loader import LoadedModel
from .threads import on_own_thread
from .params import GenerationParams
from .textstream import IncrementalDecoder, StopStringFilter

POLL_S = 0.25  # how often a waiting consumer checks on the worker thread
# The batched decode loop is on by default; HUB_BATCHED_DECODE=0 falls back to generate() everywhere.
BATCHED_DECODE = os.environ.get("HUB_BATCHED_DECODE", "1") != "0"
_batcher_lock = threading.Lock()


class CancelToken:
    """One per request: Stop, a new message or a disconnect calls `cancel()`."""

    def __init__(self):
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

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


class GenerationError(RuntimeError):
    pass


class _CancelCriteria(StoppingCriteria):
    def __init__(self, *tokens):
        self.tokens = tokens

    def __call__(self, input_ids, scores, **kwargs):
        stop = any(t.cancelled for t in self.tokens)
        return torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)


class _IdStreamer(TextIteratorStreamer):
    """Queues new token ids instead of text; decoding happens on the consumer side."""

    def put(self, value):
        if self.skip_prompt and self.next_tokens_are_prompt:
            self.next_tokens_are_prompt = False
            return
        self.text_queue.put(value.reshape(-1).tolist(), timeout=self.timeout)

    def end(self):
        self.text_queue.put(self.stop_signal, timeout=self.timeout)


def stream_chat(loaded: LoadedModel, messages: Sequence[dict], params: GenerationParams | None = None,
                cancel: CancelToken | None = None, chat: ChatOptions = NO_OPTIONS, **options) -> Iterator[Chunk]:
    """Build the family's prompt for `messages` (with `chat`'s tools and template variables) and stream the reply.

    A remote model (an OpenAI-compatible server) streams the same chunks, so callers need no special case.
    """
    params = capped(loaded.limits, params or loaded.defaults)
    try:
        check_messages(loaded.limits, messages)
    except LimitError as e:
        yield Chunk("", "", Stats(), "error", str(e), code=e.code)
        return
    if loaded.remote:
        if chat.tools:  # the remote server renders its own prompt; tools are not forwarded to it (yet)
            yield Chunk("", "", Stats(), "error", f"{loaded.id} is served elsewhere; the hub does not "
                        f"forward tools to it", code=INVALID)
            return
        yield from _admitted(loaded, lambda: loaded.stream_remote(messages, params, cancel, **options))
        return
    try:
        prompt = loaded.adapter.build_prompt(loaded.tokenizer, messages, loaded.context_length,
                                             params.max_new_tokens, loaded.extra_stop_ids, chat)
    except AdapterError as e:
        yield Chunk("", "", Stats(), "error", str(e), code=CONTEXT_TOO_LONG if isinstance(e, ContextTooLong)
                    else INVALID)
        return
    params = replace(params, max_new_tokens=prompt.max_new_tokens or params.max_new_tokens)
    yield from stream_ids(loaded, prompt.input_ids, params, cancel, prompt.stop_token_ids,
                          prompt.stop_strings, **options)


def stream_ids(loaded: LoadedModel, input_ids: Sequence[int], params: GenerationParams,
               cancel: CancelToken | None = None, stop_ids: Sequence[int] | None = None,
               stop_strings: Sequence[str] = (), stall_timeout_s: float = 120.0,
               timeout_s: float | None = None, logits_processors: Sequence = ()) -> Iterator[Chunk]:
    """Stream a continuation of `input_ids`; the last chunk has finish_reason and full stats.

    `timeout_s` defaults to the hub's generation timeout; a full wait line answers busy at once.
    `logits_processors` (e.g. demo/structured.py's grammar) run in `generate`, so such a request skips the
    batched loop.
    """
    cancel = cancel or CancelToken()
    timeout_s = timeout_s if timeout_s is not None else loaded.limits.generation_timeout_s
    yield from _admitted(loaded, lambda: _stream_locked(
        loaded, input_ids, params, cancel, stop_ids, stop_strings, stall_timeout_s, timeout_s, logits_processors))


def _admitted(loaded, start) -> Iterator[Chunk]:
    """Run the stream `start()` makes only if the model's gate lets this request in (else: busy)."""
    try:
        loaded.gate.enter(loaded.id)
    except LimitError as e:
        yield Chunk("", "", Stats(), "error", str(e), code=e.code)
        return
    try:
        yield from start()
    finally:
        loaded.gate.leave()


def _stream_locked(loaded, input_ids, params, cancel, stop_ids, stop_strings, stall_timeout_s,
                   timeout_s, logits_processors=()) -> Iterator[Chunk]:
    stop_ids = list(stop_ids if stop_ids is not None else loaded.adapter.stop_token_ids(
        loaded.tokenizer, loaded.extra_stop_ids))
    stats = Stats(prompt_tokens=len(input_ids))
    queued = time.perf_counter()
    batcher = batcher_for(loaded) if not logits_processors else None
    if batcher is not None:  # no lock: the loop serves every request of this model together
        run = _Run(loaded, list(input_ids), params, cancel, stop_ids, stop_strings, stats, batcher)
        yield from run.stream(stall_timeout_s, timeout_s)
        return
    if not _acquire(loaded.lock, cancel):
        yield Chunk("", "", stats, "cancelled", prompt_ids=list(input_ids))
        return
    try:
        stats.queue_s = time.perf_counter() - queued
        run = _Run(loaded, list(input_ids), params, cancel, stop_ids, stop_strings, stats)
        run.logits_processors = list(logits_processors)
        yield from run.stream(stall_timeout_s, timeout_s)
    finally:
        loaded.lock.release()


def complete(loaded: LoadedModel, messages: Sequence[dict], params: GenerationParams | None = None,
             **options) -> Chunk:
    """The non-streaming call: consume the stream, return its last chunk."""
    last = None
    for last in stream_chat(loaded, messages, params, **options):
        pass
    return last


def batcher_for(loaded: LoadedModel) -> BatchedDecoder | None:
    """The model's batched decode loop, created on first use; None where generate() must serve."""
    if not BATCHED_DECODE or loaded.model is None:
        return None
    # Batched rows are checked equal to single-row decoding for plain Linear layers only (a GGUF is
    # dequantized to them); GPTQ/AWQ/bitsandbytes kernels keep generate() and the per-model lock.
    if loaded.quant_format not in ("none", "gguf"):
        return None
    with _batcher_lock:
        if loaded.batcher is None:
            # the constructor probes every Linear: torch work, so on a thread of its own (demo.threads)
            loaded.batcher = on_own_thread(BatchedDecoder, loaded.model) if can_batch(loaded.model) else False
    return loaded.batcher or None


def _acquire(lock: threading.Lock, cancel: CancelToken) -> bool:
    while not lock.acquire(timeout=POLL_S):
        if cancel.cancelled:
            return False
    if cancel.cancelled:
        lock.release()
        return False
    return True


class _Run:
    """One generation: the worker thread and the consumer loop that turns ids into chunks."""

    def __init__(self, loaded, input_ids, params, cancel, stop_ids, stop_strings, stats, batcher=None):
        self.loaded, self.input_ids, self.params, self.batcher = loaded, input_ids, params, batcher
        self.queued = time.perf_counter()
        self.cancel, self.halt = cancel, CancelToken()  # halt: the engine's own stop (stop string, timeout)
        self.stop_ids, self.stats = set(stop_ids), stats
        self.decoder = IncrementalDecoder(loaded.tokenizer)
        self.filter = StopStringFilter(stop_strings)
        self.streamer = _IdStreamer(loaded.tokenizer, skip_prompt=True, timeout=POLL_S)
        self.failure: BaseException | None = None
        self.text, self.output_ids = "", []

    def _generate(self) -> None:
        try:
            if self.params.seed is not None:
                torch.manual_seed(self.params.seed)
            tensor = torch.tensor([self.input_ids], device=self.loaded.device)
            self.loaded.model.generate(
                input_ids=tensor, attention_mask=torch.ones_like(tensor), streamer=self.streamer,
                generation_config=self._config(), logits_processor=LogitsProcessorList(self.logits_processors),
                stopping_criteria=StoppingCriteriaList([_CancelCriteria(self.cancel, self.halt)]))
        except BaseException as e:  # reported to the consumer as finish_reason "error"
            self.failure = e
            try:
                self.streamer.end()
            except queue.Full:
                pass

    def _config(self) -> GenerationConfig:
        pad = self.loaded.tokenizer.pad_token_id
        eos = sorted(self.stop_ids) or None
        return GenerationConfig(**self.params.generate_kwargs(), eos_token_id=eos,
                                pad_token_id=pad if pad is not None else (eos or [0])[0])

    # -- the batched producer's side (called on the decode loop's thread) ---------------------
    def stopped(self) -> bool:
        return self.cancel.cancelled or self.halt.cancelled

    def admitted(self) -> None:
        self.started = time.perf_counter()
        self.stats.queue_s = self.started - self.queued

    def deliver(self, ids: list[int]) -> None:
        self.streamer.text_queue.put(ids)

    def finish(self, error: BaseException | None = None) -> None:
        if self.ticket.done.is_set():
            return
        if error is not None:
            self.failure = error
        self.streamer.end()
        self.ticket.done.set()

    # -- the consumer -------------------------------------------------------------------------
    def _start_producer(self):
        if self.batcher is None:
            worker = threading.Thread(target=self._generate, name=f"generate-{self.loaded.id}", daemon=True)
            worker.start()
            return worker
        self.ticket = _Ticket()
        self.batcher.submit(self)
        return self.ticket

    def stream(self, stall_timeout_s: float, timeout_s: float | None) -> Iterator[Chunk]:
        self.started = last_token = time.perf_counter()
        worker = self._start_producer()
        try:
            finish = None
            while finish is None:
                try:
                    ids = next(self.streamer)
                except queue.Empty:
                    now = time.perf_counter()
                    finish = self._check_waiting(worker, now - last_token, now - self.started,
                                                 stall_timeout_s, timeout_s)
                    continue
                except StopIteration:
                    finish = self._finish_reason()
                    break
                last_token = time.perf_counter()
                delta = self._accept(ids, last_token)
                if self.filter.matched is not None:
                    self.halt.cancel()
                    finish = "stop"
                elif timeout_s is not None and last_token - self.started > timeout_s:
                    finish = self._timed_out(timeout_s)  # a steady stream must end too, not just a stall
                elif delta:
                    yield self._chunk(delta)
            if self.filter.matched is None and finish != "error":
                self._emit_text(self.decoder.flush(), final=True)
            yield self._chunk(self._tail, finish, self._error_text(finish))
        finally:
            self.halt.cancel()  # a consumer that goes away (disconnect) stops the worker too
            worker.join(timeout=stall_timeout_s)

    _tail = ""
    code: str | None = None
    ticket = None
    logits_processors: list = []  # set per run (structured output); empty: plain sampling

    def _accept(self, ids: list[int], now: float) -> str:
        if self.stats.ttft_s is None:
            self.stats.ttft_s = now - self.started
            self.first_token_at = now
        self.output_ids += ids
        self.stats.new_tokens = len(self.output_ids)
        self._update_rate(now)
        text_ids = [i for i in ids if i not in self.stop_ids]
        return self._emit_text(self.decoder.add(text_ids) if text_ids else "", final=False)

    def _emit_text(self, decoded: str, final: bool) -> str:
        shown = self.filter.feed(decoded) + (self.filter.flush() if final else "")
        if not self.text and getattr(self.loaded.adapter, "strip_reply_start", False):
            shown = shown.lstrip()  # e.g. ChatGLM3's empty metadata line before the reply
        self.text += shown
        if final:
            self._tail = shown
        return shown

    def _update_rate(self, now: float) -> None:
        self.stats.elapsed_s = now - self.started
        decode_s = now - self.first_token_at
        n = self.stats.new_tokens
        self.stats.tokens_per_s = (n - 1) / decode_s if n > 1 and decode_s > 0 else 0.0

    def _check_waiting(self, worker, stalled_s, running_s, stall_timeout_s, timeout_s) -> str | None:
        if not worker.is_alive() and self.streamer.text_queue.empty():
            self.failure = self.failure or GenerationError("the generation thread ended without a result")
            return "error"
        if timeout_s is not None and running_s > timeout_s:
            return self._timed_out(timeout_s)
        elif stalled_s > stall_timeout_s:
            self.failure = GenerationError(f"no token for {stall_timeout_s:g} s")
        else:
            return None
        self.halt.cancel()
        return "error"

    def _timed_out(self, timeout_s: float) -> str:
        self.failure = GenerationError(f"generation took longer than {timeout_s:g} s")
        self.code = TIMEOUT
        self.halt.cancel()
        return "error"

    def _finish_reason(self) -> str:
        if self.failure is not None:
            return "error"
        if self.output_ids and self.output_ids[-1] in self.stop_ids:
            return "stop"
        if self.cancel.cancelled:
            return "cancelled"
        return "length" if self.stats.new_tokens >= self.params.max_new_tokens else "stop"

    def _error_text(self, finish: str) -> str | None:
        if finish != "error":
            return None
        failure = self.failure
        return f"{type(failure).__name__}: {failure}" if failure else "generation failed"

    def _chunk(self, delta: str, finish: str | None = None, error: str | None = None) -> Chunk:
        if finish:
            self.stats.elapsed_s = time.perf_counter() - self.started
        return Chunk(self.text, delta, replace(self.stats), finish, error, list(self.output_ids),
                     self.input_ids if finish else [], self.code if finish == "error" else None)


class _Ticket:
    """A request in the batched loop, seen by the consumer like a worker thread: alive until finished."""

    def __init__(self):
        self.done = threading.Event()

    def is_alive(self) -> bool:
        return not self.done.is_set()

    def join(self, timeout: float | None = None) -> None:
        self.done.wait(timeout)
