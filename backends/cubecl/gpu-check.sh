#!/usr/bin/env bash
# GPU check of simbal-cubecl on one NVIDIA GPU (sized for an H100/H200: about 5 minutes):
#   1. the router-step benchmark on CUDA for N/D/E/k = 4096/768/32/4, 4096/1536/32/4,
#      4096/4096/8/2, 2048/7168/256/8 (whole step and per kernel, median ms; the step's kernel
#      launches and device waits, `launch/w`: one wait per step since the values stay on the device;
#      `Z+route` is the logits and rows as the step runs them, one fused launch at E = 8, beside
#      `Z=XR` + `route` timed apart: whether the fusion pays on the card);
#   2. the shared conformance suite on CUDA (CI=true: a missing device fails);
#   3. where python3 has them, the PyTorch (eager, CUDA) and JAX (jit, CUDA) anchors of the same
#      step on the same GPU (benches/anchors/);
#   4. where a Vulkan loader and driver exist, the conformance suite and benchmark on wgpu (on a
#      machine without the loader: unpack Debian's libvulkan1, libglvnd0, libegl1, libgl1, libglx0,
#      libopengl0, libgles2 into / and point VK_DRIVER_FILES at the NVIDIA ICD json).
# Usage: backends/cubecl/gpu-check.sh [bench iterations, default 20]   (SKIP_ANCHORS=1: no step 3)
# Programs: from $SIMBAL_GPU_BIN when set (made by gpu-stage.sh, for a machine without Rust),
# else built here by gpu-stage.sh into .gpu/. Logs go to $OUT when set (device tool), else
# target/gpu-check/.
set -uo pipefail
cd "$(dirname "$0")/../.."
iters="${1:-20}"
out="${OUT:-target/gpu-check}"
mkdir -p "$out"
if [ -z "${SIMBAL_GPU_BIN:-}" ]; then
  backends/cubecl/gpu-stage.sh .gpu || exit 1
  SIMBAL_GPU_BIN=.gpu
fi
bin="$SIMBAL_GPU_BIN"
export CI=true
# Fewer proptest cases than a CPU run: every distinct kernel configuration is an NVRTC compile.
export PROPTEST_CASES="${PROPTEST_CASES:-16}"

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"

# cubecl-cuda needs the CUDA headers (CUDA_PATH or /usr/local/cuda) and NVRTC (dlopened).
if [ -z "${CUDA_PATH:-}" ] && [ ! -d /usr/local/cuda ] && command -v nvcc >/dev/null; then
  CUDA_PATH="$(dirname "$(dirname "$(command -v nvcc)")")"
  export CUDA_PATH
fi
nvrtc_dirs=$(find "${CUDA_PATH:-/usr/local/cuda}/" /usr/local/lib /opt -name 'libnvrtc.so*' 2>/dev/null \
  | grep -v /stubs/ | xargs -r -n1 dirname | sort -u | tr '\n' ':')
export LD_LIBRARY_PATH="${nvrtc_dirs}${LD_LIBRARY_PATH:-}"
echo "CUDA_PATH=${CUDA_PATH:-/usr/local/cuda} LD_LIBRARY_PATH=$LD_LIBRARY_PATH"

section() { echo; echo "=== $1 ($(date +%T)) ==="; }

section "router-step benchmark, CUDA"
timeout 100 "$bin/bench_router" cuda "$iters" 2>&1 | tee "$out/bench_cuda.txt"

section "GEMM paths (own skinny/tiled, cubek unit/double-unit/tensor-core tf32), CUDA"
timeout 60 "$bin/bench_gemm" cuda "$iters" 2>&1 | tee "$out/bench_gemm_cuda.txt"

section "conformance suite, CUDA"
start=$(date +%s)
timeout 180 "$bin/conformance_cuda" --test-threads 8 2>&1 | tee "$out/conformance_cuda.txt" | tail -40
echo "conformance CUDA: exit ${PIPESTATUS[0]}, $(( $(date +%s) - start )) s"

if [ -z "${SKIP_ANCHORS:-}" ] && python3 -c 'import torch; assert torch.cuda.is_available()' 2>/dev/null; then
  section "PyTorch eager anchor, CUDA"
  timeout 60 python3 benches/anchors/torch_step.py --device cuda --threads 8 --warmup 5 \
    --iters "$iters" --out "$out/torch_cuda.json" 2>&1 | grep -v '^\s*$'
fi
if [ -z "${SKIP_ANCHORS:-}" ] && JAX_PLATFORMS=cuda python3 -c 'import jax; jax.devices()' >/dev/null 2>&1; then
  section "JAX jit anchor, CUDA"
  JAX_PLATFORMS=cuda timeout 75 python3 benches/anchors/jax_step.py --threads 8 --warmup 5 \
    --iters "$iters" --out "$out/jax_cuda.json" 2>&1 | grep -v '^\s*$'
fi

section "wgpu (Vulkan) on this GPU"
if ldconfig -p | grep -q libvulkan || ls /usr/lib/x86_64-linux-gnu/libvulkan.so* >/dev/null 2>&1; then
  timeout 45 "$bin/bench_router" wgpu "$iters" 2>&1 | tee "$out/bench_wgpu.txt"
  start=$(date +%s)
  timeout 100 "$bin/conformance_wgpu" --test-threads 8 2>&1 | tee "$out/conformance_wgpu.txt" | tail -8
  echo "conformance wgpu: exit ${PIPESTATUS[0]}, $(( $(date +%s) - start )) s"
else
  echo "no Vulkan loader: skipped"
fi
