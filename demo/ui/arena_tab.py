"""Arena tab layout: Model A and Model B side by side, one input, four vote buttons, New round."""
from __future__ import annotations

import functools

import gradio as gr

from ..arena import LABELS
from ..hub import Hub
from . import arena_handlers as h
from .widgets import message_row

ARENA_SWITCH_INFO = ("Passes enable_thinking (or the template's own variable) to the sides whose template has "
                     "one; a side without one answers as usual (told after the vote, with the names).")


def build_arena_tab(hub: Hub) -> dict:
    session = gr.State(h.new_session, delete_callback=lambda s: s.discard())
    gr.Markdown("Two models drawn at random answer anonymously. Chat, then vote: the names appear after "
                "your vote. Votes feed the Leaderboard.")
    with gr.Row(equal_height=True):
        chatbots = [gr.Chatbot(label=f"Model {side}", height=420, elem_id=f"arena-chat-{side.lower()}")
                    for side in h.SIDES]
    message, send, stop = message_row("arena", "Message for both models (Enter to send)")
    with gr.Row():
        votes = {key: gr.Button(label, elem_id=f"arena-vote-{key.replace('_', '-')}") for key, label in LABELS.items()}
    with gr.Row():
        thinking = gr.Checkbox(True, label="Thinking", elem_id="arena-thinking", scale=1, info=ARENA_SWITCH_INFO)
        new_round = gr.Button("New round", elem_id="arena-new-round", scale=3)
    status = gr.Markdown(elem_id="arena-status")
    result = gr.Markdown(elem_id="arena-result")

    def reply(state, thinking_on: bool, request: gr.Request):  # Gradio passes the request
        yield from h.reply(hub, state, request, thinking=thinking_on)

    reply_io = dict(fn=reply, inputs=[session, thinking], outputs=[session, *chatbots, status],
                    concurrency_limit=None, show_progress="hidden")
    append_io = dict(fn=h.user_message_for(hub), inputs=[message, session],
                     outputs=[message, session, *chatbots, status], queue=False)
    streaming = [message.submit(**append_io, api_name="arena_send").then(**reply_io, api_name="arena_reply"),
                 send.click(**append_io, api_visibility="private").then(**reply_io, api_visibility="private")]
    stop.click(h.stop, session, session, queue=False, api_name="arena_stop")
    new_round.click(functools.partial(h.new_round, hub), session, [session, *chatbots, result, status],
                    cancels=streaming, queue=False, api_name="arena_new_round")
    voted = []
    for key, button in votes.items():
        # Votes go through the queue: the handler fsyncs, and the acknowledgement comes after the commit.
        voted.append(button.click(functools.partial(h.vote, hub, winner=key), session,
                                  [session, *chatbots, result, status], api_name=f"arena_vote_{key}"))
    return {"chatbots": chatbots, "thinking": thinking, "session": session, "voted": voted, "status": status}
