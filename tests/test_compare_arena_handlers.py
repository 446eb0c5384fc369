"""Compare and Arena tab handlers on scripted fake models: the flows behind the buttons, no server."""
import pytest

from demo.hub import Hub
from demo.manager import ModelManager
from demo.registry import parse_registry
from demo.ui import arena_handlers as arena
from demo.ui import compare_handlers as compare
from demo.ui import share_handlers
from demo.ui.chat_handlers import ChatSession, Turn
from demo.votes import VoteStore
from tests.fakes import scripted

REPLIES = {"alpha": "alpha says hi", "beta": "beta answers", "gamma": None}  # gamma fails to load
REGISTRY = "models:\n" + "".join(f"  - id: {m}\n    name: {m.title()}\n    source: {{path: /nowhere/{m}}}\n"
                                 for m in REPLIES)


def load(entry):
    if REPLIES[entry.id] is None:
        raise OSError("weights are gone")
    return scripted(REPLIES[entry.id], step_s=0.002)


@pytest.fixture
def hub(tmp_path):
    registry = parse_registry(REGISTRY)
    hub = Hub(registry, ModelManager(registry, loader=load), votes=VoteStore(tmp_path / "v.sqlite3"))
    hub.available_ids = lambda: ["alpha", "beta"]
    return hub


def last(generator):
    out = None
    for out in generator:
        pass
    return out


def bot_texts(views, n):
    return [chat[-1]["content"] if chat else None for chat in views[:n]]


def test_compare_send_regenerate_and_clear(hub):
    session = compare.new_session()
    *_, status = compare.user_message(hub, "hi", ["alpha"], session)
    assert status == "Choose 2 to 4 models to compare (chosen: 1)."
    text, session, *views, status = compare.user_message(hub, "hi", ["alpha", "beta"], session)
    assert text == "" and status == "" and views[0] == [{"role": "user", "content": "hi"}]
    session, *views, _ = last(compare.reply(hub, session, True))
    assert bot_texts(views, 2) == ["alpha says hi", "beta answers"]
    assert "tokens" in views[4] and "tok/s" in views[5]
    session, *views = compare.retry(session)
    assert [t["role"] for t in session.turns["alpha"]] == ["user"]
    session, *views, _ = last(compare.reply(hub, session, False, 0.7, 0.9, 50, 1.0, 5, -1, True))
    assert bot_texts(views, 2) == ["alpha", "beta "]  # shared max_new_tokens=5
    session, *views, _ = compare.clear(session)
    assert session.turns == {"alpha": [], "beta": []} and views[0] == []


def test_compare_failing_model_shows_its_error_in_its_pane(hub):
    session = compare.new_session()
    compare.user_message(hub, "hi", ["gamma", "alpha"], session)
    session, *views, _ = last(compare.reply(hub, session, True))
    assert "weights are gone" in views[0][-1]["content"] and "⚠️" in views[4]
    assert views[1][-1]["content"] == "alpha says hi"
    # The failed reply is not sent back to the model on the next turn.
    assert compare.for_model(session.turns["gamma"]) == [{"role": "user", "content": "hi"}]


def test_compare_a_new_model_set_starts_a_new_conversation(hub):
    session = compare.new_session()
    compare.user_message(hub, "one", ["alpha", "beta"], session)
    last(compare.reply(hub, session, True))
    compare.user_message(hub, "two", ["beta", "alpha"], session)
    assert session.turns["beta"] == [{"role": "user", "content": "two"}]


def test_arena_round_vote_and_reveal(hub):
    session = arena.new_session()
    session, chat_a, chat_b, result, status = arena.new_round(hub, session)
    assert chat_a["label"] == "Model A" and "New round" in status
    *_, status = arena.vote(hub, session, "a")
    assert "both models must answer" in status
    arena.user_message(hub, "hello", session)
    session, chat_a, chat_b, status = last(arena.reply(hub, session))
    assert "Both answers are in" in status and chat_b["label"] == "Model B"
    assert {chat_a["value"][-1]["content"], chat_b["value"][-1]["content"]} == {"alpha says hi", "beta answers"}
    session, chat_a, chat_b, result, status = arena.vote(hub, session, "tie")
    model_a, model_b = session.round.models
    assert status == "Vote #1 saved." and chat_a["label"] == f"Model A: {model_a}"
    assert f"Model A was **{model_a}**, Model B was **{model_b}**" in result
    (vote,) = hub.votes.votes()
    assert (vote.model_a, vote.model_b, vote.winner) == (model_a, model_b, "tie")
    assert vote.settings_a["greedy"] is True and vote.conversation_a[0] == {"role": "user", "content": "hello"}
    *_, status = arena.vote(hub, session, "a")
    assert "already has your vote" in status
    *_, status = arena.user_message(hub, "more?", session)
    assert "press New round" in status


