#!/bin/bash
# One script for a GPU machine: build the CUDA backend, check it against the
# CPU reference (under compute-sanitizer when available), then benchmark.
# Results go to $1 (default: $OUT if set, else gpu-results/).
set -uo pipefail
cd "$(dirname "$0")/.."
DIR=${1:-${OUT:-gpu-results}}
mkdir -p "$DIR"
{ nvidia-smi || true; nvcc --version; } > "$DIR/device.txt" 2>&1
make cuda 2>&1 | tee "$DIR/build.log" || { echo "build failed"; exit 1; }
status=0
if command -v compute-sanitizer >/dev/null 2>&1; then
  timeout 300 compute-sanitizer --tool memcheck --error-exitcode 9 build/test_cuda_gpu > "$DIR/sanitizer.log" 2>&1
  echo "compute-sanitizer memcheck: exit $?" | tee -a "$DIR/sanitizer.log"
else
  echo "compute-sanitizer not found" | tee "$DIR/sanitizer.log"
fi
build/test_cuda_gpu 2>&1 | tee "$DIR/test.log" || status=1
timeout 300 build/bench_cuda "$DIR/bench.txt" 2>&1 | tee "$DIR/bench.log" || status=1
cat "$DIR/bench.txt"
exit $status
