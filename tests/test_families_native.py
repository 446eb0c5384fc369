"""Native loading of the upstream-layout checkpoints: fp32 logits, greedy continuations, stops, the cache."""
from __future__ import annotations

import json

import pytest
import torch

from demo.cli import main
from demo.engine import stream_chat
from demo.loader import folder_entry, load_entry
from demo.params import GenerationParams
from tests.families import (FOLDERS, TEXT_STAYS_TEXT, UPSTREAM, cases, reference,
                            run_json)


@pytest.fixture(scope="module")
def loaded():
    """Each tiny checkpoint loaded once through the hub's loader (fp32: they are published in fp32)."""
    models = {}

    def get(folder: str):
        if folder not in models:
            models[folder] = load_entry(folder_entry(str(UPSTREAM / folder)))
        return models[folder]
    return get


@pytest.mark.parametrize("folder", FOLDERS)
def test_fp32_logits_match_upstream(loaded, folder):
    model = loaded(folder)
    assert model.model.dtype == torch.float32
    for case in reference(folder)["cases"]:
        with torch.no_grad():
            logits = model.model(torch.tensor([case["input_ids"]])).logits[0, -1]
        assert (logits - torch.tensor(case["last_logits"])).abs().max().item() < 1e-4, case["id"]


@pytest.mark.parametrize("folder,case", cases())
def test_generate_input_ids_gives_the_upstream_greedy_continuation(capsys, folder, case):
    out = run_json(capsys, "generate", UPSTREAM / folder, "--input-ids", ",".join(map(str, case["input_ids"])),
                   "--greedy", "--max-new-tokens", "8", "--json")
    assert out["output_ids"] == case["greedy_new_tokens"]
    if case["greedy_stopped_on"] is not None:  # the family's stop ids apply to raw ids too
        assert out["finish_reason"] == "stop"


def plain_cases():
    """Cases whose prompt is upstream's id for id (typed special text is where the hub differs)."""
    return [c for c in cases() if not (c.values[1]["id"].startswith("special_tokens")
                                       and c.values[0] in TEXT_STAYS_TEXT)]


@pytest.mark.parametrize("folder,case", plain_cases())
def test_generate_messages_gives_the_upstream_prompt_and_continuation(capsys, tmp_path, folder, case):
    messages = tmp_path / "messages.json"
    messages.write_text(json.dumps(case["messages"]), encoding="utf-8")
    out = run_json(capsys, "generate", UPSTREAM / folder, "--messages", messages, "--greedy",
                   "--max-new-tokens", "8", "--json")
    assert out["prompt_ids"] == case["input_ids"]
    assert out["output_ids"] == case["greedy_new_tokens"]


class ForceToken:
    """A forward hook on lm_head: from the `after`-th forward on, `token` wins every step."""

    def __init__(self, token: int, after: int):
        self.token, self.after, self.calls = token, after, 0

    def __call__(self, module, inputs, output):
        self.calls += 1
        if self.calls > self.after:
            output = output.clone()
            output[..., self.token] = output.abs().max() * 10 + 100
        return output


@pytest.mark.parametrize("folder", FOLDERS)
def test_each_stop_token_ends_the_reply_without_its_text(loaded, folder):
    model = loaded(folder)
    messages = [{"role": "user", "content": "hello"}]
    for stop in reference(folder)["stop_token_ids"]:
        hook = model.model.lm_head.register_forward_hook(ForceToken(stop, after=2))
        try:
            chunks = list(stream_chat(model, messages, GenerationParams(greedy=True, max_new_tokens=20)))
        finally:
            hook.remove()
        last = chunks[-1]
        marker = model.tokenizer.convert_ids_to_tokens(stop)
        assert last.finish_reason == "stop" and last.output_ids[-1] == stop and len(last.output_ids) == 3
        assert marker not in last.text
        # The text is the tokens before the stop (less a character the random tokens left incomplete).
        text = model.tokenizer.decode(last.output_ids[:-1], skip_special_tokens=True)
        text = text.lstrip() if model.adapter.strip_reply_start else text
        assert last.text == text.rstrip("\ufffd")


