"""What every UI tab and API route shares: the registry, the model manager, and helpers over them."""
from __future__ import annotations

import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Iterator

from .manager import ERROR, UNAVAILABLE, ModelManager, ModelState
from .registry import Registry
from .votes import VoteStore


@dataclass
class Hub:
    registry: Registry
    manager: ModelManager
    options: dict = field(default_factory=dict)
    votes: VoteStore | None = None  # arena votes and shared transcripts

    def choices(self) -> list[tuple[str, str]]:
        """(label, id) pairs for model dropdowns, every registry entry."""
        return [(f"{e.name} ({e.id})", e.id) for e in self.registry]

    def available_ids(self) -> list[str]:
        """Models that can be used now: weights present and no failed load."""
        return [s.id for s in self.manager.states() if s.status not in (UNAVAILABLE, ERROR)]

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
