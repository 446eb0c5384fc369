"""Leaderboard tab behaviour: ratings, intervals, counts and the win-rate matrix, read from the vote store."""
from __future__ import annotations

from html import escape

from ..hub import Hub
from ..ratings import Leaderboard, battles_from_votes, leaderboard

COLUMNS = ["rank", "model", "rating", "95% interval", "votes", "wins", "losses", "ties", "win rate"]


def board_of(hub: Hub, rounds: int = 200) -> Leaderboard:
    votes = hub.votes.votes() if hub.votes is not None else []
    return leaderboard(battles_from_votes(votes), rounds=rounds)


def table(board: Leaderboard) -> list[list]:
    return [[k + 1, r.model, round(r.rating), f"{r.lower:.0f} – {r.upper:.0f}", r.votes, r.wins, r.losses, r.ties,
             f"{r.win_rate:.0%}"] for k, r in enumerate(board.rows)]


def matrix(board: Leaderboard) -> tuple[list[list], list[str]]:
    """Rows: the model; columns: its opponent; cells: the share of their battles the row model won."""
    headers = ["model ↓ vs →", *board.models]
    rows = [[a, *("–" if x is None else f"{x:.0%}" for x in line)] for a, line in zip(board.models, board.matrix)]
    return rows, headers


def plot_svg(board: Leaderboard, width: int = 640) -> str:
    """Ratings as dots with their bootstrap intervals as bars, best on top (inline SVG, no plotting library)."""
    if not board.rows:
        return "<p>No votes yet: play a round in the Arena.</p>"
    left, right, row_h, top = 170, 70, 28, 24
    low = min(r.lower for r in board.rows) - 10
    high = max(r.upper for r in board.rows) + 10
    x = lambda v: left + (v - low) / (high - low) * (width - left - right)  # noqa: E731
    height = top + row_h * len(board.rows) + 10
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
             f'aria-label="ratings with 95% intervals" id="leaderboard-svg" font-family="sans-serif" font-size="12">',
             f'<text x="{left}" y="14" fill="#666">rating (Bradley-Terry, Elo scale) with 95% bootstrap interval</text>']
    for k, r in enumerate(board.rows):
        y = top + row_h * k + row_h / 2
        parts += [f'<text x="{left - 8}" y="{y + 4}" text-anchor="end">{escape(r.model)}</text>',
                  f'<line x1="{x(r.lower):.1f}" x2="{x(r.upper):.1f}" y1="{y}" y2="{y}" stroke="#7aa6d8" '
                  'stroke-width="6" stroke-linecap="round"/>',
                  f'<circle cx="{x(r.rating):.1f}" cy="{y}" r="5" fill="#1f4e89"><title>{escape(r.model)}: '
                  f'{r.rating:.0f} ({r.lower:.0f} – {r.upper:.0f})</title></circle>',
                  f'<text x="{width - right + 8}" y="{y + 4}">{r.rating:.0f}</text>']
    return "".join(parts) + "</svg>"


def summary(hub: Hub, board: Leaderboard) -> str:
    noun = "vote" if board.battles == 1 else "votes"  # the file's path is the operator's (serve prints it)
    return f"**{board.battles} {noun}** on {len(board.rows)} models."


def refresh(hub: Hub):
    board = board_of(hub)
    rows, headers = matrix(board)
    return summary(hub, board), table(board), plot_svg(board), {"data": rows, "headers": headers}
