"""Servers the bench talks to, as real subprocesses on loopback, and one client request for each.

- the hub: `python -m demo serve`, driven through the official `gradio_client` (the Chat tab's /send and
  /reply endpoints, the same events a browser fires);
- `transformers serve` on the same weights (saved to a folder), through its OpenAI-compatible streaming
  endpoint, with and without `--continuous-batching`.
"""
from __future__ import annotations

import json
import os
import re
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

START_TIMEOUT_S = 240.0
REQUEST_TIMEOUT_S = 600.0
ROOT = Path(__file__).resolve().parent.parent


class BenchError(RuntimeError):
    pass


@dataclass
class Sample:
    """One request as its client saw it."""

    tokens: int
    seconds: float  # request sent to last byte
    ttft_s: float  # request sent to the first visible text
    started: float
    ended: float


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def server(command: list[str], ready_url: str, log_path: Path, env: dict | None = None):
    """Run `command` until the block ends; wait until `ready_url` answers 200."""
    with open(log_path, "w") as log:
        proc = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                env={**os.environ, **(env or {})}, preexec_fn=die_with_parent)
        try:
            wait_ready(proc, ready_url, log_path)
            yield proc
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def die_with_parent() -> None:
    """Run in the child before exec: on Linux, the kernel sends it SIGTERM when the bench dies, even by
    SIGKILL, so no server outlives the bench (elsewhere the `finally` of `server` is all there is)."""
    import ctypes
    import signal

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux
        pass


def wait_ready(proc, url: str, log_path: Path) -> None:
    deadline = time.time() + START_TIMEOUT_S
    while time.time() < deadline:
        if proc.poll() is not None:
            tail = log_path.read_text(errors="replace")[-2000:]
            raise BenchError(f"{' '.join(proc.args[:4])} exited with {proc.returncode}:\n{tail}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise BenchError(f"{url} did not answer within {START_TIMEOUT_S:.0f} s (log: {log_path})")


# -- the hub ------------------------------------------------------------------------------------
def hub_command(registry_path: Path, port: int) -> list[str]:
    # No per-client rate limit: every bench client comes from 127.0.0.1. Votes go next to the registry.
    return [sys.executable, "-m", "demo", "--registry", str(registry_path), "serve", "--host", "127.0.0.1",
            "--port", str(port), "--preload", "--rate-limit", "0",
            "--votes", str(registry_path.with_name("votes.sqlite3"))]


FOOTER_TOKENS = re.compile(r"(\d+) tokens · ")


class HubClient:
    """One browser-like user of the hub's Chat tab (its own session)."""

    def __init__(self, url: str, model_id: str):
        from gradio_client import Client

        self.client = Client(url, verbose=False)
        self.model_id = model_id

    def request(self, message: str, new_tokens: int) -> Sample:
        self.client.predict(api_name="/clear")  # a fresh conversation; not part of the request's time
        started = time.perf_counter()
        self.client.predict(message, api_name="/send")
        # Chat tab controls: custom sampling on, temperature, top_p, top_k, repetition_penalty,
        # max_new_tokens, seed (-1: none), greedy.
        job = self.client.submit(self.model_id, "", True, 0.7, 0.9, 50, 1.0, new_tokens, -1, True,
                                 api_name="/reply")
        first = first_text_at(job)
        job.result(timeout=REQUEST_TIMEOUT_S)  # a wait on the job's future: no polling
        ended = time.perf_counter()
        final = _assistant_text(job.outputs()[-1])
        match = FOOTER_TOKENS.search(final)
        if not match:
            raise BenchError(f"the hub's reply has no stats footer: {final[-300:]!r}")
        return Sample(int(match.group(1)), ended - started, (first or ended) - started, started, ended)


FIRST_TEXT_POLL_S = 0.005


def first_text_at(job) -> float | None:
    """When the reply's first text reached the client, to within FIRST_TEXT_POLL_S.

    Iterating a gradio_client Job checks for output every 1 ms for the whole reply, and that loop takes
    CPU and GIL from the server it measures when both share 2 cores (4 clients: about a quarter of a
    core). This looks every 5 ms, only until the first text, then the caller waits on the job's future.
    """
    seen = 0
    while True:
        outputs = job.outputs()
        for output in outputs[seen:]:
            if _assistant_text(output):
                return time.perf_counter()
        seen = len(outputs)
        if job.done():
            return None
        time.sleep(FIRST_TEXT_POLL_S)


def _assistant_text(output) -> str:
    chatbot = output[0] if isinstance(output, (list, tuple)) and output and isinstance(output[0], list) else output
    for message in reversed(chatbot or []):
        if isinstance(message, dict) and message.get("role") == "assistant":
            content = message.get("content")
            if isinstance(content, list):
                return "".join(part.get("text", "") for part in content if isinstance(part, dict))
            return str(content or "")
    return ""


# -- transformers serve -------------------------------------------------------------------------
def transformers_serve_command(folder: Path, port: int, continuous_batching: bool, dtype: str) -> list[str]:
    exe = Path(sys.executable).with_name("transformers")
    command = [str(exe) if exe.exists() else "transformers", "serve", str(folder), "--host", "127.0.0.1",
               "--port", str(port), "--device", "cpu", "--dtype", dtype]
    return command + (["--continuous-batching"] if continuous_batching else [])


class OpenAIClient:
    """A streaming chat-completions client over plain HTTP (server-sent events)."""

    def __init__(self, url: str, model: str):
        self.url, self.model = url.rstrip("/") + "/v1/chat/completions", model

    def request(self, message: str, new_tokens: int) -> Sample:
        body = {"model": self.model, "messages": [{"role": "user", "content": message}], "stream": True,
                "max_tokens": new_tokens, "temperature": 0, "stream_options": {"include_usage": True}}
        request = urllib.request.Request(self.url, json.dumps(body).encode(),
                                         {"Content-Type": "application/json"})
        started = time.perf_counter()
        first, tokens, pieces = None, None, 0
        with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_S) as response:
            for raw in response:
                line = raw.decode("utf-8", "replace").strip()
                if not line.startswith("data:") or line == "data: [DONE]":
                    continue
                event = json.loads(line[5:])
                for choice in event.get("choices") or []:
                    if (choice.get("delta") or {}).get("content"):
                        pieces += 1
                        first = first or time.perf_counter()
                usage = event.get("usage")
                if usage:
                    tokens = usage.get("completion_tokens")
        ended = time.perf_counter()
        return Sample(tokens if tokens is not None else pieces, ended - started, (first or ended) - started,
                      started, ended)


