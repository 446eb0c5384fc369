"""Chat tab behaviour, kept apart from its layout.

The conversation lives in a per-session `ChatSession`: a list of turns that remember which model wrote
each reply and its stats. The Chatbot shows a rendering of it; the model sees role and content only.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

import gradio as gr
from adapters.tools import ToolError, tool_names

from ..engine import CancelToken, Chunk, stream_chat
from ..hub import Hub, ui_client
from ..manager import ModelLoadError
from ..params import GenerationParams
from ..registry import UnknownModelError
from .templates import known_traits
from .thinking import chat_options, switch_state, thinking_block, tool_call_blocks, traits_of
from .tools import fenced, parse_tools, tools_problem, tools_state
from ..replies import parse_chunks, reply_parser

log = logging.getLogger(__name__)



@dataclass
class Turn:
    role: str
    content: str
    model: str | None = None  # which model wrote an assistant turn
    footer: str = ""  # stats line, or the error
    reasoning: str = ""  # a reasoning model's thinking, kept apart from its answer
    thinking_s: float | None = None  # how long it thought (set when the answer starts)
    tool_calls: list = field(default_factory=list)  # adapters.replyparse.ToolCall
    call_id: str = ""  # a tool turn: the id of the call it answers
    name: str = ""  # a tool turn: the function that was called


@dataclass
class ChatSession:
    turns: list[Turn] = field(default_factory=list)
    cancel: CancelToken = field(default_factory=CancelToken)
    paid: bool = False  # the last send was charged to the rate limit; its reply needs no second charge

    def messages(self, system: str) -> list[dict]:
        head = [{"role": "system", "content": system.strip()}] if system and system.strip() else []
        return head + [message_of(t) for t in self.turns]

    def stop(self) -> None:
        self.cancel.cancel()

    def next_request(self) -> None:
        """End the reply in flight and give the next one its own cancel token.

        Made when the message is appended (not when the reply starts), so a Stop pressed while the
        reply still waits in the queue or for its model cancels that reply too.
        """
        self.stop()
        self.cancel = CancelToken()


def message_of(turn: Turn) -> dict:
    """What the model sees of a turn, in the API's shapes: reasoning goes back only as reasoning_content (the
    template decides), tool calls as tool_calls, a tool result as a `tool` message naming its call."""
    message = {"role": turn.role, "content": turn.content}
    if turn.reasoning:
        message["reasoning_content"] = turn.reasoning
    if turn.tool_calls:
        message["tool_calls"] = [call.openai() for call in turn.tool_calls]
    if turn.role == "tool":
        message.update(tool_call_id=turn.call_id, name=turn.name)
    return message


def pending_calls(session: ChatSession) -> list:
    """The calls of the last reply that have no result yet, oldest first (none once the user wrote on)."""
    answered = set()
    for turn in reversed(session.turns):
        if turn.role == "tool":
            answered.add(turn.call_id)
        elif turn.role == "assistant":
            return [call for call in turn.tool_calls if call.id not in answered]
        else:
            return []
    return []


def awaits_reply(session: ChatSession) -> bool:
    """The last turn is the user's, or the last of the results of the last reply's calls."""
    last = session.turns[-1].role if session.turns else None
    return last == "user" or (last == "tool" and not pending_calls(session))


def render(session: ChatSession) -> list[dict]:
    view = []
    for turn in session.turns:
        if turn.role == "assistant":
            footer = f"\n\n*{turn.model} · {turn.footer}*" if turn.footer else f"\n\n*{turn.model}*"
            if turn.reasoning:
                view.append(thinking_block(turn.reasoning, turn.thinking_s))
            view += tool_call_blocks(turn.tool_calls)
            answer = turn.content or ("" if turn.reasoning or turn.tool_calls else "…")
            view.append({"role": "assistant", "content": answer + footer})
        elif turn.role == "tool":
            view.append({"role": "user", "content": f"🛠️ Result of `{turn.name}`:\n\n{fenced(turn.content)}"})
        else:
            view.append({"role": "user", "content": turn.content})
    return view


# Every screen update re-renders a conversation in the server's Python, which shares the cores (and the
# GIL) with decoding: at four users and one update per token, the hub served 50 tokens/s instead of 60.
# All replies streaming at once share a budget of about 16 updates a second: one reply updates every
# 60 ms, four every 250 ms. Text that arrives between updates shows with the next one; the last always shows.
UPDATES_PER_S = 16


class _Streaming:
    """How many Chat replies are streaming in this process."""

    def __init__(self):
        self._lock, self.count = threading.Lock(), 0

    def add(self, n: int) -> None:
        with self._lock:
            self.count += n

    def interval_s(self) -> float:
        return max(1, self.count) / UPDATES_PER_S


_streaming = _Streaming()


def new_session() -> ChatSession:
    return ChatSession()


def user_message(text: str, session: ChatSession, request: gr.Request | None = None,
                 hub: Hub | None = None, tools: str | None = "", model_id: str | None = None):
    """Append the user's message at once (no queue); the reply streams in the next step. `tools`: the Tools
    box, checked here (for a model that takes tools) so a bad definition refuses the message, not the reply."""
    session.stop()  # a new message ends a reply still streaming
    text = (text or "").strip()
    if not text:
        return "", session, render(session), "Type a message first."
    bad_tools = tools_problem(tools) if takes_tools(hub, model_id) else ""
    if bad_tools:
        return text, session, render(session), bad_tools
    refused = hub.over_rate(request) if hub is not None else ""  # the per-client limit, as on the API
    if refused:
        return text, session, render(session), refused
    too_long = too_long_for(hub, text)
    if too_long:
        return text, session, render(session), too_long
    session.turns.append(Turn("user", text))
    session.next_request()
    session.paid = True
    return "", session, render(session), ""


def too_long_for(hub: Hub | None, text: str) -> str:
    """The refusal of a message over the hub's limit (limits.max_message_chars, as on the API), or ''."""
    from ..registry import Limits

    limit = (hub.registry.limits if hub is not None else Limits()).max_message_chars
    if len(text) <= limit:
        return ""
    return f"The message is {len(text):,} characters; the limit is {limit:,}. Nothing was sent."


