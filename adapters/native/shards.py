"""Reading an upstream checkpoint's weight shards, one at a time, with errors that name the file."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import torch

from ..errors import AdapterError


def weight_files(folder: Path) -> list[Path]:
    """The shards to read: `*.safetensors` when there are any (preferred), else `pytorch_model*.bin`."""
    folder = Path(folder)
    safetensors = sorted(folder.glob("*.safetensors"))
    if safetensors:
        return safetensors
    bins = sorted(folder.glob("pytorch_model*.bin"))
    if not bins:
        raise AdapterError(f"{folder}: no weight files (*.safetensors or pytorch_model*.bin)")
    return bins


def read_shard(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of one shard; `.bin` files are unpickled with weights_only=True (no code runs)."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # safetensors, pickle and zip errors: all mean a damaged or foreign file
        raise AdapterError(f"{path}: cannot read this weight file ({type(e).__name__}: {e})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise AdapterError(f"{path}: not a plain state dict of tensors")
    return state


def shards(folder: Path) -> Iterator[tuple[Path, dict[str, torch.Tensor]]]:
    for path in weight_files(folder):
        yield path, read_shard(path)
