"""Models tab behaviour: the state table and load / unload."""
from __future__ import annotations

from ..hub import Hub
from ..manager import ModelLoadError

COLUMNS = ["id", "name", "family", "state", "memory (MB)", "detail", "format", "decode plan"]


def table(hub: Hub) -> list[list]:
    rows = []
    for state in hub.manager.states():
        entry = hub.registry.get(state.id)
        memory = f"{state.memory_bytes / 2**20:.0f}" if state.memory_bytes else ""
        weights = state.quant_label + (f" · {state.bits}-bit in memory" if state.bits else "")
        rows.append([state.id, state.name, entry.family, state.status, memory, state.detail, weights, state.decode])
    return rows


def summary(hub: Hub) -> str:
    used, budget = hub.manager.used_bytes(), hub.manager.budget
    return f"Loaded: {used / 2**20:,.0f} MB of a {budget / 2**30:g} GB budget (least recently used evicted first)."


def refresh(hub: Hub):
    return table(hub), summary(hub)


def load(hub: Hub, model_id: str):
    """Load a model, streaming the table while it loads."""
    if not model_id:
        yield table(hub), "Choose a model first."
        return
    try:
        for item in hub.load_with_progress(model_id, every_s=1.0):
            yield table(hub), item if isinstance(item, str) else f"**{model_id}** is ready."
    except ModelLoadError as e:
        yield table(hub), f"⚠️ {e}"


def unload(hub: Hub, model_id: str):
    done = hub.manager.unload(model_id) if model_id else False
    return table(hub), f"Unloaded **{model_id}**." if done else "Nothing to unload."
