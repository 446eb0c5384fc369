#!/usr/bin/env bash
# Set up (first run only) and serve the hub on http://127.0.0.1:7860 with model_registry.yaml.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh hub
exec .venv/bin/python -m demo serve "$@"
