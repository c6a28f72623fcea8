#!/usr/bin/env bash
# Sets up a fresh machine: installs what requirements.txt lists and builds fused_rnn._C in place.
# CUDA kernels are built whenever nvcc and a CUDA build of torch are present (FUSED_RNN_CPU_ONLY=1
# skips them); see setup.py.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q -r requirements.txt
export MAX_JOBS="${MAX_JOBS:-2}"
python3 -m pip install -q --no-build-isolation -e .
python3 -c "import fused_rnn, json; print('fused_rnn build:', json.dumps(fused_rnn.backend_info()))"
