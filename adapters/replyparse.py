"""Streaming parsers for a reply's reasoning (`<think>…</think>`) and tool calls, in each family's format.

`ReplyParser.feed(text)` takes the reply as it streams, in pieces cut anywhere (inside a marker too), and
returns what is now certain: reasoning text, answer text, and whole tool calls. It holds back only text
that may still turn out to be a marker or a call. A call that does not parse comes back as answer text,
never an error. Formats:

- `hermes`: Qwen2.5 / Qwen3 (and Hermes-style templates): `<tool_call>\\n{"name": …, "arguments": {…}}\\n</tool_call>`,
  one block per call, possibly after some text.
- `llama3_json`: Llama 3.1+ custom tools: the whole reply is `{"name": …, "parameters": {…}}` (calls
  separated by ";" are taken too).
- `chatglm3`: the reply's first line names the tool, then ```` ```python\\ntool_call(key=value, …)\\n``` ````.
"""
from __future__ import annotations

import ast
import json
import uuid
from dataclasses import dataclass, field
from typing import Sequence

THINK_START, THINK_END = "<think>", "</think>"
CALL_START, CALL_END = "<tool_call>", "</tool_call>"
TOOL_FORMATS = ("hermes", "llama3_json", "chatglm3")


@dataclass
class ToolCall:
    name: str
    arguments: str  # a JSON object, as text (OpenAI's format)
    id: str = field(default_factory=lambda: f"call_{uuid.uuid4().hex[:24]}")

    def openai(self) -> dict:
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


@dataclass
class ReplyDelta:
    reasoning: str = ""
    content: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.reasoning or self.content or self.tool_calls)

    def add(self, other: "ReplyDelta") -> "ReplyDelta":
        return ReplyDelta(self.reasoning + other.reasoning, self.content + other.content,
                          self.tool_calls + other.tool_calls)


@dataclass(frozen=True)
class ReplyFormat:
    """What a family's replies may hold: reasoning tags, and calls in one of TOOL_FORMATS (None: no calls)."""

    think: bool = False
    tools: str | None = None


class ReplyParser:
    """Splits a streamed reply into reasoning, content and tool calls.

    `in_reasoning`: the prompt already opened `<think>` (DeepSeek-R1 distills). `tool_names`: the tools of
    the request (None or empty: no call parsing, calls stay text).
    """

    def __init__(self, fmt: ReplyFormat, in_reasoning: bool = False, tool_names: Sequence[str] | None = None):
        self.think = fmt.think or in_reasoning
        self.tools = fmt.tools if tool_names else None
        self.names = set(tool_names or ())
        self.state = "reasoning" if in_reasoning else ("start" if self.think else "content")
        self.pending = ""  # text not yet given out
        self.reasoning_started = in_reasoning
        self.content_started = False
        self.calls: list[ToolCall] = []

    # -- public ---------------------------------------------------------------------------------------
    def feed(self, text: str) -> ReplyDelta:
        self.pending += text
        return self._advance(final=False)

    def finish(self) -> ReplyDelta:
        return self._advance(final=True)

    @property
    def in_reasoning(self) -> bool:
        return self.state == "reasoning"

    # -- the state machine ----------------------------------------------------------------------------
    def _advance(self, final: bool) -> ReplyDelta:
        out = ReplyDelta()
        while True:
            before = (self.state, len(self.pending))
            step = {"start": self._start, "reasoning": self._reasoning, "content": self._content,
                    "call": self._call, "whole": self._whole,
                    "done": self._done}[self.state](final)
            out = out.add(step)
            if (self.state, len(self.pending)) == before:
                return out

    def _start(self, final: bool) -> ReplyDelta:
        """Before anything: a reply that opens with <think> (after whitespace) reasons first."""
        stripped = self.pending.lstrip()
        if stripped.startswith(THINK_START):
            self.pending, self.state = stripped[len(THINK_START):], "reasoning"
            self.reasoning_started = True
        elif final or not THINK_START.startswith(stripped):
            self.state = "content"
        return ReplyDelta()

    def _reasoning(self, final: bool) -> ReplyDelta:
        text = self.pending
        if not self.reasoning_seen:
            text = text.lstrip("\n")  # "<think>\n" opens the block
            if not text and not final:
                self.pending = ""
                return ReplyDelta()
        at = text.find(THINK_END)
        if at >= 0:
            reasoning, self.pending = text[:at].rstrip("\n"), text[at + len(THINK_END):]
            self.state, self.after_think = "content", True
            return ReplyDelta(reasoning=reasoning)
        if final:
            self.pending = ""
            return ReplyDelta(reasoning=text.rstrip("\n"))
        # hold back what may start </think>, and newlines that may be the ones before it
        partial = partial_suffix(text, THINK_END)
        rest = text[:len(text) - partial]
        keep = partial + len(rest) - len(rest.rstrip("\n"))
        shown, self.pending = text[:len(text) - keep], text[len(text) - keep:]
        self.reasoning_seen = self.reasoning_seen or bool(shown)
        return ReplyDelta(reasoning=shown)

    reasoning_seen = False
    after_think = False

    def _content(self, final: bool) -> ReplyDelta:
        text = self.pending
        if not self.content_started:
            if self.after_think or self.think or self.calls:
                text = text.lstrip()  # "</think>\n\n" ends the block; newlines between calls
            if not text and not final:
                self.pending = ""
                return ReplyDelta()
            if self.tools in ("llama3_json", "chatglm3") and self._whole_reply_call(text, final):
                self.pending, self.state = text, "whole"
                return ReplyDelta()
            if self.tools in ("llama3_json", "chatglm3") and not final and self._may_be_call(text):
                self.pending = text
                return ReplyDelta()
        if self.tools == "hermes":
            at = text.find(CALL_START)
            if at >= 0:
                self.pending, self.state = text[at:], "call"
                return self._shown(text[:at])
            if not final:
                keep = partial_suffix(text, CALL_START)
                self.pending = text[len(text) - keep:]
                return self._shown(text[:len(text) - keep])
        self.pending = ""
        return self._shown(text)

    def _shown(self, text: str) -> ReplyDelta:
        if text:
            self.content_started = True
        return ReplyDelta(content=text)

    def _call(self, final: bool) -> ReplyDelta:
        """Inside <tool_call>: wait for </tool_call>, then a call, or the block as text if it does not parse."""
        end = self.pending.find(CALL_END)
        if end < 0 and not final:
            return ReplyDelta()
        block = self.pending if end < 0 else self.pending[:end + len(CALL_END)]
        self.pending, self.state = self.pending[len(block):], "content"
        call = hermes_call(block[len(CALL_START):len(block) - (len(CALL_END) if end >= 0 else 0)])
        if call is None:
            return self._shown(block)
        self.calls.append(call)
        self.content_started = False
        return ReplyDelta(tool_calls=[call])

    def _whole(self, final: bool) -> ReplyDelta:
        """The reply is one call (Llama 3 JSON, ChatGLM3): parsed at the end, else given back as text."""
        if not final:
            return ReplyDelta()
        text, self.pending, self.state = self.pending, "", "done"
        calls = llama3_calls(text) if self.tools == "llama3_json" else chatglm3_call(text, self.names)
        if not calls:
            return self._shown(text)
        self.calls += calls
        return ReplyDelta(tool_calls=calls)

    def _done(self, final: bool) -> ReplyDelta:
        return ReplyDelta()

    def _may_be_call(self, text: str) -> bool:
        """Whether the start seen so far could still become a whole-reply call (so it is held back)."""
        if self.tools == "llama3_json":
            return False  # decided on the first character by _whole_reply_call
        first = text.split("\n", 1)[0]
        return "\n" not in text and any(name.startswith(first) for name in self.names)

    def _whole_reply_call(self, text: str, final: bool) -> bool:
        if self.tools == "llama3_json":
            return text.startswith("{")
        first, newline, _ = text.partition("\n")
        return bool(newline) and first.strip() in self.names


