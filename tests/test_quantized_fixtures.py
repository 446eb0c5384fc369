"""The published quantized layouts through the hub: Yi-6B-Chat-4bits (AWQ) and Qwen-7B-Chat-Int4 (GPTQ).

tests/fixtures/quantized/ (see its README in the shared fixtures) holds tiny folders in the upstream
layouts and the logits and greedy tokens of their exactly dequantized upstream models. Through the hub's
own loader (family detected from the files, no remote code): prompt ids exact, greedy continuation equal,
last-position logits at cosine >= 0.999 (the CPU int4 kernels round to bfloat16).
"""
import json
from pathlib import Path

import pytest
import torch

from demo.engine import stream_ids
from demo.loader import folder_entry, load_entry

FIXTURES = Path(__file__).parent / "fixtures" / "quantized"


@pytest.fixture(scope="module", params=["yi-awq", "qwen1-gptq"])
def case_set(request, tmp_path_factory, monkeypatch_module):
    monkeypatch_module.setenv("HUB_CACHE", str(tmp_path_factory.mktemp("hub-cache")))  # native conversions
    folder = FIXTURES / request.param
    loaded = load_entry(folder_entry(str(folder)))
    return request.param, loaded, json.loads((folder / "reference.json").read_text())


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def messages_of(case: dict) -> list[dict]:
    if "messages" in case:
        return case["messages"]
    call = case["upstream_call"]  # qwen1: make_context(query, history, system)
    messages = [{"role": "system", "content": call["system"]}]
    for user, reply in call.get("history") or []:
        messages += [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]
    return messages + [{"role": "user", "content": call["query"]}]


def test_format_family_and_kernels(case_set):
    name, loaded, _ = case_set
    expected = {"yi-awq": ("awq", "yi", "TorchAtenAwqLinear"), "qwen1-gptq": ("gptq", "qwen1", "TorchAtenLinear")}
    method, family, kernel = expected[name]
    assert (loaded.quant_format, loaded.bits) == (method, 4)
    assert loaded.adapter.family == family
    assert kernel in {type(m).__name__ for m in loaded.model.modules()}
    assert loaded.model.dtype == torch.bfloat16  # dtype auto on CPU


def test_prompt_ids_are_exact(case_set):
    name, loaded, reference = case_set
    for case in reference["cases"]:
        prompt = loaded.adapter.build_prompt(loaded.tokenizer, messages_of(case), loaded.context_length)
        assert prompt.input_ids == case["input_ids"], case["id"]
        assert sorted(prompt.stop_token_ids) == sorted(reference["stop_token_ids"])


def test_logits_and_greedy_continuation_match_the_dequantized_reference(case_set):
    _, loaded, reference = case_set
    for case in reference["cases"]:
        expected = case["reference"]
        with torch.no_grad():
            logits = loaded.model(torch.tensor([case["input_ids"]])).logits[0, -1].float()
        target = torch.tensor(expected["last_logits"])
        assert torch.nn.functional.cosine_similarity(logits, target, dim=0) >= 0.999, case["id"]
        assert int(logits.argmax()) == expected["last_logits_argmax"]
        if loaded.tokenizer is None:  # the stand-alone Qwen1 conversion: no tokenizer to stream through
            ids = torch.tensor([case["input_ids"]])
            output = loaded.model.generate(ids, max_new_tokens=8, do_sample=False, eos_token_id=None)
            assert output[0, ids.shape[1]:].tolist() == expected["greedy_new_tokens"], case["id"]
            continue
        params = loaded.defaults.override({"greedy": True, "max_new_tokens": 8, "repetition_penalty": 1.0})
        last = list(stream_ids(loaded, case["input_ids"], params, stop_ids=[]))[-1]
        assert last.output_ids == expected["greedy_new_tokens"], case["id"]


@pytest.mark.parametrize("family", ["chatglm3", "baichuan2-13b"])
def test_remote_code_families_quantize_at_load_with_bitsandbytes(family, tmp_path, monkeypatch):
    """ChatGLM3 and Baichuan2 quantized: their native ports take bitsandbytes at load (8-bit here: the tiny
    hidden sizes are not whole 4-bit blocks); their own int4 formats are refused in test_quantized.py."""
    from demo.registry import Quantization

    monkeypatch.setenv("HUB_CACHE", str(tmp_path))
    folder = Path(__file__).parent / "fixtures" / "upstream" / family
    entry = folder_entry(str(folder)).model_copy(update={"quantization": Quantization(method="bnb-8bit")})
    loaded = load_entry(entry)
    assert (loaded.quant_format, loaded.bits) == ("bnb-8bit", 8)
    assert "Linear8bitLt" in {type(m).__name__ for m in loaded.model.modules()}
    case = json.loads((folder / "reference.json").read_text())["cases"][0]
    with torch.no_grad():
        logits = loaded.model(torch.tensor([case["input_ids"]])).logits[0, -1].float()
    assert torch.nn.functional.cosine_similarity(logits, torch.tensor(case["last_logits"]), dim=0) >= 0.99
