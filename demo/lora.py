"""LoRA/PEFT entries: an adapter folder on top of another entry's loaded model, sharing its weights.

The adapter is injected into the base model once (transformers' PEFT integration); each entry then sees
the model through a view that switches the active adapter, or turns adapters off for the base, right
before it generates. Both entries share one lock, so the switch and the generation never interleave.
"""
from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

from .backends.transformers import on_transformers
from .loaded import LoadedModel
from .memory import model_bytes
from .registry import ModelEntry


class AdapterMissing(FileNotFoundError):
    def __str__(self) -> str:
        return str(self.args[0])


class AdapterView:
    """The shared base model as one entry sees it: `adapter_name` active, or None for the bare base."""

    def __init__(self, model, adapter_name: str | None):
        self.model, self.adapter_name = model, adapter_name

    def activate(self) -> None:
        if self.adapter_name is None:
            self.model.disable_adapters()
        else:
            self.model.set_adapter(self.adapter_name)
            self.model.enable_adapters()

    def generate(self, *args, **kwargs):
        self.activate()
        return self.model.generate(*args, **kwargs)

    def __call__(self, *args, **kwargs):
        self.activate()
        return self.model(*args, **kwargs)

    def own_bytes(self) -> int:
        """Memory this entry adds: its adapter's weights only (the base counts the shared ones)."""
        if self.adapter_name is None:  # the shared weights, without the adapters injected into them
            return model_bytes(self.model) - sum(p.nbytes for name, p in self.model.named_parameters()
                                                 if ".lora_" in name)
        marker = f".{self.adapter_name}."
        return sum(p.nbytes for name, p in self.model.named_parameters() if marker in f"{name}.")

    def __getattr__(self, name):  # config, device, parameters(), dtype ... of the shared model
        return getattr(self.model, name)


def adapter_name(entry_id: str) -> str:
    return entry_id.replace(".", "_")  # module names cannot hold dots


def attach_adapter(entry: ModelEntry, base: LoadedModel) -> LoadedModel:
    """Inject `entry.adapter` into `base`'s model (once) and return the entry's view of it."""
    started = time.perf_counter()
    folder = Path(entry.adapter).expanduser()
    if not (folder / "adapter_config.json").is_file():
        raise AdapterMissing(f"{folder} is not a PEFT adapter folder (no adapter_config.json)")
    shared = base.model if isinstance(base.model, AdapterView) else AdapterView(base.model, None)
    name = adapter_name(entry.id)
    # The base's batched loop does not take base.lock: retire it (its batch finishes first), so the base
    # and its adapters all generate through generate() under the one lock they share.
    loop, base.decoder = base.decoder, None
    if loop is not None:
        loop.close(wait_s=600)
        base.plan = replace(base.plan, loop=False, reason="shares its weights with a LoRA entry")
    with base.lock:  # the base may be generating; injecting changes its layers
        if loop is not None:
            loop.restore_stock()  # PEFT wraps stock Linears, so the loop's packed weights go back to plain
        if name not in (getattr(shared.model, "peft_config", None) or {}):
            shared.model.load_adapter(str(folder), adapter_name=name)
        base.model = shared  # from now on the base generates with adapters off
    return on_transformers(LoadedModel(
        id=entry.id, model=AdapterView(shared.model, name), tokenizer=base.tokenizer, adapter=base.adapter,
        defaults=base.defaults.override(entry.generation.model_dump()),  # the base's, then the entry's
        context_length=entry.context_length or base.context_length, extra_stop_ids=base.extra_stop_ids,
        load_seconds=time.perf_counter() - started, quant=base.quant, bits=base.bits, base_id=base.id,
        lock=base.lock, plan=base.plan))
