"""The hub's bf16 matrix product for CPUs without bf16 kernels (AVX2): built from demo/kernels/bf16_linear.c.

On such a CPU PyTorch's bf16 `F.linear` widens every weight to float32 again for every row, so a decode step
of 4 rows costs about 4 single rows, and batching users saves nothing (docs/decoding.md). This kernel widens
each block of weights once and uses it for up to 4 rows, reading the bf16 weights (half of float32's bytes)
once per step: on the default model, 30 layers of 4 rows take 30 ms instead of 73, one row 16 ms instead of
19. Its sums run in another order than PyTorch's, so products are within rounding of `F.linear`, not
bitwise; a row gets the same bits in any batch as alone. An exact decode plan does not use it.

It is compiled once per source and compiler flags with the system's C compiler (about a second) into
`.cache/kernels/` of the checkout and loaded with ctypes. Its OpenMP loop runs on PyTorch's own OpenMP
runtime (the process loads one `libgomp.so.1`) with PyTorch's thread count, passed in at each call. Where
there is no compiler, no AVX2/FMA, or the build fails, `unavailable()` says why and the decode plan keeps
PyTorch's kernels.
"""
from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

SOURCE = Path(__file__).parent / "kernels" / "bf16_linear.c"
FLAGS = ["-O3", "-mavx2", "-mfma", "-fopenmp", "-shared", "-fPIC"]
CACHE = Path(__file__).resolve().parent.parent / ".cache" / "kernels"
_REQUIRED_CPU = ("avx2", "fma")

_lock = threading.Lock()
_library: ctypes.CDLL | None = None
_why_not: str | None = None


def unavailable(cpu_flags: set[str] | None = None) -> str:
    """Why the kernel cannot run here ("" where it can); builds and loads it on the first call."""
    if cpu_flags is not None and not all(flag in cpu_flags for flag in _REQUIRED_CPU):
        return "the CPU lacks AVX2/FMA"
    with _lock:
        if _library is None and _why_not is None:
            _load()
    return _why_not or ""


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`F.linear(x, weight, bias)` for bf16 tensors on the CPU, within rounding of it (see the module doc)."""
    if x.dtype != torch.bfloat16 or x.device.type != "cpu" or _library is None:
        return F.linear(x, weight, bias)
    out_features, in_features = weight.shape
    x = x.contiguous()
    rows = x.numel() // in_features
    y = torch.empty(*x.shape[:-1], out_features, dtype=torch.bfloat16)
    status = _library.hub_bf16_linear(x.data_ptr(), weight.data_ptr(), bias.data_ptr() if bias is not None else None,
                                      y.data_ptr(), rows, out_features, in_features, torch.get_num_threads())
    if status:
        raise RuntimeError(f"bf16 kernel failed (status {status}) for a {tuple(weight.shape)} weight")
    return y


def supports(weight: torch.Tensor) -> bool:
    """Whether `weight` (an nn.Linear's [out, in]) can run through the kernel as it is."""
    return (weight.dtype == torch.bfloat16 and weight.device.type == "cpu" and weight.dim() == 2
            and weight.is_contiguous() and weight.shape[1] % 16 == 0)


# -- building -------------------------------------------------------------------------------------------
def _load() -> None:
    global _library, _why_not
    try:
        path = _build()
        library = ctypes.CDLL(str(path))
    except (OSError, RuntimeError, subprocess.SubprocessError) as error:
        _why_not = f"the bf16 kernel did not build: {str(error).splitlines()[0] if str(error) else type(error).__name__}"
        log.info("%s; bf16 products run on PyTorch's kernels", _why_not)
        return
    function = library.hub_bf16_linear
    function.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_int] * 4
    function.restype = ctypes.c_int
    _library = library


def _build() -> Path:
    """The compiled library for this source and these flags, built now where it is not yet."""
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not compiler:
        raise RuntimeError("no C compiler (cc or gcc) on PATH")
    key = hashlib.sha256(SOURCE.read_bytes() + " ".join([compiler, *FLAGS]).encode()).hexdigest()[:16]
    target = CACHE / f"bf16_linear-{key}.so"
    if target.exists():
        return target
    CACHE.mkdir(parents=True, exist_ok=True)
    # built under a temporary name, then renamed: processes starting at once never load a half-written file
    with tempfile.TemporaryDirectory(dir=CACHE) as folder:
        built = Path(folder) / target.name
        result = subprocess.run([compiler, *FLAGS, str(SOURCE), "-o", str(built)], capture_output=True, text=True,
                                timeout=120)
        if result.returncode != 0:
            raise RuntimeError(f"{compiler} failed: {result.stderr.strip()[:300]}")
        os.replace(built, target)
    return target
