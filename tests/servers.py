"""Real server processes on loopback for the public-demo tests: the hub and `transformers serve`."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
# No test may reach the internet: proxies that refuse, no Gradio analytics.
OFFLINE_ENV = {"HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9",
               "ALL_PROXY": "http://127.0.0.1:9", "NO_PROXY": "127.0.0.1,localhost",
               "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Process:
    """A subprocess whose combined output is collected on a thread (so its pipe never fills)."""

    def __init__(self, args: list[str], env: dict | None = None, cwd: Path = ROOT):
        self.proc = subprocess.Popen(args, cwd=cwd, env={**os.environ, **OFFLINE_ENV, **(env or {})},
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for_line(self, text: str, timeout_s: float) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if text in line:
                    return line
            if self.proc.poll() is not None:
                break
            time.sleep(0.2)
        raise AssertionError(f"no line with {text!r} within {timeout_s} s; output:\n{self.output[-3000:]}")

    def wait_http(self, url: str, timeout_s: float, ok=(200, 401)) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"process exited ({self.proc.returncode}):\n{self.output[-3000:]}")
            try:
                if httpx.get(url, timeout=2, trust_env=False).status_code in ok:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise AssertionError(f"{url} did not answer within {timeout_s} s:\n{self.output[-3000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def start_hub(registry: Path, port: int, *extra: str, env: dict | None = None) -> Process:
    return Process([sys.executable, "-m", "demo", "--registry", str(registry), "serve", "--host", "127.0.0.1",
                    "--port", str(port), *extra], env)


def start_transformers_serve(folder: Path, port: int, cache: Path) -> Process:
    exe = Path(sys.executable).parent / "transformers"
    return Process([str(exe), "serve", str(folder), "--host", "127.0.0.1", "--port", str(port),
                    "--device", "cpu", "--dtype", "float32"], {"HF_HUB_CACHE": str(cache), "HF_HOME": str(cache)})
