"""Yi-Chat (6B/9B/34B, 1.5): a Llama model with a ChatML-like template and a sentencepiece tokenizer."""
from __future__ import annotations

from .files import declared_tokens, local_folder
from .generic import TemplateAdapter
from .spm import load_sentencepiece

# The official Yi-Chat template: the system text raw (no <|im_start|>system wrapper), replies end "<|im_end|>\n".
YI_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}{% set system_message = messages[0]['content'] %}{% endif %}"
    "{% if system_message is defined %}{{ system_message }}{% endif %}{% for message in messages %}"
    "{% set content = message['content'] %}{% if message['role'] == 'user' %}{{ '<|im_start|>user\\n' + content "
    "+ '<|im_end|>\\n<|im_start|>assistant\\n' }}{% elif message['role'] == 'assistant' %}{{ content + "
    "'<|im_end|>' + '\\n' }}{% endif %}{% endfor %}")


class YiAdapter(TemplateAdapter):
    family = "yi"
    # Yi's tokenizer eos is <|endoftext|> but chat replies end with <|im_end|>: without it Yi never stops.
    stop_tokens = ("<|im_end|>", "<|endoftext|>", "<|im_start|>", "<|im_sep|>")
    fallback_template = YI_TEMPLATE

    @classmethod
    def matches(cls, config, files, folder) -> bool:
        # Yi's own spellings: ChatML markers with <|startoftext|> as bos.
        return config.get("model_type") == "llama" and {"<|im_start|>", "<|startoftext|>"} <= declared_tokens(folder)

    def load_tokenizer(self, weights):
        tokenizer = load_sentencepiece(local_folder(weights), unk_token="<unk>", bos_token="<|startoftext|>",
                                       eos_token="<|endoftext|>", pad_token="<unk>")
        tokenizer.chat_template = getattr(tokenizer, "chat_template", None) or template_of(local_folder(weights))
        return tokenizer

    def stop_markers(self, tokenizer):
        return self.stop_tokens


def template_of(folder) -> str | None:
    from .files import read_json

    return read_json(folder / "tokenizer_config.json").get("chat_template") or None
