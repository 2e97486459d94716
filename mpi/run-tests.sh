#!/usr/bin/env bash
# Builds simbal-mpi's data-parallel equality checks (examples/dp_equality.rs: a small MoE model
# with a token mask on the reference and faer backends in f64 and f32; examples/dp_train.rs: the
# reproduction's MoE model with Adam) and runs each under Open MPI on 1, 2 and 3 ranks over the
# loopback interface only. Fails when any rank fails.
# Needs: openmpi-bin libopenmpi-dev libclang-dev (rsmpi's bindings are generated at build time).
set -euo pipefail
cd "$(dirname "$0")/.."

# Containers run as root; Open MPI refuses that unless told.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
# Single-machine runs: shared memory off, TCP on loopback only (no other interface needed).
MPIRUN=(mpirun --oversubscribe --mca pml ob1 --mca btl self,tcp --mca btl_tcp_if_include lo
    --mca oob_tcp_if_include lo)

# Debug profile: the check is tiny, and CI's `cargo test --workspace` has built most of it.
cargo build -p simbal-mpi --examples
target="${CARGO_TARGET_DIR:-target}"

status=0
for example in dp_equality dp_train; do
    for n in 1 2 3; do
        echo "== mpirun -n $n $example"
        start=$(date +%s%N)
        if ! timeout 300 "${MPIRUN[@]}" -n "$n" "$target/debug/examples/$example"; then
            echo "FAILED: mpirun -n $n $example" >&2
            status=1
        fi
        echo "   ($(( ($(date +%s%N) - start) / 1000000 )) ms)"
    done
done
exit "$status"
