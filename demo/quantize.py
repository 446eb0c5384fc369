"""`python -m demo quantize SRC DST --method gptq|awq --bits 4`: quantize a full-precision folder with gptqmodel.

A small built-in calibration set (chat, prose, code, numbers, Chinese) is enough for a demo-quality
4-bit model; `--calibration FILE` gives your own (a JSON list of strings, or one sample per line).
`memory_report` is what the benchmark calls to compare full-precision and quantized loads.
"""
from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path

from adapters.quant import AWQ, GPTQ, QuantError, QuantSpec, require_backend

CALIBRATION = [
    "User: What is the capital of France?\nAssistant: The capital of France is Paris, a city on the Seine.",
    "User: Write a haiku about autumn.\nAssistant: Crisp leaves drift and fall / amber light on quiet paths / "
    "the year exhales slow.",
    "The mitochondrion is the site of aerobic respiration in the cell. It converts nutrients into ATP, the "
    "molecule that stores energy for most cellular processes.",
    "def fibonacci(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n\n"
    "print([fibonacci(i) for i in range(10)])",
    "SELECT name, COUNT(*) AS orders FROM customers JOIN orders ON customers.id = orders.customer_id "
    "GROUP BY name ORDER BY orders DESC LIMIT 10;",
    "In 1969, Apollo 11 landed on the Moon. Neil Armstrong and Buzz Aldrin walked on the surface while "
    "Michael Collins orbited above in the command module.",
    "Solve for x: 3x + 7 = 22. Subtract 7 from both sides: 3x = 15. Divide by 3: x = 5. Check: 3*5 + 7 = 22.",
    "人工智能是计算机科学的一个分支，它试图理解智能的本质，并生产出一种新的能以人类智能相似的方式做出反应的智能机器。",
    "User: 请用一句话介绍一下长城。\nAssistant: 长城是中国古代修建的军事防御工程，全长两万多公里。",
    "Dear team, the quarterly report is attached. Revenue grew 12% year over year, driven by strong demand in "
    "the Asia-Pacific region. Please review it before Thursday's meeting.",
    "The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor jugs. How vexingly quick "
    "daft zebras jump!",
    "User: Explain recursion to a child.\nAssistant: Recursion is when something is defined using a smaller "
    "copy of itself, like a set of nesting dolls: open one and there is a smaller one inside.",
    "Numbers: 1, 2, 3, 5, 8, 13, 21, 34, 55, 89, 144, 233, 377, 610, 987, 1597, 2584, 4181, 6765.",
    "<html><body><h1>Welcome</h1><p>This page lists the <a href=\"/docs\">documentation</a>.</p></body></html>",
    "Le petit prince demanda: « S'il vous plaît... dessine-moi un mouton! » et l'aviateur dessina une caisse.",
    "To install the package, run pip install, then import it and call main() with the path to your data.",
]


def quantize(src: str | Path, dst: str | Path, method: str = GPTQ, bits: int = 4, group_size: int = 128,
             desc_act: bool = False, calibration: list[str] | None = None) -> Path:
    """Quantize the full-precision checkpoint folder `src` into `dst` (GPTQ or AWQ GEMM) on CPU or CUDA."""
    src, dst = Path(src).expanduser(), Path(dst).expanduser()
    check_request(src, dst, method, bits)
    require_backend(QuantSpec(method))
    import torch
    from gptqmodel import GPTQModel
    from gptqmodel.quantization.config import AWQConfig, GPTQConfig
    from gptqmodel.utils.backend import BACKEND

    cuda = torch.cuda.is_available()
    if method == AWQ:
        # zero points as AutoAWQ writes them (zero_point: true), the layout every AWQ runtime reads
        config = AWQConfig(bits=bits, group_size=group_size, sym=False)
    else:
        config = GPTQConfig(bits=bits, group_size=group_size, desc_act=desc_act, sym=True)
    model = GPTQModel.load(str(src), config, device="cuda" if cuda else "cpu")
    # On CPU the AWQ packer must be the portable torch one (the default GEMM packer needs CUDA).
    backend = BACKEND.AWQ_TORCH if method == AWQ and not cuda else BACKEND.AUTO
    with per_layer_logs_elsewhere():
        model.quantize(calibration or CALIBRATION, batch_size=1, backend=backend)
    model.save(str(dst))
    copy_tokenizer_files(src, dst)
    for leftover in ("quant_log.csv",):  # gptqmodel's per-layer log, not part of a checkpoint
        (dst / leftover).unlink(missing_ok=True)
    return dst


