#!/usr/bin/env bash
# On a machine with an NVIDIA GPU and Nsight Compute: where the block loop's kernels stall.
# Builds in place (as gpu_check.sh), prints each kernel's device time per call for the shapes
# (benchmarks/profile_cuda.py), then profiles one training step of SHAPE's forward_block_loop
# and backward_block_loop with ncu (--set full) and writes the report, its details page and
# the per-instruction SASS table (stall samples per instruction) under OUTDIR.
#
#   bash scripts/ncu_block_loop.sh OUTDIR [SHAPE] [SHAPES_FOR_PROFILE_CUDA]
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:?usage: ncu_block_loop.sh OUTDIR [SHAPE] [SHAPES]}"
shape="${2:-imdb_lstm}"
shapes="${3:-$shape}"
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}" MAX_JOBS="${MAX_JOBS:-16}"
if [ ! -e fused_rnn/_C*.so ] || [ "${REBUILD:-1}" = 1 ]; then
  python3 setup.py build_ext --inplace >"$out/build.log" 2>&1 || { tail -40 "$out/build.log"; exit 1; }
fi
python3 benchmarks/profile_cuda.py "$shapes" 2>&1 | tee "$out/kernels.txt"
cat >/tmp/one_step.py <<PY
import torch
from fused_rnn import bench
shape = bench.select("$shape")[0]
_, fused, make_input = bench.build(shape, "cuda")
for _ in range(2):
    bench._step(fused, make_input, True)
torch.cuda.synchronize()
PY
ncu --set full --import-source no -k regex:block_loop -s 2 -c 2 -f -o "$out/$shape" \
  python3 /tmp/one_step.py >"$out/ncu.log" 2>&1 || tail -20 "$out/ncu.log"
ncu -i "$out/$shape.ncu-rep" --page details >"$out/${shape}_details.txt" 2>&1
ncu -i "$out/$shape.ncu-rep" --page source --csv --print-source sass >"$out/${shape}_sass.csv" 2>&1
grep -E "block_loop|Duration|Warp Cycles Per Issued|Issue Slots Busy|No Eligible|Stall|Registers Per" \
  "$out/${shape}_details.txt" | head -40
ls -la "$out"
