"""Quantized checkpoints: which format a model is in, whether its backend is here, how transformers loads it.

One path for every format. The folder's own `quantization_config` (GPTQ, AWQ, pre-quantized bitsandbytes)
or a GGUF file decides; the registry can ask for bitsandbytes 4/8-bit quantization at load of a
full-precision folder. A backend that is not installed is named in one line with the pip command.
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from .errors import AdapterError

# gptqmodel sizes its CPU thread pool to half the cores, but its model loader asks for 2 workers: on a
# 2-core machine that fails ("requests 2 workers but parent 'cpu' only has 1"). Give it at least 2.
os.environ.setdefault("GPTQMODEL_CPU_WORKERS", str(max(2, ((os.cpu_count() or 1) + 1) // 2)))

NONE, GPTQ, AWQ, BNB4, BNB8, GGUF = "none", "gptq", "awq", "bnb-4bit", "bnb-8bit", "gguf"

#: format -> [(import name, pip requirement)] that loading it needs (CPU working set, see requirements.txt)
BACKENDS: dict[str, list[tuple[str, str]]] = {
    GPTQ: [("gptqmodel", "gptqmodel==7.6.0"), ("optimum", "optimum==2.3.0")],
    AWQ: [("gptqmodel", "gptqmodel==7.6.0")],
    BNB4: [("bitsandbytes", "bitsandbytes==0.50.2")],
    BNB8: [("bitsandbytes", "bitsandbytes==0.50.2")],
    GGUF: [("gguf", "gguf>=0.17")],
}
LABELS = {GPTQ: "GPTQ", AWQ: "AWQ", BNB4: "bitsandbytes", BNB8: "bitsandbytes", GGUF: "GGUF"}


class QuantError(AdapterError):
    """A quantized checkpoint this hub cannot load; the message says why and what to do instead."""


class MissingBackend(QuantError, ImportError):
    """The package that runs this format is not installed."""


@dataclass(frozen=True)
class QuantSpec:
    """How a checkpoint's weights are stored and held in memory."""

    method: str = NONE
    bits: int | None = None  # bits per weight held in memory (None: the load dtype's)
    detail: str = ""  # e.g. "gptq_v2, desc_act", "nf4", "Q4_1 file, dequantized at load"
    options: dict = field(default_factory=dict, compare=False)  # bnb options from the registry

    @property
    def label(self) -> str:
        if self.method == NONE:
            return "full precision"
        bits = f" {self.bits}-bit" if self.bits and self.method != GGUF else ""
        return f"{LABELS[self.method]}{bits}" + (f" ({self.detail})" if self.detail else "")

    @property
    def prequantized(self) -> bool:
        """Whether transformers builds quantized layers from the folder's own quantization_config."""
        return self.method in (GPTQ, AWQ) or (self.method in (BNB4, BNB8) and not self.options)


# -- backends ---------------------------------------------------------------------------------
def backend_installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def require_backend(spec: QuantSpec) -> None:
    """Raise MissingBackend, in one line naming the package, when this format cannot be loaded here."""
    for module, requirement in BACKENDS.get(spec.method, []):
        if not backend_installed(module):
            raise MissingBackend(f"loading this {LABELS[spec.method]} checkpoint needs the package {module!r}: "
                                 f"pip install torch==2.13.0 {requirement}")


# -- detection ----------------------------------------------------------------------------------
def detect(folder: Path | None, gguf_file: str | None, requested=None) -> QuantSpec:
    """The format of a checkpoint: a GGUF file, the folder's quantization_config, or the registry's request."""
    if gguf_file:
        if requested is not None:
            raise QuantError("a GGUF file is already quantized; remove `quantization:` from this entry")
        return QuantSpec(GGUF, None, f"{gguf_type(gguf_file)} file, dequantized at load")
    config = read_config(folder)
    refuse_unsupported(config)
    stored = config.get("quantization_config")
    if stored:
        if requested is not None:
            raise QuantError(f"this folder is already quantized ({stored.get('quant_method')}); "
                             "remove `quantization:` from this entry")
        return from_quantization_config(stored)
    if requested is None:
        return NONE_SPEC
    options = {k: v for k, v in requested.model_dump().items() if k != "method" and v is not None}
    detail = options.get("quant_type", "nf4") if requested.method == BNB4 else "int8"
    return QuantSpec(requested.method, 4 if requested.method == BNB4 else 8, f"{detail}, quantized at load",
                     {"method": requested.method, **options})


NONE_SPEC = QuantSpec()


def from_quantization_config(stored: dict) -> QuantSpec:
    method = str(stored.get("quant_method", "")).lower()
    bits = stored.get("bits")
    if method == "gptq":
        if bits not in (2, 3, 4, 8):
            raise QuantError(f"GPTQ with {bits} bits is not supported (2, 3, 4 or 8)")
        layout = stored.get("checkpoint_format") or stored.get("format") or "gptq"
        return QuantSpec(GPTQ, bits, layout + (", desc_act" if stored.get("desc_act") else ""))
    if method == "awq":
        version = str(stored.get("version") or stored.get("format") or "gemm").lower()
        if version not in ("gemm", "gemv", "gemv_fast"):
            raise QuantError(f"AWQ version {version!r} is not supported (gemm, gemv or gemv_fast)")
        return QuantSpec(AWQ, bits or 4, version)
    if method == "bitsandbytes":
        if stored.get("load_in_4bit"):
            return QuantSpec(BNB4, 4, stored.get("bnb_4bit_quant_type", "fp4"))
        return QuantSpec(BNB8, 8, "int8")
    raise QuantError(f"quantization method {method!r} is not supported here (GPTQ, AWQ, bitsandbytes, GGUF)")


