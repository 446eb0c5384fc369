"""The generic family: any Hugging Face chat model whose tokenizer ships a chat template."""
from __future__ import annotations

import json
import re
from typing import Sequence

from .base import NO_OPTIONS, AdapterError, ChatAdapter, ChatOptions, Message, token_id
from .replyparse import CALL_START, THINK_END, THINK_START, ReplyFormat
from .tools import string_leaves, template_messages

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

    An assistant turn's `<think>…</think>` markers were written by the model, so they stay control ids
    (the template may also drop or move that reasoning); the text of tools and tool-call arguments that
    spells a special token stays text like message content.
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

    def render(self, tokenizer, messages: Sequence[Message], options: ChatOptions = NO_OPTIONS) -> str:
        kwargs = template_variables(options)
        return tokenizer.apply_chat_template(template_messages(messages), chat_template=self.template(tokenizer),
                                             tokenize=False, add_generation_prompt=True, **kwargs)

    def build_ids(self, tokenizer, messages: Sequence[Message], options: ChatOptions = NO_OPTIONS) -> list[int]:
        rendered = self.render(tokenizer, messages, options)
        segments = split_contents(rendered, [p for m in messages for p in content_pieces(m)])
        if segments is None:
            if any(has_special_text(tokenizer, m["content"]) for m in messages):
                raise AdapterError("the chat template rewrites message text, so special-token text in "
                                   "a message cannot be kept as text; choose a family explicitly")
            return encode(tokenizer, rendered, special=True)
        segments = protect(segments, protected_strings(tokenizer, messages, options))
        ids: list[int] = []
        for text, is_control in control_runs(tokenizer, segments):
            ids += [tokenizer.convert_tokens_to_ids(text)] if is_control else encode(tokenizer, text, special=False)
        return ids

    def takes_tools(self, tokenizer) -> bool:
        return bool(re.search(r"\btools\b", self.template_text(tokenizer)))

    def thinking_variable(self, tokenizer) -> str | None:
        template = self.template_text(tokenizer)
        return next((v for v in THINKING_VARIABLES if re.search(rf"\b{v}\b", template)), None)

    def template_text(self, tokenizer) -> str:
        return getattr(tokenizer, "chat_template", None) or self.fallback_template or ""

    def reply_format(self, tokenizer) -> ReplyFormat:
        template = self.template_text(tokenizer)
        think = token_id(tokenizer, THINK_END) is not None or THINK_END in template
        tools = None
        if CALL_START in template:
            tools = "hermes"
        elif self.takes_tools(tokenizer) and "ipython" in template:
            tools = "llama3_json"  # Llama 3.1+: a JSON call, results in the ipython role
        return ReplyFormat(think=think, tools=tools)

    def opens_thinking(self, tokenizer, messages: Sequence[Message], options: ChatOptions = NO_OPTIONS) -> bool:
        # DeepSeek-R1 distills end their generation prompt with "<think>\n": the reply starts inside it.
        tail = self.render(tokenizer, messages, options)[-64:]
        at = tail.rfind(THINK_START)
        return at >= 0 and THINK_END not in tail[at:]

    def stop_markers(self, tokenizer):
        # Only the end-of-turn markers this template actually writes (eos is always added).
        template = getattr(tokenizer, "chat_template", None) or self.fallback_template or ""
        return [s for s in self.stop_tokens if s in template]


# Template variables that switch reasoning, as the templates that have one spell it.
THINKING_VARIABLES = ("enable_thinking", "thinking")
# apply_chat_template's own arguments: a request cannot set them as template variables.
RESERVED_VARIABLES = {"conversation", "messages", "tools", "documents", "chat_template", "add_generation_prompt",
                      "continue_final_message", "tokenize", "padding", "truncation", "max_length",
                      "return_tensors", "return_dict", "return_assistant_tokens_mask", "tokenizer_kwargs"}


def template_variables(options: ChatOptions) -> dict:
    bad = sorted(set(options.template_kwargs) & RESERVED_VARIABLES)
    if bad:
        raise AdapterError(f"chat_template_kwargs: {', '.join(bad)} cannot be set as a template variable")
    kwargs = dict(options.template_kwargs)
    if options.tools:
        kwargs["tools"] = options.tools
    return kwargs


