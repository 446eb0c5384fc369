"""Limits that keep a public demo alive: caps on input, a bounded wait per model, a per-client rate.

Every caller goes through them: the engine checks caps and admission on each request (so the UI tabs,
the compare tab, the arena and the API all get them), and the UI and API entry points charge the
per-client rate limit with the identity they know (user, API key or address).
"""
from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import replace
from typing import Sequence

from .registry import Limits
from .stream import SHUTDOWN  # noqa: F401  (re-exported: the server sets it)

# Error codes carried by Chunk.code and mapped to HTTP statuses by the API.
BUSY, RATE_LIMITED = "server_busy", "rate_limit_exceeded"
MESSAGE_TOO_LONG, TOO_MANY_TURNS = "message_too_long", "too_many_turns"
CONTEXT_TOO_LONG, TIMEOUT, INVALID = "context_length_exceeded", "timeout", "invalid_request"
REMOTE_ERROR = "remote_error"
SHUTTING_DOWN = "server_shutdown"

# Set once when the server is told to stop (SIGTERM, Ctrl-C; demo/server.py): every CancelToken reads as
# cancelled, so each open generation ends within a step, with a final message that says why.
SHUTDOWN_MESSAGE = "the server is shutting down; this reply was cut short (try again in a moment)"

REMOTE_CONCURRENCY = 8  # a serving engine batches; the hub lets this many through to it at once


class LimitError(Exception):
    """A request refused by a limit; `code` says which (see the constants above)."""

    def __init__(self, code: str, message: str, retry_after_s: float | None = None):
        super().__init__(message)
        self.code, self.retry_after_s = code, retry_after_s


def check_messages(limits: Limits, messages: Sequence[dict]) -> None:
    turns = [m for m in messages if m.get("role") != "system"]
    if len(turns) > limits.max_turns:
        raise LimitError(TOO_MANY_TURNS, f"the conversation has {len(turns)} messages; this hub allows "
                                         f"{limits.max_turns}. Start a new one or clear older turns.")
    for m in messages:
        content = m.get("content")
        if isinstance(content, str) and len(content) > limits.max_message_chars:
            raise LimitError(MESSAGE_TOO_LONG, f"a {m.get('role', '')} message is {len(content):,} characters; "
                                               f"this hub allows {limits.max_message_chars:,}.")
        if not isinstance(content, str) or not is_text(content):
            raise LimitError(INVALID, f"a {m.get('role', '')} message is not valid text (a lone surrogate, "
                                      "or not a string)")


def is_text(value: str) -> bool:
    """Whether `value` is encodable text: JSON's \\ud800 escapes give lone surrogates, which no tokenizer takes."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_params(params) -> None:
    """Sampling values outside the documented ranges (demo/params.py) are refused before any work."""
    problem = params.problem()
    if problem is None and not all(is_text(s) for s in params.stop):
        problem = "a stop string is not valid text (a lone surrogate)"
    if problem:
        raise LimitError(INVALID, problem)


def capped(limits: Limits, params):
    """`params` with max_new_tokens clamped to the hub's cap."""
    if params.max_new_tokens > limits.max_new_tokens:
        return replace(params, max_new_tokens=limits.max_new_tokens)
    return params


class Gate:
    """Admission for one model: `concurrency` generations run, `queue_size` more wait, the rest are busy.

    The gate only counts; the model's own lock (local) or semaphore (remote) does the serializing.
    """

    def __init__(self, concurrency: int = 1, queue_size: int = 8):
        self.concurrency, self.queue_size = concurrency, queue_size
        self.in_flight = 0
        self.rejected = 0
        self._lock = threading.Lock()

    def enter(self, model_id: str) -> None:
        with self._lock:
            if self.in_flight >= self.concurrency + self.queue_size:
                self.rejected += 1
                raise LimitError(BUSY, f"{model_id} is busy ({self.in_flight} requests running or waiting); "
                                       "try again in a moment.", retry_after_s=2.0)
            self.in_flight += 1

    def leave(self) -> None:
        with self._lock:
            self.in_flight -= 1


class RateLimiter:
    """At most `per_minute` requests per client in any 60 s window (0: unlimited)."""

    def __init__(self, per_minute: int, window_s: float = 60.0):
        self.per_minute, self.window_s = per_minute, window_s
        self._hits: dict[str, deque] = {}
        self._lock = threading.Lock()

    def charge(self, client: str) -> None:
        if not self.per_minute:
            return
        now = time.monotonic()
        with self._lock:
            hits = self._hits.setdefault(client, deque())
            while hits and now - hits[0] > self.window_s:
                hits.popleft()
            if len(hits) >= self.per_minute:
                wait = self.window_s - (now - hits[0])
                raise LimitError(RATE_LIMITED, f"too many requests: {self.per_minute} per minute allowed; "
                                               f"try again in {wait:.0f} s.", retry_after_s=wait)
            hits.append(now)
            if len(self._hits) > 10_000:  # forget idle clients so the table cannot grow without end
                self._prune(now)

    def _prune(self, now: float) -> None:
        for key in [k for k, h in self._hits.items() if not h or now - h[-1] > self.window_s]:
            del self._hits[key]
