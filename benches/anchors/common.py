"""Shared pieces of the PyTorch / JAX anchor benchmarks.

The anchors time the same "router step" that simbal's Rust timer measures
(`cargo run --release -p simbal-benches --bin compare`), and write the same
JSON schema:

    {"impl": ..., "version": ..., "threads": T, "machine": ...,
     "results": [{"shape", "n", "d", "e", "k", "op", "median_s", "min_s", "iters"}]}

Objective (f32), for X (N x D), R (D x E), upstream gate gradient dW (N x k):

    Z = X R,  P = softmax(Z) row-wise,  (vals, idx) = top-k of P per row,
    W = vals / sum(vals),  c_e = #tokens routed to e (no grad): the plain top-k, simbal's
    default LblCounts::Routed (no bias, groups or capacity here, so also the dispatched counts);
    softmax scores, which simbal's default LBL score normalisation leaves as they are,
    L = sum(W * dW) + 0.1 * SimBal(R) + 0.01 * LBL + 1e-3 * zloss
    SimBal(R) = sum_ab |(R^T R - I)_ab|
    LBL       = E * sum_e f_e * Pbar_e,  f_e = c_e / (k N) (constant), Pbar_e = mean_t P_te
    zloss     = mean_t logsumexp(Z_t)^2
"""

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import time

import numpy as np

# name -> (N, D, E, k)
SHAPES = {
    "paper-M": (4096, 768, 32, 4),
    "paper-L": (4096, 1536, 32, 4),
    "mixtral": (4096, 4096, 8, 2),
    "deepseek": (2048, 7168, 256, 8),
}
# name -> (D, E) for the SimBal-only op
SIMBAL_SHAPES = {
    "simbal-768x32": (768, 32),
    "simbal-1536x32": (1536, 32),
    "simbal-7168x256": (7168, 256),
}
# tiny shape for --check / crosscheck.py
CHECK_SHAPE = (64, 16, 8, 2)

W_SIMBAL = 0.1
W_LBL = 0.01
W_Z = 1e-3

SEED = 20240607


def make_inputs(n, d, e, k, seed=SEED):
    """Seeded f32 inputs, identical across anchors: X ~ N(0,1), R ~ N(0,1/D), dW ~ N(0,1)."""
    rng = np.random.default_rng([seed, n, d, e, k])
    x = rng.standard_normal((n, d), dtype=np.float32)
    r = (rng.standard_normal((d, e), dtype=np.float32) / np.float32(np.sqrt(d))).astype(np.float32)
    dw = rng.standard_normal((n, k), dtype=np.float32) if n > 0 else np.zeros((0, k), np.float32)
    return x, r, dw


def machine_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def parse_args(default_impl_out):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2, help="intra-op threads (default 2)")
    p.add_argument("--warmup", type=int, default=3, help="untimed calls per op (default 3)")
    p.add_argument("--iters", type=int, default=20, help="timed calls per op (default 20)")
    p.add_argument(
        "--shapes",
        default=",".join(list(SHAPES) + list(SIMBAL_SHAPES)),
        help="comma-separated shape names; router shapes run ops step+forward, "
        "simbal-* shapes run op simbal (default: all). Known: "
        + ", ".join(list(SHAPES) + list(SIMBAL_SHAPES)),
    )
    p.add_argument("--ops", default="step,forward,simbal", help="subset of ops to run (default all)")
    p.add_argument("--out", default=default_impl_out, help="output JSON file")
    p.add_argument(
        "--device",
        default="cpu",
        help="torch only: device to run on (cpu or cuda; default cpu). JAX picks its platform "
        "from JAX_PLATFORMS (default cpu here).",
    )
    p.add_argument("--check", action="store_true", help="print loss and dX/dR norms for a tiny shape and exit")
    a = p.parse_args()
    if a.threads < 1:
        p.error("--threads must be >= 1")
    a.shape_list = [s.strip() for s in a.shapes.split(",") if s.strip()]
    for s in a.shape_list:
        if s not in SHAPES and s not in SIMBAL_SHAPES:
            p.error(f"unknown shape {s!r}")
    a.op_list = [o.strip() for o in a.ops.split(",") if o.strip()]
    return a


def pin_threads(t):
    """Restrict this process to the first t CPUs it may run on (no-op when t >= available).

    Must run before the numerical library creates its thread pools. For JAX this is the
    only thing that reliably limits XLA's CPU thread pool in current releases.
    """
    try:
        allowed = sorted(os.sched_getaffinity(0))
    except AttributeError:
        return None
    if t < len(allowed):
        os.sched_setaffinity(0, set(allowed[:t]))
    return sorted(os.sched_getaffinity(0))


def _cpu_seconds():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def time_op(fn, warmup, iters):
    """Call fn() warmup times untimed, then iters times timed (fn must block until done).

    Returns (median_s, min_s, cpu_over_wall)."""
    for _ in range(warmup):
        fn()
    times = []
    c0 = _cpu_seconds()
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    cpu = _cpu_seconds() - c0
    wall = sum(times)
    return statistics.median(times), min(times), (cpu / wall if wall > 0 else float("nan"))


def run_benchmarks(args, impl, version, make_router_ops, make_simbal_op):
    """Drive the benchmark: make_router_ops(x, r, dw, k) -> {"step": fn, "forward": fn},
    make_simbal_op(r) -> fn. Every fn blocks until its result is ready."""
    results = []
    for name in args.shape_list:
        if name in SHAPES:
            n, d, e, k = SHAPES[name]
            ops = [o for o in ("step", "forward") if o in args.op_list]
            if not ops:
                continue
            x, r, dw = make_inputs(n, d, e, k)
            fns = make_router_ops(x, r, dw, k)
        else:
            if "simbal" not in args.op_list:
                continue
            d, e = SIMBAL_SHAPES[name]
            n, k = 0, 0
            _, r, _ = make_inputs(0, d, e, 0)
            fns = {"simbal": make_simbal_op(r)}
            ops = ["simbal"]
        for op in ops:
            med, mn, util = time_op(fns[op], args.warmup, args.iters)
            results.append(
                {"shape": name, "n": n, "d": d, "e": e, "k": k, "op": op,
                 "median_s": med, "min_s": mn, "iters": args.iters}
            )
            print(
                f"[{impl}] {name:<16} {op:<8} median {med * 1e3:9.3f} ms  min {mn * 1e3:9.3f} ms"
                f"  (cpu/wall {util:4.2f})",
                file=sys.stderr, flush=True,
            )
        del fns
    doc = {
        "impl": impl,
        "version": version,
        "threads": args.threads,
        "machine": machine_name(),
        "results": results,
    }
    out_dir = os.path.dirname(os.path.abspath(args.out))
    os.makedirs(out_dir, exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(doc, f, indent=2)
        f.write("\n")
    print(f"[{impl}] wrote {args.out}", file=sys.stderr)
    return doc


def print_check(impl, loss, dx, dr):
    dx = np.asarray(dx, dtype=np.float64)
    dr = np.asarray(dr, dtype=np.float64)
    n, d, e, k = CHECK_SHAPE
    print(f"[{impl}] check shape N={n} D={d} E={e} k={k}")
    print(f"[{impl}]   loss     = {float(loss):.8e}")
    print(f"[{impl}]   |dX|_F   = {np.linalg.norm(dx):.8e}   sum dX = {dx.sum():+.8e}")
    print(f"[{impl}]   |dR|_F   = {np.linalg.norm(dr):.8e}   sum dR = {dr.sum():+.8e}")
