"""Shared tab layout: a read-only view of a saved transcript (opened with ?transcript=ID)."""
from __future__ import annotations

import gradio as gr

from ..compare import MAX_MODELS


def build_shared_tab() -> dict:
    header = gr.Markdown(elem_id="shared-header")
    with gr.Row():
        chatbots = [gr.Chatbot(label=f"Pane {k + 1}", height=520, visible=False, elem_id=f"shared-chat-{k}")
                    for k in range(MAX_MODELS)]
    return {"header": header, "chatbots": chatbots}
