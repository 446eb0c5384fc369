"""The bench's prompt and measures shared by its parts (bench.run, bench.llamacpp): one task, padded to length."""
from __future__ import annotations

import gc

from demo.loaded import LoadedModel

FILLER = ("The lighthouse keeper wrote down the weather every morning: wind, clouds, the colour of the sea, "
          "and the ships that passed. ")
TASK = "Now write a long, detailed story about the lighthouse keeper's most surprising day."


def prompt_message(loaded: LoadedModel, prompt_tokens: int) -> str:
    """A user message whose chat prompt is about `prompt_tokens` long (never shorter than the task)."""
    base = len(build_prompt(loaded, TASK, 1).input_ids)
    filler_ids = loaded.tokenizer.encode(FILLER * (1 + prompt_tokens // 8), add_special_tokens=False)
    room = max(0, prompt_tokens - base - 1)
    filler = loaded.tokenizer.decode(filler_ids[:room]).strip()
    return f"{filler}\n\n{TASK}" if filler else TASK


def build_prompt(loaded: LoadedModel, message: str, new_tokens: int):
    return loaded.adapter.build_prompt(loaded.tokenizer, [{"role": "user", "content": message}],
                                       loaded.context_length, new_tokens, loaded.extra_stop_ids)


def greedy(loaded: LoadedModel, new_tokens: int):
    return loaded.defaults.override({"greedy": True, "repetition_penalty": 1.0, "max_new_tokens": new_tokens})


def rss_bytes() -> int:
    import psutil

    gc.collect()
    return psutil.Process().memory_info().rss
