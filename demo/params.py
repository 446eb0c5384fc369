"""Sampling parameters, merged from the checkpoint's generation_config, the registry entry and the user."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace

SAMPLING_KEYS = ("temperature", "top_p", "top_k", "repetition_penalty", "max_new_tokens", "seed", "greedy")
# The accepted ranges (README: "Sampling ranges"). A temperature just above 0 divides the logits into
# inf/NaN, so below MIN_TEMPERATURE only 0 (greedy) is allowed; a seed must fit torch's 64-bit seed.
MIN_TEMPERATURE, MAX_TEMPERATURE = 0.01, 2.0
MIN_SEED, MAX_SEED = -2**63, 2**64 - 1
MAX_STOP_STRINGS, MAX_STOP_CHARS = 4, 200
MAX_REPETITION_PENALTY = 10.0
MAX_TOP_LOGPROBS = 20  # OpenAI's cap on top_logprobs


@dataclass(frozen=True)
class GenerationParams:
    temperature: float = 0.7
    top_p: float = 0.9
    top_k: int = 50
    repetition_penalty: float = 1.0
    max_new_tokens: int = 256
    seed: int | None = None
    greedy: bool = False
    stop: tuple[str, ...] = ()  # the caller's stop strings, on top of the family's; the reply ends before one
    # Not sampling but what the reply reports: None, no logprobs (nothing computed); N, each token's logprob
    # and its N most likely alternatives (the API's logprobs/top_logprobs; see demo/logprobs.py)
    logprobs: int | None = None

    def override(self, values: dict | None) -> "GenerationParams":
        """A copy with every non-None value of `values` that names a field."""
        names = {f.name for f in fields(self)}
        return replace(self, **{k: v for k, v in (values or {}).items() if k in names and v is not None})

    def generate_kwargs(self) -> dict:
        if self.greedy or self.temperature == 0:
            return {"do_sample": False, "max_new_tokens": self.max_new_tokens,
                    "repetition_penalty": self.repetition_penalty, "temperature": None, "top_p": None,
                    "top_k": None}
        return {"do_sample": True, "max_new_tokens": self.max_new_tokens, "temperature": self.temperature,
                "top_p": self.top_p, "top_k": self.top_k, "repetition_penalty": self.repetition_penalty}

    def as_dict(self) -> dict:
        values = asdict(self)
        if values["logprobs"] is None:  # as before the field existed (a batch job's journal compares these)
            del values["logprobs"]
        return values

    def problem(self) -> str | None:
        """Why these values cannot be used (every caller gets the same ranges), or None."""
        if not _number(self.temperature) or not (
                self.temperature == 0 or MIN_TEMPERATURE <= self.temperature <= MAX_TEMPERATURE):
            return (f"temperature must be 0 (greedy) or between {MIN_TEMPERATURE:g} and {MAX_TEMPERATURE:g} "
                    f"(got {self.temperature!r})")
        if not _number(self.top_p) or not 0 < self.top_p <= 1:
            return f"top_p must be above 0 and at most 1 (got {self.top_p!r})"
        if not _integer(self.top_k) or self.top_k < 0:
            return f"top_k must be an integer of 0 (off) or more (got {self.top_k!r})"
        if not _number(self.repetition_penalty) or not 0 < self.repetition_penalty <= MAX_REPETITION_PENALTY:
            return f"repetition_penalty must be above 0 and at most {MAX_REPETITION_PENALTY:g}"
        if not _integer(self.max_new_tokens) or self.max_new_tokens < 1:
            return f"max_new_tokens must be a positive integer (got {self.max_new_tokens!r})"
        if self.seed is not None and (not _integer(self.seed) or not MIN_SEED <= self.seed <= MAX_SEED):
            return "seed must be a 64-bit integer (from -2**63 to 2**64 - 1)"
        if self.logprobs is not None and (not _integer(self.logprobs) or not 0 <= self.logprobs <= MAX_TOP_LOGPROBS):
            return f"top_logprobs must be an integer from 0 to {MAX_TOP_LOGPROBS} (got {self.logprobs!r})"
        return stop_problem(self.stop)


def stop_problem(stop) -> str | None:
    if len(stop) > MAX_STOP_STRINGS:
        return f"at most {MAX_STOP_STRINGS} stop strings are allowed (got {len(stop)})"
    if any(not isinstance(s, str) or not s or len(s) > MAX_STOP_CHARS for s in stop):
        return f"each stop string must be 1 to {MAX_STOP_CHARS} characters"
    return None


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _integer(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def from_generation_config(config) -> dict:
    """The sampling values a checkpoint's generation_config sets explicitly (library defaults left out)."""
    if config is None:
        return {}
    diff = config.to_diff_dict()
    values = {k: diff[k] for k in ("temperature", "top_p", "top_k", "repetition_penalty", "max_new_tokens")
              if diff.get(k) is not None}
    if diff.get("do_sample") is False:
        values["greedy"] = True
    return values
