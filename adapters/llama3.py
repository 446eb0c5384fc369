"""Llama 3 / 3.1 / 3.2 Instruct: the checkpoint's chat template, stopping on end-of-turn as well as eos."""
from __future__ import annotations

from .files import declared_tokens, require
from .generic import TemplateAdapter

# Meta-Llama-3-8B-Instruct's template, for a folder whose tokenizer_config.json lost it.
LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' "
    "+ message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 "
    "== 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if "
    "add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")


class Llama3Adapter(TemplateAdapter):
    family = "llama3"
    # The tokenizer's eos is <|end_of_text|>; instruct replies end with <|eot_id|> (3.1+: <|eom_id|> too).
    stop_tokens = ("<|eot_id|>", "<|end_of_text|>", "<|eom_id|>")
    fallback_template = LLAMA3_TEMPLATE

    @classmethod
    def matches(cls, config, files, folder) -> bool:
        return config.get("model_type") == "llama" and "<|start_header_id|>" in declared_tokens(folder)

    def stop_markers(self, tokenizer):
        return self.stop_tokens  # those the vocabulary lacks are skipped when resolved

    def load_tokenizer(self, weights):
        if weights.folder is not None:
            require(weights.folder, "tokenizer.json", "Llama 3's tokenizer is its tokenizer.json")
        return super().load_tokenizer(weights)
