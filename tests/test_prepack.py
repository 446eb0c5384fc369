"""Prepacked weights (demo.prepack): used only where exact, plain weights freed, stock modules back on unpack.

Most tests run the packing logic on a stand-in kernel (the `plain_kernel` fixture), so they run on any CPU;
the ones marked `onednn` run oneDNN's own bf16 kernels and need a CPU that has them (AVX-512 or AVX-NE-CONVERT).
"""
import copy

import pytest
import torch
import torch.nn.functional as F

import demo.prepack as prepack
from demo.batching import BatchedDecoder
from demo.loader import model_bytes
from tests.test_fastdecode import make_tiny_llama


def onednn_packs_bf16() -> bool:
    try:
        torch.ops.mkldnn._reorder_linear_weight(torch.ones(8, 8, dtype=torch.bfloat16), 1)
        return True
    except (RuntimeError, AttributeError):
        return False


onednn = pytest.mark.skipif(not onednn_packs_bf16(), reason="this CPU has no oneDNN bf16 kernels")


def tiny_pair(seed=0):
    """(model to pack, its untouched copy), bf16."""
    model = make_tiny_llama(seed).to(torch.bfloat16)
    return model, copy.deepcopy(model)


def projections(model):
    for layer in model.model.layers:
        a, mlp = layer.self_attn, layer.mlp
        yield from (a.q_proj, a.k_proj, a.v_proj, a.o_proj, mlp.gate_proj, mlp.up_proj, mlp.down_proj)


def check_packed_model_matches_stock(model, stock, head=1):
    decoder = BatchedDecoder(model)
    assert decoder.packed == 2 * 4 + head  # per layer qkv, o, gate_up, down; and an untied head
    assert decoder.lean is not None  # the lean step is still checked equal to forward()
    assert all(p.weight.is_meta for p in projections(model))  # the plain weights are freed
    assert model_bytes(model) == model_bytes(stock)  # and the model reports the same weight bytes
    ids = torch.randint(0, 300, (2, 17), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        assert torch.equal(model(ids).logits, stock(ids).logits)
        assert torch.equal(model.generate(ids, max_new_tokens=8, do_sample=False),
                           stock.generate(ids, max_new_tokens=8, do_sample=False))
    return decoder


def test_a_packed_model_gives_the_stock_logits_and_greedy_tokens(plain_kernel):
    check_packed_model_matches_stock(*tiny_pair())
    assert plain_kernel, "the packed kernel served the forward passes"


@onednn
def test_onednn_packed_bf16_is_bitwise_the_stock_model():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)  # the default model's layer shapes (its head is tied too), two layers, a small vocabulary
    config = LlamaConfig(vocab_size=300, hidden_size=576, intermediate_size=1536, num_hidden_layers=2,
                         num_attention_heads=9, num_key_value_heads=3, attn_implementation="sdpa",
                         tie_word_embeddings=True)
    model = LlamaForCausalLM(config).eval().to(torch.bfloat16)
    check_packed_model_matches_stock(model, copy.deepcopy(model), head=0)


def test_q_k_v_share_one_fused_product_per_input(plain_kernel):
    model, stock = tiny_pair()
    BatchedDecoder(model)
    attention, plain = model.model.layers[0].self_attn, stock.model.layers[0].self_attn
    x, y = torch.randn(2, 3, 64, dtype=torch.bfloat16), torch.randn(2, 3, 64, dtype=torch.bfloat16)
    plain_kernel.clear()
    with torch.inference_mode():
        q, k, v = attention.q_proj(x), attention.k_proj(x), attention.v_proj(x)
        assert len(plain_kernel) == 1  # one fused product, sliced three ways
        for got, proj in ((q, plain.q_proj), (k, plain.k_proj), (v, plain.v_proj)):
            assert torch.equal(got, proj(x))
        # another input in between: the stash is not reused for it
        assert torch.equal(attention.q_proj(x), plain.q_proj(x))
        assert torch.equal(attention.k_proj(y), plain.k_proj(y))
        assert torch.equal(attention.v_proj(x), plain.v_proj(x))


