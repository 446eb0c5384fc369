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
    base_id: str | None = None  # a LoRA/PEFT entry or a preset: the entry whose weights it shares
    preset: bool = False  # a preset: the base's model itself, with other defaults and system prompt
    system_prompt: str | None = None  # the registry's, for conversations that bring no system message
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
    # The engine serving this model (a demo.stream.Backend: demo/backends); whoever loads the model sets it.
    engine_backend: object = field(default=None, repr=False)

    @property
    def backend(self):
        if self.engine_backend is None:
            raise RuntimeError(f"{self.id} has no engine: it was made without weights (prompts only)")
        return self.engine_backend

    @property
    def engine(self) -> str:
        return self.backend.name

    @property
    def decode_plan(self) -> str:
        return self.backend.decode_plan

    @property
    def memory_bytes(self) -> int:
        if self.preset:  # the base counts the weights
            return 0
        return self.backend.memory_bytes()

    def weights_bytes(self) -> int:
        """The bytes of `model` in this process, with what its decode loop adds (e.g. a float32 prefill copy)."""
        own = getattr(self.model, "own_bytes", None)  # a LoRA view counts only its adapter's weights
        extra = self.decoder.extra_bytes() if self.decoder is not None else 0
        return (own() if own else model_bytes(self.model)) + extra

    @property
    def quant_format(self) -> str:
        """none | gptq | awq | bnb-4bit | bnb-8bit | gguf: what the Models tab shows as the format."""
        return self.quant.method

    @property
    def quant_label(self) -> str:
        """The weights' format in words (the Models tab's format column)."""
        return self.quant.label

    @property
    def device(self):
        return next(self.model.parameters()).device
