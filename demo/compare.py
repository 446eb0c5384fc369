"""Stream several models on the same conversation at once, fairly.

Each model runs on its own thread (load, then `stream_chat`) with its own CancelToken, and writes its
latest state into its own pane. The consumer never reads a shared FIFO of chunks, where a fast model's
backlog would queue ahead of a slow model's tokens: it waits until any pane changed and yields a
snapshot of *every* pane. A chunk carries the whole reply so far, so skipping intermediate chunks loses
nothing; a worker never waits for the consumer or for another worker. So every snapshot shows each
model's newest text, and a slow model is never behind a fast one in the queue, because there is none.
A model that fails (load error, crash) ends its own pane with the error; the others go on.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Callable, Iterator, Sequence

from adapters.base import NO_OPTIONS, ChatOptions

from .engine import CancelToken, Stats, stream_chat
from .replies import parse_chunks, reply_parser
from .loaded import LoadedModel
from .params import GenerationParams

MAX_MODELS = 4
FAULT = "the server failed while writing this reply (details are in its log)"
log = logging.getLogger(__name__)
WAITING, LOADING, STREAMING, DONE = "waiting", "loading", "streaming", "done"


@dataclass
class Pane:
    model_id: str
    text: str = ""  # the answer (a reasoning model's thinking is apart, in `reasoning`)
    state: str = WAITING
    finish_reason: str | None = None  # stop | length | cancelled | error
    error: str | None = None
    stats: Stats | None = None
    params: dict = field(default_factory=dict)  # the settings this model generated with
    started: float = field(default_factory=time.perf_counter)
    reasoning: str = ""
    thinking_s: float | None = None  # set when the answer starts
    template_kwargs: dict = field(default_factory=dict)  # the chat-template variables it got (the Thinking switch)

    @property
    def finished(self) -> bool:
        return self.state == DONE

    def footer(self) -> str:
        """The pane's stats line: progress while running, tokens / speed / first token when done."""
        if self.state in (WAITING, LOADING):
            return f"loading {self.model_id}… {time.perf_counter() - self.started:.0f} s"
        line = self.stats.summary() if self.stats else ""
        if self.finish_reason == "error":
            return f"⚠️ {self.error}" + (f" · {line}" if self.stats and self.stats.new_tokens else "")
        if self.finish_reason in ("length", "cancelled"):
            return f"{line} · {self.finish_reason}"
        return line if self.finished else f"{line} · streaming"


class Comparison:
    """One generation round over several models; `stream()` yields snapshots of all panes."""

    def __init__(self, load: Callable[[str], LoadedModel], requests: Sequence[tuple[str, list[dict]]],
                 params_for: Callable[[LoadedModel], GenerationParams],
                 chat_for: Callable[[LoadedModel], ChatOptions] = lambda loaded: NO_OPTIONS):
        """`requests`: (model id, the messages that model answers); `params_for`: settings per model;
        `chat_for`: what each model's prompt gets besides the messages (e.g. the Thinking switch's variable)."""
        ids = [model_id for model_id, _ in requests]
        if len(set(ids)) != len(ids):
            raise ValueError(f"each model may appear once: {', '.join(ids)}")
        self.load, self.requests, self.params_for, self.chat_for = load, list(requests), params_for, chat_for
        self.panes = [Pane(model_id) for model_id in ids]
        self.cancels = [CancelToken() for _ in ids]
        self._changed = threading.Condition()
        self._version = 0
        self._threads: list[threading.Thread] = []

    def start(self) -> "Comparison":
        for index, (model_id, messages) in enumerate(self.requests):
            thread = threading.Thread(target=self._run, args=(index, messages), name=f"compare-{model_id}",
                                      daemon=True)
            self._threads.append(thread)
            thread.start()
        return self

    def cancel(self, index: int) -> None:
        if 0 <= index < len(self.cancels):
            self.cancels[index].cancel()

    def cancel_all(self) -> None:
        for token in self.cancels:
            token.cancel()

    @property
    def done(self) -> bool:
        return all(p.finished for p in self.panes)

    def snapshot(self) -> list[Pane]:
        with self._changed:
            return [replace(p) for p in self.panes]

    def stream(self, tick_s: float = 0.1) -> Iterator[list[Pane]]:
        """Snapshots of all panes, at most one per `tick_s` (loading timers tick too), until all are done.

        Closing the generator (a disconnect, Clear) cancels every model still running.
        """
        seen = -1
        try:
            while True:
                with self._changed:
                    self._changed.wait_for(lambda: self._version != seen, timeout=tick_s)
                    seen = self._version
                    panes = [replace(p) for p in self.panes]
                yield panes
                if all(p.finished for p in panes):
                    return
                time.sleep(tick_s / 2)  # coalesce bursts: a fast model must not flood the client
        finally:
            self.cancel_all()

    def _update(self, index: int, **values) -> None:
        with self._changed:
            self.panes[index] = replace(self.panes[index], **values)
            self._version += 1
            self._changed.notify_all()

    def _run(self, index: int, messages: list[dict]) -> None:
        cancel = self.cancels[index]
        try:
            self._update(index, state=LOADING)
            loaded = self.load(self.panes[index].model_id)
            if cancel.cancelled:
                self._update(index, state=DONE, finish_reason="cancelled", stats=Stats())
                return
            params, chat = self.params_for(loaded), self.chat_for(loaded)
            self._update(index, state=STREAMING, params=params.as_dict(), template_kwargs=dict(chat.template_kwargs))
            parser, started = reply_parser(loaded, messages, chat), time.perf_counter()
            for parsed in parse_chunks(stream_chat(loaded, messages, params, cancel, chat=chat), parser,
                                       getattr(loaded, "tokenizer", None)):
                chunk, thinking_s = parsed.chunk, self.panes[index].thinking_s
                if parsed.reasoning and thinking_s is None and (chunk.finish_reason or not parsed.in_reasoning):
                    thinking_s = time.perf_counter() - started
                self._update(index, text=parsed.content, reasoning=parsed.reasoning, thinking_s=thinking_s,
                             stats=chunk.stats, state=DONE if chunk.finish_reason else STREAMING,
                             finish_reason=chunk.finish_reason, error=shown_error(chunk))
            if not self.panes[index].finished:  # a stream that ended without a last chunk
                self._update(index, state=DONE, finish_reason="error", error="the stream ended early")
        except Exception as e:  # this model's failure is this pane's, never the others'
            self._update(index, state=DONE, finish_reason="error", error=str(e) or type(e).__name__)


def shown_error(chunk) -> str | None:
    """A refusal's reason as it is; a fault's exception text goes to the log, not the page."""
    if chunk.finish_reason != "error" or chunk.code:
        return chunk.error
    log.error("compare reply failed: %s", chunk.error)
    return FAULT


def own_defaults(loaded: LoadedModel) -> GenerationParams:
    return loaded.defaults


def shared_settings(values: dict) -> Callable[[LoadedModel], GenerationParams]:
    """The same sampling values for every model, over each model's defaults for anything not given."""
    return lambda loaded: loaded.defaults.override(values)
