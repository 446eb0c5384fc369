"""The vote store and the arena's voting rules (no model involved)."""
import csv
import json
import sqlite3

import pytest

from demo.arena import ArenaError, ArenaRound, cast_vote, check_can_vote, draw_pair
from demo.votes import Vote, VoteError, VoteStore, export_csv, export_jsonl

CONVO = [{"role": "user", "content": "hi <|im_end|>"}, {"role": "assistant", "content": "héllo"}]


def a_vote(round_id="r1", winner="a"):
    return Vote(round_id, "m1", "m2", winner, CONVO, CONVO[:1], {"temperature": 0.2}, {"greedy": True})


def test_record_and_read_back_everything(tmp_path):
    store = VoteStore(tmp_path / "v.sqlite3")
    stored = store.record(a_vote())
    assert stored.id == 1 and stored.created_at.endswith("+00:00")
    (back,) = VoteStore(tmp_path / "v.sqlite3").votes()
    assert back == stored
    assert back.conversation_a == CONVO and back.settings_b == {"greedy": True}


def test_file_is_in_wal_mode_with_full_sync(tmp_path):
    store = VoteStore(tmp_path / "v.sqlite3")
    with sqlite3.connect(store.path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    with store._connect() as db:
        assert db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_one_vote_per_round(tmp_path):
    store = VoteStore(tmp_path / "v.sqlite3")
    store.record(a_vote())
    with pytest.raises(VoteError, match="round r1 already has a vote"):
        store.record(a_vote(winner="b"))
    assert [v.winner for v in store.votes()] == ["a"]


def test_bad_choice_and_self_vote_are_refused(tmp_path):
    store = VoteStore(tmp_path / "v.sqlite3")
    with pytest.raises(VoteError, match="unknown vote 'c'"):
        store.record(a_vote(winner="c"))
    with pytest.raises(VoteError, match="against itself"):
        store.record(Vote("r2", "m1", "m1", "a", [], []))
    assert store.votes() == []


def test_exports(tmp_path):
    store = VoteStore(tmp_path / "v.sqlite3")
    store.record(a_vote("r1", "a"))
    store.record(a_vote("r2", "tie"))
    votes = store.votes()
    assert export_jsonl(votes, tmp_path / "v.jsonl") == 2
    lines = [json.loads(x) for x in (tmp_path / "v.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [x["winner"] for x in lines] == ["a", "tie"] and lines[0]["conversation_a"] == CONVO
    export_csv(votes, tmp_path / "v.csv")
    rows = list(csv.DictReader(open(tmp_path / "v.csv", encoding="utf-8")))
    assert rows[1]["round_id"] == "r2" and json.loads(rows[0]["conversation_a"]) == CONVO


def test_transcripts_round_trip(tmp_path):
    store = VoteStore(tmp_path / "v.sqlite3")
    token = store.save_transcript({"kind": "compare", "panes": [{"model": "m1", "messages": CONVO}]})
    assert len(token) >= 16 and store.transcript(token)["panes"][0]["messages"] == CONVO
    assert store.transcript("nope") is None


def test_arena_refuses_early_double_and_failed_votes(tmp_path):
    store = VoteStore(tmp_path / "v.sqlite3")
    arena_round = ArenaRound(("m1", "m2"))
    with pytest.raises(VoteError, match="both models must answer"):
        cast_vote(store, arena_round, "a")
    arena_round.finish = ["stop", None]
    arena_round.streaming = True
    with pytest.raises(VoteError, match="wait until both answers"):
        check_can_vote(arena_round)
    arena_round.streaming = False
    with pytest.raises(VoteError, match="both models must answer"):
        check_can_vote(arena_round)
    arena_round.finish = ["stop", "error"]
    with pytest.raises(VoteError, match="Model B failed"):
        check_can_vote(arena_round)
    arena_round.finish = ["stop", "length"]
    vote = cast_vote(store, arena_round, "both_bad")
    assert vote.round_id == arena_round.round_id and arena_round.vote == "both_bad"
    with pytest.raises(VoteError, match="already has your vote"):
        cast_vote(store, arena_round, "a")
    assert len(store.votes()) == 1


def test_draw_pair_gives_two_different_models_in_both_orders():
    import random

    rng = random.Random(0)
    pairs = {draw_pair(["x", "y", "z"], rng) for _ in range(60)}
    assert all(a != b for a, b in pairs) and ("x", "y") in pairs and ("y", "x") in pairs
    with pytest.raises(ArenaError, match="at least two available models; have 1: x"):
        draw_pair(["x"])
