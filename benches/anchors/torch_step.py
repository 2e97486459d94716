#!/usr/bin/env python3
"""PyTorch eager + autograd anchor for the simbal router step.

Ops timed: "step" (forward + autograd backward of the full objective w.r.t. X and R),
"forward" (inference-mode forward only), "simbal" (SimBal(R) and its gradient w.r.t. R).
See common.py for the objective and the JSON schema.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

import torch  # noqa: E402

IMPL = "torch-eager"


def router_forward(x, r, k):
    """Forward pass: logits, probabilities, top-k routing, renormalised gates, counts."""
    z = x @ r
    p = torch.softmax(z, dim=-1)
    vals, idx = torch.topk(p, k, dim=-1)
    w = vals / vals.sum(dim=-1, keepdim=True)
    counts = torch.bincount(idx.reshape(-1), minlength=r.shape[1])
    return z, p, idx, w, counts


def simbal(r, eye):
    return (r.T @ r - eye).abs().sum()


def objective(x, r, dw, k, eye):
    n, e = x.shape[0], r.shape[1]
    z, p, idx, w, counts = router_forward(x, r, k)
    f = counts.to(p.dtype) / (k * n)  # integer counts: constant, no grad
    lbl = e * (f * p.mean(dim=0)).sum()
    zloss = torch.logsumexp(z, dim=-1).square().mean()
    loss = (w * dw).sum() + common.W_SIMBAL * simbal(r, eye) + common.W_LBL * lbl + common.W_Z * zloss
    return loss, (idx, w, counts)


def grads(x, r, dw, k, eye):
    """Forward + backward as a training loop does; returns (loss, dX, dR)."""
    loss, _ = objective(x, r, dw, k, eye)
    dx, dr = torch.autograd.grad(loss, (x, r))
    return loss, dx, dr


# Set by main() from --device. On CUDA every timed call ends with a synchronisation, so the
# timer measures the work and not only the kernel launches.
DEVICE = torch.device("cpu")


def _sync():
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def make_router_ops(x_np, r_np, dw_np, k):
    x = torch.from_numpy(x_np).to(DEVICE).requires_grad_(True)
    r = torch.from_numpy(r_np).to(DEVICE).requires_grad_(True)
    dw = torch.from_numpy(dw_np).to(DEVICE)
    eye = torch.eye(r.shape[1], dtype=r.dtype, device=DEVICE)

    def step():
        grads(x, r, dw, k, eye)
        _sync()

    def forward():
        with torch.inference_mode():
            router_forward(x, r, k)
        _sync()

    return {"step": step, "forward": forward}


def make_simbal_op(r_np):
    r = torch.from_numpy(r_np).to(DEVICE).requires_grad_(True)
    eye = torch.eye(r.shape[1], dtype=r.dtype, device=DEVICE)

    def op():
        loss = simbal(r, eye)
        torch.autograd.grad(loss, r)
        _sync()

    return op


def check_grads(shape=common.CHECK_SHAPE, dtype=torch.float32):
    n, d, e, k = shape
    x_np, r_np, dw_np = common.make_inputs(n, d, e, k)
    x = torch.from_numpy(x_np).to(dtype).requires_grad_(True)
    r = torch.from_numpy(r_np).to(dtype).requires_grad_(True)
    dw = torch.from_numpy(dw_np).to(dtype)
    eye = torch.eye(e, dtype=dtype)
    loss, dx, dr = grads(x, r, dw, k, eye)
    return loss.item(), dx.detach().numpy(), dr.detach().numpy()


def main():
    global DEVICE, IMPL
    args = common.parse_args("target/compare/torch.json")
    torch.set_num_threads(args.threads)
    DEVICE = torch.device(args.device)
    if DEVICE.type != "cpu":
        IMPL = f"{IMPL}-{DEVICE.type}"
    if args.check:
        loss, dx, dr = check_grads()
        common.print_check(IMPL, loss, dx, dr)
        return
    print(f"[{IMPL}] torch {torch.__version__}, threads={torch.get_num_threads()}", file=sys.stderr)
    common.run_benchmarks(args, IMPL, torch.__version__, make_router_ops, make_simbal_op)


if __name__ == "__main__":
    main()
