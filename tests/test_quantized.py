"""Quantized checkpoints through the hub's one loader path: GPTQ, AWQ, bitsandbytes, GGUF; LoRA; quantize."""
import re
from pathlib import Path

import pytest
import torch

import adapters.quant as quant
from adapters.quant import QuantError, detect
from demo.cli import main
from demo.engine import stream_chat, stream_ids
from demo.loader import folder_entry, load_entry
from demo.manager import ERROR, READY, ModelLoadError, ModelManager
from demo.registry import RegistryError, parse_registry
from quantpack import dequantized_reference, write_quantized_llama
from tiny import make_tiny_chat_model

HELLO = [{"role": "user", "content": "Hello! Who are you?"}]
IDS = [1, 500, 600, 700, 800, 900, 1000, 42, 43, 44, 9, 10]


@pytest.fixture(scope="session")
def fp_folder(tmp_path_factory):
    # hidden 128, MLP 256: every linear has whole 128-column groups
    return make_tiny_chat_model(tmp_path_factory.mktemp("quant") / "fp", seed=3, hidden=128)


@pytest.fixture(scope="session")
def packed(fp_folder):
    """Hand-packed quantized copies of the fp folder, built once per kind."""
    built = {}

    def make(kind: str) -> Path:
        options = {"awq": dict(method="awq"), "gptq": dict(method="gptq"),
                   "gptq_v2-desc_act": dict(method="gptq", version="gptq_v2", desc_act=True),
                   "gptq-8bit": dict(method="gptq", bits=8)}[kind]
        if kind not in built:
            built[kind] = write_quantized_llama(fp_folder, fp_folder.parent / kind, **options)
        return built[kind]
    return make


def last_logits(model, ids=IDS) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0, -1].float()


def cosine(a, b) -> float:
    return torch.nn.functional.cosine_similarity(a, b, dim=0).item()


def load(folder, **update):
    return load_entry(folder_entry(str(folder)).model_copy(update=update))


def kernels(model) -> set[str]:
    return {type(m).__name__ for m in model.modules() if "Linear" in type(m).__name__ and type(m).__name__ != "Linear"}


def greedy(loaded, n):
    return loaded.defaults.override({"greedy": True, "max_new_tokens": n, "repetition_penalty": 1.0})


# -- the registry --------------------------------------------------------------------------------
def test_registry_quantization_and_lora_entries():
    registry = parse_registry(
        "models:\n"
        "  - {id: base, name: B, source: {path: /tmp}, quantization: {method: bnb-4bit, quant_type: fp4}}\n"
        "  - {id: tuned, name: T, base: base, adapter: /tmp/lora}\n")
    assert registry.get("base").quantization.quant_type == "fp4"
    assert registry.get("tuned").base == "base" and registry.get("tuned").source is None
    bad = {
        "  - {id: a, name: A, source: {path: /tmp}, quantization: {method: gptq}}\n": "models[0].quantization.method",
        "  - {id: a, name: A, source: {path: /tmp},\n     quantization: {method: bnb-8bit, quant_type: nf4}}\n":
            ":3: models[0].quantization: quant_type and double_quant apply to bnb-4bit only",
        "  - {id: a, name: A, source: {path: /tmp}}\n  - id: t\n    name: T\n    base: nope\n    adapter: /x\n":
            ":5: models[1].base: 'nope': no model has this id",
        "  - {id: a, name: A, adapter: /x}\n": "needs both `base`",
        "  - {id: a, name: A}\n": "a local model needs `source` (or `base` + `adapter`",
        "  - {id: r, name: R, backend: openai, base_url: 'http://h/v1'}\n  - {id: t, name: T, base: r, adapter: /x}\n":
            "models[1].base: 'r': it is a remote model",
    }
    for text, expected in bad.items():
        with pytest.raises(RegistryError, match=re.escape(expected)):
            parse_registry("models:\n" + text, "r.yaml")


