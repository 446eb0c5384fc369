"""Tools, reasoning and structured output on the remote engine (`backend: openai`), end to end.

The remote is a real `transformers serve` process serving the scripted tiny Qwen3 (tests/tiny.py: its replies
follow QWEN3_SCRIPTS): the server renders the real Qwen3 template with the tools it is sent and parses the
model's `<think>` and `<tool_call>` output itself into `reasoning_content` and `tool_calls`. In front of it, a
real hub process, used through the official `openai` client, must give back what a local model gives.
transformers serve takes `tool_choice` and `response_format` but does not enforce them (it logs that it
ignores them); vLLM and SGLang do. That they reach the server is read from its log.
"""
from __future__ import annotations

import json
import time

import httpx
import openai
import pytest

from tests.servers import free_port, start_hub, start_transformers_serve
from tests.tiny import make_scripted_qwen3

REMOTE = "remote-qwen3"
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather somewhere",
                                            "parameters": {"type": "object", "properties": {"q": {"type": "number"}}}}}
HI = [{"role": "user", "content": "Hello"}]
NO_THINKING = {"chat_template_kwargs": {"enable_thinking": False}}


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("remote_tools")
    remote_port, hub_port = free_port(), free_port()
    folder = make_scripted_qwen3(tmp / "qwen3")
    (tmp / "registry.yaml").write_text(f"""
models:
  - id: {REMOTE}
    name: Scripted Qwen3 behind transformers serve
    backend: openai
    base_url: http://127.0.0.1:{remote_port}/v1
    remote_model: {folder}
""")
    remote = start_transformers_serve(folder, remote_port, tmp / "hf")
    hub = start_hub(tmp / "registry.yaml", hub_port)
    try:
        remote.wait_http(f"http://127.0.0.1:{remote_port}/health", 180)
        hub.wait_http(f"http://127.0.0.1:{hub_port}/v1/models", 180)
        yield {"remote": remote, "url": f"http://127.0.0.1:{hub_port}", "registry": tmp / "registry.yaml"}
    finally:
        hub.stop()
        remote.stop()


@pytest.fixture(scope="module")
def client(servers):
    return openai.OpenAI(base_url=servers["url"] + "/v1", api_key="none", max_retries=0, timeout=120,
                         http_client=httpx.Client(trust_env=False))


def streamed(stream) -> dict:
    """A streamed reply put together as the client's deltas give it."""
    out = {"reasoning": "", "content": "", "calls": {}, "finish": None}
    for chunk in stream:
        for choice in chunk.choices:
            out["reasoning"] += getattr(choice.delta, "reasoning_content", None) or ""
            out["content"] += choice.delta.content or ""
            for call in choice.delta.tool_calls or []:
                entry = out["calls"].setdefault(call.index, {"id": call.id, "name": "", "arguments": ""})
                entry["name"] += call.function.name or ""
                entry["arguments"] += call.function.arguments or ""
            out["finish"] = choice.finish_reason or out["finish"]
    return out


def test_the_remotes_tool_call_comes_back_in_openai_format(client):
    reply = client.chat.completions.create(model=REMOTE, messages=HI, tools=[WEATHER], extra_body=NO_THINKING)
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None and choice.message.reasoning_content is None
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.id  # the server's id: a tool result will name it
    assert (call.function.name, json.loads(call.function.arguments)) == ("get_weather", {"q": 7})


def test_the_remotes_tool_call_streams_as_delta_tool_calls(client):
    out = streamed(client.chat.completions.create(model=REMOTE, messages=HI, tools=[WEATHER], stream=True,
                                                  extra_body=NO_THINKING))
    assert (out["content"], out["finish"]) == ("", "tool_calls")
    assert [(c["name"], json.loads(c["arguments"])) for c in out["calls"].values()] == [("get_weather", {"q": 7})]


def test_the_tools_reach_the_remotes_template(client):
    """The server renders the tools into the prompt (Qwen3's "# Tools" system block): its prompt count, which
    the hub reports, grows by them."""
    bare = client.chat.completions.create(model=REMOTE, messages=HI, extra_body=NO_THINKING)
    tooled = client.chat.completions.create(model=REMOTE, messages=HI, tools=[WEATHER], extra_body=NO_THINKING)
    assert tooled.usage.prompt_tokens > bare.usage.prompt_tokens + 50


@pytest.mark.parametrize("stream", [False, True])
def test_the_remotes_reasoning_comes_apart_from_the_answer(client, stream):
    if stream:
        out = streamed(client.chat.completions.create(model=REMOTE, messages=HI, stream=True))
        reasoning, content, finish = out["reasoning"], out["content"], out["finish"]
    else:
        choice = client.chat.completions.create(model=REMOTE, messages=HI).choices[0]
        reasoning, content, finish = choice.message.reasoning_content, choice.message.content, choice.finish_reason
    assert (reasoning, content, finish) == ("Hmm", "Hi", "stop")


def test_tool_results_go_back_to_the_remote(client):
    messages = [*HI, {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"q": 7}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}]
    reply = client.chat.completions.create(model=REMOTE, messages=messages, tools=[WEATHER])
    assert reply.choices[0].message.content == "Hi"


