"""`python -m demo batch` on the real default model: order, error records, kill -9 and --resume, a remote.

The in-process runs reuse the session's loaded SmolLM2; the kill -9 run is a real `python -m demo batch`
process, killed once its journal holds a few records.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import demo.batchjob as batchjob
import demo.cli as cli
from demo.batchjob import BatchError, Paths, read_items
from demo.cli import main

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent
QUESTIONS = ["What is the capital of France?", "Name a primary color.", "What is 2 + 2?", "Say hello.",
             "What do bees make?", "Name a planet.", "What is ice made of?", "Name a fruit.",
             "Who wrote Hamlet?", "What color is the sky?", "Name an ocean.", "What is the opposite of hot?",
             "How many legs does a cat have?", "Name a musical instrument.", "What is the sun?", "Name a metal."]
MALFORMED = '{"prompt": "cut short'


def write_jsonl(path: Path) -> Path:
    """16 prompts (half as {"prompt"}, half as {"messages"}) and one malformed line after the fifth."""
    lines = [json.dumps({"prompt": q}) if k % 2 else json.dumps({"messages": [{"role": "user", "content": q}]})
             for k, q in enumerate(QUESTIONS)]
    lines.insert(5, MALFORMED)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def local(smollm, monkeypatch):
    """`batch smollm2-135m` served by the session's loaded model (its gate put back afterwards)."""
    monkeypatch.setattr(smollm, "gate", smollm.gate)
    monkeypatch.setattr(cli, "load_model", lambda entry, registry=None: smollm)
    return smollm


def max_rows_while(loaded, work) -> int:
    """Run `work()`; return the most requests the model's batched decode loop held at once meanwhile."""
    seen, done = [0], threading.Event()

    def watch():
        while not done.is_set():
            batcher = loaded.decoder
            seen[0] = max(seen[0], len(batcher.active) if batcher else 0)
            time.sleep(0.005)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        work()
    finally:
        done.set()
        watcher.join()
    return seen[0]


def test_sixteen_prompts_come_back_in_order_decoded_together_with_an_error_record(local, tmp_path, capsys):
    data, out = write_jsonl(tmp_path / "prompts.jsonl"), tmp_path / "predictions.json"
    argv = ["batch", "smollm2-135m", "--data-file", str(data), "--out", str(out), "--greedy",
            "--max-new-tokens", "12"]
    rows = max_rows_while(local, lambda: main(argv) == 0 or pytest.fail(capsys.readouterr().err))
    records = json.loads(out.read_text(encoding="utf-8"))
    assert len(records) == 17 and [r["index"] for r in records] == list(range(17))
    bad = records.pop(5)
    assert bad["finish_reason"] == "error" and bad["input"] == MALFORMED and bad["line"] == 6
    assert bad["error"].startswith("line 6: not JSON") and bad["output"] == ""
    shown = [r["input"].get("prompt") or r["input"]["messages"][0]["content"] for r in records]
    assert shown == QUESTIONS
    assert all(r["error"] is None and r["finish_reason"] in ("stop", "length") and r["output"] for r in records)
    assert all(r["prompt_tokens"] > 10 and 0 < r["new_tokens"] <= 12 for r in records)
    assert "Paris" in records[0]["output"]
    assert rows > 1, "the prompts were decoded one after another, not together"
    settings = json.loads(Path(tmp_path / "predictions.settings.json").read_text())
    assert settings["model"] == "smollm2-135m" and settings["params"]["greedy"] is True
    assert settings["params"]["max_new_tokens"] == 12 and settings["records"] == 17 and settings["errors"] == 1
    assert not Paths.beside(out).journal.exists()  # assembled: the journal is gone
    assert "17/17" in capsys.readouterr().err  # the progress bar reached the end


