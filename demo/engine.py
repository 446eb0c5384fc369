"""The streaming engine: one path for every caller (UI, CLI, API, tests).

It knows engines only through the backend protocol (demo/stream.py): limits and the admission gate
here, then `loaded.backend.stream(prompt, params, cancel)`. Token-level backends (transformers here,
llama.cpp in demo/backends/llamacpp.py) hand their ids back to `stream_tokens`, which is the engine's
side of every local generation, described next.

A producer hands token ids to a TextIteratorStreamer queue (whose timeout guards against a dead
producer); this thread decodes them, holds back partial characters and partial stop strings, and yields a
`Chunk` per step. The producer is the model's batched decode loop (demo/batching.py: every request of a
model shares one forward pass per step) where the model allows it, else `model.generate` on a worker
thread, one generation at a time per model. A per-request `CancelToken` ends either producer: the loop
reads it every step, and for `generate` a StoppingCriteria reads it.
"""
from __future__ import annotations

import queue
import threading
import time
from dataclasses import replace
from typing import Iterator, Sequence

import torch
from transformers import (GenerationConfig, LogitsProcessor, LogitsProcessorList, RepetitionPenaltyLogitsProcessor,
                          StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer)

from adapters.base import NO_OPTIONS, AdapterError, ChatOptions, ContextTooLong

from .limits import (CONTEXT_TOO_LONG, INVALID, SHUTDOWN, SHUTDOWN_MESSAGE, SHUTTING_DOWN, TIMEOUT, LimitError,
                     capped, check_messages, check_params)
from .loaded import LoadedModel
from .logprobs import LogprobTrail, distribution, named, token_entry
from .params import GenerationParams
from .stream import CancelToken, Chunk, GenerationError, Prompt, Stats
from .textstream import IncrementalDecoder, StopStringFilter

POLL_S = 0.25  # how often a waiting consumer checks on the worker thread


class _CancelCriteria(StoppingCriteria):
    def __init__(self, *tokens):
        self.tokens = tokens

    def __call__(self, input_ids, scores, **kwargs):
        stop = any(t.cancelled for t in self.tokens)
        return torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)


class _RowProcessor(LogitsProcessor):
    """A hub logits processor (demo.stream.LogitsProcessor: ids, scores of one row) inside generate()."""

    def __init__(self, fn):
        self.fn = fn

    def __call__(self, input_ids, scores):
        return torch.stack([torch.as_tensor(self.fn(ids.tolist(), row), dtype=scores.dtype, device=scores.device)
                            for ids, row in zip(input_ids, scores)])


class _Recorder(LogitsProcessor):
    """Keeps the step's log-softmax for the streamer, which generate() hands only the chosen token. It runs
    after the hub's processors (a grammar) and before generate's temperature, top-k and top-p; the repetition
    penalty then runs after it (see _Run._generate), so the logprobs are demo/logprobs.py's on every engine."""

    def __init__(self):
        self.row = None

    def __call__(self, input_ids, scores):
        self.row = distribution(scores[0])
        return scores


class _IdStreamer(TextIteratorStreamer):
    """Queues (new token ids, their logprob entries or None) instead of text; decoding happens on the
    consumer side. With a `recorder` (a request that wants logprobs) each token gets its entry."""

    def __init__(self, *args, recorder: _Recorder | None = None, top: int = 0, **kwargs):
        super().__init__(*args, **kwargs)
        self.recorder, self.top = recorder, top

    def put(self, value):
        if self.skip_prompt and self.next_tokens_are_prompt:
            self.next_tokens_are_prompt = False
            return
        ids = value.reshape(-1).tolist()
        entries = None
        if self.recorder is not None:  # one row, so one token a step
            entries = [token_entry(self.recorder.row, token, self.top) for token in ids]
        self.text_queue.put((ids, entries), timeout=self.timeout)

    def end(self):
        self.text_queue.put(self.stop_signal, timeout=self.timeout)


