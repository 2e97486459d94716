#!/usr/bin/env python3
"""Cross-check the anchors' gradients on tiny shapes.

Compares (loss, dX, dR) from
  * torch_step (f32 and f64, autograd),
  * jax_step   (f32, jax.grad),
  * a hand-written float64 NumPy reference with the analytic gradient (below),
and fails (exit 1) unless all agree to ~1e-5 relative (Frobenius norm of the difference
over the norm of the reference). A missing anchor is reported and skipped.

The NumPy reference doubles as a statement of the analytic gradient simbal implements.
"""

import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

SHAPES = [common.CHECK_SHAPE, (128, 48, 32, 4), (96, 40, 16, 3), (80, 64, 256, 8)]
TOL_F32 = 1e-5
TOL_F64 = 1e-10


def reference(x, r, dw, k):
    """float64 loss and analytic (dX, dR) of the router objective."""
    x = x.astype(np.float64)
    r = r.astype(np.float64)
    dw = dw.astype(np.float64)
    n, e = x.shape[0], r.shape[1]
    z = x @ r
    zmax = z.max(axis=1, keepdims=True)
    ez = np.exp(z - zmax)
    se = ez.sum(axis=1, keepdims=True)
    p = ez / se
    lse = (zmax + np.log(se))[:, 0]
    idx = np.argsort(-p, axis=1, kind="stable")[:, :k]          # top-k, descending
    vals = np.take_along_axis(p, idx, axis=1)
    s = vals.sum(axis=1, keepdims=True)
    w = vals / s
    counts = np.bincount(idx.ravel(), minlength=e)
    f = counts / (k * n)
    m = r.T @ r - np.eye(e)
    loss = ((w * dw).sum() + common.W_SIMBAL * np.abs(m).sum()
            + common.W_LBL * e * (f * p.mean(axis=0)).sum() + common.W_Z * (lse ** 2).mean())

    # dL/dP: renormalised gates (only top-k entries) + load-balancing term
    gv = (dw - (w * dw).sum(axis=1, keepdims=True)) / s
    gp = np.zeros_like(p)
    np.put_along_axis(gp, idx, gv, axis=1)
    gp += common.W_LBL * e * f[None, :] / n
    # softmax backward, plus z-loss (d lse_t / d z_te = p_te)
    gz = p * (gp - (gp * p).sum(axis=1, keepdims=True))
    gz += common.W_Z * 2.0 * lse[:, None] * p / n
    dx = gz @ r.T
    # SimBal: d/dR sum|R^T R - I| = R (sign(M) + sign(M)^T) = 2 R sign(M)
    dr = x.T @ gz + common.W_SIMBAL * 2.0 * r @ np.sign(m)
    return loss, dx, dr


def rel(a, b):
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))


def main():
    impls = {}
    try:
        import torch

        import torch_step

        torch.set_num_threads(2)
        impls["torch-f32"] = (lambda sh: torch_step.check_grads(sh, torch.float32), TOL_F32)
        impls["torch-f64"] = (lambda sh: torch_step.check_grads(sh, torch.float64), TOL_F64)
    except Exception as ex:  # noqa: BLE001
        print(f"torch anchor unavailable, skipped: {ex!r}")
    try:
        import jax_step

        impls["jax-f32"] = (jax_step.check_grads, TOL_F32)
    except Exception as ex:  # noqa: BLE001
        print(f"jax anchor unavailable, skipped: {ex!r}")

    failures = 0
    for shape in SHAPES:
        n, d, e, k = shape
        x, r, dw = common.make_inputs(n, d, e, k)
        ref_loss, ref_dx, ref_dr = reference(x, r, dw, k)
        print(f"shape N={n} D={d} E={e} k={k}: ref loss {ref_loss:.10e} "
              f"|dX| {np.linalg.norm(ref_dx):.8e} |dR| {np.linalg.norm(ref_dr):.8e}")
        got = {}
        for name, (fn, tol) in impls.items():
            loss, dx, dr = fn(shape)
            got[name] = (loss, dx, dr)
            el, ex_, er = rel(loss, ref_loss), rel(dx, ref_dx), rel(dr, ref_dr)
            ok = max(el, ex_, er) <= tol
            failures += not ok
            print(f"  {name:<10} vs numpy-f64: loss {el:.2e}  dX {ex_:.2e}  dR {er:.2e}  "
                  f"(tol {tol:.0e}) {'ok' if ok else 'FAIL'}")
        if "torch-f32" in got and "jax-f32" in got:
            a, b = got["torch-f32"], got["jax-f32"]
            el, ex_, er = rel(a[0], b[0]), rel(a[1], b[1]), rel(a[2], b[2])
            ok = max(el, ex_, er) <= TOL_F32
            failures += not ok
            print(f"  torch-f32  vs jax-f32  : loss {el:.2e}  dX {ex_:.2e}  dR {er:.2e}  "
                  f"(tol {TOL_F32:.0e}) {'ok' if ok else 'FAIL'}")
    if not impls:
        print("no anchor available; only the NumPy reference ran")
    print("crosscheck:", "FAILED" if failures else "all agree")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
