"""The decode plan: typed registry settings, environment overrides read in one place, and the compute dtype
chosen from the CPU's instruction set."""
import pytest
import torch

from demo.decodeplan import (ENVIRONMENT, DecodePlan, compute_dtypes, cpu_isa, fast_bf16, with_environment)
from demo.registry import DecodeSettings, RegistryError, parse_registry

REGISTRY = """settings:
  decode: {prepack: false}
models:
  - id: a
    name: A
    source: {path: /nowhere}
  - id: b
    name: B
    source: {path: /nowhere}
    decode: {exact: true}
"""


def test_settings_decode_applies_to_every_entry_and_an_entry_overrides_only_its_keys():
    registry = parse_registry(REGISTRY)
    assert registry.get("a").decode == DecodeSettings(prepack=False)
    assert registry.get("b").decode == DecodeSettings(prepack=False, exact=True)


def test_an_unknown_decode_key_names_file_line_and_key():
    with pytest.raises(RegistryError, match=r"reg.yaml:10: models\[1\].decode.exakt: unknown key 'exakt'"):
        parse_registry(REGISTRY.replace("exact: true", "exakt: true"), "reg.yaml")
    with pytest.raises(RegistryError, match=r"reg.yaml:2: settings.decode.compute: Input should be .auto., .model. or .float32."):
        parse_registry(REGISTRY.replace("prepack: false", "compute: int8"), "reg.yaml")


def test_the_environment_overrides_the_registry_in_one_place():
    settings = DecodeSettings(prepack=False)
    assert with_environment(settings, {}) == settings
    got = with_environment(settings, {"HUB_EXACT_DECODE": "1", "HUB_PREPACK": "1", "HUB_LEAN_DECODE": "0",
                                      "HUB_BATCHED_DECODE": "1", "HUB_DECODE_COMPUTE": "model"})
    assert got == DecodeSettings(exact=True, prepack=True, lean=False, batched=True, compute="model")
    assert set(ENVIRONMENT) == {"HUB_BATCHED_DECODE", "HUB_LEAN_DECODE", "HUB_PREPACK", "HUB_EXACT_DECODE",
                                "HUB_DECODE_COMPUTE", "HUB_BF16_KERNEL"}
    assert not with_environment(settings, {"HUB_BF16_KERNEL": "0"}).bf16_kernel
    with pytest.raises(ValueError, match="HUB_EXACT_DECODE='yes': expected 0 or 1"):
        with_environment(settings, {"HUB_EXACT_DECODE": "yes"})
    with pytest.raises(ValueError, match="compute"):
        with_environment(settings, {"HUB_DECODE_COMPUTE": "int8"})


def test_the_readme_lists_every_environment_override():
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    assert all(f"`{variable}" in readme for variable in ENVIRONMENT)


F32, BF16 = torch.float32, torch.bfloat16


@pytest.mark.parametrize("isa, settings, want", [
    ("AVX2", DecodeSettings(), (F32, BF16)),  # no bf16 kernels: float32 prefills ~3.7x faster, bf16 rows cost less
    ("AVX512", DecodeSettings(), (BF16, BF16)),  # oneDNN's bf16 kernels: bf16 stays
    ("AVX512+BF16+AMX", DecodeSettings(), (BF16, BF16)),
    ("AVX2", DecodeSettings(exact=True), (BF16, BF16)),  # exact: generate()'s own dtype
    ("AVX2", DecodeSettings(compute="model"), (BF16, BF16)),
    ("AVX512", DecodeSettings(compute="float32"), (F32, F32)),
])
def test_the_compute_dtypes_follow_the_cpu_and_the_settings(isa, settings, want):
    assert compute_dtypes(settings, BF16, "cpu", isa, weight_bytes=2**20) == want


def test_a_model_too_large_for_a_float32_copy_keeps_its_dtype_and_gpus_and_float32_models_are_left_alone():
    assert compute_dtypes(DecodeSettings(), BF16, "cpu", "AVX2", weight_bytes=2**50) == (BF16, BF16)
    assert compute_dtypes(DecodeSettings(), BF16, "cuda", "AVX2", weight_bytes=2**20) == (BF16, BF16)
    assert compute_dtypes(DecodeSettings(), F32, "cpu", "AVX2", weight_bytes=2**20) == (F32, F32)


def test_this_cpu_is_named_by_its_isa():
    isa = cpu_isa()
    assert isa.split("+")[0] == torch.backends.cpu.get_cpu_capability()
    assert fast_bf16("AVX512") and fast_bf16("AVX2+NE-CONVERT") and not fast_bf16("AVX2")


def test_a_plan_is_frozen_and_says_what_it_runs():
    plan = DecodePlan(isa="AVX2", loop=True, weights_dtype="float32", prefill_dtype="float32",
                      decode_dtype="float32", exact=False, lean=True, prepacked=121, fold_heads=True, pair_rows=True)
    with pytest.raises(AttributeError):
        plan.exact = True
    assert plan.summary() == ("loop in float32 (8 rows), prefill float32, lean, folded heads, paired rows, 121 packed; AVX2")
    assert plan.as_dict()["summary"] == plan.summary()
    off = DecodePlan(isa="AVX2", loop=False, weights_dtype="bfloat16", prefill_dtype="bfloat16",
                     decode_dtype="bfloat16", exact=False, reason="gptq kernels")
    assert off.summary() == "generate() in bfloat16 (gptq kernels); AVX2"


def test_a_batch_job_decodes_for_throughput_where_bf16_batches_are_slow():
    from demo.batchjob import job_entry
    from demo.decodeplan import for_throughput

    from demo import bf16kernel

    slow = for_throughput(DecodeSettings(bf16_kernel=False), 16, isa="AVX2")
    assert (slow.compute, slow.rows, slow.prefill_together) == ("float32", 16, True)
    kernel = for_throughput(DecodeSettings(), 16, isa="AVX2")  # bf16 rows on the hub's kernel, where it builds
    assert kernel.compute == ("float32" if bf16kernel.unavailable() else "auto")
    fast = for_throughput(DecodeSettings(), 16, isa="AVX512+BF16")
    assert (fast.compute, fast.rows) == ("auto", 16)
    chosen = for_throughput(DecodeSettings(compute="model", rows=32), 16, isa="AVX2")
    assert (chosen.compute, chosen.rows) == ("model", 32)  # what the registry says stands
    registry = parse_registry("""
models:
  - {id: local, name: Local, source: {path: /nowhere}, engine: transformers}
  - {id: gguf, name: GGUF, source: {path: /nowhere, file: m.gguf}, engine: llama.cpp}
  - {id: far, name: Far, engine: openai, base_url: "http://127.0.0.1:9/v1"}
""")
    assert job_entry(registry.get("local"), 16).decode.rows == 16
    assert job_entry(registry.get("gguf"), 16) == registry.get("gguf")
    assert job_entry(registry.get("far"), 16) == registry.get("far")
