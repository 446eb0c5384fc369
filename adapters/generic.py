"""The generic family: any Hugging Face chat model whose tokenizer ships a chat template."""
from __future__ import annotations

import re
from typing import Sequence

from .base import AdapterError, ChatAdapter, Message, token_id

# End-of-turn markers used by common chat templates; those the vocabulary has become stop ids.
END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|end_of_text|>", "<end_of_turn>", "<|end|>",
                      "<|endoftext|>", "</s>", "<|user|>", "<|observation|>")


class TemplateAdapter(ChatAdapter):
    """Renders the tokenizer's chat template, then tokenizes it so that message text stays text.

    The rendered string is cut at each message's content; only the special tokens the template itself
    wrote become control ids. The text between two of them (template text and content together, as the
    plain tokenization of the rendered string sees it) is encoded with `split_special_tokens=True`, so a
    user who types "<|im_end|>" gets those characters, not a forged turn, and plain text gets exactly
    the ids of tokenizing the rendered string.
    """

    family = "generic"
    stop_tokens = END_OF_TURN_TOKENS
    #: the family's official template, used when a checkpoint's tokenizer ships none
    fallback_template: str | None = None

    def template(self, tokenizer) -> str:
        template = getattr(tokenizer, "chat_template", None) or self.fallback_template
        if not template:
            raise AdapterError("this tokenizer has no chat template: choose a family with --family "
                               "or `family:` in the registry")
        return template

    def render(self, tokenizer, messages: Sequence[Message]) -> str:
        return tokenizer.apply_chat_template(list(messages), chat_template=self.template(tokenizer),
                                             tokenize=False, add_generation_prompt=True)

    def build_ids(self, tokenizer, messages: Sequence[Message]) -> list[int]:
        rendered = self.render(tokenizer, messages)
        segments = split_contents(rendered, [m["content"] for m in messages])
        if segments is None:
            if any(has_special_text(tokenizer, m["content"]) for m in messages):
                raise AdapterError("the chat template rewrites message text, so special-token text in "
                                   "a message cannot be kept as text; choose a family explicitly")
            return encode(tokenizer, rendered, special=True)
        ids: list[int] = []
        for text, is_control in control_runs(tokenizer, segments):
            ids += [tokenizer.convert_tokens_to_ids(text)] if is_control else encode(tokenizer, text, special=False)
        return ids

    def stop_markers(self, tokenizer):
        # Only the end-of-turn markers this template actually writes (eos is always added).
        template = getattr(tokenizer, "chat_template", None) or self.fallback_template or ""
        return [s for s in self.stop_tokens if s in template]


def encode(tokenizer, text: str, special: bool) -> list[int]:
    if not text:
        return []
    return tokenizer(text, add_special_tokens=False, split_special_tokens=not special)["input_ids"]


def has_special_text(tokenizer, text: str) -> bool:
    return any(tok in text for tok in tokenizer.all_special_tokens + list(getattr(tokenizer, "added_tokens_encoder", {})))


def control_runs(tokenizer, segments: list[tuple[str, bool]]) -> list[tuple[str, bool]]:
    """(text, is_control) runs: special tokens written by the template, and the text between them."""
    specials = sorted(tokenizer.added_tokens_encoder, key=len, reverse=True)
    pattern = re.compile("(" + "|".join(map(re.escape, specials)) + ")") if specials else None
    runs, text = [], ""
    for piece, is_content in segments:
        parts = [piece] if is_content or pattern is None else pattern.split(piece)
        for i, part in enumerate(parts):
            if i % 2:  # a special token of the template
                runs += [(text, False)] if text else []
                runs.append((part, True))
                text = ""
            else:
                text += part
    return runs + ([(text, False)] if text else [])


def split_contents(rendered: str, contents: list[str]) -> list[tuple[str, bool]] | None:
    """Cut `rendered` into (text, is_content) pieces, finding each content in order (as is or stripped)."""
    pieces, cursor = [], 0
    for content in contents:
        for candidate in (content, content.strip()):
            at = rendered.find(candidate, cursor) if candidate else cursor
            if at >= 0:
                break
        else:
            return None
        pieces += [(rendered[cursor:at], False), (candidate, True)]
        cursor = at + len(candidate)
    pieces.append((rendered[cursor:], False))
    return [p for p in pieces if p[0]]


__all__ = ["TemplateAdapter", "token_id"]
