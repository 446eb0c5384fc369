"""The Chat tab's Tools: OpenAI-style function definitions typed as JSON, checked as the API checks `tools`,
and the results of the model's calls, sent back as `tool` messages.

A result answers the oldest call of the last reply that has none yet; once every call has its result, the
model replies. The definitions go to the template only where the model's family renders tools.
"""
from __future__ import annotations

import json
import re

from adapters.tools import ToolError, check_tools

from .thinking import TemplateTraits

TOOLS_INFO = ("A JSON list of OpenAI-style function tools, passed to the chat template as the API's `tools`. "
              "Answer a call with its result below.")
EXAMPLE = json.dumps([{"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}],
    indent=2)


def parse_tools(text: str | None) -> list[dict] | None:
    """The Tools box's definitions, checked by adapters.tools.check_tools (the API's check); None when empty.
    Raises ToolError naming the field at fault."""
    text = (text or "").strip()
    if not text:
        return None
    try:
        tools = json.loads(text)
    except ValueError as e:
        raise ToolError("tools", f"not valid JSON ({e})") from None
    return check_tools(tools) or None


def tools_problem(text: str | None) -> str:
    """What is wrong with the Tools box, as the page says it, or ''."""
    try:
        parse_tools(text)
    except ToolError as e:
        return f"⚠️ Tools: {e}. Fix the definitions in Tools, or empty the box."
    return ""


def tools_status(text: str | None) -> str:
    """The line under the Tools box: the functions defined, or what is wrong."""
    try:
        tools = parse_tools(text)
    except ToolError as e:
        return f"⚠️ {e}"
    if not tools:
        return "No tools: the model gets none."
    names = [t["function"]["name"] for t in tools]
    return f"{len(names)} tool{'s' if len(names) > 1 else ''}: {', '.join(f'`{n}`' for n in names)}"


def tools_state(traits: TemplateTraits | None) -> tuple[bool, str]:
    """(interactive, info) for the Tools box, once the model's template is known."""
    if traits is None:
        return True, TOOLS_INFO + " (Whether this model takes tools is known once it loads.)"
    if traits.remote:
        return False, "This model is served elsewhere; the hub does not forward tools to it."
    if traits.tools:
        return True, TOOLS_INFO
    whose = "This model's chat template" if traits.family == "generic" else f"The {traits.family} family's format"
    return False, f"{whose} has no tool calls: tools are not sent to this model."


def fenced(text: str) -> str:
    """`text` as a Markdown code block whose fence no run of backticks inside it can close."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}\n{text}\n{fence}"