# -- load -----------------------------------------------------------------------------------------
def concurrent(clients: list, message: str, new_tokens: int, rounds: int) -> dict:
    """Every client sends `rounds` requests one after another, all clients at once."""
    samples: list[Sample] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(clients))

    def user(index: int, client) -> None:
        try:
            barrier.wait()
            for r in range(rounds):
                samples.append(client.request(f"{message} (request {index}.{r})", new_tokens))
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=user, args=(i, c), daemon=True) for i, c in enumerate(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(REQUEST_TIMEOUT_S)
    if errors:
        raise BenchError(f"{len(errors)} request(s) failed: {type(errors[0]).__name__}: {errors[0]}")
    return summarize(samples, len(clients))


def series(clients: list, counts, message: str, new_tokens: int, rounds: int, repeats: int) -> list[dict]:
    """`concurrent` at each client count, `repeats` times, the counts interleaved so that drift in the
    machine's speed hits them alike; for each count, the run with the median aggregate tok/s."""
    runs = {n: [] for n in counts}
    for _ in range(repeats):
        for n in counts:
            runs[n].append(concurrent(clients[:n], message, new_tokens, rounds))
    return [median_run(runs[n]) for n in counts]


def median_run(runs: list[dict]) -> dict:
    ordered = sorted(runs, key=lambda run: run["aggregate_tok_s"])
    return {**ordered[(len(ordered) - 1) // 2], "aggregate_tok_s_samples": [r["aggregate_tok_s"] for r in runs]}


def summarize(samples: list[Sample], clients: int) -> dict:
    span = max(s.ended for s in samples) - min(s.started for s in samples)
    ttfts = sorted(s.ttft_s for s in samples)
    return {"clients": clients, "requests": len(samples), "tokens": sum(s.tokens for s in samples),
            "seconds": span, "aggregate_tok_s": sum(s.tokens for s in samples) / span,
            "per_request_tok_s": statistics.median(s.tokens / s.seconds for s in samples),
            "ttft_p50_s": percentile(ttfts, 50), "ttft_p95_s": percentile(ttfts, 95)}


def percentile(sorted_values: list[float], p: float) -> float:
    """Linear-interpolated percentile of an already sorted list."""
    if len(sorted_values) == 1:
        return sorted_values[0]
    k = (len(sorted_values) - 1) * p / 100
    low = int(k)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (k - low)
