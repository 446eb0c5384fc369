"""Leaderboard tab layout: the ratings table, the plot of ratings with intervals, the win-rate matrix."""
from __future__ import annotations

import functools

import gradio as gr

from ..hub import Hub
from . import leaderboard_handlers as h


def build_leaderboard_tab(hub: Hub) -> dict:
    with gr.Row():
        summary = gr.Markdown(elem_id="leaderboard-summary")
        refresh = gr.Button("Refresh", size="sm", scale=0, elem_id="leaderboard-refresh")
    table = gr.Dataframe(headers=h.COLUMNS, interactive=False, elem_id="leaderboard-table")
    plot = gr.HTML(elem_id="leaderboard-plot")
    gr.Markdown("Pairwise win rates (ties count half): the share of its battles against the column model that "
                "the row model won.")
    grid = gr.Dataframe(interactive=False, elem_id="leaderboard-matrix")
    outputs = [summary, table, plot, grid]
    update = dict(fn=functools.partial(h.refresh, hub), inputs=None, outputs=outputs, show_progress="hidden")
    refresh.click(**update, api_name="leaderboard")
    return {"outputs": outputs, "update": update}
