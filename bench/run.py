"""`python -m demo bench`: what the hub's layers cost against bare transformers, on one model, in one run.

Every figure is a ratio against a baseline measured in the same process (or on the same machine at the
same time) on the same model: (1) engine streaming vs bare `model.generate`; (2) the hub over HTTP with
`gradio_client` vs the engine alone; (3) time to first token, hub minus a bare prefill; (4) model switch,
cached and cold, vs a bare `from_pretrained`; (5) 1..N concurrent clients vs `transformers serve` with and
without continuous batching; (6) memory of the loaded model vs its weight bytes.
"""
from __future__ import annotations

import datetime
import gc
import os
import platform
import statistics
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from demo.engine import stream_chat
from demo.loaded import LoadedModel
from demo.manager import ModelManager
from demo.memory import free_memory
from demo.registry import DecodeSettings, ModelEntry, Registry, Settings
from demo.threads import on_own_thread

from . import servers
from .prompts import build_prompt, greedy, prompt_message, rss_bytes




@dataclass
class BenchConfig:
    entry: ModelEntry
    prompt_tokens: int = 64
    new_tokens: int = 128
    clients: tuple[int, ...] = (1, 2, 4, 8)
    out: Path = Path("bench-results")
    repeats: int = 3
    rounds: int = 1  # requests per client in the concurrency runs
    hub_server: bool = True
    transformers_serve: bool = True
    llama_cpp: bool = True  # a GGUF entry: also the llama.cpp engine against bare llama-cpp-python


def run_bench(config: BenchConfig, log=print) -> dict:
    from demo.backends import is_gguf, llama_cpp_status

    config.out.mkdir(parents=True, exist_ok=True)
    report = {"started": now_iso(), "machine": machine(), "model": config.entry.id,
              "settings": {"prompt_tokens": config.prompt_tokens, "new_tokens": config.new_tokens,
                           "clients": list(config.clients), "repeats": config.repeats, "rounds": config.rounds}}
    if config.llama_cpp and is_gguf(config.entry) and llama_cpp_status()[0]:
        from .llamacpp import llama_bench

        report["llama_cpp"] = llama_bench(config.entry, config.prompt_tokens, config.new_tokens, config.clients,
                                          config.repeats, log)
    # What follows measures the transformers engine (and the hub server on it), whatever `auto` picks.
    config.entry = config.entry.model_copy(update={"engine": "transformers"})
    report["engine"] = "transformers"
    manager = ModelManager(Registry([config.entry], Settings(default_model=config.entry.id)))
    log(f"loading {config.entry.id} ...")
    started = time.perf_counter()
    loaded = manager.get(config.entry.id)
    first_load_s = time.perf_counter() - started
    message = prompt_message(loaded, config.prompt_tokens)
    report["prompt_tokens"] = len(build_prompt(loaded, message, config.new_tokens).input_ids)
    report["decode_plan"] = loaded.plan.as_dict() if loaded.plan else None
    log(f"decode plan: {loaded.plan.summary() if loaded.plan else 'none'}")
    # The baselines run on a stock model of their own: the hub's copy has its weights packed (demo.prepack)
    # or held in float32 (demo.decodeplan); the exact plan runs on a copy of its own too.
    bare, _ = on_own_thread(bare_model, config.entry)
    exact_plan = on_own_thread(exact_copy, config.entry)
    log("single stream: engine vs bare generate ...")
    report["single_stream"] = single_stream(loaded, bare, message, config, exact_plan)
    alone(exact_plan)
    del exact_plan
    log("time to first token ...")
    bare_fp32, _ = on_own_thread(bare_model, config.entry, torch.float32)
    report["ttft"] = first_token(loaded, bare, message, config.repeats, bare_fp32)
    log("model switch ...")
    del loaded, bare, bare_fp32
    free_memory()
    report["switch"], report["memory"] = switch(manager, config.entry, first_load_s, config.repeats)
    if config.hub_server:
        log("the hub server through gradio_client ...")
        report["hub_server"] = hub_server(config, message, manager.get(config.entry.id))
    manager.unload(config.entry.id)
    if config.transformers_serve:
        report["transformers_serve"] = transformers_serve(config, message, manager, log)
    report["ratios"] = ratios(report)
    report["finished"] = now_iso()
    return report


