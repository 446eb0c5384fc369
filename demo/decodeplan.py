"""The decode plan of a local transformers model: chosen once at load, then frozen.

What a model's decoding runs is decided here and nowhere else: from the registry's `decode:` settings,
the environment overrides below (read only here, when a model loads), the CPU's instruction set, and what
the load-time probes of demo/batching.py and demo/fastdecode.py find on the model. The result is a frozen
`DecodePlan` that the Models tab, `list --json`, `/metrics` and the bench show.

Why the compute dtype depends on the CPU: without AVX-512 (or AVX-NE-CONVERT, AMX) the CPU has no bf16
matmul kernels, and PyTorch's fallback costs about as many times one row as the call has rows. A prefill of
65 tokens then takes about 3x float32's time, and a batch of 4 decode rows nearly 4 single steps
(docs/decoding.md has the measurements). So on such a CPU the plan prefills with a float32 copy of the
weights and decodes in the model's dtype; `compute: float32` holds everything in float32, where a multi-row
decode step costs less than twice one row, with oneDNN-packed float32 weights (demo/prepack.py).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Mapping

import torch

from . import bf16kernel
from .registry import DecodeSettings

# The environment overrides of the decode settings: the only place they are read (README, "Settings").
ENVIRONMENT = {
    "HUB_BATCHED_DECODE": ("batched", "0: generate() serves every model, one request at a time"),
    "HUB_LEAN_DECODE": ("lean", "0: every decode step through model(...)"),
    "HUB_PREPACK": ("prepack", "0: no oneDNN-packed weights"),
    "HUB_BF16_KERNEL": ("bf16_kernel", "0: bf16 steps on PyTorch's kernels only"),
    "HUB_EXACT_DECODE": ("exact", "1: every step bitwise generate()'s with the model's own dtype"),
    "HUB_DECODE_COMPUTE": ("compute", "auto | model | float32"),
}
_FLAGS = ("batched", "lean", "prepack", "bf16_kernel", "exact")


def with_environment(settings: DecodeSettings, environ: Mapping[str, str] = os.environ) -> DecodeSettings:
    """`settings` with every HUB_* decode variable that is set on top (a bad value is an error naming it)."""
    update = {}
    for variable, (key, meaning) in ENVIRONMENT.items():
        value = environ.get(variable)
        if value is None or value == "":
            continue
        if key in _FLAGS:
            if value not in ("0", "1"):
                raise ValueError(f"{variable}={value!r}: expected 0 or 1 ({meaning})")
            update[key] = value == "1"
        else:
            update[key] = value
    return DecodeSettings.model_validate({**settings.model_dump(), **update})


# -- the CPU --------------------------------------------------------------------------------------------
def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_isa(flags: set[str] | None = None) -> str:
    """The vector ISA PyTorch's CPU kernels use (AVX2, AVX512 ...), with bf16/AMX where the CPU has them."""
    flags = cpu_flags() if flags is None else flags
    isa = torch.backends.cpu.get_cpu_capability()
    extras = [name for flag, name in (("avx512_bf16", "BF16"), ("amx_bf16", "AMX"), ("avx_ne_convert", "NE-CONVERT"))
              if flag in flags]
    return "+".join([isa, *extras])


def fast_bf16(isa: str) -> bool:
    """Whether oneDNN has bf16 matmul kernels here (AVX-512 or AVX-NE-CONVERT): then bf16 batches are cheap."""
    return "AVX512" in isa or "NE-CONVERT" in isa or "AMX" in isa


# -- the plan -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LinearPlan:
    """How one Linear of the decode step runs (demo/batching.py probes it, demo/fastdecode.py reads it).

    rows: the most rows one call may take and still give each row the bits it gets alone (the loop's
    batch size where every count agrees); paired: from two rows on a row gets the same bits in any batch,
    so the lean step runs the Linear whole, a single row as two (not exact: not the one-row kernel's bits);
    whole: the unchunked forward, for that."""

    rows: int
    paired: bool = False
    whole: object = field(default=None, repr=False, compare=False)