def test_a_quantized_variant_is_added_once_next_to_the_full_model():
    registry = parse_registry("models:\n  - {id: m, name: M, source: {path: /tmp}}\n")
    variant = registry.quantized_variant("m", "bnb-8bit")
    assert (variant.id, variant.name, variant.quantization.method) == ("m-bnb-8bit", "M (bnb-8bit)", "bnb-8bit")
    assert registry.quantized_variant("m", "bnb-8bit") is variant and registry.get("m").quantization is None
    with pytest.raises(RegistryError, match="already is"):
        registry.quantized_variant("m-bnb-8bit", "bnb-4bit")


# -- format detection ----------------------------------------------------------------------------
def folder_with(tmp_path, config: dict) -> Path:
    import json

    tmp_path.joinpath("config.json").write_text(json.dumps(config))
    return tmp_path


@pytest.mark.parametrize("config, method, bits, detail", [
    ({"quant_method": "gptq", "bits": 4, "desc_act": False}, "gptq", 4, "gptq"),
    ({"quant_method": "gptq", "bits": 8, "desc_act": True, "checkpoint_format": "gptq_v2"}, "gptq", 8,
     "gptq_v2, desc_act"),
    ({"quant_method": "awq", "bits": 4, "version": "gemm", "zero_point": True}, "awq", 4, "gemm"),
    ({"quant_method": "bitsandbytes", "load_in_4bit": True, "bnb_4bit_quant_type": "nf4"}, "bnb-4bit", 4, "nf4"),
    ({"quant_method": "bitsandbytes", "load_in_8bit": True}, "bnb-8bit", 8, "int8"),
])
def test_format_comes_from_the_folders_quantization_config(tmp_path, config, method, bits, detail):
    spec = detect(folder_with(tmp_path, {"model_type": "llama", "quantization_config": config}), None)
    assert (spec.method, spec.bits, spec.detail) == (method, bits, detail)


def test_gguf_and_registry_requests_and_refusals(tmp_path):
    from demo.registry import Quantization

    assert detect(None, "SmolLM2-135M-Instruct.Q4_1.gguf").detail == "Q4_1 file, dequantized at load"
    assert detect(None, "model-q8_0.gguf").detail.startswith("Q8_0")
    plain = folder_with(tmp_path, {"model_type": "llama"})
    assert detect(plain, None).method == "none"
    spec = detect(plain, None, Quantization(method="bnb-4bit", quant_type="fp4"))
    assert (spec.method, spec.bits, spec.options["quant_type"]) == ("bnb-4bit", 4, "fp4")
    refusals = {
        '{"model_type": "chatglm", "quantization_bit": 4}': "ChatGLM's own int4 format",
        '{"model_type": "baichuan", "quantization_config": {"quant_method": "bitsandbytes"}}': "cannot split",
        '{"model_type": "llama", "quantization_config": {"quant_method": "fp8"}}': "'fp8' is not supported",
    }
    for text, message in refusals.items():
        tmp_path.joinpath("config.json").write_text(text)
        with pytest.raises(QuantError, match=message):
            detect(tmp_path, None)
    tmp_path.joinpath("config.json").write_text('{"quantization_config": {"quant_method": "awq", "bits": 4}}')
    with pytest.raises(QuantError, match="already quantized"):
        detect(tmp_path, None, Quantization(method="bnb-8bit"))


# -- hand-packed GPTQ / AWQ through the hub's loader --------------------------------------------
@pytest.mark.parametrize("kind, method, bits, kernel", [
    ("awq", "awq", 4, "Awq"), ("gptq", "gptq", 4, "Torch"), ("gptq_v2-desc_act", "gptq", 4, "Torch"),
    ("gptq-8bit", "gptq", 8, "Torch")])
def test_hand_packed_checkpoint_matches_its_dequantized_reference(packed, kind, method, bits, kernel):
    folder = packed(kind)
    reference = last_logits(dequantized_reference(folder))
    loaded = load(folder, dtype="float32")
    assert (loaded.quant_format, loaded.bits) == (method, bits)
    assert any(kernel in name for name in kernels(loaded.model)), kernels(loaded.model)
    logits = last_logits(loaded.model)
    assert cosine(logits, reference) >= 0.999
    assert logits.argmax() == reference.argmax()