def test_unpack_gives_back_the_exact_weights_and_stock_forward(plain_kernel):
    model, stock = tiny_pair()
    decoder = BatchedDecoder(model)
    assert decoder.packed
    decoder.restore_stock()
    assert decoder.packing.groups == [] and decoder.packed == 0
    for (name, got), want in zip(model.named_parameters(), stock.parameters()):
        assert torch.equal(got, want), name
    for proj in projections(model):
        assert "forward" not in proj.__dict__ and decoder.packing.group_of(proj) is None
    attention = model.model.layers[1].self_attn  # q, k, v are views of one fused matrix again
    assert attention.q_proj.weight.untyped_storage().data_ptr() == attention.v_proj.weight.untyped_storage().data_ptr()
    ids = torch.randint(0, 300, (1, 9))
    with torch.inference_mode():
        assert torch.equal(model(ids).logits, stock(ids).logits)


def test_a_kernel_that_rounds_differently_is_not_used(plain_kernel, monkeypatch):
    def off_by_rounding(x, packed, bias):  # exact for batches, rounds a single row otherwise
        out = F.linear(x, packed, bias)
        return out * (1 + 2**-7) if x.shape[0] * x.shape[1] == 1 else out

    monkeypatch.setattr(prepack, "_linear", off_by_rounding)
    model, stock = tiny_pair()
    assert BatchedDecoder(model).packed == 0
    assert not any(p.weight.is_meta for p in projections(model))


def test_a_cpu_without_the_kernels_keeps_plain_weights(monkeypatch):
    def missing(weight):
        raise RuntimeError("mkldnn_reorder_linear_weight: bf16 path needs the cpu support avx_ne_convert")

    monkeypatch.setattr(prepack, "_reorder", missing)
    model, stock = tiny_pair()
    decoder = BatchedDecoder(model)
    assert decoder.packed == 0 and decoder.lean is not None
    ids = torch.randint(0, 300, (1, 9))
    with torch.inference_mode():
        assert torch.equal(model(ids).logits, stock(ids).logits)


def test_a_plan_without_prepacking_packs_nothing(plain_kernel):
    model, _ = tiny_pair()
    assert BatchedDecoder(model, prepack=False).packed == 0 and not plain_kernel


def test_a_float32_plan_packs_within_rounding_and_a_tied_head_too(plain_kernel, monkeypatch):
    """Packed float32 products differ from F.linear by rounding on a CPU without bf16 kernels: a float32 plan
    that is not exact packs them where they stay within rounding, and its tied head, whose one row costs half."""
    from transformers import LlamaConfig, LlamaForCausalLM

    def rounds_apart(x, packed, bias):
        return F.linear(x, packed, bias) * (1 + 2**-23)

    monkeypatch.setattr(prepack, "_linear", rounds_apart)
    config = LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    model = LlamaForCausalLM(config).eval()
    assert BatchedDecoder(model, exact_packing=True).packed == 0
    model = LlamaForCausalLM(config).eval()
    assert BatchedDecoder(model, exact_packing=False).packed == 2 * 4 + 1
    assert not model.model.embed_tokens.weight.is_meta  # the embedding keeps its plain weight


def test_a_tied_output_head_stays_plain(plain_kernel):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    model = LlamaForCausalLM(config).eval().to(torch.bfloat16)
    assert BatchedDecoder(model).packed == 2 * 4
    assert model.lm_head.weight is model.model.embed_tokens.weight and not model.lm_head.weight.is_meta


def test_the_default_model_packs_where_the_cpu_can(smollm):
    packed, plan = smollm.decoder.packed, smollm.plan
    if plan.weights_dtype == "float32" and not plan.exact:
        assert packed == 30 * 4 + 1  # 30 layers and the tied output head, packed in float32 within rounding
    elif plan.kernel == "hub bf16":
        assert packed == 30 * 4 + 1  # the hub's bf16 kernel (demo/bf16kernel.py) takes the tied head as it is
    elif onednn_packs_bf16():
        assert packed == 30 * 4  # 30 layers; the output head is tied to the embedding
    else:
        assert packed == 0
    assert smollm.decoder.lean is not None and plan.prepacked == packed


def test_each_packed_kernel_gets_its_own_row_probe(plain_kernel, monkeypatch):
    import demo.batching as batching

    probed = []
    monkeypatch.setattr(batching, "_agreeing_rows", lambda linear, max_batch: probed.append(linear) or max_batch)
    packing = BatchedDecoder(tiny_pair()[0]).packing
    kernels = {(m.in_features, m.out_features, packing.group_of(m).shape) for m in probed if packing.group_of(m)}
    assert (64, 64, (128, 64)) in kernels  # q_proj: its rows of the fused q/k/v product
    assert (64, 64, (64, 64)) in kernels  # o_proj: same in/out as q_proj, but a kernel of its own
