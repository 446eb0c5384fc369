"""The lean decode step: bitwise forward()'s logits, a check that can say no, and no weight held twice;
folded attention heads: the same bits for a row in any batch, stock values to within rounding."""
import torch

import demo.fastdecode as fastdecode
from demo.fastdecode import LeanDecode


def make_tiny_llama(seed=0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, attn_implementation="sdpa")
    return LlamaForCausalLM(config).eval()


def tiny_lean(dtype=torch.float32, exact=False) -> LeanDecode:
    """The lean step (not yet checked) of a tiny Llama with the loop's row-wise attention."""
    from demo.batching import rowwise_attention

    model = make_tiny_llama().to(dtype)
    rowwise_attention(model)
    return LeanDecode.fuse(model, exact)


def test_the_default_model_decodes_through_the_checked_lean_step(smollm):
    lean = smollm.decoder.lean
    assert lean is not None and lean.matches_forward(steps=4)


def test_the_check_refuses_a_step_that_rounds_differently(smollm, monkeypatch):
    lean = smollm.decoder.lean

    def norm_in_another_order(norm, hidden):  # the same formula, rounded once less
        x, weight, eps = hidden.to(torch.float32), norm.weight, norm.variance_epsilon
        return (weight.to(torch.float32) * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)).to(hidden.dtype)

    monkeypatch.setattr(fastdecode, "_norm", norm_in_another_order)
    grouped = lean.group_rows
    assert not lean.matches_forward() and not lean.checked()
    assert lean.group_rows == grouped  # a failed check leaves the shared loop's step as it was


def test_fused_projections_are_views_not_copies(smollm):
    lean = smollm.decoder.lean
    layer, fused = smollm.model.model.layers[0], lean.layers[0]
    packing = smollm.decoder.packing
    if packing:  # this CPU packs for oneDNN: one packed matrix, every plain weight freed
        attention = layer.self_attn
        assert packing.group_of(attention.q_proj) is packing.group_of(attention.v_proj) is packing.group_of(fused["qkv"])
        assert all(m.weight.is_meta for m in (attention.q_proj, layer.mlp.up_proj, fused["qkv"], fused["gate_up"]))
        return
    qkv, gate_up = fused["qkv"].weight, fused["gate_up"].weight
    for proj, weight in ((layer.self_attn.q_proj, qkv), (layer.self_attn.v_proj, qkv), (layer.mlp.up_proj, gate_up)):
        assert proj.weight.untyped_storage().data_ptr() == weight.untyped_storage().data_ptr()
    assert torch.equal(torch.cat([layer.mlp.gate_proj.weight, layer.mlp.up_proj.weight]), gate_up)


def test_a_tiny_llama_is_checked_equal_and_a_hooked_one_keeps_forward():
    from demo.batching import rowwise_attention

    lean = tiny_lean()
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
    lean = tiny_lean(torch.bfloat16)
    assert lean.checked() and lean.group_rows is True
    real = fastdecode._sdpa

    def batch_variant(attention, q, keys, values, fold=False):  # a kernel whose result depends on its batch
        out = real(attention, q, keys, values, fold)
        return out * 1.01 if q.shape[0] > 1 else out

    monkeypatch.setattr(fastdecode, "_sdpa", batch_variant)
    assert not lean.rows_attend_alone_in_a_group() and not lean.heads_fold_soundly(grouped=True)
    # each row alone: folded and stock calls are both one row's, so folding is judged on those
    assert lean.checked() and lean.group_rows is False and lean.fold_heads is True
    monkeypatch.setattr(lean, "rows_attend_alone_in_a_group", lambda: True)  # the probe misses it: the check does not
    assert lean.checked() and lean.group_rows is False


def test_fp32_attention_runs_rows_alone_and_folds_within_rounding():
    """This CPU's fp32 kernel gives a row in a batch other bits than alone at most lengths, folded or not; a
    row that attends alone has the same call in any batch, so its heads fold where values stay within
    rounding of stock attention."""
    lean = tiny_lean()
    assert not lean.heads_fold_soundly(grouped=True)
    assert lean.checked() and lean.group_rows is False and lean.fold_heads is True


def test_folded_heads_give_a_row_its_bits_alone_and_stock_values_within_rounding(smollm):
    """On the default model's head shapes: rows of mixed lengths, left-padded as the loop pads them."""
    lean = smollm.decoder.lean
    assert lean.fold_heads and lean.heads_fold_soundly(lean.group_rows)
    attention = smollm.model.model.layers[0].self_attn
    generator = torch.Generator().manual_seed(3)
    lengths, width = [150, 150, 77, 150, 9], 150
    q = torch.randn(len(lengths), 9, 1, 64, generator=generator).to(torch.bfloat16)
    keys, values = (torch.randn(len(lengths), 3, width, 64, generator=generator).to(torch.bfloat16)
                    for _ in range(2))
    folded = fastdecode._rowwise_sdpa(attention, q, keys, values, lengths, fold=True)
    stock = fastdecode._rowwise_sdpa(attention, q, keys, values, lengths, group_rows=False)
    for b, n in enumerate(lengths):
        row = fastdecode._sdpa(attention, q[b:b + 1], keys[b:b + 1, :, width - n:], values[b:b + 1, :, width - n:],
                               fold=True)
        assert torch.equal(folded[b:b + 1], row)
    assert fastdecode.within_rounding(folded, stock)
    assert not fastdecode.within_rounding(folded[:, :, [1, 0, *range(2, 9)]], stock)  # a head out of place


