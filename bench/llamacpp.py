"""The bench's llama.cpp part: the hub's llama.cpp engine against bare llama-cpp-python, run in turn.

Both run the same GGUF file on the same prompt ids with the same thread count, greedy. Measured: decode
tok/s of one stream, time to first token against a bare prefill, 1..N concurrent clients on the engine,
cold load, and the process's growth on load (and after a first reply, when the mapped weights have been
read) against the file's size.
"""
from __future__ import annotations

import statistics
import threading
import time
from pathlib import Path

from demo.engine import stream_ids
from demo.manager import ModelManager
from demo.memory import free_memory
from demo.registry import ModelEntry, Registry, Settings


def llama_bench(entry: ModelEntry, prompt_tokens: int, new_tokens: int, clients: tuple[int, ...], repeats: int,
                log=print) -> dict:
    from demo.backends.llamacpp import default_threads
    from .prompts import build_prompt, greedy, prompt_message, rss_bytes

    entry = entry.model_copy(update={"engine": "llama.cpp"})
    manager = ModelManager(Registry([entry], Settings(default_model=entry.id)))
    rss_before = rss_bytes()
    started = time.perf_counter()
    loaded = manager.get(entry.id)
    first_load_s = time.perf_counter() - started
    rss_after_load = rss_bytes()
    prompt = build_prompt(loaded, prompt_message(loaded, prompt_tokens), new_tokens)
    params = greedy(loaded, new_tokens)
    path = Path(loaded.backend.model.path)
    threads = default_threads()
    log(f"llama.cpp: {threads} threads, {path.name}; engine vs bare llama-cpp-python ...")
    run_engine(loaded, prompt, params, 4)  # warm-up: the mapped weights are read in
    rss_after_reply = rss_bytes()
    report = {"engine": loaded.engine, "decode_plan": loaded.decode_plan, "threads": threads,
              "file_bytes": path.stat().st_size, "first_load_s": first_load_s,
              "rss_growth_on_first_load_bytes": rss_after_load - rss_before,
              "rss_growth_after_first_reply_bytes": rss_after_reply - rss_before}
    bare = BareLlama(path, threads, loaded.context_length)
    try:
        bare.generate(prompt.input_ids, 4, prompt.stop_token_ids)
        report.update(single_stream(loaded, bare, prompt, params, repeats))
        report["ttft"] = first_token(loaded, bare, prompt, repeats)
    finally:
        bare.close()
    report["concurrency"] = concurrency(loaded, prompt, params, clients, repeats)
    free_memory()
    report["load"] = cold_loads(manager, entry, repeats)
    manager.unload(entry.id)
    return report


def run_engine(loaded, prompt, params, new_tokens: int | None = None):
    """(last chunk, wall seconds) of one greedy reply to the prompt's ids through the engine."""
    if new_tokens is not None:
        params = params.override({"max_new_tokens": new_tokens})
    started, last = time.perf_counter(), None
    for last in stream_ids(loaded, prompt.input_ids, params, stop_ids=prompt.stop_token_ids):
        pass
    return last, time.perf_counter() - started


class BareLlama:
    """llama-cpp-python's own `Llama`, as a user would run it: greedy, same file, ids and threads, in a
    process of its own (bench.bare_llama says why)."""

    def __init__(self, path: Path, threads: int, n_ctx: int):
        import json
        import subprocess
        import sys

        self._json = json
        self.process = subprocess.Popen([sys.executable, "-m", "bench.bare_llama", str(path), str(threads),
                                         str(n_ctx)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                        cwd=Path(__file__).resolve().parent.parent)
        self.load_s = self._answer()["load_s"]

    def _answer(self) -> dict:
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"bare llama-cpp-python ended (exit {self.process.wait()})")
        return self._json.loads(line)

    def _ask(self, request: dict) -> dict:
        self.process.stdin.write(self._json.dumps(request) + "\n")
        self.process.stdin.flush()
        return self._answer()

    def generate(self, ids: list[int], new_tokens: int, stop_ids) -> dict:
        """Greedy tokens, seconds to the first, and the decode rate after it."""
        return self._ask({"op": "generate", "ids": list(ids), "new_tokens": new_tokens,
                          "stop_ids": sorted(int(i) for i in stop_ids)})

    def prefill_s(self, ids: list[int]) -> float:
        return self._ask({"op": "prefill", "ids": list(ids)})["seconds"]

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.stdin.close()
            try:
                self.process.wait(timeout=30)
            except Exception:
                self.process.kill()


def single_stream(loaded, bare: BareLlama, prompt, params, repeats: int) -> dict:
    engine, reference, equal = [], [], True
    new_tokens = params.max_new_tokens
    for _ in range(repeats):  # in turn, so load from elsewhere hits both alike
        theirs = bare.generate(prompt.input_ids, new_tokens, prompt.stop_token_ids)
        reference.append(theirs["decode_tok_s"])
        last, _ = run_engine(loaded, prompt, params)
        engine.append(last.stats.tokens_per_s)
        equal = equal and last.output_ids == theirs["ids"]
    return {"bare_decode_tok_s": statistics.median(reference), "engine_decode_tok_s": statistics.median(engine),
            "bare_samples": reference, "engine_samples": engine, "tokens": new_tokens,
            "greedy_equal_to_bare": equal}


