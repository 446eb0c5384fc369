"""What a registry model's chat template takes, read once from its files (no weights): the prompt builder the
Prompt inspector uses, and the traits the Thinking switch and the Tools box follow."""
from __future__ import annotations

import threading

from ..hub import Hub
from ..promptview import prompt_source
from .thinking import TemplateTraits, traits_of

_sources: dict[tuple[int, str], object] = {}  # (registry, model id) -> weightless LoadedModel
_sources_lock = threading.Lock()


def source_for(hub: Hub, model_id: str):
    """The model's prompt builder (tokenizer, adapter, config), read once per model and kept."""
    key = (id(hub.registry), model_id)
    with _sources_lock:
        if key not in _sources:
            _sources[key] = prompt_source(hub.registry.get(model_id), hub.registry)
        return _sources[key]


_traits: dict[tuple[int, str], TemplateTraits] = {}


def model_traits(hub: Hub, model_id: str) -> TemplateTraits:
    """A registry model's traits, read once from its files (no weights); raises what reading them raises."""
    key = (id(hub.registry), model_id)
    if key not in _traits:
        entry = hub.registry.get(model_id)
        _traits[key] = (TemplateTraits(remote=True) if "openai" in (entry.backend, entry.engine)
                        else traits_of(source_for(hub, model_id)))
    return _traits[key]


def known_traits(hub: Hub, model_id: str) -> TemplateTraits | None:
    """`model_traits`, or None while the model's files cannot be read (its reply will say why)."""
    try:
        return model_traits(hub, model_id)
    except Exception:
        return None
