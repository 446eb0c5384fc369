"""`python -m demo bench --structured`: its arithmetic and report on made-up runs (nothing is timed here), and
its prompts' schemas as the grammar takes them. The lead runs the bench itself on a quiet machine."""
from __future__ import annotations

import math

import pytest

from bench.structured import CASES, TARGET, markdown, per_token, summarize


def reply(decode_s: float, decode_tokens: int, ttft_s: float = 0.1) -> dict:
    return {"text": "{}", "finish_reason": "stop", "error": None, "tokens": decode_tokens + 1, "ttft_s": ttft_s,
            "decode_tokens": decode_tokens, "decode_s": decode_s}


def run(constrained: list[dict], plain: list[dict], mask_s: float = 0.0, calls: int = 0) -> dict:
    return {"constrained": constrained, "plain": plain, "mask_s": mask_s, "mask_calls": calls}


def test_per_token_pools_the_prompts_of_a_run():
    # 30 tokens in 3.3 s constrained, 30 in 3.0 s plain: 0.11 against 0.10 s a token
    one = run([reply(1.1, 10), reply(2.2, 20)], [reply(1.0, 10), reply(2.0, 20)], mask_s=0.06, calls=32)
    result = per_token(one)
    assert result["constrained_s_per_token"] == pytest.approx(0.11)
    assert result["plain_s_per_token"] == pytest.approx(0.10)
    assert result["ratio"] == pytest.approx(1.1) and result["mask_s_per_token"] == pytest.approx(0.06 / 32)
    assert math.isnan(per_token(run([reply(0.0, 0)], [reply(1.0, 10)]))["constrained_s_per_token"])


def test_summary_takes_the_median_repeat_and_says_whether_the_target_is_met():
    runs = [run([reply(1.2, 10)], [reply(1.0, 10)]), run([reply(1.1, 10)], [reply(1.0, 10)]),
            run([reply(3.0, 10)], [reply(1.0, 10)])]  # one repeat disturbed by the machine
    summary = summarize(runs, [0.02, 0.04, 0.03], 1.5, [True, True, False], "plan")
    assert summary["ratio"] == pytest.approx(1.2) and summary["met"] is False and summary["target"] == TARGET
    assert summary["ratio_samples"] == pytest.approx([1.2, 1.1, 3.0])
    assert (summary["setup_s"], summary["first_setup_s"], summary["valid"], summary["replies"]) == (0.03, 1.5, 2, 3)
    met = summarize(runs[1:2], [0.02], 1.0, [True], "plan")
    assert met["met"] is True
    table = markdown({"prompts": 1, "repeats": 1, "engines": {"llama.cpp": met}})
    assert "| llama.cpp: s/token, json_schema ÷ unconstrained, 1 prompts (median of 1) | 1.100 | ≤ 1.15 | yes |" in table
    assert "replies valid 1/1" in table


def test_the_bench_schemas_compile():
    from demo.structured import json_constraint
    from tests.tiny import smollm_tokenizer

    tokenizer = smollm_tokenizer()  # the default model's
    for _, schema in CASES:
        processor = json_constraint(tokenizer, {"type": "json_schema", "json_schema": {"schema": schema}}, [2], 49152)
        assert not processor.matcher.is_error()


def test_structured_flag_checks_its_numbers(capsys):
    from demo.cli import main

    assert main(["bench", "--structured", "--repeats", "0"]) == 2
    assert "--repeats must be positive" in capsys.readouterr().err
