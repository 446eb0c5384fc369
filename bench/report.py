"""The bench's outputs: report.json, a Markdown table (printed, and pasted into the README), bench.png."""
from __future__ import annotations

import json
import math
from pathlib import Path

from .llamacpp import TARGETS as LLAMA_TARGETS, details as llama_details

# (ratio key, what it is, target as text, test of the target)
TARGETS = [
    ("engine_vs_bare", "(1) engine streaming tok/s ÷ bare generate", "≥ 0.97", lambda r: r >= 0.97),
    ("engine_vs_bare", "    faster decode path ÷ bare generate", "≥ 1.2", lambda r: r >= 1.2),
    ("engine_exact_vs_bare", "    the same with an exact plan (bitwise generate's tokens)", "≥ 1.0",
     lambda r: r >= 1.0),
    ("server_vs_engine", "(2) hub through the UI (gradio_client) ÷ engine", "≥ 0.90", lambda r: r >= 0.90),
    ("server_api_vs_engine", "    hub through the API ÷ engine", "≥ 0.95", lambda r: r >= 0.95),
    ("ttft_overhead_ms", "(3) TTFT, hub − bare prefill (ms)", "≤ 50", lambda r: r <= 50),
    ("ttft_vs_fp32_prefill", "    TTFT, hub ÷ bare float32 prefill", "≤ 1.1", lambda r: r <= 1.1),
    ("switch_cached_ms", "(4) switch to a loaded model (ms)", "≤ 50", lambda r: r <= 50),
    ("switch_cold_vs_bare", "    cold load ÷ bare from_pretrained", "≤ 1.1", lambda r: r <= 1.1),
    ("hub_4_clients_vs_1", "(5) UI (gradio_client): aggregate tok/s, 4 clients ÷ 1 client, paired by repeat",
     "≥ 2.5", lambda r: r >= 2.5),
    ("hub_4_clients_vs_1_of_medians", "    UI: the same, median 4-client run ÷ median 1-client run", "≥ 2.5",
     lambda r: r >= 2.5),
    ("hub_vs_transformers_serve_plain_4_clients", "    UI: 4 clients ÷ transformers serve", "≥ 1", lambda r: r >= 1),
    ("hub_vs_transformers_serve_continuous_batching_4_clients",
     "    UI: 4 clients ÷ transformers serve --continuous-batching", "≥ 1", lambda r: r >= 1),
    ("hub_api_4_clients_vs_1", "(5) API (OpenAI protocol): 4 clients ÷ 1 client, paired by repeat", "≥ 2.5",
     lambda r: r >= 2.5),
    ("hub_api_4_clients_vs_1_of_medians", "    API: the same, median 4-client run ÷ median 1-client run", "≥ 2.5",
     lambda r: r >= 2.5),
    ("hub_api_vs_transformers_serve_plain_4_clients", "    API: 4 clients ÷ transformers serve", "≥ 1",
     lambda r: r >= 1),
    ("hub_api_vs_transformers_serve_continuous_batching_4_clients",
     "    API: 4 clients ÷ transformers serve --continuous-batching", "≥ 1", lambda r: r >= 1),
    ("memory_rss_vs_weights", "(6) process growth on load ÷ weight bytes", "≤ 1.2", lambda r: r <= 1.2),
]
TARGETS += LLAMA_TARGETS


def write(report: dict, out: Path) -> dict:
    paths = {"json": out / "report.json", "table": out / "table.md", "plot": out / "bench.png"}
    paths["json"].write_text(json.dumps(report, indent=2, default=str))
    paths["table"].write_text(markdown(report))
    plot(report, paths["plot"])
    return paths


def markdown(report: dict) -> str:
    r = report["ratios"]
    lines = ["| measure | value | target | met |", "|---|---:|---:|:---:|"]
    for key, label, target, ok in TARGETS:
        if key in r:
            lines.append(f"| {label} | {r[key]:.2f} | {target} | {'yes' if ok(r[key]) else 'no'} |")
    lines += ["", concurrency_table(report), "", details(report)]
    return "\n".join(lines) + "\n"


def concurrency_table(report: dict) -> str:
    hub = report.get("hub_server") or {}
    runs = {"hub UI (gradio_client)": hub.get("concurrency") or [], "hub API (OpenAI protocol)": hub.get("api_concurrency") or []}
    for name, series in (report.get("transformers_serve") or {}).items():
        runs["transformers serve" + (" --continuous-batching" if name == "continuous_batching" else "")] = series
    runs["llama.cpp engine (in-process)"] = (report.get("llama_cpp") or {}).get("concurrency") or []
    lines = ["| server | clients | aggregate tok/s | TTFT p50 (ms) | TTFT p95 (ms) |", "|---|---:|---:|---:|---:|"]
    for name, series in runs.items():
        for c in series:
            lines.append(f"| {name} | {c['clients']} | {c['aggregate_tok_s']:.1f} | "
                         f"{c['ttft_p50_s'] * 1000:.0f} | {c['ttft_p95_s'] * 1000:.0f} |")
    return "\n".join(lines)


def exact(single: dict) -> str:
    rate = single.get("engine_exact_tok_s")  # older reports: no such variant
    return "" if rate is None else f", engine with an exact plan {rate:.1f}"


