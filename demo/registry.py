"""The model registry: `model_registry.yaml` read into typed records that reject unknown keys.

Every error names the file, the line and the key, e.g.
`model_registry.yaml:14: models[1].dtype: input should be 'auto', 'float32', 'bfloat16' or 'float16'`.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

DEFAULT_REGISTRY = Path(__file__).resolve().parent.parent / "model_registry.yaml"
REGISTRY_ENV = "HUB_REGISTRY"


class RegistryError(ValueError):
    """The registry file is malformed; the message names file, line and key."""


class UnknownModelError(KeyError):
    """No registry entry has this id."""

    def __str__(self) -> str:
        return str(self.args[0])


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Source(Strict):
    """Where the weights are: exactly one of a local folder, a Hugging Face repo, an installed package."""

    path: Optional[str] = None
    repo: Optional[str] = None
    revision: Optional[str] = None
    package: Optional[str] = None
    file: Optional[str] = Field(None, description="a GGUF file inside the folder, repo or package")

    @model_validator(mode="after")
    def one_place(self):
        places = [k for k in ("path", "repo", "package") if getattr(self, k)]
        if len(places) != 1:
            raise ValueError(f"give exactly one of path, repo or package (got {', '.join(places) or 'none'})")
        if self.package and not self.file:
            raise ValueError("a package source needs `file`, the GGUF file inside the package")
        return self


class GenerationDefaults(Strict):
    temperature: Optional[float] = Field(None, ge=0, le=5)
    top_p: Optional[float] = Field(None, gt=0, le=1)
    top_k: Optional[int] = Field(None, ge=0)
    repetition_penalty: Optional[float] = Field(None, gt=0, le=5)
    max_new_tokens: Optional[int] = Field(None, ge=1)
    seed: Optional[int] = None
    greedy: Optional[bool] = None


class Quantization(Strict):
    """Quantize a full-precision folder at load with bitsandbytes (GPTQ, AWQ and GGUF are read from the files)."""

    method: Literal["bnb-4bit", "bnb-8bit"]
    quant_type: Optional[Literal["nf4", "fp4"]] = Field(None, description="4-bit only; default nf4")
    double_quant: Optional[bool] = Field(None, description="4-bit only: quantize the scales too")

    @model_validator(mode="after")
    def four_bit_options(self):
        if self.method == "bnb-8bit" and (self.quant_type is not None or self.double_quant is not None):
            raise ValueError("quant_type and double_quant apply to bnb-4bit only")
        return self


class DecodeSettings(Strict):
    """How a local transformers model decodes (demo/decodeplan.py); `settings.decode` for every model, and a
    model's own `decode:` for the keys it gives. The HUB_* variables of demo/decodeplan.py override both."""

    batched: bool = Field(True, description="one decode loop per model serves every request (else generate())")
    lean: bool = Field(True, description="Llama-shaped models decode through the checked lean step")
    prepack: bool = Field(True, description="oneDNN-packed weights where the CPU has the kernels")
    bf16_kernel: bool = Field(True, description="on a CPU without bf16 kernels, bf16 decode steps run on the hub's "
                                                "own kernel (demo/bf16kernel.py), within rounding; not in an exact plan")
    exact: bool = Field(False, description="every step bitwise what generate() computes with the model's dtype")
    compute: Literal["auto", "model", "float32"] = Field(
        "auto", description="auto: float32 on a CPU without fast bf16 kernels (AVX2), else the model's dtype")
    rows: int = Field(8, ge=1, le=64, description="the most requests one decode step serves together")
    prefill_together: bool = Field(False, description="prompts waiting at a step are prefilled in one call "
                                                      "(a batch job's throughput; first tokens within rounding)")


