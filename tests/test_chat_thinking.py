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
