"""Compare tab behaviour: one conversation per chosen model, the same user turns sent to all.

Each model sees the shared user messages and its own earlier replies. A reply round is a `Comparison`
(a thread and a CancelToken per model); the per-pane Stop buttons cancel one model only.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import gradio as gr

from ..compare import MAX_MODELS, Comparison, Pane, own_defaults, shared_settings
from ..hub import Hub, ui_client
from .chat_handlers import charge, sampling, too_long_for
from .templates import known_traits
from .thinking import reply_view, switch_state_of_set, thinking_options
from .widgets import literal

MIN_MODELS = 2
# Screen updates per pane: 4 Chatbots re-rendered 10 times a second kept a small CPU's browser too busy to
# take a click on Stop; 4 a second still reads as streaming.
UI_TICK_S = 0.25


@dataclass
class CompareSession:
    models: list[str] = field(default_factory=list)
    turns: dict[str, list[dict]] = field(default_factory=dict)  # per model: {role, content[, error]}
    footers: dict[str, str] = field(default_factory=dict)  # per model: its last reply's stats line
    comparison: Comparison | None = None
    paid: bool = False  # the last send was charged to the rate limit (see chat_handlers.charge)
    thinking: bool = True  # the Thinking switch of the last round

    def stop(self) -> None:
        """End the running round and drop its results (a new message, Regenerate, Clear, a closed tab)."""
        if self.comparison is not None:
            self.comparison.cancel_all()
        self.comparison = None

    def reset(self, models: list[str]) -> None:
        self.stop()
        self.models = list(models)
        self.turns = {m: [] for m in models}
        self.footers = {m: "" for m in models}


def new_session() -> CompareSession:
    return CompareSession()


def check_models(hub: Hub, ids) -> str:
    """An error message for a bad model set, or ''."""
    ids = list(ids or [])
    unknown = [i for i in ids if i not in hub.registry]
    if unknown:
        return f"Unknown model {literal(', '.join(unknown))}; known: {', '.join(e.id for e in hub.registry)}."
    if not MIN_MODELS <= len(ids) <= MAX_MODELS:
        return f"Choose {MIN_MODELS} to {MAX_MODELS} models to compare (chosen: {len(ids)})."
    return ""


def for_model(turns: list[dict]) -> list[dict]:
    """What the model sees: roles and contents (reasoning apart), without failed (empty) replies."""
    return [{"role": t["role"], "content": t["content"],
             **({"reasoning_content": t["reasoning"]} if t.get("reasoning") else {})} for t in turns
            if t["role"] == "user" or t["content"]]


def displayed(turns: list[dict]) -> list[dict]:
    view = []
    for t in turns:
        answer = t["content"] or (f"⚠️ {t['error']}" if t.get("error") else "" if t.get("reasoning") else "…")
        if t["role"] == "assistant":
            view += reply_view(answer, t.get("reasoning", ""), t.get("thinking_s"), t.get("done"))
        else:
            view.append({"role": t["role"], "content": answer})
    return view


def pane_view(session: CompareSession, index: int, live: Pane | None = None):
    """(chatbot messages, stats line) of pane `index`; empty for unused slots."""
    if index >= len(session.models):
        return [], ""
    model = session.models[index]
    turns = list(session.turns[model])
    if live is not None:
        turns.append({"role": "assistant", "content": live.text, "reasoning": live.reasoning,
                      "thinking_s": live.thinking_s, "done": live.thinking_s is not None or live.finished,
                      "error": live.error if live.finish_reason == "error" else None})
        return displayed(turns), live.footer() + switch_note(live, session.thinking)
    return displayed(turns), session.footers.get(model, "")


# Compare's one Thinking switch applies to the models whose template has a thinking variable; the pane of a
# model without one says that its answer is the usual one.
NO_SWITCH_NOTE = " · the Thinking switch does not apply: this model's template has no thinking variable"


def switch_note(pane: Pane, thinking: bool) -> str:
    """The note on the stats line of a model the switch (off) could not reach, once its prompt was built."""
    return NO_SWITCH_NOTE if not thinking and pane.params and not pane.template_kwargs else ""


def views(session: CompareSession, live: list[Pane] | None = None) -> list:
    chats, footers = [], []
    for index in range(MAX_MODELS):
        chat, footer = pane_view(session, index, live[index] if live and index < len(live) else None)
        chats.append(chat)
        footers.append(footer)
    return [*chats, *footers]


def layout(ids):
    """Show one pane per chosen model, titled with its id."""
    ids = list(ids or [])
    columns = [gr.update(visible=k < max(len(ids), MIN_MODELS)) for k in range(MAX_MODELS)]
    chatbots = [gr.update(label=ids[k] if k < len(ids) else f"Model {k + 1}") for k in range(MAX_MODELS)]
    return [*columns, *chatbots]


def thinking_switch(hub: Hub, ids, set_for: list | None = None):
    """(the Thinking switch, the model set it is now for) for the chosen models: on while any of their templates
    has a thinking variable. The Dropdown reports a set a link chose twice; the second must not undo a choice
    the user made in between, so the same set again leaves the switch alone."""
    ids = list(ids or [])
    if ids == set_for:
        return gr.skip(), set_for
    interactive, info = switch_state_of_set({m: known_traits(hub, m) for m in ids if m in hub.registry})
    return gr.update(interactive=interactive, info=info, value=interactive), ids


def choice_status(hub: Hub, ids) -> str:
    """What is wrong with the user's choice, if anything (a link's own message is left alone)."""
    return check_models(hub, ids) if ids else ""


def user_message(hub: Hub, text: str, ids, session: CompareSession, request=None):
    """Append the user's message to every pane (a new model set starts a new conversation)."""
    session.stop()
    text, ids = (text or "").strip(), list(ids or [])
    too_few = hub.too_few_models("Compare")
    problem = ((too_few and f"{too_few} Nothing was sent.") or check_models(hub, ids)
               or ("Type a message first." if not text else "") or hub.over_rate(request))
    if not problem:
        problem = too_long_for(hub, text)
    if problem:
        return text, session, *views(session), problem
    if ids != session.models:
        session.reset(ids)
    for model in ids:
        session.turns[model].append({"role": "user", "content": text})
    session.paid = True
    return "", session, *views(session), ""


