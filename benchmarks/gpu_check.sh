#!/usr/bin/env bash
# The GPU checks of the block walk and offloading, in one call of a few minutes on a lent H100.
#
# Prepare once here:        bash ../shared/gpu/pack.sh          (writes .gpu/, see its header)
# Then one device call:     command "bash .gpu/p1/stage.sh --no-model && . /tmp/gpu/env.sh &&
#                                    bash benchmarks/gpu_check.sh",  carry [".gpu/p1"]
#
# Runs the cuda-marked tests (offloaded pruning, population walk, model loading and streaming from
# disk against the ordinary results), then benchmarks/scale.py on random-init Llama shapes in
# bfloat16 with the blocks on the GPU: 1B with the weights in host memory, 8B read from disk and
# in host memory, 13B in host memory (results/scale.json comes back under $OUT when the device
# tool sets it). Each step has its own time limit so that one slow step leaves the others their
# turn.
set -uo pipefail
cd "$(dirname "$0")/.."
python3 -c "import torch; assert torch.cuda.is_available(), 'no GPU: this script is for a lent device'" || exit 2
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
timeout 120 python3 -m pytest -q -p no:cacheprovider -m cuda tests/ 2>&1 | tail -15
for run in "1b host" "8b disk" "8b host" "13b host"; do
    set -- $run
    timeout 110 python3 benchmarks/scale.py --shapes "$1" --device cuda --dtype bfloat16 --offload "$2" \
        --n-samples 8 --seq-len 512 2>&1 | grep -v "it/s\]" | grep -v "^|" | tail -6
    if [ -n "${OUT:-}" ] && [ -f benchmarks/results/scale.json ]; then
        cp benchmarks/results/scale.json "$OUT/scale.json"
    fi
done
