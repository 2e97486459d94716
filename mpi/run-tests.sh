#!/usr/bin/env bash
# Builds simbal-mpi's data-parallel equality check (examples/dp_equality.rs) and runs it under
# Open MPI on 1, 2 and 3 ranks over the loopback interface only. Fails when any rank fails.
# Needs: openmpi-bin libopenmpi-dev libclang-dev (rsmpi's bindings are generated at build time).
set -euo pipefail
cd "$(dirname "$0")/.."

# Containers run as root; Open MPI refuses that unless told.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
# Single-machine runs: shared memory off, TCP on loopback only (no other interface needed).
MPIRUN=(mpirun --oversubscribe --mca btl self,tcp --mca btl_tcp_if_include lo
    --mca oob_tcp_if_include lo)

# Debug profile: the check is tiny, and CI's `cargo test --workspace` has built most of it.
cargo build -p simbal-mpi --example dp_equality
target="${CARGO_TARGET_DIR:-target}"
bin="$target/debug/examples/dp_equality"

status=0
for n in 1 2 3; do
    echo "== mpirun -n $n dp_equality"
    start=$(date +%s%N)
    if ! timeout 300 "${MPIRUN[@]}" -n "$n" "$bin"; then
        echo "FAILED: mpirun -n $n dp_equality" >&2
        status=1
    fi
    echo "   ($(( ($(date +%s%N) - start) / 1000000 )) ms)"
done
exit "$status"
