"""Shared helpers for the family tests: the upstream fixtures (tests/fixtures/, see its README) and CLI calls."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from demo.cli import main

FIXTURES = Path(__file__).resolve().parent / "fixtures"
UPSTREAM = FIXTURES / "upstream"
PROMPTS = FIXTURES / "prompts"
FOLDERS = ["chatglm3", "baichuan2-7b", "baichuan2-13b", "qwen1", "llama3", "yi"]
FAMILY_OF = {"chatglm3": "chatglm3", "baichuan2-7b": "baichuan2", "baichuan2-13b": "baichuan2",
             "qwen1": "qwen1", "llama3": "llama3", "yi": "yi"}
# Upstream builders of these families turn typed special-token text into control ids; the hub keeps it text.
TEXT_STAYS_TEXT = {"llama3", "yi", "baichuan2-7b", "baichuan2-13b"}


def reference(folder: str) -> dict:
    return json.loads((UPSTREAM / folder / "reference.json").read_text(encoding="utf-8"))


def cases(folders=FOLDERS):
    return [pytest.param(f, c, id=f"{f}-{c['id']}") for f in folders for c in reference(f)["cases"]]


def run_json(capsys, *argv) -> dict:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return json.loads(captured.out)


def run_error(capsys, *argv) -> str:
    code = main([str(a) for a in argv])
    assert code != 0
    return capsys.readouterr().err


def write_messages(tmp_path: Path, messages, name="messages.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(messages, ensure_ascii=False), encoding="utf-8")
    return path


def copy_folder(folder: str, tmp_path: Path, weights: bool = True) -> Path:
    target = tmp_path / folder
    ignore = shutil.ignore_patterns("*.safetensors", "*.bin") if not weights else None
    shutil.copytree(UPSTREAM / folder, target, ignore=ignore)
    return target
