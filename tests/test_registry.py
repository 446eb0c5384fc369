"""Registry errors name file, line and key; unavailable entries stay listed."""
import textwrap

import pytest

from demo.registry import RegistryError, UnknownModelError, load_registry, parse_registry

GOOD = """\
settings:
  memory_budget_gb: 2
models:
  - id: tiny
    name: Tiny
    source:
      path: /nonexistent/tiny
    generation:
      temperature: 0.5
  - id: other
    name: Other
    source:
      repo: org/other
"""


def write(tmp_path, text):
    path = tmp_path / "reg.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def error_of(tmp_path, text) -> str:
    with pytest.raises(RegistryError) as info:
        load_registry(write(tmp_path, text))
    return str(info.value)


def test_good_registry_loads_typed_records(tmp_path):
    registry = load_registry(write(tmp_path, GOOD))
    assert [e.id for e in registry] == ["tiny", "other"]
    tiny = registry.get("tiny")
    assert tiny.generation.temperature == 0.5 and tiny.family == "auto" and tiny.dtype == "auto"
    assert registry.settings.memory_budget_gb == 2
    assert registry.default_id == "tiny"


def test_unknown_key(tmp_path):
    text = GOOD.replace("    generation:\n", "    dtpye: float32\n    generation:\n")
    assert error_of(tmp_path, text) == f"{tmp_path}/reg.yaml:8: models[0].dtpye: unknown key 'dtpye'"


def test_unknown_nested_key(tmp_path):
    text = GOOD.replace("      temperature: 0.5", "      temprature: 0.5")
    assert error_of(tmp_path, text) == (f"{tmp_path}/reg.yaml:9: models[0].generation.temprature: "
                                        "unknown key 'temprature'")


def test_missing_field(tmp_path):
    text = GOOD.replace("    name: Other\n", "")
    assert error_of(tmp_path, text) == f"{tmp_path}/reg.yaml:10: models[1].name: missing required key 'name'"


def test_duplicate_id(tmp_path):
    text = GOOD.replace("id: other", "id: tiny")
    assert error_of(tmp_path, text) == (f"{tmp_path}/reg.yaml:10: models[1].id: duplicate id 'tiny' "
                                        "(first defined on line 4)")


def test_bad_value(tmp_path):
    text = GOOD.replace("temperature: 0.5", "temperature: hot")
    message = error_of(tmp_path, text)
    assert message.startswith(f"{tmp_path}/reg.yaml:9: models[0].generation.temperature: ")
    assert "valid number" in message


def test_bad_dtype_and_family(tmp_path):
    message = error_of(tmp_path, GOOD.replace("    generation:\n", "    dtype: float13\n    generation:\n", 1))
    assert message.startswith(f"{tmp_path}/reg.yaml:8: models[0].dtype: Input should be 'auto'")
    message = error_of(tmp_path, GOOD.replace("    generation:\n", "    family: gpt9\n    generation:\n", 1))
    assert message.startswith(f"{tmp_path}/reg.yaml:8: models[0].family: unknown family 'gpt9'")


def test_source_needs_exactly_one_place(tmp_path):
    text = GOOD.replace("      repo: org/other", "      repo: org/other\n      path: /x")
    assert error_of(tmp_path, text) == (f"{tmp_path}/reg.yaml:12: models[1].source: give exactly one of "
                                        "path, repo or package (got path, repo)")


def test_duplicate_yaml_key_and_bad_yaml(tmp_path):
    text = GOOD.replace("    name: Tiny\n", "    name: Tiny\n    name: Again\n")
    assert error_of(tmp_path, text) == f"{tmp_path}/reg.yaml:6: name: duplicate key"
    assert error_of(tmp_path, "models: [\n").startswith(f"{tmp_path}/reg.yaml:2: not valid YAML")


def test_unknown_default_model(tmp_path):
    text = GOOD.replace("  memory_budget_gb: 2", "  memory_budget_gb: 2\n  default_model: nope")
    assert error_of(tmp_path, text) == f"{tmp_path}/reg.yaml:3: settings.default_model: no model has id 'nope'"


def test_missing_file_is_named(tmp_path):
    with pytest.raises(RegistryError, match="nope.yaml: cannot read the registry"):
        load_registry(tmp_path / "nope.yaml")


def test_unknown_model_id_raises_named_error():
    registry = parse_registry(GOOD)
    with pytest.raises(UnknownModelError, match="unknown model 'tin'; known: tiny, other"):
        registry.get("tin")


def test_registry_path_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("HUB_REGISTRY", str(write(tmp_path, GOOD)))
    assert [e.id for e in load_registry()] == ["tiny", "other"]


def test_shipped_registry_is_valid():
    registry = load_registry()
    assert registry.default_id == "smollm2-135m"
