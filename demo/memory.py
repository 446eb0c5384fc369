"""Memory helpers: the bytes a model's tensors hold, and giving freed memory back to the system (a leaf)."""
from __future__ import annotations

import ctypes
import gc


def model_bytes(model) -> int:
    tensors = {id(t): t for t in [*model.parameters(), *model.buffers()]}
    return sum(t.nbytes for t in tensors.values())


def free_memory() -> None:
    """Give freed tensors' memory back: collect cycles, empty the CUDA cache, trim the C heap.

    Without the trim, glibc keeps the freed weights of an evicted CPU model in its arenas (its mmap
    threshold grows as large blocks are freed), so the process would not shrink.
    """
    gc.collect()
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    trim_c_heap()


def trim_c_heap() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass
