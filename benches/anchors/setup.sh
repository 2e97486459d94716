#!/usr/bin/env bash
# Set up the Python environment for the PyTorch / JAX comparison anchors.
#
# Creates benches/anchors/.venv (git-ignored) and installs, from PyPI only:
#   * numpy                      (inputs; ~45 MB)
#   * torch  (default torch==2.15.0) -- PyTorch eager anchor.
#       PyPI has no CPU-only torch wheel for Linux x86_64: the PyPI wheel is the CUDA
#       build and pulls the nvidia-* CUDA libraries and triton as hard dependencies
#       (~3 GB download, ~5.5 GB installed). They are never used on CPU, but
#       libtorch_python.so links against libcudart/libcudnn/..., so `pip install
#       --no-deps torch` does not import. The CPU-only wheels live on PyTorch's own
#       index, which is not reachable from this environment; where it is, set
#       TORCH_SPEC/TORCH_PIP_ARGS, e.g.
#       TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu".
#   * jax[cpu] (default jax[cpu]==0.10.2) -- JAX/XLA jit anchor (~400 MB installed).
#
# Idempotent: an anchor whose package already imports in the venv is not reinstalled.
# An anchor that fails to install is reported and skipped; the script still exits 0
# unless the venv itself cannot be created.
#
# Environment knobs:
#   ANCHORS="torch jax"        which anchors to install (e.g. ANCHORS=jax skips the 3 GB torch)
#   TORCH_SPEC, JAX_SPEC       pip requirement specs (pinned by default; if the pinned spec
#                              fails to install, the unpinned package is tried)
#   TORCH_PIP_ARGS, JAX_PIP_ARGS  extra pip arguments
#   PYTHON=python3             interpreter used to create the venv
set -u

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="$HERE/.venv"
PY="$VENV/bin/python"
PYTHON="${PYTHON:-python3}"
ANCHORS="${ANCHORS:-torch jax}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.15.0}"
JAX_SPEC="${JAX_SPEC:-jax[cpu]==0.10.2}"
TORCH_PIP_ARGS="${TORCH_PIP_ARGS:-}"
JAX_PIP_ARGS="${JAX_PIP_ARGS:-}"
PIP_FLAGS=(--disable-pip-version-check --no-cache-dir --only-binary=:all: -q)

log() { echo "[anchors/setup] $*"; }

if [ ! -x "$PY" ]; then
  log "creating virtual environment $VENV"
  if ! "$PYTHON" -m venv "$VENV"; then
    log "ERROR: '$PYTHON -m venv' failed (on Debian: apt-get install python3-venv); no anchors available"
    exit 1
  fi
else
  log "virtual environment exists: $VENV"
fi

has() { "$PY" -c "import $1" >/dev/null 2>&1; }

if has numpy; then
  log "numpy already installed ($("$PY" -c 'import numpy; print(numpy.__version__)'))"
else
  log "installing numpy"
  "$PY" -m pip install "${PIP_FLAGS[@]}" numpy || log "WARNING: numpy failed to install"
fi

# install_anchor NAME MODULE SPEC FALLBACK EXTRA_ARGS
install_anchor() {
  local name="$1" mod="$2" spec="$3" fallback="$4" extra="$5"
  if has "$mod"; then
    log "$name already installed ($("$PY" -c "import $mod; print($mod.__version__)")), skipping"
    return 0
  fi
  log "installing $name: pip install $spec $extra"
  # shellcheck disable=SC2086
  if ! "$PY" -m pip install "${PIP_FLAGS[@]}" $extra "$spec"; then
    if [ "$spec" != "$fallback" ]; then
      log "pinned $spec failed; trying $fallback"
      # shellcheck disable=SC2086
      "$PY" -m pip install "${PIP_FLAGS[@]}" $extra "$fallback" || true
    fi
  fi
  if has "$mod"; then
    log "$name installed ($("$PY" -c "import $mod; print($mod.__version__)"))"
  else
    log "WARNING: $name failed to install or import; the $name anchor will be skipped"
  fi
}

for a in $ANCHORS; do
  case "$a" in
    torch)
      if ! has torch; then
        free_kb=$(df -Pk "$HERE" | awk 'NR==2 {print $4}')
        if [ "${free_kb:-0}" -lt $((8 * 1024 * 1024)) ]; then
          log "WARNING: less than 8 GB free at $HERE; torch (CUDA wheel + nvidia libs, ~5.5 GB) skipped"
          continue
        fi
        log "note: PyPI's torch for Linux x86_64 is the CUDA build: ~3 GB download, ~5.5 GB installed"
      fi
      install_anchor torch torch "$TORCH_SPEC" torch "$TORCH_PIP_ARGS"
      ;;
    jax)
      install_anchor jax jax "$JAX_SPEC" "jax[cpu]" "$JAX_PIP_ARGS"
      ;;
    *) log "unknown anchor '$a' in ANCHORS (known: torch jax)" ;;
  esac
done

log "venv size: $(du -sh "$VENV" 2>/dev/null | cut -f1)"
exit 0
