"""Layout pieces that several tabs share."""
from __future__ import annotations

import gradio as gr


def message_row(prefix: str, placeholder: str, stop: bool = True):
    """The message box with its Send (and Stop) buttons: elem ids `{prefix}-input`, `-send`, `-stop`.
    Returns (textbox, send, stop or None)."""
    with gr.Row():
        message = gr.Textbox(placeholder=placeholder, show_label=False, scale=6, elem_id=f"{prefix}-input",
                             max_lines=8)
        send = gr.Button("Send", variant="primary", scale=1, elem_id=f"{prefix}-send")
        stop_button = gr.Button("Stop", variant="stop", scale=1, elem_id=f"{prefix}-stop") if stop else None
    return message, send, stop_button