def test_a_wrong_zero_convention_would_be_caught(packed, fp_folder):
    """Negative control: the v1 file read as v2 decodes to other weights, and the cosine check sees it."""
    import json

    folder = packed("gptq")
    reference = last_logits(dequantized_reference(folder))
    wrong = fp_folder.parent / "gptq-read-as-v2"
    wrong.mkdir(exist_ok=True)
    for path in folder.iterdir():
        (wrong / path.name).write_bytes(path.read_bytes())
    config = json.loads((wrong / "config.json").read_text())
    config["quantization_config"]["checkpoint_format"] = "gptq_v2"
    (wrong / "config.json").write_text(json.dumps(config))
    assert cosine(last_logits(load(wrong, dtype="float32").model), reference) < 0.99


def test_quantized_model_streams_and_stops(packed):
    loaded = load(packed("awq"))  # dtype auto: bf16 on CPU
    chunks = list(stream_chat(loaded, HELLO, greedy(loaded, 6)))
    assert len(chunks) > 1 and chunks[-1].finish_reason == "length" and chunks[-1].stats.new_tokens == 6
    first = chunks[-1].output_ids[0]
    stopped = list(stream_ids(loaded, chunks[-1].prompt_ids, greedy(loaded, 6), stop_ids=[first]))
    assert stopped[-1].finish_reason == "stop" and stopped[-1].output_ids == [first]


# -- bitsandbytes, quantized at load ------------------------------------------------------------
@pytest.mark.parametrize("method, options, layer, bits, min_cosine", [
    ("bnb-4bit", "", "Linear4bit", 4, 0.95), ("bnb-4bit", ", quant_type: fp4", "Linear4bit", 4, 0.9),
    ("bnb-8bit", "", "Linear8bitLt", 8, 0.99)])
def test_bitsandbytes_quantizes_a_full_precision_folder_at_load(fp_folder, method, options, layer, bits,
                                                                 min_cosine):
    registry = parse_registry(f"models:\n  - {{id: q, name: Q, source: {{path: {fp_folder}}}, dtype: float32,"
                              f" quantization: {{method: {method}{options}}}}}\n")
    loaded = load_entry(registry.get("q"))
    full = load(fp_folder, dtype="float32")
    assert (loaded.quant_format, loaded.bits) == (method, bits) and layer in kernels(loaded.model)
    assert loaded.memory_bytes < full.memory_bytes
    assert cosine(last_logits(loaded.model), last_logits(full.model)) >= min_cosine
    last = list(stream_chat(loaded, HELLO, greedy(loaded, 4)))[-1]
    assert last.finish_reason in ("length", "stop") and last.error is None and last.output_ids


# -- GGUF ------------------------------------------------------------------------------------
def test_gguf_in_a_package_and_in_a_folder(smollm, tmp_path):
    from adapters.weights import resolve, with_quantization
    from tiny import SMOLLM_FILE, SMOLLM_PACKAGE
    from adapters.weights import package_folder

    assert (smollm.quant_format, smollm.bits) == ("gguf", 16)  # dequantized to bf16 at load
    assert "Q4_1" in smollm.quant.label
    (tmp_path / SMOLLM_FILE).symlink_to(package_folder(SMOLLM_PACKAGE) / SMOLLM_FILE)
    entry = folder_entry(str(tmp_path))
    assert with_quantization(resolve(entry.source)).quant.method == "gguf"


# -- a missing backend ----------------------------------------------------------------------------
@pytest.mark.parametrize("missing, kind, hint", [
    ("gptqmodel", "awq", "pip install torch==2.13.0 gptqmodel==7.6.0"),
    ("optimum", "gptq", "pip install torch==2.13.0 optimum==2.3.0")])
def test_missing_backend_is_one_line_and_the_hub_keeps_serving(monkeypatch, packed, fp_folder, missing, kind,
                                                                hint):
    installed = quant.backend_installed
    monkeypatch.setattr(quant, "backend_installed", lambda module: module != missing and installed(module))
    registry = parse_registry(f"models:\n  - {{id: q, name: Q, source: {{path: {packed(kind)}}}}}\n"
                              f"  - {{id: fp, name: F, source: {{path: {fp_folder}}}}}\n")
    manager = ModelManager(registry, 10**10)
    with pytest.raises(ModelLoadError) as failure:
        manager.get("q")
    assert hint in str(failure.value) and f"'{missing}'" in str(failure.value)
    assert "\n" not in str(failure.value)
    assert manager.state("q").status == ERROR and hint in manager.state("q").detail
    good = manager.get("fp")
    assert manager.state("fp").status == READY
    assert list(stream_chat(good, HELLO, greedy(good, 3)))[-1].error is None


