"""Qwen1 (QWenLMHeadModel) -> Qwen2ForCausalLM: the config and the tensor names.

Reused by the quantized loaders: `native_config` maps the config, `native_name` a tensor name, and
`fused_qkv_names` says which tensors hold q|k|v fused (split them along their output dimension).
"""
from __future__ import annotations

import re

import torch

from ..quant import drop_zero_bias, split_fused

MODEL_TYPE = "qwen2"
ARCHITECTURE = "Qwen2ForCausalLM"

RENAMES = [
    (r"^transformer\.wte\.", "model.embed_tokens."),
    (r"^transformer\.ln_f\.", "model.norm."),
    (r"^transformer\.h\.(\d+)\.ln_1\.", r"model.layers.\1.input_layernorm."),
    (r"^transformer\.h\.(\d+)\.ln_2\.", r"model.layers.\1.post_attention_layernorm."),
    (r"^transformer\.h\.(\d+)\.attn\.c_proj\.", r"model.layers.\1.self_attn.o_proj."),
    # Upstream computes c_proj(w1(x) * silu(w2(x))): w2 is the gate, w1 the up projection.
    (r"^transformer\.h\.(\d+)\.mlp\.w2\.", r"model.layers.\1.mlp.gate_proj."),
    (r"^transformer\.h\.(\d+)\.mlp\.w1\.", r"model.layers.\1.mlp.up_proj."),
    (r"^transformer\.h\.(\d+)\.mlp\.c_proj\.", r"model.layers.\1.mlp.down_proj."),
    (r"^lm_head\.", "lm_head."),
]
C_ATTN = re.compile(r"^transformer\.h\.(\d+)\.attn\.c_attn\.(\w+)$")


def native_config(config: dict) -> dict:
    """Qwen2Config keyword arguments for an upstream Qwen1 config.json."""
    heads = config["num_attention_heads"]
    return dict(
        vocab_size=config["vocab_size"], hidden_size=config["hidden_size"],
        intermediate_size=config["intermediate_size"] // 2,  # upstream counts w1 and w2 together
        num_hidden_layers=config["num_hidden_layers"], num_attention_heads=heads, num_key_value_heads=heads,
        head_dim=config.get("kv_channels") or config["hidden_size"] // heads,
        rms_norm_eps=config.get("layer_norm_epsilon", 1e-6),
        # Exact only within seq_length: beyond it upstream turns on dynamic NTK and logn scaling.
        max_position_embeddings=config.get("seq_length") or config.get("max_position_embeddings", 8192),
        rope_parameters={"rope_type": "default", "rope_theta": float(config.get("rotary_emb_base", 10000))},
        tie_word_embeddings=bool(config.get("tie_word_embeddings", False)), use_sliding_window=False,
        dtype=config.get("torch_dtype"))


def fused_qkv_names(name: str) -> tuple[str, str, str] | None:
    """For a `c_attn` tensor (weight, bias, or a packed quantized part): the q, k, v names it splits into."""
    match = C_ATTN.match(name)
    if not match:
        return None
    layer, part = match.groups()
    return tuple(f"model.layers.{layer}.self_attn.{p}_proj.{part}" for p in "qkv")


def native_name(name: str) -> str | None:
    """The Qwen2 name of a non-fused upstream tensor; None for one that has no counterpart."""
    for pattern, replacement in RENAMES:
        if re.match(pattern, name):
            return re.sub(pattern, replacement, name)
    return None


def converts_packed(config: dict) -> bool:
    """Qwen-*-Chat-Int4 (AutoGPTQ) folders convert on their packed tensors."""
    return str(config["quantization_config"].get("quant_method")).lower() == "gptq"


def convert_tensor(name: str, tensor: torch.Tensor, config: dict) -> list[tuple[str, torch.Tensor]]:
    part = name.rsplit(".", 1)[-1]
    fused = fused_qkv_names(name)
    if fused:  # [q | k | v] in equal thirds: rows of a weight, columns of GPTQ-packed tensors (quant.py)
        return list(zip(fused, split_fused(part, tensor)))
    native = native_name(name)
    if native is None:
        raise KeyError(name)
    if config.get("quantization_config") and drop_zero_bias(part, tensor, name):
        return []  # Qwen *-Int4 folders carry all-zero biases the model does not have
    return [(native, tensor)]
