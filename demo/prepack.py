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

`Packing.unpack` gives the model its plain weights back (exactly: the reorder is a permutation), for
the few places that need stock modules: injecting a LoRA adapter. The decode plan (demo/decodeplan.py)
says whether to pack (`decode: {prepack: false}`, `HUB_PREPACK=0`).

A float32 plan that is not exact (on a CPU without bf16 kernels, demo/decodeplan.py) also packs float32
weights, whose packed products differ from `F.linear` by rounding: there a layer is packed when its
products are within two rounding steps of `F.linear`'s (`exact=False`).

On a CPU without bf16 kernels a bf16 plan that is not exact runs the same groups through the hub's own
kernel instead (`HubBf16`, demo/bf16kernel.py): the weights stay as they are (no copy, so a tied head
is taken too), and the products are within rounding of `F.linear`'s.
"""
from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

from . import bf16kernel
from .rounding import heavy_tailed, within_rounding

log = logging.getLogger(__name__)

_ROWS_CHECKED = (1, 2, 3, 4, 8, 64)  # a single stream, batches, a prefill


def available(weight: torch.Tensor) -> bool:
    return (weight.device.type == "cpu" and weight.dtype in (torch.bfloat16, torch.float32)
            and torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight"))


# The three oneDNN calls, apart so that tests can stand in for them where a CPU lacks the kernels.
def _reorder(weight: torch.Tensor) -> torch.Tensor:
    return torch.ops.mkldnn._reorder_linear_weight(weight, 1)


def _linear(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")


def _dense(packed: torch.Tensor) -> torch.Tensor:
    return packed.to_dense()


class _Product:
    """x @ weight.T (+ bias) summed in float32, rounded once to the weight's dtype: the reference a kernel
    that rounds otherwise than F.linear is held to. The float32 weight is made once for all the checks."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None):
        self.dtype = weight.dtype
        self.weight = weight.float()
        self.bias = None if bias is None else bias.float()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x.float(), self.weight, self.bias).to(self.dtype)


class OneDNN:
    """oneDNN's packed layout: a reordered copy of each weight (the module's functions above, looked up at each
    call so that tests can stand in for them)."""

    name, copies = "oneDNN", True
    rows_checked = _ROWS_CHECKED  # oneDNN picks its kernel by the number of rows

    @staticmethod
    def supports(weight: torch.Tensor) -> bool:
        return available(weight)

    reorder = staticmethod(lambda weight: _reorder(weight))
    linear = staticmethod(lambda x, packed, bias: _linear(x, packed, bias))
    dense = staticmethod(lambda packed: _dense(packed))


class HubBf16:
    """The hub's bf16 kernel for CPUs without bf16 kernels (demo/bf16kernel.py): the weight as it is."""

    name, copies = "hub bf16", False
    # One code path for every row count, rows in blocks of 4: each block shape and a tail suffice (a
    # 64-row check of the vocabulary projection alone took 0.3 s of the load).
    rows_checked = (1, 2, 3, 4, 5, 8)

    @staticmethod
    def supports(weight: torch.Tensor) -> bool:
        return bf16kernel.supports(weight) and not bf16kernel.unavailable()

    reorder = staticmethod(lambda weight: weight)
    linear = staticmethod(bf16kernel.linear)
    dense = staticmethod(lambda packed: packed)


KERNELS = {kernel.name: kernel for kernel in (OneDNN, HubBf16)}


