"""The anonymous arena: draw two models, keep each side's conversation, and take one vote per round.

Names stay hidden until the round has its vote. A vote is refused while an answer is still streaming,
before both sides have answered, when a side failed, and on a round that already has one.
"""
from __future__ import annotations

import random
import uuid
from dataclasses import dataclass, field
from typing import Sequence

from .votes import Vote, VoteError, VoteStore

LABELS = {"a": "Model A is better", "b": "Model B is better", "tie": "Tie", "both_bad": "Both are bad"}


class ArenaError(RuntimeError):
    """Not enough models to play, or an action the round's state does not allow."""


@dataclass
class ArenaRound:
    models: tuple[str, str]  # (model A, model B): hidden from the user until the vote
    round_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    conversations: tuple[list, list] = field(default_factory=lambda: ([], []))  # [{role, content}] per side
    settings: list[dict] = field(default_factory=lambda: [{}, {}])  # generation settings per side
    finish: list[str | None] = field(default_factory=lambda: [None, None])  # last reply's finish_reason
    streaming: bool = False
    vote: str | None = None  # a | b | tie | both_bad once voted

    @property
    def answered(self) -> bool:
        """Both sides have finished at least one reply and nothing is streaming."""
        return not self.streaming and all(f is not None for f in self.finish)


def draw_pair(available: Sequence[str], rng: random.Random | None = None) -> tuple[str, str]:
    """Two different models at random, in random A/B order."""
    if len(available) < 2:
        raise ArenaError(f"the arena needs at least two available models; have {len(available)}: "
                         f"{', '.join(available) or 'none'}")
    a, b = (rng or random).sample(list(available), 2)
    return a, b


def check_can_vote(arena_round: ArenaRound) -> None:
    if arena_round.vote is not None:
        raise VoteError("this round already has your vote; start a New round")
    if arena_round.streaming:
        raise VoteError("wait until both answers have finished")
    if not arena_round.answered:
        raise VoteError("both models must answer before you vote")
    failed = [label for label, f in zip("AB", arena_round.finish) if f == "error"]
    if failed:
        raise VoteError(f"Model {' and '.join(failed)} failed to answer; this round cannot be voted, "
                        "start a New round")


def cast_vote(store: VoteStore, arena_round: ArenaRound, winner: str) -> Vote:
    """Validate and store the round's vote; once this returns the vote is durable."""
    check_can_vote(arena_round)
    vote = store.record(Vote(arena_round.round_id, arena_round.models[0], arena_round.models[1], winner,
                             list(arena_round.conversations[0]), list(arena_round.conversations[1]),
                             arena_round.settings[0], arena_round.settings[1]))
    arena_round.vote = winner
    return vote
