"""Models tab behaviour: the state table and load / unload (for those who may manage models: Hub.may_manage)."""
from __future__ import annotations

import gradio as gr

from ..hub import Hub
from ..manager import ERROR, READY, UNAVAILABLE, ModelLoadError

COLUMNS = ["id", "name", "family", "state", "memory (MB)", "detail", "format", "engine", "decode plan"]
COLUMN_WIDTHS = ["11%", "12%", "7%", "7%", "8%", "22%", "11%", "8%", "14%"]
REFUSED = "⚠️ Loading and unloading models is for this hub's admins."


def table(hub: Hub, manager_view: bool = True) -> list[list]:
    """Every entry's row. A visitor's view (manager_view False) tells only whether a model can be used:
    which models are loaded would tell which two an Arena round drew, and details can name server paths."""
    rows = []
    for state in hub.manager.states():
        if not manager_view:
            status = state.status if state.status in (UNAVAILABLE, ERROR) else "available"
            rows.append([state.id, state.name, hub.registry.family(state.id), status, "", "", "", "", ""])
            continue
        # A loaded preset (or remote) shows 0: its weights are its base's (or the remote's).
        memory = f"{state.memory_bytes / 2**20:.0f}" if state.memory_bytes or state.status == READY else ""
        weights = state.quant_label + (f" · {state.bits}-bit in memory" if state.bits else "")
        rows.append([state.id, state.name, hub.registry.family(state.id), state.status, memory, state.detail,
                     weights, state.engine, state.decode_plan])
    return rows


def summary(hub: Hub, manager_view: bool = True) -> str:
    if not manager_view:
        return "Models on this hub; they load on first use."
    used, budget = hub.manager.used_bytes(), hub.manager.budget
    return f"Loaded: {used / 2**20:,.0f} MB of a {budget / 2**30:g} GB budget (least recently used evicted first)."


def refresh(hub: Hub, request: gr.Request | None = None):
    manager_view = hub.may_manage(request)
    return table(hub, manager_view), summary(hub, manager_view)


def controls(hub: Hub, request: gr.Request | None = None):
    """The Load / Unload row: shown to those who may manage models."""
    return gr.update(visible=hub.may_manage(request))


def load(hub: Hub, model_id: str, request: gr.Request | None = None):
    """Load a model, streaming the table while it loads."""
    if not hub.may_manage(request):
        yield table(hub, False), REFUSED
        return
    if not model_id:
        yield table(hub), "Choose a model first."
        return
    try:
        for item in hub.load_with_progress(model_id, every_s=1.0):
            yield table(hub), item if isinstance(item, str) else f"**{model_id}** is ready."
    except ModelLoadError as e:
        yield table(hub), f"⚠️ {e}"


def unload(hub: Hub, model_id: str, request: gr.Request | None = None):
    if not hub.may_manage(request):
        return table(hub, False), REFUSED
    done = hub.manager.unload(model_id) if model_id else False
    return table(hub), f"Unloaded **{model_id}**." if done else "Nothing to unload."
