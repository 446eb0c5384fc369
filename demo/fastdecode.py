"""A lean decode step for Llama-shaped models, used by the batched loop instead of `model(...)`.

One decode step of a 135M model on 2 CPU cores spends about a quarter of its time outside the matrix
products: Python glue in every module call, output dataclasses, masks, hooks, and three small
projections where one would do. This step runs the same torch operations in the same order, with
q/k/v and gate/up each fused into one matrix product, so its logits are bitwise those of
`model(...)`. That is not assumed: `LeanDecode.checked` runs a few steps both ways on the model and
keeps the lean step only when every logit is equal; otherwise the loop keeps `model(...)`.

The fused weights are the originals concatenated, and the original projections become views into
them, so no weight is held twice. Where the CPU has the kernels, `prepack` then hands every projection
to oneDNN's packed layout (demo.prepack), again only where the products stay bitwise equal.

Two parts are not bitwise `model(...)` by default: attention with folded query heads (see `_sdpa`), and
a Linear whose one-row kernel rounds otherwise than its multi-row kernel run as at least two rows (see
`_project`). Each gives a row exactly what it gets alone, in any batch, and stock values to within
rounding. An exact decode plan (demo/decodeplan.py) turns both off, and replies are then bitwise those of
`generate`.
"""
from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from transformers.models.llama.modeling_llama import rotate_half  # the same function in every family here

from .rounding import within_rounding

log = logging.getLogger(__name__)

MODEL_TYPES = ("llama", "qwen2")  # decoder layers of exactly the shape this step computes
PROBE_LENGTHS = [*range(1, 65), 100, 129, 257, 513, 1025]


