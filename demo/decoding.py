"""Prepare a loaded transformers model's decoding: choose its plan (demo/decodeplan.py), hold its weights in
the plan's dtype, and build its batched decode loop (demo/batching.py). Runs once, as part of the load."""
from __future__ import annotations

import copy
import logging

import torch

from .batching import BatchedDecoder, can_batch
from .decodeplan import DecodePlan, compute_dtypes, cpu_isa, dtype_name, packing_kernel, with_environment
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
    prefill, decode = loaded_dtype, loaded_dtype
    if quant_format in PLAIN_FORMATS and loaded_dtype is not None:
        prefill, decode = compute_dtypes(settings, loaded_dtype, device, isa, model_bytes(model))
    if decode != loaded_dtype:
        hold_in(model, decode)
    reason = _no_loop_reason(model, quant_format, settings)
    if reason:  # generate() prefills with the model's own weights
        name = dtype_name(decode or "")
        return DecodePlan(isa=isa, loop=False, weights_dtype=name, prefill_dtype=name, decode_dtype=name,
                          exact=settings.exact, reason=reason), None
    prefill_model = None
    if prefill != decode:
        prefill_model = copy.deepcopy(model)  # before the loop fuses and packs the decode weights
        hold_in(prefill_model, prefill)
    kernel, kernel_note = packing_kernel(settings, decode, device, isa)
    hub_kernel = kernel != "oneDNN"
    try:
        decoder = BatchedDecoder(model, max_batch=settings.rows, prefill_together=settings.prefill_together,
                                 lean=settings.lean, prepack=settings.prepack or hub_kernel, exact=settings.exact,
                                 exact_packing=decode == loaded_dtype and not hub_kernel,
                                 prefill_model=prefill_model, kernel=kernel)
    except Exception as e:  # a failure here only means the model is served through generate()
        log.exception("preparing the batched decode loop failed; generate() will serve")
        name = dtype_name(decode or "")
        return DecodePlan(isa=isa, loop=False, weights_dtype=name, prefill_dtype=name, decode_dtype=name,
                          exact=settings.exact, reason=f"the loop failed to start: {type(e).__name__}"), None
    lean = decoder.lean
    weights = dtype_name(decode) + (f" + {dtype_name(prefill)} for prefill" if prefill_model is not None else "")
    return DecodePlan(isa=isa, loop=True, weights_dtype=weights, prefill_dtype=dtype_name(prefill),
                      decode_dtype=dtype_name(decode), exact=settings.exact, lean=lean is not None,
                      prepacked=decoder.packed, group_rows=bool(lean and lean.group_rows),
                      fold_heads=bool(lean and lean.fold_heads), pair_rows=bool(lean and lean.pair_rows),
                      rows=settings.rows, prefill_together=settings.prefill_together, kernel=kernel,
                      kernel_note=kernel_note, linears=decoder.linears), decoder


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
