"""A model served elsewhere by an OpenAI-compatible engine (vLLM, TGI, SGLang, Ollama, transformers serve).

`RemoteModel` stands where a LoadedModel stands: the manager "loads" it (no weights here), and its
backend (`OpenAIBackend`, the `openai` engine) takes the messages from the engine's `stream_chat` to
`stream_remote`, which yields the same Chunk objects as a local generation. So the dropdown, compare tab, arena and API treat both alike.
"""
from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Iterator, Sequence

import httpx

from .limits import (BUSY, CONTEXT_TOO_LONG, REMOTE_CONCURRENCY, REMOTE_ERROR, SHUTDOWN, SHUTDOWN_MESSAGE,
                     SHUTTING_DOWN, TIMEOUT, Gate)
from .logprobs import LogprobTrail, finite
from .params import GenerationParams
from .registry import Limits, ModelEntry
from .textstream import StopStringFilter
from .stream import OPENAI, Capabilities, TokenLogprob

CONNECT_TIMEOUT_S = 10.0


class RemoteError(RuntimeError):
    def __init__(self, message: str, code: str = REMOTE_ERROR):
        super().__init__(message)
        self.code = code


@dataclass
class RemoteModel:
    id: str
    base_url: str
    remote_model: str
    api_key: str | None
    defaults: GenerationParams
    context_length: int | None = None
    concurrency: int = REMOTE_CONCURRENCY
    limits: Limits = field(default_factory=Limits, repr=False)
    gate: Gate = field(default_factory=Gate, repr=False)
    system_prompt: str | None = None  # the registry's, for conversations that bring no system message
    remote = True
    memory_bytes = 0  # the weights live on the remote
    load_seconds = 0.0
    engine = OPENAI
    # What the Models tab and /v1/models read of a loaded model: the weights' format is the remote's business.
    quant_format, quant_label, bits = "remote", "served by the remote", None

    @property
    def backend(self) -> "OpenAIBackend":
        return OpenAIBackend(self)

    @property
    def decode_plan(self) -> str:
        return self.backend.decode_plan

    base_id, preset = None, False  # shares no one's weights

    def __post_init__(self):
        self.slots = threading.BoundedSemaphore(self.concurrency)  # the rest wait here, in the gate's count
        self.lock = self.slots

    @classmethod
    def connect(cls, entry: ModelEntry) -> "RemoteModel":
        key = None
        if entry.api_key_env:
            key = os.environ.get(entry.api_key_env)
            if not key:
                raise RemoteError(f"environment variable {entry.api_key_env} (the API key for "
                                  f"{entry.base_url}) is not set")
        defaults = GenerationParams().override(entry.generation.model_dump())
        return cls(entry.id, entry.base_url.rstrip("/"), entry.remote_model or entry.id, key, defaults,
                   entry.context_length, entry.concurrency or REMOTE_CONCURRENCY, system_prompt=entry.system_prompt)

    def request_body(self, messages: Sequence[dict], params: GenerationParams) -> dict:
        greedy = params.greedy or params.temperature == 0
        body = {"model": self.remote_model, "stream": True, "stream_options": {"include_usage": True},
                "messages": [{"role": m["role"], "content": m["content"]} for m in messages],
                "max_tokens": params.max_new_tokens, "temperature": 0.0 if greedy else params.temperature}
        if not greedy:
            body["top_p"] = params.top_p
        if params.seed is not None:
            body["seed"] = params.seed
        if params.stop:
            body["stop"] = list(params.stop)
        if params.logprobs is not None:  # forwarded; the remote's own logprobs come back as they are
            body["logprobs"], body["top_logprobs"] = True, params.logprobs
        return body

    def stream_remote(self, messages, params, cancel=None, timeout_s: float | None = None,
                      stall_timeout_s: float = 120.0) -> Iterator:
        from .stream import CancelToken, Chunk, Stats

        cancel = cancel or CancelToken()
        timeout_s = timeout_s if timeout_s is not None else self.limits.generation_timeout_s
        stream = _RemoteStream(self, params, cancel, timeout_s, stall_timeout_s, Chunk, Stats())
        queued = time.perf_counter()
        if not _acquire(self.slots, cancel):
            yield Chunk("", "", stream.stats, "cancelled")
            return
        stream.stats.queue_s = time.perf_counter() - queued
        try:
            yield from stream.run(self.request_body(messages, params))
        finally:
            self.slots.release()


class OpenAIBackend:
    """The openai engine (demo.stream.Backend) of a RemoteModel: the server applies its own chat template,
    so it gets the messages; sampling and batching are the server's."""

    name = OPENAI
    capabilities = Capabilities(batching=True, exact_prompt_ids=False, logits_processors=False)

    def __init__(self, model: RemoteModel):
        self.model = model

    @property
    def decode_plan(self) -> str:
        return f"remote: {self.model.base_url} (up to {self.model.concurrency} at once)"

    def memory_bytes(self) -> int:
        return 0  # the weights live on the remote

    def unload(self) -> None:
        pass

    def stream(self, prompt, params, cancel, stall_timeout_s: float = 120.0, timeout_s: float | None = None):
        return self.model.stream_remote(prompt.messages or [], params, cancel, timeout_s, stall_timeout_s)


def _acquire(slots: threading.Semaphore, cancel) -> bool:
    while not slots.acquire(timeout=0.25):
        if cancel.cancelled:
            return False
    return True


