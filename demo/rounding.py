"""Probe inputs and the rounding tolerance the decode probes share (a leaf)."""
from __future__ import annotations

import torch


def heavy_tailed(shape: tuple, generator: torch.Generator) -> torch.Tensor:
    """Random inputs over a wide range of magnitudes: any change in summation order shows in the rounding."""
    return torch.randn(shape, generator=generator) * torch.exp(3 * torch.randn(shape, generator=generator))


def within_rounding(got: torch.Tensor, expected: torch.Tensor, steps: int = 2, terms: int = 0) -> bool:
    """Whether `got` is `expected` up to a few rounding steps of their dtype, relative to each element or,
    for elements near zero (where sums cancel), to the largest element of the tensor.

    `terms`: the outputs are sums of that many products, which the two sides may add in another order.
    In float32 that order shows (up to about one float32 step per term); in bf16 the final rounding to
    bf16 hides it."""
    tolerance = steps * torch.finfo(expected.dtype).eps + terms * torch.finfo(torch.float32).eps
    got, expected = got.float(), expected.float()
    return torch.allclose(got, expected, rtol=tolerance, atol=tolerance * float(expected.abs().amax()))