def stream_chat(loaded: LoadedModel, messages: Sequence[dict], params: GenerationParams | None = None,
                cancel: CancelToken | None = None, chat: ChatOptions = NO_OPTIONS, logits_processors: Sequence = (),
                request_fields: dict | None = None, **options) -> Iterator[Chunk]:
    """Build the family's prompt for `messages` (with `chat`'s tools and template variables) and stream the
    reply from the model's engine; `logits_processors` (e.g. demo/structured.py's grammar) shape every step.

    An engine that takes exact prompt ids gets the adapter's; one that templates messages itself (an
    OpenAI-compatible server) gets the messages, `chat`'s tools and template variables, and
    `request_fields` (tool_choice, response_format), which its server enforces. Either streams the same
    chunks, so callers need no special case.
    """
    params = capped(loaded.limits, params or loaded.defaults)
    messages = with_system_prompt(messages, loaded.system_prompt)
    try:
        check_messages(loaded.limits, messages)
        check_params(params)
    except LimitError as e:
        yield Chunk("", "", Stats(), "error", str(e), code=e.code)
        return
    backend = loaded.backend
    if not backend.capabilities.exact_prompt_ids:
        prompt = Prompt(messages=list(messages), request_fields=forwarded_fields(chat, request_fields))
    else:
        try:
            built = loaded.adapter.build_prompt(loaded.tokenizer, messages, loaded.context_length,
                                                params.max_new_tokens, loaded.extra_stop_ids, chat)
        except AdapterError as e:
            yield Chunk("", "", Stats(), "error", str(e), code=CONTEXT_TOO_LONG if isinstance(e, ContextTooLong)
                        else INVALID)
            return
        params = replace(params, max_new_tokens=built.max_new_tokens or params.max_new_tokens)
        prompt = Prompt(list(built.input_ids), list(built.stop_token_ids), [*built.stop_strings, *params.stop],
                        logits_processors=list(logits_processors))
    yield from _engine_stream(loaded, prompt, params, cancel, **options)


def forwarded_fields(chat: ChatOptions, request_fields: dict | None) -> dict:
    """The OpenAI request fields a server that templates messages itself gets beside them."""
    fields = {"tools": chat.tools} if chat.tools else {}
    if chat.template_kwargs:
        fields["chat_template_kwargs"] = dict(chat.template_kwargs)
    return {**fields, **(request_fields or {})}


def with_system_prompt(messages: Sequence[dict], system_prompt: str | None) -> Sequence[dict]:
    """The registry entry's system prompt first, unless the conversation brings its own."""
    if not system_prompt or (messages and messages[0].get("role") == "system"):
        return messages
    return [{"role": "system", "content": system_prompt}, *messages]


def stream_ids(loaded: LoadedModel, input_ids: Sequence[int], params: GenerationParams,
               cancel: CancelToken | None = None, stop_ids: Sequence[int] | None = None,
               stop_strings: Sequence[str] = (), stall_timeout_s: float = 120.0,
               timeout_s: float | None = None, logits_processors: Sequence = ()) -> Iterator[Chunk]:
    """Stream a continuation of `input_ids`; the last chunk has finish_reason and full stats.

    `timeout_s` defaults to the hub's generation timeout; a full wait line answers busy at once.
    `logits_processors` (e.g. demo/structured.py's grammar) shape every step, in the batched loop or in
    `generate`.
    """
    if not loaded.backend.capabilities.exact_prompt_ids:
        yield Chunk("", "", Stats(), "error", f"{loaded.id} runs on the {loaded.engine} engine, which takes "
                    "messages, not prompt ids", code=INVALID)
        return
    if stop_ids is None:
        stop_ids = loaded.adapter.stop_token_ids(loaded.tokenizer, loaded.extra_stop_ids)
    prompt = Prompt(list(input_ids), list(stop_ids), list(stop_strings), logits_processors=list(logits_processors))
    yield from _engine_stream(loaded, prompt, params, cancel, stall_timeout_s, timeout_s)


def _engine_stream(loaded, prompt: Prompt, params, cancel, stall_timeout_s: float = 120.0,
                   timeout_s: float | None = None) -> Iterator[Chunk]:
    cancel = cancel or CancelToken()
    timeout_s = timeout_s if timeout_s is not None else loaded.limits.generation_timeout_s
    backend = loaded.backend
    yield from _admitted(loaded, lambda: backend.stream(prompt, params, cancel, stall_timeout_s, timeout_s))


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


