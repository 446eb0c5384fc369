"""ChatGLM3-6B: upstream `build_chat_input`, role tokens numbered after the sentencepiece vocabulary."""
from __future__ import annotations

from .base import ChatAdapter
from .files import local_folder
from .native import NativeLoading
from .spm import load_sentencepiece

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

    def build_ids(self, tokenizer, messages) -> list[int]:
        # Each piece is encoded on its own, so each gets sentencepiece's leading "▁", as upstream.
        ids = [self.special(tokenizer, "[gMASK]"), self.special(tokenizer, "sop")]
        for m in messages:
            ids += ([self.special(tokenizer, f"<|{m['role']}|>")] + self.text(tokenizer, "\n")
                    + self.text(tokenizer, m["content"]))
        return ids + [self.special(tokenizer, "<|assistant|>")]
