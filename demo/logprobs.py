"""Per-token log-probabilities (the API's `logprobs` / `top_logprobs`), computed only when a request asks.

Which distribution: the log-softmax of the model's own next-token scores at that step, after a
response_format grammar's mask (demo/structured.py) where there is one, and before the repetition penalty,
temperature, top-k and top-p. That is vLLM's default ("raw" logprobs, its grammar bitmask included), so a
greedy token has the highest logprob of its step, and the numbers do not change with the sampling settings.

A producer (a decode loop) makes one `TokenLogprob` per generated token from the step's scores with
`token_entry`; the engine's consumer (demo/engine.py) gives it its text and holds it back with that text in
a `LogprobTrail`, so stop-string holdback releases, or cuts, the entries with the characters they produced.
"""
from __future__ import annotations

from collections import deque
from dataclasses import replace
from typing import Iterable, Mapping

import numpy as np

from .stream import TokenLogprob

FLOOR = -9999.0  # a logprob of -inf is reported as this (vLLM's choice: JSON has no -Infinity)


def distribution(scores) -> np.ndarray:
    """The log-softmax of one row of next-token scores (a torch tensor or a numpy array), as a new float32
    array (never a view of `scores`, which later processors may change in place)."""
    if not isinstance(scores, np.ndarray):
        scores = scores.detach().float().cpu().numpy()
    x = np.asarray(scores, dtype=np.float32).reshape(-1)
    out = x - x.max()
    out -= np.log(np.exp(out).sum())
    return out


def token_entry(logprobs: np.ndarray, token: int, top: int) -> TokenLogprob:
    """The entry of `token` sampled from `logprobs` (see `distribution`), with the `top` most likely tokens
    of that step, best first (text filled in later by the engine's consumer; masked tokens left out)."""
    alternatives: tuple[TokenLogprob, ...] = ()
    k = min(top, logprobs.size)
    if k > 0:
        kth = -np.partition(-logprobs, k - 1)[k - 1]  # the k-th highest value
        best = np.flatnonzero(logprobs >= kth)
        best = best[np.lexsort((best, -logprobs[best]))][:k]  # ties by id, as argmax picks the first
        alternatives = tuple(TokenLogprob("", finite(float(logprobs[i])), int(i)) for i in best
                             if np.isfinite(logprobs[i]))
    return TokenLogprob("", finite(float(logprobs[token])), int(token), alternatives)


def named(entry: TokenLogprob, texts: Mapping[int, str]) -> TokenLogprob:
    """`entry` and its alternatives with their texts, `texts` by token id (what the token added to the reply,
    and what each alternative would have added in its place)."""
    return replace(entry, token=texts[entry.token_id],
                   top=tuple(replace(t, token=texts[t.token_id]) for t in entry.top))


def finite(value: float) -> float:
    """`value` as a logprob JSON can carry: -inf (and NaN) as FLOOR, never above 0."""
    return value if FLOOR < value <= 0 else 0.0 if value > 0 else FLOOR


class LogprobTrail:
    """Entries held back with the text they produced, in the reply's decoded text (before stop holdback).

    An entry is released once any of its text is shown, so tokens held back as the possible start of a
    stop string come out with their text, and those wholly inside a stop string that cuts the reply never
    do; a token that straddles the cut is released, whole, with the part before it.
    """

    def __init__(self):
        self.held: deque[tuple[int, TokenLogprob]] = deque()  # (offset of its text in the decoded text, entry)
        self.decoded = 0  # characters decoded so far
        self.shown = 0  # characters of those released (shown or, at the start, stripped)
        self.ready: list[TokenLogprob] = []

    def add(self, entries: Iterable[TokenLogprob], text: str) -> None:
        """`entries` whose tokens together decoded to `text` (the next text of the reply)."""
        self.held.extend((self.decoded, e) for e in entries)
        self.decoded += len(text)

    def show(self, chars: int) -> None:
        """The next `chars` characters of the decoded text are released."""
        self.shown += chars
        while self.held and self.held[0][0] < self.shown:
            self.ready.append(self.held.popleft()[1])

    def end(self, cut: bool) -> None:
        """The reply is over: what is still held goes out, unless a stop string (or an error) cut it."""
        if not cut:
            self.ready += [e for _, e in self.held]
        self.held.clear()

    def take(self) -> list[TokenLogprob]:
        """The entries released since the last call."""
        out, self.ready = self.ready, []
        return out
