"""Native loading without remote code: upstream ChatGLM3, Baichuan2 and Qwen1 folders converted once to
GlmForCausalLM / LlamaForCausalLM / Qwen2ForCausalLM folders, cached on disk, then loaded as they are.

`convert_folder(folder, out)` writes a folder plain `AutoModelForCausalLM.from_pretrained` loads (a
Baichuan2-13B one needs `import adapters.native.alibi` and `attn_implementation="alibi_sdpa"`).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from ..errors import AdapterError
from ..files import read_json
from ..quant import NONE_SPEC, QuantSpec, model_kwargs, native_quantization_config, place
from . import baichuan2, chatglm3, qwen1
from .shards import shards, weight_files

CONVERTERS = {"chatglm": chatglm3, "baichuan": baichuan2, "qwen": qwen1}
CONVERTER_VERSION = 1  # bump when a mapping changes, so cached folders are rebuilt
TOKENIZER_FILES = ("tokenizer.model", "qwen.tiktoken", "tokenizer_config.json", "special_tokens_map.json",
                   "generation_config.json")


def converter_for(folder: Path):
    config_path = Path(folder) / "config.json"
    model_type = read_json(config_path).get("model_type")
    if model_type not in CONVERTERS:
        raise AdapterError(f"{config_path}: model_type {model_type!r} has no native conversion "
                           f"(known: {', '.join(sorted(CONVERTERS))})")
    return CONVERTERS[model_type]


def cache_root() -> Path:
    return Path(os.environ.get("HUB_CACHE") or Path.home() / ".cache" / "demo-hub") / "native"


def cache_key(folder: Path) -> str:
    """Changes when the folder, its weight files or the mapping change."""
    folder = Path(folder).resolve()
    files = [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in weight_files(folder)]
    files.append(("config.json", (folder / "config.json").stat().st_mtime_ns))
    digest = hashlib.sha256(json.dumps([str(folder), files, CONVERTER_VERSION]).encode()).hexdigest()
    return f"{folder.name}-{digest[:16]}"


def native_folder(folder: Path, family: str | None = None) -> Path:
    """The converted folder for `folder`, converting on the first call and reusing it afterwards."""
    target = cache_root() / cache_key(folder)
    if not (target / "config.json").is_file():
        convert_folder(folder, target, family, replace=False)
    return target


def convert_folder(folder: Path, out: Path, family: str | None = None, replace: bool = True) -> Path:
    """Write the native folder (config, safetensors shards, tokenizer files); atomic: all or nothing.

    With replace=False (the cache) a folder another load finished meanwhile is kept as it is.
    """
    folder, out = Path(folder), Path(out)
    module = converter_for(folder)
    config = read_json(folder / "config.json")
    if config.get("quantization_config") and not getattr(module, "converts_packed", lambda c: False)(config):
        # Packed tensors split along other dimensions than plain weights: only a converter that knows how
        # (qwen1 for GPTQ, through quant.split_fused) takes them. Splitting them as weights would be garbage.
        raise AdapterError(f"{folder / 'config.json'}: a quantized checkpoint "
                           f"({config['quantization_config'].get('quant_method', '?')}); this conversion is "
                           "for full-precision weights")
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".converting-", dir=out.parent))
    try:
        stored = write_weights(folder, work, module, config)
        write_config(work, module, config, family, stored)
        for name in TOKENIZER_FILES:
            if (folder / name).is_file():
                copy_without_remote_code(folder / name, work / name)
        if out.exists() and replace:
            shutil.rmtree(out)
        if not out.exists():
            work.rename(out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out


def write_weights(folder: Path, out: Path, module, config: dict):
    """Convert shard by shard (one in memory at a time); returns the dtype the weights are stored in."""
    from safetensors.torch import save_file

    files = weight_files(folder)
    weight_map = {}
    for index, (path, tensors) in enumerate(shards(folder), start=1):
        converted = {}
        for name, tensor in tensors.items():
            try:
                converted.update(module.convert_tensor(name, tensor, config))
            except KeyError:
                raise AdapterError(f"{path}: unexpected tensor {name!r} for this model type") from None
        shard = "model.safetensors" if len(files) == 1 else f"model-{index:05d}-of-{len(files):05d}.safetensors"
        save_file({k: v.contiguous() for k, v in converted.items()}, str(out / shard), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(converted, shard))
    if len(files) > 1:
        (out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return next((t.dtype for t in converted.values() if t.is_floating_point()), None)  # not a packed int32


def write_config(out: Path, module, config: dict, family: str | None, stored=None) -> None:
    from transformers import AutoConfig

    native = AutoConfig.for_model(module.MODEL_TYPE, **module.native_config(config))
    native.dtype = native.dtype or stored
    native.architectures = [module.ARCHITECTURE]
    quantization = native_quantization_config(config)
    if quantization:  # GPTQ tensors were converted packed: transformers + gptqmodel load them as they are
        native.quantization_config = quantization
    if family:
        native.hub_family = family  # read by family detection: a converted folder keeps its chat format
    if getattr(module, "uses_alibi", lambda c: False)(config):
        native.hub_attention = "alibi_sdpa"  # see alibi.py
    native.save_pretrained(out)


def copy_without_remote_code(source: Path, target: Path) -> None:
    """Copy a JSON config without `auto_map` (no remote code is needed or wanted), other files as they are."""
    if source.suffix != ".json":
        shutil.copyfile(source, target)
        return
    data = read_json(source)
    data.pop("auto_map", None)
    target.write_text(json.dumps(data, indent=2, ensure_ascii=False))


def load_native(folder: Path, dtype, device: str, family: str | None = None, quant: QuantSpec = NONE_SPEC):
    """Load an upstream folder through its cached native conversion (or a folder already converted)."""
    from transformers import AutoModelForCausalLM

    folder = Path(folder)
    target = native_folder(folder, family) if read_json(folder / "config.json").get("model_type") in CONVERTERS else folder
    kwargs = model_kwargs(quant, dtype, device)  # dtype, and for quantized folders device_map
    if read_json(target / "config.json").get("hub_attention") == "alibi_sdpa":
        from . import alibi

        kwargs["attn_implementation"] = alibi.ATTENTION
    model, info = AutoModelForCausalLM.from_pretrained(target, output_loading_info=True, **kwargs)
    if info.get("missing_keys"):
        raise AdapterError(f"{folder}: the weights lack {sorted(info['missing_keys'])[:5]} (incomplete checkpoint?)")
    return place(model, quant, device)


class NativeLoading:
    """Mixin for families whose upstream model is remote code: load it through the native port instead."""

    def load_model(self, weights, dtype, device: str):
        from ..files import local_folder

        return load_native(local_folder(weights), dtype, device, self.family, weights.quant)
