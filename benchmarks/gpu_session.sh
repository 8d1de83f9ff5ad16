#!/usr/bin/env bash
# Issue 14's prepared GPU check: one device call (about 9 minutes at most), everything lands in $OUT.
#   1. the environment (GPU, driver, torch), 2. the GPU-only speed tests (CUDA graphs keyed per cache,
#   compile + graphs, no sync in a steady-state chunk), 3. benchmarks/gpu_stream.py at --speed off/safe/max
#   with a 360 s budget (killed at 420 s) (rows not started by then are listed as skipped; the JSON is written after every row).
# Usage (repo root): OUT=/some/dir bash benchmarks/gpu_session.sh      Record the numbers in docs/performance.md.
set -u -o pipefail
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  $PY -c "import torch, sys; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'python', sys.version.split()[0])"
} 2>&1 | tee "$OUT/environment.txt"
timeout 120 $PY -m pytest -q -p no:cacheprovider -x tests/speed/test_graphs.py tests/speed/test_host_sync.py \
    tests/speed/test_speed.py -k "cuda or graph or sync" 2>&1 | tee "$OUT/gpu_tests.txt"
timeout 420 $PY benchmarks/gpu_stream.py --device cuda --runs 2 --max-seconds 360 --fp8 --json "$OUT/perf.json" \
    2>&1 | tee "$OUT/perf.txt"
