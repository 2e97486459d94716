#!/usr/bin/env bash
# Compare simbal's router step against PyTorch (eager) and JAX (jit) on the CPU.
#
#   benches/compare.sh [--quick] [--threads T] [--iters I] [--warmup W] [--shapes a,b]
#                      [--skip-setup] [--no-simbal] [--no-anchors]
#
# 1. benches/anchors/setup.sh        (venv with torch + jax[cpu]; idempotent; failures non-fatal)
# 2. simbal's Rust timer, if the bin exists, on the anchors' inputs (dump_inputs.py):
#      cargo run --release -p simbal-benches --bin compare -- --threads T --warmup W --iters I \
#        --inputs target/compare/inputs --out target/compare/simbal.json
#    (extra arguments for it can be given in SIMBAL_COMPARE_ARGS)
#    simbal's rows include `step-burn`: the same step through simbal-burn on burn's CPU backend
#    (Autodiff<NdArray<f32>>), timed in the same rounds; the table adds step-burn / step per shape.
# 3. each installed anchor -> target/compare/torch.json, target/compare/jax.json
# 4. benches/anchors/table.py        -> tables on stdout, target/compare/table.md (medians)
#                                       and target/compare/table-min.md (best of iters)
#
# --quick: 1 warm-up + 5 timed calls per op instead of 3 + 20.
# Timings are wall-clock medians; run on an otherwise idle machine (a concurrent
# cargo build, or a busy neighbour on the VM host, on a 2-core box starves the second
# thread and inflates times many-fold; compare --stat min tables or --threads 1 then).
set -u

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
ANCH="$ROOT/benches/anchors"
OUT="$ROOT/target/compare"
PY="$ANCH/.venv/bin/python"

THREADS=2
WARMUP=3
ITERS=20
SHAPES=""
SETUP=1
RUN_SIMBAL=1
RUN_ANCHORS=1
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) WARMUP=1; ITERS=5 ;;
    --iters) ITERS="$2"; shift ;;
    --iters=*) ITERS="${1#*=}" ;;
    --warmup) WARMUP="$2"; shift ;;
    --warmup=*) WARMUP="${1#*=}" ;;
    --threads) THREADS="$2"; shift ;;
    --threads=*) THREADS="${1#*=}" ;;
    --shapes) SHAPES="$2"; shift ;;
    --shapes=*) SHAPES="${1#*=}" ;;
    --skip-setup) SETUP=0 ;;
    --no-simbal) RUN_SIMBAL=0 ;;
    --no-anchors) RUN_ANCHORS=0 ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) echo "compare.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
  shift
done

say() { printf '\n=== %s\n' "$*"; }
mkdir -p "$OUT"

# Warn when something else is using the CPUs right now (1 s sample of /proc/stat).
busy_pct() {
  local a b
  a=$(awk '/^cpu /{print $2+$3+$4+$7+$8+$9, $5+$6; exit}' /proc/stat 2>/dev/null) || return
  sleep 1
  b=$(awk '/^cpu /{print $2+$3+$4+$7+$8+$9, $5+$6; exit}' /proc/stat 2>/dev/null) || return
  echo "$a $b" | awk '{ t = ($3 - $1) + ($4 - $2); if (t > 0) printf "%d", 100 * ($3 - $1) / t }'
}
busy=$(busy_pct)
if [ -n "${busy:-}" ] && [ "$busy" -gt 20 ]; then
  echo "warning: the CPUs are ${busy}% busy with other work; timings will be distorted"
fi

# 1. anchors' environment
if [ "$RUN_ANCHORS" = 1 ] && [ "$SETUP" = 1 ]; then
  say "setting up anchors (benches/anchors/setup.sh)"
  bash "$ANCH/setup.sh" || echo "anchor setup failed; anchors will be skipped"
fi

# 2. simbal's own timer
if [ "$RUN_SIMBAL" = 1 ]; then
  say "simbal (Rust): threads=$THREADS"
  rm -f "$OUT/simbal.json"
  has_bin=$(cargo metadata --no-deps --format-version 1 2>/dev/null | python3 -c '
import json, sys
try:
    m = json.load(sys.stdin)
except ValueError:
    print(0); sys.exit()
print(int(any(p["name"] == "simbal-benches" and any(t["name"] == "compare" and "bin" in t["kind"] for t in p["targets"]) for p in m["packages"])))
' 2>/dev/null)
  if [ "${has_bin:-0}" = 1 ]; then
    # The anchors' own inputs, so all three time the same numbers (needs the venv's numpy;
    # without it simbal draws its own inputs from the same distributions).
    INPUTS=()
    if [ -x "$PY" ] && "$PY" "$ANCH/dump_inputs.py" "$OUT/inputs"; then
      INPUTS=(--inputs "$OUT/inputs")
    else
      echo "no numpy in $ANCH/.venv: simbal times its own inputs (same distributions)"
    fi
    SARGS=(--threads "$THREADS" --warmup "$WARMUP" --iters "$ITERS")
    [ -n "$SHAPES" ] && SARGS+=(--shapes "$SHAPES")
    # shellcheck disable=SC2086
    if ! cargo run --release -p simbal-benches --bin compare -- \
        "${SARGS[@]}" "${INPUTS[@]}" --out "$OUT/simbal.json" ${SIMBAL_COMPARE_ARGS:-}; then
      echo "simbal timer failed; continuing with the anchors only"
    fi
  else
    echo "simbal's timer is not there yet (no bin 'compare' in package simbal-benches);"
    echo "continuing with the anchors only -- the table will have no simbal column or ratios"
  fi
fi

# 3. anchors
if [ "$RUN_ANCHORS" = 1 ]; then
  ARGS=(--threads "$THREADS" --warmup "$WARMUP" --iters "$ITERS")
  [ -n "$SHAPES" ] && ARGS+=(--shapes "$SHAPES")
  for a in torch jax; do
    rm -f "$OUT/$a.json"
    if [ -x "$PY" ] && "$PY" -c "import $a" >/dev/null 2>&1; then
      say "$a anchor: threads=$THREADS warmup=$WARMUP iters=$ITERS"
      "$PY" "$ANCH/${a}_step.py" "${ARGS[@]}" --out "$OUT/$a.json" || echo "$a anchor failed; skipped"
    else
      say "$a anchor not installed (see benches/anchors/setup.sh); skipped"
    fi
  done
fi

# 4. table
say "comparison (target/compare/table.md)"
TPY=python3
[ -x "$PY" ] && TPY="$PY"
"$TPY" "$ANCH/table.py" --dir "$OUT" --md "$OUT/table.md"
say "same, best-of-iters (min) times (target/compare/table-min.md; less sensitive to noisy neighbours)"
"$TPY" "$ANCH/table.py" --dir "$OUT" --md "$OUT/table-min.md" --stat min
