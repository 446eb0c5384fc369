"""Turn a registry entry into a LoadedModel: weights, tokenizer, family adapter and merged defaults."""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from adapters import ChatAdapter, detect_family, get_adapter
from adapters.quant import held_bits
from adapters.weights import Weights, resolve, with_quantization

from .backends.transformers import on_transformers
from .decoding import prepare
from .loaded import LoadedModel
from .memory import model_bytes  # noqa: F401  (re-exported: where callers have long found it)
from .params import GenerationParams, from_generation_config
from .registry import GenerationDefaults, ModelEntry, Source
from .threads import on_own_thread

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def pick_device(choice: str) -> str:
    if choice != "auto":
        return choice
    if torch.cuda.is_available():
        return "cuda"
    return "cpu"


def pick_dtype(choice: str, device: str, declared: str | None = None):
    if choice != "auto":
        return DTYPES[choice]
    if declared == "float32":
        # A checkpoint published in fp32 (tiny or reference models) keeps its precision: its outputs are
        # then comparable with the publisher's. Published chat checkpoints declare bf16/fp16.
        return torch.float32
    # bf16 is both smaller and faster than fp32 for these models on current CPUs and GPUs.
    return torch.bfloat16 if device == "cpu" or torch.cuda.is_bf16_supported() else torch.float16


def folder_entry(folder: str, family: str = "auto") -> ModelEntry:
    """A registry entry for a local checkpoint folder given on the command line."""
    path = Path(folder).expanduser().resolve()
    gguf = sorted(path.glob("*.gguf")) if path.is_dir() else []
    source = Source(path=str(path), file=gguf[0].name if len(gguf) == 1 and not (path / "config.json").exists() else None)
    return ModelEntry(id=path.name or "model", name=path.name or str(path), source=source, family=family)


def family_of(entry: ModelEntry, weights: Weights | None) -> str:
    if entry.family != "auto":
        return entry.family
    return detect_family(weights.folder if weights else None)


def adapter_for(entry: ModelEntry, weights: Weights) -> ChatAdapter:
    """The family adapter, configured from the folder's config.json and generation_config.json."""
    adapter = get_adapter(family_of(entry, weights))
    adapter.configure(*folder_configs(weights))
    return adapter


def folder_configs(weights: Weights) -> tuple[dict, dict]:
    from adapters import read_json

    if weights.folder is None:
        return {}, {}
    return read_json(weights.folder / "config.json"), read_json(weights.folder / "generation_config.json")


def load_tokenizer_only(entry: ModelEntry):
    """(adapter, tokenizer, config defaults) without reading weights: enough to build prompts."""
    weights = resolve(entry.source)
    adapter = adapter_for(entry, weights)
    return adapter, adapter.load_tokenizer(weights), weights


def load_entry(entry: ModelEntry, base: LoadedModel | None = None) -> LoadedModel:
    """Load an entry; a LoRA/PEFT entry (`base:` + `adapter:`) goes on top of its loaded `base`.

    The work runs on a thread of its own, so the caller's thread starts no OpenMP pool that would
    outlive the load and slow every later decode step (see `demo.threads`)."""
    return on_own_thread(_load_entry, entry, base)


def _load_entry(entry: ModelEntry, base: LoadedModel | None) -> LoadedModel:
    if entry.base:
        from .lora import attach_adapter

        if base is None:
            raise ValueError(f"{entry.id} shares the weights of {entry.base!r}: load that entry first")
        return preset_of(entry, base) if entry.preset else attach_adapter(entry, base)
    if entry.remote:
        from .remote import RemoteModel

        return RemoteModel.connect(entry)
    started = time.perf_counter()
    weights = with_quantization(resolve(entry.source), entry.quantization)
    adapter = adapter_for(entry, weights)
    from .backends import LLAMA_CPP, choose_engine

    if choose_engine(entry) == LLAMA_CPP:
        from .backends.llamacpp import load_gguf

        return load_gguf(entry, weights, adapter, started, merged_defaults(adapter, None, entry.generation),
                         entry.context_length or folder_context(adapter, weights))
    device = pick_device(entry.device)
    dtype = pick_dtype(entry.dtype, device, declared_dtype(weights))
    tokenizer = adapter.load_tokenizer(weights)
    model = adapter.load_model(weights, dtype, device)
    config = getattr(model, "generation_config", None)
    bits = held_bits(weights.quant, model.dtype)  # as loaded: a float32 decode plan does not change the format
    plan, decoder = prepare(model, weights.quant.method, entry.decode)
    return on_transformers(LoadedModel(
        id=entry.id, model=model, tokenizer=tokenizer, adapter=adapter,
        defaults=merged_defaults(adapter, config, entry.generation),
        context_length=entry.context_length or folder_context(adapter, weights) or context_of(model),
        extra_stop_ids=eos_ids(config), load_seconds=time.perf_counter() - started,
        quant=weights.quant, bits=bits, plan=plan, decoder=decoder, system_prompt=entry.system_prompt))