class LeanDecode:
    def __init__(self, model, layers: list[dict], exact: bool = False):
        self.model, self.layers, self.exact = model, layers, exact  # exact: every step bitwise forward()'s
        self.inner = model.model
        self.linear_plans = {}  # Linear -> LinearPlan (demo.decodeplan), from the loop's row probe
        self.group_rows = True  # rows of one length share one attention call (see _rowwise_sdpa)
        self.fold_heads = False  # query heads of one key/value head attend as one (see _sdpa); set by checked()
        self.pair_rows = False  # Linears with a row-by-row one-row kernel run whole (see _project); set by checked()

    # -- building and checking -------------------------------------------------------------------
    @classmethod
    def fuse(cls, model, exact: bool = False) -> "LeanDecode | None":
        """The lean step for `model` (not yet checked), or None where the model's shape rules it out."""
        return cls(model, [_fuse(layer) for layer in model.model.layers], exact) if _eligible(model) else None

    def prepack(self, packing) -> int:
        """Pack every projection of the step for oneDNN into `packing` (a demo.prepack.Packing); returns
        how many were packed.

        Packing happens before the row-consistency probe and the check, so both see the packed products.
        A tied output head stays plain where packing it would hold the embedding a second time."""
        pack, groups = packing.pack, []
        for fused, layer in zip(self.layers, self.inner.layers):
            a, mlp = layer.self_attn, layer.mlp
            groups += [pack([a.q_proj, a.k_proj, a.v_proj], fused["qkv"]), pack([a.o_proj]),
                       pack([mlp.gate_proj, mlp.up_proj], fused["gate_up"]), pack([mlp.down_proj])]
        head = self.model.lm_head
        if head.weight.data_ptr() != self.inner.embed_tokens.weight.data_ptr() or packing.packs_tied_head:
            groups.append(pack([head]))
        return sum(g is not None for g in groups)

    def linears(self) -> list[torch.nn.Linear]:
        """The fused projections, for the loop's row-consistency probe (demo.batching)."""
        return [fused[name] for fused in self.layers for name in ("qkv", "gate_up")]

    def checked(self) -> bool:
        """Whether the step gives forward()'s logits bit for bit; the loop uses it only then.

        Rows of one length share an attention call only where `rows_attend_alone_in_a_group` finds that
        exact; the check's two-row batches (of one length) then test that too, and should they differ,
        the step runs every row's attention alone, as forward() does, and is checked again. The check
        runs with unfolded heads and row-by-row Linears, as forward() computes; unless the plan is exact,
        those two are then turned on, folding only where `heads_fold_soundly` finds it sound."""
        before = self.group_rows, self.fold_heads, self.pair_rows
        try:
            for self.group_rows in ((True, False) if self.rows_attend_alone_in_a_group() else (False,)):
                if self.matches_forward():
                    self.fold_heads = not self.exact and self.heads_fold_soundly(self.group_rows)
                    self.pair_rows = not self.exact
                    return True
            log.info("lean decode differs from forward() for %s; keeping forward()", type(self.model).__name__)
        except Exception:
            log.exception("lean decode check failed; keeping forward()")
        self.group_rows, self.fold_heads, self.pair_rows = before  # a failed check leaves the step as it was
        return False

    def _probe_inputs(self, rows: int, length: int, generator: torch.Generator):
        """Random q [rows, heads, 1, dim] and keys, values [rows, kv heads, length, dim] of this model."""
        attention = self.layers[0]["attention"]
        weight = self.inner.embed_tokens.weight
        kv_heads = self.model.config.num_key_value_heads
        heads, head_dim = kv_heads * attention.num_key_value_groups, attention.head_dim
        return (torch.randn(rows, n, size, head_dim, generator=generator).to(weight.device, weight.dtype)
                for n, size in ((heads, 1), (kv_heads, length), (kv_heads, length)))

    @torch.inference_mode()
    def rows_attend_alone_in_a_group(self) -> bool:
        """Whether one attention call over rows of one length gives each row exactly what it gets alone,
        on this model's head shapes and dtype, at every length to 64 and a few beyond. bf16 does here; the
        CPU's fp32 kernel does not, at most lengths."""
        attention = self.layers[0]["attention"]
        generator = torch.Generator().manual_seed(0)
        for length in PROBE_LENGTHS:
            for rows in (2, 4):
                q, keys, values = self._probe_inputs(rows, length, generator)
                alone = torch.cat([_sdpa(attention, q[b:b + 1], keys[b:b + 1], values[b:b + 1])
                                   for b in range(rows)])
                if not torch.equal(_sdpa(attention, q, keys, values), alone):
                    return False
        return True

    @torch.inference_mode()
    def heads_fold_soundly(self, grouped: bool = True) -> bool:
        """Whether attention with folded heads (`_sdpa`) is, on this model's shapes and dtype, (1) the same
        bits for a row in a batch as alone, and (2) stock attention's values to within rounding. Here bf16
        passes, differing from stock in about 3 of 100,000 outputs by one bf16 step; fp32 fails (1). Rows
        that attend alone (not `grouped`) need only (2): each row's call is then the one it gets alone. A
        model without grouped key/value heads has nothing to fold."""
        attention = self.layers[0]["attention"]
        if attention.num_key_value_groups == 1:
            return False
        generator = torch.Generator().manual_seed(1)
        for length in PROBE_LENGTHS:
            for rows in (2, 4):
                q, keys, values = self._probe_inputs(rows, length, generator)
                alone = torch.cat([_sdpa(attention, q[b:b + 1], keys[b:b + 1], values[b:b + 1], fold=True)
                                   for b in range(rows)])
                if grouped and not torch.equal(_sdpa(attention, q, keys, values, fold=True), alone):
                    return False
                stock = (_sdpa(attention, q, keys, values) if grouped else
                         torch.cat([_sdpa(attention, q[b:b + 1], keys[b:b + 1], values[b:b + 1]) for b in range(rows)]))
                if not within_rounding(alone, stock, terms=q.shape[-1] + length):
                    return False
        return True

    @torch.inference_mode()
    def matches_forward(self, steps: int = 2) -> bool:
        """Decode a few steps from the same prompt both ways, one row and two, and compare every logit.
        The step runs as in exact mode (unfolded heads, row-by-row Linears), as forward() computes."""
        saved = self.fold_heads, self.pair_rows
        self.fold_heads = self.pair_rows = False
        try:
            return self._matches_forward(steps)
        finally:
            self.fold_heads, self.pair_rows = saved

    def _matches_forward(self, steps: int) -> bool:
        from transformers import DynamicCache

        generator = torch.Generator().manual_seed(0)
        device = self.inner.embed_tokens.weight.device
        vocab = self.model.config.vocab_size
        for rows in (1, 2):
            prompt = torch.randint(0, vocab, (rows, 7), generator=generator).to(device)
            caches = []
            for _ in range(2):
                cache = DynamicCache(config=self.model.config)
                self.model(input_ids=prompt, past_key_values=cache, use_cache=True, logits_to_keep=1)
                caches.append(cache)
            tokens = torch.randint(0, vocab, (rows, 1), generator=generator).to(device)
            for step in range(steps):
                positions = torch.full((rows, 1), 7 + step, device=device)
                lengths = [8 + step] * rows
                expected = self.model(input_ids=tokens, position_ids=positions, past_key_values=caches[0],
                                      use_cache=True, row_lengths=lengths).logits[:, -1, :]
                got = self.step(tokens, positions, caches[1], lengths)
                if not torch.equal(expected, got):
                    return False
                tokens = expected.argmax(dim=-1, keepdim=True)
        return True

    # -- the step ------------------------------------------------------------------------------------
    def step(self, tokens: torch.Tensor, positions: torch.Tensor, cache, row_lengths: list[int]) -> torch.Tensor:
        """Logits [rows, vocab] of the next token of each row; appends each row's key/value to `cache`."""
        hidden = self.inner.embed_tokens(tokens)
        cos, sin = self.inner.rotary_emb(hidden, positions)
        cos, sin = cos.unsqueeze(2), sin.unsqueeze(2)  # [rows, 1, 1, head_dim]: over the heads of q and k
        for fused, cache_layer in zip(self.layers, cache.layers):
            hidden = self._layer(hidden, fused, cache_layer, cos, sin, row_lengths)
        hidden = _norm(self.inner.norm, hidden)
        head, last = self.model.lm_head, hidden[:, -1:, :]
        # the head through its module call where it runs plain, so forward hooks on it (a logits probe) see it
        return (head(last) if self._plain(head) else self._project(head, last))[:, -1, :]

    def _layer(self, hidden, fused, cache_layer, cos, sin, row_lengths):
        attention, rows, head_dim = fused["attention"], hidden.shape[0], fused["head_dim"]
        x = _norm(fused["norm_in"], hidden)
        qk, v = self._project(fused["qkv"], x).split(fused["qk_v_sizes"], dim=-1)
        # q and k rotated in one go: the same elementwise products and sums, on fewer, larger tensors
        qk = qk.view(rows, 1, -1, head_dim)
        qk = qk * cos + rotate_half(qk) * sin
        q, k = qk.transpose(1, 2).split(fused["q_k_heads"], dim=1)
        v = v.view(rows, 1, -1, head_dim).transpose(1, 2)
        cache_layer.keys = torch.cat([cache_layer.keys, k], dim=-2)
        cache_layer.values = torch.cat([cache_layer.values, v], dim=-2)
        out = _rowwise_sdpa(attention, q, cache_layer.keys, cache_layer.values, row_lengths, self.group_rows,
                            self.fold_heads)
        hidden = hidden + self._project(fused["o"], out.reshape(rows, 1, -1).contiguous())
        x = _norm(fused["norm_post"], hidden)
        gate, up = self._project(fused["gate_up"], x).split(fused["mlp_sizes"], dim=-1)
        return hidden + self._project(fused["down"], fused["act"](gate) * up)

    def _project(self, linear, x):
        """`linear(x)`. A Linear the loop runs row by row (its one-row kernel rounds otherwise than its
        multi-row one, demo.batching) runs whole instead where a row's bits do not depend on the others
        from two rows on, and a single row runs as two: 4 rows of the default model's down_proj take 32 us
        instead of 181, and one row the same 32 us as before."""
        if self._plain(linear):
            return linear.forward(x)
        whole = self.linear_plans[linear].whole
        return whole(x) if x.shape[0] > 1 else whole(torch.cat([x, x]))[:1]

    def _plain(self, linear) -> bool:
        plan = self.linear_plans.get(linear)
        return plan is None or plan.whole is None or not self.pair_rows or not plan.paired


