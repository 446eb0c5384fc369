"""The model manager: load on first use, one shared load per model, LRU eviction under a memory budget."""
from __future__ import annotations

import os
import logging
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from adapters.weights import availability

from .limits import REMOTE_CONCURRENCY, Gate
from .loaded import LoadedModel
from .loader import load_entry
from .memory import free_memory
from .registry import ModelEntry, Registry

log = logging.getLogger(__name__)

# Loads run one at a time in the process: two models built at once on different threads (the Compare tab
# does that) race in the loading machinery (global meta-device / empty-weights patches) and one fails
# with "Cannot copy out of meta tensor". Generation is unaffected and stays concurrent.
_LOAD_LOCK = threading.Lock()

UNAVAILABLE, NOT_LOADED, LOADING, READY, ERROR = "unavailable", "not loaded", "loading", "ready", "error"



class ModelLoadError(RuntimeError):
    """Loading a model failed; the hub and the other models go on."""


@dataclass
class ModelState:
    id: str
    name: str
    status: str
    detail: str = ""  # the unavailability reason, the load error, or the load stage
    memory_bytes: int = 0
    since: float = 0.0  # when the current status began
    quant_format: str = ""  # when loaded: none | gptq | awq | bnb-4bit | bnb-8bit | gguf | remote
    bits: int | None = None  # when loaded: bits per weight of its linear layers in memory
    quant_label: str = ""  # when loaded: e.g. "GPTQ 4-bit (gptq_v2, desc_act)"
    engine: str = ""  # transformers | llama.cpp | openai: the one it runs on (or would, once loaded)
    decode_plan: str = ""  # when loaded: how its engine decodes, in words


