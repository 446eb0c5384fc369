"""How the Chat tab shows reasoning and tool calls: collapsible blocks (Gradio message metadata) above the answer."""
from __future__ import annotations

import json

from adapters.base import NO_OPTIONS, ChatOptions

NO_SWITCH = "This model's chat template has no thinking switch."


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


def thinking_variable(loaded) -> str | None:
    adapter = getattr(loaded, "adapter", None)
    return adapter.thinking_variable(loaded.tokenizer) if adapter is not None else None


def thinking_options(loaded, thinking: bool) -> ChatOptions:
    """The template variable the Thinking switch sets (Qwen3: enable_thinking); none where the template has none."""
    variable = thinking_variable(loaded)
    return ChatOptions(template_kwargs={variable: bool(thinking)}) if variable else NO_OPTIONS


def switch_state(loaded) -> tuple[bool, str]:
    """(interactive, info) for the Thinking switch, once the model's template is known."""
    variable = thinking_variable(loaded)
    if variable:
        return True, f"Passes {variable} to the chat template."
    return False, NO_SWITCH
