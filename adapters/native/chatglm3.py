"""ChatGLM3 (ChatGLMForConditionalGeneration) -> GlmForCausalLM: the config and the tensors."""
from __future__ import annotations

import re

import torch

MODEL_TYPE = "glm"
ARCHITECTURE = "GlmForCausalLM"

LAYER = r"^transformer\.encoder\.layers\.(\d+)\."
RENAMES = [
    (r"^transformer\.embedding\.word_embeddings\.", "model.embed_tokens."),
    (r"^transformer\.encoder\.final_layernorm\.", "model.norm."),
    (r"^transformer\.output_layer\.", "lm_head."),
    (LAYER + r"input_layernorm\.", r"model.layers.\1.input_layernorm."),
    (LAYER + r"post_attention_layernorm\.", r"model.layers.\1.post_attention_layernorm."),
    (LAYER + r"self_attention\.dense\.", r"model.layers.\1.self_attn.o_proj."),
    (LAYER + r"mlp\.dense_h_to_4h\.", r"model.layers.\1.mlp.gate_up_proj."),  # gate first half, as Glm
    (LAYER + r"mlp\.dense_4h_to_h\.", r"model.layers.\1.mlp.down_proj."),
]
QKV = re.compile(LAYER + r"self_attention\.query_key_value\.(\w+)$")
DROPPED = re.compile(r"rotary_pos_emb\.inv_freq$")  # recomputed by the native rotary embedding


def native_config(config: dict) -> dict:
    """GlmConfig keyword arguments for an upstream ChatGLM3 config.json."""
    heads = config["num_attention_heads"]
    return dict(
        vocab_size=config["padded_vocab_size"], hidden_size=config["hidden_size"],
        intermediate_size=config["ffn_hidden_size"], num_hidden_layers=config["num_layers"],
        num_attention_heads=heads,
        num_key_value_heads=config["multi_query_group_num"] if config.get("multi_query_attention") else heads,
        head_dim=config.get("kv_channels") or config["hidden_size"] // heads,
        attention_bias=bool(config.get("add_qkv_bias", True)), rms_norm_eps=config.get("layernorm_epsilon", 1e-5),
        max_position_embeddings=config.get("seq_length", 8192),
        # Upstream rotates half of each head (2D RoPE); rope_ratio scales the base in the 32k/128k variants,
        # which upstream's own convert script drops.
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0 * config.get("rope_ratio", 1),
                         "partial_rotary_factor": 0.5},
        tie_word_embeddings=False, pad_token_id=config.get("pad_token_id", 0),
        eos_token_id=config.get("eos_token_id", 2), dtype=config.get("torch_dtype"))


def convert_tensor(name: str, tensor: torch.Tensor, config: dict) -> list[tuple[str, torch.Tensor]]:
    if DROPPED.search(name):
        return []
    match = QKV.match(name)
    if match:
        layer, part = match.groups()
        heads, head_dim = config["num_attention_heads"], config.get("kv_channels", 128)
        kv = config["multi_query_group_num"] if config.get("multi_query_attention") else heads
        q, k, v = tensor.split([heads * head_dim, kv * head_dim, kv * head_dim], dim=0)
        return [(f"model.layers.{layer}.self_attn.{p}_proj.{part}", t) for p, t in zip("qkv", (q, k, v))]
    for pattern, replacement in RENAMES:
        if re.match(pattern, name):
            return [(re.sub(pattern, replacement, name), tensor)]
    raise KeyError(name)
