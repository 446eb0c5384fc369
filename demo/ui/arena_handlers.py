"""Arena tab behaviour: two anonymous models per round, one vote, then the names.

Until the vote nothing on screen names a model: panes are "Model A" and "Model B", the stats line is
left out (speed gives models away, so does a Thinking block's duration) and errors are shown without the
model's id. The Thinking switch applies to the sides whose template has a thinking variable; which side it
could not reach is told with the names, after the vote (the vote stores each side's template variables).
"""
from __future__ import annotations

import random
from dataclasses import dataclass

import gradio as gr

from ..arena import LABELS, ArenaError, ArenaRound, cast_vote, draw_pair
from ..compare import Comparison, own_defaults
from ..hub import Hub, ui_client
from ..votes import VoteError
from .chat_handlers import charge, too_long_for
from .compare_handlers import UI_TICK_S
from .thinking import reply_view, thinking_options

SIDES = ("A", "B")


@dataclass
class ArenaSession:
    round: ArenaRound | None = None
    comparison: Comparison | None = None
    errors: tuple = (None, None)  # the last reply's error per side (shown unnamed before the vote)
    paid: bool = False  # the last send was charged to the rate limit (see chat_handlers.charge)
    thinking: bool = True  # the Thinking switch of the last answers

    def stop(self) -> None:
        """Stop both answers; what they wrote so far stays and can be voted on."""
        if self.comparison is not None:
            self.comparison.cancel_all()

    def discard(self) -> None:
        """End the running answers and drop them (a new message, a new round, a closed tab)."""
        self.stop()
        self.comparison = None


def new_session() -> ArenaSession:
    return ArenaSession()


def start_round(hub: Hub, session: ArenaSession, rng: random.Random | None = None) -> None:
    session.discard()
    session.round = ArenaRound(draw_pair(hub.arena_ids(), rng))
    session.comparison, session.errors = None, (None, None)


def chat_view(session: ArenaSession, side: int, live=None):
    """The side's Chatbot: its conversation, labelled with the model's name only after the vote."""
    r = session.round
    turns = []
    for t in (r.conversations[side] if r else []):  # judges see the thinking collapsed, apart from the answer
        turns += (reply_view(t["content"], t.get("reasoning_content", ""), done=True) if t["role"] == "assistant"
                  else [t])
    if live is not None:  # no duration on the block: speed gives models away
        answer = live.text or ("…" if not live.finished and not live.reasoning else "")
        turns += reply_view(answer, live.reasoning, None, live.thinking_s is not None or live.finished)
    if turns and turns[-1]["role"] == "assistant" and not turns[-1]["content"] and session.errors[side]:
        turns[-1] = {"role": "assistant", "content": "⚠️ This model failed to answer."}
    label = f"Model {SIDES[side]}" + (f": {r.models[side]}" if r and r.vote else "")
    return gr.update(value=turns, label=label)


def views(session: ArenaSession, live=None) -> list:
    return [chat_view(session, k, live[k] if live else None) for k in range(2)]


def result_text(session: ArenaSession) -> str:
    r = session.round
    if r is None or r.vote is None:
        return ""
    return (f"**Your vote: {LABELS[r.vote]}.** Model A was **{r.models[0]}**, Model B was **{r.models[1]}**. "
            f"{unswitched(session)}Press *New round* for another pair.")


def unswitched(session: ArenaSession) -> str:
    """After the vote: the models the Thinking switch (off for the last answers) could not reach."""
    r = session.round
    missed = [m for m, s in zip(r.models, r.settings) if not s.get("chat_template_kwargs")]
    if session.thinking or not missed:
        return ""
    return (f"Thinking was off; the template of {' and '.join(missed)} has no thinking switch, so "
            f"{'it' if len(missed) == 1 else 'they'} answered as usual. ")


def cannot_play(hub: Hub, error: ArenaError) -> str:
    return hub.too_few_models("The Arena", arena=True) or f"⚠️ {error}"