# -- inputs -------------------------------------------------------------------------------------
# -- (1) single stream ----------------------------------------------------------------------------
def bare_generate(model, prompt, new_tokens: int) -> tuple[list[int], float]:
    ids = torch.tensor([prompt.input_ids], device=model.device)
    stops = prompt.stop_token_ids
    started = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                             max_new_tokens=new_tokens, eos_token_id=stops or None,
                             pad_token_id=(stops or [0])[0], temperature=None, top_p=None, top_k=None)
    return out[0, ids.shape[1]:].tolist(), time.perf_counter() - started


def engine_run(loaded: LoadedModel, message: str, new_tokens: int):
    """(last chunk, seconds to the last chunk, seconds to the first chunk) for one streamed reply."""
    started, first, last = time.perf_counter(), None, None
    for last in stream_chat(loaded, [{"role": "user", "content": message}], greedy(loaded, new_tokens)):
        first = first or time.perf_counter()
    return last, time.perf_counter() - started, (first or time.perf_counter()) - started


@contextmanager
def generate_path(loaded: LoadedModel):
    """Serve this model through generate() on a worker thread instead of the batched loop."""
    saved, loaded.decoder = loaded.decoder, None
    try:
        yield loaded
    finally:
        loaded.decoder = saved


@contextmanager
def _nothing(loaded: LoadedModel):
    yield loaded


def exact_copy(entry: ModelEntry) -> LoadedModel:
    """The entry loaded again with an exact decode plan: every step bitwise generate()'s, in its dtype."""
    from demo.loader import load_entry

    settings = (entry.decode or DecodeSettings()).model_copy(update={"exact": True})
    return load_entry(entry.model_copy(update={"decode": settings}))


VARIANTS = {"engine": _nothing, "engine_exact": None, "engine_generate_path": generate_path}


def alone(loaded: LoadedModel) -> LoadedModel:
    """`loaded` with its decode loop's thread ended, so what runs next has the only OpenMP pool.

    The loop's thread idles for 2 s before it ends. A baseline that starts within those 2 s shares the
    cores with a second pool, and pays for it (demo.threads): a bare prefill measured 167 ms then, against
    114 ms once the loop had ended. The hub's next request starts a fresh loop thread, as after any idle
    pause."""
    if loaded.decoder is not None:
        loaded.decoder.close(wait_s=10.0)
    return loaded


def single_stream(loaded: LoadedModel, bare, message: str, config: BenchConfig, exact_plan: LoadedModel) -> dict:
    prompt = build_prompt(loaded, message, config.new_tokens)
    # Baselines run on a thread that ends with them, as the hub's loads and decode loop do, and after the
    # loop's thread has ended, so every variant runs with one OpenMP pool alive (demo.threads).
    on_own_thread(bare_generate, bare, prompt, 4)  # warm-up: first calls allocate
    engine_run(loaded, message, 4)
    rates = {"bare_generate": [], **{name: [] for name in VARIANTS}}
    equal = dict.fromkeys(VARIANTS, True)
    tokens = 0
    for _ in range(config.repeats):  # interleaved, so load from elsewhere hits every variant alike
        alone(loaded)
        reference, seconds = on_own_thread(bare_generate, bare, prompt, config.new_tokens)
        tokens = len(reference)
        rates["bare_generate"].append(len(reference) / seconds)
        for name, variant in VARIANTS.items():
            alone(exact_plan)
            with (variant or _nothing)(alone(loaded if variant else exact_plan)) as model:
                last, seconds, _ = engine_run(model, message, config.new_tokens)
            rates[name].append(last.stats.new_tokens / seconds)
            equal[name] = equal[name] and last.output_ids == reference
    result = {f"{k}_tok_s": statistics.median(v) for k, v in rates.items()}
    result.update(samples=rates, tokens=tokens, greedy_equal_to_bare=equal)
    return result


# -- (3) time to first token ------------------------------------------------------------------------
def bare_prefill(model, prompt) -> float:
    ids = torch.tensor([prompt.input_ids], device=model.device)
    started = time.perf_counter()
    with torch.inference_mode():
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids), logits_to_keep=1).logits
        int(logits[0, -1].argmax())
    return time.perf_counter() - started


