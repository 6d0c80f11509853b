#!/usr/bin/env bash
# Set up plumb on a fresh machine: a venv in .venv with torch (CPU wheel) and plumb[dev].
# Idempotent and quick when already done. Works offline once pip's cache has the wheels
# (llama-cpp-python builds from source the first time: ~5 minutes on 2 cores without its multimodal library).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [[ ! -x .venv/bin/python ]]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip
# torch first, pinned: a bare `torch` requirement would pull several GB of CUDA packages.
python -c "import torch" 2>/dev/null || python -m pip install -q torch==2.13.0
# llama-cpp-python compiles llama.cpp from source; plumb never loads its multimodal library (mtmd), so
# skip building it (a CMAKE_ARGS of your own, e.g. -DGGML_CUDA=on, is kept and can turn it back on).
export CMAKE_ARGS="-DLLAVA_BUILD=OFF ${CMAKE_ARGS:-}"
python -m pip install -q -e '.[dev]'
echo "plumb is set up in .venv ($(.venv/bin/plumb --version))"
