#!/usr/bin/env python3
"""Write the anchors' seeded inputs for simbal's timer, so all three time the same numbers.

For every step shape: DIR/<shape>.x.f32, DIR/<shape>.r.f32, DIR/<shape>.dw.f32; for every
SimBal-only shape: DIR/<shape>.r.f32. Raw little-endian float32, row-major (X: N x D, R: D x E,
dW: N x k), exactly the arrays common.make_inputs gives torch_step.py and jax_step.py.

    python benches/anchors/dump_inputs.py target/compare/inputs
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

import numpy as np  # noqa: E402


def main():
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)

    def write(name, part, a):
        np.ascontiguousarray(a, dtype="<f4").tofile(os.path.join(out, f"{name}.{part}.f32"))

    for name, (n, d, e, k) in common.SHAPES.items():
        x, r, dw = common.make_inputs(n, d, e, k)
        write(name, "x", x)
        write(name, "r", r)
        write(name, "dw", dw)
    for name, (d, e) in common.SIMBAL_SHAPES.items():
        _, r, _ = common.make_inputs(0, d, e, 0)
        write(name, "r", r)
    print(f"[inputs] wrote the anchors' inputs to {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
