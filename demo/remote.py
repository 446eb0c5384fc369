"""A model served elsewhere by an OpenAI-compatible engine (vLLM, TGI, SGLang, Ollama, transformers serve).

`RemoteModel` stands where a LoadedModel stands: the manager "loads" it (no weights here), and its
backend (`OpenAIBackend`, the `openai` engine) takes the messages from the engine's `stream_chat` to
`stream_remote`, which yields the same Chunk objects as a local generation. So the dropdown, compare tab, arena and API treat both alike.

The server applies its own chat template and enforces what the request asks of it: `tools`, `tool_choice`,
`response_format` and `chat_template_kwargs` are forwarded (vLLM and SGLang enforce them there). What it
answers apart from the text (`reasoning_content`, `tool_calls`, streamed as deltas or in a whole message)
comes back in the chunks' reasoning and tool_calls, so the hub's API and UI show them as for a local model.
"""
from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Iterator, Sequence

import httpx

from adapters.replyparse import ToolCall

from .limits import (BUSY, CONTEXT_TOO_LONG, INVALID, REMOTE_CONCURRENCY, REMOTE_ERROR, SHUTDOWN, SHUTDOWN_MESSAGE,
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

    def request_body(self, messages: Sequence[dict], params: GenerationParams, fields: dict | None = None) -> dict:
        """The request to the server; `fields`: the client's tools, tool_choice, response_format, chat_template_kwargs."""
        greedy = params.greedy or params.temperature == 0
        body = {"model": self.remote_model, "stream": True, "stream_options": {"include_usage": True},
                "messages": [remote_message(m) for m in messages],
                "max_tokens": params.max_new_tokens, "temperature": 0.0 if greedy else params.temperature}
        if not greedy:
            body["top_p"] = params.top_p
        if params.seed is not None:
            body["seed"] = params.seed
        if params.stop:
            body["stop"] = list(params.stop)
        if params.logprobs is not None:  # forwarded; the remote's own logprobs come back as they are
            body["logprobs"], body["top_logprobs"] = True, params.logprobs
        return {**body, **(fields or {})}

    def stream_remote(self, messages, params, cancel=None, timeout_s: float | None = None,
                      stall_timeout_s: float = 120.0, fields: dict | None = None) -> Iterator:
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
            yield from stream.run(self.request_body(messages, params, fields))
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
        return self.model.stream_remote(prompt.messages or [], params, cancel, timeout_s, stall_timeout_s,
                                        prompt.request_fields)


def remote_message(message: dict) -> dict:
    """A message as the server takes it: role and content, and an assistant's calls or a tool result's id."""
    out = {"role": message["role"], "content": message["content"]}
    for key in ("tool_calls", "tool_call_id", "name"):
        if message.get(key):
            out[key] = message[key]
    return out


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
        self.reasoning, self.held = "", ""  # held: newlines at the reasoning's end, which may be its last
        self.calls = _ToolCalls()

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
                    for event in _events(response) if not _is_json(response) else [_whole_reply(response)]:
                        if finish:  # the reply has ended; the usage event (prompt tokens) may follow
                            self._usage(event)
                            continue
                        finish = self._finish_now()
                        if finish:
                            break
                        delta, reasoning, finish = self._read(event)
                        if self.stops.matched is not None:
                            finish = "stop"
                        if delta or reasoning or self.calls.new():
                            yield self._chunk(delta, reasoning)
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
        if finish not in ("error", "cancelled"):
            self.calls.complete()
        self.stats.elapsed_s = time.perf_counter() - self.started
        yield self._chunk(tail, "", _finish_of(finish), error, code)

    def _chunk(self, delta: str, reasoning: str, finish: str | None = None, error: str | None = None,
               code: str | None = None):
        self.calls.new()  # what this chunk carries is given out
        return self.Chunk(self.text, delta, _copy(self.stats), finish, error, code=code, reasoning=self.reasoning,
                          reasoning_delta=reasoning, tool_calls=list(self.calls.done), logprobs=self._logprobs())

    def _finish_now(self) -> str | None:
        if SHUTDOWN.is_set():
            raise RemoteError(SHUTDOWN_MESSAGE, SHUTTING_DOWN)
        if self.cancel.cancelled:
            return "cancelled"
        if time.perf_counter() - self.started > self.timeout_s:
            raise RemoteError(f"generation took longer than {self.timeout_s:g} s", TIMEOUT)
        return None

    def _read(self, event: dict) -> tuple[str, str, str | None]:
        """(answer text, reasoning text, finish reason) of one event; its tool-call pieces go to self.calls."""
        if "error" in event:
            raise RemoteError(f"remote: {_message(event['error'])}")
        self._usage(event)
        choices = event.get("choices") or [{}]
        delta = choices[0].get("delta") or {}
        text = delta.get("content") or ""
        # vLLM and DeepSeek say reasoning_content; newer vLLM also says reasoning
        reasoning = delta.get("reasoning_content") or delta.get("reasoning") or ""
        calls = delta.get("tool_calls") or []
        if text or reasoning or calls:
            self._count()
        if text:
            if self.trail is not None:
                self.trail.add(_entries(choices[0].get("logprobs")), text)
            text = self.stops.feed(text)
            if self.trail is not None:
                self.trail.show(len(text))
            self.text += text
        reasoning = self._reasoning(reasoning) if reasoning else ""
        for position, call in enumerate(calls):
            self.calls.add(call, position)
        return text, reasoning, choices[0].get("finish_reason")

    def _reasoning(self, piece: str) -> str:
        """Reasoning as the hub's own parser gives it: without the newlines that open and close the block (a
        server may send an empty block's "\n\n" as reasoning)."""
        text = self.held + piece
        if not self.reasoning:
            text = text.lstrip("\n")
        shown = text.rstrip("\n")
        self.held = text[len(shown):]
        self.reasoning += shown
        return shown

    def _usage(self, event: dict) -> None:
        usage = event.get("usage") or {}
        if usage:
            self.stats.prompt_tokens = usage.get("prompt_tokens", self.stats.prompt_tokens)
            self.stats.new_tokens = usage.get("completion_tokens", self.stats.new_tokens)

    def _logprobs(self) -> list | None:
        """The entries released with this chunk; None until the remote has sent any (it may not give them)."""
        if self.trail is None:
            return None
        entries = self.trail.take()
        self.got_logprobs = self.got_logprobs or bool(entries)
        return entries if self.got_logprobs else None

    def _count(self) -> None:
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


class _ToolCalls:
    """The remote's tool calls, assembled from OpenAI's stream pieces: the first piece of a call has its
    index, id and name, the next ones more of its arguments (text). A call is whole once a later index
    starts or the reply ends; only whole calls are given out (as the hub's own parser gives them)."""

    def __init__(self):
        self.open: dict[int, dict] = {}
        self.done: list[ToolCall] = []
        self.given = 0

    def add(self, piece: dict, position: int) -> None:
        index = piece.get("index", position) if isinstance(piece, dict) else None  # a whole message's calls
        if not isinstance(index, int):  # have no index: their order is it
            raise RemoteError(f"remote sent a tool call without a usable index: {str(piece)[:200]}")
        for earlier in sorted(i for i in self.open if i < index):
            self._close(earlier)
        call = self.open.setdefault(index, {"id": None, "name": "", "arguments": ""})
        function = piece.get("function") if isinstance(piece.get("function"), dict) else {}
        call["id"] = call["id"] or piece.get("id")
        call["name"] += function.get("name") or ""
        arguments = function.get("arguments")
        # arguments come as JSON text; a server that sends an object is taken at its word
        call["arguments"] += arguments if isinstance(arguments, str) else json.dumps(arguments) if arguments else ""

    def complete(self) -> None:
        for index in sorted(self.open):
            self._close(index)

    def new(self) -> list[ToolCall]:
        """The whole calls not given out yet (and now given)."""
        fresh, self.given = self.done[self.given:], len(self.done)
        return fresh

    def _close(self, index: int) -> None:
        call = self.open.pop(index)
        ids = {"id": call["id"]} if call["id"] else {}  # the server's id: its tool results will name it
        self.done.append(ToolCall(call["name"], call["arguments"] or "{}", **ids))


def _finish_of(finish: str | None) -> str:
    """The engine's finish reason for the remote's: tool_calls (and content_filter) end the reply as stop."""
    return finish if finish in ("length", "cancelled", "error") else "stop"


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


def _is_json(response: httpx.Response) -> bool:
    return response.headers.get("content-type", "").split(";")[0].strip() == "application/json"


def _whole_reply(response: httpx.Response) -> dict:
    """A server that answers a stream request with one whole completion: its message as one event."""
    response.read()
    try:
        payload = response.json()
    except ValueError:
        raise RemoteError(f"remote sent a reply that is not JSON: {response.text[:200]!r}") from None
    if not isinstance(payload, dict) or "error" in payload:
        return payload if isinstance(payload, dict) else {"error": str(payload)[:200]}
    choice = (payload.get("choices") or [{}])[0]
    return {"choices": [{"delta": choice.get("message") or {}, "finish_reason": choice.get("finish_reason")}],
            "usage": payload.get("usage")}


def _http_error(response: httpx.Response) -> RemoteError:
    response.read()
    try:
        payload = response.json()
        detail = _message(payload.get("error", payload))
    except ValueError:
        detail = response.text[:300] or response.reason_phrase
    # 400 and 422: the server refuses the request itself (e.g. tools its engine was not started for)
    code = BUSY if response.status_code in (429, 503) else INVALID if response.status_code in (400, 422) else REMOTE_ERROR
    if "context" in detail and ("length" in detail or "long" in detail):
        code = CONTEXT_TOO_LONG
    return RemoteError(f"remote answered {response.status_code}: {detail}", code)


def _message(error) -> str:
    if isinstance(error, dict):
        return str(error.get("message") or error.get("detail") or error)
    return str(error)


def _copy(stats):
    return replace(stats)
