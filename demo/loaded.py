"""LoadedModel: a model as the hub holds it once loaded (a leaf: the loader fills it, everyone reads it)."""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from adapters import ChatAdapter
from adapters.quant import NONE_SPEC, QuantSpec

from .limits import Gate
from .memory import model_bytes
from .params import GenerationParams
from .registry import Limits

if TYPE_CHECKING:
    from .batching import BatchedDecoder
    from .decodeplan import DecodePlan


@dataclass
class LoadedModel:
    id: str
    model: object
    tokenizer: object
    adapter: ChatAdapter
    defaults: GenerationParams
    context_length: int | None
    extra_stop_ids: list[int] = field(default_factory=list)
    load_seconds: float = 0.0
    quant: QuantSpec = NONE_SPEC  # format on disk and in memory (adapters/quant.py)
    bits: int | None = None  # bits per weight of the (quantized) linear layers in memory
    base_id: str | None = None  # a LoRA/PEFT entry: the entry whose weights it shares
    # One generation at a time per model unless an engine batches them.
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    # The hub's limits and admission for this model (the manager sets them from the registry).
    limits: Limits = field(default_factory=Limits, repr=False)
    gate: Gate = field(default_factory=Gate, repr=False)
    remote = False  # a RemoteModel (demo/remote.py) streams from an OpenAI-compatible server instead
    # How this model decodes, decided once at load (demo/decodeplan.py); None: no weights here.
    plan: "DecodePlan | None" = field(default=None, repr=False)
    # The batched decode loop (demo/batching.py) when the plan has one; None: generate() serves.
    decoder: "BatchedDecoder | None" = field(default=None, repr=False)

    @property
    def memory_bytes(self) -> int:
        own = getattr(self.model, "own_bytes", None)  # a LoRA view counts only its adapter's weights
        extra = self.decoder.extra_bytes() if self.decoder is not None else 0  # e.g. a float32 prefill copy
        return (own() if own else model_bytes(self.model)) + extra

    @property
    def quant_format(self) -> str:
        """none | gptq | awq | bnb-4bit | bnb-8bit | gguf: what the Models tab shows as the format."""
        return self.quant.method

    @property
    def device(self):
        return next(self.model.parameters()).device