def test_arena_needs_two_available_models(hub):
    hub.available_ids = lambda: ["alpha"]
    *_, status = arena.new_round(hub, arena.new_session())
    assert "needs at least two available models" in status


def test_chat_transcript_keeps_signatures(hub):
    session = ChatSession([Turn("user", "hi"), Turn("assistant", "hello", "alpha", "3 tokens")])
    payload = share_handlers.chat_transcript(session)
    assert payload["panes"][0]["model"] == "alpha"
    assert payload["panes"][0]["messages"][1]["content"].startswith("hello") and "3 tokens" in \
        payload["panes"][0]["messages"][1]["content"]
    link = share_handlers.share(hub, payload, None)
    token = link.split("?transcript=")[1].split("]")[0]
    assert hub.votes.transcript(token)["panes"][0]["model"] == "alpha"


def test_a_replaced_round_does_not_write_into_the_conversation(hub):
    session = compare.new_session()
    compare.user_message(hub, "hi", ["alpha", "beta"], session)
    old = compare.reply(hub, session, True)
    next(old)
    compare.retry(session)  # Regenerate while the first round still streams
    last(old)  # the old round ends (cancelled) after the new one took over
    assert session.turns["alpha"] == [{"role": "user", "content": "hi"}]
    session, *views, _ = last(compare.reply(hub, session, True))
    assert bot_texts(views, 2) == ["alpha says hi", "beta answers"]
    assert [t["role"] for t in session.turns["beta"]] == ["user", "assistant"]


def test_compare_and_arena_sends_count_against_the_client_rate_limit(tmp_path):
    from types import SimpleNamespace

    registry = parse_registry("limits: {requests_per_minute: 1}\n" + REGISTRY)
    hub = Hub(registry, ModelManager(registry, loader=load), votes=VoteStore(tmp_path / "v.sqlite3"))
    hub.available_ids = lambda: ["alpha", "beta"]
    request = SimpleNamespace(username=None, client=SimpleNamespace(host="10.0.0.7"), headers={})
    *_, status = compare.user_message(hub, "hi", ["alpha", "beta"], compare.new_session(), request)
    assert status == ""
    text, *_, status = compare.user_message(hub, "again", ["alpha", "beta"], compare.new_session(), request)
    assert text == "again" and "Nothing was sent" in status
    *_, status = arena.user_message(hub, "hi", arena.new_session(), request)
    assert "Nothing was sent" in status
    other = SimpleNamespace(username=None, client=SimpleNamespace(host="10.0.0.8"), headers={})
    *_, status = arena.user_message(hub, "hi", arena.new_session(), other)
    assert status == ""


def test_chat_updates_share_a_budget_and_the_last_one_always_shows(hub, monkeypatch):
    """40 tokens at ~100/s: the Chat tab shows the first text at once, then about 16 updates a second per
    reply (fewer when several replies stream), and the final text with its footer."""
    from demo.ui import chat_handlers as chat

    text = "x" * 40
    monkeypatch.setattr(hub.manager, "loader", lambda entry: scripted(text, step_s=0.01))
    controls = (False, 0.7, 0.9, 50, 1.0, 64, -1, True)

    def updates(streaming_elsewhere: int) -> list:
        monkeypatch.setattr(chat._streaming, "count", streaming_elsewhere)
        _, session, _, _ = chat.user_message("go", chat.new_session(), None, hub)
        views = [view for _, view, _ in chat.bot_reply(hub, session, "alpha", "", *controls)]
        assert views[-1][-1]["content"].startswith(text) and "40 tokens" in views[-1][-1]["content"]
        return views

    alone, beside_three = updates(0), updates(3)
    assert 4 <= len(alone) <= 15 < 40
    assert len(beside_three) < len(alone)
