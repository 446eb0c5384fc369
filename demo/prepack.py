"""Linear weights prepacked for oneDNN: the same products, bit for bit, and faster where it has bf16 kernels.

A plain bf16 `F.linear` reorders its weight into oneDNN's blocked layout on every call; a decode step
of a small model spends a third of its time on that. Here each projection of the lean decode step
(demo.fastdecode) is reordered once, at load, and runs through `torch.ops.mkldnn._linear_pointwise`.
The plain weight is then freed, so the model takes no more memory than before.

Exactness is checked, not assumed: a layer is packed only when the packed product equals `F.linear`
bitwise on heavy-tailed inputs of several row counts (a batch, a prefill); otherwise it stays plain.
A CPU without AVX-512 or AVX-NE-CONVERT has no bf16 kernels to pack for, and there fp32 packed products
differ from `F.linear` at a few rows, so on such a CPU nothing is packed.

q/k/v (and gate/up) share one fused packed matrix. forward() calls them one after another on the same
input, so the first call computes the fused product and the next ones take their slice of it.

`unpack` gives a model its plain weights back (exactly: the reorder is a permutation), for the few
places that need stock modules: injecting a LoRA adapter, saving a checkpoint. `HUB_PREPACK=0` turns
packing off.
"""
from __future__ import annotations

import logging
import os

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

ENABLED = os.environ.get("HUB_PREPACK", "1") != "0"
_ROWS_CHECKED = (1, 2, 3, 4, 8, 64)  # a single stream, batches, a prefill


def heavy_tailed(shape: tuple, generator: torch.Generator) -> torch.Tensor:
    """Random inputs over a wide range of magnitudes: any change in summation order shows in the rounding."""
    return torch.randn(shape, generator=generator) * torch.exp(3 * torch.randn(shape, generator=generator))


def available(weight: torch.Tensor) -> bool:
    return (ENABLED and weight.device.type == "cpu" and weight.dtype in (torch.bfloat16, torch.float32)
            and torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight"))


# The three oneDNN calls, apart so that tests can stand in for them where a CPU lacks the kernels.
def _reorder(weight: torch.Tensor) -> torch.Tensor:
    return torch.ops.mkldnn._reorder_linear_weight(weight, 1)


def _linear(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")


def _dense(packed: torch.Tensor) -> torch.Tensor:
    return packed.to_dense()


class PackedGroup:
    """One packed matrix: the rows of `parts` (Linears) stacked, optionally also run whole as `whole`."""

    def __init__(self, parts: list[torch.nn.Linear], whole: torch.nn.Linear | None, weight, bias):
        self.parts, self.whole, self.bias = parts, whole, bias
        self.packed = _reorder(weight)
        self.shape = tuple(weight.shape)
        bounds, start = [], 0
        for part in parts:
            bounds.append((start, start + part.out_features))
            start += part.out_features
        self.bounds = bounds
        self._last: tuple | None = None  # (input, fused output) of the last part-call

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return _linear(x, self.packed, self.bias)

    def part_forward(self, index: int):
        start, end = self.bounds[index]
        if len(self.parts) == 1:
            return self

        def forward(x):
            # One tuple, read and written whole: a second thread can only make this call recompute.
            # Identity is enough here: Llama/Qwen2 attention and MLP pass the same, unmodified input to
            # each projection in turn (inference tensors carry no version counter to check).
            last = self._last
            if last is None or last[0] is not x:
                last = self._last = (x, self(x))
            if index == len(self.parts) - 1:
                self._last = None  # let the input and output go
            return last[1][..., start:end]
        return forward

    def exact(self, weight: torch.Tensor) -> bool:
        """Whether the packed product is F.linear's bit for bit, and unpacks to the same weight."""
        generator = torch.Generator().manual_seed(0)
        n_in = weight.shape[1]
        for rows in _ROWS_CHECKED:
            shape = (rows, 1, n_in) if rows <= 8 else (1, rows, n_in)
            x = heavy_tailed(shape, generator).to(weight.dtype)
            if not torch.equal(self(x), F.linear(x, weight, self.bias)):
                return False
        return torch.equal(_dense(self.packed), weight)

    def modules(self) -> list[torch.nn.Linear]:
        return [*self.parts, *([self.whole] if self.whole is not None else [])]

    def install(self) -> None:
        """Route the modules through the packed matrix and free their plain weights."""
        for module in self.modules():
            module.weight = torch.nn.Parameter(torch.empty_like(module.weight, device="meta"), requires_grad=False)
            module._hub_packed = self
        for index, part in enumerate(self.parts):
            part.forward = self.part_forward(index)
        if self.whole is not None:
            self.whole.forward = self

    def uninstall(self) -> None:
        """Plain weights back (the originals, exactly), and the modules' own forward()."""
        weight = _dense(self.packed)
        if self.whole is not None:
            self.whole.weight = torch.nn.Parameter(weight, requires_grad=False)
        for part, (start, end) in zip(self.parts, self.bounds):
            part.weight = torch.nn.Parameter(weight[start:end], requires_grad=False)
        for module in self.modules():
            module.__dict__.pop("forward", None)
            module.__dict__.pop("_hub_rows", None)  # a row-chunked forward (demo.batching) goes too
            del module._hub_packed


def pack(parts: list[torch.nn.Linear], whole: torch.nn.Linear | None = None) -> PackedGroup | None:
    """Pack `whole` (or the single part), whose rows are the parts' weights; None where not exact."""
    source = whole if whole is not None else parts[0]
    weight = source.weight.detach()
    if not available(weight) or hasattr(source, "_hub_packed"):
        return None
    bias = source.bias.detach() if source.bias is not None else None
    with torch.inference_mode(False), torch.no_grad():
        try:
            group = PackedGroup(parts, whole, weight, bias)
        except RuntimeError as error:  # e.g. a bf16 weight on a CPU without AVX-512 or AVX-NE-CONVERT
            log.info("cannot pack a %s %s weight here (%s); keeping it plain", weight.dtype, tuple(weight.shape),
                     str(error).splitlines()[0])
            return None
        if not group.exact(weight):
            log.info("packed %s product differs from F.linear; keeping it plain", tuple(weight.shape))
            return None
    group.install()
    return group


def packed_groups(model) -> list[PackedGroup]:
    return list({id(g): g for m in model.modules() if (g := getattr(m, "_hub_packed", None))}.values())


def unpack(model) -> None:
    """Give every packed Linear of `model` (and the fused ones packed with them) its plain weight and forward back."""
    for group in packed_groups(model):
        group.uninstall()