def _rowwise_sdpa(attention, q, keys, values, row_lengths, group_rows=True, fold=False):
    """SDPA of each row over its own real keys only, as the loop's row-wise attention (demo.batching).

    Neighbouring rows of one length (requests admitted together with prompts of one length) go through
    one call: the CPU kernel computes every (row, head) on its own, so each row gets what it gets alone
    (`LeanDecode.rows_attend_alone_in_a_group` confirms it on the model). Rows of other lengths would
    need padding, which changes the kernel's sums, so they run alone."""
    width = keys.shape[2]
    runs = _runs_of_equal_length(row_lengths) if group_rows else [(b, b + 1) for b in range(len(row_lengths))]
    if len(runs) == 1 and row_lengths[0] == width:
        return _sdpa(attention, q, keys, values, fold)
    return torch.cat([_sdpa(attention, q[a:b], keys[a:b, :, width - row_lengths[a]:],
                            values[a:b, :, width - row_lengths[a]:], fold) for a, b in runs], dim=0)


def _runs_of_equal_length(row_lengths: list[int]) -> list[tuple[int, int]]:
    """[start, end) of each maximal run of neighbouring rows with the same length."""
    runs, start = [], 0
    for b in range(1, len(row_lengths) + 1):
        if b == len(row_lengths) or row_lengths[b] != row_lengths[start]:
            runs.append((start, b))
            start = b
    return runs


