"""The family interface: how one model family turns messages into prompt ids and knows when to stop.

A family class overrides only what differs from its parent. Stop markers are strings, turned into ids
through the tokenizer at load time, never numbers in code.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

from .errors import AdapterError, ContextTooLong  # noqa: F401  (raised by the families; imported from here too)

Message = dict  # {"role": "system"|"user"|"assistant"|"tool", "content": str, ...} (see adapters/tools.py)


@dataclass
class Prompt:
    """The exact prompt a model sees, plus what ends its reply."""

    input_ids: list[int]
    stop_token_ids: list[int]
    stop_strings: list[str] = field(default_factory=list)
    max_new_tokens: int | None = None  # reply budget left by the context, when known
    dropped_turns: int = 0  # whole oldest turns left out to fit the context

    def text(self, tokenizer) -> str:
        return tokenizer.decode(self.input_ids, skip_special_tokens=False)


@dataclass(frozen=True)
class ChatOptions:
    """What a request adds to its messages: tool definitions and chat-template variables."""

    tools: list[dict] | None = None  # OpenAI function tools, checked by adapters.tools.check_tools
    template_kwargs: dict = field(default_factory=dict)  # e.g. {"enable_thinking": False}
    reply_prefix: str = ""  # reply text the prompt writes for the model (a forced tool call's opening)


NO_OPTIONS = ChatOptions()


class ChatAdapter:
    """Base family: subclasses declare strings and override the builder only where upstream differs."""

    family = "base"
    #: special tokens that end a reply, as strings; unknown ones are ignored at resolve time
    stop_tokens: Sequence[str] = ()
    #: plain-text markers that end a reply (held back while they may be forming)
    stop_strings: Sequence[str] = ()
    #: used when the conversation has no system message (None: leave it out)
    default_system: str | None = None
    #: sampling defaults of the family, below the checkpoint's generation_config
    generation_defaults: dict[str, Any] = {}
    #: drop whitespace the model writes before its reply (the reply text only; ids are kept)
    strip_reply_start = False

    @classmethod
    def matches(cls, config: dict, files: set[str], folder) -> bool:
        """Whether a checkpoint folder (its config.json and file names) belongs to this family."""
        return False

    def configure(self, config: dict, generation: dict) -> None:
        """Read checkpoint settings the builder needs (config.json, generation_config.json as dicts)."""

    def context_length(self, config: dict) -> int | None:
        """Tokens the model attends to, from its upstream config.json."""
        return config.get("max_position_embeddings") or config.get("seq_length")

    # -- prompt -------------------------------------------------------------------------------
    def build_ids(self, tokenizer, messages: Sequence[Message]) -> list[int]:
        """Prompt ids; a family that takes tools or template variables adds an `options` argument."""
        raise NotImplementedError

    def takes_tools(self, tokenizer) -> bool:
        """Whether this family (with this tokenizer's template) renders tool definitions and tool turns."""
        return False

    def thinking_variable(self, tokenizer) -> str | None:
        """The chat-template variable that switches reasoning on and off (None: there is none)."""
        return None

    def reply_format(self, tokenizer):
        """How this family's replies hold reasoning and tool calls (adapters.replyparse)."""
        from .replyparse import ReplyFormat

        return ReplyFormat()

    def opens_thinking(self, tokenizer, messages: Sequence[Message], options: "ChatOptions") -> bool:
        """Whether the prompt itself opens <think>, so the reply starts inside its reasoning."""
        return False

    def check_options(self, tokenizer, messages: Sequence[Message], options: ChatOptions) -> None:
        """Refuse tools (definitions or tool turns) where the family cannot render them."""
        uses_tools = options.tools or any(m["role"] == "tool" or m.get("tool_calls") for m in messages)
        if uses_tools and not self.takes_tools(tokenizer):
            raise AdapterError(f"the {self.family} family's prompt format has no tool calls; "
                               f"send no tools or tool turns to this model")

    def prefix_ids(self, tokenizer, prefix: str) -> list[int]:
        """The hub's own reply opening (markers included, so they are control ids where the vocabulary has them)."""
        return tokenizer(prefix, add_special_tokens=False)["input_ids"] if prefix else []

    def ids_for(self, tokenizer, messages: Sequence[Message], options: ChatOptions) -> list[int]:
        if options == NO_OPTIONS:
            return self.build_ids(tokenizer, messages)
        return self.build_ids(tokenizer, messages, options)

    def with_default_system(self, messages: Sequence[Message]) -> list[Message]:
        messages = [dict(m) for m in messages]
        if self.default_system is not None and (not messages or messages[0]["role"] != "system"):
            messages.insert(0, {"role": "system", "content": self.default_system})
        return messages

    def build_prompt(self, tokenizer, messages: Sequence[Message], context_length: int | None = None,
                     max_new_tokens: int | None = None, extra_stop_ids: Sequence[int] = (),
                     options: ChatOptions = NO_OPTIONS) -> Prompt:
        """Prompt ids for `messages`, dropping whole oldest turns only when no room is left for a reply."""
        validate_messages(messages)
        self.check_options(tokenizer, messages, options)
        messages = self.with_default_system(messages)
        dropped = 0
        while True:
            ids = self.ids_for(tokenizer, messages, options) + self.prefix_ids(tokenizer, options.reply_prefix)
            budget = max_new_tokens
            if context_length:
                room = context_length - len(ids)
                budget = room if budget is None else min(budget, room)
                if room <= 0:
                    messages = drop_oldest_turn(messages)
                    if messages is None:
                        raise ContextTooLong(
                            f"the message is too long: its prompt takes {len(ids)} tokens and the "
                            f"model's context is {context_length}")
                    dropped += 1
                    continue
            return Prompt(ids, self.stop_token_ids(tokenizer, extra_stop_ids), list(self.stop_strings), budget, dropped)

    # -- loading ------------------------------------------------------------------------------
    def load_tokenizer(self, weights):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(weights.location, **weights.pretrained_kwargs())

    def load_model(self, weights, dtype, device: str):
        from transformers import AutoModelForCausalLM

        from .files import check_checkpoint
        from .quant import model_kwargs, place

        if weights.folder is not None and not weights.gguf_file:
            check_checkpoint(weights.folder)
        model = AutoModelForCausalLM.from_pretrained(weights.location, **model_kwargs(weights.quant, dtype, device),
                                                     **weights.pretrained_kwargs())
        return place(model, weights.quant, device)

    # -- stops --------------------------------------------------------------------------------
    def stop_markers(self, tokenizer) -> Sequence[str]:
        """The stop tokens, as strings, that apply to this tokenizer."""
        return self.stop_tokens

    def stop_token_ids(self, tokenizer, extra_ids: Sequence[int] = ()) -> list[int]:
        """Stop markers resolved through the tokenizer, its eos, and ids the checkpoint declares."""
        ids = [token_id(tokenizer, s) for s in self.stop_markers(tokenizer)]
        if tokenizer.eos_token is not None and tokenizer.eos_token_id is not None:
            ids.append(tokenizer.eos_token_id)
        return sorted(unique([i for i in [*ids, *extra_ids] if i is not None]))

    # -- segment-wise building (upstream builders that concatenate ids) -------------------------
    @staticmethod
    def special(tokenizer, text: str) -> int:
        """The id of a control token the builder writes; a clear error when the vocabulary lacks it."""
        found = token_id(tokenizer, text)
        if found is None:
            raise AdapterError(f"this tokenizer has no {text!r} token; is the family right? (--family)")
        return found

    @staticmethod
    def text(tokenizer, text: str) -> list[int]:
        """Ids of `text` as plain text: special-token spellings in it stay text."""
        if not text:
            return []
        return tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]