def first_token(loaded: LoadedModel, bare, message: str, repeats: int, bare_fp32) -> dict:
    """The hub's time to first token against a bare prefill forward of the same prompt, in the model's dtype
    and in float32 (on a CPU without bf16 kernels float32 prefills about 3x faster: demo.decodeplan)."""
    prompt = build_prompt(loaded, message, 2)
    bare_s, fp32_s, hub, hub_generate = [], [], [], []
    for _ in range(max(3, repeats)):
        alone(loaded)
        bare_s.append(on_own_thread(bare_prefill, bare, prompt))
        fp32_s.append(on_own_thread(bare_prefill, bare_fp32, prompt))
        hub.append(engine_run(loaded, message, 2)[2])  # starts the loop's thread afresh
        with generate_path(alone(loaded)):
            hub_generate.append(engine_run(loaded, message, 2)[2])
    b, f, h, g = (statistics.median(x) for x in (bare_s, fp32_s, hub, hub_generate))
    return {"bare_prefill_s": b, "bare_fp32_prefill_s": f, "hub_ttft_s": h, "overhead_s": h - b,
            "hub_ttft_vs_fp32_prefill": h / f, "hub_generate_path_ttft_s": g, "generate_path_overhead_s": g - b}


# -- (4) model switch --------------------------------------------------------------------------------
def bare_load(entry: ModelEntry) -> float:
    model, seconds = bare_model(entry)
    del model
    gc.collect()
    return seconds


