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

from .engine import CancelToken, Chunk, stream_chat
from .hub import Hub, client_address, login_keys
from .limits import BUSY, RATE_LIMITED, REMOTE_ERROR, SHUTTING_DOWN, TIMEOUT, LimitError, is_text
from .manager import UNAVAILABLE, ModelLoadError
from .params import MAX_SEED, MAX_TEMPERATURE, MIN_SEED, MIN_TEMPERATURE, stop_problem
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
    role: Literal["system", "developer", "user", "assistant"]
    content: Union[str, list[dict], None] = ""

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
        return [{"role": "system" if m.role == "developer" else m.role, "content": text_of(m.content)}
                for m in self.messages]

    def sampling(self) -> dict:
        values: dict[str, Any] = {"max_new_tokens": self.max_completion_tokens or self.max_tokens,
                                  "temperature": self.temperature, "top_p": self.top_p, "top_k": self.top_k,
                                  "seed": self.seed, "stop": tuple(self.stop or ())}
        if self.temperature == 0:
            values["greedy"] = True
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
    loaded = await _load(hub, body.model)
    params = loaded.defaults.override(body.sampling())
    cancel = CancelToken()
    stream = stream_chat(loaded, body.plain_messages(), params, cancel)
    pump = _Pump(stream, cancel, lambda last: hub.metrics.finished(body.model, last, client))
    # Until the response streams, a client that leaves (also while waiting for the model) cancels here.
    watcher = asyncio.create_task(_cancel_on_disconnect(request, cancel))
    try:
        first = await pump.next()
        if first.finish_reason == "error" and not first.text:
            raise chunk_error(first)
        reply = _Reply(body.model)
        if body.stream:
            watcher.cancel()  # from here Starlette notices the disconnect and closes reply.sse
            usage = bool((body.stream_options or {}).get("include_usage"))
            return StreamingResponse(reply.sse(pump, first, usage), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        last = await pump.last(first)
    finally:
        watcher.cancel()
    if last.finish_reason == "error":
        raise chunk_error(last)
    return reply.completion(last)


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

    async def last(self, first: Chunk) -> Chunk:
        last = first
        async for last in self.chunks(first):
            pass
        return last


async def _cancel_on_disconnect(request: Request, cancel: CancelToken) -> None:
    while not cancel.cancelled:
        if await request.is_disconnected():
            cancel.cancel()
            return
        await asyncio.sleep(0.2)


class _Reply:
    def __init__(self, model: str):
        self.model = model
        self.id, self.created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())

    def completion(self, last: Chunk) -> dict:
        return {"id": self.id, "object": "chat.completion", "created": self.created, "model": self.model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": last.text},
                             "finish_reason": finish_of(last), "logprobs": None}],
                "usage": usage_of(last)}

    def event(self, delta: dict | None, finish: str | None = None, usage: dict | None = None) -> str:
        choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish,
                                             "logprobs": None}]
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
                if last.delta:
                    yield self.event({"content": last.delta})
            if last.finish_reason == "error":
                error = chunk_error(last)
                yield f"data: {json.dumps({'error': {'message': str(error), 'type': error.type, 'code': error.code}})}\n\n"
                return
            yield self.event({}, finish_of(last))
            if include_usage:
                yield self.event(None, usage=usage_of(last))
            yield "data: [DONE]\n\n"
        finally:
            pump.cancel.cancel()  # no-op after a normal end; stops the model when the client left


def finish_of(chunk: Chunk) -> str:
    return "length" if chunk.finish_reason == "length" else "stop"


def usage_of(chunk: Chunk) -> dict:
    prompt, completion = chunk.stats.prompt_tokens, chunk.stats.new_tokens
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