def token_id(tokenizer, text: str) -> int | None:
    """The id of `text` if it is one token of this vocabulary, else None (never the unk id)."""
    vocab_id = tokenizer.convert_tokens_to_ids(text)
    if vocab_id is None or vocab_id == tokenizer.unk_token_id and text != tokenizer.unk_token:
        return None
    return vocab_id if tokenizer.convert_ids_to_tokens(vocab_id) == text else None


def unique(ids) -> list[int]:
    return list(dict.fromkeys(int(i) for i in ids))


def validate_messages(messages: Sequence[Message]) -> None:
    from .tools import check_tool_turns

    if not messages:
        raise AdapterError("the conversation is empty")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise AdapterError(f"message {i}: expected an object with 'role' and 'content', got {m!r}")
        if m["role"] not in MESSAGE_KEYS:
            raise AdapterError(f"message {i}: unknown role {m['role']!r} (system, user, assistant or tool)")
        if set(m) - MESSAGE_KEYS[m["role"]]:
            raise AdapterError(f"message {i}: unexpected keys {sorted(set(m) - MESSAGE_KEYS[m['role']])} "
                               f"in a {m['role']} message")
        if not isinstance(m["content"], str):
            raise AdapterError(f"message {i}: content must be text")
        if not isinstance(m.get("reasoning_content") or "", str):
            raise AdapterError(f"message {i}: reasoning_content must be text")
    check_tool_turns(messages)


# Keys each role may carry: an assistant turn its tool calls and reasoning, a tool turn the call it answers.
MESSAGE_KEYS = {"system": {"role", "content"}, "user": {"role", "content"},
                "assistant": {"role", "content", "tool_calls", "reasoning_content"},
                "tool": {"role", "content", "tool_call_id", "name"}}


def reply_budget(prompt_len: int, context_length: int | None, max_new_tokens: int | None) -> int | None:
    """The reply budget left once the prompt is in the context; an error when nothing is left."""
    if not context_length:
        return max_new_tokens
    room = context_length - prompt_len
    if room <= 0:
        raise AdapterError(f"the conversation is too long: its prompt takes {prompt_len} tokens and the "
                           f"model's context is {context_length}")
    return room if max_new_tokens is None else min(max_new_tokens, room)


def drop_oldest_turn(messages: list[Message]) -> list[Message] | None:
    """Remove the oldest user turn with its replies, keeping the system prompt and the last user turn."""
    start = 1 if messages and messages[0]["role"] == "system" else 0
    users = [i for i in range(start, len(messages)) if messages[i]["role"] == "user"]
    if len(users) < 2:
        return None
    return messages[:start] + messages[users[1]:]
