"""The OpenAI-compatible API: `/v1/models`, `/v1/chat/completions` (streaming or not), `/metrics`.

Same registry, manager, adapters and engine as the UI. Errors use OpenAI's error JSON. A client that
disconnects cancels its generation through the request's CancelToken.
"""
from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
import uuid
from typing import Any, Literal, Optional, Union

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from adapters.base import AdapterError, ChatOptions, validate_messages
from adapters.replyparse import ReplyDelta, forced_call_prefix
from adapters.tools import ToolError, check_tools, tool_names

from .engine import CancelToken, Chunk, stream_chat
from .replies import reasoning_tokens, reply_parser, served_delta
from .hub import Hub, client_address, login_keys
from .limits import BUSY, RATE_LIMITED, REMOTE_ERROR, SHUTTING_DOWN, TIMEOUT, LimitError, is_text
from .manager import UNAVAILABLE, ModelLoadError
from .params import MAX_SEED, MAX_TEMPERATURE, MAX_TOP_LOGPROBS, MIN_SEED, MIN_TEMPERATURE, stop_problem
from .registry import UnknownModelError

STATUS = {BUSY: 429, RATE_LIMITED: 429, TIMEOUT: 504, REMOTE_ERROR: 502, SHUTTING_DOWN: 503}  # others: 400
MAX_JSON_DEPTH = 32  # a chat request nests 5 deep; deeper is refused before validation (no recursion)
SERVER_FAULT = "the server failed while generating this reply (details are in its log)"
_DONE = object()
log = logging.getLogger(__name__)


class ApiError(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error",
                 code: str | None = None, param: str | None = None, retry_after_s: float | None = None):
        super().__init__(message)
        self.status, self.type, self.code, self.param, self.retry_after_s = status, type_, code, param, retry_after_s

    def response(self) -> JSONResponse:
        body = {"error": {"message": str(self), "type": self.type, "param": self.param, "code": self.code}}
        headers = {"Retry-After": str(max(1, round(self.retry_after_s)))} if self.retry_after_s else None
        return JSONResponse(body, status_code=self.status, headers=headers)


def chunk_error(chunk: Chunk) -> ApiError:
    code = chunk.code or "server_error"
    status = STATUS.get(code, 400 if chunk.code else 500)
    kind = ("rate_limit_error" if status == 429 else "server_error" if status >= 500
            else "invalid_request_error")
    message = chunk.error or "generation failed"
    if not chunk.code:  # a fault, not a refusal: the exception's text goes to the log, not to the client
        log.error("generation failed: %s", message)
        message = SERVER_FAULT
    return ApiError(status, message, kind, code, retry_after_s=2.0 if status == 429 else None)


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Union[str, list[dict], None] = ""
    tool_calls: Optional[list[dict]] = None  # assistant
    tool_call_id: Optional[str] = None  # tool
    name: Optional[str] = None
    reasoning_content: Optional[str] = None  # assistant: a reasoning model's thinking, sent back

    def plain(self) -> dict:
        """The message as the adapters take it (adapters/tools.py checks the tool parts)."""
        role = "system" if self.role == "developer" else self.role
        message = {"role": role, "content": text_of(self.content)}
        if role == "assistant" and self.tool_calls:
            message["tool_calls"] = self.tool_calls
        if role == "assistant" and self.reasoning_content:
            message["reasoning_content"] = self.reasoning_content
        if role == "tool":
            message.update({k: v for k, v in (("tool_call_id", self.tool_call_id), ("name", self.name)) if v})
        return message

    @model_validator(mode="after")
    def _content_needed(self):
        if self.content is None and self.role != "assistant":  # OpenAI allows null for assistant turns only
            raise ValueError(f"a {self.role} message needs content (got null)")
        return self


