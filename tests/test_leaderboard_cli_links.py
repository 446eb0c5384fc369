"""`python -m demo leaderboard` and the share-a-view links, without a server."""
import json

import pytest

from demo.cli import main
from demo.hub import Hub
from demo.manager import ModelManager
from demo.registry import parse_registry
from demo.ui import links
from demo.votes import Vote, VoteStore

REGISTRY = "models:\n" + "".join(f"  - id: {m}\n    name: {m.title()}\n    source: {{path: /nowhere/{m}}}\n"
                                 for m in ("alpha", "beta", "gamma"))


@pytest.fixture
def store(tmp_path):
    store = VoteStore(tmp_path / "votes.sqlite3")
    for k, (a, b, winner) in enumerate([("alpha", "beta", "a"), ("alpha", "beta", "a"), ("beta", "alpha", "a"),
                                        ("beta", "gamma", "a"), ("gamma", "alpha", "tie")]):
        store.record(Vote(f"r{k}", a, b, winner, [{"role": "user", "content": "q"}], [], {"greedy": True}, {}))
    return store


def test_leaderboard_json_and_exports(store, tmp_path, capsys):
    jsonl, csv_path = tmp_path / "out.jsonl", tmp_path / "out.csv"
    assert main(["leaderboard", "--votes", str(store.path), "--json", "--bootstrap", "20", "--jsonl", str(jsonl),
                 "--csv", str(csv_path)]) == 0
    out = capsys.readouterr()
    board = json.loads(out.out)
    assert board["votes"] == 5 and [r["model"] for r in board["rows"]] == ["alpha", "beta", "gamma"]
    assert board["rows"][0]["wins"] == 2 and board["rows"][0]["ties"] == 1
    assert "wrote 5 votes to" in out.err
    assert [json.loads(line)["round_id"] for line in jsonl.read_text().splitlines()] == [f"r{k}" for k in range(5)]


def test_leaderboard_table(store, capsys):
    assert main(["leaderboard", "--votes", str(store.path), "--bootstrap", "20"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"5 votes in {store.path}") and " 1  alpha" in out and "win rate of row vs column" in out


def test_leaderboard_without_a_database_is_a_clear_error(tmp_path, capsys):
    assert main(["leaderboard", "--votes", str(tmp_path / "none.sqlite3")]) == 2
    assert "no votes database here" in capsys.readouterr().err


@pytest.fixture
def hub(tmp_path):
    registry = parse_registry(REGISTRY)
    return Hub(registry, ModelManager(registry), votes=VoteStore(tmp_path / "v.sqlite3"))


def test_compare_link_selects_the_tab_and_the_known_models(hub):
    tabs, _, _, models, status, *_ = links.on_load(hub, {"compare": "beta, alpha,nope"})
    assert tabs["selected"] == "compare" and models["value"] == ["beta", "alpha"]
    assert status.startswith("Unknown model nope")


def test_model_link_and_an_unknown_model(hub):
    tabs, model, status, *_ = links.on_load(hub, {"model": "gamma"})
    assert tabs["selected"] == "chat" and model["value"] == "gamma"
    _, _, status, *_ = links.on_load(hub, {"model": "zeta"})
    assert "“zeta”" in status


def test_transcript_link_shows_the_saved_panes(hub):
    token = hub.votes.save_transcript({"kind": "compare", "panes": [
        {"model": "alpha", "messages": [{"role": "user", "content": "hi"}], "footer": "3 tokens"}]})
    tabs, *_, shared_tab, header, first, second, _, _ = links.on_load(hub, {"transcript": token})
    assert tabs["selected"] == "shared" and shared_tab["visible"] is True and "read-only" in header
    assert first["value"] == [{"role": "user", "content": "hi"}] and first["label"] == "alpha · 3 tokens"
    assert second["visible"] is False
