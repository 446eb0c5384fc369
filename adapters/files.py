"""What a checkpoint folder's own files say: its config files and the special tokens its tokenizer declares."""
from __future__ import annotations

import json
from pathlib import Path

from .errors import AdapterError


def read_json(path: Path) -> dict:
    """A JSON file as a dict ({} when absent); an unreadable one is an error naming the file."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise AdapterError(f"{path}: cannot read it as JSON: {e}") from None
    return data if isinstance(data, dict) else {}


def declared_tokens(folder: Path) -> set[str]:
    """Special/added token strings named by tokenizer_config.json, special_tokens_map.json, tokenizer.json."""
    folder = Path(folder)
    tokens: set[str] = set()
    config = read_json(folder / "tokenizer_config.json")
    tokens |= {entry.get("content", "") for entry in config.get("added_tokens_decoder", {}).values()}
    for value in [*config.values(), *read_json(folder / "special_tokens_map.json").values()]:
        tokens |= {token_text(v) for v in (value if isinstance(value, list) else [value])}
    if (folder / "tokenizer.json").is_file():
        tokens |= {t.get("content", "") for t in read_json(folder / "tokenizer.json").get("added_tokens", [])}
    return {t for t in tokens if t}


def token_text(value) -> str:
    if isinstance(value, dict):
        return value.get("content", "") if isinstance(value.get("content"), str) else ""
    return value if isinstance(value, str) and value.startswith("<") else ""


def require(folder: Path, name: str, what: str) -> Path:
    path = Path(folder) / name
    if not path.is_file():
        raise AdapterError(f"{path}: missing tokenizer file ({what})")
    return path


def local_folder(weights) -> Path:
    """The checkpoint's folder on this machine, downloading a hub repo first (needs internet)."""
    if weights.folder is not None:
        return weights.folder
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(weights.location, revision=weights.revision))


def check_checkpoint(folder: Path) -> None:
    """Fail early, naming the file, on what transformers reports vaguely: an unknown model_type, a bad shard."""
    from transformers import CONFIG_MAPPING

    config_path = Path(folder) / "config.json"
    model_type = read_json(config_path).get("model_type")
    if config_path.is_file() and model_type not in CONFIG_MAPPING:
        raise AdapterError(f"{config_path}: unknown model_type {model_type!r}: transformers has no such "
                           "architecture and no family here converts it")
    for shard in sorted(Path(folder).glob("*.safetensors")):
        try:
            from safetensors import safe_open

            with safe_open(str(shard), "pt") as f:
                f.keys()
        except Exception as e:  # header damaged or file cut short
            raise AdapterError(f"{shard}: cannot read this weight file ({type(e).__name__}: {e})") from None