def details(report: dict) -> str:
    s, t, w, m = report["single_stream"], report["ttft"], report["switch"], report["memory"]
    plan = report.get("decode_plan")  # older reports: none
    parts = [f"CPU: {report['machine']['cpu']} ({report['machine'].get('cpu_capability')}), "
             f"decode plan: {plan['summary'] if plan else 'not recorded'}.",
             f"Single stream ({s['tokens']} new tokens, prompt {report['prompt_tokens']} tokens): bare generate "
             f"{s['bare_generate_tok_s']:.1f} tok/s, engine {s['engine_tok_s']:.1f}{exact(s)}, engine through "
             f"generate() {s['engine_generate_path_tok_s']:.1f}; greedy output equal to bare generate: "
             f"{s['greedy_equal_to_bare']}.", *server_details(report.get("hub_server") or {}),
             f"TTFT: bare prefill {t['bare_prefill_s'] * 1000:.0f} ms"
             + (f" (in float32 {t['bare_fp32_prefill_s'] * 1000:.0f} ms)" if "bare_fp32_prefill_s" in t else "")
             + f", hub {t['hub_ttft_s'] * 1000:.0f} ms "
             f"(through generate(): {t['hub_generate_path_ttft_s'] * 1000:.0f} ms).",
             f"Switch: cached {w['cached_s'] * 1e6:.0f} µs, cold {w['cold_s']:.1f} s, bare from_pretrained "
             f"{w['bare_from_pretrained_s']:.1f} s.",
             f"Memory: {m['model']} holds {m['tensor_bytes'] / 2**20:.0f} MiB of tensors ({m['dtype']}); the process "
             f"grew {m['rss_growth_bytes'] / 2**20:.0f} MiB on load; weight files {m['file_bytes'] / 2**20:.0f} MiB."]
    if report.get("llama_cpp"):
        parts.append(llama_details(report["llama_cpp"]))
    return "\n\n".join(parts)


def server_details(hub: dict) -> list[str]:
    if not hub.get("single"):
        return []
    line = f"One client of the hub server: through the UI {hub['single']['per_request_tok_s']:.1f} tok/s"
    if hub.get("api_single"):
        line += f", through the API {hub['api_single']['per_request_tok_s']:.1f}"
    if hub.get("engine_alone_tok_s"):
        line += (f"; the engine alone, run in turn with them while the server idled, "
                 f"{hub['engine_alone_tok_s']:.1f}")
    return [line + "."]


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (single, agg, ttft) = plt.subplots(1, 3, figsize=(15, 4.5))
    s = report["single_stream"]
    bars = {"bare transformers": s["bare_generate_tok_s"], "transformers engine (generate)":
            s["engine_generate_path_tok_s"], "transformers engine (batched loop)": s["engine_tok_s"]}
    llama = report.get("llama_cpp") or {}
    if llama:  # decode rates after the first token
        bars.update({"bare llama.cpp": llama["bare_decode_tok_s"], "llama.cpp engine": llama["engine_decode_tok_s"]})
    hub = report.get("hub_server") or {}
    for key, name in (("single", "hub UI"), ("api_single", "hub API")):
        if hub.get(key):
            bars[name] = hub[key]["per_request_tok_s"]
    single.bar(list(bars), list(bars.values()), color=["grey", "tab:blue", "tab:green", "silver", "tab:purple",
                                                       "tab:orange", "tab:red"][:len(bars)])
    single.set_title("one stream: tokens/s")
    single.tick_params(axis="x", labelrotation=20)
    hub_runs = report.get("hub_server") or {}
    series = {"hub UI": hub_runs.get("concurrency") or [], "hub API": hub_runs.get("api_concurrency") or []}
    for name, runs in (report.get("transformers_serve") or {}).items():
        series["transformers serve" + (" (CB)" if name == "continuous_batching" else "")] = runs
    if llama:
        series["llama.cpp engine (in-process)"] = llama["concurrency"]
    for name, runs in series.items():
        if runs:
            clients = [c["clients"] for c in runs]
            agg.plot(clients, [c["aggregate_tok_s"] for c in runs], marker="o", label=name)
            ttft.plot(clients, [c["ttft_p50_s"] * 1000 for c in runs], marker="o", label=f"{name} p50")
            ttft.plot(clients, [c["ttft_p95_s"] * 1000 for c in runs], marker="x", linestyle="--",
                      label=f"{name} p95")
    agg.set(title="aggregate tokens/s", xlabel="concurrent clients")
    ttft.set(title="time to first token (ms)", xlabel="concurrent clients")
    for ax in (agg, ttft):
        if ax.lines:
            ax.legend(fontsize=8)
    isa = report["machine"].get("cpu_capability")
    fig.suptitle(f"{report['model']} on {report['machine']['cpu']}{f' ({isa})' if isa else ''} "
                 f"({report['machine']['cores']} cores), "
                 f"{report['started']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def finite_numbers(value, path: str = "") -> list[str]:
    """Paths of numbers in `value` that are not finite (NaN, inf): a report check for tests and CI."""
    if isinstance(value, bool):
        return []
    if isinstance(value, (int, float)):
        return [] if math.isfinite(value) else [path]
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in finite_numbers(v, f"{path}.{k}")]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in finite_numbers(v, f"{path}[{i}]")]
    return []
