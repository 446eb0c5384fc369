"""Prepare a loaded transformers model's decoding: choose its plan (demo/decodeplan.py), hold its weights in
the plan's dtype, and build its batched decode loop (demo/batching.py). Runs once, as part of the load."""
from __future__ import annotations

import logging

import torch

from .batching import BatchedDecoder, can_batch
from .decodeplan import DecodePlan, compute_dtype, cpu_isa, dtype_name, with_environment
from .memory import model_bytes, trim_c_heap
from .registry import DecodeSettings

log = logging.getLogger(__name__)

# Formats whose Linears are plain after loading (a GGUF is dequantized): the loop's probes hold for them.
PLAIN_FORMATS = ("none", "gguf")


def prepare(model, quant_format: str, settings: DecodeSettings | None) -> tuple[DecodePlan, BatchedDecoder | None]:
    """The frozen plan of `model` and its decode loop (None where generate() serves)."""
    settings = with_environment(settings or DecodeSettings())
    isa = cpu_isa()
    loaded_dtype = _dtype_of(model)
    device = next(model.parameters()).device.type
    dtype = loaded_dtype
    if quant_format in PLAIN_FORMATS and loaded_dtype is not None:
        dtype = compute_dtype(settings, loaded_dtype, device, isa, model_bytes(model))
    if dtype != loaded_dtype:
        hold_in(model, dtype)
    name = dtype_name(dtype or "")
    plan = DecodePlan(isa=isa, loop=False, weights_dtype=name, prefill_dtype=name, decode_dtype=name,
                      exact=settings.exact)
    reason = _no_loop_reason(model, quant_format, settings)
    if reason:
        return DecodePlan(**{**plan.__dict__, "reason": reason}), None
    try:
        decoder = BatchedDecoder(model, lean=settings.lean, prepack=settings.prepack, exact=settings.exact,
                                 exact_packing=dtype == loaded_dtype)
    except Exception as e:  # a failure here only means the model is served through generate()
        log.exception("preparing the batched decode loop failed; generate() will serve")
        return DecodePlan(**{**plan.__dict__, "reason": f"the loop failed to start: {type(e).__name__}"}), None
    lean = decoder.lean
    return DecodePlan(isa=isa, loop=True, weights_dtype=name, prefill_dtype=name, decode_dtype=name,
                      exact=settings.exact, lean=lean is not None,
                      prepacked=decoder.packed, group_rows=bool(lean and lean.group_rows),
                      fold_heads=bool(lean and lean.fold_heads), pair_rows=bool(lean and lean.pair_rows),
                      linears=decoder.linears), decoder


def _no_loop_reason(model, quant_format: str, settings: DecodeSettings) -> str:
    if not settings.batched:
        return "batched decoding is off"
    # Batched rows are checked equal to single-row decoding for plain Linear layers only; GPTQ/AWQ/
    # bitsandbytes kernels keep generate() and the per-model lock.
    if quant_format not in PLAIN_FORMATS:
        return f"{quant_format} kernels"
    if not can_batch(model):
        return "its cache or attention cannot be batched"
    return ""


def _dtype_of(model) -> torch.dtype | None:
    dtypes = {p.dtype for p in model.parameters() if p.is_floating_point()}
    return dtypes.pop() if len(dtypes) == 1 else None


@torch.no_grad()
def hold_in(model, dtype: torch.dtype) -> None:
    """Convert every floating parameter and buffer of `model` to `dtype` in place (tied ones once). Done
    here rather than with `model.to(dtype)`, which transformers refuses for a GGUF-loaded model."""
    for tensor in [*model.parameters(), *model.buffers()]:
        if tensor.is_floating_point() and tensor.dtype != dtype and tensor.dtype != torch.float32:
            tensor.data = tensor.data.to(dtype)
    model.config.dtype = dtype
    trim_c_heap()  # the bf16 copies just freed go back to the system