def bare_model(entry: ModelEntry, dtype=None):
    """(stock transformers model, seconds its tokenizer and weights took to load) of the entry's folder;
    in `dtype` when given, else in the entry's."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from adapters.weights import resolve
    from demo.loader import pick_device, pick_dtype

    weights = resolve(entry.source)
    device = pick_device(entry.device)
    started = time.perf_counter()
    AutoTokenizer.from_pretrained(weights.location, **weights.pretrained_kwargs())
    model = AutoModelForCausalLM.from_pretrained(weights.location, dtype=dtype or pick_dtype(entry.dtype, device),
                                                 **weights.pretrained_kwargs()).to(device)
    return model, time.perf_counter() - started


def switch(manager: ModelManager, entry: ModelEntry, first_load_s: float, repeats: int) -> tuple[dict, dict]:
    """Switch times, and the memory taken by a cold reload (libraries are imported by then).

    Cold loads alternate with bare loads, `repeats` pairs, and each side's median is compared: one pair
    on this VM moves by ±10%."""
    cached = []
    for _ in range(200):
        started = time.perf_counter()
        manager.get(entry.id)
        cached.append(time.perf_counter() - started)
    bare, cold, memory = [], [], {}
    for _ in range(repeats):
        bare.append(on_own_thread(bare_load, entry))  # like the hub, which loads on a thread of its own
        manager.unload(entry.id)  # frees and trims the C heap, so the process shrinks back
        rss_before = rss_bytes()
        started = time.perf_counter()
        loaded = manager.get(entry.id)  # cold again, the files as warm in the page cache as the bare load had them
        cold.append(time.perf_counter() - started)
        memory = memory_of(loaded, entry, rss_bytes() - rss_before)
        del loaded
    return {"cached_s": statistics.median(cached), "cold_s": statistics.median(cold), "first_cold_s": first_load_s,
            "bare_from_pretrained_s": statistics.median(bare), "cold_samples_s": cold,
            "bare_samples_s": bare}, memory


# -- (6) memory ----------------------------------------------------------------------------------------
def memory_of(loaded: LoadedModel, entry: ModelEntry, rss_growth: int) -> dict:
    """The process's growth on load against the weights' bytes in memory (and on disk, for reference)."""
    from adapters.weights import resolve

    file_bytes = resolve(entry.source).file_bytes()
    return {"model": loaded.id, "tensor_bytes": loaded.memory_bytes, "rss_growth_bytes": rss_growth,
            "file_bytes": file_bytes, "dtype": str(getattr(loaded.model, "dtype", ""))}


# -- (2) and (5): servers ----------------------------------------------------------------------------------
def hub_server(config: BenchConfig, message: str, loaded: LoadedModel) -> dict:
    """The hub as a server process: one client through the Chat UI and the API, then 1..N at once.

    The single-client requests alternate with the engine alone (`loaded`, in this process, while the
    server idles), and (2) compares them: this VM's speed drifts by 10-20% over minutes, and measuring
    both within the same minute keeps that drift out of the ratio.
    """
    import yaml

    folder = Path(tempfile.mkdtemp(prefix="bench-hub-"))
    registry = folder / "registry.yaml"
    entry = config.entry.model_dump(mode="json", exclude_none=True, exclude_defaults=True)
    registry.write_text(yaml.safe_dump({"settings": {"default_model": config.entry.id}, "models": [entry]}))
    port = servers.free_port()
    url = f"http://127.0.0.1:{port}/"
    with servers.server(servers.hub_command(registry, port), url, config.out / "hub-server.log"):
        clients = [servers.HubClient(url, config.entry.id) for _ in range(max(config.clients))]
        # The same server through its OpenAI-compatible API: the client and protocol transformers serve is
        # measured with, so this series is the like-for-like comparison with it.
        api = [servers.OpenAIClient(url, config.entry.id) for _ in range(max(config.clients))]
        clients[0].request(message, 4)  # warm-ups
        api[0].request(message, 4)
        engine, single, api_single = [], [], []
        for _ in range(config.repeats):
            last, seconds, _ = engine_run(loaded, message, config.new_tokens)
            engine.append(last.stats.new_tokens / seconds)
            single.append(clients[0].request(message, config.new_tokens))
            api_single.append(api[0].request(message, config.new_tokens))
        result = {"single": servers.summarize(single, 1), "api_single": servers.summarize(api_single, 1),
                  "engine_alone_tok_s": statistics.median(engine), "engine_alone_samples": engine}
        result["concurrency"] = servers.series(clients, config.clients, message, config.new_tokens,
                                               config.rounds, config.repeats)
        result["api_concurrency"] = servers.series(api, config.clients, message, config.new_tokens,
                                                   config.rounds, config.repeats)
    return result


def transformers_serve(config: BenchConfig, message: str, manager: ModelManager, log) -> dict:
    """The same weights saved to a folder, served by `transformers serve`, with and without batching."""
    folder = Path(tempfile.mkdtemp(prefix="bench-tserve-"))
    model, _ = on_own_thread(bare_model, config.entry)  # stock weights in the entry's dtype
    save_checkpoint(model, manager.get(config.entry.id).tokenizer, folder)
    dtype = str(model.dtype).replace("torch.", "")
    manager.unload(config.entry.id)
    del model
    results = {}
    for batching in (False, True):
        name = "continuous_batching" if batching else "plain"
        log(f"transformers serve ({name}) ...")
        port = servers.free_port()
        url = f"http://127.0.0.1:{port}"
        command = servers.transformers_serve_command(folder, port, batching, dtype)
        with servers.server(command, url + "/health", config.out / f"transformers-serve-{name}.log"):
            client = servers.OpenAIClient(url, str(folder))
            client.request(message, 4)  # warm-up: the first request loads nothing (forced model) but allocates
            clients = [servers.OpenAIClient(url, str(folder)) for _ in range(max(config.clients))]
            results[name] = servers.series(clients, config.clients, message, config.new_tokens, config.rounds,
                                           config.repeats)
    return results


def save_checkpoint(model, tokenizer, folder: Path) -> None:
    """A stock model's weights as a plain safetensors checkpoint (a GGUF source is saved dequantized)."""
    config = model.config
    if getattr(config, "quantization_config", None) and _is_gguf(config.quantization_config):
        del config.quantization_config  # the weights in memory are already plain tensors
        model.hf_quantizer = None
        model.is_quantized = False
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def _is_gguf(quantization_config) -> bool:
    method = quantization_config.get("quant_method") if isinstance(quantization_config, dict) else \
        getattr(quantization_config, "quant_method", None)
    return str(method).lower().endswith("gguf")


