#!/usr/bin/env bash
# Sets up (once) and serves the models of models.yaml on http://${HOST:-127.0.0.1}:${PORT:-8000}/v1
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m server serve --config "${CONFIG:-models.yaml}" \
    --host "${HOST:-127.0.0.1}" --port "${PORT:-8000}"
