"""Reasoning and tool-call parsing of scripted model output, split at every position (inside markers too)."""
from __future__ import annotations

import json

import pytest

from adapters.replyparse import ReplyDelta, ReplyFormat, ReplyParser

QWEN = ReplyFormat(think=True, tools="hermes")
NAMES = ["get_weather", "get_time"]
PARIS = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
OSLO = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo", "unit": "C"}}\n</tool_call>'
BROKEN = '<tool_call>\n{"name": "get_weather", "arguments": {"city": }\n</tool_call>'

# id: (format, reply text, prompt opened <think>, tool names, (reasoning, content, [(name, arguments)]))
CASES = {
    "think_then_answer": (QWEN, "<think>\nAdd them: 2+2.\n</think>\n\n4 is the answer.", False, None,
                          ("Add them: 2+2.", "4 is the answer.", [])),
    "think_then_call": (QWEN, f"<think>\nNeed the weather.\n</think>\n\n{PARIS}", False, NAMES,
                        ("Need the weather.", "", [("get_weather", {"city": "Paris"})])),
    "text_then_two_calls": (QWEN, f"Let me check.\n{PARIS}\n{OSLO}", False, NAMES,
                            ("", "Let me check.\n", [("get_weather", {"city": "Paris"}),
                                                      ("get_weather", {"city": "Oslo", "unit": "C"})])),
    "broken_call_is_content": (QWEN, f"<think>\nhm\n</think>\n\n{BROKEN}", False, NAMES, ("hm", BROKEN, [])),
    "unclosed_call_at_the_end": (QWEN, '<tool_call>\n{"name": "get_time", "arguments": {}}', False, NAMES,
                                 ("", "", [("get_time", {})])),
    "unclosed_broken_call": (QWEN, "Sure. <tool_call>\n{\"name\": ", False, NAMES,
                             ("", "Sure. <tool_call>\n{\"name\": ", [])),
    "no_tools_calls_stay_text": (QWEN, PARIS, False, None, ("", PARIS, [])),
    "reasoning_cut_off": (QWEN, "<think>\nstill thinking about <tool_call> and </thin", False, NAMES,
                          ("still thinking about <tool_call> and </thin", "", [])),
    "think_off_answer": (QWEN, "Hello <think> is just text here", False, None,
                         ("", "Hello <think> is just text here", [])),
    "prompt_opened_think": (ReplyFormat(think=True), "Hmm, 3.\n</think>\n\nThree.", True, None,
                            ("Hmm, 3.", "Three.", [])),
    "call_then_text": (QWEN, f"{PARIS}\nDone.", False, NAMES, ("", "Done.", [("get_weather", {"city": "Paris"})])),
    "llama_json_call": (ReplyFormat(tools="llama3_json"), '{"name": "get_weather", "parameters": {"city": "Paris"}}',
                        False, NAMES, ("", "", [("get_weather", {"city": "Paris"})])),
    "llama_json_not_a_call": (ReplyFormat(tools="llama3_json"), '{"answer": 4}', False, NAMES,
                              ("", '{"answer": 4}', [])),
    "llama_plain_text": (ReplyFormat(tools="llama3_json"), "It is {sunny}.", False, NAMES,
                         ("", "It is {sunny}.", [])),
    "glm_call": (ReplyFormat(tools="chatglm3"), 'get_weather\n```python\ntool_call(city="Paris", days=2)\n```',
                 False, NAMES, ("", "", [("get_weather", {"city": "Paris", "days": 2})])),
    "glm_call_not_literal": (ReplyFormat(tools="chatglm3"), 'get_weather\n```python\ntool_call(city=open("x"))\n```',
                             False, NAMES, ("", 'get_weather\n```python\ntool_call(city=open("x"))\n```', [])),
    "glm_text": (ReplyFormat(tools="chatglm3"), "get_weather is a tool\nyes", False, NAMES,
                 ("", "get_weather is a tool\nyes", [])),
    "glm_text_starting_like_a_name": (ReplyFormat(tools="chatglm3"), "get", False, NAMES, ("", "get", [])),
}


def run(fmt, pieces, opened, names) -> tuple[ReplyDelta, list[ReplyDelta]]:
    parser = ReplyParser(fmt, in_reasoning=opened, tool_names=names)
    deltas = [parser.feed(p) for p in pieces] + [parser.finish()]
    total = ReplyDelta()
    for d in deltas:
        total = total.add(d)
    return total, deltas


def expect(total: ReplyDelta, expected) -> None:
    reasoning, content, calls = expected
    assert total.reasoning == reasoning
    assert total.content == content
    assert [(c.name, json.loads(c.arguments)) for c in total.tool_calls] == calls
    assert all(c.id.startswith("call_") for c in total.tool_calls)


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_split_gives_the_same_parse(case):
    fmt, text, opened, names, expected = CASES[case]
    expect(run(fmt, [text], opened, names)[0], expected)
    expect(run(fmt, list(text), opened, names)[0], expected)  # a character a token
    for i in range(len(text) + 1):
        for j in range(i, len(text) + 1, 7):  # two cuts: inside markers, JSON and newlines
            expect(run(fmt, [text[:i], text[i:j], text[j:]], opened, names)[0], expected)


def test_answer_streams_as_it_comes_and_held_text_is_only_a_possible_marker():
    parser = ReplyParser(QWEN, tool_names=NAMES)
    assert parser.feed("<think>\nLet me").reasoning == "Let me"
    assert parser.feed(" see.\n</th").reasoning == " see."  # the newline may precede </think>
    assert parser.in_reasoning
    delta = parser.feed("ink>\n\nThe answer <tool")
    assert (delta.reasoning, delta.content) == ("", "The answer ")
    assert parser.feed("box> is 4").content == "<toolbox> is 4"
