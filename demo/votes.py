"""The vote store: arena votes and shared transcripts in one SQLite file.

Durability: the database runs in WAL mode with synchronous=FULL, and `record` commits before it
returns, so a vote the user saw acknowledged is on disk even if the server is killed (kill -9) or the
machine loses power right after. Each call opens its own connection, so any thread may use the store.
One vote per round is enforced by the database itself (round_id is UNIQUE).
"""
from __future__ import annotations

import csv
import json
import os
import secrets
import sqlite3
from contextlib import closing
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

VOTES_ENV = "HUB_VOTES"
DEFAULT_VOTES = Path(__file__).resolve().parent.parent / "data" / "votes.sqlite3"
WINNERS = ("a", "b", "tie", "both_bad")

SCHEMA = """
CREATE TABLE IF NOT EXISTS votes (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    round_id TEXT NOT NULL UNIQUE,
    created_at TEXT NOT NULL,
    model_a TEXT NOT NULL,
    model_b TEXT NOT NULL,
    winner TEXT NOT NULL CHECK (winner IN ('a', 'b', 'tie', 'both_bad')),
    conversation_a TEXT NOT NULL,
    conversation_b TEXT NOT NULL,
    settings_a TEXT NOT NULL,
    settings_b TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS transcripts (
    id TEXT PRIMARY KEY,
    created_at TEXT NOT NULL,
    payload TEXT NOT NULL
);
"""


class VoteError(ValueError):
    """A vote the store refuses: a second vote on a round, an unknown choice, a model against itself."""


@dataclass
class Vote:
    round_id: str
    model_a: str
    model_b: str
    winner: str  # a | b | tie | both_bad
    conversation_a: list[dict]  # [{role, content}] as model A saw and answered it
    conversation_b: list[dict]
    settings_a: dict = field(default_factory=dict)  # the generation settings each model used
    settings_b: dict = field(default_factory=dict)
    created_at: str = ""  # ISO 8601, UTC
    id: int | None = None


def votes_path(cli_path: str | os.PathLike | None = None) -> Path:
    return Path(cli_path or os.environ.get(VOTES_ENV) or DEFAULT_VOTES)


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


class VoteStore:
    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with closing(self._connect()) as db:
            db.execute("PRAGMA journal_mode=WAL")  # persistent: stored in the file
            db.executescript(SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=30)
        db.execute("PRAGMA synchronous=FULL")  # fsync the WAL on every commit
        return db

    # -- votes --------------------------------------------------------------------------------
    def record(self, vote: Vote) -> Vote:
        """Store `vote` and return it with id and timestamp; once this returns, the vote is on disk."""
        if vote.winner not in WINNERS:
            raise VoteError(f"unknown vote {vote.winner!r}; one of {', '.join(WINNERS)}")
        if vote.model_a == vote.model_b:
            raise VoteError(f"a model cannot be voted against itself ({vote.model_a})")
        created = vote.created_at or now_iso()
        row = (vote.round_id, created, vote.model_a, vote.model_b, vote.winner,
               json.dumps(vote.conversation_a, ensure_ascii=False), json.dumps(vote.conversation_b, ensure_ascii=False),
               json.dumps(vote.settings_a), json.dumps(vote.settings_b))
        try:
            with closing(self._connect()) as db, db:
                cursor = db.execute(
                    "INSERT INTO votes (round_id, created_at, model_a, model_b, winner, conversation_a, "
                    "conversation_b, settings_a, settings_b) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", row)
        except sqlite3.IntegrityError:
            raise VoteError(f"round {vote.round_id} already has a vote") from None
        return Vote(**{**asdict(vote), "created_at": created, "id": cursor.lastrowid})

    def votes(self) -> list[Vote]:
        with closing(self._connect()) as db:
            rows = db.execute("SELECT id, round_id, created_at, model_a, model_b, winner, conversation_a, "
                              "conversation_b, settings_a, settings_b FROM votes ORDER BY id").fetchall()
        return [Vote(id=r[0], round_id=r[1], created_at=r[2], model_a=r[3], model_b=r[4], winner=r[5],
                     conversation_a=json.loads(r[6]), conversation_b=json.loads(r[7]),
                     settings_a=json.loads(r[8]), settings_b=json.loads(r[9])) for r in rows]

    def has_vote(self, round_id: str) -> bool:
        with closing(self._connect()) as db:
            return db.execute("SELECT 1 FROM votes WHERE round_id = ?", (round_id,)).fetchone() is not None

    # -- shared transcripts -------------------------------------------------------------------
    def save_transcript(self, payload: dict) -> str:
        """Store a transcript; returns its id, an unguessable token (the read-only link carries it)."""
        token = secrets.token_urlsafe(12)
        with closing(self._connect()) as db, db:
            db.execute("INSERT INTO transcripts (id, created_at, payload) VALUES (?, ?, ?)",
                       (token, now_iso(), json.dumps(payload, ensure_ascii=False)))
        return token

    def transcript(self, token: str) -> dict | None:
        with closing(self._connect()) as db:
            row = db.execute("SELECT payload, created_at FROM transcripts WHERE id = ?", (token,)).fetchone()
        return {**json.loads(row[0]), "created_at": row[1]} if row else None


# -- export -----------------------------------------------------------------------------------
CSV_COLUMNS = ["id", "round_id", "created_at", "model_a", "model_b", "winner", "conversation_a", "conversation_b",
               "settings_a", "settings_b"]


def export_jsonl(votes: list[Vote], path: str | os.PathLike) -> int:
    with open(path, "w", encoding="utf-8") as out:
        for vote in votes:
            out.write(json.dumps(asdict(vote), ensure_ascii=False) + "\n")
    return len(votes)


def export_csv(votes: list[Vote], path: str | os.PathLike) -> int:
    """One row per vote; the conversations and settings are JSON strings in their cells."""
    with open(path, "w", encoding="utf-8", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(CSV_COLUMNS)
        for vote in votes:
            row = asdict(vote)
            writer.writerow([json.dumps(row[c], ensure_ascii=False) if isinstance(row[c], (list, dict)) else row[c]
                             for c in CSV_COLUMNS])
    return len(votes)

