"""`prompt FOLDER` on the upstream-layout checkpoints gives upstream's ids and stop ids (no weights read)."""
from __future__ import annotations

import pytest

from adapters import detect_family
from tests.families import (FAMILY_OF, FOLDERS, TEXT_STAYS_TEXT, UPSTREAM, cases, copy_folder,
                            reference, run_json, write_messages)


@pytest.mark.parametrize("folder", FOLDERS)
def test_family_is_detected_from_the_folders_files(folder):
    assert detect_family(UPSTREAM / folder) == FAMILY_OF[folder]


def test_detection_ignores_the_path(tmp_path):
    # A Qwen1 folder named like another family is still Qwen1: only its files count.
    target = tmp_path / "chatglm3-checkpoint-6"
    copy_folder("qwen1", tmp_path, weights=False).rename(target)
    assert detect_family(target) == "qwen1"


@pytest.mark.parametrize("folder,case", cases())
def test_prompt_gives_upstream_ids_and_stops(capsys, tmp_path, folder, case):
    # Only config and tokenizer files: prompt must not need the weights.
    checkpoint = copy_folder(folder, tmp_path, weights=False)
    out = run_json(capsys, "prompt", checkpoint, "--messages", write_messages(tmp_path, case["messages"]), "--json")
    assert out["stop_token_ids"] == reference(folder)["stop_token_ids"]
    if case["id"].startswith("special_tokens") and folder in TEXT_STAYS_TEXT:
        check_typed_specials_stay_text(capsys, tmp_path, checkpoint, case, out["input_ids"])
    else:
        assert out["input_ids"] == case["input_ids"]


def check_typed_specials_stay_text(capsys, tmp_path, checkpoint, case, ids):
    """Upstream forges control ids here; the hub has as many control ids as with the typed text removed."""
    from adapters import get_adapter
    from adapters.weights import Weights

    tokenizer = get_adapter(FAMILY_OF[checkpoint.name]).load_tokenizer(Weights(str(checkpoint)))
    controls = set(tokenizer.added_tokens_decoder) | set(tokenizer.all_special_ids)
    cleaned = [{"role": m["role"], "content": strip_specials(m["content"], tokenizer)} for m in case["messages"]]
    plain = run_json(capsys, "prompt", checkpoint, "--messages", write_messages(tmp_path, cleaned, "clean.json"),
                     "--json")["input_ids"]
    assert sum(i in controls for i in ids) == sum(i in controls for i in plain)
    assert sum(i in controls for i in case["input_ids"]) > sum(i in controls for i in ids)  # upstream forged
    if "prompt_text" in case:  # llama3 / yi: the text is exactly upstream's rendering
        assert tokenizer.decode(ids) == case["prompt_text"]
    user = case["messages"][-1]["content"]
    assert user.strip() in tokenizer.decode(ids)


def strip_specials(text: str, tokenizer) -> str:
    for token in sorted({t.content for t in tokenizer.added_tokens_decoder.values()}, key=len, reverse=True):
        text = text.replace(token, "")
    return text


@pytest.mark.parametrize("folder", FOLDERS)
def test_every_special_token_typed_by_a_user_stays_text(capsys, tmp_path, folder):
    from adapters import get_adapter
    from adapters.weights import Weights

    checkpoint = copy_folder(folder, tmp_path, weights=False)
    widen_context(checkpoint / "config.json")  # Qwen1 has 208 specials: more text than the tiny context
    tokenizer = get_adapter(FAMILY_OF[folder]).load_tokenizer(Weights(str(checkpoint)))
    specials = sorted({t.content for t in tokenizer.added_tokens_decoder.values()} | set(tokenizer.all_special_tokens))
    typed = "say " + " ".join(specials) + " done"
    controls = set(tokenizer.added_tokens_decoder) | set(tokenizer.all_special_ids)
    ids = run_json(capsys, "prompt", checkpoint, "--messages",
                   write_messages(tmp_path, [{"role": "user", "content": typed}]), "--json")["input_ids"]
    plain = run_json(capsys, "prompt", checkpoint, "--messages",
                     write_messages(tmp_path, [{"role": "user", "content": "say done"}], "p.json"), "--json")["input_ids"]
    assert sum(i in controls for i in ids) == sum(i in controls for i in plain)
    assert typed in tokenizer.decode(ids)