@dataclass(frozen=True)
class DecodePlan:
    isa: str
    loop: bool  # a batched decode loop serves the model; else generate() on a worker thread
    weights_dtype: str  # what the weights are held in
    prefill_dtype: str
    decode_dtype: str
    exact: bool  # every step bitwise generate()'s with the loaded dtype
    lean: bool = False  # the checked lean step (demo/fastdecode.py)
    prepacked: int = 0  # matrices packed for `kernel` (demo/prepack.py)
    kernel: str = "oneDNN"  # what the packed matrices run on (demo.prepack.KERNELS)
    kernel_note: str = ""  # why the hub's bf16 kernel is not used where the plan would use it
    group_rows: bool = False  # rows of one length share an attention call
    fold_heads: bool = False  # grouped query heads attend as one kernel item
    pair_rows: bool = False  # Linears with a one-row kernel of their own run whole, a row as two
    reason: str = ""  # why there is no loop, when there is none
    rows: int = 8  # the most requests one step of the loop serves
    prefill_together: bool = False  # waiting prompts prefilled in one call (a batch job's plan)
    linears: Mapping = field(default_factory=lambda: MappingProxyType({}), repr=False, compare=False)

    def summary(self) -> str:
        """One line for the Models tab, `list --json` and the bench."""
        if not self.loop:
            return f"generate() in {self.decode_dtype}" + (f" ({self.reason})" if self.reason else "") + f"; {self.isa}"
        parts = [f"loop in {self.decode_dtype} ({self.rows} rows)", f"prefill {self.prefill_dtype}"]
        parts += [name for name, on in (("lean", self.lean), ("exact", self.exact), ("grouped rows", self.group_rows),
                                        ("folded heads", self.fold_heads), ("paired rows", self.pair_rows),
                                        ("prompts prefilled together", self.prefill_together)) if on]
        if self.prepacked:
            parts.append(f"{self.prepacked} packed" + (f" on the {self.kernel} kernel" if self.kernel != "oneDNN" else ""))
        if self.kernel_note:
            parts.append(self.kernel_note)
        return ", ".join(parts) + f"; {self.isa}"

    def as_dict(self) -> dict:
        return {"isa": self.isa, "loop": self.loop, "weights_dtype": self.weights_dtype,
                "prefill_dtype": self.prefill_dtype, "decode_dtype": self.decode_dtype, "exact": self.exact,
                "lean": self.lean, "prepacked": self.prepacked, "group_rows": self.group_rows,
                "fold_heads": self.fold_heads, "pair_rows": self.pair_rows, "reason": self.reason, "rows": self.rows,
                "kernel": self.kernel,
                "prefill_together": self.prefill_together,
                "summary": self.summary()}


def dtype_name(dtype) -> str:
    return str(dtype).replace("torch.", "")


def compute_dtypes(settings: DecodeSettings, model_dtype: torch.dtype, device: str, isa: str,
                   weight_bytes: int) -> tuple[torch.dtype, torch.dtype]:
    """(prefill dtype, decode dtype): what the weights are held and computed in for each.

    `auto`, for a bf16/fp16 model on a CPU without fast bf16 kernels: prefill in float32 (a float32 copy of
    the weights, about 3.7x faster for a 65-token prompt here), decode in the model's dtype (one row costs
    less in bf16, whose weights are half the bytes; float32 decode steps measured 1.9x a bf16 step at one
    row here). Unless the float32 copy would take more than a quarter of this machine's memory: a large
    model keeps its dtype for both. `float32`: both in float32 (4 rows cost 1.4x one row, against 2.1x in
    bf16, but one row twice bf16's)."""
    if settings.exact or settings.compute == "model" or device != "cpu":
        return model_dtype, model_dtype
    if settings.compute == "float32":
        return torch.float32, torch.float32
    if model_dtype not in (torch.bfloat16, torch.float16) or fast_bf16(isa):
        return model_dtype, model_dtype
    float32_bytes = weight_bytes * 4 // model_dtype.itemsize
    return (torch.float32 if float32_bytes <= machine_memory_bytes() // 4 else model_dtype), model_dtype


def packing_kernel(settings: DecodeSettings, decode_dtype: torch.dtype, device: str, isa: str) -> tuple[str, str]:
    """(what the lean step's projections are packed for, why not the hub's bf16 kernel where it would serve).

    A bf16 decode on a CPU without bf16 kernels runs its projections on the hub's own kernel
    (demo/bf16kernel.py): there PyTorch's bf16 product costs about as many single rows as it has rows, the
    hub's about 2.4x one row at 4 rows. Its products are within rounding of PyTorch's, so an exact plan
    keeps PyTorch's."""
    if (device != "cpu" or decode_dtype != torch.bfloat16 or fast_bf16(isa) or not settings.bf16_kernel
            or not settings.lean or settings.exact):
        return "oneDNN", ""
    reason = bf16kernel.unavailable(cpu_flags())
    return ("oneDNN", reason) if reason else ("hub bf16", "")


def for_throughput(settings: DecodeSettings, rows: int, isa: str | None = None) -> DecodeSettings:
    """The settings of a job that decodes many requests at once (`batch`): a loop of `rows` rows, and the
    prompts that wait at a step prefilled in one call. On a CPU without fast bf16 kernels, bf16 steps run on
    the hub's bf16 kernel, where 16 rows cost about 5x one row; where that kernel cannot serve, `auto` becomes
    float32 throughout, since PyTorch's bf16 step costs about as many single steps as it has rows, while a
    float32 step of 16 rows costs about 3x one row (docs/decoding.md). An interactive hub keeps prompts
    prefilled alone, for first tokens bitwise a lone prefill's."""
    isa = cpu_isa() if isa is None else isa
    update: dict = {"rows": max(settings.rows, rows), "prefill_together": True}
    slow_bf16 = not fast_bf16(isa) and packing_kernel(settings, torch.bfloat16, "cpu", isa)[0] != "hub bf16"
    if settings.compute == "auto" and slow_bf16:
        update["compute"] = "float32"
    return settings.model_copy(update=update)


def machine_memory_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 8 * 2**30
