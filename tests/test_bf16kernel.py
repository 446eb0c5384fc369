"""The hub's bf16 kernel for CPUs without bf16 kernels (demo/bf16kernel.py): within rounding of F.linear, the
same bits for a row in any batch, a clear reason where it cannot build, and the decode plan that uses it."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from demo import bf16kernel
from demo.decodeplan import DecodePlan, packing_kernel
from demo.registry import DecodeSettings
from demo.rounding import heavy_tailed, within_rounding

ROOT = Path(__file__).resolve().parent.parent
needs_kernel = pytest.mark.skipif(bool(bf16kernel.unavailable()), reason=f"no hub bf16 kernel here: "
                                                                      f"{bf16kernel.unavailable()}")


def bf16_inputs(rows: int, features: int, seed: int) -> torch.Tensor:
    return heavy_tailed((rows, 1, features), torch.Generator().manual_seed(seed)).to(torch.bfloat16)


@needs_kernel
@pytest.mark.parametrize("out_features, in_features", [(96, 64), (50, 48), (7, 576), (1536, 576), (576, 1536)])
def test_products_are_within_rounding_of_f_linear_and_a_row_gets_its_bits_in_any_batch(out_features, in_features):
    generator = torch.Generator().manual_seed(out_features)
    weight = (torch.randn(out_features, in_features, generator=generator) * 0.05).to(torch.bfloat16)
    bias = torch.randn(out_features, generator=generator).to(torch.bfloat16)
    x = bf16_inputs(9, in_features, seed=in_features)
    for b in (None, bias):
        got = bf16kernel.linear(x, weight, b)
        assert got.dtype == torch.bfloat16 and got.shape == (9, 1, out_features)
        assert within_rounding(got, F.linear(x, weight, b), terms=in_features)
        alone = torch.cat([bf16kernel.linear(x[i:i + 1], weight, b) for i in range(9)])
        for rows in range(1, 10):  # 1..9 rows: every block shape of the kernel, and its tails
            assert torch.equal(bf16kernel.linear(x[:rows], weight, b), alone[:rows])


@needs_kernel
def test_the_thread_count_is_pytorchs_and_changes_no_bit():
    weight = torch.randn(512, 64).to(torch.bfloat16)
    x = bf16_inputs(5, 64, seed=3)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = bf16kernel.linear(x, weight)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, bf16kernel.linear(x, weight))


@needs_kernel
def test_a_prefill_shaped_input_and_other_dtypes_work():
    weight = torch.randn(64, 32).to(torch.bfloat16)
    x = torch.randn(1, 70, 32).to(torch.bfloat16)
    assert within_rounding(bf16kernel.linear(x, weight), F.linear(x, weight), terms=32)
    x32, w32 = torch.randn(3, 32), torch.randn(64, 32)
    assert torch.equal(bf16kernel.linear(x32, w32), F.linear(x32, w32))  # not bf16: PyTorch's own product


@needs_kernel
def test_nan_and_inf_stay_what_they_are():
    weight = torch.ones(16, 16, dtype=torch.bfloat16)
    x = torch.ones(2, 16, dtype=torch.bfloat16)
    x[0, 3], x[1, 5] = float("nan"), float("inf")
    got = bf16kernel.linear(x, weight)
    assert torch.isnan(got[0]).all() and torch.isinf(got[1]).all()


def test_a_cpu_without_avx2_and_a_failed_build_give_a_reason(tmp_path):
    assert bf16kernel.unavailable({"sse4_2"}) == "the CPU lacks AVX2/FMA"
    broken = tmp_path / "cc"
    broken.write_text("#!/bin/sh\necho 'cc: fatal error: no input files' >&2\nexit 1\n")
    broken.chmod(0o755)
    script = "from demo import bf16kernel; print(bf16kernel.unavailable())"
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "CC": str(broken)})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"the bf16 kernel did not build: {broken} failed: cc: fatal error: no input files"


def test_the_plan_runs_bf16_steps_on_the_hub_kernel_only_where_it_pays_and_is_allowed():
    bf16, auto = torch.bfloat16, DecodeSettings()
    want = ("oneDNN", bf16kernel.unavailable()) if bf16kernel.unavailable() else ("hub bf16", "")
    assert packing_kernel(auto, bf16, "cpu", "AVX2") == want
    assert packing_kernel(auto, bf16, "cpu", "AVX512+BF16") == ("oneDNN", "")  # oneDNN has bf16 kernels there
    assert packing_kernel(DecodeSettings(exact=True), bf16, "cpu", "AVX2") == ("oneDNN", "")  # not bitwise
    assert packing_kernel(DecodeSettings(bf16_kernel=False), bf16, "cpu", "AVX2") == ("oneDNN", "")
    assert packing_kernel(auto, torch.float32, "cpu", "AVX2") == ("oneDNN", "")
    assert packing_kernel(auto, bf16, "cuda", "AVX2") == ("oneDNN", "")
    plan = DecodePlan(isa="AVX2", loop=True, weights_dtype="bfloat16", prefill_dtype="float32",
                      decode_dtype="bfloat16", exact=False, lean=True, prepacked=121, kernel="hub bf16")
    assert plan.summary() == "loop in bfloat16 (8 rows), prefill float32, lean, 121 packed on the hub bf16 kernel; AVX2"
    assert plan.as_dict()["kernel"] == "hub bf16"


@needs_kernel
def test_a_model_runs_on_the_kernel_without_a_copy_and_within_rounding():
    """The tiny Llama in bf16 through the loop on the hub kernel: projections packed without a copy, no layer
    run in row chunks, logits within rounding of the stock model's. (Rows of a batch against each alone: the
    default model in tests/test_batching.py, whose plan uses the kernel on such a CPU.)"""
    import copy

    from demo.batching import BatchedDecoder
    from demo.loader import model_bytes
    from tests.test_fastdecode import make_tiny_llama

    model = make_tiny_llama(0).to(torch.bfloat16)
    stock, before = copy.deepcopy(model), model_bytes(model)
    decoder = BatchedDecoder(model, kernel="hub bf16", exact_packing=False)
    assert decoder.packed > 0 and decoder.lean is not None
    assert model_bytes(model) <= before  # the weights run as they are: nothing packed is a copy
    ids = torch.randint(0, 300, (1, 9), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        got, want = model(ids).logits, stock(ids).logits
    assert within_rounding(got, want, steps=8, terms=64)
    assert all(plan.rows == decoder.max_batch for plan in decoder.linears.values())  # no row-chunked layer


@needs_kernel
def test_the_kernel_shares_pytorchs_openmp_runtime():
    """Loading the kernel adds no OpenMP runtime to a process that has PyTorch's: two would each keep their
    own threads spinning on the same cores (bench/bare_llama.py runs llama.cpp apart for that reason)."""
    script = """
from pathlib import Path
import torch
def runtimes():
    return {line.split()[-1] for line in Path("/proc/self/maps").read_text().splitlines() if "libgomp" in line}
before = runtimes()
from demo import bf16kernel
assert bf16kernel.unavailable() == ""
import json
print(json.dumps([sorted(before), sorted(runtimes())]))
"""
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    before, after = json.loads(out.stdout)
    assert after == before and any("torch/lib/libgomp" in path for path in after)
