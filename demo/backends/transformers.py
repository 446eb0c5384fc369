"""The transformers engine: the model in this process, served by its batched decode loop or generate()."""
from __future__ import annotations

from typing import Iterator

from ..engine import BATCHED_DECODE, stream_transformers
from ..stream import TRANSFORMERS, CancelToken, Capabilities, Chunk, Prompt

BATCHABLE_FORMATS = ("none", "gguf")  # demo.engine.batcher_for: other formats' kernels keep generate()


class TransformersBackend:
    """A view of one LoadedModel whose `model` is a transformers model (made per call: it holds nothing)."""

    name = TRANSFORMERS

    def __init__(self, loaded):
        self.loaded = loaded

    @property
    def capabilities(self) -> Capabilities:
        batching = BATCHED_DECODE and self.loaded.quant_format in BATCHABLE_FORMATS and self.loaded.batcher is not False
        return Capabilities(batching=batching, exact_prompt_ids=True, logits_processors=True)

    @property
    def decode_plan(self) -> str:
        batcher = self.loaded.batcher
        if not batcher:
            return "generate(), one request at a time"
        return "batched loop" + (", lean step" if getattr(batcher, "lean", None) is not None else "")

    def memory_bytes(self) -> int:
        from ..loader import model_bytes

        model = self.loaded.model
        own = getattr(model, "own_bytes", None)  # a LoRA view counts only its adapter's weights
        return own() if own else model_bytes(model)

    def unload(self) -> None:
        close = getattr(self.loaded.batcher, "close", None)
        if close is not None:
            close(wait_s=0.5)

    def stream(self, prompt: Prompt, params, cancel: CancelToken, stall_timeout_s: float = 120.0,
               timeout_s: float | None = None) -> Iterator[Chunk]:
        return stream_transformers(self.loaded, prompt, params, cancel, stall_timeout_s, timeout_s)
