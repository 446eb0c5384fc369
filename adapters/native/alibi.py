"""ALiBi attention for Baichuan2-13B on LlamaForCausalLM, registered with transformers' attention interface.

Load a converted 13B folder with `attn_implementation=ATTENTION` after importing this module.
The ALiBi bias goes to sdpa as `position_bias`, which keeps the causal and padding mask
(folding it into the mask by hand loses the causal mask when the mask is None).
"""
from __future__ import annotations

import math

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

ATTENTION = "alibi_sdpa"


def slopes(heads: int) -> list[float]:
    """Upstream's (BLOOM's) slopes, with the interleaved branch for a head count not a power of two."""
    def power_of_two(n: int) -> list[float]:
        start = 2 ** (-(2 ** -(math.log2(n) - 3)))
        return [start * start ** i for i in range(n)]

    if math.log2(heads).is_integer():
        return power_of_two(heads)
    closest = 2 ** math.floor(math.log2(heads))
    return power_of_two(closest) + slopes(2 * closest)[0::2][: heads - closest]


def alibi_attention(module, query, key, value, attention_mask, **kwargs):
    heads, q_length, kv_length = query.shape[1], query.shape[2], key.shape[2]
    slope = torch.tensor(slopes(heads), dtype=torch.float32, device=query.device)
    # Upstream adds slope * key_index; softmax ignores a per-row constant, so slope * (key - query
    # position) is the same attention with small values near the diagonal, which bf16 keeps precise.
    keys = torch.arange(kv_length, device=query.device)
    rows = torch.arange(kv_length - q_length, kv_length, device=query.device)
    bias = slope[:, None, None] * (keys[None, None, :] - rows[None, :, None])
    return sdpa_attention_forward(module, query, key, value, attention_mask,
                                  position_bias=bias[None].to(query.dtype), **kwargs)


AttentionInterface.register(ATTENTION, alibi_attention)
# Without a mask function of the same name transformers builds no mask, and padding would be ignored.
AttentionMaskInterface.register(ATTENTION, sdpa_mask)
