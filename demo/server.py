"""One process serves the Gradio app, the OpenAI-compatible API and /metrics; `--share` adds a tunnel.

The tunnel is made on a background thread after the server is up, so a missing frpc binary, a blocked
network or a dead share server costs one line of output and never delays or stops local serving.
"""
from __future__ import annotations

import asyncio
import json
import secrets
import sys
import threading
from contextvars import ContextVar
from pathlib import Path

import gradio as gr
import uvicorn
from fastapi import FastAPI

from .api import build_api_router
from .hub import Hub, client_address, login_keys
from .limits import SHUTDOWN

TUNNEL_WAIT_S = 60  # give up on the tunnel after this; local serving is unaffected either way
# Gradio's queue looks for new events every 1 ms and for progress every 10 ms, whether or not anything
# waits: about 5% of a core on an idle 2-core machine, and 3% off a decode running beside it. Every 5 ms
# and 50 ms cost a fifth of that; a queued request starts at most 4 ms later.
QUEUE_POLL_S = 0.005
PROGRESS_POLL_S = 0.05
# On SIGTERM: open streams get their final message at once; connections still open after GRACE_S (Gradio's
# event streams never end by themselves) are closed, and the process is gone within EXIT_DEADLINE_S.
GRACE_S, EXIT_DEADLINE_S = 3, 8.0


def build_server(hub: Hub, blocks: gr.Blocks) -> FastAPI:
    app = FastAPI(title="Chat demo hub", docs_url=None, redoc_url=None)
    app.add_middleware(BodyLimit, limit=lambda: hub.registry.limits.max_request_bytes)
    app.add_middleware(ClientAddress)
    app.include_router(build_api_router(hub))
    auth = login_checker(hub) if hub.access.users else None
    calm_queue(blocks)
    return gr.mount_gradio_app(app, blocks, path="", auth=auth, auth_message="Log in to use this demo hub.",
                               show_error=True)


_client: ContextVar[str | None] = ContextVar("client", default=None)


class ClientAddress:
    """Keeps the request's client address (after uvicorn's proxy rule) where Gradio's login callback,
    which gets only a user and a password, can read it."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        client = scope.get("client") if scope["type"] == "http" else None
        token = _client.set(client[0] if client else None)
        try:
            return await self.app(scope, receive, send)
        finally:
            _client.reset(token)


def login_checker(hub: Hub):
    """Gradio's login callback: throttled per address and per user (auth.LoginThrottle), and PBKDF2 on a
    thread so a stream of guesses never stalls the event loop that serves everyone else."""
    from fastapi import HTTPException

    async def check(user: str, password: str) -> bool:
        keys = login_keys(client_address(_client.get()), user)
        wait = hub.logins.wait_s(*keys)
        if wait > 0:
            raise HTTPException(429, f"Too many failed logins: try again in {wait:.0f} s.",
                                headers={"Retry-After": str(max(1, round(wait)))})
        ok = await asyncio.to_thread(hub.access.check_user, user, password)
        (hub.logins.succeeded if ok else hub.logins.failed)(*keys)
        return ok

    return check


class BodyLimit:
    """Refuses a request body over the hub's cap (limits.max_request_bytes) with 413 in OpenAI's error JSON:
    by its Content-Length before reading it, or, for a chunked body, as soon as it passes the cap."""

    def __init__(self, app, limit):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        cap, headers = self.limit(), dict(scope["headers"])
        if b"content-length" in headers:
            length = headers[b"content-length"]
            if not length.isdigit() or int(length) > cap:
                return await _too_large(send, cap)
            return await self.app(scope, receive, send)
        if b"transfer-encoding" not in headers:  # no body
            return await self.app(scope, receive, send)
        held, size = [], 0
        while True:  # chunked: read up to the cap, then hand what was read to the app
            message = await receive()
            held.append(message)
            if message["type"] != "http.request":
                break
            size += len(message.get("body", b""))
            if size > cap:
                return await _too_large(send, cap)
            if not message.get("more_body"):
                break

        async def replay():
            return held.pop(0) if held else await receive()

        return await self.app(scope, replay, send)


async def _too_large(send, cap: int) -> None:
    body = json.dumps({"error": {"message": f"the request body is larger than this hub's limit of {cap:,} bytes",
                                 "type": "invalid_request_error", "param": None,
                                 "code": "request_too_large"}}).encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


def forwarded_allow(hub: Hub, share: bool) -> list[str]:
    """The proxies whose X-Forwarded-For is believed (uvicorn then takes its right-most untrusted entry):
    --trusted-proxies, and with --share the tunnel's local end, after which the share server appends the
    visitor's address. Empty: every caller is its socket address, whatever headers it sends."""
    return [*hub.trusted_proxies, *(("127.0.0.1", "::1") if share else ())]


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
    proxies = forwarded_allow(hub, share)
    server = _Server(uvicorn.Config(app, host=host, port=port, log_level="warning",
                                    timeout_graceful_shutdown=GRACE_S, proxy_headers=bool(proxies),
                                    forwarded_allow_ips=proxies or None))
    local = f"http://{host}:{port}"
    print(f"Serving {len(hub.registry)} models on {local} (API: {local}/v1)", flush=True)
    if share:
        warn_if_open(hub)
        threading.Thread(target=_share_when_up, args=(server, host, port, share_server), daemon=True,
                         name="share-tunnel").start()
    try:
        server.run()
    finally:
        _close_tunnels()
    return 0


class _Server(uvicorn.Server):
    """uvicorn, plus: the first SIGTERM or Ctrl-C ends every open generation with a final message
    (limits.SHUTDOWN), and the process exits within EXIT_DEADLINE_S even if something still holds it."""

    def handle_exit(self, sig, frame) -> None:
        if not SHUTDOWN.is_set():
            SHUTDOWN.set()
            print("Shutting down: ending open replies.", file=sys.stderr, flush=True)
            threading.Thread(target=_exit_after, args=(EXIT_DEADLINE_S,), daemon=True, name="exit-deadline").start()
        super().handle_exit(sig, frame)


def _exit_after(seconds: float) -> None:
    import os
    import time

    time.sleep(seconds)
    print(f"Still running {seconds:g} s after the signal: exiting now.", file=sys.stderr, flush=True)
    _close_tunnels()
    os._exit(0)


def _close_tunnels() -> None:
    """End the share tunnel's frpc process with the hub (Gradio does it at exit, which os._exit skips)."""
    try:
        from gradio.tunneling import CURRENT_TUNNELS
    except ImportError:
        return
    for tunnel in list(CURRENT_TUNNELS):
        try:
            tunnel.kill()
        except Exception:  # already gone
            pass


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
