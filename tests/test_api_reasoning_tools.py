"""Reasoning, tool calls and their errors through a real `serve` process and the official `openai` client.

The model is a tiny Qwen3 with the real Qwen3 tokenizer and chat template whose replies follow a script
(tests/tiny.py: QWEN3_SCRIPTS), so what the API returns is known exactly.
"""
from __future__ import annotations

import json

import openai
import pytest

from tests.hubserver import HubServer, tiny_entry, write_registry
from tests.tiny import make_scripted_qwen3, make_tiny_chat_model

WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather somewhere",
                                            "parameters": {"type": "object", "properties": {"q": {"type": "number"}}}}}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}
HI = [{"role": "user", "content": "Hello"}]
NO_THINKING = {"chat_template_kwargs": {"enable_thinking": False}}


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    root = tmp_path_factory.mktemp("api_tools")
    qwen3 = make_scripted_qwen3(root / "qwen3")
    llama = make_tiny_chat_model(root / "llama")
    registry = write_registry(root / "registry.yaml", [tiny_entry("qwen3", qwen3, 32), tiny_entry("llama", llama, 8)],
                              "qwen3")
    server = HubServer(registry, root / "votes.sqlite3", root / "server.log").start()
    try:
        yield openai.OpenAI(base_url=server.url + "v1", api_key="none", max_retries=0, timeout=120)
    finally:
        server.kill()


def test_reasoning_comes_apart_from_the_answer(client):
    reply = client.chat.completions.create(model="qwen3", messages=HI)
    message = reply.choices[0].message
    assert (message.content, message.reasoning_content) == ("Hi", "Hmm")
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage.completion_tokens_details.reasoning_tokens == 3  # <think> Hmm </think>
    assert reply.usage.completion_tokens == 5


def test_reasoning_streams_as_reasoning_content_deltas(client):
    stream = client.chat.completions.create(model="qwen3", messages=HI, stream=True,
                                            stream_options={"include_usage": True})
    reasoning = content = ""
    finish = usage = None
    for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        for choice in chunk.choices:
            reasoning += getattr(choice.delta, "reasoning_content", None) or ""
            content += choice.delta.content or ""
            finish = choice.finish_reason or finish
    assert (reasoning, content, finish) == ("Hmm", "Hi", "stop")
    assert usage.completion_tokens_details.reasoning_tokens == 3


@pytest.mark.parametrize("switch", [NO_THINKING, {"reasoning_effort": "none"}])
def test_thinking_switches_off_through_the_template(client, switch):
    reply = client.chat.completions.create(model="qwen3", messages=HI, extra_body=switch)
    message = reply.choices[0].message
    assert message.reasoning_content is None  # no tools given, so the scripted call is plain text
    assert message.content.startswith("<tool_call>")
    assert reply.usage.completion_tokens_details.reasoning_tokens == 0


def test_tool_call_comes_back_in_openai_format(client):
    reply = client.chat.completions.create(model="qwen3", messages=HI, tools=[WEATHER, TIME], extra_body=NO_THINKING)
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.id.startswith("call_")
    assert (call.function.name, json.loads(call.function.arguments)) == ("get_weather", {"q": 7})


def test_tool_call_streams_as_delta_tool_calls(client):
    stream = client.chat.completions.create(model="qwen3", messages=HI, tools=[WEATHER], stream=True,
                                            extra_body=NO_THINKING)
    calls, content, finish = {}, "", None
    for chunk in stream:
        for choice in chunk.choices:
            content += choice.delta.content or ""
            for call in choice.delta.tool_calls or []:
                entry = calls.setdefault(call.index, {"id": call.id, "name": "", "arguments": ""})
                entry["name"] += call.function.name or ""
                entry["arguments"] += call.function.arguments or ""
            finish = choice.finish_reason or finish
    assert (content, finish) == ("", "tool_calls")
    assert [(c["name"], json.loads(c["arguments"])) for c in calls.values()] == [("get_weather", {"q": 7})]


def test_named_tool_choice_forces_that_call(client):
    reply = client.chat.completions.create(model="qwen3", messages=HI, tools=[WEATHER, TIME],
                                           tool_choice={"type": "function", "function": {"name": "get_time"}})
    (call,) = reply.choices[0].message.tool_calls
    assert (call.function.name, json.loads(call.function.arguments)) == ("get_time", {})


def test_tool_choice_none_leaves_tools_out(client):
    reply = client.chat.completions.create(model="qwen3", messages=HI, tools=[WEATHER], tool_choice="none",
                                           extra_body=NO_THINKING)
    assert reply.choices[0].message.tool_calls is None
    assert reply.choices[0].message.content.startswith("<tool_call>")


def test_tool_results_go_back_in(client):
    messages = [*HI, {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"q": 7}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}]
    reply = client.chat.completions.create(model="qwen3", messages=messages, tools=[WEATHER])
    assert reply.choices[0].message.content == "Hi"


@pytest.mark.parametrize("request_args, param", [
    ({"tools": [{"type": "function", "function": {"name": "bad name"}}]}, "tools[0].function.name"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": []}}}]},
     "tools[0].function.parameters.properties"),
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
     "tool_choice.function.name"),
    ({"messages": [*HI, {"role": "tool", "tool_call_id": "x", "content": "21"}]}, "messages[1]"),
    ({"model": "llama", "tools": [WEATHER]}, "tools"),
    ({"extra_body": {"chat_template_kwargs": {"tokenize": True}}}, "chat_template_kwargs"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {
        "type": "string", "pattern": "(?<=a)b"}}}}, "response_format"),
])
def test_bad_tool_requests_are_400_naming_the_field(client, request_args, param):
    args = {"model": "qwen3", "messages": HI, **request_args}
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(**args)
    assert caught.value.status_code == 400
    assert caught.value.body["param"] == param
    if args["model"] == "llama":
        assert "`llama` cannot take tools" in caught.value.body["message"]
    assert client.chat.completions.create(model="qwen3", messages=HI).choices[0].message.content == "Hi"


UNIT = {"type": "object", "properties": {"unit": {"enum": ["C", "F"]}, "ok": {"type": "boolean"}},
        "required": ["unit", "ok"], "additionalProperties": False}


@pytest.mark.parametrize("stream", [False, True])
def test_response_format_json_schema_constrains_the_reply(client, stream):
    import jsonschema

    fmt = {"type": "json_schema", "json_schema": {"name": "unit", "schema": UNIT}}
    args = dict(model="qwen3", messages=HI, response_format=fmt, extra_body=NO_THINKING)
    if stream:
        text = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(**args, stream=True)
                       if c.choices)
    else:
        text = client.chat.completions.create(**args).choices[0].message.content
    jsonschema.validate(json.loads(text), UNIT)  # the scripted model alone would write a <tool_call>
