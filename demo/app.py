"""The Gradio app: `build_app(hub)` returns Blocks, one builder per tab; `serve` launches it."""
from __future__ import annotations

import logging
import sys

import gradio as gr

from .hub import Hub
from .manager import ModelManager
from .registry import load_registry
from .ui import links
from .ui.arena_tab import build_arena_tab
from .ui.chat_tab import build_chat_tab
from .ui.compare_tab import build_compare_tab
from .ui.leaderboard_tab import build_leaderboard_tab
from .ui.models_tab import build_models_tab
from .ui.shared_tab import build_shared_tab
from .votes import VoteStore, votes_path

log = logging.getLogger(__name__)
TITLE = "Chat demo hub"


def build_app(hub: Hub) -> gr.Blocks:
    default = hub.registry.default_id
    with gr.Blocks(title=TITLE) as app:
        gr.Markdown(f"## {TITLE}")
        with gr.Tabs(elem_id="tabs") as tabs:
            with gr.Tab("Chat", id="chat"):
                chat = build_chat_tab(hub, default)
            with gr.Tab("Compare", id="compare"):
                compare = build_compare_tab(hub)
            with gr.Tab("Arena", id="arena"):
                arena = build_arena_tab(hub)
            with gr.Tab("Leaderboard", id="leaderboard") as leaderboard_tab:
                leaderboard = build_leaderboard_tab(hub)
            with gr.Tab("Models", id="models"):
                models = build_models_tab(hub)
            with gr.Tab("Shared", id="shared", visible=False) as shared_tab:
                shared = build_shared_tab()
        # The leaderboard reads the database whenever it is shown and after every vote.
        leaderboard_tab.select(**leaderboard["update"], api_visibility="private")
        for voted in arena["voted"]:
            voted.then(**leaderboard["update"], api_visibility="private")

        def apply_link(request: gr.Request):  # a def, not a partial: Gradio injects the request by annotation
            return links.on_load(hub, dict(request.query_params))

        app.load(apply_link, None, [tabs, chat["model"], chat["status"], compare["models"],
                                    compare["status"], arena["status"], shared_tab,
                                    shared["header"], *shared["chatbots"]], queue=False, api_visibility="private")
        app.load(**models["reveal"], queue=False, api_visibility="private")
    return app


def make_hub(registry_path=None, memory_budget_gb: float | None = None, votes=None) -> Hub:
    registry = load_registry(registry_path)
    budget = int(memory_budget_gb * 2**30) if memory_budget_gb else None
    return Hub(registry, ModelManager(registry, budget), votes=VoteStore(votes_path(votes)))


def serve(args) -> int:
    from .auth import build_access
    from .server import run

    hub = make_hub(args.registry, args.memory_budget_gb, getattr(args, "votes", None))
    hub.set_limits(limits_from_args(hub.registry.limits, args))
    hub.access = build_access(args.auth, args.auth_file, args.api_key)
    hub.trusted_proxies = tuple(getattr(args, "trusted_proxies", None) or ())
    hub.admins = admins_from_args(hub, args)
    hub.local_only = is_loopback(args.host) and not args.share and not hub.trusted_proxies
    for state in hub.manager.states():
        if state.status == "unavailable":
            print(f"note: {state.id} is unavailable: {state.detail}", file=sys.stderr)
    if args.preload and hub.registry.default_id:
        hub.manager.get(hub.registry.default_id)
    app = build_app(hub)
    # Several users at once; each model still serves one generation at a time (LoadedModel.lock), and
    # the Gradio queue itself is bounded so a crowd gets "queue full" instead of an endless wait.
    app.queue(default_concurrency_limit=16, max_size=64)
    print(f"Votes and shared transcripts: {hub.votes.path}", flush=True)
    return run(hub, app, args.host, args.port, share=args.share, share_server=args.share_server)


def admins_from_args(hub: Hub, args) -> frozenset:
    from .auth import AuthError

    admins = frozenset(getattr(args, "admin", None) or ())
    unknown = sorted(admins - set(hub.access.users))
    if unknown:
        raise AuthError(f"--admin {', '.join(unknown)}: not a user of --auth or --auth-file (an admin logs in "
                        "like any user)")
    return admins


def is_loopback(host: str) -> bool:
    import ipaddress

    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


LIMIT_ARGS = {"max_message_chars": "max_message_chars", "max_turns": "max_turns",
              "max_new_tokens": "max_new_tokens", "queue_size": "queue_size",
              "generation_timeout": "generation_timeout_s", "rate_limit": "requests_per_minute",
              "max_request_bytes": "max_request_bytes"}


def limits_from_args(limits, args):
    """The registry's `limits:` with the command line's values over them."""
    from .registry import Limits

    values = {field: getattr(args, arg) for arg, field in LIMIT_ARGS.items() if getattr(args, arg, None) is not None}
    return Limits.model_validate({**limits.model_dump(), **values})