class PackedGroup:
    """One packed matrix: the rows of `parts` (Linears) stacked, optionally also run whole as `whole`."""

    def __init__(self, parts: list[torch.nn.Linear], whole: torch.nn.Linear | None, weight, bias, kernel=OneDNN):
        self.parts, self.whole, self.bias, self.kernel = parts, whole, bias, kernel
        self.packed = kernel.reorder(weight)
        self.shape = tuple(weight.shape)
        bounds, start = [], 0
        for part in parts:
            bounds.append((start, start + part.out_features))
            start += part.out_features
        self.bounds = bounds
        self._last: tuple | None = None  # (input, fused output) of the last part-call

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.kernel.linear(x, self.packed, self.bias)

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

    def matches(self, weight: torch.Tensor, exact: bool = True) -> bool:
        """Whether the packed product is F.linear's bit for bit (or, not `exact`, within rounding of the
        product, as F.linear's is), and unpacks to the same weight."""
        generator = torch.Generator().manual_seed(0)
        n_in = weight.shape[1]
        reference = None if exact else _Product(weight, self.bias)
        for rows in self.kernel.rows_checked:
            shape = (rows, 1, n_in) if rows <= 8 else (1, rows, n_in)
            x = heavy_tailed(shape, generator).to(weight.dtype)
            got = self(x)
            if not (torch.equal(got, F.linear(x, weight, self.bias)) if exact
                    else within_rounding(got, reference(x), terms=n_in)):
                return False
        return torch.equal(self.kernel.dense(self.packed), weight)

    def modules(self) -> list[torch.nn.Linear]:
        return [*self.parts, *([self.whole] if self.whole is not None else [])]

    def install(self) -> None:
        """Route the modules through the packed matrix and free their plain weights."""
        for module in self.modules():
            module.weight = torch.nn.Parameter(torch.empty_like(module.weight, device="meta"), requires_grad=False)
        for index, part in enumerate(self.parts):
            part.forward = self.part_forward(index)
        if self.whole is not None:
            self.whole.forward = self

    def uninstall(self) -> None:
        """Plain weights back (the originals, exactly), and the modules' own forward()."""
        weight = self.kernel.dense(self.packed)
        if self.whole is not None:
            self.whole.weight = torch.nn.Parameter(weight, requires_grad=False)
        for part, (start, end) in zip(self.parts, self.bounds):
            part.weight = torch.nn.Parameter(weight[start:end], requires_grad=False)
        for module in self.modules():
            module.__dict__.pop("forward", None)  # a row-chunked forward (demo.batching) goes too


class Packing:
    """The packed matrices of one model, and which Linear runs through which (the only record of it)."""

    def __init__(self, exact: bool = True, kernel=OneDNN):
        self.exact, self.kernel = exact, kernel
        self.groups: list[PackedGroup] = []
        self._of: dict[torch.nn.Linear, PackedGroup] = {}

    def __len__(self) -> int:
        return len(self.groups)

    @property
    def packs_tied_head(self) -> bool:
        """Whether a head tied to the embedding is packed too: where packing copies no weight, or where a
        float32 plan (not exact) pays the copy for a row's logits at half the cost."""
        return not self.kernel.copies or not self.exact

    def group_of(self, linear: torch.nn.Linear) -> PackedGroup | None:
        return self._of.get(linear)

    def pack(self, parts: list[torch.nn.Linear], whole: torch.nn.Linear | None = None) -> PackedGroup | None:
        if (whole if whole is not None else parts[0]) in self._of:
            return None
        group = pack(parts, whole, self.exact, self.kernel)
        if group is not None:
            self.groups.append(group)
            self._of.update(dict.fromkeys(group.modules(), group))
        return group

    def unpack(self) -> None:
        """Give every packed Linear (and the fused ones packed with them) its plain weight and forward back."""
        for group in self.groups:
            group.uninstall()
        self.groups, self._of = [], {}


def pack(parts: list[torch.nn.Linear], whole: torch.nn.Linear | None = None, exact: bool = True,
         kernel=OneDNN) -> PackedGroup | None:
    """Pack `whole` (or the single part), whose rows are the parts' weights; None where it does not match."""
    source = whole if whole is not None else parts[0]
    weight = source.weight.detach()
    if not kernel.supports(weight):
        return None
    bias = source.bias.detach() if source.bias is not None else None
    with torch.inference_mode(False), torch.no_grad():
        try:
            group = PackedGroup(parts, whole, weight, bias, kernel)
        except RuntimeError as error:  # e.g. a bf16 weight on a CPU without AVX-512 or AVX-NE-CONVERT
            log.info("cannot pack a %s %s weight here (%s); keeping it plain", weight.dtype, tuple(weight.shape),
                     str(error).splitlines()[0])
            return None
        if not group.matches(weight, exact):
            log.info("packed %s product differs from F.linear; keeping it plain", tuple(weight.shape))
            return None
    group.install()
    return group
