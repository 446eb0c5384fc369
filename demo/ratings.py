"""Leaderboard maths: Bradley-Terry ratings (maximum likelihood) with bootstrap intervals, win rates.

A battle is (model_a, model_b, score_a) with score_a 1 (A better), 0 (B better) or 0.5 (a tie; "both
bad" is a tie too, as in Chatbot Arena). Under Bradley-Terry, P(i beats j) = sigmoid(b_i - b_j); the
strengths b are fitted by Newton's method on the log-likelihood (ties count half a win each way) and
shown on the Elo scale: rating = 1000 + 400 / ln(10) * b, with b centred on 0.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np

BASE, SCALE = 1000.0, 400.0 / math.log(10)
SCORES = {"a": 1.0, "b": 0.0, "tie": 0.5, "both_bad": 0.5}


@dataclass(frozen=True)
class Battle:
    model_a: str
    model_b: str
    score_a: float  # 1, 0.5 or 0


@dataclass
class Row:
    model: str
    rating: float
    lower: float
    upper: float
    votes: int
    wins: int
    losses: int
    ties: int

    @property
    def win_rate(self) -> float:
        return (self.wins + 0.5 * self.ties) / self.votes if self.votes else 0.0


@dataclass
class Leaderboard:
    rows: list[Row]  # best rating first
    models: list[str]  # the order of `matrix`
    matrix: list[list[float | None]] = field(default_factory=list)  # [i][j]: share of i-vs-j won by i
    battles: int = 0


def battles_from_votes(votes: Iterable) -> list[Battle]:
    """Votes (anything with model_a, model_b, winner) to battles."""
    return [Battle(v.model_a, v.model_b, SCORES[v.winner]) for v in votes]


def tallies(battles: Sequence[Battle], models: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """wins[i, j]: points i scored against j; games[i, j]: battles between i and j (symmetric)."""
    return _tally(*_indexed(battles, models), len(models))


def _indexed(battles: Sequence[Battle], models: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    index = {m: k for k, m in enumerate(models)}
    a = np.array([index[b.model_a] for b in battles], dtype=int)
    b = np.array([index[b.model_b] for b in battles], dtype=int)
    return a, b, np.array([x.score_a for x in battles], dtype=float)


def _tally(a: np.ndarray, b: np.ndarray, score: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    wins, games = np.zeros((n, n)), np.zeros((n, n))
    np.add.at(wins, (a, b), score)
    np.add.at(wins, (b, a), 1.0 - score)
    np.add.at(games, (a, b), 1.0)
    np.add.at(games, (b, a), 1.0)
    return wins, games


def fit_strengths(wins: np.ndarray, games: np.ndarray, l2: float = 0.01, iterations: int = 100) -> np.ndarray:
    """Bradley-Terry strengths b (natural-log scale, mean 0) maximising the log-likelihood minus l2/2 |b|^2.

    l2 = 0 is the plain MLE, which exists only when every model has both won and lost something against
    the others (otherwise it runs off to infinity); the small default keeps unbeaten models finite.
    """
    n = len(wins)
    b = np.zeros(n)
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-(b[:, None] - b[None, :])))  # p[i, j] = P(i beats j)
        gradient = (wins - games * p).sum(axis=1) - l2 * b
        weight = games * p * (1.0 - p)
        hessian = weight - np.diag(weight.sum(axis=1)) - l2 * np.eye(n)
        # lstsq: with l2 = 0 the Hessian is singular along "all strengths + c"; the minimum-norm step
        # keeps the mean where it is.
        step = np.linalg.lstsq(hessian, -gradient, rcond=None)[0]
        b = b + step
        if np.abs(step).max() < 1e-10:
            break
    return b - b.mean()


def ratings(battles: Sequence[Battle], models: Sequence[str], l2: float = 0.01) -> np.ndarray:
    wins, games = tallies(battles, models)
    return BASE + SCALE * fit_strengths(wins, games, l2)


def bootstrap(battles: Sequence[Battle], models: Sequence[str], rounds: int = 200, seed: int = 0,
              l2: float = 0.01, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Percentile intervals of each rating over `rounds` resamplings of the battles (with replacement)."""
    rng = np.random.default_rng(seed)
    a, b, score = _indexed(battles, models)
    samples = np.empty((rounds, len(models)))
    for r in range(rounds):
        picked = rng.integers(0, len(battles), len(battles))
        wins, games = _tally(a[picked], b[picked], score[picked], len(models))
        samples[r] = BASE + SCALE * fit_strengths(wins, games, l2)
    tail = (1.0 - level) / 2 * 100
    return np.percentile(samples, tail, axis=0), np.percentile(samples, 100 - tail, axis=0)


def leaderboard(battles: Sequence[Battle], rounds: int = 200, seed: int = 0, l2: float = 0.01) -> Leaderboard:
    models = sorted({b.model_a for b in battles} | {b.model_b for b in battles})
    if not battles:
        return Leaderboard([], [], [], 0)
    wins, games = tallies(battles, models)
    rating = BASE + SCALE * fit_strengths(wins, games, l2)
    lower, upper = bootstrap(battles, models, rounds, seed, l2) if rounds else (rating, rating)
    rows = []
    for k, model in enumerate(models):
        won, lost, tied = record(battles, model)
        rows.append(Row(model, float(rating[k]), float(lower[k]), float(upper[k]), won + lost + tied,
                        won, lost, tied))
    rows.sort(key=lambda r: -r.rating)
    order = [r.model for r in rows]
    position = {m: k for k, m in enumerate(models)}
    matrix = [[float(wins[position[a], position[b]] / games[position[a], position[b]])
               if games[position[a], position[b]] else None for b in order] for a in order]
    return Leaderboard(rows, order, matrix, len(battles))


def record(battles: Sequence[Battle], model: str) -> tuple[int, int, int]:
    """(wins, losses, ties) of `model`."""
    won = lost = tied = 0
    for b in battles:
        if model not in (b.model_a, b.model_b):
            continue
        score = b.score_a if model == b.model_a else 1.0 - b.score_a
        won, lost, tied = won + (score == 1.0), lost + (score == 0.0), tied + (score == 0.5)
    return won, lost, tied