# -- the quantize command ----------------------------------------------------------------------
@pytest.mark.parametrize("method, extra", [("gptq", ["--desc-act"]), ("awq", [])])
def test_quantize_command_writes_a_folder_the_hub_loads(fp_folder, capsys, method, extra, tmp_path, monkeypatch):
    dst = fp_folder.parent / f"cli-{method}"
    monkeypatch.chdir(tmp_path)
    assert main(["quantize", str(fp_folder), str(dst), "--method", method, "--bits", "4", *extra]) == 0
    assert not any(tmp_path.iterdir())  # nothing left in the folder it ran from (gptqmodel's ./logs)
    assert f"wrote {method} 4-bit" in capsys.readouterr().out
    loaded = load(dst, dtype="float32")
    assert (loaded.quant_format, loaded.bits) == (method, 4)
    logits = last_logits(loaded.model)
    # the kernel against the exact decoding of what was written, and the 4-bit model against the original
    assert cosine(logits, last_logits(dequantized_reference(dst))) >= 0.999
    assert cosine(logits, last_logits(load(fp_folder, dtype="float32").model)) >= 0.9
    last = list(stream_chat(loaded, HELLO, greedy(loaded, 4)))[-1]
    assert last.error is None and last.output_ids


def test_quantize_command_refuses_bad_requests(fp_folder, packed, tmp_path, capsys):
    assert main(["quantize", str(packed("awq")), str(tmp_path / "x")]) == 2
    assert "already quantized" in capsys.readouterr().err
    assert main(["quantize", str(fp_folder), str(tmp_path / "y"), "--method", "awq", "--bits", "8"]) == 2
    assert "awq cannot make 8-bit" in capsys.readouterr().err


def test_memory_report_full_precision_against_4_bit(fp_folder, packed):
    from demo.quantize import format_report, memory_report

    report = memory_report(fp_folder, packed("awq"))
    assert list(report) == ["float32", "bfloat16", "awq 4-bit"]
    fp32, bf16, awq = (report[k]["layers_bytes"] for k in report)
    assert fp32 == 2 * bf16 and awq < bf16 / 3  # 4-bit weights plus fp16 scales and packed zeros
    print("\n" + format_report(report))


# -- LoRA / PEFT entries -------------------------------------------------------------------------
@pytest.fixture(scope="session")
def lora_folder(fp_folder):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_pretrained(fp_folder, dtype=torch.float32)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    peft_model = get_peft_model(model, config)
    out = fp_folder.parent / "lora"
    peft_model.save_pretrained(out)
    return out


def lora_registry(base_folder, lora_folder, base_dtype="float32"):
    return parse_registry(f"models:\n  - {{id: base, name: B, source: {{path: {base_folder}}}, dtype: {base_dtype}}}\n"
                          f"  - {{id: tuned, name: T, base: base, adapter: {lora_folder}}}\n")


def test_lora_entry_shares_the_base_weights(fp_folder, lora_folder):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    manager = ModelManager(lora_registry(fp_folder, lora_folder), 10**10)
    base_before = last_logits(manager.get("base").model)
    assert list(stream_chat(manager.get("base"), HELLO, greedy(manager.get("base"), 2)))[-1].error is None
    loop = manager.get("base").decoder
    assert loop is not None, "a plain full-precision base serves through the batched decode loop"
    tuned, base = manager.get("tuned"), manager.get("base")
    # Its loop is retired: the base and its adapter now share generate() and one lock.
    assert base.decoder is None and tuned.decoder is None and not base.plan.loop and "LoRA" in base.plan.reason
    reference = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(fp_folder, dtype=torch.float32),
                                          str(lora_folder)).eval()
    assert torch.allclose(last_logits(tuned.model), last_logits(reference), atol=1e-5)
    assert torch.allclose(last_logits(base.model), base_before, atol=1e-6)  # the base is unchanged
    assert not torch.allclose(last_logits(tuned.model), base_before, atol=1e-3)
    shared = tuned.model.get_input_embeddings().weight
    assert shared.data_ptr() == base.model.get_input_embeddings().weight.data_ptr() and tuned.lock is base.lock
    lora_bytes = sum(p.nbytes for n, p in reference.named_parameters() if "lora_" in n)
    assert tuned.memory_bytes == lora_bytes and manager.used_bytes() == base.memory_bytes + lora_bytes
    assert list(stream_chat(tuned, HELLO, greedy(tuned, 3)))[-1].error is None
    manager.unload("base")  # its LoRA entry shares its weights: it goes too
    assert manager.loaded_ids() == []


