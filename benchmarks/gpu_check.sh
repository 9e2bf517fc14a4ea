#!/usr/bin/env bash
# The GPU checks of the block walk and offloading, in one call of a few minutes on a lent H100.
#
# Prepare once here:        bash ../shared/gpu/pack.sh          (writes .gpu/, see its header)
# Then one device call:     command "bash .gpu/p1/stage.sh --no-model && . /tmp/gpu/env.sh &&
#                                    bash benchmarks/gpu_check.sh",  carry [".gpu/p1"]
#
# Runs the cuda-marked tests (offloaded pruning, population walk and model loading against the
# ordinary results), then benchmarks/scale.py on the random-init 1B, 8B and 13B Llama shapes in
# bfloat16 with the weights in host memory and the blocks on the GPU (results/scale.* come back
# under $OUT when the device tool sets it). Each step has its own time limit so that one slow
# step leaves the others their turn.
set -uo pipefail
cd "$(dirname "$0")/.."
python3 -c "import torch; assert torch.cuda.is_available(), 'no GPU: this script is for a lent device'" || exit 2
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
timeout 120 python3 -m pytest -q -p no:cacheprovider -m cuda tests/ 2>&1 | tail -15
for shape in 1b 8b 13b; do
    timeout 150 python3 benchmarks/scale.py --shapes "$shape" --device cuda --dtype bfloat16 --offload host \
        --n-samples 8 --seq-len 512 2>&1 | grep -v "it/s\]" | tail -8
    if [ -n "${OUT:-}" ] && [ -f benchmarks/results/scale.json ]; then
        cp benchmarks/results/scale.json "$OUT/scale_$shape.json"
    fi
done
