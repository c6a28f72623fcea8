#!/usr/bin/env bash
# On a machine with an NVIDIA GPU (the device tool's H100/H200, which has its own torch and nvcc):
# builds fused_rnn._C with its CUDA kernels in place, runs every test that touches the GPU (the
# CUDA parity suite, opcheck and fp64 gradcheck on CUDA tensors, fp16/bf16, autocast), benchmarks
# against torch.nn with and without cuDNN, then runs the whole test suite.
#
#   bash scripts/gpu_check.sh OUTDIR [SHAPES]
#
# Writes OUTDIR/{env.txt,build.log,cuda_tests.log,bench.log,cuda.json,cuda.png}. With
# COMPARE_LOOPS=1 it also benchmarks both CUDA time loops forced (FUSED_RNN_CUDA_LOOP=block and
# =steps: bench_block.log, bench_steps.log); with ALL_TESTS=1 it runs the whole suite too.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:?usage: gpu_check.sh OUTDIR [SHAPES]}"
shapes="${2:-default,sweep}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1 FUSED_RNN_REQUIRE_CUDA_BUILD=1
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}" MAX_JOBS="${MAX_JOBS:-16}"
workers="${PYTEST_WORKERS:-8}"

{
  date -u
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
  python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda,
              torch.cuda.get_device_name(), 'cudnn', torch.backends.cudnn.version())"
  nvcc --version | tail -2
} 2>&1 | tee "$out/env.txt"

start=$SECONDS
if ! python3 setup.py build_ext --inplace >"$out/build.log" 2>&1; then
  tail -60 "$out/build.log"
  echo "BUILD FAILED"
  exit 1
fi
echo "build: $((SECONDS - start)) s"
python3 -c "import fused_rnn, json; print(json.dumps(fused_rnn.backend_info()))"

start=$SECONDS
python3 -m pytest -q -rf -n "$workers" -k cuda tests/test_cuda.py tests/test_parity.py \
  tests/test_ops.py 2>&1 | tee "$out/cuda_tests.log" | tail -40
echo "cuda tests: $((SECONDS - start)) s"

start=$SECONDS
python3 -m fused_rnn bench --device cuda --shapes "$shapes" --no-progress \
  --json "$out/cuda.json" --plot "$out/cuda.png" 2>&1 | tee "$out/bench.log" | tail -45
echo "bench: $((SECONDS - start)) s"

if [ "${COMPARE_LOOPS:-0}" = 1 ]; then
  for loop in block steps; do
    FUSED_RNN_CUDA_LOOP=$loop python3 -m fused_rnn bench --device cuda --shapes "$shapes" \
      --no-progress --no-check --repeats 3 >"$out/bench_$loop.log" 2>&1
    echo "FUSED_RNN_CUDA_LOOP=$loop"
    cut -d'|' -f2,5-10 "$out/bench_$loop.log" | tail -n +4
  done
fi

if [ "${ALL_TESTS:-0}" = 1 ]; then
  start=$SECONDS
  OMP_NUM_THREADS=2 timeout "${ALL_TESTS_TIMEOUT:-300}" python3 -m pytest -q -rf -n "$workers" \
    tests >"$out/all_tests.log" 2>&1
  echo "all tests (rc $?): $((SECONDS - start)) s"
  tail -15 "$out/all_tests.log"
fi