class _RemoteStream:
    """One remote generation: POST, read the server-sent events, turn each delta into a Chunk."""

    def __init__(self, model, params, cancel, timeout_s, stall_timeout_s, chunk_type, stats):
        self.model, self.params, self.cancel = model, params, cancel
        self.timeout_s, self.stall_timeout_s = timeout_s, stall_timeout_s
        self.Chunk, self.stats, self.text = chunk_type, stats, ""
        # The remote gets `stop` too; this holds it back here as well, for a server that ignores it.
        self.stops = StopStringFilter(params.stop)
        # The remote's logprob entries, held back and cut with their text; None: not asked, or none sent yet
        self.trail = LogprobTrail() if params.logprobs is not None else None
        self.got_logprobs = False

    def run(self, body: dict) -> Iterator:
        self.started = time.perf_counter()
        headers = {"Authorization": f"Bearer {self.model.api_key}"} if self.model.api_key else {}
        timeout = httpx.Timeout(self.stall_timeout_s, connect=CONNECT_TIMEOUT_S)
        finish, error, code = None, None, None
        try:
            with httpx.Client(timeout=timeout) as client:
                with client.stream("POST", f"{self.model.base_url}/chat/completions", json=body,
                                   headers=headers) as response:
                    if response.status_code != 200:
                        raise _http_error(response)
                    for event in _events(response):
                        if finish:  # the reply has ended; the usage event (prompt tokens) may follow
                            self._read(event)
                            continue
                        finish = self._finish_now()
                        if finish:
                            break
                        delta, finish = self._read(event)
                        if self.stops.matched is not None:
                            finish = "stop"
                        if delta:
                            yield self.Chunk(self.text, delta, _copy(self.stats), logprobs=self._logprobs())
        except RemoteError as e:
            finish, error, code = "error", str(e), e.code
        except httpx.HTTPError as e:
            if not finish:  # a stream cut while only its usage was still to come leaves the reply whole
                finish, code = "error", REMOTE_ERROR
                error = f"remote {self.model.base_url}: {type(e).__name__}: {e or 'no answer'}"
        if finish == "error" and code == TIMEOUT:
            error = error or f"generation took longer than {self.timeout_s:g} s"
        tail = self.stops.flush()
        self.text += tail
        if self.trail is not None:
            self.trail.show(len(tail))
            self.trail.end(cut=self.stops.matched is not None or finish == "error")
        self.stats.elapsed_s = time.perf_counter() - self.started
        yield self.Chunk(self.text, tail, _copy(self.stats), finish or "stop", error, code=code,
                         logprobs=self._logprobs())

    def _finish_now(self) -> str | None:
        if SHUTDOWN.is_set():
            raise RemoteError(SHUTDOWN_MESSAGE, SHUTTING_DOWN)
        if self.cancel.cancelled:
            return "cancelled"
        if time.perf_counter() - self.started > self.timeout_s:
            raise RemoteError(f"generation took longer than {self.timeout_s:g} s", TIMEOUT)
        return None

    def _read(self, event: dict) -> tuple[str, str | None]:
        if "error" in event:
            raise RemoteError(f"remote: {_message(event['error'])}")
        usage = event.get("usage") or {}
        if usage:
            self.stats.prompt_tokens = usage.get("prompt_tokens", self.stats.prompt_tokens)
            self.stats.new_tokens = usage.get("completion_tokens", self.stats.new_tokens)
        choices = event.get("choices") or [{}]
        delta = (choices[0].get("delta") or {}).get("content") or ""
        if delta:
            self._count(delta)
            if self.trail is not None:
                self.trail.add(_entries(choices[0].get("logprobs")), delta)
            delta = self.stops.feed(delta)
            if self.trail is not None:
                self.trail.show(len(delta))
            self.text += delta
        return delta, choices[0].get("finish_reason")

    def _logprobs(self) -> list | None:
        """The entries released with this chunk; None until the remote has sent any (it may not give them)."""
        if self.trail is None:
            return None
        entries = self.trail.take()
        self.got_logprobs = self.got_logprobs or bool(entries)
        return entries if self.got_logprobs else None

    def _count(self, delta: str) -> None:
        now = time.perf_counter()
        if self.stats.ttft_s is None:
            self.stats.ttft_s, self.first_at = now - self.started, now
        self.stats.new_tokens += 1  # one event per token on the engines we know; usage corrects it
        self.stats.elapsed_s = now - self.started
        span = now - self.first_at
        self.stats.tokens_per_s = (self.stats.new_tokens - 1) / span if span > 0 else 0.0


def _entries(logprobs) -> list[TokenLogprob]:
    """An OpenAI `logprobs` object's content entries as the hub's records (an odd one is skipped)."""
    content = logprobs.get("content") if isinstance(logprobs, dict) else None
    out = []
    for item in content if isinstance(content, list) else []:
        try:
            top = tuple(TokenLogprob(str(t["token"]), finite(float(t["logprob"])))
                        for t in item.get("top_logprobs") or [])
            out.append(TokenLogprob(str(item["token"]), finite(float(item["logprob"])), top=top))
        except (KeyError, TypeError, ValueError, AttributeError):
            continue
    return out


def _events(response: httpx.Response) -> Iterator[dict]:
    for line in response.iter_lines():
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            return
        try:
            yield json.loads(data)
        except ValueError:
            raise RemoteError(f"remote sent an event that is not JSON: {data[:200]!r}") from None


def _http_error(response: httpx.Response) -> RemoteError:
    response.read()
    try:
        payload = response.json()
        detail = _message(payload.get("error", payload))
    except ValueError:
        detail = response.text[:300] or response.reason_phrase
    code = BUSY if response.status_code in (429, 503) else REMOTE_ERROR
    if "context" in detail and ("length" in detail or "long" in detail):
        code = CONTEXT_TOO_LONG
    return RemoteError(f"remote answered {response.status_code}: {detail}", code)


def _message(error) -> str:
    if isinstance(error, dict):
        return str(error.get("message") or error.get("detail") or error)
    return str(error)


def _copy(stats):
    return replace(stats)
