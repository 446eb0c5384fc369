"""One process serves the Gradio app, the OpenAI-compatible API and /metrics; `--share` adds a tunnel.

The tunnel is made on a background thread after the server is up, so a missing frpc binary, a blocked
network or a dead share server costs one line of output and never delays or stops local serving.
"""
from __future__ import annotations

import secrets
import sys
import threading
from pathlib import Path

import gradio as gr
import uvicorn
from fastapi import FastAPI

from .api import build_api_router
from .hub import Hub

TUNNEL_WAIT_S = 60  # give up on the tunnel after this; local serving is unaffected either way
# Gradio's queue looks for new events every 1 ms and for progress every 10 ms, whether or not anything
# waits: about 5% of a core on an idle 2-core machine, and 3% off a decode running beside it. Every 5 ms
# and 50 ms cost a fifth of that; a queued request starts at most 4 ms later.
QUEUE_POLL_S = 0.005
PROGRESS_POLL_S = 0.05


def build_server(hub: Hub, blocks: gr.Blocks) -> FastAPI:
    app = FastAPI(title="Chat demo hub", docs_url=None, redoc_url=None)
    app.include_router(build_api_router(hub))
    auth = (lambda user, password: hub.access.check_user(user, password)) if hub.access.users else None
    calm_queue(blocks)
    return gr.mount_gradio_app(app, blocks, path="", auth=auth, auth_message="Log in to use this demo hub.",
                               show_error=True)


def calm_queue(blocks: gr.Blocks) -> None:
    """Slow the queue's idle polling (QUEUE_POLL_S); a Gradio without these attributes fails here, loudly."""
    queue = blocks._queue
    for name, seconds in (("sleep_when_free", QUEUE_POLL_S), ("progress_update_sleep_when_free", PROGRESS_POLL_S)):
        if not isinstance(getattr(queue, name, None), float):
            raise RuntimeError(f"gradio's queue has no {name}; update demo/server.py for this gradio version")
        setattr(queue, name, seconds)


def run(hub: Hub, blocks: gr.Blocks, host: str, port: int, share: bool = False,
        share_server: str | None = None) -> int:
    app = build_server(hub, blocks)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning",
                                           timeout_graceful_shutdown=5))
    local = f"http://{host}:{port}"
    print(f"Serving {len(hub.registry)} models on {local} (API: {local}/v1)", flush=True)
    if share:
        warn_if_open(hub)
        threading.Thread(target=_share_when_up, args=(server, host, port, share_server), daemon=True,
                         name="share-tunnel").start()
    server.run()
    return 0


def warn_if_open(hub: Hub) -> None:
    if not hub.access.users:
        print("WARNING: sharing publicly without --auth: anyone with the link can use this hub and its "
              "models (and the API" + (", which needs a key)" if hub.access.api_keys else ")") + ".",
              file=sys.stderr, flush=True)


def _share_when_up(server: uvicorn.Server, host: str, port: int, share_server: str | None) -> None:
    import time

    while not server.started and not server.should_exit:
        time.sleep(0.1)
    if server.should_exit:
        return
    print(open_tunnel("127.0.0.1" if host in ("0.0.0.0", "::") else host, port, share_server), flush=True)


def open_tunnel(host: str, port: int, share_server: str | None, wait_s: float = TUNNEL_WAIT_S) -> str:
    """One line: the public URL, or why there is none (local serving goes on either way)."""
    from gradio import networking

    result: dict = {}

    def attempt():
        try:
            result["url"] = networking.setup_tunnel(host, port, secrets.token_urlsafe(32), share_server, None)
        except BaseException as e:  # offline, frpc missing or blocked, share server down
            result["error"] = e

    worker = threading.Thread(target=attempt, daemon=True, name="share-attempt")
    worker.start()
    worker.join(wait_s)
    local = f"http://{host}:{port}"
    if "url" in result:
        url = result["url"]
        if share_server:
            url = url.replace("https://", "http://", 1)  # a self-hosted frp server speaks http by default
        return f"Public link: {url}"
    reason = _reason(result.get("error")) if "error" in result else f"no answer within {wait_s:g} s"
    return f"Share link unavailable ({reason}); still serving locally on {local}"


def _reason(error: BaseException) -> str:
    from gradio.tunneling import BINARY_PATH

    cause = error.__cause__ or error.__context__
    text = f"{type(error).__name__}: {error}"
    if cause and str(cause) != str(error):
        text = f"{error}: {type(cause).__name__}: {cause}"
    if not Path(BINARY_PATH).exists() and "Gradio API Server" not in str(error):
        text = f"the tunnel program {BINARY_PATH} is missing and could not be fetched: {text}"
    return " ".join(text.split())[:400]
