"""The Chat tab's Thinking block, switch and transcript on the tiny scripted Qwen3 (real tokenizer and template)."""
from __future__ import annotations

import pytest

from demo.hub import Hub
from demo.manager import ModelManager
from demo.registry import parse_registry
from demo.ui import chat_handlers as chat
from demo.ui import share_handlers
from demo.ui.thinking import NO_SWITCH
from demo.votes import VoteStore
from tests.tiny import make_scripted_qwen3, make_tiny_chat_model

CONTROLS = (False, 0.7, 0.9, 50, 1.0, 32, -1, True)


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    root = tmp_path_factory.mktemp("chat_thinking")
    folders = {"qwen3": make_scripted_qwen3(root / "qwen3"), "llama": make_tiny_chat_model(root / "llama")}
    registry = parse_registry("models:\n" + "".join(
        f"  - id: {name}\n    name: {name}\n    source: {{path: {folder}}}\n    dtype: float32\n"
        for name, folder in folders.items()))
    return Hub(registry, ModelManager(registry), votes=VoteStore(root / "votes.sqlite3"))


def ask(hub, session, text, thinking=True):
    _, session, _, _ = chat.user_message(text, session, None, hub)
    return [view for _, view, _ in chat.bot_reply(hub, session, "qwen3", "", *CONTROLS, thinking=thinking)]


def test_thinking_streams_into_a_block_that_closes_above_the_answer(hub):
    session = chat.new_session()
    views = ask(hub, session, "Hello")
    user, block, answer = views[-1]
    assert user == {"role": "user", "content": "Hello"}
    assert block["content"] == "Hmm" and block["metadata"]["title"] == "Thinking"
    assert block["metadata"]["status"] == "done" and block["metadata"]["duration"] >= 0
    assert answer["content"].startswith("Hi\n\n*qwen3 · 5 tokens")
    assert session.turns[-1].reasoning == "Hmm" and session.turns[-1].content == "Hi"
    # the second turn sends the first reply back (its reasoning apart: the template drops it), no refusal
    views = ask(hub, session, "Again")
    assert [m.get("metadata", {}).get("title") for m in views[-1]] == [None, "Thinking", None, None, "Thinking", None]
    assert session.turns[-1].content == "Hi"
    # a shared transcript keeps the thinking apart from the answer
    messages = share_handlers.chat_transcript(session)["panes"][0]["messages"]
    assert messages[1]["metadata"]["title"] == "Thinking" and messages[2]["content"].startswith("Hi")


def test_thinking_switch_off_passes_enable_thinking_false(hub):
    session = chat.new_session()
    user, answer = ask(hub, session, "Hello", thinking=False)[-1]
    assert answer["content"].startswith("<tool_call>")  # the scripted reply after "</think>\n\n": no block
    assert session.turns[-1].reasoning == ""


def test_switch_is_off_and_says_why_for_a_template_without_a_thinking_variable(hub):
    on, off = chat.thinking_switch(hub, "qwen3"), chat.thinking_switch(hub, "llama")
    assert on["interactive"] is True and "enable_thinking" in on["info"]
    assert off["interactive"] is False and off["info"] == NO_SWITCH and off["value"] is False


def last(generator):
    out = None
    for out in generator:
        pass
    return out


def test_compare_shows_each_models_thinking_apart(hub):
    from demo.ui import compare_handlers as compare

    session = compare.new_session()
    compare.user_message(hub, "Hello", ["qwen3", "llama"], session)
    session, *views, _ = last(compare.reply(hub, session, False, 0.7, 0.9, 50, 1.0, 8, -1, True))
    qwen3, llama = views[0], views[1]
    assert qwen3[1]["metadata"]["title"] == "Thinking" and qwen3[1]["metadata"]["status"] == "done"
    assert (qwen3[1]["content"], qwen3[2]["content"]) == ("Hmm", "Hi")
    assert all("metadata" not in m for m in llama)  # a model without reasoning shows its answer only
    assert compare.for_model(session.turns["qwen3"])[-1] == {"role": "assistant", "content": "Hi",
                                                             "reasoning_content": "Hmm"}


def test_arena_judges_see_thinking_collapsed_and_votes_keep_it_apart(hub):
    from demo.ui import arena_handlers as arena

    hub.available_ids = lambda: ["qwen3", "llama"]
    session = arena.new_session()
    arena.user_message(hub, "Hello", session)
    session, chat_a, chat_b, _ = last(arena.reply(hub, session))
    side = session.round.models.index("qwen3")
    view = (chat_a, chat_b)[side]["value"]
    assert view[1]["metadata"] == {"title": "Thinking", "status": "done"} and view[2]["content"] == "Hi"
    assert session.round.conversations[side][-1] == {"role": "assistant", "content": "Hi", "reasoning_content": "Hmm"}
    arena.vote(hub, session, "a")
    stored = hub.votes.votes()[-1]
    conversation = (stored.conversation_a, stored.conversation_b)[side]
    assert conversation[-1] == {"role": "assistant", "content": "Hi", "reasoning_content": "Hmm"}


