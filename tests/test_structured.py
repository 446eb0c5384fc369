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
