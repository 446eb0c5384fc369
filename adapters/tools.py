"""Tool definitions and tool turns, in OpenAI's shapes, checked before any family renders them.

A tool is `{"type": "function", "function": {"name", "description"?, "parameters"?}}`; an assistant turn
may carry `tool_calls: [{"id", "type": "function", "function": {"name", "arguments": JSON text}}]`; a
`tool` turn answers one of the calls of the assistant turn before it (by `tool_call_id` when given).
Every error names the field it is about (`param`), so the API can answer 400 with it.
"""
from __future__ import annotations

import json
import re
from typing import Any, Sequence

from .errors import AdapterError

NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
SCHEMA_TYPES = {"object", "array", "string", "number", "integer", "boolean", "null"}


class ToolError(AdapterError):
    """A malformed tool, tool call or tool turn; `param` is the request field at fault."""

    def __init__(self, param: str, message: str):
        super().__init__(f"{param}: {message}")
        self.param = param


def check_tools(tools: Any, param: str = "tools") -> list[dict]:
    """The tools as given, once each is a well-formed function tool with a unique name."""
    if not isinstance(tools, list):
        raise ToolError(param, "expected a list of tools")
    names = set()
    for i, tool in enumerate(tools):
        where = f"{param}[{i}]"
        if not isinstance(tool, dict) or tool.get("type") != "function":
            raise ToolError(f"{where}.type", "only tools of type 'function' are supported")
        function = tool.get("function")
        if not isinstance(function, dict):
            raise ToolError(f"{where}.function", "expected an object with name, description, parameters")
        name = function.get("name")
        if not isinstance(name, str) or not NAME.fullmatch(name):
            raise ToolError(f"{where}.function.name", f"{name!r} is not a function name "
                                                      f"(1-64 letters, digits, _ . -)")
        if name in names:
            raise ToolError(f"{where}.function.name", f"{name!r} is defined twice")
        names.add(name)
        if not isinstance(function.get("description", ""), str):
            raise ToolError(f"{where}.function.description", "must be text")
        if "parameters" in function:
            check_schema(function["parameters"], f"{where}.function.parameters", top=True)
    return tools


def check_schema(schema: Any, param: str, top: bool = False) -> None:
    """The parts of a JSON schema a template renders and a call is checked against: types, properties."""
    if not isinstance(schema, dict):
        raise ToolError(param, "a JSON schema must be an object")
    kind = schema.get("type")
    kinds = kind if isinstance(kind, list) else [kind] if kind is not None else []
    if any(k not in SCHEMA_TYPES for k in kinds):
        raise ToolError(f"{param}.type", f"{kind!r} is not a JSON schema type")
    if top and kinds and kinds != ["object"]:
        raise ToolError(f"{param}.type", "function parameters must be a schema of type 'object'")
    properties = schema.get("properties", {})
    if not isinstance(properties, dict):
        raise ToolError(f"{param}.properties", "must be an object of schemas")
    for key, sub in properties.items():
        check_schema(sub, f"{param}.properties.{key}")
    required = schema.get("required", [])
    if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
        raise ToolError(f"{param}.required", "must be a list of property names")
    if "items" in schema and not isinstance(schema["items"], (dict, bool)):
        raise ToolError(f"{param}.items", "must be a schema")
    if isinstance(schema.get("items"), dict):
        check_schema(schema["items"], f"{param}.items")
    if "enum" in schema and not isinstance(schema["enum"], list):
        raise ToolError(f"{param}.enum", "must be a list")


def tool_names(tools: Sequence[dict] | None) -> list[str]:
    return [t["function"]["name"] for t in tools or ()]


def check_tool_turns(messages: Sequence[dict]) -> None:
    """Assistant tool calls are well formed; each tool turn answers a call of the assistant turn before it."""
    open_calls: list[dict] | None = None  # the calls of the last assistant turn, while tool turns follow it
    for i, m in enumerate(messages):
        if m["role"] == "assistant":
            calls = m.get("tool_calls") or []
            check_calls(calls, f"messages[{i}].tool_calls")
            open_calls = list(calls) if calls else None
        elif m["role"] == "tool":
            if not open_calls:
                raise ToolError(f"messages[{i}]", "a tool message must follow an assistant message with "
                                                  "tool_calls (one tool message per call)")
            call_id = m.get("tool_call_id")
            match = [c for c in open_calls if c.get("id") == call_id] if call_id is not None else open_calls[:1]
            if not match:
                known = [c.get("id") for c in open_calls]
                raise ToolError(f"messages[{i}].tool_call_id", f"{call_id!r} matches no call of the assistant "
                                                               f"message before it ({known})")
            open_calls.remove(match[0])
            if not isinstance(m.get("name", ""), str):
                raise ToolError(f"messages[{i}].name", "must be text")
        else:
            open_calls = None


def check_calls(calls: Any, param: str) -> None:
    if not isinstance(calls, list):
        raise ToolError(param, "expected a list of tool calls")
    for k, call in enumerate(calls):
        where = f"{param}[{k}]"
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise ToolError(f"{where}.function", "expected an object with name and arguments")
        arguments = function.get("arguments", "{}")
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments or "{}")
            except ValueError as e:
                raise ToolError(f"{where}.function.arguments", f"not valid JSON: {e}") from None
        if not isinstance(arguments, dict):
            raise ToolError(f"{where}.function.arguments", "must be a JSON object")


def call_arguments(call: dict) -> dict:
    """A checked call's arguments as a dict (they travel as JSON text in OpenAI's format)."""
    arguments = call["function"].get("arguments", "{}")
    return json.loads(arguments or "{}") if isinstance(arguments, str) else arguments


def template_messages(messages: Sequence[dict]) -> list[dict]:
    """Messages as chat templates expect them: tool-call arguments as dicts (as vLLM and transformers pass)."""
    out = []
    for m in messages:
        m = dict(m)
        if m.get("tool_calls"):
            m["tool_calls"] = [{**c, "function": {**c["function"], "arguments": call_arguments(c)}}
                               for c in m["tool_calls"]]
        out.append(m)
    return out


def string_leaves(value: Any) -> list[str]:
    """Every string inside a JSON value (keys too): the user-written text in tools and call arguments."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in [*string_leaves(k), *string_leaves(v)]]
    if isinstance(value, list):
        return [s for v in value for s in string_leaves(v)]
    return []
