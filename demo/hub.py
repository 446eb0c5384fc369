"""What every UI tab and API route shares: the registry, the model manager, and helpers over them."""
from __future__ import annotations

import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Iterator

from .auth import Access, LoginThrottle
from .limits import RateLimiter
from .manager import ERROR, UNAVAILABLE, ModelManager, ModelState
from .metrics import Metrics
from .registry import Registry
from .votes import VoteStore


@dataclass
class Hub:
    registry: Registry
    manager: ModelManager
    options: dict = field(default_factory=dict)
    access: Access = field(default_factory=Access)  # users and API keys; empty: open
    metrics: Metrics = field(default_factory=Metrics)
    votes: VoteStore | None = None  # arena votes and shared transcripts
    trusted_proxies: tuple[str, ...] = ()  # --trusted-proxies: addresses whose X-Forwarded-For is believed
    admins: frozenset = frozenset()  # --admin: users who may load and unload models
    local_only: bool = True  # served on loopback only (no --share, no proxies): its one user manages models
    logins: LoginThrottle = field(default_factory=LoginThrottle)  # failed logins back off (UI and API)

    def __post_init__(self):
        self.rate = RateLimiter(self.registry.limits.requests_per_minute)

    def set_limits(self, limits) -> None:
        """New limits (e.g. from the command line), before models load: they take them on at load."""
        self.registry.limits = limits
        self.rate = RateLimiter(limits.requests_per_minute)

    def over_rate(self, request) -> str:
        """Charge one message to the UI client of `request`; the refusal text when it is over its rate."""
        from .limits import LimitError

        try:
            self.rate.charge(ui_client(request))
        except LimitError as e:
            return f"⚠️ {e} Nothing was sent."
        return ""

    def may_manage(self, request) -> bool:
        """Whether the caller of a UI event may load and unload models: an --admin user, or anyone on a
        loopback-only hub without --admin. Visitors of a public hub see the states only."""
        if self.admins:
            return getattr(request, "username", None) in self.admins
        return self.local_only

    def choices(self) -> list[tuple[str, str]]:
        """(label, id) pairs for model dropdowns, every registry entry."""
        return [(f"{e.name} ({e.id})", e.id) for e in self.registry]

    def available_ids(self) -> list[str]:
        """Models that can be used now: weights present and no failed load."""
        return [s.id for s in self.manager.states() if s.status not in (UNAVAILABLE, ERROR)]

    def arena_ids(self, available: list[str] | None = None) -> list[str]:
        """Available models the Arena draws from: all but the entries marked `arena: false`."""
        available = self.available_ids() if available is None else available
        return [i for i in available if i not in self.registry or self.registry.get(i).arena]

    def compare_default(self, available: list[str] | None = None) -> list[str]:
        """The models Compare opens with: the first two the Arena draws from (else the first two available)."""
        available = self.available_ids() if available is None else available
        pool = self.arena_ids(available)
        pool = pool if len(pool) >= 2 else available
        return pool[:2] if len(pool) >= 2 else []

    def too_few_models(self, tab: str, available: list[str] | None = None, arena: bool = False) -> str:
        """What Compare (or, with `arena`, the Arena) says when it has fewer than two models, else ''."""
        available = self.available_ids() if available is None else available
        pool = self.arena_ids(available) if arena else available
        if len(pool) >= 2:
            return ""
        have = f"{len(pool)} ({', '.join(pool)})" if pool else "none"
        left_out = [i for i in available if i not in pool]
        if left_out:
            have += f"; {', '.join(left_out)} {'is' if len(left_out) == 1 else 'are'} marked `arena: false`"
        file = self.registry.path.name if self.registry.path else "model_registry.yaml"
        return (f"⚠️ {tab} needs at least two available models; this hub has {have}. To add one, give "
                f"`{file}` another entry under `models:` with a `source:` (a local folder, a Hugging Face "
                f"repo or a GGUF file), or a preset of a model you have (`base:` its id, with its own "
                f"`generation:` and `system_prompt:`); see README, \"The registry\".")

    def load_with_progress(self, model_id: str, every_s: float = 0.5) -> Iterator[str | object]:
        """Yield "loading ... s" messages while `model_id` loads; the last item is the LoadedModel.

        Raises what the load raised (ModelLoadError, UnknownModelError).
        """
        self.registry.get(model_id)
        future: Future = Future()

        def load():
            try:
                future.set_result(self.manager.get(model_id))
            except BaseException as e:
                future.set_exception(e)

        threading.Thread(target=load, name=f"load-{model_id}", daemon=True).start()
        started = time.perf_counter()
        while not future.done():
            try:
                future.result(timeout=every_s)
            except TimeoutError:
                yield f"Loading **{model_id}**… {time.perf_counter() - started:.0f} s"
            except Exception:
                break
        yield future.result()

    def state(self, model_id: str) -> ModelState:
        return self.manager.state(model_id)


def login_keys(address: str, user: str | None) -> tuple[str, ...]:
    """The keys a login attempt is throttled under: its client address, and the user it names."""
    return (f"ip:{address}",) + ((f"user:{user}",) if user else ())


def ui_client(request) -> str:
    """The client a UI event counts against for the rate limit: its user, else its address."""
    if request is None:
        return "local"
    if getattr(request, "username", None):
        return f"user:{request.username}"
    client = getattr(request, "client", None)
    return f"ip:{client_address(getattr(client, 'host', None))}"


def client_address(host: str | None) -> str:
    """The caller's address: the socket's peer, which uvicorn replaces by the right-most untrusted
    X-Forwarded-For entry only for a connection from a trusted proxy (demo/server.py: forwarded_allow)."""
    return host or "unknown"