class ModelEntry(Strict):
    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    name: str
    source: Optional[Source] = None  # local weights; a remote entry, a LoRA entry and a preset have none
    base: Optional[str] = Field(None, description="the id of the entry whose loaded weights this one shares: "
                                                  "with `adapter`, a LoRA/PEFT entry; alone, a preset")
    adapter: Optional[str] = Field(None, description="a LoRA/PEFT entry: the adapter folder")
    quantization: Optional[Quantization] = None
    family: str = "auto"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    device: str = Field("auto", pattern=r"^(auto|cpu|mps|cuda(:\d+)?)$")
    context_length: Optional[int] = Field(None, ge=16)
    generation: GenerationDefaults = GenerationDefaults()
    decode: Optional[DecodeSettings] = Field(None, description="this model's decode keys over settings.decode")
    description: str = ""
    system_prompt: Optional[str] = Field(None, description="used when a conversation brings no system message")
    arena: bool = Field(True, description="false: the Arena never draws this entry (e.g. a base played by its "
                                          "presets); Compare opens with the first two it draws from")
    # A model served elsewhere by an OpenAI-compatible engine (vLLM, TGI, SGLang, Ollama, transformers serve).
    # `backend: openai` is the older spelling of `engine: openai`; both load.
    backend: Literal["local", "openai"] = "local"
    # Which engine runs the entry (demo/backends): auto = llama.cpp for a GGUF file when llama-cpp-python
    # is installed, else transformers; openai = a remote server (needs base_url).
    engine: Literal["auto", "transformers", "llama.cpp", "openai"] = "auto"
    base_url: Optional[str] = Field(None, pattern=r"^https?://", description="e.g. http://gpu-box:8000/v1")
    api_key_env: Optional[str] = Field(None, description="environment variable holding the remote's API key")
    remote_model: Optional[str] = Field(None, description="the model name the remote expects (default: id)")
    concurrency: Optional[int] = Field(None, ge=1, description="generations at once (default: 1 local, 8 remote)")

    @field_validator("engine")
    @classmethod
    def engine_fits(cls, engine: str, info) -> str:
        data = info.data
        if data.get("backend") == "openai" and engine not in ("auto", "openai"):
            raise ValueError(f"`backend: openai` (the older spelling of `engine: openai`) contradicts "
                             f"`engine: {engine}`; keep one")
        if engine == "llama.cpp":
            source = data.get("source")
            if data.get("base") or data.get("adapter"):
                raise ValueError("llama.cpp does not run LoRA/PEFT entries; use `engine: transformers`")
            if not (source and source.file and source.file.lower().endswith(".gguf")):
                raise ValueError("llama.cpp runs GGUF files: give `source.file` (a .gguf), or use "
                                 "`engine: transformers`")
            if data.get("quantization"):
                raise ValueError("a GGUF file is already quantized; remove `quantization:` for llama.cpp")
        return engine

    @property
    def engine_name(self) -> str:
        """The `engine:` asked for, with `backend: openai` read as `engine: openai` (auto stays auto)."""
        return "openai" if self.backend == "openai" else self.engine

    @model_validator(mode="after")
    def backend_fields(self):
        remote_keys = [k for k in ("base_url", "api_key_env", "remote_model") if getattr(self, k)]
        if not self.remote:
            if self.source is None and not (self.base or self.adapter):
                raise ValueError("a local model needs `source` (or `base` + `adapter` for a LoRA/PEFT entry, "
                                 "`base` alone for a preset, or `engine: openai` with `base_url`)")
            if remote_keys:
                raise ValueError(f"{', '.join(remote_keys)} only apply to `engine: openai`")
            if (self.concurrency or 1) > 1:
                raise ValueError("a local model runs one generation at a time; `concurrency` is for remotes")
        else:
            if self.source is not None:
                raise ValueError("an `engine: openai` model has no `source`; its weights live on the remote")
            if not self.base_url:
                raise ValueError("`engine: openai` needs `base_url`, e.g. http://127.0.0.1:8000/v1")
        return self

    @property
    def remote(self) -> bool:
        return self.engine_name == "openai"

    @property
    def preset(self) -> bool:
        """A preset: another entry's weights (`base`, no `adapter`) with its own generation and system prompt."""
        return bool(self.base) and not self.adapter

    @field_validator("family")
    @classmethod
    def known_family(cls, family: str) -> str:
        from adapters import FAMILIES

        if family != "auto" and family not in FAMILIES:
            raise ValueError(f"unknown family {family!r}; known: auto, {', '.join(sorted(FAMILIES))}")
        return family

    @model_validator(mode="after")
    def weights_or_adapter(self):
        if self.preset:
            misplaced = preset_misplaced_keys(self.model_fields_set)
            if misplaced:
                raise ValueError(preset_key_error(misplaced[0]))
        elif self.base or self.adapter:
            if not (self.base and self.adapter):
                raise ValueError("a LoRA/PEFT entry needs both `base` (an entry id) and `adapter` (a folder)")
            if self.source or self.quantization or self.remote:
                raise ValueError("a LoRA/PEFT entry takes its weights and quantization from its local `base` "
                                 "entry; remove `source`/`quantization`/`engine`")
        if self.remote and self.quantization:
            raise ValueError("`quantization` applies to local weights; a remote quantizes on its own side")
        return self


# What a preset takes from its base rather than from its own entry.
PRESET_INHERITED = ("source", "quantization", "family", "dtype", "device", "backend", "base_url", "api_key_env",
                    "remote_model", "concurrency")