def first_token(loaded, bare: BareLlama, prompt, repeats: int) -> dict:
    bare_s, hub = [], []
    for _ in range(max(3, repeats)):
        bare_s.append(bare.prefill_s(prompt.input_ids))
        last, _ = run_engine(loaded, prompt, loaded.defaults.override({"greedy": True}), 1)
        hub.append(last.stats.ttft_s + last.stats.queue_s)
    b, h = statistics.median(bare_s), statistics.median(hub)
    return {"bare_prefill_s": b, "engine_ttft_s": h, "overhead_s": h - b, "bare_samples_s": bare_s,
            "engine_samples_s": hub}


def concurrency(loaded, prompt, params, clients: tuple[int, ...], repeats: int) -> list[dict]:
    """Aggregate tok/s of n clients at once on the engine (threads, as the server's handlers are)."""
    runs = {n: [] for n in clients}
    ttfts = {n: [] for n in clients}
    outputs: dict[int, list] = {}
    for _ in range(repeats):
        for n in clients:
            results = [None] * n

            def one(k):
                results[k] = run_engine(loaded, prompt, params)[0]

            threads = [threading.Thread(target=one, args=(k,)) for k in range(n)]
            started = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            seconds = time.perf_counter() - started
            runs[n].append(sum(r.stats.new_tokens for r in results) / seconds)
            ttfts[n] += [r.stats.ttft_s + r.stats.queue_s for r in results]
            outputs[n] = [r.output_ids for r in results]
    alone = outputs.get(1, [None])[0]
    return [{"clients": n, "aggregate_tok_s": statistics.median(v), "aggregate_tok_s_samples": v,
             "ttft_p50_s": statistics.median(ttfts[n]), "ttft_p95_s": percentile(ttfts[n], 0.95),
             "each_equal_to_one_client": alone is not None and all(o == alone for o in outputs[n])}
            for n, v in runs.items()]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def cold_loads(manager: ModelManager, entry: ModelEntry, repeats: int) -> dict:
    from .prompts import rss_bytes

    cold, growth = [], []
    for _ in range(repeats):
        manager.unload(entry.id)
        before = rss_bytes()
        started = time.perf_counter()
        manager.get(entry.id)
        cold.append(time.perf_counter() - started)
        growth.append(rss_bytes() - before)
    return {"cold_s": statistics.median(cold), "cold_samples_s": cold, "rss_growth_on_load_bytes": max(growth)}


def ratios(llama: dict) -> dict:
    out = {"llama_engine_vs_bare_decode": llama["engine_decode_tok_s"] / llama["bare_decode_tok_s"],
           "llama_ttft_overhead_ms": llama["ttft"]["overhead_s"] * 1000,
           "llama_cold_load_s": llama["load"]["cold_s"],
           "llama_rss_growth_vs_file": max(llama["load"]["rss_growth_on_load_bytes"],
                                           llama["rss_growth_after_first_reply_bytes"]) / llama["file_bytes"]}
    by_clients = {c["clients"]: c for c in llama["concurrency"]}
    if 1 in by_clients:
        for n, c in by_clients.items():
            if n > 1:
                pairs = zip(c["aggregate_tok_s_samples"], by_clients[1]["aggregate_tok_s_samples"])
                out[f"llama_{n}_clients_vs_1"] = statistics.median(a / b for a, b in pairs)
    return out


# (ratio key, what it is, target as text, test) rows for bench.report
TARGETS = [
    ("llama_engine_vs_bare_decode", "(7) llama.cpp engine decode tok/s ÷ bare llama-cpp-python", "≥ 0.95",
     lambda r: r >= 0.95),
    ("llama_ttft_overhead_ms", "    llama.cpp engine TTFT − bare llama.cpp prefill (ms)", "≤ 50", lambda r: r <= 50),
    ("llama_4_clients_vs_1", "    llama.cpp engine: 4 clients ÷ 1 client, paired by repeat", "≥ 1.8",
     lambda r: r >= 1.8),
    ("llama_rss_growth_vs_file", "    llama.cpp: process growth (load, first reply) ÷ GGUF file", "≤ 1.3",
     lambda r: r <= 1.3),
    ("llama_cold_load_s", "    llama.cpp engine cold load (s)", "≤ 3", lambda r: r <= 3),
]


def details(llama: dict) -> str:
    t, c = llama["ttft"], {x["clients"]: x for x in llama["concurrency"]}
    clients = ", ".join(f"{n} clients {x['aggregate_tok_s']:.1f}" for n, x in sorted(c.items()))
    return (f"llama.cpp engine ({llama['decode_plan']}): decode {llama['engine_decode_tok_s']:.1f} tok/s against "
            f"bare llama-cpp-python {llama['bare_decode_tok_s']:.1f}; greedy output equal to bare: "
            f"{llama['greedy_equal_to_bare']}; first token {t['engine_ttft_s'] * 1000:.0f} ms against a bare "
            f"prefill of {t['bare_prefill_s'] * 1000:.0f} ms; aggregate tok/s: {clients} (each client's output "
            f"equal to one client's: {all(x['each_equal_to_one_client'] for x in c.values())}); cold load "
            f"{llama['load']['cold_s']:.2f} s; process growth {llama['load']['rss_growth_on_load_bytes'] / 2**20:.0f}"
            f" MiB on load, {llama['rss_growth_after_first_reply_bytes'] / 2**20:.0f} MiB after a first reply; "
            f"file {llama['file_bytes'] / 2**20:.0f} MiB.")
