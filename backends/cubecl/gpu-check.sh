#!/usr/bin/env bash
# GPU check of simbal-cubecl on one NVIDIA GPU (sized for an H100, < 5 minutes after the build):
#   1. the shared conformance suite on the CUDA runtime (CI=true: a missing device fails);
#   2. the router-step benchmark for N/D/E/k = 4096/768/32/4, 4096/1536/32/4, 4096/4096/8/2,
#      2048/7168/256/8 (whole step and per kernel, median ms).
# Usage: backends/cubecl/gpu-check.sh [bench iterations, default 20]
set -euo pipefail
cd "$(dirname "$0")/../.."
iters="${1:-20}"
export CI=true
export CARGO_TERM_COLOR=never
export CARGO_INCREMENTAL=0
# No debug info: the build dominates this script's time.
export CARGO_PROFILE_RELEASE_DEBUG=0
# Fewer proptest cases than a CPU run: every distinct kernel configuration is an NVRTC compile.
export PROPTEST_CASES="${PROPTEST_CASES:-16}"

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true

echo "=== build (release, cuda) ==="
cargo build --release -p simbal-cubecl --features cuda --tests --examples

echo "=== conformance suite on CUDA ==="
start=$(date +%s)
timeout 200 cargo test --release -p simbal-cubecl --features cuda --test conformance_cuda -- --test-threads 4
echo "conformance: $(( $(date +%s) - start )) s"

echo "=== router-step benchmark (CUDA) ==="
start=$(date +%s)
timeout 90 cargo run --release -p simbal-cubecl --features cuda --example bench_router -- cuda "$iters"
echo "benchmark: $(( $(date +%s) - start )) s"
