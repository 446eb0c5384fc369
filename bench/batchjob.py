"""`python -m demo bench --batch-job`: a file of prompts through `batch` against the same prompts sent as
sequential `generate` calls, on the same engine, measured in turn.

Each side runs the model as its command loads it: `generate` with the interactive decode plan, `batch` with
the job's (demo.batchjob.job_entry: on a CPU without fast bf16 kernels a transformers model decodes a job in
float32, 16 prompts a step). Target: the batch job takes at most 0.4x the time of the sequential calls. Both
run greedy with the same reply budget; the report says whether the replies were the same (a float32 job and
bf16 calls may differ where two tokens are near-tied).
"""
from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

from demo.batchjob import Job, Paths, default_concurrency, sole_user
from demo.engine import stream_chat

TARGET = 0.4
PROMPTS = ["What is the capital of France?", "Name three primary colors.", "What is 12 times 12?",
           "Write one sentence about the sea.", "What do bees make?", "Name the planets of the solar system.",
           "What is ice made of?", "Give me a fruit that is yellow.", "Who wrote Hamlet?",
           "Why is the sky blue? Answer in one sentence.", "Name an ocean.", "What is the opposite of hot?",
           "How many legs does a spider have?", "Name two musical instruments.", "What is the sun?",
           "Suggest a name for a cat."]


def sequential(loaded, prompts: list[str], params) -> tuple[float, list[str], int]:
    """One `generate` call after another: (seconds, replies, new tokens)."""
    started, replies, tokens = time.perf_counter(), [], 0
    for prompt in prompts:
        last = None
        for last in stream_chat(loaded, [{"role": "user", "content": prompt}], params):
            pass
        replies.append(last.text)
        tokens += last.stats.new_tokens
    return time.perf_counter() - started, replies, tokens


def batched(loaded, prompts: list[str], params, concurrency: int, folder: Path) -> tuple[float, list[str], int]:
    """The same prompts as one `batch` job (data file, journal, output): (seconds, replies, new tokens)."""
    data = folder / "prompts.txt"
    data.write_text("\n".join(prompts) + "\n", encoding="utf-8")
    job = Job(loaded, data, Paths.beside(folder / "predictions.json"), params, concurrency=concurrency)
    started = time.perf_counter()
    records = job.run()
    seconds = time.perf_counter() - started
    return seconds, [r["output"] for r in records], sum(r["new_tokens"] for r in records)


def run_batch_bench(loaded, new_tokens: int = 128, repeats: int = 3, concurrency: int | None = None,
                    prompts: list[str] = PROMPTS, log: Callable[[str], None] = print, job_loaded=None) -> dict:
    """`loaded`: the model as `generate` loads it, for the sequential calls; `job_loaded`: as `batch` loads
    it (demo.batchjob.job_entry: a transformers model decodes for throughput there), default the same."""
    job_loaded = job_loaded or loaded
    params = loaded.defaults.override({"greedy": True, "repetition_penalty": 1.0, "max_new_tokens": new_tokens})
    concurrency = concurrency or default_concurrency(job_loaded)
    sole_user(job_loaded, concurrency)
    for model in {id(loaded): loaded, id(job_loaded): job_loaded}.values():  # the decode loops' one-time probes
        sequential(model, prompts[:1], params.override({"max_new_tokens": 4}))
    runs = []
    with tempfile.TemporaryDirectory(prefix="batch-bench-") as tmp:
        for k in range(repeats):  # in turn, so the machine's drift hits both alike
            seq_s, seq_replies, seq_tokens = sequential(loaded, prompts, params)
            job_s, job_replies, job_tokens = batched(job_loaded, prompts, params, concurrency, Path(tmp))
            runs.append({"sequential_s": seq_s, "batch_s": job_s, "ratio": job_s / seq_s,
                         "sequential_tokens": seq_tokens, "batch_tokens": job_tokens,
                         "same_replies": seq_replies == job_replies})
            log(f"repeat {k + 1}/{repeats}: {len(prompts)} sequential generate calls {seq_s:.1f} s "
                f"({seq_tokens} tokens), batch job {job_s:.1f} s ({job_tokens} tokens): ratio {job_s / seq_s:.2f}")
    ratio = statistics.median(r["ratio"] for r in runs)
    return {"model": loaded.id, "engine": loaded.engine, "sequential_plan": loaded.decode_plan,
            "batch_plan": job_loaded.decode_plan, "prompts": len(prompts), "new_tokens": new_tokens,
            "concurrency": concurrency,
            "repeats": repeats, "runs": runs, "ratio": ratio, "target": TARGET, "met": ratio <= TARGET}


def markdown(report: dict) -> str:
    lines = [f"{report['model']} on {report['engine']}; sequential calls: {report['sequential_plan']}; batch job: "
             f"{report['batch_plan']}", "",
             "| measure | value | target | met |", "|---|---:|---:|:---:|",
             f"| {report['prompts']} prompts: batch job ÷ sequential generate calls (median of {report['repeats']}) "
             f"| {report['ratio']:.2f} | ≤ {report['target']} | {'yes' if report['met'] else 'no'} |", ""]
    for k, run in enumerate(report["runs"], 1):
        lines.append(f"- repeat {k}: sequential {run['sequential_s']:.1f} s, batch {run['batch_s']:.1f} s "
                     f"({run['ratio']:.2f}); tokens {run['sequential_tokens']} / {run['batch_tokens']}; "
                     f"same replies: {run['same_replies']}")
    return "\n".join(lines)