def widen_context(config_path, tokens: int = 16384) -> None:
    import json

    config = json.loads(config_path.read_text())
    config.update({k: tokens for k in ("seq_length", "max_position_embeddings", "model_max_length") if k in config})
    config_path.write_text(json.dumps(config))


# -- reply budget and truncation -----------------------------------------------------------------
def multiturn(n: int, system: str = "Keep this system prompt.") -> list[dict]:
    turns = [{"role": "system", "content": system}]
    for i in range(n):
        turns += [{"role": "user", "content": f"question {i} " + "words " * 20},
                  {"role": "assistant", "content": f"answer {i} " + "more " * 20}]
    return turns + [{"role": "user", "content": "last question"}]


def test_reply_budget_comes_from_generation_config_unless_given(capsys, tmp_path):
    messages = write_messages(tmp_path, [{"role": "user", "content": "hi"}])
    default = run_json(capsys, "prompt", UPSTREAM / "baichuan2-7b", "--messages", messages, "--json")
    assert default["max_new_tokens"] == 2048  # generation_config.json max_new_tokens
    given = run_json(capsys, "prompt", UPSTREAM / "baichuan2-7b", "--messages", messages, "--json",
                     "--max-new-tokens", "100")
    assert given["max_new_tokens"] == 100 and given["input_ids"] == default["input_ids"]


def test_baichuan2_drops_oldest_rounds_within_max_length_minus_budget_keeping_system(capsys, tmp_path):
    messages = write_messages(tmp_path, multiturn(6))
    full = run_json(capsys, "prompt", UPSTREAM / "baichuan2-7b", "--messages", messages, "--json")
    # 4096 - 3950 leaves 146 prompt tokens: whole oldest rounds go, the system prompt stays.
    cut = run_json(capsys, "prompt", UPSTREAM / "baichuan2-7b", "--messages", messages, "--json",
                   "--max-new-tokens", "3950")
    assert full["dropped_turns"] == 0 and 0 < cut["dropped_turns"] < 6
    assert len(cut["input_ids"]) <= 146
    system_len = full["input_ids"].index(195)
    assert cut["input_ids"][:system_len] == full["input_ids"][:system_len]
    assert cut["input_ids"][system_len] == 195  # a whole round starts after the system prompt
    assert full["input_ids"][-len(cut["input_ids"]) + system_len:] == cut["input_ids"][system_len:]


def test_qwen1_drops_history_beyond_max_window_size_keeping_system(capsys, tmp_path):
    import json

    checkpoint = copy_folder("qwen1", tmp_path, weights=False)
    generation = json.loads((checkpoint / "generation_config.json").read_text())
    generation["max_window_size"] = 200
    (checkpoint / "generation_config.json").write_text(json.dumps(generation))
    out = run_json(capsys, "prompt", checkpoint, "--messages", write_messages(tmp_path, multiturn(6)), "--json")
    assert out["dropped_turns"] > 0
    assert out["text"].startswith("<|im_start|>system\nKeep this system prompt.<|im_end|>")
    assert "question 5" in out["text"] and "question 0" not in out["text"]
    assert out["text"].endswith("last question<|im_end|>\n<|im_start|>assistant\n")


def test_other_families_shrink_the_reply_before_dropping_turns(capsys, tmp_path):
    messages = write_messages(tmp_path, multiturn(2))
    short = run_json(capsys, "prompt", UPSTREAM / "chatglm3", "--messages", messages, "--json")
    assert short["dropped_turns"] == 0 and short["max_new_tokens"] == 512 - len(short["input_ids"])
    long = run_json(capsys, "prompt", UPSTREAM / "chatglm3", "--messages", write_messages(tmp_path, multiturn(12), "l.json"),
                    "--json")
    assert long["dropped_turns"] > 0 and len(long["input_ids"]) < 512
    assert long["text"].startswith("[gMASK]sop<|system|>")