def refuse_unsupported(config: dict) -> None:
    """Quantized variants that exist only as remote code, refused with the way that works instead."""
    model_type = config.get("model_type")
    if model_type == "chatglm" and config.get("quantization_bit"):
        raise QuantError(
            f"ChatGLM's own int{config['quantization_bit']} format is built by its remote code, which this hub "
            "does not run; load the full-precision chatglm3-6b with `quantization: {method: bnb-4bit}` instead")
    stored = config.get("quantization_config") or {}
    if model_type == "baichuan" and stored.get("quant_method") == "bitsandbytes":
        raise QuantError(
            "Baichuan2 *-4bits folders store bitsandbytes weights of the fused W_pack projection, which the "
            "native port cannot split; load the full-precision Baichuan2 folder with "
            "`quantization: {method: bnb-4bit}` instead (the same nf4 quantization, done at load)")


def gguf_type(file: str) -> str:
    """The quantization type written in a GGUF file name by convention (Q4_K_M, Q8_0, F16 ...)."""
    found = re.findall(r"(?i)(?:^|[.\-_])((?:I?Q\d(?:_[A-Z0-9]+)*)|BF16|F16|F32)(?=\.gguf$|[.\-])", file)
    return found[-1].upper() if found else "GGUF"


def read_config(folder: Path | None) -> dict:
    """config.json as a dict; {} when absent or unreadable (the model load then reports that file)."""
    try:
        data = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8")) if folder else {}
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


# -- loading ----------------------------------------------------------------------------------
def model_kwargs(spec: QuantSpec, dtype, device: str) -> dict:
    """from_pretrained keyword arguments for this format; quantized models are placed by device_map."""
    require_backend(spec)
    if spec.method in (NONE, GGUF):
        return {"dtype": dtype}
    kwargs = {"dtype": dtype, "device_map": device}
    if spec.method in (BNB4, BNB8) and spec.options:
        kwargs["quantization_config"] = bnb_config(spec, dtype)
    return kwargs


def bnb_config(spec: QuantSpec, dtype):
    from transformers import BitsAndBytesConfig

    if spec.method == BNB8:
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=spec.options.get("quant_type", "nf4"),
                              bnb_4bit_use_double_quant=spec.options.get("double_quant", False),
                              bnb_4bit_compute_dtype=dtype)


def place(model, spec: QuantSpec, device: str):
    """Move a loaded model to its device; quantized layers were placed at load and refuse `.to`."""
    if spec.method in (NONE, GGUF):
        model = model.to(device)
    return model.eval()


def held_bits(spec: QuantSpec, dtype) -> int:
    """Bits per weight of the quantized layers in memory (the load dtype's for full precision and GGUF)."""
    import torch

    return spec.bits if spec.bits and spec.method != GGUF else torch.finfo(dtype).bits


# -- native conversions on packed tensors ---------------------------------------------------------
GPTQ_PACKED_BY_OUTPUT = ("qweight", "scales", "qzeros")  # qzeros: 32/bits outputs per int32 column


def split_fused(part: str, tensor, pieces: int = 3) -> tuple:
    """Split one tensor of a fused [q | k | v] linear into equal pieces, plain or GPTQ-packed.

    weight [out, in] and bias [out] split along the output rows. GPTQ's qweight [in/8, out] and scales
    [groups, out] split along their output columns, qzeros [groups, out/8] along its packed columns
    (each piece keeps whole int32 words), and g_idx (one group index per input row) is shared.
    """
    if part == "g_idx":
        return tuple(tensor.clone() for _ in range(pieces))  # copies: a safetensors file holds no aliases
    dim = -1 if part in GPTQ_PACKED_BY_OUTPUT else 0
    if tensor.shape[dim] % pieces:
        raise QuantError(f"cannot split a fused {part} of shape {tuple(tensor.shape)} into {pieces} equal parts")
    return tuple(t.contiguous() for t in tensor.chunk(pieces, dim=dim))


def drop_zero_bias(part: str, tensor, name: str) -> bool:
    """AutoGPTQ saved an all-zero bias on quantized linears that have none (Qwen *-Int4): drop those.

    A non-zero one has no place in the native model, so it is an error rather than silently lost.
    """
    if part != "bias":
        return False
    if tensor.any():
        raise QuantError(f"{name} is a non-zero bias on a layer that the native model has without one")
    return True


def native_quantization_config(config: dict) -> dict | None:
    """The upstream quantization_config for the converted folder; GPTQ keeps its checkpoint format (v1
    unless it says otherwise), so the zero-point convention of the packed tensors is kept."""
    stored = config.get("quantization_config")
    if not stored:
        return None
    stored = dict(stored)
    if str(stored.get("quant_method")).lower() == "gptq":
        stored["checkpoint_format"] = stored.get("checkpoint_format") or stored.get("format") or "gptq"
    return stored