def test_lora_on_a_base_with_prepacked_weights(fp_folder, lora_folder, plain_kernel, monkeypatch):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    def base_and_tuned_logits(packing: bool):
        monkeypatch.setenv("HUB_PREPACK", "1" if packing else "0")
        monkeypatch.setenv("HUB_BF16_KERNEL", "1" if packing else "0")  # on AVX2 the hub's bf16 kernel packs
        monkeypatch.setenv("HUB_DECODE_COMPUTE", "model")  # bf16 on any CPU: compared with PEFT's bf16 below
        manager = ModelManager(lora_registry(fp_folder, lora_folder, "bfloat16"), 10**10)
        base = manager.get("base")
        decoder = base.decoder
        assert bool(decoder.packed) == packing  # the decode loop packs the base's weights at load
        tuned = manager.get("tuned")  # PEFT wraps stock Linears: the base gets its plain weights back first
        assert decoder.packing.groups == []
        assert list(stream_chat(tuned, HELLO, greedy(tuned, 3)))[-1].error is None
        return last_logits(base.model), last_logits(tuned.model)

    packed, plain = base_and_tuned_logits(True), base_and_tuned_logits(False)
    assert all(torch.equal(a, b) for a, b in zip(packed, plain))
    reference = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(fp_folder, dtype=torch.bfloat16),
                                          str(lora_folder)).eval()
    assert torch.allclose(packed[1], last_logits(reference), atol=0.01)  # PEFT's own bf16 rounds a bit apart
    assert not torch.allclose(packed[1], packed[0], atol=0.01)


def test_lora_on_a_quantized_base(packed, lora_folder):
    manager = ModelManager(lora_registry(packed("gptq"), lora_folder), 10**10)
    tuned, base = manager.get("tuned"), manager.get("base")
    assert (tuned.quant_format, tuned.bits, tuned.base_id) == ("gptq", 4, "base")
    assert base.decoder is None and "gptq" in base.plan.reason  # quantized kernels keep generate()
    assert not torch.allclose(last_logits(tuned.model), last_logits(base.model), atol=1e-3)
    assert list(stream_chat(tuned, HELLO, greedy(tuned, 3)))[-1].error is None


def test_cli_generates_with_a_lora_entry_and_a_bnb_flag(fp_folder, lora_folder, packed, tmp_path, capsys):
    import json

    registry = tmp_path / "models.yaml"
    registry.write_text(f"models:\n  - {{id: base, name: B, source: {{path: {fp_folder}}}}}\n"
                        f"  - {{id: tuned, name: T, base: base, adapter: {lora_folder}}}\n")
    args = ["--prompt", "Hi", "--max-new-tokens", "3", "--greedy", "--json"]
    assert main(["--registry", str(registry), "generate", "tuned", *args]) == 0
    assert json.loads(capsys.readouterr().out)["error"] is None
    messages = tmp_path / "m.json"
    messages.write_text(json.dumps(HELLO))
    assert main(["--registry", str(registry), "prompt", "tuned", "--messages", str(messages), "--json"]) == 0
    assert "Hello! Who are you?" in json.loads(capsys.readouterr().out)["text"]  # built like its base's
    assert main(["generate", str(fp_folder), "--quantization", "bnb-8bit", *args]) == 0
    assert len(json.loads(capsys.readouterr().out)["output_ids"]) == 3
    assert main(["generate", str(packed("gptq")), *args]) == 0  # gptqmodel's log lines stay off stdout
    assert json.loads(capsys.readouterr().out)["finish_reason"] == "length"
