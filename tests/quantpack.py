"""Hand-packed GPTQ and AWQ checkpoints, and their exact fp32 dequantization (the reference for the kernels).

Layouts (what AutoGPTQ / AutoAWQ write, and what transformers + gptqmodel read):
  GPTQ  qweight int32 [in / (32/bits), out], packed along the input; qzeros int32 [groups, out / (32/bits)]
        packed along the output, storing zero - 1 in the v1 ("gptq") format and zero in "gptq_v2";
        scales fp16 [groups, out]; g_idx int32 [in] (a permutation of groups with desc_act).
  AWQ   qweight int32 [in, out/8] and qzeros int32 [groups, out/8], packed along the output in the nibble
        order [0, 2, 4, 6, 1, 3, 5, 7]; scales fp16 [groups, out]; W = (q - z) * s.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

AWQ_ORDER = [0, 2, 4, 6, 1, 3, 5, 7]
LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def pack_columns(values: torch.Tensor, bits: int, order=None) -> torch.Tensor:
    """Pack an int tensor [rows, cols] along its columns: column per*c + order[i] goes to bits*i."""
    per = 32 // bits
    order = order or list(range(per))
    rows, cols = values.shape
    grouped = values.to(torch.int64).reshape(rows, cols // per, per)
    packed = torch.zeros(rows, cols // per, dtype=torch.int64)
    for slot, column in enumerate(order):
        packed |= (grouped[:, :, column] & (2**bits - 1)) << (bits * slot)
    return to_int32(packed)


def to_int32(packed: torch.Tensor) -> torch.Tensor:
    return torch.where(packed >= 2**31, packed - 2**32, packed).to(torch.int32)


def quantize_groups(weight: torch.Tensor, bits: int, group: int, sym: bool, g_idx: torch.Tensor):
    """Round-to-nearest per (group, output column): (q [in, out], zeros [groups, out], scales fp16 [groups, out])."""
    w = weight.t().float()  # [in, out]
    groups = int(g_idx.max()) + 1
    top = 2**bits - 1
    scales, zeros = torch.empty(groups, w.shape[1]), torch.empty(groups, w.shape[1], dtype=torch.int64)
    for g in range(groups):
        rows = w[g_idx == g]
        if sym:
            scales[g] = rows.abs().amax(0).clamp(min=1e-6) / (top // 2 + 0.5)
            zeros[g] = (top + 1) // 2
        else:
            low, high = rows.amin(0).clamp(max=0), rows.amax(0).clamp(min=0)
            scales[g] = ((high - low) / top).clamp(min=1e-6)
            zeros[g] = torch.round(-low / scales[g]).clamp(0, top).to(torch.int64)
    scales = scales.half()
    q = torch.round(w / scales.float()[g_idx]) + zeros[g_idx]
    return q.clamp(0, top).to(torch.int64), zeros, scales


def dequantize(q, zeros, scales, g_idx) -> torch.Tensor:
    """The exact fp32 weight [out, in] of the quantized values."""
    return ((q - zeros[g_idx]).float() * scales.float()[g_idx]).t().contiguous()


def pack_gptq(weight, bits=4, group=128, desc_act=False, version="gptq", seed=0):
    """GPTQ tensors of one linear layer, and the exact fp32 weight they decode to."""
    in_features = weight.shape[1]
    g_idx = torch.arange(in_features) // group
    if desc_act:  # activation order: groups hold a permutation of the input columns
        g_idx = g_idx[torch.randperm(in_features, generator=torch.Generator().manual_seed(seed))]
    q, zeros, scales = quantize_groups(weight, bits, group, sym=True, g_idx=g_idx)
    stored_zeros = zeros - 1 if version == "gptq" else zeros  # the v1 off-by-one convention
    tensors = {"qweight": pack_columns(q.t().contiguous(), bits).t().contiguous(),
               "qzeros": pack_columns(stored_zeros, bits), "scales": scales, "g_idx": g_idx.to(torch.int32)}
    return tensors, dequantize(q, zeros, scales, g_idx)


def pack_awq(weight, group=128):
    g_idx = torch.arange(weight.shape[1]) // group
    q, zeros, scales = quantize_groups(weight, 4, group, sym=False, g_idx=g_idx)
    tensors = {"qweight": pack_columns(q, 4, AWQ_ORDER), "qzeros": pack_columns(zeros, 4, AWQ_ORDER),
               "scales": scales}
    return tensors, dequantize(q, zeros, scales, g_idx)


# -- reading packed tensors back (for checkpoints the quantize command wrote) -------------------
def unpack_columns(packed: torch.Tensor, bits: int, order=None) -> torch.Tensor:
    per = 32 // bits
    order = order or list(range(per))
    words = packed.to(torch.int64) & 0xFFFFFFFF
    out = torch.empty(packed.shape[0], packed.shape[1] * per, dtype=torch.int64)
    for slot, column in enumerate(order):
        out[:, column::per] = (words >> (bits * slot)) & (2**bits - 1)
    return out


def decode_gptq(t: dict, bits: int, version: str) -> torch.Tensor:
    q = unpack_columns(t["qweight"].t().contiguous(), bits).t()
    zeros = unpack_columns(t["qzeros"], bits) + (1 if version == "gptq" else 0)
    return dequantize(q, zeros, t["scales"], t["g_idx"].long())


def decode_awq(t: dict, group: int) -> torch.Tensor:
    q = unpack_columns(t["qweight"], 4, AWQ_ORDER)
    zeros = unpack_columns(t["qzeros"], 4, AWQ_ORDER)
    return dequantize(q, zeros, t["scales"], torch.arange(q.shape[0]) // group)


def dequantized_reference(folder: Path):
    """A float32 model of a quantized folder: every packed linear decoded exactly, the rest upcast."""
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(folder)
    spec = config.quantization_config
    spec = spec if isinstance(spec, dict) else spec.to_dict()
    del config.quantization_config
    tensors = {}
    for path in sorted(Path(folder).glob("*.safetensors")):
        tensors.update(load_file(path))
    state = {}
    for name, tensor in tensors.items():
        module, _, part = name.rpartition(".")
        if part in ("qzeros", "scales", "g_idx"):
            continue
        if part == "qweight":
            parts = {p: tensors[f"{module}.{p}"] for p in ("qweight", "qzeros", "scales", "g_idx")
                     if f"{module}.{p}" in tensors}
            version = spec.get("checkpoint_format") or spec.get("format") or "gptq"
            state[f"{module}.weight"] = (decode_awq(parts, spec["group_size"]) if spec["quant_method"] == "awq"
                                         else decode_gptq(parts, spec["bits"], version))
        else:
            state[name] = tensor.float()
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and all("lm_head" in m for m in missing), (missing, unexpected)
    model.tie_weights()
    return model.eval()


# -- whole tiny checkpoints -----------------------------------------------------------------
def write_quantized_llama(fp_folder: Path, out: Path, method: str, bits: int = 4, group: int = 128,
                          desc_act: bool = False, version: str = "gptq") -> Path:
    """Pack every decoder linear of the fp folder's Llama by hand (GPTQ or AWQ GEMM) into `out`."""
    from safetensors.torch import load_file, save_file

    out.mkdir(parents=True, exist_ok=True)
    state = {}
    for path in sorted(Path(fp_folder).glob("*.safetensors")):
        state.update(load_file(path))
    packed = {}
    for index, (name, tensor) in enumerate(sorted(state.items())):
        module, _, part = name.rpartition(".")
        if part == "weight" and module.rsplit(".", 1)[-1] in LINEARS:
            parts, _ = (pack_awq(tensor, group) if method == "awq"
                        else pack_gptq(tensor, bits, group, desc_act, version, seed=index))
            packed.update({f"{module}.{k}": v for k, v in parts.items()})
        else:
            packed[name] = tensor.half()
    save_file(packed, str(out / "model.safetensors"), metadata={"format": "pt"})
    config = json.loads((Path(fp_folder) / "config.json").read_text())
    config["dtype"] = "float16"
    config["quantization_config"] = (
        {"quant_method": "awq", "bits": 4, "group_size": group, "version": "gemm", "zero_point": True}
        if method == "awq" else
        {"quant_method": "gptq", "bits": bits, "group_size": group, "desc_act": desc_act, "sym": True,
         "checkpoint_format": version})
    (out / "config.json").write_text(json.dumps(config, indent=2))
    for path in Path(fp_folder).iterdir():
        if path.suffix != ".safetensors" and path.name != "config.json" and path.is_file():
            (out / path.name).write_bytes(path.read_bytes())
    return out
