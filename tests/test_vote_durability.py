"""Votes survive a hard kill: cast votes through a running server, SIGKILL it, restart, find them all.

Driven with the official client (gradio_client) over loopback, on two tiny random models.
"""
from __future__ import annotations

import csv
import json
import re
import subprocess
import sys

import pytest

from tests.hubserver import ROOT, HubServer, tiny_entry, tiny_models, write_registry

pytestmark = pytest.mark.slow
Client = pytest.importorskip("gradio_client").Client

CHOICES = ["a", "b", "tie", "both_bad"]


def play_round(client, winner: str) -> tuple[str, str]:
    """One arena round through the app's API; returns the (model A, model B) the acknowledgement revealed."""
    client.predict(api_name="/arena_new_round")
    client.predict("Hello, who are you?", api_name="/arena_send")
    *_, status = client.predict(api_name="/arena_reply")
    assert "Both answers are in" in status, status
    *_, result, status = client.predict(api_name=f"/arena_vote_{winner}")
    assert re.fullmatch(r"Vote #\d+ saved\.", status), status
    return re.search(r"Model A was \*\*(\S+)\*\*, Model B was \*\*(\S+)\*\*", result).groups()


def test_acknowledged_votes_survive_sigkill(tmp_path):
    tiny = tiny_models(tmp_path, "tiny-a", "tiny-b", "tiny-c")
    registry = write_registry(tmp_path / "registry.yaml",
                              [tiny_entry(name, folder, 12) for name, folder in tiny.items()], default="tiny-a")
    votes = tmp_path / "votes.sqlite3"
    server = HubServer(registry, votes, tmp_path / "server.log").start()
    try:
        client = Client(server.url, verbose=False)
        acknowledged = [(*play_round(client, winner), winner) for winner in CHOICES]
        # A vote before the round's answers, and a second vote on a round, are refused.
        client.predict(api_name="/arena_new_round")
        *_, status = client.predict(api_name="/arena_vote_a")
        assert "both models must answer" in status
    finally:
        server.kill()  # SIGKILL right after the last acknowledgement
    assert server.process.returncode == -9

    server = HubServer(registry, votes, tmp_path / "server.log").start()
    try:
        summary, table, *_ = Client(server.url, verbose=False).predict(api_name="/leaderboard")
        assert summary.startswith(f"**{len(CHOICES)} votes**")
        assert sum(row[4] for row in table["data"]) == 2 * len(CHOICES)  # each vote counts for both models
    finally:
        server.kill()

    # The CLI reads the same file: every acknowledged vote, in order, with its conversation and settings.
    out = tmp_path / "votes.jsonl"
    result = subprocess.run([sys.executable, "-m", "demo", "leaderboard", "--votes", str(votes), "--jsonl", str(out),
                             "--csv", str(tmp_path / "votes.csv"), "--bootstrap", "50"],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert f"{len(CHOICES)} votes in" in result.stdout and "win rate" in result.stdout
    stored = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [(v["model_a"], v["model_b"], v["winner"]) for v in stored] == acknowledged
    first = stored[0]
    assert first["conversation_a"][0] == {"role": "user", "content": "Hello, who are you?"}
    assert first["conversation_a"][1]["role"] == "assistant" and first["conversation_b"][1]["content"]
    assert first["settings_a"]["max_new_tokens"] == 12 and first["settings_a"]["temperature"] == 1.0
    assert len({v["round_id"] for v in stored}) == len(CHOICES)
    with open(tmp_path / "votes.csv", encoding="utf-8", newline="") as f:
        assert [row["winner"] for row in csv.DictReader(f)] == CHOICES
