"""`python -m demo bench` at a tiny size: a tiny real checkpoint, a real hub server, the real gradio_client.

Asserts the report's shape and that every number is finite and positive where it must be; nothing about
speed (the machine is shared and noisy). `transformers serve` is left out here to keep CI short; the full
run in the README includes it.
"""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.report import finite_numbers
from tests.tiny import make_tiny_chat_model

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    folder = make_tiny_chat_model(tmp_path_factory.mktemp("tiny") / "tiny-chat")
    out = tmp_path_factory.mktemp("bench")
    result = subprocess.run(
        [sys.executable, "-m", "demo", "bench", str(folder), "--prompt-tokens", "24", "--new-tokens", "6",
         "--clients", "1,2", "--repeats", "1", "--no-transformers-serve", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((out / "report.json").read_text()), out, result.stdout


def test_report_has_every_section_with_finite_numbers(report):
    data, out, _ = report
    for key in ("machine", "settings", "single_stream", "ttft", "switch", "memory", "hub_server", "ratios"):
        assert key in data, key
    assert finite_numbers(data) == []
    import torch

    assert data["machine"]["cpu_capability"] == torch.backends.cpu.get_cpu_capability()  # e.g. AVX2, AVX512
    single = data["single_stream"]
    for key in ("bare_generate_tok_s", "engine_tok_s", "engine_exact_tok_s", "engine_generate_path_tok_s"):
        assert single[key] > 0
    # in exact mode the batched loop, and the generate path, give bare generate's greedy tokens; the
    # default (batch-invariant rounding) is reported, not asserted: it may round a near tie the other way
    equal = single["greedy_equal_to_bare"]
    assert set(equal) == {"engine", "engine_exact", "engine_generate_path"}
    assert equal["engine_exact"] is True and equal["engine_generate_path"] is True
    assert data["ttft"]["bare_prefill_s"] > 0 and data["ttft"]["hub_ttft_s"] > 0
    assert data["switch"]["cold_s"] > 0 and data["switch"]["bare_from_pretrained_s"] > 0
    assert len(data["switch"]["cold_samples_s"]) == len(data["switch"]["bare_samples_s"]) == 1
    assert data["memory"]["tensor_bytes"] > 0 and data["memory"]["file_bytes"] > 0


def test_hub_server_runs_concurrent_clients_through_gradio_client_and_the_api(report):
    data, _, _ = report
    hub = data["hub_server"]
    for key in ("single", "api_single"):  # one client, through the UI and through the API
        assert hub[key]["tokens"] > 0 and hub[key]["per_request_tok_s"] > 0
    # the engine alone, run in this process in turn with those requests: the baseline of (2)
    assert len(hub["engine_alone_samples"]) == 1 and hub["engine_alone_tok_s"] > 0
    assert data["ratios"]["server_vs_engine"] == pytest.approx(
        hub["single"]["per_request_tok_s"] / hub["engine_alone_tok_s"])
    for series in ("concurrency", "api_concurrency"):  # the UI through gradio_client, the OpenAI-style API
        runs = {run["clients"]: run for run in hub[series]}
        assert set(runs) == {1, 2}
        for n, run in runs.items():
            assert run["requests"] == n and run["tokens"] > 0 and run["aggregate_tok_s"] > 0
            assert 0 < run["ttft_p50_s"] <= run["ttft_p95_s"]
            assert run["aggregate_tok_s_samples"] == [run["aggregate_tok_s"]]  # --repeats 1: one run each
    for key in ("engine_vs_bare", "engine_exact_vs_bare", "server_vs_engine", "server_api_vs_engine", "switch_cold_vs_bare",
                "hub_2_clients_vs_1", "hub_api_2_clients_vs_1"):
        assert data["ratios"][key] > 0


def test_table_and_plot_are_written(report):
    data, out, stdout = report
    assert "| (1) engine streaming tok/s ÷ bare generate |" in stdout
    table = (out / "table.md").read_text()
    assert "| hub UI (gradio_client) | 2 |" in table and "| hub API (OpenAI protocol) | 2 |" in table
    png = (out / "bench.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000


def test_bad_options_are_clear_errors(capsys):
    from demo.cli import main

    assert main(["bench", "--clients", "1,x"]) == 2
    assert "--clients takes comma-separated integers" in capsys.readouterr().err


def test_series_keeps_the_median_run_of_each_client_count(monkeypatch):
    from bench import servers as bench_servers

    rates = iter([10.0, 20.0, 30.0, 40.0, 25.0, 60.0])  # repeats interleave the counts: 1, 2, 1, 2, 1, 2

    def fake_concurrent(clients, message, new_tokens, rounds):
        return {"clients": len(clients), "aggregate_tok_s": next(rates)}

    monkeypatch.setattr(bench_servers, "concurrent", fake_concurrent)
    runs = bench_servers.series(["a", "b"], [1, 2], "hi", 4, 1, 3)
    assert [run["clients"] for run in runs] == [1, 2]
    assert runs[0]["aggregate_tok_s"] == 25.0 and runs[0]["aggregate_tok_s_samples"] == [10.0, 30.0, 25.0]
    assert runs[1]["aggregate_tok_s"] == 40.0 and runs[1]["aggregate_tok_s_samples"] == [20.0, 40.0, 60.0]


def test_clients_against_one_pair_runs_of_the_same_repeat():
    from bench.run import concurrency_ratios

    # repeat 2 ran slow for both counts: paired, each repeat gives 3.0; the medians would give 60/25 = 2.4
    one = {"clients": 1, "aggregate_tok_s": 25.0, "aggregate_tok_s_samples": [20.0, 10.0, 25.0]}
    four = {"clients": 4, "aggregate_tok_s": 60.0, "aggregate_tok_s_samples": [60.0, 30.0, 75.0]}
    ratios = concurrency_ratios("hub", [one, four], {})
    assert ratios["hub_4_clients_vs_1"] == 3.0 and ratios["hub_4_clients_vs_1_of_medians"] == 2.4
    old = concurrency_ratios("hub", [{"clients": 1, "aggregate_tok_s": 20.0}, {"clients": 4, "aggregate_tok_s": 50.0}], {})
    assert old["hub_4_clients_vs_1"] == 2.5
