"""Model families: an explicit name -> adapter class registry, and detection from a folder's own files."""
from __future__ import annotations

import json
from pathlib import Path

from .base import AdapterError, ChatAdapter, Prompt
from .generic import TemplateAdapter

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

    Families with a detector (`ChatAdapter.matches(config, files)`) are asked in turn; a folder that
    matches none is served by the generic chat-template adapter (which fails clearly, at prompt time,
    when the tokenizer has no chat template).
    """
    if folder is None or not Path(folder).is_dir():
        return TemplateAdapter.family
    folder = Path(folder)
    config = read_json(folder / "config.json")
    files = {p.name for p in folder.iterdir()}
    for name, cls in FAMILIES.items():
        if name != TemplateAdapter.family and cls.matches(config, files, folder):
            return name
    return TemplateAdapter.family


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise AdapterError(f"{path}: cannot read it as JSON: {e}") from None


__all__ = ["FAMILIES", "AdapterError", "ChatAdapter", "Prompt", "TemplateAdapter", "UnknownFamilyError",
           "detect_family", "get_adapter", "register"]