def new_round(hub: Hub, session: ArenaSession):
    try:
        start_round(hub, session)
    except ArenaError as e:
        return session, *views(session), "", cannot_play(hub, e)
    return session, *views(session), "", "New round: two anonymous models were drawn. Say something."


def user_message(hub: Hub, text: str, session: ArenaSession, request=None):
    session.discard()
    text = (text or "").strip()
    problem = "Type a message first." if not text else hub.over_rate(request)
    if not problem:
        problem = too_long_for(hub, text)
    if not problem and session.round is not None and session.round.vote is not None:
        problem = "This round has its vote; press New round to play again."
    if not problem and session.round is None:
        try:
            start_round(hub, session)
        except ArenaError as e:
            problem = f"{cannot_play(hub, e)} Nothing was sent."
    if problem:
        return text, session, *views(session), problem
    for conversation in session.round.conversations:
        conversation.append({"role": "user", "content": text})
    session.paid = True
    return "", session, *views(session), ""


def user_message_for(hub: Hub):
    """`user_message` with the request, which Gradio passes to a parameter annotated gr.Request."""
    def append(text: str, session: ArenaSession, request: gr.Request):
        return user_message(hub, text, session, request)
    return append


def reply(hub: Hub, session: ArenaSession, request=None, thinking: bool = True):
    """Stream both sides (each model's own defaults, the Thinking switch where its template has a thinking
    variable); yields (session, chat A, chat B, status)."""
    r = session.round
    if r is None or r.vote is not None or any(not c or c[-1]["role"] != "user" for c in r.conversations):
        yield session, *views(session), gr.skip()  # nothing was sent: the reason on the status line stays
        return
    refused = charge(hub, session, request)
    if refused:
        yield session, *views(session), refused.replace("Nothing was sent.", "No reply was made.")
        return
    session.thinking = bool(thinking)
    session.comparison = comparison = Comparison(
        hub.manager.get, [(m, list(c)) for m, c in zip(r.models, r.conversations)], own_defaults,
        lambda loaded: thinking_options(loaded, thinking))
    r.streaming, r.finish = True, [None, None]
    try:
        panes = comparison.start().snapshot()
        for panes in comparison.stream(UI_TICK_S):
            yield session, *views(session, panes), "Both models are answering…"
        if session.comparison is not comparison:  # a new message or round replaced it: nothing to keep
            return
        for side, pane in enumerate(panes):
            hub.metrics.finished(r.models[side], pane, ui_client(request))
            r.conversations[side].append({"role": "assistant", "content": pane.text,
                                          **({"reasoning_content": pane.reasoning} if pane.reasoning else {})})
            r.settings[side], r.finish[side] = settings_of(pane), pane.finish_reason
        session.errors = tuple(p.error if p.finish_reason == "error" else None for p in panes)
    finally:
        r.streaming = False
    failed = [SIDES[k] for k, e in enumerate(session.errors) if e]
    note = (f"⚠️ Model {' and '.join(failed)} failed to answer; press New round." if failed
            else "Both answers are in: vote, or keep chatting.")
    yield session, *views(session), note


def settings_of(pane) -> dict:
    """What a side generated with, as the vote stores it: sampling, and the template variables it got."""
    return {**pane.params, **({"chat_template_kwargs": pane.template_kwargs} if pane.template_kwargs else {})}


def stop(session: ArenaSession):
    session.stop()
    return session


def vote(hub: Hub, session: ArenaSession, winner: str):
    """Store the vote, then reveal the names: (session, chat A, chat B, result, status)."""
    if session.round is None:
        return session, *views(session), "", "Start a round first: send a message."
    if hub.votes is None:
        return session, *views(session), "", "⚠️ Votes need the hub's database (serve --votes)."
    try:
        stored = cast_vote(hub.votes, session.round, winner)
    except VoteError as e:
        return session, *views(session), result_text(session), f"⚠️ {e}"
    return session, *views(session), result_text(session), f"Vote #{stored.id} saved."

