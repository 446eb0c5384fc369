"""Baichuan2-7B/13B-Chat: upstream `build_chat_input` (user 195 / assistant 196 tokens, no separators)."""
from __future__ import annotations

from .base import NO_OPTIONS, AdapterError, ChatAdapter, Prompt, validate_messages
from .files import local_folder
from .native import NativeLoading
from .spm import load_sentencepiece


class Baichuan2Adapter(NativeLoading, ChatAdapter):
    family = "baichuan2"
    stop_tokens = ("</s>",)
    generation_defaults = {"temperature": 0.3, "top_k": 5, "top_p": 0.85, "repetition_penalty": 1.05,
                           "max_new_tokens": 2048}
    user_token, assistant_token = "<reserved_106>", "<reserved_107>"

    @classmethod
    def matches(cls, config, files, folder) -> bool:
        return config.get("model_type") == "baichuan"

    def context_length(self, config: dict) -> int | None:
        return config.get("model_max_length") or config.get("max_position_embeddings")

    def load_tokenizer(self, weights):
        return load_sentencepiece(local_folder(weights), unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                  pad_token="<unk>")

    def build_prompt(self, tokenizer, messages, context_length=None, max_new_tokens=None, extra_stop_ids=(),
                     options=NO_OPTIONS):
        """Whole rounds kept newest first within model_max_length - max_new_tokens, as upstream.

        Upstream then cuts the ids from the left, which can cut the system prompt; here the cut falls on
        the history instead, so the system prompt stays.
        """
        validate_messages(messages)
        self.check_options(tokenizer, messages, options)
        if any(m["role"] == "system" for m in messages[1:]):
            raise AdapterError("Baichuan2 takes one system message, first")
        system = self.text(tokenizer, messages[0]["content"]) if messages[0]["role"] == "system" else []
        rounds = split_rounds([m for m in messages if m["role"] != "system"])
        context = context_length or 4096
        limit = context - (max_new_tokens or 0)
        if limit - len(system) <= 1:
            raise AdapterError(f"no room for the prompt: the context is {context} tokens and the reply "
                               f"budget {max_new_tokens}; lower max_new_tokens")
        history, kept = [], 0
        for round_ids in reversed([self.round_ids(tokenizer, r) for r in rounds]):
            if history and len(history) + len(round_ids) > limit - len(system):
                break
            history, kept = round_ids + history, kept + 1
            if len(history) >= limit - len(system):
                break
        tail = [self.special(tokenizer, self.assistant_token)] if messages[-1]["role"] != "assistant" else []
        history = (history + tail)[-(limit - len(system)):]
        ids = system + history
        budget = min(max_new_tokens, context - len(ids)) if max_new_tokens else context - len(ids)
        return Prompt(ids, self.stop_token_ids(tokenizer, extra_stop_ids), list(self.stop_strings), budget,
                      len(rounds) - kept)

    def round_ids(self, tokenizer, messages) -> list[int]:
        ids = []
        for m in messages:
            marker = self.user_token if m["role"] == "user" else self.assistant_token
            ids += [self.special(tokenizer, marker)] + self.text(tokenizer, m["content"])
        return ids


def split_rounds(messages) -> list[list[dict]]:
    """Rounds that each begin at a user message, as upstream `_parse_messages`."""
    rounds: list[list[dict]] = []
    for m in messages:
        if m["role"] == "user" and rounds and rounds[-1]:
            rounds.append([])
        if not rounds:
            rounds.append([])
        rounds[-1].append(m)
    return rounds
