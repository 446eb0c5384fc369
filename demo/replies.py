"""A streamed reply split into reasoning, answer and tool calls: the engine's chunks through the family's parser.

The engine streams text; the family's `reply_format` says whether that text holds `<think>` reasoning and
in which format it writes tool calls; `adapters.replyparse.ReplyParser` does the splitting. A model served
elsewhere has no parser here: its server splits the reply, and its chunks carry the reasoning and calls
(`served_delta`). The API and the UI read `Parsed` values; the engine stays unaware of both.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Sequence

from adapters.base import NO_OPTIONS, ChatOptions
from adapters.replyparse import THINK_END, ReplyDelta, ReplyParser, ToolCall

from .engine import Chunk


@dataclass
class Parsed:
    chunk: Chunk
    delta: ReplyDelta  # what this chunk adds
    reasoning: str = ""  # so far
    content: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    reasoning_tokens: int = 0  # on the last chunk: output tokens up to and including </think>
    in_reasoning: bool = False  # the reply is still thinking (no answer or call yet)


def reply_parser(loaded, messages: Sequence[dict], chat: ChatOptions = NO_OPTIONS,
                 tool_names: Sequence[str] | None = None) -> ReplyParser | None:
    """The parser for this model's replies to `messages`; None for a model served elsewhere (no adapter)."""
    adapter = getattr(loaded, "adapter", None)
    if adapter is None or getattr(loaded, "remote", False):
        return None
    try:
        opened = adapter.opens_thinking(loaded.tokenizer, messages, chat)
    except Exception:  # the prompt itself will fail to build, and say why
        opened = False
    return ReplyParser(adapter.reply_format(loaded.tokenizer), in_reasoning=opened, tool_names=tool_names)


def parse_chunks(chunks: Iterator[Chunk], parser: ReplyParser | None, tokenizer=None,
                 prefix: str = "") -> Iterator[Parsed]:
    """Each chunk with its reasoning / content / tool-call delta; `prefix` is reply text the prompt wrote."""
    reasoning = content = ""
    calls: list[ToolCall] = []
    if parser is not None and prefix:
        parser.feed(prefix)  # e.g. "<tool_call>\n" of a forced call: part of the call, not shown
    for chunk in chunks:
        if parser is None:
            delta = served_delta(chunk, len(calls))
        else:
            delta = parser.feed(chunk.delta)
            if chunk.finish_reason:
                delta = delta.add(parser.finish())
        reasoning, content, calls = reasoning + delta.reasoning, content + delta.content, calls + delta.tool_calls
        thinking = parser.in_reasoning if parser is not None else bool(reasoning) and not (content or calls)
        parsed = Parsed(chunk, delta, reasoning, content, list(calls), in_reasoning=thinking)
        if chunk.finish_reason:
            parsed.reasoning_tokens = reasoning_tokens(chunk.output_ids, tokenizer, parser)
        yield parsed


def served_delta(chunk: Chunk, calls_seen: int) -> ReplyDelta:
    """What a chunk adds when its engine split the reply itself (a remote server); for any other engine its
    reasoning and calls are empty, so this is its text."""
    return ReplyDelta(chunk.reasoning_delta, chunk.delta, list(chunk.tool_calls[calls_seen:]))


def reasoning_tokens(output_ids: list[int], tokenizer, parser: ReplyParser | None) -> int:
    if parser is None or not parser.think:
        return 0
    if parser.in_reasoning:
        return len(output_ids)  # cut off while thinking
    end = tokenizer.convert_tokens_to_ids(THINK_END) if tokenizer is not None else None
    return output_ids.index(end) + 1 if end is not None and end in output_ids else 0
