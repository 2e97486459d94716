#!/usr/bin/env python3
"""JAX (jit) anchor for the simbal router step.

Ops timed: "step" = jax.jit(jax.grad(objective, argnums=(0, 1))), "forward" = jitted
forward only, "simbal" = jitted value_and_grad of SimBal(R). Compile time is excluded
(warm-up calls); every timed call blocks on its result. See common.py for the objective
and the JSON schema.

Thread control: in current jaxlib the XLA CPU client sizes its thread pool from the CPUs
the process may run on; the old XLA_FLAGS knobs (--xla_cpu_multi_thread_eigen,
intra_op_parallelism_threads) are accepted but no longer limit anything. So, before jax is
imported, this script pins the process to the first T CPUs (sched_setaffinity, i.e. what
`taskset` does) and also sets those XLA_FLAGS for older jaxlibs. The cpu/wall figure
printed per op shows the parallelism actually used.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402


def _limit_threads_before_import(t):
    cpus = common.pin_threads(t)
    flags = os.environ.get("XLA_FLAGS", "")
    if "intra_op_parallelism_threads" not in flags:
        eigen = "true" if t > 1 else "false"
        flags = f"{flags} --xla_cpu_multi_thread_eigen={eigen} intra_op_parallelism_threads={t}".strip()
        os.environ["XLA_FLAGS"] = flags
    return cpus


if __name__ == "__main__":
    _t = 2
    for _i, _a in enumerate(sys.argv):
        if _a == "--threads" and _i + 1 < len(sys.argv):
            _t = int(sys.argv[_i + 1])
        elif _a.startswith("--threads="):
            _t = int(_a.split("=", 1)[1])
    _CPUS = _limit_threads_before_import(max(_t, 1))

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

IMPL = "jax-jit"


def router_forward(x, r, k):
    """Forward pass: logits, probabilities, top-k routing, renormalised gates, counts."""
    z = x @ r
    p = jax.nn.softmax(z, axis=-1)
    vals, idx = jax.lax.top_k(p, k)
    w = vals / vals.sum(axis=-1, keepdims=True)
    counts = jnp.bincount(idx.reshape(-1), length=r.shape[1])
    return z, p, idx, w, counts


def simbal(r):
    e = r.shape[1]
    return jnp.abs(r.T @ r - jnp.eye(e, dtype=r.dtype)).sum()


def objective(x, r, dw, k):
    n, e = x.shape[0], r.shape[1]
    z, p, idx, w, counts = router_forward(x, r, k)
    f = jax.lax.stop_gradient(counts.astype(p.dtype) / (k * n))  # constant, no grad
    lbl = e * (f * p.mean(axis=0)).sum()
    zloss = jnp.square(jax.nn.logsumexp(z, axis=-1)).mean()
    return (w * dw).sum() + common.W_SIMBAL * simbal(r) + common.W_LBL * lbl + common.W_Z * zloss


# k is a shape parameter for top_k -> static.
step_fn = jax.jit(jax.grad(objective, argnums=(0, 1)), static_argnums=(3,))
forward_fn = jax.jit(lambda x, r, k: router_forward(x, r, k)[2:], static_argnums=(2,))
simbal_fn = jax.jit(jax.value_and_grad(simbal))


def make_router_ops(x_np, r_np, dw_np, k):
    x, r, dw = jnp.asarray(x_np), jnp.asarray(r_np), jnp.asarray(dw_np)
    jax.block_until_ready((x, r, dw))

    def step():
        jax.block_until_ready(step_fn(x, r, dw, k))

    def forward():
        jax.block_until_ready(forward_fn(x, r, k))

    return {"step": step, "forward": forward}


def make_simbal_op(r_np):
    r = jax.block_until_ready(jnp.asarray(r_np))

    def op():
        jax.block_until_ready(simbal_fn(r))

    return op


def check_grads(shape=common.CHECK_SHAPE):
    n, d, e, k = shape
    x_np, r_np, dw_np = common.make_inputs(n, d, e, k)
    x, r, dw = jnp.asarray(x_np), jnp.asarray(r_np), jnp.asarray(dw_np)
    loss = jax.jit(objective, static_argnums=(3,))(x, r, dw, k)
    dx, dr = step_fn(x, r, dw, k)
    return float(loss), jax.device_get(dx), jax.device_get(dr)


def main():
    args = common.parse_args("target/compare/jax.json")
    if args.check:
        loss, dx, dr = check_grads()
        common.print_check(IMPL, loss, dx, dr)
        return
    print(
        f"[{IMPL}] jax {jax.__version__}, devices={jax.devices()}, cpus={_CPUS}, "
        f"XLA_FLAGS={os.environ.get('XLA_FLAGS')!r}",
        file=sys.stderr,
    )
    common.run_benchmarks(args, IMPL, jax.__version__, make_router_ops, make_simbal_op)


if __name__ == "__main__":
    main()
