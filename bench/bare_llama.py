"""Bare llama-cpp-python in its own process, driven over stdin/stdout (one JSON object a line).

The bench runs the hub's llama.cpp engine and bare llama-cpp-python in turn. In one process the two would
share one OpenMP runtime (llama.cpp's CPU backend and torch both load libgomp), and the idle team of one slows
the other's barriers (measured on 2 cores: both ran at about half speed). Apart, each runs as a user would
run it, alone in its process.

    python -m bench.bare_llama MODEL.gguf THREADS N_CTX
    {"op": "generate", "ids": [...], "new_tokens": 128, "stop_ids": [2]}  -> {"ids", "ttft_s", "decode_tok_s"}
    {"op": "prefill", "ids": [...]}                                       -> {"seconds"}
"""
from __future__ import annotations

import json
import sys
import time


class Bare:
    def __init__(self, path: str, threads: int, n_ctx: int):
        from llama_cpp import Llama

        started = time.perf_counter()
        # flash attention and a q8_0 KV cache as the engine has them (not llama-cpp-python's defaults)
        self.llm = Llama(model_path=path, n_ctx=n_ctx, n_batch=512, n_threads=threads, n_threads_batch=threads,
                         flash_attn=True, type_k=8, type_v=8, verbose=False)
        self.load_s = time.perf_counter() - started

    def generate(self, ids: list[int], new_tokens: int, stop_ids: list[int]) -> dict:
        """Greedy tokens, seconds to the first, and the decode rate after it."""
        out, first, started = [], None, time.perf_counter()
        for token in self.llm.generate(ids, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0,
                                       reset=True):
            first = first or time.perf_counter()
            out.append(int(token))
            if token in stop_ids or len(out) >= new_tokens:
                break
        end = time.perf_counter()
        return {"ids": out, "ttft_s": first - started,
                "decode_tok_s": (len(out) - 1) / (end - first) if len(out) > 1 and end > first else 0.0}

    def prefill(self, ids: list[int]) -> dict:
        import numpy as np

        self.llm.reset()
        started = time.perf_counter()
        self.llm.eval(ids)
        int(np.argmax(self.llm.scores[self.llm.n_tokens - 1]))
        return {"seconds": time.perf_counter() - started}


def main(argv: list[str]) -> int:
    path, threads, n_ctx = argv[0], int(argv[1]), int(argv[2])
    bare = Bare(path, threads, n_ctx)
    print(json.dumps({"load_s": bare.load_s}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        if request["op"] == "generate":
            answer = bare.generate(request["ids"], request["new_tokens"], request["stop_ids"])
        else:
            answer = bare.prefill(request["ids"])
        print(json.dumps(answer), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