def forced_call_prefix(tools: str | None, name: str | None = None) -> str:
    """The reply opening that makes the model write a call (to `name`, when given) in its own format."""
    if tools == "hermes":
        return CALL_START + "\n" + (f'{{"name": "{name}", "arguments": ' if name else "")
    if tools == "llama3_json":
        return f'{{"name": "{name}", "parameters": ' if name else '{"name": "'
    if tools == "chatglm3" and name:
        return f"{name}\n```python\ntool_call("
    return ""


def partial_suffix(text: str, marker: str) -> int:
    """Length of the longest end of `text` that begins `marker` (text to hold back while it may form)."""
    for k in range(min(len(marker) - 1, len(text)), 0, -1):
        if text.endswith(marker[:k]):
            return k
    return 0


def hermes_call(body: str) -> ToolCall | None:
    try:
        data = json.loads(body.strip())
    except ValueError:
        return None
    return json_call(data, "arguments")


def json_call(data, key: str) -> ToolCall | None:
    if not isinstance(data, dict) or not isinstance(data.get("name"), str):
        return None
    arguments = data.get(key, data.get("arguments", {}))
    if isinstance(arguments, str):  # some models write the arguments as JSON text
        try:
            arguments = json.loads(arguments)
        except ValueError:
            return None
    if not isinstance(arguments, dict):
        return None
    return ToolCall(data["name"], json.dumps(arguments, ensure_ascii=False))


def llama3_calls(text: str) -> list[ToolCall]:
    calls = []
    for part in text.strip().split(";"):
        try:
            call = json_call(json.loads(part), "parameters")
        except ValueError:
            return []
        if call is None:
            return []
        calls.append(call)
    return calls


def chatglm3_call(text: str, names: set[str]) -> list[ToolCall]:
    """`name\\n```python\\ntool_call(a=1)\\n```` read with `ast` (never eval), as upstream process_response."""
    name, _, body = text.partition("\n")
    body = body.strip()
    if name.strip() not in names or not body.startswith("```"):
        return []
    code = "\n".join(body.split("\n")[1:-1]) if body.endswith("```") else "\n".join(body.split("\n")[1:])
    try:
        tree = ast.parse(code.strip(), mode="eval").body
        if not (isinstance(tree, ast.Call) and isinstance(tree.func, ast.Name) and tree.func.id == "tool_call"
                and not tree.args):
            return []
        arguments = {k.arg: ast.literal_eval(k.value) for k in tree.keywords if k.arg}
        return [ToolCall(name.strip(), json.dumps(arguments, ensure_ascii=False))]
    except (SyntaxError, ValueError, TypeError):
        return []