@contextlib.contextmanager
def per_layer_logs_elsewhere():
    """gptqmodel writes per-layer logs into ./logs of whatever folder it runs in: send them to a temp folder."""
    import tempfile

    from gptqmodel.looper import loop_processor

    saved = loop_processor._PROJECT_LOG_DIR
    with tempfile.TemporaryDirectory(prefix="gptqmodel-logs-") as folder:
        loop_processor._PROJECT_LOG_DIR = Path(folder)
        try:
            yield
        finally:
            loop_processor._PROJECT_LOG_DIR = saved


def check_request(src: Path, dst: Path, method: str, bits: int) -> None:
    if not (src / "config.json").is_file():
        raise QuantError(f"{src} is not a checkpoint folder (no config.json)")
    if json.loads((src / "config.json").read_text(encoding="utf-8")).get("quantization_config"):
        raise QuantError(f"{src} is already quantized; start from a full-precision folder")
    if method not in (GPTQ, AWQ):
        raise QuantError(f"unknown method {method!r}: gptq or awq")
    if method == AWQ and bits != 4 or method == GPTQ and bits not in (2, 3, 4, 8):
        raise QuantError(f"{method} cannot make {bits}-bit weights (awq: 4; gptq: 2, 3, 4 or 8)")
    if dst.exists() and any(dst.iterdir()):
        raise QuantError(f"{dst} exists and is not empty; choose a new folder")


def read_calibration(path: str | Path) -> list[str]:
    """A JSON list of strings, or a text file with one sample per line."""
    text = Path(path).read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except ValueError:
        data = [line for line in text.splitlines() if line.strip()]
    if not isinstance(data, list) or not data or not all(isinstance(s, str) for s in data):
        raise QuantError(f"{path}: expected a JSON list of strings or one sample per line")
    return data


def memory_report(full_precision: str | Path, quantized: str | Path,
                  dtypes: tuple[str, ...] = ("float32", "bfloat16")) -> dict[str, dict]:
    """Load the same model in full precision (each dtype) and quantized; memory and format of each load.

    Returns {label: {"format", "bits", "memory_bytes", "load_seconds"}}; labels are the dtypes and the
    quantized format ("gptq 4-bit"). The benchmark calls this; the quantize command prints it.
    """
    from .loader import folder_entry, load_entry
    from .registry import DecodeSettings

    as_loaded = {"decode": DecodeSettings(batched=False, compute="model")}  # weights in the dtype asked for
    report = {}
    for dtype in dtypes:
        report[dtype] = describe(load_entry(folder_entry(str(full_precision)).model_copy(update={**as_loaded,
                                                                                               "dtype": dtype})))
    loaded = load_entry(folder_entry(str(quantized)).model_copy(update=as_loaded))
    report[f"{loaded.quant_format} {loaded.bits}-bit"] = describe(loaded)
    return report


def describe(loaded) -> dict:
    return {"format": loaded.quant_format, "bits": loaded.bits, "memory_bytes": loaded.memory_bytes,
            "layers_bytes": layers_bytes(loaded.model), "load_seconds": round(loaded.load_seconds, 2)}


def layers_bytes(model) -> int:
    """Bytes of the decoder layers alone: what quantization shrinks (embeddings and lm_head stay as they are)."""
    tensors = {id(t): t for name, t in [*model.named_parameters(), *model.named_buffers()] if ".layers." in name}
    return sum(t.nbytes for t in tensors.values())


def format_report(report: dict[str, dict]) -> str:
    return "\n".join(f"{label:<16} {row['memory_bytes'] / 2**20:9.1f} MiB in all, {row['layers_bytes'] / 2**20:9.1f} "
                     f"MiB in the decoder layers  (loaded in {row['load_seconds']} s)" for label, row in report.items())


def copy_tokenizer_files(src: Path, dst: Path) -> None:
    """Keep tokenizer files gptqmodel does not copy (tokenizer.model, *.tiktoken ...)."""
    for path in src.iterdir():
        weights = path.suffix in (".safetensors", ".bin", ".pt") or path.name.endswith(".index.json")
        if path.is_file() and not weights and not (dst / path.name).exists():
            shutil.copy2(path, dst / path.name)
