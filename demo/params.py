"""Sampling parameters, merged from the checkpoint's generation_config, the registry entry and the user."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

SAMPLING_KEYS = ("temperature", "top_p", "top_k", "repetition_penalty", "max_new_tokens", "seed", "greedy")


@dataclass(frozen=True)
class GenerationParams:
    temperature: float = 0.7
    top_p: float = 0.9
    top_k: int = 50
    repetition_penalty: float = 1.0
    max_new_tokens: int = 256
    seed: int | None = None
    greedy: bool = False

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
        return asdict(self)


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