def user_message_for(hub: Hub):
    """`user_message` with the request, which Gradio passes to a parameter annotated gr.Request."""
    def append(text: str, ids, session: CompareSession, request: gr.Request):
        return user_message(hub, text, ids, session, request)
    return append


def reply(hub: Hub, session: CompareSession, own: bool, *controls, thinking: bool = True, request=None):
    """Stream every model's reply to the last user turn: yields (session, 4 chats, 4 stats lines, status).
    `thinking`: the Thinking switch, passed to the templates that have a thinking variable."""
    models = session.models
    if not models or any(not session.turns[m] or session.turns[m][-1]["role"] != "user" for m in models):
        yield session, *views(session), gr.skip()  # nothing was sent: the reason on the status line stays
        return
    refused = charge(hub, session, request)  # Regenerate all, or a reply started alone, is charged here
    if refused:
        yield session, *views(session), refused.replace("Nothing was sent.", "No reply was made.")
        return
    params_for = own_defaults if own else shared_settings(sampling(True, *controls))
    session.thinking = bool(thinking)
    session.comparison = comparison = Comparison(
        hub.manager.get, [(m, for_model(session.turns[m])) for m in models], params_for,
        lambda loaded: thinking_options(loaded, thinking))
    panes = comparison.start().snapshot()
    for panes in comparison.stream(UI_TICK_S):
        yield session, *views(session, panes), ""
    if session.comparison is not comparison:  # replaced meanwhile (Regenerate, a new message): not ours to keep
        return
    for model, pane in zip(models, panes):  # reached only when every pane finished
        hub.metrics.finished(model, pane, ui_client(request))
        session.turns[model].append({"role": "assistant", "content": pane.text, "reasoning": pane.reasoning,
                                     "thinking_s": pane.thinking_s, "done": True,
                                     "error": pane.error if pane.finish_reason == "error" else None})
        session.footers[model] = pane.footer() + switch_note(pane, session.thinking)
    yield session, *views(session), ""


def stop_pane(session: CompareSession, index: int):
    if session.comparison is not None:
        session.comparison.cancel(index)
    return session


def retry(session: CompareSession):
    """Regenerate: drop every pane's last reply; the reply step then runs again."""
    session.stop()
    for turns in session.turns.values():
        while turns and turns[-1]["role"] == "assistant":
            turns.pop()
    return session, *views(session)


def clear(session: CompareSession):
    session.reset(session.models)
    return session, *views(session), ""


def transcript(session: CompareSession) -> dict:
    return {"kind": "compare", "panes": [{"model": m, "messages": displayed(session.turns[m]),
                                          "footer": session.footers.get(m, "")} for m in session.models]}