def user_message_for(hub: Hub):
    """`user_message` with the hub's rate limit; Gradio passes the request (hence the annotation)."""
    # None defaults: API clients that send only the message may leave out the Tools box and the model
    def append(text: str, session: ChatSession, tools: str | None = None, model_id: str | None = None,
               request: gr.Request = None):
        return user_message(text, session, request, hub, tools, model_id)
    return append


def takes_tools(hub: Hub | None, model_id: str | None) -> bool:
    """Whether the Tools box goes to this model (True while that is not known: its definitions are checked)."""
    traits = known_traits(hub, model_id) if hub is not None and model_id else None
    return traits is None or traits.tools


def tool_result(text: str, session: ChatSession, request: gr.Request | None = None, hub: Hub | None = None):
    """Append the Tool result box as the `tool` message answering the oldest call still waiting; with the
    last result in, the model replies in the next step. Returns (box, session, chatbot, status)."""
    session.stop()
    text, pending = (text or "").strip(), pending_calls(session)
    if not pending:
        return text, session, render(session), "No tool call is waiting for a result."
    if not text:
        return "", session, render(session), f"Type what `{pending[0].name}` returned first."
    refused = (hub.over_rate(request) if hub is not None and len(pending) == 1 else "") or too_long_for(hub, text)
    if refused:
        return text, session, render(session), refused
    call = pending[0]
    session.turns.append(Turn("tool", text, call_id=call.id, name=call.name))
    session.next_request()
    if len(pending) > 1:
        return "", session, render(session), f"Now the result of `{pending[1].name}` ({len(pending) - 1} to go)."
    session.paid = hub is not None  # charged here, as a sent message is
    return "", session, render(session), ""


def tool_result_for(hub: Hub):
    """`tool_result` with the hub's rate limit (Gradio passes the request)."""
    def answer(text: str, session: ChatSession, request: gr.Request):
        return tool_result(text, session, request, hub)
    return answer


def sampling(custom: bool, temperature, top_p, top_k, repetition_penalty, max_new_tokens, seed, greedy):
    if not custom:
        return {"max_new_tokens": int(max_new_tokens)} if max_new_tokens else {}
    return {"temperature": temperature, "top_p": top_p, "top_k": int(top_k),
            "repetition_penalty": repetition_penalty, "max_new_tokens": int(max_new_tokens),
            "seed": None if seed is None or seed < 0 else int(seed), "greedy": bool(greedy)}


def charge(hub: Hub, session, request) -> str:
    """Every generation counts against the client's rate: a send was charged already (`session.paid`);
    a Regenerate, or a reply started through the API on its own, is charged here. The refusal, or ''."""
    if session.paid:
        session.paid = False
        return ""
    return hub.over_rate(request)