class ChatRequest(BaseModel):
    """The fields the hub uses; others that OpenAI clients send are accepted and ignored."""

    model_config = ConfigDict(extra="allow")
    model: str
    messages: list[Message] = Field(min_length=1)
    stream: bool = False
    max_tokens: Optional[int] = Field(None, ge=1)
    max_completion_tokens: Optional[int] = Field(None, ge=1)
    temperature: Optional[float] = Field(None, ge=0, le=MAX_TEMPERATURE, allow_inf_nan=False)
    top_p: Optional[float] = Field(None, gt=0, le=1, allow_inf_nan=False)
    top_k: Optional[int] = Field(None, ge=0)  # not OpenAI's, but vLLM and others take it
    seed: Optional[int] = Field(None, ge=MIN_SEED, le=MAX_SEED)
    stop: Union[str, list[str], None] = None
    n: int = Field(1, ge=1, le=1)
    stream_options: Optional[dict] = None
    tools: Optional[list] = None
    tool_choice: Union[str, dict, None] = None
    chat_template_kwargs: Optional[dict] = None
    reasoning_effort: Optional[str] = None
    response_format: Optional[dict] = None
    logprobs: Optional[bool] = None
    top_logprobs: Optional[int] = Field(None, ge=0, le=MAX_TOP_LOGPROBS)

    @field_validator("temperature")
    @classmethod
    def _usable_temperature(cls, value):
        if value is not None and 0 < value < MIN_TEMPERATURE:  # divides the logits into inf/NaN
            raise ValueError(f"temperature must be 0 (greedy) or at least {MIN_TEMPERATURE:g}")
        return value

    @field_validator("stop")
    @classmethod
    def _few_stops(cls, value):
        stops = [value] if isinstance(value, str) else list(value or [])
        problem = stop_problem(stops)
        if problem:
            raise ValueError(problem)
        return stops

    def plain_messages(self) -> list[dict]:
        return [m.plain() for m in self.messages]

    def sampling(self) -> dict:
        values: dict[str, Any] = {"max_new_tokens": self.max_completion_tokens or self.max_tokens,
                                  "temperature": self.temperature, "top_p": self.top_p, "top_k": self.top_k,
                                  "seed": self.seed, "stop": tuple(self.stop or ())}
        if self.temperature == 0:
            values["greedy"] = True
        if self.logprobs:
            values["logprobs"] = self.top_logprobs or 0
        return values


def text_of(content) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    parts = []
    for part in content:
        if part.get("type") != "text":
            raise ApiError(400, f"content parts of type {part.get('type')!r} are not supported; send text",
                           param="messages")
        text = part.get("text", "")
        if not isinstance(text, str):
            raise ApiError(400, "a text content part needs a string `text`", param="messages")
        parts.append(text)
    return "".join(parts)


async def client_of(request: Request, hub: Hub) -> str:
    """The client a request counts against: its user or API key, else its address.

    A `user:password` token is checked (PBKDF2) on a thread, never on the event loop; failed tries back
    off per address and per user (auth.LoginThrottle), answered 429 until the wait is over."""
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer ") and hub.access.enabled:
        token = auth[7:].strip()
        client = hub.access.known_bearer(token)
        if client:
            return client
        user, sep, _ = token.partition(":")
        keys = login_keys(client_address(request.client.host if request.client else None), user if sep else None)
        wait = hub.logins.wait_s(*keys)
        if wait > 0:
            raise ApiError(429, f"too many failed logins: try again in {wait:.0f} s", "rate_limit_error",
                           "too_many_failed_logins", retry_after_s=wait)
        client = await asyncio.to_thread(hub.access.check_bearer, token)
        if client:
            hub.logins.succeeded(*keys)
            return client
        hub.logins.failed(*keys)
        raise ApiError(401, "invalid API key or credentials", code="invalid_api_key")
    if hub.access.enabled:
        raise ApiError(401, "this hub needs an API key: send `Authorization: Bearer KEY` "
                            "(an --api-key, or user:password of an --auth user)", code="invalid_api_key")
    return f"ip:{client_address(request.client.host if request.client else None)}"


