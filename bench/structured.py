"""`python -m demo bench --structured`: constrained decoding (response_format json_schema) against plain
decoding of the same prompts, on the default model, on each local engine it runs on (transformers, llama.cpp).

Measured per engine, greedy, on the same prompts: seconds per generated token after the first, constrained
÷ unconstrained (target ≤ 1.15). The two runs of a prompt have the same length: the unconstrained one gets the
constrained reply's token count as its budget. Also reported, outside the ratio: the grammar's own time per
token (llguidance's mask and applying it), the per-request setup (compiling the schema; the first request also
builds the tokenizer's llguidance copy), time to first token both ways, and whether every reply validates.
"""
from __future__ import annotations

import json
import statistics
import time
from typing import Callable

from demo.engine import stream_chat

TARGET = 1.15
S = {"type": "string", "maxLength": 24}
CASES = [
    ("Describe a person as JSON, with their name and age.",
     {"type": "object", "properties": {"name": S, "age": {"type": "integer", "minimum": 0, "maximum": 120}},
      "required": ["name", "age"], "additionalProperties": False}),
    ("List three colours as JSON.",
     {"type": "object", "properties": {"colours": {"type": "array", "items": S, "minItems": 3, "maxItems": 3}},
      "required": ["colours"], "additionalProperties": False}),
    ("Give a postal address as JSON.",
     {"type": "object", "properties": {"street": S, "city": S, "zip": {"type": "string", "pattern": "^[0-9]{5}$"}},
      "required": ["street", "city", "zip"], "additionalProperties": False}),
    ("Write a to-do item as JSON.",
     {"type": "object", "properties": {"title": S, "done": {"type": "boolean"}, "priority": {"enum": ["low", "high"]}},
      "required": ["title", "done", "priority"], "additionalProperties": False}),
]


class Timed:
    """A logits processor that also adds up the time spent in it."""

    def __init__(self, fn):
        self.fn, self.seconds, self.calls = fn, 0.0, 0

    def __call__(self, ids, scores):
        started = time.perf_counter()
        out = self.fn(ids, scores)
        self.seconds += time.perf_counter() - started
        self.calls += 1
        return out


def constraint(loaded, schema: dict) -> tuple[Timed, float]:
    """The processor the API would make for this schema, and the seconds making it took."""
    from demo.api import vocab_size
    from demo.structured import json_constraint

    started = time.perf_counter()
    processor = json_constraint(loaded.tokenizer, {"type": "json_schema", "json_schema": {"name": "bench", "schema": schema}},
                                loaded.adapter.stop_token_ids(loaded.tokenizer, loaded.extra_stop_ids),
                                vocab_size(loaded))
    return Timed(processor), time.perf_counter() - started


def one_reply(loaded, prompt: str, params, processor=None) -> dict:
    last = None
    for last in stream_chat(loaded, [{"role": "user", "content": prompt}], params,
                            logits_processors=[processor] if processor else ()):
        pass
    stats = last.stats
    decode_tokens = max(0, stats.new_tokens - 1)
    return {"text": last.text, "finish_reason": last.finish_reason, "error": last.error,
            "tokens": stats.new_tokens, "ttft_s": stats.ttft_s or 0.0,
            "decode_tokens": decode_tokens, "decode_s": decode_tokens / stats.tokens_per_s if stats.tokens_per_s else 0.0}


def valid(text: str, schema: dict) -> bool:
    try:
        value = json.loads(text)
    except ValueError:
        return False
    try:
        import jsonschema  # the test requirements have it; without it, parsing is the check
    except ImportError:
        return True
    try:
        jsonschema.validate(value, schema)
    except jsonschema.ValidationError:
        return False
    return True


def engine_runs(loaded, new_tokens: int, repeats: int, log: Callable[[str], None]) -> dict:
    """Every case constrained and unconstrained (with the constrained reply's length), `repeats` times; which
    of the two runs first alternates, so whatever the first run of a pair pays (or the second) falls on both."""
    params = loaded.defaults.override({"greedy": True, "repetition_penalty": 1.0, "max_new_tokens": new_tokens})
    processor, first_setup_s = constraint(loaded, CASES[0][1])  # builds the tokenizer's llguidance copy
    one_reply(loaded, CASES[0][0], params.override({"max_new_tokens": 4}), processor)  # warm-ups
    one_reply(loaded, CASES[0][0], params.override({"max_new_tokens": 4}))
    runs, setups, checks, lengths = [], [], [], {}
    for k in range(repeats):
        run = {"constrained": [], "plain": [], "mask_s": 0.0, "mask_calls": 0}
        for i, (prompt, schema) in enumerate(CASES):
            processor, setup_s = constraint(loaded, schema)
            setups.append(setup_s)
            plain_first = (k + i) % 2 == 1 and i in lengths  # greedy: the constrained length of a repeat before
            plain = lambda n: one_reply(loaded, prompt, params.override({"max_new_tokens": max(2, n)}))  # noqa: E731
            free = plain(lengths[i]) if plain_first else None
            fixed = one_reply(loaded, prompt, params, processor)
            lengths[i] = fixed["tokens"]
            free = free or plain(fixed["tokens"])
            run["constrained"].append(fixed)
            run["plain"].append(free)
            run["mask_s"] += processor.seconds
            run["mask_calls"] += processor.calls
            checks.append(fixed["finish_reason"] == "stop" and valid(fixed["text"], schema))
        runs.append(run)
        summary = per_token(run)
        log(f"{loaded.engine}: repeat {k + 1}/{repeats}: {summary['constrained_s_per_token'] * 1000:.1f} ms/token "
            f"constrained, {summary['plain_s_per_token'] * 1000:.1f} unconstrained: {summary['ratio']:.3f}")
    return summarize(runs, setups, first_setup_s, checks, loaded.decode_plan)


