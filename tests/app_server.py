"""The real hub as a subprocess (`python -m demo serve`) on a loopback port, shared by the app tests.

Its registry, written to a temp folder, has four entries:
- smollm2-135m: the embedded default model (greedy, short replies, so answers are stable and quick);
- tiny-llama: a random LlamaForCausalLM with SmolLM2's tokenizer and chat template, built here;
- gone-gguf: a GGUF file that is not in its package (listed, unavailable);
- broken-config: a folder whose config.json is corrupt (listed, its load fails).
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.tiny import SMOLLM_FILE, SMOLLM_PACKAGE, make_tiny_chat_model

ROOT = Path(__file__).resolve().parent.parent
DEFAULT, TINY, GONE, BROKEN = "smollm2-135m", "tiny-llama", "gone-gguf", "broken-config"
MISSING_GGUF = "NotThere-135M.Q4_1.gguf"
START_TIMEOUT_S = 180  # imports and Gradio start-up, slow when other jobs share the two cores

REGISTRY = f"""\
settings:
  default_model: {DEFAULT}
models:
  - id: {DEFAULT}
    name: SmolLM2 135M Instruct
    source: {{package: {SMOLLM_PACKAGE}, file: {SMOLLM_FILE}}}
    family: generic
    dtype: bfloat16
    engine: transformers   # the answers these tests expect are the transformers engine's
    generation: {{greedy: true, max_new_tokens: 16}}
  - id: {TINY}
    name: Tiny random Llama
    source: {{path: "{{tiny}}"}}
    family: generic
    dtype: float32
    # Sampled: greedy decoding of random weights repeats one token (a newline), which shows nothing.
    generation: {{temperature: 1.0, top_p: 1.0, top_k: 0, seed: 1, max_new_tokens: 8}}
  - id: {GONE}
    name: Missing GGUF
    source: {{package: {SMOLLM_PACKAGE}, file: {MISSING_GGUF}}}
    family: generic
  - id: {BROKEN}
    name: Corrupt config
    source: {{path: "{{broken}}"}}
    family: generic
"""


@dataclass
class HubServer:
    url: str
    process: subprocess.Popen
    log_path: Path

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_registry(folder: Path) -> Path:
    broken = folder / "broken"
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "llama", "hidden_size": ')  # cut short: not JSON
    path = folder / "registry.yaml"
    path.write_text(REGISTRY.replace("{tiny}", str(folder / "tiny")).replace("{broken}", str(broken)))
    return path


def wait_until_serving(server: HubServer, timeout_s: float = START_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            pytest.fail(f"the server exited with {server.process.returncode}:\n{server.log_tail()}")
        try:
            with urllib.request.urlopen(server.url + "/", timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"the server did not answer within {timeout_s} s:\n{server.log_tail()}")


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=15)


@pytest.fixture(scope="session")
def hub_server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hub")
    registry = write_registry(folder)
    port = free_port()
    log_path = folder / "server.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "GRADIO_ANALYTICS_ENABLED": "False",
           "HF_HUB_OFFLINE": "1"}
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "demo", "serve", "--host", "127.0.0.1", "--port", str(port),
             "--registry", str(registry), "--preload"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    server = HubServer(f"http://127.0.0.1:{port}", process, log_path)
    try:
        # Built while the server starts and preloads the default model; the hub looks at this folder
        # only when the model is used.
        make_tiny_chat_model(folder / "tiny")
        wait_until_serving(server)
        yield server
    finally:
        stop(process)
