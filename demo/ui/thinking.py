"""How the UI shows reasoning and tool calls (collapsible blocks: Gradio message metadata) and what its Thinking
switch and Tools box pass to a model's chat template."""
from __future__ import annotations

import json
from dataclasses import dataclass

from adapters.base import NO_OPTIONS, ChatOptions

NO_SWITCH = "This model's chat template has no thinking switch."
SERVED_ELSEWHERE = "This model is served elsewhere; its server renders the template."
SWITCH_INFO = "Passes enable_thinking (or the template's own variable) to the templates that have one."


def thinking_block(reasoning: str, thinking_s: float | None, done: bool | None = None) -> dict:
    """The reasoning as a "Thinking" block: pending (open) while it streams, done (closed) with its duration."""
    done = thinking_s is not None if done is None else done
    metadata = {"title": "Thinking", "status": "done" if done else "pending"}
    if thinking_s is not None:
        metadata["duration"] = round(thinking_s, 1)
    return {"role": "assistant", "content": reasoning, "metadata": metadata}


def reply_view(answer: str, reasoning: str = "", thinking_s: float | None = None, done: bool | None = None) -> list[dict]:
    """A reply as Chatbot messages: its Thinking block (if it reasoned), then its answer."""
    block = [thinking_block(reasoning, thinking_s, done)] if reasoning else []
    return block + [{"role": "assistant", "content": answer}]


def tool_call_blocks(calls) -> list[dict]:
    """Each tool call as a closed block titled with the function's name, its arguments inside."""
    blocks = []
    for call in calls:
        arguments = json.dumps(json.loads(call.arguments), indent=2, ensure_ascii=False)
        blocks.append({"role": "assistant", "content": f"```json\n{arguments}\n```",
                       "metadata": {"title": f"🛠️ Tool call: {call.name}", "status": "done"}})
    return blocks


@dataclass(frozen=True)
class TemplateTraits:
    """What a model's chat template takes from the UI: a thinking variable (Qwen3: enable_thinking), tools."""

    variable: str | None = None
    tools: bool = False
    family: str = ""
    remote: bool = False  # served elsewhere: that server renders the template


def traits_of(loaded) -> TemplateTraits:
    """The traits of a loaded model, or of a weightless one (demo.promptview.prompt_source)."""
    adapter = getattr(loaded, "adapter", None)
    if adapter is None or getattr(loaded, "remote", False):
        return TemplateTraits(remote=True)
    return TemplateTraits(adapter.thinking_variable(loaded.tokenizer), adapter.takes_tools(loaded.tokenizer),
                          adapter.family)


def chat_options(loaded, thinking: bool, tools: list[dict] | None = None) -> ChatOptions:
    """What the Thinking switch and the Tools box add to the prompt, where the model's template takes them."""
    traits = traits_of(loaded)
    kwargs = {traits.variable: bool(thinking)} if traits.variable else {}
    tools = tools if tools and traits.tools else None
    return ChatOptions(tools=tools, template_kwargs=kwargs) if kwargs or tools else NO_OPTIONS


def thinking_options(loaded, thinking: bool) -> ChatOptions:
    """The template variable the Thinking switch sets (Qwen3: enable_thinking); none where the template has none."""
    return chat_options(loaded, thinking)


def switch_state(traits: TemplateTraits) -> tuple[bool, str]:
    """(interactive, info) for the Thinking switch, once the model's template is known."""
    if traits.remote:
        return False, SERVED_ELSEWHERE
    if traits.variable:
        return True, f"Passes {traits.variable} to the chat template."
    return False, NO_SWITCH


def switch_state_of_set(traits: dict[str, TemplateTraits | None]) -> tuple[bool, str]:
    """(interactive, info) for the one Thinking switch of several models (Compare; None: not known before the
    model loads). It applies to the models whose template has a thinking variable; the others answer as they
    always do, and their panes say so when the switch is off."""
    has = [m for m, t in traits.items() if t is not None and t.variable]
    lacks = [m for m, t in traits.items() if t is not None and not t.variable]
    unknown = [m for m, t in traits.items() if t is None]
    if not has and not unknown:
        return (False, "None of these models' chat templates has a thinking switch.") if lacks else (True, SWITCH_INFO)
    if not lacks and not unknown:
        return True, "Passes each model's thinking variable (e.g. enable_thinking) to its chat template."
    parts = [f"Applies to {', '.join(has)}."] if has else []
    if lacks:
        parts.append(f"No thinking switch in the template of {', '.join(lacks)}: answers as usual "
                     f"(its pane says so when the switch is off).")
    if unknown:
        parts.append(f"Not known until it loads: {', '.join(unknown)}.")
    return True, " ".join(parts)
