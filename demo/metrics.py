"""What the hub has been doing: counts per model and outcome, recent generations, memory.

Served as JSON at `/metrics`; a load test or an operator reads busy/cancelled counts and RSS there.
"""
from __future__ import annotations

import threading
import time
from collections import Counter, deque
from dataclasses import asdict

import psutil


class Metrics:
    def __init__(self, recent: int = 100):
        self.counts: Counter = Counter()  # (model, outcome) -> n; outcome: a finish reason or error code
        self.recent: deque = deque(maxlen=recent)
        self._lock = threading.Lock()

    def count(self, model: str, outcome: str) -> None:
        with self._lock:
            self.counts[(model, outcome)] += 1

    def finished(self, model: str, chunk, client: str = "") -> None:
        """Count one generation: an engine Chunk, or anything with its finish_reason, text and stats (a
        Compare or Arena pane), from the API and every UI tab alike."""
        code = getattr(chunk, "code", None)
        outcome = code if chunk.finish_reason == "error" and code else chunk.finish_reason
        stats = asdict(chunk.stats) if getattr(chunk, "stats", None) is not None else {}
        with self._lock:
            self.counts[(model, outcome)] += 1
            self.recent.append({"model": model, "finish_reason": chunk.finish_reason, "code": code,
                                "client": client, "at": time.time(), "text_chars": len(chunk.text or ""),
                                **stats})

    def snapshot(self, manager) -> dict:
        with self._lock:
            counts: dict = {}
            for (model, outcome), n in self.counts.items():
                counts.setdefault(model, {})[outcome] = n
            recent = list(self.recent)
        gates = {m.id: {"in_flight": m.gate.in_flight, "rejected_busy": m.gate.rejected, "engine": m.engine,
                        "decode_plan": m.decode_plan,
                        "decode": m.plan.as_dict() if getattr(m, "plan", None) else None}
                 for m in manager.loaded_models()}
        return {"rss_bytes": psutil.Process().memory_info().rss, "counts": counts, "models": gates,
                "recent": recent}
