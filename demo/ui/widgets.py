"""Layout pieces that several tabs share."""
from __future__ import annotations

import re

import gradio as gr

# Every ASCII punctuation character may be backslash-escaped in Markdown (CommonMark); $ too for Gradio's LaTeX.
_MARKUP = re.compile(r"([!-/:-@\[-`{-~])")


def literal(value: str, limit: int = 200) -> str:
    """`value` (from a link or a user) as Markdown that shows exactly its text: no link, image, HTML or code
    span can start in it. Line breaks become spaces; a long value is cut to `limit` characters."""
    text = " ".join(str(value).split())
    if len(text) > limit:
        text = text[:limit] + "…"
    return _MARKUP.sub(r"\\\1", text)


def message_row(prefix: str, placeholder: str, stop: bool = True):
    """The message box with its Send (and Stop) buttons: elem ids `{prefix}-input`, `-send`, `-stop`.
    Returns (textbox, send, stop or None)."""
    with gr.Row():
        message = gr.Textbox(placeholder=placeholder, show_label=False, scale=6, elem_id=f"{prefix}-input",
                             max_lines=8)
        send = gr.Button("Send", variant="primary", scale=1, elem_id=f"{prefix}-send")
        stop_button = gr.Button("Stop", variant="stop", scale=1, elem_id=f"{prefix}-stop") if stop else None
    return message, send, stop_button