def _sdpa(attention, q, keys, values, fold=False):
    """transformers' `sdpa_attention_forward` for one query token and no mask, without its general-case
    Python: one call of the same kernel with the same arguments, and its output layout.

    With `fold`, the query heads that share a key/value head go in as that head's query rows: q [rows,
    heads, 1, dim] becomes [rows, kv heads, groups, dim], a free view, as transformers maps query head h
    to key/value head h // groups. The CPU kernel's cost follows its number of (row, head) items, hardly
    their size, so this is 4-5 times faster on the default model (9 heads, 3 key/value heads). The kernel
    then multiplies 3 query rows at once instead of 1, which now and then rounds differently."""
    groups = attention.num_key_value_groups
    if fold and groups > 1 and q.shape[2] == 1:
        rows, heads, _, dim = q.shape
        out = F.scaled_dot_product_attention(q.reshape(rows, keys.shape[1], groups, dim), keys, values,
                                             attn_mask=None, dropout_p=0.0, scale=attention.scaling)
        return out.reshape(rows, 1, heads, dim)
    if groups > 1 and keys.shape[-1] > 256:  # transformers packs these heads differently: use its code
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(attention, q, keys, values, None, dropout=0.0, scaling=attention.scaling)[0]
    out = F.scaled_dot_product_attention(q, keys, values, attn_mask=None, dropout_p=0.0, scale=attention.scaling,
                                         is_causal=False, **({"enable_gqa": True} if groups > 1 else {}))
    return out.transpose(1, 2).contiguous()


# -- the model's pieces -----------------------------------------------------------------------------
def _eligible(model) -> bool:
    config = model.config
    if getattr(config, "model_type", None) not in MODEL_TYPES or getattr(config, "pretraining_tp", 1) != 1:
        return False
    inner = getattr(model, "model", None)
    if inner is None or not hasattr(inner, "layers") or type(getattr(model, "lm_head", None)) is not torch.nn.Linear:
        return False
    for module in model.modules():  # hooks (accelerate offload, adapters) would be skipped by the lean step
        if module._forward_hooks or module._forward_pre_hooks or hasattr(module, "_hf_hook"):
            return False
    for layer in inner.layers:
        a, mlp = layer.self_attn, layer.mlp
        if any(type(p) is not torch.nn.Linear for p in (a.q_proj, a.k_proj, a.v_proj, a.o_proj, mlp.gate_proj,
                                                         mlp.up_proj, mlp.down_proj)):
            return False
    return True


def _fuse(layer) -> dict:
    a, mlp = layer.self_attn, layer.mlp
    q, k, v = a.q_proj.out_features, a.k_proj.out_features, a.v_proj.out_features
    # Modules are called through .forward: no hooks are set (see _eligible), and the row-consistency
    # probe of the loop may have replaced a forward with a chunked one.
    return {"attention": a, "o": a.o_proj, "down": mlp.down_proj, "head_dim": a.head_dim, "act": mlp.act_fn,
            "norm_in": layer.input_layernorm, "norm_post": layer.post_attention_layernorm,
            "qkv": _fused_linear([a.q_proj, a.k_proj, a.v_proj]), "qk_v_sizes": [q + k, v],
            "q_k_heads": [q // a.head_dim, k // a.head_dim],
            "gate_up": _fused_linear([mlp.gate_proj, mlp.up_proj]),
            "mlp_sizes": [mlp.gate_proj.out_features, mlp.up_proj.out_features]}


def _fused_linear(linears: list[torch.nn.Linear]) -> torch.nn.Linear:
    """One Linear whose output is the given Linears' outputs side by side; they become views into it."""
    weight = torch.cat([l.weight.data for l in linears])
    has_bias = linears[0].bias is not None
    fused = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=has_bias, device="meta")
    fused.weight = torch.nn.Parameter(weight, requires_grad=False)
    bias = torch.cat([l.bias.data for l in linears]) if has_bias else None
    if has_bias:
        fused.bias = torch.nn.Parameter(bias, requires_grad=False)
    start = 0
    for l in linears:
        end = start + l.out_features
        l.weight.data = weight[start:end]
        if has_bias:
            l.bias.data = bias[start:end]
        start = end
    return fused


def _norm(norm, hidden: torch.Tensor) -> torch.Tensor:
    """The model's own RMSNorm, called as forward() calls it (no hooks are set, see _eligible)."""
    return norm.forward(hidden)
