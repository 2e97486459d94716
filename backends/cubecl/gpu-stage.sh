#!/usr/bin/env bash
# Build the GPU check's programs here and copy them, stripped, into DIR (default .gpu/), so that
# gpu-check.sh can run them on a GPU machine that has no Rust toolchain.
#   backends/cubecl/gpu-stage.sh [DIR]
# CUDA is loaded at run time (cudarc dynamic loading); CUDARC_CUDA_VERSION picks the driver API
# bindings' version (default 13000: CUDA 13.0, what driver 580 provides). No CUDA toolkit is
# needed to build.
set -euo pipefail
cd "$(dirname "$0")/../.."
dir="${1:-.gpu}"
export CUDARC_CUDA_VERSION="${CUDARC_CUDA_VERSION:-13000}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target-gpu}"
export CARGO_PROFILE_RELEASE_DEBUG=0
export CARGO_INCREMENTAL=0
mkdir -p "$dir"
args=(--release -p simbal-cubecl --features cuda)
# Test binaries: cargo prints their paths as JSON; pick the executables we need.
cargo test "${args[@]}" --no-run --message-format=json --test conformance_cuda --test conformance_wgpu \
  | python3 -c '
import json, sys
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["test"]:
        print(m["target"]["name"], m["executable"])
' | while read -r name exe; do cp "$exe" "$dir/$name"; done
cargo build "${args[@]}" --example bench_router --example bench_gemm
cp "$CARGO_TARGET_DIR/release/examples/bench_router" "$dir/bench_router"
cp "$CARGO_TARGET_DIR/release/examples/bench_gemm" "$dir/bench_gemm"
strip "$dir"/conformance_cuda "$dir"/conformance_wgpu "$dir"/bench_router "$dir"/bench_gemm
ls -la "$dir"