def stream_tokens(loaded: LoadedModel, prompt: Prompt, params: GenerationParams, cancel: CancelToken,
                  loop, stall_timeout_s: float = 120.0, timeout_s: float | None = None) -> Iterator[Chunk]:
    """The engine's side of a token-level backend whose decode loop serves every request together.

    `loop.submit(run)` takes the request; the loop reads `run.input_ids`, `run.params`, `run.stop_ids`,
    `run.logits_processors` and `run.stopped()`, and answers through `run.admitted()`, `run.deliver(ids,
    entries)` (entries: demo.logprobs.token_entry's, when `run.params.logprobs` is not None) and
    `run.finish(error)`. Here the ids become text: partial characters and partial stop strings are
    held back, stats counted, timeouts and cancel enforced.
    """
    stats = Stats(prompt_tokens=len(prompt.input_ids))
    run = _Run(loaded, list(prompt.input_ids), params, cancel, prompt.stop_ids, prompt.stop_strings, stats, loop,
               prompt.logits_processors)
    yield from run.stream(stall_timeout_s, timeout_s)


def stream_transformers(loaded: LoadedModel, prompt: Prompt, params: GenerationParams, cancel: CancelToken,
                        stall_timeout_s: float = 120.0, timeout_s: float | None = None) -> Iterator[Chunk]:
    """The transformers engine: the model's batched decode loop, else generate() under the model's lock."""
    input_ids, stop_ids, stop_strings = prompt.input_ids, prompt.stop_ids, prompt.stop_strings
    stats = Stats(prompt_tokens=len(input_ids))
    queued = time.perf_counter()
    # the model's batched decode loop, when its decode plan (demo/decodeplan.py) has one; it applies each
    # request's logits processors (a grammar) to that request's row
    batcher = loaded.decoder
    if batcher is not None:  # no lock: the loop serves every request of this model together
        yield from stream_tokens(loaded, prompt, params, cancel, batcher, stall_timeout_s, timeout_s)
        return
    if not _acquire(loaded.lock, cancel):
        yield Chunk("", "", stats, "cancelled", prompt_ids=list(input_ids))
        return
    try:
        stats.queue_s = time.perf_counter() - queued
        run = _Run(loaded, list(input_ids), params, cancel, stop_ids, stop_strings, stats,
                   logits_processors=prompt.logits_processors)
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

    def __init__(self, loaded, input_ids, params, cancel, stop_ids, stop_strings, stats, batcher=None,
                 logits_processors=()):
        self.loaded, self.input_ids, self.params, self.batcher = loaded, input_ids, params, batcher
        self.logits_processors = list(logits_processors)
        self.queued = time.perf_counter()
        self.cancel, self.halt = cancel, CancelToken()  # halt: the engine's own stop (stop string, timeout)
        self.stop_ids, self.stats = set(stop_ids), stats
        self.decoder = IncrementalDecoder(loaded.tokenizer)
        self.filter = StopStringFilter(stop_strings)
        wants_logprobs = params.logprobs is not None
        self.trail = LogprobTrail() if wants_logprobs else None
        self.recorder = _Recorder() if wants_logprobs and batcher is None else None
        self.streamer = _IdStreamer(loaded.tokenizer, skip_prompt=True, timeout=POLL_S, recorder=self.recorder,
                                    top=params.logprobs or 0)
        self.failure: BaseException | None = None
        self.text, self.output_ids = "", []

    def _generate(self) -> None:
        try:
            if self.params.seed is not None:
                torch.manual_seed(self.params.seed)
            tensor = torch.tensor([self.input_ids], device=self.loaded.device)
            kwargs = self.params.generate_kwargs()
            processors = [_RowProcessor(fn) for fn in self.logits_processors]
            if self.recorder is not None:  # generate() runs its own penalty before these; this one after
                penalty = kwargs.pop("repetition_penalty", None)
                processors.append(self.recorder)
                if penalty not in (None, 1.0):
                    processors.append(RepetitionPenaltyLogitsProcessor(penalty))
            self.loaded.model.generate(
                input_ids=tensor, attention_mask=torch.ones_like(tensor), streamer=self.streamer,
                generation_config=self._config(kwargs), logits_processor=LogitsProcessorList(processors) or None,
                stopping_criteria=StoppingCriteriaList([_CancelCriteria(self.cancel, self.halt)]))
        except BaseException as e:  # reported to the consumer as finish_reason "error"
            self.failure = e
            try:
                self.streamer.end()
            except queue.Full:
                pass

    def _config(self, kwargs: dict) -> GenerationConfig:
        pad = self.loaded.tokenizer.pad_token_id
        eos = sorted(self.stop_ids) or None
        return GenerationConfig(**kwargs, eos_token_id=eos,
                                pad_token_id=pad if pad is not None else (eos or [0])[0])

    # -- the batched producer's side (called on the decode loop's thread) ---------------------
    def stopped(self) -> bool:
        return self.cancel.cancelled or self.halt.cancelled

    def admitted(self) -> None:
        self.started = time.perf_counter()
        self.stats.queue_s = self.started - self.queued

    def deliver(self, ids: list[int], entries: list | None = None) -> None:
        """The next ids, and when the request wants logprobs their entries (demo.logprobs.token_entry)."""
        self.streamer.text_queue.put((ids, entries))

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
                    ids, entries = next(self.streamer)
                except queue.Empty:
                    now = time.perf_counter()
                    finish = self._check_waiting(worker, now - last_token, now - self.started,
                                                 stall_timeout_s, timeout_s)
                    continue
                except StopIteration:
                    finish = self._finish_reason()
                    break
                last_token = time.perf_counter()
                delta = self._accept(ids, entries, last_token)
                if self.filter.matched is not None:
                    self.halt.cancel()
                    finish = "stop"
                    self._tail = delta  # the text before the stop string goes out with the last chunk
                elif timeout_s is not None and last_token - self.started > timeout_s:
                    finish = self._timed_out(timeout_s)  # a steady stream must end too, not just a stall
                elif delta:
                    yield self._chunk(delta)
            if self.filter.matched is None and finish != "error":
                self._emit_text(self.decoder.flush(), final=True)
            if self.trail is not None:
                self.trail.end(cut=self.filter.matched is not None or finish == "error")
            yield self._chunk(self._tail, finish, self._error_text(finish))
        finally:
            self.halt.cancel()  # a consumer that goes away (disconnect) stops the worker too
            worker.join(timeout=stall_timeout_s)

    _tail = ""
    code: str | None = None
    ticket = None
    logits_processors: list = []  # set per run (structured output); empty: plain sampling

    def _accept(self, ids: list[int], entries: list | None, now: float) -> str:
        if self.stats.ttft_s is None:
            self.stats.ttft_s = now - self.started
            self.first_token_at = now
        self.output_ids += ids
        self.stats.new_tokens = len(self.output_ids)
        self._update_rate(now)
        if self.trail is not None and entries is not None:
            return self._emit_text(self._decode_with_logprobs(ids, entries), final=False)
        text_ids = [i for i in ids if i not in self.stop_ids]
        return self._emit_text(self.decoder.add(text_ids) if text_ids else "", final=False)

    def _decode_with_logprobs(self, ids: list[int], entries: list) -> str:
        """Decode token by token, so each entry gets the text its token added (and each alternative the text
        it would have added); a stop token is not part of the reply, so it has no entry."""
        text = ""
        for token, entry in zip(ids, entries):
            if token in self.stop_ids:
                continue
            others = [t.token_id for t in entry.top if t.token_id != token]
            texts = dict(zip(others, self.decoder.peek(others))) if others else {}  # before the token joins
            piece = texts[token] = self.decoder.add([token])
            self.trail.add([named(entry, texts)], piece)
            text += piece
        return text

    def _emit_text(self, decoded: str, final: bool) -> str:
        shown = self.filter.feed(decoded) + (self.filter.flush() if final else "")
        if self.trail is not None:
            self.trail.show(len(shown))  # before the strip below: the trail counts decoded characters
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
        if SHUTDOWN.is_set():
            self.failure, self.code = GenerationError(SHUTDOWN_MESSAGE), SHUTTING_DOWN
            return "error"
        if self.cancel.cancelled:
            return "cancelled"
        return "length" if self.stats.new_tokens >= self.params.max_new_tokens else "stop"

    def _error_text(self, finish: str) -> str | None:
        if finish != "error":
            return None
        failure = self.failure
        if isinstance(failure, GenerationError):  # the engine's own reason (timeout, stall, shutdown)
            return str(failure)
        return f"{type(failure).__name__}: {failure}" if failure else "generation failed"

    def _chunk(self, delta: str, finish: str | None = None, error: str | None = None) -> Chunk:
        if finish:
            self.stats.elapsed_s = time.perf_counter() - self.started
        return Chunk(self.text, delta, replace(self.stats), finish, error, list(self.output_ids),
                     self.input_ids if finish else [], self.code if finish == "error" else None,
                     self.trail.take() if self.trail is not None else None)


class _Ticket:
    """A request in the batched loop, seen by the consumer like a worker thread: alive until finished."""

    def __init__(self):
        self.done = threading.Event()

    def is_alive(self) -> bool:
        return not self.done.is_set()

    def join(self, timeout: float | None = None) -> None:
        self.done.wait(timeout)