def preset_misplaced_keys(keys) -> list[str]:
    return [k for k in PRESET_INHERITED if k in keys]


def preset_key_error(key: str) -> str:
    return (f"a preset (`base` without `adapter`) shares its base's loaded weights and settles only name, "
            f"description, generation, system_prompt, context_length and arena; remove `{key}`")


class Settings(Strict):
    memory_budget_gb: float = Field(8.0, gt=0)
    default_model: Optional[str] = None
    decode: DecodeSettings = DecodeSettings()


def decode_settings(entry: ModelEntry, settings: Settings) -> DecodeSettings:
    """The registry's decode settings with the keys the entry gives itself on top."""
    if entry.decode is None:
        return settings.decode
    return settings.decode.model_copy(update=entry.decode.model_dump(exclude_unset=True))


class Limits(Strict):
    """What keeps a public demo alive; every UI tab and the API go through them (demo/limits.py)."""

    max_message_chars: int = Field(16_000, ge=1, description="longest single message")
    max_turns: int = Field(64, ge=1, description="most messages in one conversation (system excluded)")
    max_new_tokens: int = Field(1024, ge=1, description="cap on a reply's length; larger requests are clamped")
    queue_size: int = Field(8, ge=0, description="requests that may wait per model; beyond: busy")
    generation_timeout_s: float = Field(180.0, gt=0, description="a reply running longer ends with an error")
    requests_per_minute: int = Field(30, ge=0, description="per client (user, API key or IP); 0: no limit")
    max_request_bytes: int = Field(1_000_000, ge=1024, description="largest request body; beyond: 413")


class RegistryFile(Strict):
    settings: Settings = Settings()
    limits: Limits = Limits()
    models: list[ModelEntry]


class Registry:
    """An explicit id -> entry map; an unknown id raises UnknownModelError."""

    def __init__(self, entries: list[ModelEntry], settings: Settings = Settings(), path: Path | None = None,
                 limits: Limits = Limits()):
        self.settings = settings
        self.entries = {e.id: self._with_decode(e) for e in entries}
        self.limits = limits
        self.path = path

    def __iter__(self):
        return iter(self.entries.values())

    def __len__(self):
        return len(self.entries)

    def __contains__(self, model_id):
        return model_id in self.entries

    def get(self, model_id: str) -> ModelEntry:
        try:
            return self.entries[model_id]
        except KeyError:
            raise UnknownModelError(f"unknown model {model_id!r}; known: {', '.join(self.entries) or 'none'}") from None

    def add(self, entry: ModelEntry) -> ModelEntry:
        if entry.id in self.entries:
            raise RegistryError(f"duplicate model id {entry.id!r}")
        entry = self.entries[entry.id] = self._with_decode(entry)
        return entry

    def _with_decode(self, entry: ModelEntry) -> ModelEntry:
        """Each local entry carries its whole decode settings, so a loader needs nothing else."""
        if entry.remote:
            return entry
        return entry.model_copy(update={"decode": decode_settings(entry, self.settings)})

    def quantized_variant(self, model_id: str, method: str) -> ModelEntry:
        """The entry `<id>-<method>`: `model_id` quantized at load with bitsandbytes (what the UI offers).

        Added on first use, so the full-precision model and its 4/8-bit variant can sit side by side.
        """
        entry = self.get(model_id)
        if entry.base or entry.quantization:
            raise RegistryError(f"{model_id!r} cannot be quantized at load: it is a LoRA entry, a preset, "
                                "or already is quantized")
        variant_id = f"{model_id}-{method}"
        if variant_id not in self.entries:
            self.add(entry.model_copy(update={"id": variant_id, "name": f"{entry.name} ({method})",
                                              "quantization": Quantization(method=method)}))
        return self.entries[variant_id]

    def family(self, model_id: str) -> str:
        """The entry's family; an entry on a `base` (preset, LoRA) has its base's."""
        entry = self.get(model_id)
        return self.get(entry.base).family if entry.base and entry.base in self.entries else entry.family

    def presets_of(self, model_id: str) -> list[str]:
        return [e.id for e in self.entries.values() if e.preset and e.base == model_id]

    @property
    def default_id(self) -> str | None:
        return self.settings.default_model or next(iter(self.entries), None)


def registry_path(cli_path: str | os.PathLike | None = None) -> Path:
    return Path(cli_path or os.environ.get(REGISTRY_ENV) or DEFAULT_REGISTRY)


def load_registry(path: str | os.PathLike | None = None) -> Registry:
    path = registry_path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise RegistryError(f"{path}: cannot read the registry: {e.strerror or e}") from None
    return parse_registry(text, path)


