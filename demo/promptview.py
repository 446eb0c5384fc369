"""The exact prompt a model gets for a conversation: what `python -m demo prompt` prints and the app's
Prompt inspector shows. Both call `prompt_source` and `prompt_report`, so their ids are the same.

No weights are read: the family adapter, the tokenizer and the config files are enough.
"""
from __future__ import annotations

from typing import Sequence

from adapters.base import NO_OPTIONS

from .registry import ModelEntry, Registry


def prompt_source(entry: ModelEntry, registry: Registry | None = None):
    """A weightless LoadedModel that builds `entry`'s prompts: a LoRA/PEFT entry or a preset prompts like its
    base, a preset with its own system prompt (else the base's)."""
    from .loader import load_without_weights

    system = entry.system_prompt
    if entry.base:
        if registry is None:
            raise ValueError(f"{entry.id} shares the weights of {entry.base!r}, which needs the registry")
        entry = registry.get(entry.base)
    source = load_without_weights(entry)
    source.system_prompt = system if system is not None else entry.system_prompt
    return source


def prompt_report(source, messages: Sequence[dict], max_new_tokens: int | None = None, chat=None) -> dict:
    """The prompt for `messages` with a reply budget of `max_new_tokens` (default: the model's own):
    ids, text, stops, the budget left, the turns dropped to fit, and the text split at special tokens.
    `chat` (adapters.base.ChatOptions) brings tools and template variables, as `prompt --tools` does."""
    from .engine import with_system_prompt

    messages = with_system_prompt(messages, source.system_prompt)  # as the engine sends them
    budget = max_new_tokens or source.defaults.max_new_tokens
    prompt = source.adapter.build_prompt(source.tokenizer, messages, source.context_length, budget,
                                         source.extra_stop_ids, chat or NO_OPTIONS)
    return {"input_ids": prompt.input_ids, "text": prompt.text(source.tokenizer),
            "stop_token_ids": prompt.stop_token_ids, "stop_strings": prompt.stop_strings,
            "max_new_tokens": prompt.max_new_tokens, "dropped_turns": prompt.dropped_turns,
            "prompt_tokens": len(prompt.input_ids), "context_length": source.context_length,
            "dropped_messages": dropped_messages(messages, prompt.dropped_turns),
            "segments": segments(source.tokenizer, prompt.input_ids)}


def dropped_messages(messages: Sequence[dict], turns: int) -> list[int]:
    """Indexes into `messages` of what was left out: the `turns` oldest user turns and their replies
    (the adapter drops whole turns after the system prompt; see adapters.base.drop_oldest_turn)."""
    if not turns:
        return []
    start = 1 if messages and messages[0].get("role") == "system" else 0
    users = [i for i in range(start, len(messages)) if messages[i].get("role") == "user"]
    return list(range(start, users[turns])) if turns < len(users) else list(range(start, len(messages)))


def special_ids(tokenizer) -> set[int]:
    """Control tokens of the vocabulary: the declared special tokens and added tokens marked special."""
    ids = set(getattr(tokenizer, "all_special_ids", []) or [])
    for token_id, token in (getattr(tokenizer, "added_tokens_decoder", None) or {}).items():
        if getattr(token, "special", False):
            ids.add(int(token_id))
    return ids


def segments(tokenizer, ids: Sequence[int]) -> list[dict]:
    """The prompt as runs of plain text and single special tokens: [{"text", "special"}], in order.

    Text typed by a user that spells a special token is tokenized as text, so it lands in a plain run."""
    special = special_ids(tokenizer)
    out: list[dict] = []
    run: list[int] = []

    def flush():
        if run:
            out.append({"text": tokenizer.decode(run, skip_special_tokens=False), "special": False})
            run.clear()

    for token in ids:
        if token in special:
            flush()
            out.append({"text": tokenizer.decode([token], skip_special_tokens=False), "special": True})
        else:
            run.append(token)
    flush()
    return out
