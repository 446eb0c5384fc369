"""Models tab layout: every registry entry with its state and memory; load and unload buttons for managers."""
from __future__ import annotations

import functools

import gradio as gr

from ..hub import Hub
from . import models_handlers as h


def build_models_tab(hub: Hub) -> dict:
    # Callables, so each page load shows the states of that moment; the visitor's view until the page's
    # load event (app.py) knows who is asking. Fixed widths, so at 1280 px every header fits on one line
    # and a long reason wraps inside `detail`.
    grid = gr.Dataframe(functools.partial(h.table, hub, False), headers=h.COLUMNS, interactive=False, wrap=True,
                        column_widths=h.COLUMN_WIDTHS, elem_id="models-table")
    info = gr.Markdown(functools.partial(h.summary, hub, False), elem_id="models-info")
    with gr.Row(visible=False) as manage:
        choice = gr.Dropdown(hub.choices(), label="Model", scale=3, elem_id="models-choice")
        load = gr.Button("Load", variant="primary", elem_id="models-load")
        unload = gr.Button("Unload", elem_id="models-unload")
    # The outcome of Load / Unload has its own line, so the timer's refresh of the summary keeps it.
    outcome = gr.Markdown(elem_id="models-action")

    # defs, not partials: Gradio passes the request to a parameter annotated gr.Request
    def load_model(model_id, request: gr.Request):
        yield from h.load(hub, model_id, request)

    def unload_model(model_id, request: gr.Request):
        return h.unload(hub, model_id, request)

    def states(request: gr.Request):
        return h.refresh(hub, request)

    def reveal(request: gr.Request):  # on page load: this visitor's buttons and view
        return [h.controls(hub, request), *h.refresh(hub, request)]

    load.click(load_model, choice, [grid, outcome], concurrency_limit=None, api_name="load_model")
    unload.click(unload_model, choice, [grid, outcome], api_name="unload_model")
    # Keeps states fresh (a model loading from the Chat tab, an eviction) while the tab is open.
    gr.Timer(2.0).tick(states, None, [grid, info], queue=False, show_progress="hidden", api_name="model_states")
    return {"table": grid, "reveal": dict(fn=reveal, inputs=None, outputs=[manage, grid, info])}