def test_compare_thinking_off_reaches_the_templates_that_have_it_and_the_other_pane_says_so(hub):
    from demo.ui import compare_handlers as compare
    from demo.ui import inspector_handlers

    switch, chosen = compare.thinking_switch(hub, ["qwen3", "llama"])
    assert switch["interactive"] is True and "Applies to qwen3" in switch["info"] and "llama" in switch["info"]
    assert compare.thinking_switch(hub, ["qwen3", "llama"], chosen)[1] == chosen  # the same set: left alone
    assert compare.thinking_switch(hub, ["llama"], chosen)[0]["interactive"] is False
    session = compare.new_session()
    compare.user_message(hub, "Hello", ["qwen3", "llama"], session)
    session, *views, _ = last(compare.reply(hub, session, True, thinking=False))
    assert all("metadata" not in m for m in views[0]) and views[0][-1]["content"].startswith("<tool_call>")
    assert not views[4].endswith(compare.NO_SWITCH_NOTE) and views[5].endswith(compare.NO_SWITCH_NOTE)
    # the prompt the model got: the template's "thinking off" opening, as the inspector shows it
    shown, ids, _ = inspector_handlers.compare_prompt(hub, session, "qwen3", True, None, thinking=False)
    assert prompt_text(shown).endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert inspector_handlers.compare_prompt(hub, session, "qwen3", True, None)[1] != ids


def test_arena_thinking_off_is_stored_with_the_vote_and_told_after_it(hub):
    from demo.ui import arena_handlers as arena

    hub.available_ids = lambda: ["qwen3", "llama"]
    session = arena.new_session()
    arena.user_message(hub, "Hello", session)
    for session, chat_a, chat_b, _ in arena.reply(hub, session, thinking=False):
        assert all("duration" not in m.get("metadata", {}) for m in chat_a["value"] + chat_b["value"])
    side = session.round.models.index("qwen3")
    assert session.round.conversations[side][-1]["content"].startswith("<tool_call>")
    arena.vote(hub, session, "tie")
    stored = hub.votes.votes()[-1]
    settings = (stored.settings_a, stored.settings_b)
    assert settings[side]["chat_template_kwargs"] == {"enable_thinking": False}
    assert "chat_template_kwargs" not in settings[1 - side]
    assert "the template of llama has no thinking switch" in arena.result_text(session)


def prompt_text(shown: str) -> str:
    """The prompt text of the inspector's HTML, its special tokens unmarked."""
    import html
    import re

    return html.unescape(re.sub(r"<[^>]+>", "", shown.rsplit('<pre class="prompt-text"', 1)[1].split(">", 1)[1]))


TOOLS = '[{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", ' \
        '"properties": {"q": {"type": "integer"}}}}}]'


def test_a_tool_call_shows_as_a_block_and_its_result_goes_back_as_a_tool_message(hub):
    from demo.ui import inspector_handlers

    session = chat.new_session()
    _, session, _, status = chat.user_message("Weather?", session, None, hub, TOOLS, "qwen3")
    assert status == ""
    *_, (_, view, status) = chat.bot_reply(hub, session, "qwen3", "", *CONTROLS, thinking=False, tools=TOOLS)
    call = session.turns[-1].tool_calls[0]
    assert (call.name, call.arguments) == ("get_weather", '{"q": 7}') and session.turns[-1].content == ""
    assert view[1]["metadata"] == {"title": "🛠️ Tool call: get_weather", "status": "done"}
    assert '"q": 7' in view[1]["content"] and "`get_weather`" in status
    assert chat.tool_result("", session, None, hub)[3] == "Type what `get_weather` returned first."
    box, session, view, status = chat.tool_result("sunny", session, None, hub)
    assert (box, status) == ("", "") and view[-1]["role"] == "user" and "sunny" in view[-1]["content"]
    assert chat.message_of(session.turns[-1]) == {"role": "tool", "content": "sunny", "tool_call_id": call.id,
                                                  "name": "get_weather"}
    assert chat.tool_result("again", session, None, hub)[3] == "No tool call is waiting for a result."
    *_, (_, view, _) = chat.bot_reply(hub, session, "qwen3", "", *CONTROLS, thinking=False, tools=TOOLS)
    assert [t.role for t in session.turns] == ["user", "assistant", "tool", "assistant"]
    shown, _, _ = inspector_handlers.chat_prompt(hub, session, "qwen3", "", None, False, TOOLS)
    assert "<tool_response>\nsunny\n</tool_response>" in prompt_text(shown) and "get_weather" in shown
    text, session, _ = chat.undo(session)
    assert text == "Weather?" and session.turns == []


def test_bad_tools_are_refused_before_sending_and_a_model_without_tools_says_why(hub):
    session = chat.new_session()
    text, _, _, status = chat.user_message("Hi", session, None, hub, "[{", "qwen3")
    assert text == "Hi" and status.startswith("⚠️ Tools: tools: not valid JSON") and session.turns == []
    bad_name = '[{"type": "function", "function": {"name": "get weather"}}]'
    status = chat.user_message("Hi", session, None, hub, bad_name, "qwen3")[3]
    assert "tools[0].function.name" in status and session.turns == []
    assert chat.tools_box(hub, "qwen3")["interactive"] is True
    box = chat.tools_box(hub, "llama")
    assert box["interactive"] is False and "no tool calls" in box["info"]
    _, session, _, status = chat.user_message("Hi", session, None, hub, bad_name, "llama")
    assert status == ""  # not sent to this model, so not in the way
    *_, (_, _, status) = chat.bot_reply(hub, session, "llama", "", *CONTROLS, tools=TOOLS)
    assert status.startswith("Tools not sent:") and session.turns[-1].tool_calls == []
