"""Qwen: Qwen1 (Qwen-7B/14B/72B-Chat, upstream `make_context`) and Qwen1.5 / 2 / 2.5 / 3 (chat template)."""
from __future__ import annotations

from .base import NO_OPTIONS, AdapterError, ChatAdapter, Prompt, reply_budget, validate_messages
from .files import local_folder
from .native import NativeLoading
from .generic import TemplateAdapter
from .tiktoken_qwen import load_qwen_tiktoken


class QwenAdapter(TemplateAdapter):
    """Qwen1.5 and later: ChatML through the checkpoint's template (the default system prompt is in it)."""

    family = "qwen"
    stop_tokens = ("<|im_end|>", "<|endoftext|>")

    @classmethod
    def matches(cls, config, files, folder) -> bool:
        return config.get("model_type") in ("qwen2", "qwen2_moe", "qwen3", "qwen3_moe")

    def stop_markers(self, tokenizer):
        return self.stop_tokens


class Qwen1Adapter(NativeLoading, ChatAdapter):
    """Qwen1 chat: upstream `make_context` rebuilt id by id (role, "\\n" and content tokenized apart)."""

    family = "qwen1"
    stop_tokens = ("<|im_end|>", "<|im_start|>", "<|endoftext|>")
    default_system = "You are a helpful assistant."  # what upstream chat() passes
    generation_defaults = {"top_p": 0.8, "top_k": 0, "repetition_penalty": 1.1, "max_new_tokens": 512}
    max_window_size = 6144

    @classmethod
    def matches(cls, config, files, folder) -> bool:
        return config.get("model_type") == "qwen"

    def configure(self, config: dict, generation: dict) -> None:
        self.max_window_size = generation.get("max_window_size") or self.max_window_size

    def context_length(self, config: dict) -> int | None:
        # The native Qwen2 port is exact up to seq_length; beyond it upstream switches on dynamic NTK and logn.
        return config.get("seq_length") or config.get("max_position_embeddings")

    def load_tokenizer(self, weights):
        return load_qwen_tiktoken(local_folder(weights))

    def turn(self, tokenizer, role: str, content: str) -> list[int]:
        return ([self.special(tokenizer, "<|im_start|>")] + self.text(tokenizer, role) + self.text(tokenizer, "\n")
                + self.text(tokenizer, content) + [self.special(tokenizer, "<|im_end|>")])

    def build_prompt(self, tokenizer, messages, context_length=None, max_new_tokens=None, extra_stop_ids=(),
                     options=NO_OPTIONS):
        """make_context: history rounds are kept newest first while the prompt stays under max_window_size."""
        validate_messages(messages)
        self.check_options(tokenizer, messages, options)
        system, rounds, query = split_rounds(self.with_default_system(messages))
        newline = self.text(tokenizer, "\n")
        system_ids = self.turn(tokenizer, "system", system)
        history: list[int] = []
        kept = 0
        for user, reply in reversed(rounds):
            ids = newline + self.turn(tokenizer, "user", user) + newline
            if reply is not None:
                ids += self.turn(tokenizer, "assistant", reply)
            if len(system_ids) + len(ids) + len(history) >= self.max_window_size:
                break
            history, kept = ids + history, kept + 1
        ids = (system_ids + history + newline + self.turn(tokenizer, "user", query) + newline
               + [self.special(tokenizer, "<|im_start|>")] + self.text(tokenizer, "assistant") + newline)
        budget = reply_budget(len(ids), context_length, max_new_tokens)
        return Prompt(ids, self.stop_token_ids(tokenizer, extra_stop_ids), list(self.stop_strings), budget,
                      len(rounds) - kept)


def split_rounds(messages) -> tuple[str, list[tuple[str, str | None]], str]:
    """(system, [(user, reply)], last user message) the way upstream chat() takes its arguments."""
    system = messages[0]["content"] if messages[0]["role"] == "system" else ""
    turns = messages[1:] if messages[0]["role"] == "system" else messages
    if not turns or turns[-1]["role"] != "user":
        raise AdapterError("the conversation must end with a user message")
    rounds: list[tuple[str, str | None]] = []
    for m in turns[:-1]:
        if m["role"] == "user":
            rounds.append((m["content"], None))
        elif m["role"] == "assistant" and rounds and rounds[-1][1] is None:
            rounds[-1] = (rounds[-1][0], m["content"])
        else:
            raise AdapterError("Qwen1 turns must alternate user / assistant after the system message")
    return system, rounds, turns[-1]["content"]
