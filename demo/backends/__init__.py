"""The engines behind registry entries, and which one an entry runs on.

`engine: auto` (the default) runs a GGUF entry on llama.cpp when `llama_cpp` imports, else on
transformers; a remote entry runs on `openai`. Each engine implements demo.stream.Backend:
transformers (demo/backends/transformers.py, in this process), llama.cpp (demo/backends/llamacpp.py,
the GGUF kept quantized) and openai (demo/remote.py, an OpenAI-compatible server).
"""
from __future__ import annotations

import functools
import logging

from ..stream import LLAMA_CPP, OPENAI, TRANSFORMERS

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=1)
def llama_cpp_status() -> tuple[bool, str]:
    """(True, version) when llama-cpp-python imports; else (False, why), said once in the log."""
    try:
        import llama_cpp
    except Exception as e:  # not installed, or a build whose shared library does not load
        reason = f"llama-cpp-python is not usable ({type(e).__name__}: {e}); GGUF entries run on transformers"
        log.info(reason)
        return False, reason
    return True, getattr(llama_cpp, "__version__", "")


def is_gguf(entry) -> bool:
    source = entry.source
    return bool(source and source.file and source.file.lower().endswith(".gguf"))


def choose_engine(entry) -> str:
    """The engine an entry runs on: its `engine:` key, with `auto` decided here."""
    engine = entry.engine_name
    if engine != "auto":
        return engine
    if is_gguf(entry) and llama_cpp_status()[0]:
        return LLAMA_CPP
    return TRANSFORMERS


__all__ = ["LLAMA_CPP", "OPENAI", "TRANSFORMERS", "choose_engine", "is_gguf", "llama_cpp_status"]
