"""The Prompt inspector's behaviour: the exact prompt a model gets for the conversation on screen.

It goes through `demo.promptview`, the code behind `python -m demo prompt --json`, so the ids shown here
are the ids that command prints for the same conversation, model and reply budget. No weights are
needed: the inspector works before a model is loaded.
"""
from __future__ import annotations

import html
import json

import gradio as gr
from adapters import AdapterError
from adapters.tools import ToolError
from adapters.weights import WeightsMissing

from ..hub import Hub
from ..promptview import prompt_report
from ..registry import UnknownModelError
from .templates import source_for
from .thinking import chat_options
from .tools import parse_tools

PREVIEW_CHARS = 60  # of each dropped message, in the summary
def budget(hub: Hub, max_new_tokens) -> int | None:
    """The reply budget a generation would reserve: the slider's value, under the hub's cap."""
    if not max_new_tokens:
        return None
    return min(int(max_new_tokens), hub.registry.limits.max_new_tokens)


def up_to_last_sent(messages: list[dict]) -> list[dict]:
    """The messages the latest reply was (or the next is) built from: everything to the last user turn or
    tool result."""
    last = max((i for i, m in enumerate(messages) if m["role"] in ("user", "tool")), default=None)
    return [] if last is None else messages[:last + 1]


def inspect(hub: Hub, model_id: str | None, messages: list[dict], max_new_tokens=None, thinking: bool = True,
            tools: list[dict] | None = None) -> tuple[str, str, str]:
    """(summary and marked prompt as HTML, ids, stops) for `messages` as `model_id` would get them, with the
    Thinking switch and the tools as a reply passes them (demo.ui.thinking.chat_options)."""
    if not model_id:
        return note("Pick a model first."), "", ""
    messages = up_to_last_sent(messages)
    if not messages:
        return note("Send a message first: this shows the prompt up to the last message sent."), "", ""
    try:
        source = source_for(hub, model_id)
        report = prompt_report(source, messages, budget(hub, max_new_tokens), chat_options(source, thinking, tools))
    except (UnknownModelError, AdapterError, WeightsMissing, OSError, ValueError) as e:
        return note(f"⚠️ {model_id}: {e}"), "", ""
    stops = {"stop_token_ids": report["stop_token_ids"], "stop_strings": report["stop_strings"]}
    return render(model_id, report, messages), json.dumps(report["input_ids"]), json.dumps(stops, ensure_ascii=False)


def note(text: str) -> str:
    return f'<p class="prompt-note">{html.escape(text)}</p>'


def render(model_id: str, report: dict, messages: list[dict]) -> str:
    """The summary line, the dropped turns, and the prompt text with each special token marked."""
    context = report["context_length"]
    of = (f" of a {context:,}-token context" if context
          else " (the context is not known without the weights: set context_length in the registry)")
    parts = [f"<p class=\"prompt-summary\"><b>{html.escape(model_id)}</b>: {report['prompt_tokens']:,} tokens{of}; "
             f"reply budget {report['max_new_tokens'] or '–'} tokens; "
             f"{len(report['stop_token_ids'])} stop ids, {len(report['stop_strings'])} stop strings</p>"]
    dropped = report["dropped_messages"]
    if dropped:
        items = "".join(f"<li>{html.escape(messages[i]['role'])}: {html.escape(preview(messages[i]['content']))}</li>"
                        for i in dropped)
        parts.append(f"<p class=\"prompt-dropped\">{report['dropped_turns']} earlier turn(s) left out to fit "
                     f"the context:</p><ul class=\"prompt-dropped\">{items}</ul>")
    else:
        parts.append('<p class="prompt-dropped">No turns were left out.</p>')
    text = "".join(f'<mark class="special-token">{html.escape(s["text"])}</mark>' if s["special"]
                   else html.escape(s["text"]) for s in report["segments"])
    parts.append(f'<pre class="prompt-text" style="white-space: pre-wrap">{text}</pre>')
    return "".join(parts)


def preview(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= PREVIEW_CHARS else text[:PREVIEW_CHARS - 1] + "…"


def chat_prompt(hub: Hub, session, model_id: str, system: str, max_new_tokens, thinking: bool = True,
                tools: str | None = None):
    """The Chat tab's inspector: the selected model, the system prompt, the max_new_tokens slider, the Thinking
    switch and the Tools box."""
    try:
        defined = parse_tools(tools)
    except ToolError as e:
        return note(f"⚠️ Tools: {e}"), "", ""
    return inspect(hub, model_id, session.messages(system), max_new_tokens, thinking, defined)


def compare_prompt(hub: Hub, session, model_id: str | None, own: bool, max_new_tokens, thinking: bool = True):
    """The Compare tab's inspector for one of the compared models and its own conversation."""
    if not session.models:
        return note("Send a message to the models first."), "", ""
    model_id = model_id or session.models[0]
    if model_id not in session.models:
        return note(f"{model_id} has no conversation here yet: send a message to this set of models."), "", ""
    from .compare_handlers import for_model

    return inspect(hub, model_id, for_model(session.turns[model_id]), None if own else max_new_tokens, thinking)


def model_choices(ids):
    """The Compare inspector's model choice follows the chosen set; the first is selected."""
    ids = list(ids or [])
    return gr.update(choices=ids, value=ids[0] if ids else None)
