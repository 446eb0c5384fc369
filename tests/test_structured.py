"""response_format on the default model: 20 different JSON schemas, each reply parses and validates.

Each reply is streamed (greedy); the deltas joined are the reply, and the reply is what a non-streaming call
returns (it consumes the same stream), so one generation checks both.
"""
from __future__ import annotations

import json

import jsonschema
import pytest

from demo.engine import stream_chat
from demo.structured import ConstraintError, json_constraint

S = {"type": "string", "maxLength": 16}
I = {"type": "integer", "minimum": 0, "maximum": 999}
SCHEMAS = {
    "person": {"type": "object", "properties": {"name": S, "age": I}, "required": ["name", "age"]},
    "flag": {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]},
    "color_enum": {"type": "object", "properties": {"color": {"enum": ["red", "green", "blue"]}},
                   "required": ["color"]},
    "tags": {"type": "object", "properties": {"tags": {"type": "array", "items": S, "minItems": 1, "maxItems": 3}},
             "required": ["tags"]},
    "numbers": {"type": "array", "items": I, "minItems": 2, "maxItems": 4},
    "nested": {"type": "object", "properties": {"user": {"type": "object", "properties": {"id": I, "name": S},
                                                         "required": ["id", "name"]}}, "required": ["user"]},
    "address": {"type": "object", "properties": {"street": S, "city": S, "zip": {"type": "string", "pattern": "[0-9]{5}"}},
                "required": ["street", "city", "zip"], "additionalProperties": False},
    "score": {"type": "object", "properties": {"score": {"type": "number", "minimum": 0, "maximum": 10}},
              "required": ["score"]},
    "nullable": {"type": "object", "properties": {"note": {"type": ["string", "null"], "maxLength": 12}},
                 "required": ["note"]},
    "list_of_objects": {"type": "array", "maxItems": 2, "items": {
        "type": "object", "properties": {"k": S, "v": I}, "required": ["k", "v"]}},
    "const": {"type": "object", "properties": {"kind": {"const": "event"}, "day": I}, "required": ["kind", "day"]},
    "weekday": {"type": "string", "enum": ["mon", "tue", "wed", "thu", "fri"]},
    "boolean_array": {"type": "array", "items": {"type": "boolean"}, "minItems": 1, "maxItems": 3},
    "optional_fields": {"type": "object", "properties": {"a": S, "b": I, "c": {"type": "boolean"}}, "required": ["a"],
                        "additionalProperties": False},
    "matrix": {"type": "array", "maxItems": 2, "items": {"type": "array", "items": I, "maxItems": 2}},
    "anyof": {"type": "object", "properties": {"value": {"anyOf": [I, {"type": "boolean"}]}}, "required": ["value"]},
    "deep": {"type": "object", "required": ["a"], "properties": {"a": {"type": "object", "required": ["b"], "properties": {
        "b": {"type": "object", "required": ["c"], "properties": {"c": I}}}}}},
    "todo": {"type": "object", "properties": {"title": S, "done": {"type": "boolean"},
                                              "priority": {"enum": ["low", "high"]}},
             "required": ["title", "done", "priority"], "additionalProperties": False},
    "ref": {"$defs": {"point": {"type": "object", "properties": {"x": I, "y": I}, "required": ["x", "y"]}},
            "type": "object", "properties": {"start": {"$ref": "#/$defs/point"}, "end": {"$ref": "#/$defs/point"}},
            "required": ["start", "end"]},
    "integer_range": {"type": "integer", "minimum": 10, "maximum": 20},
}


def closed(schema):
    """Objects take only their properties (as OpenAI's strict mode has it), so replies end."""
    if isinstance(schema, dict):
        schema = {k: closed(v) for k, v in schema.items()}
        if schema.get("type") == "object":
            schema.setdefault("additionalProperties", False)
    return schema


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_schema_reply_parses_and_validates(smollm, name):
    schema = closed(SCHEMAS[name])
    processor = json_constraint(smollm.tokenizer, {"type": "json_schema", "json_schema": {"name": name, "schema": schema}},
                                smollm.adapter.stop_token_ids(smollm.tokenizer, smollm.extra_stop_ids),
                                smollm.model.get_output_embeddings().weight.shape[0])
    messages = [{"role": "user", "content": f"Reply with a JSON value for '{name}'."}]
    params = smollm.defaults.override({"greedy": True, "max_new_tokens": 96})
    # a bound against hangs only: two shared cores under load can take minutes for 96 tokens
    chunks = list(stream_chat(smollm, messages, params, logits_processors=[processor], timeout_s=900))
    last = chunks[-1]
    assert last.finish_reason == "stop", (name, last.text, last.error)
    assert "".join(c.delta for c in chunks) == last.text
    jsonschema.validate(json.loads(last.text), schema)