def parse_registry(text: str, path: Path | str = "<registry>") -> Registry:
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        problem = getattr(e, "problem", None) or str(e)
        context = getattr(e, "context_mark", None)
        if context is not None and "end of stream" in problem:
            # the parser ran off the end (an unterminated quote or bracket): name where that began
            mark, problem = context, f"{e.context} that never ends ({problem})"
        line = mark.line + 1 if mark else "?"
        raise RegistryError(f"{path}:{line}: not valid YAML: {problem}") from None
    if root is None:
        raise RegistryError(f"{path}:1: the registry is empty; it needs a `models:` list")
    check_duplicate_keys(root, path)
    check_preset_keys(root, path)
    data = yaml.safe_load(text)
    try:
        parsed = RegistryFile.model_validate(data)
    except ValidationError as e:
        raise RegistryError(describe(e, root, path)) from None
    seen: dict[str, int] = {}
    for index, entry in enumerate(parsed.models):
        if entry.id in seen:
            line = node_line(root, ("models", index, "id"))
            raise RegistryError(f"{path}:{line}: models[{index}].id: duplicate id {entry.id!r} "
                                f"(first defined on line {seen[entry.id]})")
        seen[entry.id] = node_line(root, ("models", index, "id"))
    check_bases(parsed.models, root, path)
    registry = Registry(parsed.models, parsed.settings, Path(path), parsed.limits)
    if parsed.settings.default_model and parsed.settings.default_model not in registry:
        line = node_line(root, ("settings", "default_model"))
        raise RegistryError(f"{path}:{line}: settings.default_model: no model has id "
                            f"{parsed.settings.default_model!r}")
    return registry


def check_preset_keys(root, path) -> None:
    """A preset (`base:` without `adapter:`) sets none of the keys it takes from its base: named at their line."""
    models = next((v for k, v in getattr(root, "value", []) if getattr(k, "value", None) == "models"), None)
    for index, item in enumerate(getattr(models, "value", None) or []):
        if not isinstance(item, yaml.MappingNode):
            continue
        keys = {k.value: k for k, _ in item.value}
        if "base" not in keys or "adapter" in keys:
            continue
        misplaced = preset_misplaced_keys(keys)
        if misplaced:
            key = keys[misplaced[0]]
            raise RegistryError(f"{path}:{key.start_mark.line + 1}: models[{index}].{misplaced[0]}: "
                                f"{preset_key_error(misplaced[0])}")


def check_bases(entries: list[ModelEntry], root, path) -> None:
    """Every `base:` names a full local model entry of this registry (not a LoRA entry, a preset, a remote)."""
    by_id = {e.id: e for e in entries}
    for index, entry in enumerate(entries):
        if entry.base is None:
            continue
        base = by_id.get(entry.base)
        what = "a preset" if entry.preset else "an adapter"
        reason = ("no model has this id" if base is None else
                  "it is itself a LoRA/PEFT entry; point at the full model" if base.base and not base.preset else
                  "it is itself a preset; point at the full model" if base.base else
                  f"it is a remote model; {what} needs local weights" + (
                      " (another `backend: openai` entry with its own generation and system_prompt "
                      "does the same there)" if entry.preset else "") if base.remote else None)
        if reason:
            line = node_line(root, ("models", index, "base"))
            raise RegistryError(f"{path}:{line}: models[{index}].base: {entry.base!r}: {reason}")


def describe(error: ValidationError, root, path) -> str:
    first = error.errors()[0]
    loc = tuple(first["loc"])
    # Errors raised by a model validator carry no field: point at the mapping itself.
    line = node_line(root, loc)
    key = dotted(loc)
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        message = f"unknown key {loc[-1]!r}"
    elif first["type"] == "missing":
        message = f"missing required key {loc[-1]!r}"
    return f"{path}:{line}: {key}: {message}"


def dotted(loc) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def node_line(root, loc) -> int:
    """The 1-based line of the deepest YAML node that `loc` reaches (a key's own line for mappings)."""
    node, line = root, root.start_mark.line + 1
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if key.value == part:
                    node, line = value, key.start_mark.line + 1
                    break
            else:
                return line
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            return line
    return line


def check_duplicate_keys(node, path) -> None:
    if isinstance(node, yaml.MappingNode):
        seen = set()
        for key, value in node.value:
            if key.value in seen:
                raise RegistryError(f"{path}:{key.start_mark.line + 1}: {key.value}: duplicate key")
            seen.add(key.value)
            check_duplicate_keys(value, path)
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            check_duplicate_keys(item, path)


def is_registry_id(text: str) -> bool:
    return bool(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", text))
