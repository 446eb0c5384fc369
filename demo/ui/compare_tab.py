"""Compare tab layout: 2-4 models, one input, a pane per model with its own Stop and stats line."""
from __future__ import annotations

import functools

import gradio as gr

from ..compare import MAX_MODELS
from ..hub import Hub
from ..params import GenerationParams
from . import compare_handlers as h
from . import inspector_handlers, share_handlers
from .inspector import build_inspector
from .thinking import SWITCH_INFO
from .widgets import message_row


def build_compare_tab(hub: Hub) -> dict:
    session = gr.State(h.new_session, delete_callback=lambda s: s.stop())
    with gr.Row():
        models = gr.Dropdown(hub.choices(), multiselect=True, max_choices=MAX_MODELS,
                             label="Models to compare (2-4)", elem_id="compare-models", scale=3)
        thinking = gr.Checkbox(True, label="Thinking", elem_id="compare-thinking", scale=1, info=SWITCH_INFO)
    status = gr.Markdown(elem_id="compare-status")
    columns, chatbots, footers, stops = [], [], [], []
    with gr.Row(equal_height=True):
        for k in range(MAX_MODELS):
            with gr.Column(visible=k < h.MIN_MODELS, min_width=240, elem_id=f"compare-pane-{k}") as column:
                chatbots.append(gr.Chatbot(label=f"Model {k + 1}", height=420, buttons=["copy"],
                                           elem_id=f"compare-chat-{k}"))
                footers.append(gr.Markdown(elem_id=f"compare-stats-{k}"))
                stops.append(gr.Button("Stop", size="sm", variant="stop", elem_id=f"compare-stop-{k}"))
            columns.append(column)
    # no row-wide Stop: each pane has its own
    message, send, _ = message_row("compare", "One message for all models (Enter to send)", stop=False)
    with gr.Row():
        retry = gr.Button("Regenerate all", size="sm", elem_id="compare-retry")
        clear = gr.Button("Clear all", size="sm", elem_id="compare-clear")
        share = gr.Button("Share conversation", size="sm", elem_id="compare-share")
    link = gr.Markdown(elem_id="compare-link")
    with gr.Accordion("Sampling (shared by all models)", open=False):
        own = gr.Checkbox(True, label="Use each model's own defaults (off: these settings for every model)",
                          elem_id="compare-own")
        d = GenerationParams()
        with gr.Row():
            temperature = gr.Slider(0, 2, value=d.temperature, step=0.05, label="temperature")
            top_p = gr.Slider(0.05, 1, value=d.top_p, step=0.05, label="top_p")
            top_k = gr.Slider(0, 200, value=d.top_k, step=1, label="top_k")
            repetition_penalty = gr.Slider(0.8, 2, value=d.repetition_penalty, step=0.01, label="repetition_penalty")
        with gr.Row():
            max_new_tokens = gr.Slider(1, 4096, value=d.max_new_tokens, step=1, label="max_new_tokens",
                                       elem_id="compare-max-new-tokens")
            seed = gr.Number(-1, label="seed (-1: random)", precision=0)
            greedy = gr.Checkbox(d.greedy, label="greedy", elem_id="compare-greedy")
    controls = [temperature, top_p, top_k, repetition_penalty, max_new_tokens, seed, greedy]
    inspector = build_inspector("compare", models=True)
    models.change(inspector_handlers.model_choices, models, inspector["model"], queue=False,
                  api_visibility="private")
    prompt_io = dict(fn=functools.partial(inspector_handlers.compare_prompt, hub),
                     inputs=[session, inspector["model"], own, max_new_tokens, thinking],
                     outputs=inspector["outputs"])
    inspector["show"].click(**prompt_io, api_name="compare_prompt")
    inspector["accordion"].expand(**prompt_io, api_visibility="private")
    inspector["model"].input(**prompt_io, api_visibility="private")
    panes = [*chatbots, *footers]

    # change: also when a ?compare= link sets the models; input: only the user's own choice gets a verdict.
    models.change(h.layout, models, [*columns, *chatbots], queue=False, api_visibility="private")
    models.input(functools.partial(h.choice_status, hub), models, status, queue=False, api_visibility="private")
    switch_set = gr.State(None)  # the model set the Thinking switch was last set for
    models.change(functools.partial(h.thinking_switch, hub), [models, switch_set], [thinking, switch_set],
                  show_progress="hidden", api_visibility="private")
    # Gradio passes the request to a positional parameter annotated gr.Request (not after *args)
    def reply(state, own_settings, temp, p, k, penalty, budget, seed_value, argmax, thinking_on: bool = True,
              request: gr.Request = None):
        yield from h.reply(hub, state, own_settings, temp, p, k, penalty, budget, seed_value, argmax,
                           thinking=thinking_on, request=request)

    reply_io = dict(fn=reply, inputs=[session, own, *controls, thinking],
                    outputs=[session, *panes, status], concurrency_limit=None,
                    show_progress="hidden")  # panes show their own progress; overlays would make buttons jump
    append_io = dict(fn=h.user_message_for(hub), inputs=[message, models, session],
                     outputs=[message, session, *panes, status], queue=False)
    streaming = [message.submit(**append_io, api_name="compare_send").then(**reply_io, api_name="compare_reply"),
                 send.click(**append_io, api_visibility="private").then(**reply_io, api_visibility="private")]
    streaming.append(retry.click(h.retry, session, [session, *panes], queue=False, api_name="compare_retry")
                     .then(**reply_io, api_visibility="private"))
    for k, stop in enumerate(stops):
        stop.click(functools.partial(h.stop_pane, index=k), session, session, queue=False,
                   api_name=f"compare_stop_{k}")
    clear.click(h.clear, session, [session, *panes, status], cancels=streaming, queue=False, api_name="compare_clear")
    def share_conversation(state: h.CompareSession, request: gr.Request):  # a def: Gradio injects the request
        return share_handlers.share(hub, h.transcript(state), request)

    share.click(share_conversation, session, link, queue=False, api_name="compare_share")
    return {"models": models, "thinking": thinking, "status": status, "chatbots": chatbots, "session": session}