def test_a_schema_the_grammar_cannot_enforce_says_why(smollm):
    with pytest.raises(ConstraintError, match="look-around"):
        json_constraint(smollm.tokenizer, {"type": "json_schema", "json_schema": {
            "name": "x", "schema": {"type": "string", "pattern": "(?<=a)b"}}}, [2], 49152)


def test_the_mask_allows_what_the_grammar_allows_on_numpy_and_torch(smollm):
    """The packed bitmask unpacked in token order: a JSON boolean may start with "true" or "false", not "{"."""
    import numpy as np
    import torch

    tokenizer = smollm.tokenizer
    true, brace = tokenizer.convert_tokens_to_ids("true"), tokenizer.convert_tokens_to_ids("{")
    processor = json_constraint(tokenizer, {"type": "json_schema", "json_schema": {"schema": {"type": "boolean"}}},
                                smollm.adapter.stop_token_ids(tokenizer, smollm.extra_stop_ids), 49152)
    as_numpy = processor([1, 2, 3], np.zeros(49152, dtype=np.float32))
    as_torch = processor([1, 2, 3], torch.zeros(49152))
    allowed = np.flatnonzero(np.isfinite(as_numpy))
    assert true in allowed and brace not in allowed and 0 < len(allowed) < 1000
    assert np.array_equal(np.isfinite(as_torch.numpy()), np.isfinite(as_numpy))
    assert not np.isfinite(processor([1, 2, 3], np.zeros(49200, dtype=np.float32))[49152:]).any()  # beyond the vocab


# -- the llama.cpp engine: the same processor in its numpy sampler ---------------------------------------------
LLAMA_SCHEMAS = ("person", "tags", "nested", "weekday", "ref")


@pytest.fixture(scope="module")
def llama(registry):
    from demo.backends import llama_cpp_status
    from demo.manager import ModelManager
    from demo.registry import Registry
    from tests.conftest import DEFAULT_ID

    if not llama_cpp_status()[0]:
        pytest.skip(llama_cpp_status()[1])
    entry = registry.get(DEFAULT_ID).model_copy(update={"engine": "llama.cpp"})
    manager = ModelManager(Registry([entry]))
    yield manager.get(entry.id)
    manager.unload(entry.id)


def llama_constraint(llama, name: str):
    from demo.api import vocab_size

    fmt = {"type": "json_schema", "json_schema": {"name": name, "schema": closed(SCHEMAS[name])}}
    return json_constraint(llama.tokenizer, fmt, llama.adapter.stop_token_ids(llama.tokenizer, llama.extra_stop_ids),
                           vocab_size(llama))


@pytest.mark.parametrize("name", LLAMA_SCHEMAS)
def test_llama_cpp_streams_replies_that_validate(llama, name):
    messages = [{"role": "user", "content": f"Reply with a JSON value for '{name}'."}]
    params = llama.defaults.override({"greedy": True, "max_new_tokens": 96})
    chunks = list(stream_chat(llama, messages, params, logits_processors=[llama_constraint(llama, name)],
                              timeout_s=300))
    last = chunks[-1]
    assert last.finish_reason == "stop", (name, last.text, last.error)
    assert "".join(c.delta for c in chunks) == last.text
    jsonschema.validate(json.loads(last.text), closed(SCHEMAS[name]))


def test_llama_cpp_sampled_replies_at_once_validate_and_a_broken_grammar_ends_only_its_own(llama):
    """Non-streaming calls, sampled (seeded), decoded together in one batch; a processor that fails (here: its
    matcher given a token the grammar forbids) ends its own request with an error, not the others'."""
    import threading

    from demo.engine import complete

    names = ("todo", "person", "list_of_objects")  # bounded: sampled, an unanchored pattern may ramble on
    params = llama.defaults.override({"temperature": 0.8, "top_p": 0.95, "seed": 3, "max_new_tokens": 96})
    broken = llama_constraint(llama, "flag")
    broken.matcher.consume_tokens([llama.tokenizer.convert_tokens_to_ids("]")])  # in its error state from here
    results = {}

    def one(name, processor):
        messages = [{"role": "user", "content": f"Reply with a JSON value for '{name}'."}]
        results[name] = complete(llama, messages, params, logits_processors=[processor], timeout_s=300)

    threads = [threading.Thread(target=one, args=(n, llama_constraint(llama, n))) for n in names]
    threads.append(threading.Thread(target=one, args=("broken", broken)))
    for t in threads:
        t.start()
    for t in threads:
        t.join(330)
    for name in names:
        assert results[name].finish_reason == "stop", (name, results[name].text, results[name].error)
        jsonschema.validate(json.loads(results[name].text), closed(SCHEMAS[name]))
    assert results["broken"].finish_reason == "error" and "constrained decoding failed" in results["broken"].error
