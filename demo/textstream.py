"""Incremental text from token ids: never half a character, never part of a stop string."""
from __future__ import annotations

from typing import Sequence

REPLACEMENT = "\ufffd"


class IncrementalDecoder:
    """Decodes a growing list of ids into text deltas whose concatenation equals the full decode.

    Decodes a small window (from the last token boundary that produced clean text), so the cost per
    token stays constant; text ending in U+FFFD is a character still split across tokens and waits.
    """

    def __init__(self, tokenizer, skip_special_tokens: bool = True):
        self.tokenizer = tokenizer
        self.skip_special = skip_special_tokens
        self.ids: list[int] = []
        self.prefix = 0  # window start
        self.read = 0  # ids before this are already emitted

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip_special)

    def add(self, ids: Sequence[int]) -> str:
        self.ids.extend(ids)
        return self._advance(final=False)

    def peek(self, tokens: Sequence[int]) -> list[str]:
        """The text each of `tokens` would add if it came next (a U+FFFD where it leaves a character
        incomplete; a special token's own name where it decodes to nothing); changes nothing."""
        seen = self.decode(self.ids[self.prefix:self.read])
        window = self.ids[self.prefix:]
        texts = [self.decode([*window, token])[len(seen):] for token in tokens]
        named = getattr(self.tokenizer, "convert_ids_to_tokens", None)
        return [text or (named(token) if named else "") or "" for token, text in zip(tokens, texts)]

    def flush(self) -> str:
        """What is left at the end, less a character that the last token left incomplete."""
        return self._advance(final=True)

    def _advance(self, final: bool) -> str:
        seen = self.decode(self.ids[self.prefix:self.read])
        window = self.decode(self.ids[self.prefix:])
        if len(window) <= len(seen) or (window.endswith(REPLACEMENT) and not final):
            return ""
        self.prefix, self.read = self.read, len(self.ids)
        # A reply cut off mid-character (length, Stop) ends before that character, not with U+FFFD.
        return window[len(seen):].rstrip(REPLACEMENT) if final else window[len(seen):]


class StopStringFilter:
    """Passes text through, holding back any tail that may be the start of a stop string."""

    def __init__(self, stop_strings: Sequence[str]):
        self.stops = [s for s in stop_strings if s]
        self.pending = ""
        self.matched: str | None = None

    def feed(self, text: str) -> str:
        """The text that is safe to show now; sets `matched` when a stop string appears."""
        if self.matched is not None:
            return ""
        self.pending += text
        hits = [(self.pending.find(s), s) for s in self.stops if s in self.pending]
        if hits:
            at, self.matched = min(hits)
            out, self.pending = self.pending[:at], ""
            return out
        hold = self._partial_tail()
        out = self.pending[:len(self.pending) - hold]
        self.pending = self.pending[len(out):]
        return out

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return "" if self.matched is not None else out

    def _partial_tail(self) -> int:
        best = 0
        for stop in self.stops:
            for k in range(min(len(stop) - 1, len(self.pending)), best, -1):
                if self.pending.endswith(stop[:k]):
                    best = k
                    break
        return best
