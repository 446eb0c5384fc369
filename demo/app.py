"""The Gradio app: `build_app(hub)` returns Blocks, one builder per tab; `serve` launches it."""
from __future__ import annotations

import logging
import sys

import gradio as gr

from .hub import Hub
from .manager import ModelManager
from .registry import load_registry
from .ui.chat_tab import build_chat_tab
from .ui.models_tab import build_models_tab

log = logging.getLogger(__name__)
TITLE = "Chat demo hub"


def build_app(hub: Hub) -> gr.Blocks:
    default = hub.registry.default_id
    with gr.Blocks(title=TITLE) as app:
        gr.Markdown(f"## {TITLE}")
        with gr.Tab("Chat", id="chat"):
            build_chat_tab(hub, default)
        with gr.Tab("Models", id="models"):
            build_models_tab(hub)
    return app


def make_hub(registry_path=None, memory_budget_gb: float | None = None) -> Hub:
    registry = load_registry(registry_path)
    budget = int(memory_budget_gb * 2**30) if memory_budget_gb else None
    return Hub(registry, ModelManager(registry, budget))


def serve(args) -> int:
    hub = make_hub(args.registry, args.memory_budget_gb)
    for state in hub.manager.states():
        if state.status == "unavailable":
            print(f"note: {state.id} is unavailable: {state.detail}", file=sys.stderr)
    if args.preload and hub.registry.default_id:
        hub.manager.get(hub.registry.default_id)
    app = build_app(hub)
    # Several users at once; each model still serves one generation at a time (LoadedModel.lock).
    app.queue(default_concurrency_limit=16)
    print(f"Serving {len(hub.registry)} models on http://{args.host}:{args.port}", flush=True)
    app.launch(server_name=args.host, server_port=args.port, show_error=True, quiet=True)
    return 0