def per_token(run: dict) -> dict:
    """Seconds per token after the first, pooled over the run's prompts, both ways, and their ratio."""
    def rate(replies):
        tokens = sum(r["decode_tokens"] for r in replies)
        return sum(r["decode_s"] for r in replies) / tokens if tokens else float("nan")

    constrained, plain = rate(run["constrained"]), rate(run["plain"])
    return {"constrained_s_per_token": constrained, "plain_s_per_token": plain, "ratio": constrained / plain,
            "mask_s_per_token": run["mask_s"] / run["mask_calls"] if run["mask_calls"] else 0.0}


def summarize(runs: list[dict], setups: list[float], first_setup_s: float, checks: list[bool], plan: str) -> dict:
    each = [per_token(run) for run in runs]
    ratio = statistics.median(e["ratio"] for e in each)
    ttft = lambda key: statistics.median(r["ttft_s"] for run in runs for r in run[key])  # noqa: E731
    return {"decode_plan": plan, "ratio": ratio, "ratio_samples": [e["ratio"] for e in each],
            "constrained_s_per_token": statistics.median(e["constrained_s_per_token"] for e in each),
            "plain_s_per_token": statistics.median(e["plain_s_per_token"] for e in each),
            "mask_s_per_token": statistics.median(e["mask_s_per_token"] for e in each),
            "setup_s": statistics.median(setups), "first_setup_s": first_setup_s,
            "ttft_constrained_s": ttft("constrained"), "ttft_plain_s": ttft("plain"),
            "tokens": [r["tokens"] for r in runs[-1]["constrained"]],
            "valid": sum(checks), "replies": len(checks), "target": TARGET, "met": ratio <= TARGET}


def local_engines(entry) -> list[str]:
    from demo.backends import is_gguf, llama_cpp_status

    engines = ["transformers"]
    if is_gguf(entry) and llama_cpp_status()[0]:
        engines.append("llama.cpp")
    return engines


def run_structured_bench(entry, new_tokens: int = 96, repeats: int = 3, engines: list[str] | None = None,
                         log: Callable[[str], None] = print) -> dict:
    from demo.manager import ModelManager
    from demo.registry import Registry, Settings

    report = {"model": entry.id, "new_tokens": new_tokens, "repeats": repeats, "prompts": len(CASES),
              "target": TARGET, "engines": {}}
    for engine in engines or local_engines(entry):
        one = entry.model_copy(update={"engine": engine})
        manager = ModelManager(Registry([one], Settings(default_model=one.id)))
        log(f"loading {one.id} on {engine} ...")
        loaded = manager.get(one.id)
        try:
            report["engines"][engine] = engine_runs(loaded, new_tokens, repeats, log)
        finally:
            del loaded
            manager.unload(one.id)
    report["met"] = all(e["met"] for e in report["engines"].values())
    return report


def markdown(report: dict) -> str:
    lines = ["| measure | value | target | met |", "|---|---:|---:|:---:|"]
    for engine, e in report["engines"].items():
        lines.append(f"| {engine}: s/token, json_schema ÷ unconstrained, {report['prompts']} prompts "
                     f"(median of {report['repeats']}) | {e['ratio']:.3f} | ≤ {e['target']} | "
                     f"{'yes' if e['met'] else 'no'} |")
    lines.append("")
    for engine, e in report["engines"].items():
        lines.append(f"- {engine} ({e['decode_plan']}): {e['constrained_s_per_token'] * 1000:.1f} ms/token constrained, "
                     f"{e['plain_s_per_token'] * 1000:.1f} unconstrained; the grammar itself "
                     f"{e['mask_s_per_token'] * 1000:.2f} ms/token; setup {e['setup_s'] * 1000:.0f} ms a request "
                     f"(first {e['first_setup_s'] * 1000:.0f} ms); first token {e['ttft_constrained_s'] * 1000:.0f} ms "
                     f"constrained, {e['ttft_plain_s'] * 1000:.0f} unconstrained; replies valid {e['valid']}/"
                     f"{e['replies']}; ratios {', '.join(f'{r:.3f}' for r in e['ratio_samples'])}")
    return "\n".join(lines)