def test_kill_9_mid_job_then_resume_keeps_the_written_records(local, tmp_path, monkeypatch):
    data, out = write_jsonl(tmp_path / "prompts.jsonl"), tmp_path / "predictions.json"
    journal = Paths.beside(out).journal
    args = ["batch", "smollm2-135m", "--data-file", str(data), "--out", str(out), "--greedy",
            "--max-new-tokens", "24", "--concurrency", "2"]
    process = subprocess.Popen([sys.executable, "-m", "demo", *args], cwd=ROOT, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    try:
        deadline = time.monotonic() + 240
        while len(journal_lines(journal)) < 5:  # the job line and at least four records
            assert process.poll() is None, process.stderr.read().decode(errors="replace")[-3000:]
            assert time.monotonic() < deadline, "the job wrote too few records in time"
            time.sleep(0.1)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.kill()
        process.wait(timeout=30)
    written = {r["index"]: r for r in map(json.loads, journal_lines(journal)[1:])}
    assert 4 <= len(written) < 17 and not out.exists()

    assert main(args) == 2  # a journal is there: without --resume the job refuses to start over
    sent, real = [], batchjob.stream_chat

    def counted(loaded, messages, *args, **kwargs):  # the engine's own stream, counted
        sent.append(messages[-1]["content"])
        yield from real(loaded, messages, *args, **kwargs)

    monkeypatch.setattr(batchjob, "stream_chat", counted)
    assert main([*args, "--resume"]) == 0
    records = json.loads(out.read_text(encoding="utf-8"))
    assert len(records) == 17 and [r["index"] for r in records] == list(range(17))
    assert all(records[i] == r for i, r in written.items())  # kept as written
    redone = {QUESTIONS.index(q) + (QUESTIONS.index(q) >= 5) for q in sent}
    assert redone.isdisjoint(written) and len(sent) == 17 - len(written) - (5 not in written)
    assert records[5]["finish_reason"] == "error"


def journal_lines(path: Path) -> list[str]:
    if not path.exists():
        return []
    return [line for line in path.read_text(encoding="utf-8").split("\n")[:-1] if line.strip()]


def test_plain_lines_and_a_journal_of_another_job(tmp_path):
    data = tmp_path / "lines.txt"
    data.write_text("first question\n\nsecond {x}\n", encoding="utf-8")
    items = read_items(data)
    assert [(i.index, i.line, i.messages) for i in items] == [
        (0, 1, [{"role": "user", "content": "first question"}]), (1, 3, [{"role": "user", "content": "second {x}"}])]
    assert [i.text for i in read_items(data, raw=True)] == ["first question", "second {x}"]
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n[1, 2]\n{"prompt": 3}\n', encoding="utf-8")
    errors = [i.error for i in read_items(jsonl, raw=True)]
    assert errors == ['line 1: --raw sends text as is; use "prompt", not "messages"',
                      'line 2: expected an object with "messages" or "prompt"', 'line 3: "prompt" must be text']
    journal = batchjob.Journal(tmp_path / "j.jsonl")
    journal.open({"model": "a", "data_sha256": "1", "raw": False, "params": {}}, resume=False)
    journal.write({"index": 0})
    journal.close()
    with open(journal.path, "a") as f:
        f.write('{"index": 1, "cut')  # what a kill in the middle of a write leaves
    assert set(batchjob.Journal(journal.path).open({"model": "a", "data_sha256": "1", "raw": False,
                                                    "params": {}}, resume=True)) == {0}
    with pytest.raises(BatchError, match=r"written by another job \(model differ"):
        batchjob.Journal(journal.path).open({"model": "b", "data_sha256": "1", "raw": False, "params": {}},
                                            resume=True)


def test_a_remote_openai_entry_runs_the_same_job(hub_server, tmp_path):
    """The session's hub server stands in for vLLM: its /v1 API serves SmolLM2 (greedy, 16 tokens)."""
    registry = tmp_path / "registry.yaml"
    registry.write_text(f"models:\n  - id: remote-smollm\n    name: SmolLM2 through /v1\n    backend: openai\n"
                        f"    base_url: {hub_server.url}/v1\n    remote_model: smollm2-135m\n    concurrency: 3\n",
                        encoding="utf-8")
    data, out = tmp_path / "prompts.txt", tmp_path / "remote.json"
    data.write_text("\n".join(QUESTIONS[:3]) + "\n", encoding="utf-8")
    argv = ["--registry", str(registry), "batch", "remote-smollm", "--data-file", str(data), "--out", str(out),
            "--max-new-tokens", "8"]
    assert main(argv) == 0
    records = json.loads(out.read_text(encoding="utf-8"))
    assert [r["input"] for r in records] == QUESTIONS[:3]
    assert all(r["error"] is None and r["output"] and 0 < r["new_tokens"] <= 8 for r in records)
    assert records[0]["prompt_tokens"] > 10  # from the server's usage
    assert main([*argv, "--raw", "--out", str(tmp_path / "raw.json")]) == 2  # no chat template to skip there


def test_bench_batch_job_measures_both_ways_on_the_same_engine(local):
    """`bench --batch-job` at a tiny size (the speed target is the bench's, not a test's)."""
    from bench.batchjob import PROMPTS, markdown, run_batch_bench

    report = run_batch_bench(local, new_tokens=4, repeats=1, prompts=PROMPTS[:3], log=lambda text: None)
    run = report["runs"][0]
    assert run["sequential_s"] > 0 and run["batch_s"] > 0 and report["ratio"] == run["batch_s"] / run["sequential_s"]
    assert isinstance(run["same_replies"], bool) and run["sequential_tokens"] > 0 and run["batch_tokens"] > 0
    assert "batch job ÷ sequential generate calls" in markdown(report)