def preset_of(entry: ModelEntry, base: LoadedModel) -> LoadedModel:
    """A preset: `base`'s model, tokenizer, lock, engine and decode loop as they are, with the entry's own id,
    generation defaults (over the base's) and system prompt (else the base's). Adds no weights."""
    return LoadedModel(
        id=entry.id, model=base.model, tokenizer=base.tokenizer, adapter=base.adapter,
        defaults=base.defaults.override(entry.generation.model_dump()),
        context_length=entry.context_length or base.context_length, extra_stop_ids=base.extra_stop_ids,
        quant=base.quant, bits=base.bits, base_id=base.id, lock=base.lock, plan=base.plan, decoder=base.decoder,
        preset=True, engine_backend=base.engine_backend,
        system_prompt=entry.system_prompt if entry.system_prompt is not None else base.system_prompt)


def merged_defaults(adapter: ChatAdapter, config, registry: GenerationDefaults) -> GenerationParams:
    """Hub defaults < family defaults < the checkpoint's generation_config < the registry entry."""
    return (GenerationParams().override(adapter.generation_defaults)
            .override(from_generation_config(config))
            .override(registry.model_dump()))


def eos_ids(config) -> list[int]:
    eos = getattr(config, "eos_token_id", None)
    if eos is None:
        return []
    return [int(i) for i in (eos if isinstance(eos, (list, tuple)) else [eos])]


def context_of(model) -> int | None:
    return getattr(model.config, "max_position_embeddings", None)


def load_without_weights(entry: ModelEntry) -> LoadedModel:
    """Tokenizer, adapter, defaults and context from config files only: enough to build prompts."""
    from transformers import GenerationConfig

    weights = resolve(entry.source)
    adapter = adapter_for(entry, weights)
    tokenizer = adapter.load_tokenizer(weights)
    config = None
    if weights.folder is not None and (weights.folder / "generation_config.json").is_file():
        config = GenerationConfig.from_pretrained(weights.folder)
    return LoadedModel(
        id=entry.id, model=None, tokenizer=tokenizer, adapter=adapter,
        defaults=merged_defaults(adapter, config, entry.generation),
        context_length=entry.context_length or folder_context(adapter, weights), extra_stop_ids=eos_ids(config))


def declared_dtype(weights: Weights) -> str | None:
    """The precision the checkpoint is published in: config.json's, else its first safetensors header's."""
    config, _ = folder_configs(weights)
    if config.get("torch_dtype") or config.get("dtype"):
        return config.get("torch_dtype") or config.get("dtype")
    shards = sorted(weights.folder.glob("*.safetensors")) if weights.folder and not weights.gguf_file else []
    try:
        with open(shards[0], "rb") as f:
            size = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(size)) if size < 2**27 else {}  # a damaged file: the loader says so
    except (IndexError, OSError, ValueError):
        return None
    if not isinstance(header, dict):
        return None
    names = {"F32": "float32", "BF16": "bfloat16", "F16": "float16"}
    return next((names.get(v.get("dtype")) for k, v in header.items() if isinstance(v, dict) and k != "__metadata__"),
                None)


def folder_context(adapter: ChatAdapter, weights: Weights) -> int | None:
    """The context the family reads from the upstream config.json (where its native port is exact)."""
    config, _ = folder_configs(weights)
    return adapter.context_length(config) if config else None
