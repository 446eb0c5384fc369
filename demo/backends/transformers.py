"""The transformers engine: the model in this process, served by its batched decode loop or generate()."""
from __future__ import annotations

import weakref
from typing import Iterator

from ..engine import stream_transformers
from ..stream import TRANSFORMERS, CancelToken, Capabilities, Chunk, Prompt


class TransformersBackend:
    """The engine of one LoadedModel whose `model` is a transformers model; its decode plan
    (demo/decodeplan.py) says whether a batched loop serves it. Holds the model weakly, as the model holds it."""

    name = TRANSFORMERS

    def __init__(self, loaded):
        self._loaded = weakref.ref(loaded)

    @property
    def loaded(self):
        loaded = self._loaded()
        if loaded is None:
            raise RuntimeError("the model was unloaded")
        return loaded

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(batching=self.loaded.decoder is not None, exact_prompt_ids=True, logits_processors=True)

    @property
    def decode_plan(self) -> str:
        plan = self.loaded.plan
        return plan.summary() if plan is not None else "generate(), one request at a time"

    def memory_bytes(self) -> int:
        return self.loaded.weights_bytes()

    def unload(self) -> None:
        decoder = self.loaded.decoder
        if decoder is not None:
            decoder.close(wait_s=0.5)

    def stream(self, prompt: Prompt, params, cancel: CancelToken, stall_timeout_s: float = 120.0,
               timeout_s: float | None = None) -> Iterator[Chunk]:
        return stream_transformers(self.loaded, prompt, params, cancel, stall_timeout_s, timeout_s)


def on_transformers(loaded):
    """`loaded` with the transformers engine attached (the loader, LoRA views and tests call this)."""
    loaded.engine_backend = TransformersBackend(loaded)
    return loaded
