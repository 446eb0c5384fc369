"""The lean decode step: bitwise forward()'s logits, a check that can say no, and no weight held twice."""
import torch

import demo.fastdecode as fastdecode
from demo.engine import batcher_for
from demo.fastdecode import LeanDecode


def make_tiny_llama(seed=0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, attn_implementation="sdpa")
    return LlamaForCausalLM(config).eval()


def test_the_default_model_decodes_through_the_checked_lean_step(smollm):
    lean = batcher_for(smollm).lean
    assert lean is not None and lean.matches_forward(steps=4)


def test_the_check_refuses_a_step_that_rounds_differently(smollm, monkeypatch):
    lean = batcher_for(smollm).lean

    def norm_in_another_order(norm, hidden):  # the same formula, rounded once less
        x, weight, eps = hidden.to(torch.float32), norm.weight, norm.variance_epsilon
        return (weight.to(torch.float32) * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)).to(hidden.dtype)

    monkeypatch.setattr(fastdecode, "_norm", norm_in_another_order)
    grouped = lean.group_rows
    assert not lean.matches_forward() and not lean.checked()
    assert lean.group_rows == grouped  # a failed check leaves the shared loop's step as it was


def test_fused_projections_are_views_not_copies(smollm):
    lean = batcher_for(smollm).lean
    layer, fused = smollm.model.model.layers[0], lean.layers[0]
    if batcher_for(smollm).packed:  # this CPU packs for oneDNN: one packed matrix, every plain weight freed
        attention = layer.self_attn
        assert attention.q_proj._hub_packed is attention.v_proj._hub_packed is fused["qkv"]._hub_packed
        assert all(m.weight.is_meta for m in (attention.q_proj, layer.mlp.up_proj, fused["qkv"], fused["gate_up"]))
        return
    qkv, gate_up = fused["qkv"].weight, fused["gate_up"].weight
    for proj, weight in ((layer.self_attn.q_proj, qkv), (layer.self_attn.v_proj, qkv), (layer.mlp.up_proj, gate_up)):
        assert proj.weight.untyped_storage().data_ptr() == weight.untyped_storage().data_ptr()
    assert torch.equal(torch.cat([layer.mlp.gate_proj.weight, layer.mlp.up_proj.weight]), gate_up)


def test_a_tiny_llama_is_checked_equal_and_a_hooked_one_keeps_forward():
    from demo.batching import rowwise_attention

    model = make_tiny_llama()
    rowwise_attention(model)
    lean = LeanDecode.fuse(model)
    assert lean is not None and lean.checked()
    hooked = make_tiny_llama()
    rowwise_attention(hooked)
    hooked.model.layers[1].mlp.register_forward_hook(lambda *args: None)
    assert LeanDecode.fuse(hooked) is None


def test_rows_of_one_length_share_an_attention_call_and_others_run_alone():
    assert fastdecode._runs_of_equal_length([9, 9, 12, 12, 12, 9]) == [(0, 2), (2, 5), (5, 6)]
    assert fastdecode._runs_of_equal_length([7]) == [(0, 1)]


def test_grouped_attention_gives_each_row_what_it_gets_alone(smollm):
    """On the default model's head shapes, rows of mixed lengths, left-padded as the loop pads them."""
    attention = smollm.model.model.layers[0].self_attn
    generator = torch.Generator().manual_seed(0)
    lengths, width = [40, 40, 40, 23, 23, 40], 40
    q = torch.randn(len(lengths), 9, 1, 64, generator=generator).to(torch.bfloat16)
    keys, values = (torch.randn(len(lengths), 3, width, 64, generator=generator).to(torch.bfloat16)
                    for _ in range(2))
    grouped = fastdecode._rowwise_sdpa(attention, q, keys, values, lengths)
    alone = fastdecode._rowwise_sdpa(attention, q, keys, values, lengths, group_rows=False)
    assert torch.equal(grouped, alone)
    for b, n in enumerate(lengths):
        row = fastdecode._sdpa(attention, q[b:b + 1], keys[b:b + 1, :, width - n:], values[b:b + 1, :, width - n:])
        assert torch.equal(grouped[b:b + 1], row)


def test_a_kernel_that_mixes_rows_makes_the_step_run_rows_alone(monkeypatch):
    from demo.batching import rowwise_attention

    model = make_tiny_llama().to(torch.bfloat16)
    rowwise_attention(model)
    lean = LeanDecode.fuse(model)
    assert lean.checked() and lean.group_rows is True
    real = fastdecode._sdpa

    def batch_variant(attention, q, keys, values):  # a kernel whose result depends on the batch it is in
        out = real(attention, q, keys, values)
        return out * 1.01 if q.shape[0] > 1 else out

    monkeypatch.setattr(fastdecode, "_sdpa", batch_variant)
    assert not lean.rows_attend_alone_in_a_group()
    assert lean.checked() and lean.group_rows is False
    monkeypatch.setattr(lean, "rows_attend_alone_in_a_group", lambda: True)  # the probe misses it: the check does not
    assert lean.checked() and lean.group_rows is False


def test_fp32_attention_runs_rows_alone():
    """This CPU's fp32 kernel gives a row in a batch other bits than alone at most lengths."""
    from demo.batching import rowwise_attention

    model = make_tiny_llama()
    rowwise_attention(model)
    lean = LeanDecode.fuse(model)
    assert lean.checked() and lean.group_rows is False