def bot_reply(hub: Hub, session: ChatSession, model_id: str, system: str, *controls, thinking: bool = True,
              tools: str | None = "", request=None):
    """Stream the reply to the last user turn (or tool results): yields (session, chatbot view, status)."""
    if not awaits_reply(session):
        yield session, render(session), gr.skip()  # e.g. a call still waits for its result: the status says so
        return
    refused = charge(hub, session, request)
    if refused:
        yield session, render(session), refused.replace("Nothing was sent.", "No reply was made.")
        return
    cancel = session.cancel
    turn = Turn("assistant", "", model_id)
    session.turns.append(turn)
    loaded = None
    try:
        for item in hub.load_with_progress(model_id):
            if cancel.cancelled:  # the load goes on in the background; this reply ends here
                turn.footer = "cancelled while the model was loading"
                yield session, render(session), ""
                return
            if isinstance(item, str):
                turn.footer = item.replace("**", "")
                yield session, render(session), item
            else:
                loaded = item
    except (ModelLoadError, UnknownModelError) as e:
        turn.footer = f"⚠️ {e}"
        yield session, render(session), f"⚠️ {e}"
        return
    params = loaded.defaults.override(sampling(*controls))
    turn.footer = ""
    shown = 0.0
    traits = traits_of(loaded)
    try:
        defined = parse_tools(tools) if traits.tools else None  # the Tools box goes to templates that take tools
    except ToolError as e:
        turn.footer = f"⚠️ Tools: {e}"
        yield session, render(session), f"⚠️ Tools: {e}"
        return
    messages, chat = session.messages(system)[:-1], chat_options(loaded, thinking, defined)
    parser = reply_parser(loaded, messages, chat, tool_names(chat.tools))
    status = f"Tools not sent: {tools_state(traits)[1]}" if (tools or "").strip() and not traits.tools else ""
    started = time.monotonic()
    _streaming.add(1)
    try:
        for parsed in parse_chunks(stream_chat(loaded, messages, params, cancel, chat=chat), parser,
                                   getattr(loaded, "tokenizer", None)):
            chunk = parsed.chunk
            turn.reasoning, turn.content, turn.tool_calls = parsed.reasoning, parsed.content, parsed.tool_calls
            if turn.reasoning and turn.thinking_s is None and (chunk.finish_reason or not parsed.in_reasoning):
                turn.thinking_s = time.monotonic() - started  # the answer starts: the block closes
            if chunk.finish_reason:
                turn.footer = footer_of(chunk)
                hub.metrics.finished(model_id, chunk, ui_client(request))
            now = time.monotonic()
            if chunk.finish_reason or now - shown >= _streaming.interval_s():
                shown = now
                yield session, render(session), (called(turn) or status) if chunk.finish_reason else status
    finally:
        _streaming.add(-1)


def called(turn: Turn) -> str:
    """The status line once a reply called tools: where to answer them."""
    if not turn.tool_calls:
        return ""
    names = ", ".join(f"`{call.name}`" for call in turn.tool_calls)
    return f"The model called {names}: send each result in Tools ▸ Tool result."


def reply_for(hub: Hub):
    """`bot_reply` in the Chat tab's input order: the Thinking switch comes last, so API clients that send
    only the sampling controls get its default."""
    # Gradio passes the request to a positional parameter annotated gr.Request (not after *args)
    def reply(session: ChatSession, model_id: str, system: str, use_custom, temp, p, k, penalty, budget,
              seed_value, argmax, thinking: bool = True, tools: str | None = None, request: gr.Request = None):
        yield from bot_reply(hub, session, model_id, system, use_custom, temp, p, k, penalty, budget, seed_value,
                             argmax, thinking=thinking, tools=tools, request=request)
    return reply


def thinking_switch(hub: Hub, model_id: str):
    """The Thinking switch for a model: on where its template has a thinking variable, else off, saying why."""
    traits = known_traits(hub, model_id)
    if traits is None:  # the model cannot be read yet; its reply will say why
        return gr.update(interactive=False, info="Unknown until the model loads.")
    interactive, info = switch_state(traits)
    return gr.update(interactive=interactive, info=info, value=interactive)


def tools_box(hub: Hub, model_id: str):
    """The Tools box for a model: open where its template renders tools, else disabled, saying why."""
    interactive, info = tools_state(known_traits(hub, model_id))
    return gr.update(interactive=interactive, info=info)


def template_controls(hub: Hub, model_id: str):
    """(Thinking switch, Tools box, Tool result box) for a newly chosen model."""
    tools = tools_box(hub, model_id)
    return thinking_switch(hub, model_id), tools, gr.update(interactive=tools["interactive"])


def footer_of(chunk: Chunk) -> str:
    line = chunk.stats.summary()
    if chunk.finish_reason == "error":
        if not chunk.code:  # a fault, not a refusal: the exception's text is for the log, not the page
            log.error("chat reply failed: %s", chunk.error)
            return f"⚠️ The server failed while writing this reply (details are in its log). · {line}"
        return f"⚠️ {chunk.error} · {line}"
    if chunk.finish_reason in ("length", "cancelled"):
        return f"{line} · {chunk.finish_reason}"
    return line


def stop(session: ChatSession):
    session.stop()
    return session


def retry(session: ChatSession):
    """Regenerate: drop the last reply (and anything after the last user turn)."""
    session.next_request()
    while session.turns and session.turns[-1].role == "assistant":
        session.turns.pop()
    return session, render(session)


def undo(session: ChatSession):
    """Undo: remove the last exchange (replies and tool results too) and put the user's text back in the box."""
    session.stop()
    while session.turns and session.turns[-1].role != "user":
        session.turns.pop()
    text = session.turns.pop().content if session.turns else ""
    return text, session, render(session)


def clear(session: ChatSession):
    session.stop()
    session.turns.clear()
    return session, render(session), ""


def defaults_for(hub: Hub, model_id: str) -> GenerationParams:
    """The sliders' starting values: the registry entry over hub defaults (no load needed)."""
    try:
        entry = hub.registry.get(model_id)
    except UnknownModelError:
        return GenerationParams()
    return GenerationParams().override(entry.generation.model_dump())


def defaults_view(hub: Hub, model_id: str):
    """Slider values for a newly chosen model; the conversation itself is kept."""
    d = defaults_for(hub, model_id)
    return d.temperature, d.top_p, d.top_k, d.repetition_penalty, d.max_new_tokens, d.greedy