def test_tool_choice_and_response_format_reach_the_remote(client, servers):
    reply = client.chat.completions.create(
        model=REMOTE, messages=HI, tools=[WEATHER], tool_choice="required", extra_body=NO_THINKING,
        reasoning_effort="low",
        response_format={"type": "json_schema", "json_schema": {"name": "w", "schema": {"type": "object"}}})
    assert reply.choices[0].message.tool_calls[0].function.name == "get_weather"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # transformers serve logs the fields it was sent and does not enforce
        lines = [line for line in servers["remote"].lines if "Ignoring unsupported fields" in line
                 and "'tool_choice'" in line and "'response_format'" in line and "'reasoning_effort'" in line]
        if lines:
            return
        time.sleep(0.2)
    raise AssertionError(f"the remote never saw tool_choice, response_format and reasoning_effort:\n{servers['remote'].output[-3000:]}")


@pytest.mark.parametrize("request_args, param", [
    ({"tools": [{"type": "function", "function": {"name": "bad name"}}]}, "tools[0].function.name"),
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
     "tool_choice.function.name"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": 3}}}, "response_format"),
    ({"response_format": {"type": "yaml"}}, "response_format"),
])
def test_bad_tool_requests_for_the_remote_get_the_hubs_400(client, request_args, param):
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=REMOTE, messages=HI, **request_args)
    assert caught.value.status_code == 400 and caught.value.body["param"] == param


def test_the_chat_tab_shows_the_remotes_thinking_apart(servers):
    """The Chat tab's handlers (in this process) with the remote: a Thinking block, then the answer."""
    from demo.app import make_hub
    from demo.ui import chat_handlers as h

    hub = make_hub(servers["registry"])
    _, session, _, status = h.user_message("Hello", h.new_session(), None, hub)
    assert status == ""
    view = list(h.bot_reply(hub, session, REMOTE, "", False, 0.0, 1.0, 0, 1.0, 32, -1, True))[-1][1]
    turn = session.turns[-1]
    assert (turn.reasoning, turn.content) == ("Hmm", "Hi") and turn.thinking_s is not None
    assert view[-2]["metadata"] == {"title": "Thinking", "status": "done", "duration": round(turn.thinking_s, 1)}
    assert view[-2]["content"] == turn.reasoning and view[-1]["content"].startswith(turn.content)


def test_a_whole_json_reply_from_the_remote_maps_as_its_stream_does(servers, monkeypatch):
    """A server that answers with one whole completion (here: asked for one) gives the same chunks."""
    from adapters.base import ChatOptions
    from demo.engine import stream_chat
    from demo.manager import ModelManager
    from demo.registry import load_registry
    from demo.remote import RemoteModel

    asked = RemoteModel.request_body

    def whole(self, *args):
        body = {**asked(self, *args), "stream": False}
        del body["stream_options"]
        return body

    monkeypatch.setattr(RemoteModel, "request_body", whole)
    remote = ModelManager(load_registry(servers["registry"])).get(REMOTE)
    call = list(stream_chat(remote, HI, chat=ChatOptions(tools=[WEATHER], template_kwargs={"enable_thinking": False})))
    assert len(call) == 1 and call[0].finish_reason == "stop" and call[0].text == ""
    (tool_call,) = call[0].tool_calls
    assert (tool_call.name, json.loads(tool_call.arguments)) == ("get_weather", {"q": 7})
    thought = list(stream_chat(remote, HI))[-1]
    assert (thought.reasoning, thought.text, thought.finish_reason) == ("Hmm", "Hi", "stop")
    assert thought.stats.new_tokens >= 4 and thought.stats.prompt_tokens > 5  # the remote's usage


# -- the request and the assembly of streamed calls, as rules -------------------------------------------------
def test_the_request_carries_tool_turns_and_the_clients_fields():
    from demo.params import GenerationParams
    from demo.remote import RemoteModel

    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"q": 7}'}}
    messages = [*HI, {"role": "assistant", "content": "", "tool_calls": [call], "reasoning_content": "Hmm"},
                {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}]
    fields = {"tools": [WEATHER], "tool_choice": "required", "response_format": {"type": "json_object"}}
    body = RemoteModel("r", "http://127.0.0.1:9/v1", "m", None, GenerationParams()).request_body(
        messages, GenerationParams(), fields)
    assert body["messages"] == [*HI, {"role": "assistant", "content": "", "tool_calls": [call]},
                                {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}]
    assert {k: body[k] for k in fields} == fields and body["stream"] is True


def test_streamed_call_pieces_become_whole_calls_in_order():
    from demo.remote import _ToolCalls

    calls = _ToolCalls()
    pieces = [{"index": 0, "id": "a", "type": "function", "function": {"name": "get_weather", "arguments": ""}},
              {"index": 0, "function": {"arguments": '{"q": '}}, {"index": 0, "function": {"arguments": "7}"}},
              {"index": 1, "id": "b", "function": {"name": "get_time", "arguments": "{}"}}]
    for piece in pieces[:3]:
        calls.add(piece, 0)
    assert calls.new() == []  # call 0 may still grow
    calls.add(pieces[3], 0)
    (first,) = calls.new()  # a later index started: call 0 is whole
    assert (first.id, first.name, json.loads(first.arguments)) == ("a", "get_weather", {"q": 7})
    calls.complete()
    (second,) = calls.new()
    assert (second.id, second.name, second.arguments) == ("b", "get_time", "{}")
