"""Probe inputs and the rounding tolerance the decode probes share (a leaf)."""
from __future__ import annotations

import torch


def heavy_tailed(shape: tuple, generator: torch.Generator) -> torch.Tensor:
    """Random inputs over a wide range of magnitudes: any change in summation order shows in the rounding."""
    return torch.randn(shape, generator=generator) * torch.exp(3 * torch.randn(shape, generator=generator))


def within_rounding(got: torch.Tensor, expected: torch.Tensor, steps: int = 2) -> bool:
    """Whether `got` is `expected` up to a few rounding steps of their dtype, relative to each element or,
    for elements near zero (where sums cancel), to the largest element of the tensor."""
    eps = torch.finfo(expected.dtype).eps
    got, expected = got.float(), expected.float()
    return torch.allclose(got, expected, rtol=steps * eps, atol=steps * eps * float(expected.abs().amax()))
