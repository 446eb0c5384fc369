"""Baichuan2 (BaichuanForCausalLM) -> LlamaForCausalLM: 7B with RoPE, 13B with ALiBi (see alibi.py)."""
from __future__ import annotations

import re

import torch
import torch.nn.functional as F

MODEL_TYPE = "llama"
ARCHITECTURE = "LlamaForCausalLM"
W_PACK = re.compile(r"^model\.layers\.(\d+)\.self_attn\.W_pack\.(\w+)$")


def uses_alibi(config: dict) -> bool:
    # 13B (ALiBi) ships no max_position_embeddings; 7B (RoPE) does.
    return "max_position_embeddings" not in config


def native_config(config: dict) -> dict:
    """LlamaConfig keyword arguments for an upstream Baichuan2 config.json."""
    context = config.get("max_position_embeddings") or config.get("model_max_length", 4096)
    rope = {"rope_type": "default", "rope_theta": 10000.0}
    if uses_alibi(config):
        # Positions enter through the ALiBi bias; a linear factor of 1e30 makes the rotation the identity.
        rope = {"rope_type": "linear", "factor": 1e30, "rope_theta": 10000.0}
    heads = config["num_attention_heads"]
    return dict(
        vocab_size=config["vocab_size"], hidden_size=config["hidden_size"],
        intermediate_size=config["intermediate_size"], num_hidden_layers=config["num_hidden_layers"],
        num_attention_heads=heads, num_key_value_heads=heads, rms_norm_eps=config.get("rms_norm_eps", 1e-6),
        max_position_embeddings=context, rope_parameters=rope, tie_word_embeddings=False,
        bos_token_id=config.get("bos_token_id", 1), eos_token_id=config.get("eos_token_id", 2),
        pad_token_id=config.get("pad_token_id", 0), dtype=config.get("torch_dtype"))


def convert_tensor(name: str, tensor: torch.Tensor, config: dict) -> list[tuple[str, torch.Tensor]]:
    match = W_PACK.match(name)
    if match:
        layer, part = match.groups()
        return [(f"model.layers.{layer}.self_attn.{p}_proj.{part}", t) for p, t in zip("qkv", tensor.chunk(3))]
    if name == "lm_head.weight":
        # NormHead: upstream normalizes the rows at its first eval forward; the file holds them raw.
        return [(name, F.normalize(tensor.float(), dim=-1).to(tensor.dtype))]
    if name.startswith("model.") or name.startswith("lm_head."):
        return [(name, tensor)]
    raise KeyError(name)
