#!/usr/bin/env bash
# Sets up (once) and runs the whole test suite: lint, unit, in-process API and end-to-end tests.
# Extra arguments go to pytest (e.g. `scripts/test.sh -k stream -x`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check server tests scripts
.venv/bin/mypy  # server/, as [tool.mypy] in pyproject.toml says
# Converts the default model's GGUF file into the cache once, so the tests' servers start fast.
.venv/bin/python -m server prepare --config models.yaml
exec .venv/bin/python -m pytest "$@"
