"""The Prompt inspector's layout: an accordion under a conversation (Chat, and per model in Compare)."""
from __future__ import annotations

import gradio as gr


def build_inspector(prefix: str, models: bool = False) -> dict:
    """The accordion's parts; elem ids `{prefix}-prompt-...`. `models`: a choice of model (Compare)."""
    with gr.Accordion("Prompt", open=False, elem_id=f"{prefix}-prompt") as accordion:
        with gr.Row():
            model = gr.Radio([], label="Model", elem_id=f"{prefix}-prompt-model", scale=4) if models else None
            show = gr.Button("Show the prompt", size="sm", elem_id=f"{prefix}-prompt-show", scale=1)
        view = gr.HTML(elem_id=f"{prefix}-prompt-view")
        with gr.Row():
            ids = gr.Textbox(label="Token ids", lines=3, max_lines=8, interactive=False,
                             elem_id=f"{prefix}-prompt-ids", scale=3)
            stops = gr.Textbox(label="Stop ids and stop strings", lines=3, interactive=False,
                               elem_id=f"{prefix}-prompt-stops", scale=2)
    return {"accordion": accordion, "model": model, "show": show, "outputs": [view, ids, stops]}
