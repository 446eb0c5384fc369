"""Model families: an explicit name -> adapter class registry, and detection from a folder's own files."""
from __future__ import annotations

from pathlib import Path

from .base import AdapterError, ChatAdapter, Prompt
from .baichuan2 import Baichuan2Adapter
from .chatglm3 import ChatGLM3Adapter
from .files import read_json
from .generic import TemplateAdapter
from .llama3 import Llama3Adapter
from .qwen import Qwen1Adapter, QwenAdapter
from .yi import YiAdapter

FAMILIES: dict[str, type[ChatAdapter]] = {
    TemplateAdapter.family: TemplateAdapter,
}


class UnknownFamilyError(AdapterError):
    pass


def register(cls: type[ChatAdapter]) -> type[ChatAdapter]:
    if cls.family in FAMILIES:
        raise ValueError(f"family {cls.family!r} is registered twice")
    FAMILIES[cls.family] = cls
    return cls


def get_adapter(family: str) -> ChatAdapter:
    try:
        return FAMILIES[family]()
    except KeyError:
        raise UnknownFamilyError(f"unknown family {family!r}; known: {', '.join(sorted(FAMILIES))}") from None


def detect_family(folder: str | Path | None) -> str:
    """The family of a checkpoint folder, read from its config.json and tokenizer files, never its path.

    Families with a detector (`ChatAdapter.matches(config, files, folder)`) are asked in turn; a folder
    that matches none is served by the generic chat-template adapter when its tokenizer ships a chat
    template, and otherwise is refused with a message that says how to choose a family.
    """
    if folder is None or not Path(folder).is_dir():
        return TemplateAdapter.family
    folder = Path(folder)
    config = read_json(folder / "config.json")
    files = {p.name for p in folder.iterdir()}
    if config.get("hub_family") in FAMILIES:  # a folder written by `python -m demo convert`
        return config["hub_family"]
    for name, cls in FAMILIES.items():
        if name != TemplateAdapter.family and cls.matches(config, files, folder):
            return name
    if has_chat_template(folder, files) or not (folder / "config.json").is_file():
        return TemplateAdapter.family  # (a GGUF file or a bare tokenizer: the loader tells what is missing)
    raise UnknownFamilyError(
        f"{folder / 'config.json'}: model_type {config.get('model_type')!r} is not a known chat family and "
        f"the tokenizer has no chat template; choose a family with --family or `family:` in the registry "
        f"({', '.join(sorted(FAMILIES))})")


def has_chat_template(folder: Path, files: set[str]) -> bool:
    if "chat_template.jinja" in files or "chat_template.json" in files:
        return True
    return bool(read_json(folder / "tokenizer_config.json").get("chat_template"))


# Detection asks the families in this order; each detector reads the folder's own files only.
for _family in (Llama3Adapter, YiAdapter, QwenAdapter, Qwen1Adapter, ChatGLM3Adapter, Baichuan2Adapter):
    register(_family)


__all__ = ["FAMILIES", "AdapterError", "ChatAdapter", "Prompt", "TemplateAdapter", "UnknownFamilyError",
           "detect_family", "get_adapter", "register"]