# -- summary -------------------------------------------------------------------------------------------------
def ratios(report: dict) -> dict:
    out = {}
    if report.get("llama_cpp"):
        from .llamacpp import ratios as llama_ratios

        out.update(llama_ratios(report["llama_cpp"]))
    single = report["single_stream"]
    out["engine_vs_bare"] = single["engine_tok_s"] / single["bare_generate_tok_s"]
    out["engine_generate_path_vs_bare"] = single["engine_generate_path_tok_s"] / single["bare_generate_tok_s"]
    if "engine_exact_tok_s" in single:  # older reports: no such variant
        out["engine_exact_vs_bare"] = single["engine_exact_tok_s"] / single["bare_generate_tok_s"]
    out["ttft_overhead_ms"] = report["ttft"]["overhead_s"] * 1000
    if "hub_ttft_vs_fp32_prefill" in report["ttft"]:  # older reports: no float32 baseline
        out["ttft_vs_fp32_prefill"] = report["ttft"]["hub_ttft_vs_fp32_prefill"]
    switch_ = report["switch"]
    out["switch_cached_ms"] = switch_["cached_s"] * 1000
    out["switch_cold_vs_bare"] = switch_["cold_s"] / switch_["bare_from_pretrained_s"]
    memory = report["memory"]
    out["memory_rss_vs_weights"] = memory["rss_growth_bytes"] / memory["tensor_bytes"]
    hub = report.get("hub_server")
    if hub:
        engine = hub.get("engine_alone_tok_s") or single["engine_tok_s"]  # older reports: no interleaved runs
        out["server_vs_engine"] = hub["single"]["per_request_tok_s"] / engine
        if hub.get("api_single"):
            out["server_api_vs_engine"] = hub["api_single"]["per_request_tok_s"] / engine
        for prefix, series in (("hub", hub["concurrency"]), ("hub_api", hub.get("api_concurrency") or [])):
            out.update(concurrency_ratios(prefix, series, report.get("transformers_serve") or {}))
    return out


def concurrency_ratios(prefix: str, series: list[dict], serve: dict) -> dict:
    """n clients against 1 client, and against each transformers serve run at n clients."""
    out = {}
    by_clients = {c["clients"]: c for c in series}
    if 1 in by_clients:
        for n, c in by_clients.items():
            out[f"{prefix}_{n}_clients_vs_1"] = paired_ratio(c, by_clients[1])
            out[f"{prefix}_{n}_clients_vs_1_of_medians"] = c["aggregate_tok_s"] / by_clients[1]["aggregate_tok_s"]
    for name, runs in serve.items():
        theirs = {c["clients"]: c for c in runs}
        for n, c in by_clients.items():
            if n in theirs:
                out[f"{prefix}_vs_transformers_serve_{name}_{n}_clients"] = \
                    c["aggregate_tok_s"] / theirs[n]["aggregate_tok_s"]
    return out


def paired_ratio(many: dict, one: dict) -> float:
    """The median, over repeats, of n clients' tok/s ÷ one client's in the same repeat.

    A repeat runs every client count within a minute or so (bench.servers.series), and this VM's
    speed drifts 10-20% over minutes; pairing by repeat keeps that drift out of the ratio, where a ratio of
    the two medians can set a fast repeat of one count against a slow repeat of the other."""
    pairs = list(zip(many.get("aggregate_tok_s_samples") or [], one.get("aggregate_tok_s_samples") or []))
    if not pairs:  # older reports: one run each
        return many["aggregate_tok_s"] / one["aggregate_tok_s"]
    return statistics.median(a / b for a, b in pairs)


def machine() -> dict:
    import psutil

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    # The vector ISA decides bf16 speed: without AVX-512 a bf16 matmul costs about as many times one row
    # as it has rows, and nothing can be packed (demo.prepack); two "AMD EPYC" VMs can differ in it.
    return {"cpu": cpu, "cpu_capability": torch.backends.cpu.get_cpu_capability(), "cores": os.cpu_count(),
            "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
            "torch_threads": torch.get_num_threads(), "gpu": torch.cuda.get_device_name(0)
            if torch.cuda.is_available() else None, "torch": torch.__version__,
            "load_average_at_start": list(os.getloadavg()), "python": platform.python_version()}


def now_iso() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
