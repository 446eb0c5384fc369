"""Run one-off torch work on a thread of its own, so that at most one OpenMP pool is alive at a time.

libgomp gives every thread that starts a parallel region its own pool of worker threads and keeps
that pool until the thread ends. Once the pools hold more threads than there are cores, an idle
worker spins only 100 times before it sleeps, so each of the ~1,000 parallel regions of a decode step
pays a futex wake-up. Measured on 2 cores: a SmolLM2 decode step took 38 ms on a thread started
while no other pool was alive, and 55-65 ms on the same kind of thread once the main thread had
loaded the model. So loading (and any other one-off work) runs here, on a thread that ends and takes
its pool with it; decoding runs on the engine's own threads, which end when idle.
"""
from __future__ import annotations

import threading


def on_own_thread(fn, *args, **kwargs):
    """`fn(*args, **kwargs)` run on a fresh thread that ends with it; its result, or its exception."""
    box: dict = {}

    def run():
        try:
            box["value"] = fn(*args, **kwargs)
        except BaseException as e:  # handed to the caller, who sees it as if fn had run there
            box["error"] = e

    thread = threading.Thread(target=run, name=f"torch-{getattr(fn, '__name__', 'work')}")
    thread.start()
    thread.join()
    if "error" in box:
        raise box.pop("error")
    return box["value"]
