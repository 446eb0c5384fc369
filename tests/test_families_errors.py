"""Broken checkpoint folders fail with an error that names the file; the hub keeps serving the others."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from demo.manager import ModelLoadError, ModelManager
from demo.registry import parse_registry
from tests.families import UPSTREAM, copy_folder, reference, run_error, write_messages

ROOT = Path(__file__).resolve().parent.parent
HELLO = [{"role": "user", "content": "hello"}]


@pytest.mark.parametrize("folder,tokenizer_file", [("chatglm3", "tokenizer.model"), ("qwen1", "qwen.tiktoken"),
                                                   ("baichuan2-7b", "tokenizer.model"), ("yi", "tokenizer.model"),
                                                   ("llama3", "tokenizer.json")])
def test_missing_tokenizer_file_is_named(capsys, tmp_path, folder, tokenizer_file):
    checkpoint = copy_folder(folder, tmp_path, weights=False)
    (checkpoint / tokenizer_file).unlink()
    err = run_error(capsys, "prompt", checkpoint, "--messages", write_messages(tmp_path, HELLO))
    assert str(checkpoint / tokenizer_file) in err and "missing tokenizer file" in err


@pytest.mark.parametrize("folder,shard", [("qwen1", "model.safetensors"), ("baichuan2-7b", "pytorch_model.bin"),
                                          ("llama3", "model.safetensors")])
def test_corrupt_shard_is_named(capsys, tmp_path, folder, shard):
    checkpoint = copy_folder(folder, tmp_path)
    data = (checkpoint / shard).read_bytes()
    (checkpoint / shard).write_bytes(data[: len(data) // 3])  # a download cut short
    err = run_error(capsys, "generate", checkpoint, "--prompt", "hi", "--max-new-tokens", "2")
    assert str(checkpoint / shard) in err and "cannot read this weight file" in err


def test_unknown_model_type_is_named_with_how_to_choose_a_family(capsys, tmp_path):
    checkpoint = copy_folder("yi", tmp_path, weights=False)
    config = json.loads((checkpoint / "config.json").read_text())
    (checkpoint / "config.json").write_text(json.dumps({**config, "model_type": "mystery"}))
    tokenizer_config = json.loads((checkpoint / "tokenizer_config.json").read_text())
    del tokenizer_config["chat_template"]
    (checkpoint / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    err = run_error(capsys, "prompt", checkpoint, "--messages", write_messages(tmp_path, HELLO))
    assert str(checkpoint / "config.json") in err and "'mystery'" in err and "--family" in err


def test_unknown_model_type_with_a_template_fails_at_load_naming_config(capsys, tmp_path):
    checkpoint = copy_folder("llama3", tmp_path)
    config = json.loads((checkpoint / "config.json").read_text())
    (checkpoint / "config.json").write_text(json.dumps({**config, "model_type": "mystery"}))
    err = run_error(capsys, "generate", checkpoint, "--prompt", "hi", "--max-new-tokens", "2")
    assert str(checkpoint / "config.json") in err and "unknown model_type 'mystery'" in err


def test_a_broken_folder_leaves_the_hub_serving_the_others(tmp_path):
    broken = copy_folder("qwen1", tmp_path)
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    registry = parse_registry(
        "models:\n"
        f"  - id: broken\n    name: Broken\n    source: {{path: {broken}}}\n"
        f"  - id: good\n    name: Good\n    source: {{path: {UPSTREAM / 'chatglm3'}}}\n")
    manager = ModelManager(registry, 2**34)
    with pytest.raises(ModelLoadError, match="model.safetensors"):
        manager.get("broken")
    assert manager.state("broken").status == "error"
    good = manager.get("good")
    from demo.engine import complete
    from demo.params import GenerationParams

    last = complete(good, HELLO, GenerationParams(greedy=True, max_new_tokens=3))
    assert last.finish_reason in ("stop", "length") and last.error is None


def test_prompt_in_a_real_subprocess(tmp_path):
    case = reference("chatglm3")["cases"][1]
    messages = write_messages(tmp_path, case["messages"])
    done = subprocess.run([sys.executable, "-m", "demo", "prompt", str(UPSTREAM / "chatglm3"), "--messages",
                           str(messages), "--json"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["input_ids"] == case["input_ids"]