def test_second_load_reuses_the_converted_weights(hub_cache, monkeypatch):
    from adapters import native

    load_entry(folder_entry(str(UPSTREAM / "qwen1")))  # converted (or already cached by other tests)
    cached = list((hub_cache / "native").iterdir())

    def refuse(*args, **kwargs):
        raise AssertionError("converted twice")
    monkeypatch.setattr(native, "convert_folder", refuse)
    again = load_entry(folder_entry(str(UPSTREAM / "qwen1")))
    assert type(again.model).__name__ == "Qwen2ForCausalLM"
    assert list((hub_cache / "native").iterdir()) == cached


@pytest.mark.parametrize("folder", ["chatglm3", "baichuan2-7b", "baichuan2-13b", "qwen1"])
def test_convert_writes_a_folder_plain_transformers_loads(capsys, tmp_path, folder):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "native"
    assert main(["convert", str(UPSTREAM / folder), str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert "auto_map" not in config and config["model_type"] in ("glm", "llama", "qwen2")
    kwargs = {}
    if config.get("hub_attention"):  # Baichuan2-13B: ALiBi is an attention function registered on import
        import adapters.native.alibi as alibi
        kwargs["attn_implementation"] = alibi.ATTENTION
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32, **kwargs)
    case = reference(folder)["cases"][0]
    with torch.no_grad():
        logits = model(torch.tensor([case["input_ids"]])).logits[0, -1]
    assert (logits - torch.tensor(case["last_logits"])).abs().max().item() < 1e-4
    # The hub serves the converted folder with the family's own prompt.
    messages = tmp_path / "m.json"
    messages.write_text(json.dumps(case["messages"]))
    capsys.readouterr()
    assert run_json(capsys, "prompt", out, "--messages", messages, "--json")["input_ids"] == case["input_ids"]


def test_safetensors_are_preferred_over_bin(tmp_path):
    from adapters.native.shards import weight_files

    (tmp_path / "model.safetensors").write_bytes(b"")
    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    assert [p.name for p in weight_files(tmp_path)] == ["model.safetensors"]


def test_bin_shards_are_read_with_weights_only(tmp_path):
    from adapters.base import AdapterError
    from adapters.native.shards import read_shard

    class Payload:
        def __reduce__(self):
            return (print, ("code ran",))
    torch.save({"w": Payload()}, tmp_path / "pytorch_model.bin")
    with pytest.raises(AdapterError, match="pytorch_model.bin"):
        read_shard(tmp_path / "pytorch_model.bin")


def test_alibi_attention_respects_the_padding_mask(loaded):
    model = loaded("baichuan2-13b").model
    ids = reference("baichuan2-13b")["cases"][0]["input_ids"]
    with torch.no_grad():
        alone = model(torch.tensor([ids])).logits[0, -1]
        padded = model(torch.tensor([[0] * 5 + ids]), attention_mask=torch.tensor([[0] * 5 + [1] * len(ids)]))
    assert (padded.logits[0, -1] - alone).abs().max().item() < 1e-4


class ForceSequence(ForceToken):
    def __call__(self, module, inputs, output):
        output = output.clone()
        output[..., self.token[min(self.calls, len(self.token) - 1)]] = output.abs().max() * 10 + 100
        self.calls += 1
        return output


def test_chatglm3_reply_loses_its_empty_metadata_line(loaded):
    model = loaded("chatglm3")
    tokenizer = model.tokenizer
    newline, hello = tokenizer.sp.encode("\n"), tokenizer.sp.encode("hello")
    stop = tokenizer.convert_tokens_to_ids("<|user|>")
    hook = model.model.lm_head.register_forward_hook(ForceSequence(newline + hello + [stop], after=0))
    try:
        last = list(stream_chat(model, [{"role": "user", "content": "hi"}],
                                GenerationParams(greedy=True, max_new_tokens=20)))[-1]
    finally:
        hook.remove()
    assert last.output_ids == newline + hello + [stop]
    assert last.text == "hello" and last.finish_reason == "stop"
