"""Chat tab layout: model dropdown, system prompt, sampling controls, the conversation and its buttons."""
from __future__ import annotations

import functools

import gradio as gr

from ..hub import Hub
from . import chat_handlers as h
from . import inspector_handlers, share_handlers
from . import tools as tool_text
from .inspector import build_inspector
from .widgets import message_row


def build_chat_tab(hub: Hub, default_model: str | None) -> dict:
    defaults = h.defaults_for(hub, default_model) if default_model else h.GenerationParams()
    session = gr.State(h.new_session, delete_callback=lambda s: s.stop())  # a closed tab stops its reply
    with gr.Row():
        model = gr.Dropdown(hub.choices(), value=default_model, label="Model", scale=3, elem_id="chat-model")
        thinking = gr.Checkbox(True, label="Thinking", elem_id="chat-thinking", scale=1,
                               info="Passes enable_thinking to templates that have it.")
        status = gr.Markdown(elem_id="chat-status")
    chatbot = gr.Chatbot(label="Conversation", height=480, buttons=["copy", "copy_all"], elem_id="chatbot",
                         render_markdown=True, placeholder="Pick a model and say hello.")
    message, send, stop = message_row("chat", "Message (Enter to send)")
    with gr.Row():
        retry = gr.Button("Regenerate", size="sm", elem_id="chat-retry")
        undo = gr.Button("Undo", size="sm", elem_id="chat-undo")
        clear = gr.Button("Clear", size="sm", elem_id="chat-clear")
        share = gr.Button("Share conversation", size="sm", elem_id="chat-share")
    link = gr.Markdown(elem_id="chat-link")
    with gr.Accordion("System prompt and sampling", open=False):
        system = gr.Textbox(label="System prompt", lines=2, elem_id="chat-system")
        custom = gr.Checkbox(False, label="Use these sampling settings (off: the model's own defaults)")
        with gr.Row():
            temperature = gr.Slider(0, 2, value=defaults.temperature, step=0.05, label="temperature")
            top_p = gr.Slider(0.05, 1, value=defaults.top_p, step=0.05, label="top_p")
            top_k = gr.Slider(0, 200, value=defaults.top_k, step=1, label="top_k")
        with gr.Row():
            repetition_penalty = gr.Slider(0.8, 2, value=defaults.repetition_penalty, step=0.01,
                                           label="repetition_penalty")
            max_new_tokens = gr.Slider(1, 4096, value=defaults.max_new_tokens, step=1, label="max_new_tokens")
            seed = gr.Number(-1, label="seed (-1: random)", precision=0)
            greedy = gr.Checkbox(defaults.greedy, label="greedy")
    with gr.Accordion("Tools", open=False, elem_id="chat-tools-accordion"):
        tools = gr.Textbox(label="Tool definitions", lines=6, max_lines=20, elem_id="chat-tools",
                           info=tool_text.TOOLS_INFO, placeholder=tool_text.EXAMPLE)
        tools_status = gr.Markdown(tool_text.tools_status(""), elem_id="chat-tools-status")
        with gr.Row():
            result = gr.Textbox(label="Tool result", lines=2, max_lines=10, scale=5, elem_id="chat-tool-result",
                                placeholder="What the called function returned (answers the oldest call waiting)")
            send_result = gr.Button("Send tool result", size="sm", scale=1, elem_id="chat-tool-send")
    controls = [custom, temperature, top_p, top_k, repetition_penalty, max_new_tokens, seed, greedy]
    inspector = build_inspector("chat")
    prompt_io = dict(fn=functools.partial(inspector_handlers.chat_prompt, hub),
                     inputs=[session, model, system, max_new_tokens, thinking, tools], outputs=inspector["outputs"])
    inspector["show"].click(**prompt_io, api_name="chat_prompt")
    inspector["accordion"].expand(**prompt_io, api_visibility="private")

    reply_io = dict(fn=h.reply_for(hub), inputs=[session, model, system, *controls, thinking, tools],
                    outputs=[session, chatbot, status])
    append_io = dict(fn=h.user_message_for(hub), inputs=[message, session, tools, model],
                     outputs=[message, session, chatbot, status],
                     queue=False)
    result_io = dict(fn=h.tool_result_for(hub), inputs=[result, session], outputs=[result, session, chatbot, status],
                     queue=False)
    submitted = [message.submit(**append_io, api_name="send").then(**reply_io, api_name="reply"),
                 send.click(**append_io, api_visibility="private").then(**reply_io, api_visibility="private"),
                 send_result.click(**result_io, api_name="tool_result").then(**reply_io, api_visibility="private")]
    tools.change(tool_text.tools_status, tools, tools_status, queue=False, api_visibility="private")
    regenerated = retry.click(h.retry, session, [session, chatbot], queue=False, api_name="retry").then(
        **reply_io, api_visibility="private")
    streaming = [*submitted, regenerated]
    # Stop cancels the request's token rather than the Gradio event: the engine ends the worker within
    # a step and the stream finishes itself, so the reply keeps its stats line, marked "cancelled".
    stop.click(h.stop, session, session, queue=False, api_name="stop")
    undo.click(h.undo, session, [message, session, chatbot], cancels=streaming, queue=False, api_name="undo")
    clear.click(h.clear, session, [session, chatbot, status], cancels=streaming, queue=False, api_name="clear")

    def share_conversation(state: h.ChatSession, request: gr.Request):  # a def: Gradio injects the request
        return share_handlers.share(hub, share_handlers.chat_transcript(state), request)

    share.click(share_conversation, session, link, queue=False, api_name="chat_share")
    model.change(functools.partial(h.template_controls, hub), model, [thinking, tools, result],
                 show_progress="hidden", api_visibility="private")
    model.change(functools.partial(h.defaults_view, hub), model,
                 [temperature, top_p, top_k, repetition_penalty, max_new_tokens, greedy], queue=False,
                 api_visibility="private")
    return {"model": model, "thinking": thinking, "tools": tools, "chatbot": chatbot, "session": session,
            "message": message, "status": status}