def test_the_folded_step_stays_within_rounding_of_forward(smollm):
    """Logits of the real default model, folded against forward()'s, over a few steps of one prompt."""
    from transformers import DynamicCache

    lean, model = smollm.decoder.lean, smollm.model
    assert lean.fold_heads
    prompt = torch.tensor([smollm.tokenizer.encode("The capital of France is")])
    caches = [DynamicCache(config=model.config) for _ in range(2)]
    with torch.inference_mode():
        for cache in caches:
            model(input_ids=prompt, past_key_values=cache, use_cache=True, logits_to_keep=1)
        token = torch.tensor([[smollm.tokenizer.encode(" Paris")[0]]])
        for step in range(3):
            length = prompt.shape[1] + step
            expected = model(input_ids=token, position_ids=torch.tensor([[length]]), past_key_values=caches[0],
                             use_cache=True, row_lengths=[length + 1]).logits[:, -1, :]
            got = lean.step(token, torch.tensor([[length]]), caches[1], [length + 1])
            gap = (got.float() - expected.float()).abs().max() / expected.float().abs().max()
            assert gap < 0.02 and got.argmax() == expected.argmax()
            token = expected.argmax(dim=-1, keepdim=True)


def test_a_fold_that_maps_heads_wrongly_is_refused(monkeypatch):
    lean = tiny_lean(torch.bfloat16)
    assert lean.checked() and lean.fold_heads is True
    real = fastdecode._sdpa

    def heads_swapped(attention, q, keys, values, fold=False):  # query head h on key/value head h % kv heads
        if not fold:
            return real(attention, q, keys, values)
        rows, heads, _, dim = q.shape
        interleaved = q.view(rows, attention.num_key_value_groups, -1, 1, dim).transpose(1, 2).reshape(q.shape)
        return real(attention, interleaved, keys, values, fold=True)

    monkeypatch.setattr(fastdecode, "_sdpa", heads_swapped)
    assert lean.checked() and lean.fold_heads is False


def test_an_exact_plan_keeps_every_step_bitwise_stock():
    lean = tiny_lean(torch.bfloat16, exact=True)
    assert lean.checked() and lean.heads_fold_soundly()
    assert lean.fold_heads is False and lean.pair_rows is False


def kernel_with_a_one_row_path(linear, one_row_shift=1e-2, per_row_count=0.0):
    """Fake BLAS: a one-row call rounds otherwise than a multi-row call (as oneDNN's bf16 down_proj here);
    with `per_row_count`, a multi-row call also depends on how many rows it has."""
    import torch.nn.functional as F

    def forward(x):
        rows = x.shape[0]
        return F.linear(x, linear.weight) + (one_row_shift if rows == 1 else per_row_count * rows)

    linear.forward = forward
    return linear


def test_a_linear_whose_one_row_kernel_differs_runs_row_by_row_and_pairs_rows_where_sound():
    from demo.batching import row_consistent_linears, split_shapes

    sound, mixed, far = torch.nn.Linear(16, 8), torch.nn.Linear(16, 4), torch.nn.Linear(16, 2)
    model = torch.nn.Sequential(kernel_with_a_one_row_path(sound, one_row_shift=1e-7),
                                kernel_with_a_one_row_path(mixed, one_row_shift=1e-7, per_row_count=1e-7),
                                kernel_with_a_one_row_path(far))  # far: 1e-2 off, no rounding difference
    plans = row_consistent_linears(model, max_batch=4)
    assert split_shapes(plans, 4) == {(16, 8): 1, (16, 4): 1, (16, 2): 1}
    assert plans[sound].paired is True and plans[mixed].paired is False and plans[far].paired is False
    x = torch.randn(4, 1, 16)
    alone = torch.cat([sound.forward(x[i:i + 1]) for i in range(4)])  # the chunked forward: rows one by one
    assert torch.equal(sound(x), alone)
    whole = plans[sound].whole
    assert torch.equal(whole(x)[2:3], whole(x[[2, 0]])[:1])  # whole: any batch of 2+


def test_the_lean_step_gives_a_row_in_a_batch_the_logits_it_gets_alone(smollm):
    """Folded heads, grouped attention and down_proj run whole: a row's logits are the same bits in a batch
    of 4 as alone, on the real default model."""
    from transformers import DynamicCache

    lean, model = smollm.decoder.lean, smollm.model
    assert lean.fold_heads and lean.pair_rows
    down = smollm.plan.linears[model.model.layers[0].mlp.down_proj]  # where this CPU's kernel needs it, run whole
    assert down.rows == smollm.decoder.max_batch or down.paired
    generator = torch.Generator().manual_seed(5)
    prompts = torch.randint(0, model.config.vocab_size, (4, 12), generator=generator)
    tokens = torch.randint(0, model.config.vocab_size, (4, 1), generator=generator)

    def decode(rows):
        cache = DynamicCache(config=model.config)
        with torch.inference_mode():
            model(input_ids=prompts[rows], past_key_values=cache, use_cache=True, logits_to_keep=1)
            return [lean.step(tokens[rows], torch.full((len(rows), 1), 12 + s), cache, [13 + s] * len(rows))
                    for s in range(2)]

    together = decode([0, 1, 2, 3])
    for row in range(4):
        alone = decode([row])
        assert all(torch.equal(t[row:row + 1], a) for t, a in zip(together, alone))