def content_pieces(message: Message) -> list[tuple[tuple[str, ...], bool]]:
    """The user- or model-written texts of a message in render order: (spellings to look for, optional).

    Templates trim text, so each piece may appear stripped. An assistant turn's reasoning is optional:
    templates drop it from earlier turns. A tool result may appear JSON-quoted (Llama 3.2's template).
    """
    content, role = message["content"], message["role"]
    if role == "assistant":
        reasoning = message.get("reasoning_content")
        if reasoning is None and "</think>" in content:
            before, content = content.split("</think>")[0], content.split("</think>")[-1]
            reasoning = before.split("<think>")[-1]
        pieces = [((reasoning, reasoning.strip("\n"), reasoning.strip()), True)] if reasoning else []
        return pieces + [((content, content.lstrip("\n"), content.strip()), False)]
    if role == "tool":
        return [((content, content.strip(), json.dumps(content, ensure_ascii=False)[1:-1]), False)]
    return [((content, content.strip()), False)]


def protected_strings(tokenizer, messages: Sequence[Message], options: ChatOptions) -> list[str]:
    """Text in tools and call arguments that spells a special token, as it is and JSON-escaped."""
    leaves = string_leaves(options.tools or [])
    for m in messages:
        leaves += string_leaves(m.get("tool_calls") or [])
    found = [s for s in leaves if has_special_text(tokenizer, s)]
    return sorted({v for s in found for v in (s, json.dumps(s, ensure_ascii=False)[1:-1])}, key=len, reverse=True)


def protect(segments: list[tuple[str, bool]], protected: list[str]) -> list[tuple[str, bool]]:
    """Mark each protected string inside template text as content, so its special-token text stays text."""
    if not protected:
        return segments
    pattern = re.compile("(" + "|".join(map(re.escape, protected)) + ")")
    out = []
    for text, is_content in segments:
        parts = [text] if is_content else pattern.split(text)
        out += [(part, is_content or bool(i % 2)) for i, part in enumerate(parts) if part]
    return out


def encode(tokenizer, text: str, special: bool) -> list[int]:
    if not text:
        return []
    if not special and any(tok in text for tok in plain_added_tokens(tokenizer)):
        return model_ids(tokenizer, text)
    return tokenizer(text, add_special_tokens=False, split_special_tokens=not special)["input_ids"]


def plain_added_tokens(tokenizer) -> list[str]:
    """Added tokens that are not "special" (Qwen's <think>, <tool_call>): split_special_tokens keeps them whole."""
    decoder = getattr(tokenizer, "added_tokens_decoder", {})
    return [t.content for t in decoder.values() if not t.special]


def model_ids(tokenizer, text: str) -> list[int]:
    """`text` through the tokenizer's normalizer, pre-tokenizer and model alone: no added token matches."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    if backend.normalizer is not None:
        text = backend.normalizer.normalize_str(text)
    pieces = backend.pre_tokenizer.pre_tokenize_str(text) if backend.pre_tokenizer is not None else [(text, None)]
    return [token.id for piece, _ in pieces for token in backend.model.tokenize(piece)]


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


def split_contents(rendered: str, contents: list[tuple[tuple[str, ...], bool]]) -> list[tuple[str, bool]] | None:
    """Cut `rendered` into (text, is_content) pieces, finding each content in order (in one of its spellings).

    An optional piece is taken only where it ends before the next required piece starts; else it was left out.
    """
    pieces, cursor = [], 0
    for k, (spellings, optional) in enumerate(contents):
        found = find_piece(rendered, spellings, cursor)
        if found is None or optional and not fits_before_next(rendered, contents[k + 1:], found):
            if optional:
                continue
            return None
        at, candidate = found
        pieces += [(rendered[cursor:at], False), (candidate, True)]
        cursor = at + len(candidate)
    pieces.append((rendered[cursor:], False))
    return [p for p in pieces if p[0]]


def find_piece(rendered: str, spellings: tuple[str, ...], cursor: int) -> tuple[int, str] | None:
    for candidate in spellings:
        at = rendered.find(candidate, cursor) if candidate else cursor
        if at >= 0:
            return at, candidate
    return None


def fits_before_next(rendered: str, rest, found: tuple[int, str]) -> bool:
    end = found[0] + len(found[1])
    following = next((spellings for spellings, optional in rest if not optional), None)
    return following is None or find_piece(rendered, following, end) is not None


__all__ = ["TemplateAdapter", "token_id"]
