"""A real `python -m demo serve` subprocess on loopback, over a test registry of tiny models."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tests.tiny import SMOLLM_FILE, SMOLLM_PACKAGE, make_tiny_chat_model

ROOT = Path(__file__).resolve().parent.parent


def tiny_entry(model_id: str, folder: Path, max_new_tokens: int) -> str:
    return (f"  - id: {model_id}\n    name: Tiny random {model_id}\n    source:\n      path: {folder}\n"
            f"    family: auto\n    dtype: float32\n    context_length: 2048\n"
            f"    generation: {{temperature: 1.0, top_p: 1.0, max_new_tokens: {max_new_tokens}}}\n")


def smollm_entry(max_new_tokens: int) -> str:
    return (f"  - id: smollm2-135m\n    name: SmolLM2 135M Instruct\n    source:\n      package: {SMOLLM_PACKAGE}\n"
            f"      file: {SMOLLM_FILE}\n    family: generic\n    dtype: bfloat16\n    engine: transformers\n"
            f"    context_length: 8192\n"
            f"    generation: {{temperature: 0.2, top_p: 0.9, max_new_tokens: {max_new_tokens}}}\n")


def write_registry(path: Path, entries: list[str], default: str) -> Path:
    path.write_text(f"settings:\n  default_model: {default}\nmodels:\n" + "".join(entries), encoding="utf-8")
    return path


def tiny_models(folder: Path, *names: str) -> dict[str, Path]:
    return {name: make_tiny_chat_model(folder / name, seed=k) for k, name in enumerate(names)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class HubServer:
    def __init__(self, registry: Path, votes: Path, log: Path, preload: bool = False):
        self.registry, self.votes, self.log_path, self.preload = registry, votes, log, preload
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.process: subprocess.Popen | None = None

    def start(self, timeout_s: float = 120) -> "HubServer":
        args = [sys.executable, "-m", "demo", "--registry", str(self.registry), "serve", "--port", str(self.port),
                "--votes", str(self.votes)] + (["--preload"] if self.preload else [])
        env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
        self.log = open(self.log_path, "ab")
        self.process = subprocess.Popen(args, cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited with {self.process.returncode}:\n{self.output()}")
            try:
                with urllib.request.urlopen(self.url + "config", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.3)
        self.kill()
        raise RuntimeError(f"the server did not answer within {timeout_s} s:\n{self.output()}")

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def kill(self) -> None:
        """SIGKILL: no shutdown handler, no flush, no goodbye."""
        if self.process and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)
        if getattr(self, "log", None):
            self.log.close()