def build_api_router(hub: Hub) -> APIRouter:
    router = APIRouter()

    @router.get("/v1/models")
    async def list_models(request: Request):
        try:
            await client_of(request, hub)
        except ApiError as e:
            return e.response()
        data = [{"id": s.id, "object": "model", "created": 0, "owned_by": "hub"}
                for s in hub.manager.states() if s.status != UNAVAILABLE]
        return {"object": "list", "data": data}

    @router.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        try:
            return await _chat(hub, request)
        except ApiError as e:
            return e.response()
        except Exception:  # a fault of the hub: OpenAI's JSON, and the details in the log only
            log.exception("chat completion failed")
            return ApiError(500, SERVER_FAULT, "server_error", "server_error").response()

    @router.get("/metrics")
    async def metrics(request: Request):
        try:
            await client_of(request, hub)
        except ApiError as e:
            return e.response()
        return hub.metrics.snapshot(hub.manager)

    return router


async def _chat(hub: Hub, request: Request):
    client = await client_of(request, hub)
    body = await _parse(request)
    try:
        hub.rate.charge(client)
    except LimitError as e:
        hub.metrics.count(body.model, e.code)
        raise ApiError(429, str(e), "rate_limit_error", e.code, retry_after_s=e.retry_after_s) from None
    if body.top_logprobs is not None and not body.logprobs:  # as OpenAI answers
        raise ApiError(400, "top_logprobs: needs logprobs set to true", param="top_logprobs")
    messages, tools, choice = _checked_tools(body)
    loaded = await _load(hub, body.model)
    chat = _chat_options(body, loaded, tools, choice)
    parser = reply_parser(loaded, messages, chat, tool_names(chat.tools) if choice != "none" else None)
    params = loaded.defaults.override(body.sampling())
    cancel = CancelToken()
    stream = stream_chat(loaded, messages, params, cancel, chat=chat, **_engine_fields(body, loaded, chat))
    pump = _Pump(stream, cancel, lambda last: hub.metrics.finished(body.model, last, client))
    # Until the response streams, a client that leaves (also while waiting for the model) cancels here.
    watcher = asyncio.create_task(_cancel_on_disconnect(request, cancel))
    try:
        first = await pump.next()
        if first.finish_reason == "error" and not first.text:
            raise chunk_error(first)
        reply = _Reply(body.model, parser, chat.reply_prefix, getattr(loaded, "tokenizer", None))
        if body.stream:
            watcher.cancel()  # from here Starlette notices the disconnect and closes reply.sse
            usage = bool((body.stream_options or {}).get("include_usage"))
            return StreamingResponse(reply.sse(pump, first, usage), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        last = first
        async for last in pump.chunks(first):
            reply.keep_logprobs(last)
    finally:
        watcher.cancel()
    if last.finish_reason == "error":
        raise chunk_error(last)
    return reply.completion(last)


def _checked_tools(body: ChatRequest) -> tuple[list[dict], list[dict] | None, str | None]:
    """Messages, tools and tool_choice ("none", "auto", "required" or a function's name), checked: 400 names the field."""
    messages = body.plain_messages()
    try:
        validate_messages(messages)
        tools = check_tools(body.tools) if body.tools is not None else None
    except ToolError as e:
        raise ApiError(400, str(e), param=e.param) from None
    except AdapterError as e:
        raise ApiError(400, str(e), param="messages") from None
    choice = body.tool_choice
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name") if choice.get("type") == "function" else None
        if not isinstance(name, str):
            raise ApiError(400, 'tool_choice: expected {"type": "function", "function": {"name": ...}}',
                           param="tool_choice")
        if name not in tool_names(tools):
            raise ApiError(400, f"tool_choice: no function {name!r} among the tools ({tool_names(tools)})",
                           param="tool_choice.function.name")
        return messages, tools, name
    if choice not in (None, "none", "auto", "required"):
        raise ApiError(400, f"tool_choice: {choice!r} is not none, auto, required or a named function",
                       param="tool_choice")
    if choice == "required" and not tools:
        raise ApiError(400, "tool_choice: 'required' needs tools", param="tool_choice")
    return messages, tools, choice


def _chat_options(body: ChatRequest, loaded, tools, choice) -> ChatOptions:
    """Tools as tool_choice has them, template variables, reasoning_effort "none": what the prompt is built with."""
    kwargs = dict(body.chat_template_kwargs or {})
    adapter, tokenizer = getattr(loaded, "adapter", None), getattr(loaded, "tokenizer", None)
    if body.reasoning_effort is not None and body.reasoning_effort not in ("none", "minimal", "low", "medium", "high"):
        raise ApiError(400, f"reasoning_effort: {body.reasoning_effort!r} is not none, minimal, low, medium or high",
                       param="reasoning_effort")
    variable = adapter.thinking_variable(tokenizer) if adapter is not None else None
    if body.reasoning_effort == "none" and variable:
        kwargs.setdefault(variable, False)
    if choice == "none":
        tools = None
    served = not loaded.backend.capabilities.exact_prompt_ids  # its server renders tools and parses calls
    if tools and not served and (adapter is None or not adapter.takes_tools(tokenizer)):
        family = f"its family, {adapter.family}," if adapter is not None else "it"
        raise ApiError(400, f"the model `{body.model}` cannot take tools: {family} has no tool-call format",
                       param="tools")
    prefix = ""
    if tools and not served and choice not in (None, "auto"):
        fmt = adapter.reply_format(tokenizer).tools
        prefix = forced_call_prefix(fmt, None if choice == "required" else choice)
    from adapters.generic import template_variables

    chat = ChatOptions(tools=tools, template_kwargs=kwargs, reply_prefix=prefix)
    try:
        template_variables(chat)
    except AdapterError as e:
        raise ApiError(400, str(e), param="chat_template_kwargs") from None
    return chat


def _engine_fields(body: ChatRequest, loaded, chat: ChatOptions) -> dict:
    """What stream_chat gets beside the messages: a local engine, response_format as a logits processor; a
    server that templates messages itself, tool_choice, response_format and reasoning_effort, which it enforces."""
    if loaded.backend.capabilities.exact_prompt_ids:
        return _constraint(body, loaded)
    from .structured import ConstraintError, json_schema_of

    fields = {}
    if chat.tools and body.tool_choice is not None:
        fields["tool_choice"] = body.tool_choice
    if body.reasoning_effort is not None:  # the server maps it onto its model's template, as it knows it
        fields["reasoning_effort"] = body.reasoning_effort
    try:
        if body.response_format is not None and json_schema_of(body.response_format) is not None:
            fields["response_format"] = body.response_format
    except ConstraintError as e:
        raise ApiError(400, str(e), param="response_format") from None
    return {"request_fields": fields}


def _constraint(body: ChatRequest, loaded) -> dict:
    """response_format json_object / json_schema as the engine's logits processor (demo/structured.py)."""
    kind = (body.response_format or {}).get("type", "text")
    if kind == "text":
        return {}
    if not loaded.backend.capabilities.logits_processors:
        raise ApiError(400, f"response_format: the model `{body.model}` runs on an engine that cannot "
                            f"constrain its decoding", param="response_format")
    from .structured import ConstraintError, json_constraint

    try:
        processor = json_constraint(loaded.tokenizer, body.response_format,
                                    loaded.adapter.stop_token_ids(loaded.tokenizer, loaded.extra_stop_ids),
                                    vocab_size(loaded))
    except ConstraintError as e:
        raise ApiError(400, str(e), param="response_format") from None
    return {"logits_processors": [processor]}


def vocab_size(loaded) -> int:
    """The width of the model's next-token scores: its output layer's, else (llama.cpp) the tokenizer's."""
    if getattr(loaded, "model", None) is not None:
        return loaded.model.get_output_embeddings().weight.shape[0]
    return len(loaded.tokenizer)


async def _parse(request: Request) -> ChatRequest:
    """The request, checked before anything shared is touched (the body's size is capped by demo/server.py)."""
    try:
        data = json.loads(await request.body(), parse_constant=_no_constant)
    except RecursionError:
        raise ApiError(400, f"the body nests deeper than {MAX_JSON_DEPTH} levels") from None
    except ValueError as e:
        raise ApiError(400, f"the body is not valid JSON: {e}") from None
    problem = _shape_problem(data)
    if problem:
        raise ApiError(400, problem)
    try:
        return ChatRequest.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ApiError(400, f"{where}: {first['msg']}", param=where) from None


def _no_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def _shape_problem(data) -> str | None:
    """Nesting deeper than MAX_JSON_DEPTH, or a string with a lone surrogate (JSON's \\ud800 escapes), which
    no tokenizer or JSON encoder takes. Walked without recursion."""
    stack = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            return f"the body nests deeper than {MAX_JSON_DEPTH} levels"
        if isinstance(value, dict):
            stack += [(k, depth) for k in value] + [(v, depth + 1) for v in value.values()]
        elif isinstance(value, list):
            stack += [(v, depth + 1) for v in value]
        elif isinstance(value, str) and not is_text(value):
            return "the body has a lone surrogate (\\ud800-\\udfff) in a string: not valid text"
    return None


async def _load(hub: Hub, model_id: str):
    try:
        entry = hub.registry.get(model_id)
    except UnknownModelError as e:
        raise ApiError(404, f"The model `{model_id}` does not exist. {e}", code="model_not_found",
                       param="model") from None
    state = hub.manager.state(entry.id)
    if state.status == UNAVAILABLE:
        raise ApiError(404, f"The model `{model_id}` is unavailable here: {state.detail}",
                       code="model_not_found", param="model")
    try:
        return await asyncio.to_thread(hub.manager.get, model_id)
    except ModelLoadError as e:
        raise ApiError(503, f"the model failed to load: {e}", "server_error", "model_load_failed") from None


class _Pump:
    """Runs the engine's (blocking) stream on a thread and hands its chunks to the event loop.

    `on_last` gets the final chunk on that thread, also when the client has gone (so stats show where
    a cancelled generation stopped).
    """

    def __init__(self, stream, cancel: CancelToken, on_last):
        self.cancel, self.queue, self.on_last = cancel, asyncio.Queue(), on_last
        loop = asyncio.get_running_loop()
        threading.Thread(target=self._run, args=(stream, loop), daemon=True, name="api-stream").start()

    def _run(self, stream, loop) -> None:
        def put(item):
            try:
                loop.call_soon_threadsafe(self.queue.put_nowait, item)
            except RuntimeError:  # the loop is gone (shutdown): stop generating
                self.cancel.cancel()

        chunk = None
        try:
            for chunk in stream:
                put(chunk)
        except BaseException as e:  # a crashed generation ends this reply, not the server
            put(e)
        put(_DONE)
        if chunk is not None:
            self.on_last(chunk)

    async def next(self):
        item = await self.queue.get()
        if isinstance(item, BaseException):
            log.error("generation crashed", exc_info=item)
            raise ApiError(500, SERVER_FAULT, "server_error", "server_error")
        return item

    async def chunks(self, first: Chunk):
        chunk = first
        while True:
            yield chunk
            if chunk.finish_reason:
                return
            chunk = await self.next()
            if chunk is _DONE:
                return


async def _cancel_on_disconnect(request: Request, cancel: CancelToken) -> None:
    while not cancel.cancelled:
        if await request.is_disconnected():
            cancel.cancel()
            return
        await asyncio.sleep(0.2)


class _Reply:
    """One completion's answer: the engine's text split by the family's parser into reasoning, content, calls."""

    def __init__(self, model: str, parser=None, prefix: str = "", tokenizer=None):
        self.model, self.parser, self.tokenizer = model, parser, tokenizer
        self.id, self.created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        self.calls = 0
        self.logprobs: list | None = None  # entries not yet sent (streaming) or all of them; None: none given
        if parser is not None and prefix:
            parser.feed(prefix)  # a forced call's opening: the prompt wrote it, the parser reads it as the reply's

    def split(self, chunk: Chunk) -> ReplyDelta:
        if self.parser is None:  # the engine's server split the reply (or there is nothing to split)
            return served_delta(chunk, self.calls)
        delta = self.parser.feed(chunk.delta)
        return delta.add(self.parser.finish()) if chunk.finish_reason else delta

    def completion(self, last: Chunk) -> dict:
        if self.parser is None:
            whole = ReplyDelta(last.reasoning, last.text, list(last.tool_calls))
        else:
            whole = self.split(Chunk(last.text, last.text, last.stats, last.finish_reason or "stop"))
        message = {"role": "assistant", "content": whole.content or (None if whole.tool_calls else ""),
                   "reasoning_content": whole.reasoning or None}
        if whole.tool_calls:
            message["tool_calls"] = [c.openai() for c in whole.tool_calls]
        self.calls = len(whole.tool_calls)
        return {"id": self.id, "object": "chat.completion", "created": self.created, "model": self.model,
                "choices": [{"index": 0, "message": message, "finish_reason": self.finish_of(last),
                             "logprobs": self.take_logprobs(whole=True)}],
                "usage": self.usage_of(last)}

    def keep_logprobs(self, chunk: Chunk) -> None:
        if chunk.logprobs is not None:
            self.logprobs = self.logprobs if self.logprobs is not None else []
            self.logprobs.extend(chunk.logprobs)

    def take_logprobs(self, whole: bool = False) -> dict | None:
        """OpenAI's `logprobs` of the entries kept since the last call (one per generated token, the
        reasoning's included, as vLLM reports them); None when none were given (not asked, or a remote that
        gives none), and in a stream event when none are new."""
        if self.logprobs is None or not (whole or self.logprobs):
            return None
        entries, self.logprobs = self.logprobs, []
        return {"content": [_token_logprob(e) | {"top_logprobs": [_token_logprob(t) for t in e.top]}
                            for e in entries], "refusal": None}

    def finish_of(self, chunk: Chunk) -> str:
        return "tool_calls" if self.calls and chunk.finish_reason != "length" else finish_of(chunk)

    def usage_of(self, chunk: Chunk) -> dict:
        usage = usage_of(chunk)
        usage["completion_tokens_details"] = {
            "reasoning_tokens": reasoning_tokens(chunk.output_ids, self.tokenizer, self.parser)}
        return usage

    def deltas(self, delta: ReplyDelta) -> list[dict]:
        """OpenAI stream deltas: reasoning_content (as vLLM and DeepSeek), content, then each whole call."""
        out = [{"reasoning_content": delta.reasoning}] if delta.reasoning else []
        out += [{"content": delta.content}] if delta.content else []
        for call in delta.tool_calls:
            out.append({"tool_calls": [{"index": self.calls, **call.openai()}]})
            self.calls += 1
        return out

    def event(self, delta: dict | None, finish: str | None = None, usage: dict | None = None) -> str:
        """One stream event; a choice's delta carries the logprob entries kept until then."""
        choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish,
                                             "logprobs": self.take_logprobs()}]
        payload = {"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                   "model": self.model, "choices": choices}
        if usage is not None:
            payload["usage"] = usage
        return f"data: {json.dumps(payload, ensure_ascii=False, separators=(',', ':'))}\n\n"

    async def sse(self, pump: _Pump, first: Chunk, include_usage: bool):
        """OpenAI's stream: a role delta, content deltas, a finish delta, [usage], [DONE].

        When the client goes away Starlette cancels this generator; `finally` then cancels the model.
        """
        last = first
        try:
            yield self.event({"role": "assistant", "content": ""})
            async for last in pump.chunks(first):
                self.keep_logprobs(last)  # sent with the next event (a parser may hold text back)
                for delta in self.deltas(self.split(last)):
                    yield self.event(delta)
            if last.finish_reason == "error":
                error = chunk_error(last)
                yield f"data: {json.dumps({'error': {'message': str(error), 'type': error.type, 'code': error.code}})}\n\n"
                return
            yield self.event({}, self.finish_of(last))
            if include_usage:
                yield self.event(None, usage=self.usage_of(last))
            yield "data: [DONE]\n\n"
        finally:
            pump.cancel.cancel()  # no-op after a normal end; stops the model when the client left


def _token_logprob(entry) -> dict:
    """A demo.stream.TokenLogprob as OpenAI writes one; `bytes` are its text's (None where the text is not
    whole characters)."""
    text = entry.token
    return {"token": text, "logprob": entry.logprob,
            "bytes": None if "\ufffd" in text else list(text.encode("utf-8"))}


def finish_of(chunk: Chunk) -> str:
    return "length" if chunk.finish_reason == "length" else "stop"


def usage_of(chunk: Chunk) -> dict:
    prompt, completion = chunk.stats.prompt_tokens, chunk.stats.new_tokens
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
