"""Share conversation (save a transcript, give a read-only link) and the read-only view of a link."""
from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

import gradio as gr

from ..compare import MAX_MODELS
from ..hub import Hub
from .widgets import literal

LINK_PARAM = "transcript"


def page_base(request: gr.Request | None) -> str:
    """The page's own address without its query (the Referer of the event), or '' for a relative link."""
    headers = dict(getattr(request, "headers", {}) or {}) if request is not None else {}
    referer = headers.get("referer", "")
    if not referer:
        return ""
    parts = urlsplit(referer)
    return urlunsplit((parts.scheme, parts.netloc, parts.path or "/", "", ""))


def share(hub: Hub, payload: dict, request: gr.Request | None) -> str:
    """Save `payload` ({kind, panes: [{model, messages, footer}]}); Markdown with the read-only link."""
    if hub.votes is None:
        return "⚠️ Sharing needs the hub's database (serve --votes)."
    if not any(pane["messages"] for pane in payload.get("panes", [])):
        return "Nothing to share yet: start a conversation first."
    token = hub.votes.save_transcript(payload)
    link = f"{page_base(request)}?{LINK_PARAM}={token}"
    return f"Read-only link: [{link}]({link})"


def chat_transcript(session) -> dict:
    """The Chat tab's conversation as one pane; each reply keeps its signature (model and stats)."""
    from .chat_handlers import render

    models = list(dict.fromkeys(t.model for t in session.turns if t.role == "assistant" and t.model))
    return {"kind": "chat", "panes": [{"model": ", ".join(models) or "chat", "messages": render(session),
                                       "footer": ""}]}


def transcript_view(hub: Hub, token: str):
    """(header, 4 chatbots) for the Shared tab; unused chatbots are hidden."""
    data = hub.votes.transcript(token) if hub.votes is not None and token else None
    if data is None:
        return [f"⚠️ No shared conversation has the id “{literal(token)}”.",
                *[gr.update(value=[], visible=False) for _ in range(MAX_MODELS)]]
    panes = data.get("panes", [])[:MAX_MODELS]
    what = "conversation" if len(panes) == 1 else f"comparison of {len(panes)} models"
    header = f"### Shared {what} (read-only) · saved {data['created_at'][:16].replace('T', ' ')} UTC"
    chatbots = [gr.update(value=p["messages"], label=p["model"] + (f" · {p['footer']}" if p.get("footer") else ""),
                           visible=True) for p in panes]
    chatbots += [gr.update(value=[], visible=False) for _ in range(MAX_MODELS - len(panes))]
    return [header, *chatbots]
