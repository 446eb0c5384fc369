"""Links that share a view: ?model=ID selects the chat model, ?compare=ID1,ID2 the compare set,
?transcript=TOKEN opens a shared conversation read-only. Applied once, when the page loads."""
from __future__ import annotations

import gradio as gr

from ..hub import Hub
from ..compare import MAX_MODELS
from . import compare_handlers, share_handlers
from .widgets import literal


def on_load(hub: Hub, query: dict) -> list:
    """Updates for [tabs, chat model, chat status, compare models, compare status, arena status, shared tab,
    shared header, 4 shared chatbots]."""
    tabs, chat_model, chat_status = gr.update(), gr.update(), gr.update()
    # Without a link, Compare opens on its default pair; with too few models both tabs say so at once.
    available = hub.available_ids()
    default = hub.compare_default(available)
    compare_models = gr.update(value=default) if default else gr.update()
    compare_status = hub.too_few_models("Compare", available) or gr.update()
    arena_status = hub.too_few_models("The Arena", available, arena=True) or gr.update()
    shared = [gr.update()] * 6
    if query.get("model"):
        model = query["model"].strip()
        if model in hub.registry:
            tabs, chat_model = gr.update(selected="chat"), gr.update(value=model)
        else:
            chat_status = f"⚠️ The link asks for model “{literal(model)}”, which this hub does not have."
    if query.get("compare"):
        ids = [i.strip() for i in query["compare"].split(",") if i.strip()]
        known = [i for i in dict.fromkeys(ids) if i in hub.registry]
        tabs, compare_models = gr.update(selected="compare"), gr.update(value=known[:MAX_MODELS])
        compare_status = compare_handlers.check_models(hub, ids)
    if query.get(share_handlers.LINK_PARAM):
        tabs = gr.update(selected="shared")
        shared = [gr.update(visible=True), *share_handlers.transcript_view(hub, query[share_handlers.LINK_PARAM])]
    return [tabs, chat_model, chat_status, compare_models, compare_status, arena_status, *shared]