class ModelManager:
    def __init__(self, registry: Registry, memory_budget_bytes: int | None = None,
                 loader: Callable[[ModelEntry], LoadedModel] = load_entry):
        self.registry = registry
        self.budget = memory_budget_bytes or int(registry.settings.memory_budget_gb * 2**30)
        self.loader = loader
        self._loaded: OrderedDict[str, LoadedModel] = OrderedDict()  # least recently used first
        self._loading: dict[str, Future] = {}
        self._errors: dict[str, str] = {}
        self._since: dict[str, float] = {}
        self._lock = threading.RLock()

    # -- use ----------------------------------------------------------------------------------
    def get(self, model_id: str) -> LoadedModel:
        """The loaded model, loading it first if needed; concurrent callers share one load."""
        entry = self.registry.get(model_id)
        with self._lock:
            if model_id in self._loaded:
                base = self._loaded[model_id].base_id
                if base in self._loaded:  # its weights are in use: the base is recently used too
                    self._loaded.move_to_end(base)
                self._loaded.move_to_end(model_id)
                return self._loaded[model_id]
            future = self._loading.get(model_id)
            owner = future is None
            if owner:
                future = self._loading[model_id] = Future()
                self._errors.pop(model_id, None)
                self._since[model_id] = time.time()
        if owner:
            self._load(entry, future)
        return future.result()

    def _load(self, entry: ModelEntry, future: Future) -> None:
        log.info("loading %s", entry.id)
        try:
            # A LoRA/PEFT entry goes on top of its base, loaded (or shared) through this manager first:
            # outside the load lock, which the base's own load takes.
            base = self.get(entry.base) if entry.base else None
            with _LOAD_LOCK:
                loaded = self.loader(entry, base) if base is not None else self.loader(entry)
        except Exception as e:  # any failure stays with this model
            message = f"{type(e).__name__}: {e}"
            log.warning("loading %s failed: %s", entry.id, message)
            with self._lock:
                self._errors[entry.id] = message
                self._since[entry.id] = time.time()
                del self._loading[entry.id]
            future.set_exception(ModelLoadError(f"{entry.id}: {message}"))
            return
        self._apply_limits(loaded, entry)
        # Loading leaves large freed buffers (a GGUF's dequantization, checkpoint reads) in the C heap.
        free_memory()
        with self._lock:
            if entry.base and not entry.preset:  # the base's model is now wrapped: presets re-share it
                for preset in self.registry.presets_of(entry.base):
                    self._loaded.pop(preset, None)
            self._loaded[entry.id] = loaded
            self._since[entry.id] = time.time()
            del self._loading[entry.id]
            self._evict_over_budget(keep={entry.id, entry.base})
        future.set_result(loaded)

    def _apply_limits(self, loaded: LoadedModel, entry: ModelEntry) -> None:
        """The registry's limits, and a gate sized for this model, go with it to every caller."""
        limits = self.registry.limits
        concurrency = entry.concurrency or (REMOTE_CONCURRENCY if entry.remote else 1)
        loaded.limits, loaded.gate = limits, Gate(concurrency, limits.queue_size)

    def unload(self, model_id: str) -> bool:
        with self._lock:
            removed = self._pop(model_id)
        if not removed:
            return False
        release(removed)
        removed.clear()
        free_memory()
        return True

    def _pop(self, model_id: str) -> list[LoadedModel]:
        """Remove a model and the LoRA/PEFT entries and presets that share its weights (they would keep them
        alive). A LoRA entry or a preset removed alone leaves its base loaded."""
        loaded = self._loaded.pop(model_id, None)
        self._since[model_id] = time.time()
        if loaded is None:
            return []
        dependents = [mid for mid, m in self._loaded.items() if m.base_id == model_id]
        return [loaded] + [m for mid in dependents for m in self._pop(mid)]

    def _evict_over_budget(self, keep: set) -> None:
        evicted = []
        while self.used_bytes() > self.budget:
            # A preset holds no weights of its own: it goes only with its base.
            victim = next((mid for mid, m in self._loaded.items() if mid not in keep and not m.preset), None)
            if victim is None:
                break
            evicted += self._pop(victim)
            release(evicted)
            log.info("evicted %s to stay under the memory budget", victim)
        if evicted:
            evicted.clear()
            free_memory()

    # -- state --------------------------------------------------------------------------------
    def used_bytes(self) -> int:
        with self._lock:
            return sum(m.memory_bytes for m in self._loaded.values())

    def loaded_models(self) -> list[LoadedModel]:
        with self._lock:
            return list(self._loaded.values())

    def loaded_ids(self) -> list[str]:
        with self._lock:
            return list(self._loaded)

    def state(self, model_id: str) -> ModelState:
        state = self._state(model_id)
        if not state.engine:  # not loaded: the engine it would run on
            from .backends import choose_engine

            state = replace(state, engine=choose_engine(self.registry.get(model_id)))
        return state

    def _state(self, model_id: str) -> ModelState:
        entry = self.registry.get(model_id)
        with self._lock:
            since = self._since.get(model_id, 0.0)
            if model_id in self._loaded:
                loaded = self._loaded[model_id]
                return ModelState(model_id, entry.name, READY, shares_note(entry), loaded.memory_bytes, since,
                                  loaded.quant_format, loaded.bits, loaded.quant_label, loaded.engine,
                                  loaded.decode_plan)
            if model_id in self._loading:
                return ModelState(model_id, entry.name, LOADING, f"loading for {time.time() - since:.0f} s",
                                  0, since)
            error = self._errors.get(model_id)
        if entry.remote:  # a remote whose connection failed shows why; else it is offered
            if error is not None:
                return ModelState(model_id, entry.name, ERROR, error, 0, since)
            return ModelState(model_id, entry.name, *remote_availability(entry), 0, since)
        ok, reason = entry_availability(self.registry, entry)
        if error is not None and ok:  # weights that are simply absent stay "unavailable"
            return ModelState(model_id, entry.name, ERROR, error, 0, since)
        return ModelState(model_id, entry.name, NOT_LOADED if ok else UNAVAILABLE, reason or shares_note(entry),
                          0, since)

    def states(self) -> list[ModelState]:
        return [self.state(e.id) for e in self.registry]


def remote_availability(entry: ModelEntry) -> tuple[str, str]:
    """A remote is offered unless its API key variable is unset; it is reached only when used."""
    if entry.api_key_env and not os.environ.get(entry.api_key_env):
        return UNAVAILABLE, f"remote {entry.base_url}: environment variable {entry.api_key_env} is not set"
    return NOT_LOADED, f"remote: {entry.base_url}"


def shares_note(entry: ModelEntry) -> str:
    return f"preset of {entry.base}: shares its weights" if entry.preset else ""


def entry_availability(registry: Registry, entry: ModelEntry) -> tuple[bool, str]:
    """Whether an entry's weights are here; a LoRA/PEFT entry needs its adapter folder and its base."""
    if not entry.base:
        return availability(entry.source)
    if entry.preset:
        ok, reason = entry_availability(registry, registry.get(entry.base))
        return ok, "" if ok else f"base {entry.base}: {reason}"
    if not (Path(entry.adapter).expanduser() / "adapter_config.json").is_file():
        return False, f"adapter folder {entry.adapter} has no adapter_config.json"
    ok, reason = entry_availability(registry, registry.get(entry.base))
    return ok, "" if ok else f"base {entry.base}: {reason}"


def release(models: list[LoadedModel]) -> None:
    """Let each model's engine stop its threads and free what it holds (a decode loop's thread would
    otherwise keep the weights alive).

    (A helper, so that no loop variable in the caller keeps the last model alive through free_memory().)
    """
    for loaded in models:
        if loaded.preset:  # the decode loop is its base's
            continue
        loaded.backend.unload()
