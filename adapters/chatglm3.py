"""ChatGLM3-6B: upstream `build_chat_input`, role tokens numbered after the sentencepiece vocabulary."""
from __future__ import annotations

import json

from .base import NO_OPTIONS, ChatAdapter, ChatOptions
from .files import local_folder
from .native import NativeLoading
from .replyparse import ReplyFormat
from .spm import load_sentencepiece
from .tools import call_arguments

# The system prompt upstream's openai_api_demo puts before the tools when a request brings its own none.
TOOLS_SYSTEM = "Answer the following questions as best as you can. You have access to the following tools:"

# Not sentencepiece pieces: upstream numbers them sp.vocab_size() + index (64789.. on the real vocabulary).
GLM_SPECIALS = ("[MASK]", "[gMASK]", "[sMASK]", "sop", "eop", "<|system|>", "<|user|>", "<|assistant|>",
                "<|observation|>")


class ChatGLM3Adapter(NativeLoading, ChatAdapter):
    family = "chatglm3"
    stop_tokens = ("<|user|>", "<|observation|>")  # and eos </s>, as upstream chat() does
    # Upstream chat(): max_length 8192 for prompt and reply together, so the reply may use what is left.
    generation_defaults = {"temperature": 0.8, "top_p": 0.8, "max_new_tokens": 8192}
    # A reply starts with a metadata line, empty in chat; upstream chat() strips it from the reply it
    # returns and keeps in history, so the next prompt holds the reply without it.
    strip_reply_start = True

    @classmethod
    def matches(cls, config, files, folder) -> bool:
        # ChatGLM2 shares model_type and layout but not the role tokens; its prompt format is not served here.
        return config.get("model_type") == "chatglm"

    def context_length(self, config: dict) -> int | None:
        return config.get("seq_length") or config.get("max_position_embeddings")  # upstream, or converted

    def load_tokenizer(self, weights):
        return load_sentencepiece(local_folder(weights), GLM_SPECIALS, unk_token="<unk>", eos_token="</s>",
                                  pad_token="<unk>")

    def takes_tools(self, tokenizer) -> bool:
        return True

    def reply_format(self, tokenizer) -> ReplyFormat:
        return ReplyFormat(tools="chatglm3")

    def build_ids(self, tokenizer, messages, options: ChatOptions = NO_OPTIONS) -> list[int]:
        """Upstream build_chat_input: each turn is `<|role|>` + "metadata\n" + content.

        Tools go in the system turn as upstream's chat(history=[{"role": "system", "tools": ...}]) has them;
        a call is an assistant turn whose metadata is the function name, a result an observation turn.
        """
        ids = [self.special(tokenizer, "[gMASK]"), self.special(tokenizer, "sop")]
        for role, metadata, content in glm_turns(messages, options.tools):
            # Each piece is encoded on its own, so each gets sentencepiece's leading "▁", as upstream.
            ids += ([self.special(tokenizer, f"<|{role}|>")] + self.text(tokenizer, f"{metadata}\n")
                    + self.text(tokenizer, content))
        return ids + [self.special(tokenizer, "<|assistant|>")]


def glm_turns(messages, tools) -> list[tuple[str, str, str]]:
    """(role, metadata, content) turns in ChatGLM3's own terms."""
    turns = []
    if tools and messages[0]["role"] != "system":
        messages = [{"role": "system", "content": TOOLS_SYSTEM}, *messages]
    for i, m in enumerate(messages):
        content = m["content"]
        if m["role"] == "system" and i == 0 and tools:
            functions = [t["function"] for t in tools]
            content = content + "\n" + json.dumps(functions, indent=4, ensure_ascii=False)
        if m["role"] == "tool":
            turns.append(("observation", "", content))
        elif m["role"] == "assistant" and m.get("tool_calls"):
            if content:
                turns.append(("assistant", "", content))
            turns += [("assistant", c["function"]["name"], glm_call_text(call_arguments(c))) for c in m["tool_calls"]]
        else:
            turns.append((m["role"], "", content))
    return turns


def glm_call_text(arguments: dict) -> str:
    """A call as ChatGLM3 writes it after its metadata line (upstream process_response reads it back)."""
    args = ", ".join(f"{key}={value!r}" for key, value in arguments.items())
    return f"```python\ntool_call({args})\n```"
