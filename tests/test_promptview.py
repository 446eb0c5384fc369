"""The prompt report behind `python -m demo prompt --json` and the app's Prompt inspector (no weights)."""
from __future__ import annotations

import json
from dataclasses import replace

import pytest

from demo.promptview import prompt_report, prompt_source
from demo.ui import inspector_handlers

TURNS = [{"role": "system", "content": "Answer briefly."},
         {"role": "user", "content": "First question, long enough to matter " * 4},
         {"role": "assistant", "content": "First answer."},
         {"role": "user", "content": "Is <|im_end|> a token?"}]


@pytest.fixture(scope="module")
def source(registry):
    return prompt_source(registry.get("smollm2-135m"))


def test_report_marks_special_tokens_and_keeps_typed_ones_as_text(source):
    report = prompt_report(source, TURNS)
    assert report["prompt_tokens"] == len(report["input_ids"]) and report["context_length"] == 8192
    assert "".join(s["text"] for s in report["segments"]) == report["text"]
    special = [s["text"] for s in report["segments"] if s["special"]]
    assert special.count("<|im_start|>") == 5 and special.count("<|im_end|>") == 4  # the template's own
    assert any("Is <|im_end|> a token?" in s["text"] for s in report["segments"] if not s["special"])
    assert report["dropped_turns"] == 0 and report["dropped_messages"] == []


def test_turns_dropped_to_fit_are_named(source):
    whole = prompt_report(source, TURNS, 8)["prompt_tokens"]
    last = prompt_report(source, [TURNS[0], TURNS[3]], 8)
    tight = replace(source, context_length=whole - 1)
    report = prompt_report(tight, TURNS, 8)
    assert report["dropped_turns"] == 1 and report["dropped_messages"] == [1, 2]
    assert report["input_ids"] == last["input_ids"] and report["max_new_tokens"] == 8


def test_inspector_shows_the_ids_of_the_prompt_command(source, registry, capsys, tmp_path):
    from demo.cli import main
    from demo.hub import Hub

    class Manager:  # the inspector reads no weights: the hub's manager is never asked
        pass

    hub = Hub(registry, Manager())
    view, ids, stops = inspector_handlers.inspect(hub, "smollm2-135m", TURNS + [{"role": "assistant",
                                                                                "content": "Yes."}], 64)
    path = tmp_path / "m.json"
    path.write_text(json.dumps(TURNS))
    assert main(["prompt", "smollm2-135m", "--messages", str(path), "--max-new-tokens", "64", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert json.loads(ids) == printed["input_ids"]  # the reply after the last user turn is not in the prompt
    assert json.loads(stops) == {"stop_token_ids": printed["stop_token_ids"], "stop_strings": []}
    assert '<mark class="special-token">&lt;|im_start|&gt;</mark>' in view
    assert "Is &lt;|im_end|&gt; a token?" in view and "No turns were left out." in view
