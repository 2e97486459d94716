#!/usr/bin/env python3
"""Compare the oracle fixtures with SPEC.md's formulas (float64 numpy) and probe the oracles'
corner cases. Prints the numbers quoted in README.md ("Observed differences"); writes nothing.

    conformance/oracles/.venv/bin/python conformance/oracles/observe.py
"""

import glob
import json
import math
import os
import warnings

warnings.filterwarnings("ignore")

import numpy as np
import torch

torch.set_num_threads(1)
from megatron.core.transformer.moe import moe_utils  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
FIX = os.path.join(HERE, "fixtures")
E = 8


def load(name):
    with open(os.path.join(FIX, name + ".json")) as f:
        return json.load(f)


def A(a):
    return np.array([np.nan if v == "nan" else v for v in a["data"]], dtype=np.float64).reshape(a["shape"])


def softmax(z):
    m = z.max(-1, keepdims=True)
    e = np.exp(z - m)
    return e / e.sum(-1, keepdims=True)


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def topk_idx(s, k):
    # SPEC: ties to the lower index (stable sort of -s)
    return np.argsort(-s, axis=-1, kind="stable")[:, :k]


def spec_select(p, k, bias=None, groups=None, gtop=None):
    sel = p if bias is None else p + bias
    n = sel.shape[0]
    if groups:
        gs = E // groups
        m = min(max(1, k // gtop), gs)
        g = np.sort(sel.reshape(n, groups, gs), axis=-1)[:, :, ::-1][:, :, :m].sum(-1)
        keep = np.argsort(-g, axis=-1, kind="stable")[:, :gtop]
        mask = np.zeros((n, groups), bool)
        np.put_along_axis(mask, keep, True, axis=-1)
        sel = np.where(np.repeat(mask, gs, axis=1), sel, -np.inf)
    return topk_idx(sel, k)


def to_map(idx, n):
    m = np.zeros((n, E), bool)
    np.put_along_axis(m, idx, True, axis=-1)
    return m


def rel(a, b):
    a, b = np.asarray(a, float), np.asarray(b, float)
    scale = max(np.abs(b).max(), 1e-300)
    return float(np.abs(a - b).max() / scale)


def spec_lbl(q, counts, k, nv, alpha):
    return alpha * E * float(np.sum((counts / (k * nv)) * (q.sum(0) / nv)))


def main():
    print("== router: oracle vs SPEC (f64) ==")
    for path in sorted(glob.glob(os.path.join(FIX, "mc_router_*.json"))):
        d = json.load(open(path))
        a = d["calls"][0]["args"]
        z = A(d["inputs"]["logits"])
        n = z.shape[0]
        k = a["topk"]
        bias = None if a["expert_bias"] is None else A(a["expert_bias"])
        s = a["scaling_factor"] or 1.0
        if a["score_function"] == "softmax":
            if a["use_pre_softmax"]:
                p = softmax(z)
                idx = spec_select(p, k, None, a["num_groups"], a["group_topk"])
                w = s * np.take_along_axis(p, idx, -1)
            else:
                # post-softmax: selection on logits (monotone in p), gates renormalised
                idx = spec_select(z, k, None, a["num_groups"], a["group_topk"])
                p = softmax(z)
                pk = np.take_along_axis(p, idx, -1)
                w = s * pk / pk.sum(-1, keepdims=True)
        else:
            p = sigmoid(z)
            idx = spec_select(p, k, bias, a["num_groups"], a["group_topk"])
            pk = np.take_along_axis(p, idx, -1)
            w = s * (pk / (pk.sum(-1, keepdims=True) + np.finfo(float).tiny)) if k > 1 else s * pk
        dense = np.zeros((n, E))
        np.put_along_axis(dense, idx, w, axis=-1)
        om = A(d["outputs"]["routing_map"]).astype(bool)
        same_map = bool((om == to_map(idx, n)).all())
        line = f"{d['name']}: map equal={same_map}, gates max rel err={rel(A(d['outputs']['routing_probs']), dense):.2e}"
        if "final_map" in d["outputs"]:
            C = d["calls"][1]["expert_capacity"]
            keep = np.zeros((n, E), bool)
            for e in range(E):
                toks = np.nonzero(dense[:, e] > 0)[0] if True else None
                toks = [t for t in range(n) if to_map(idx, n)[t, e]]
                order = sorted(toks, key=lambda t: (-dense[t, e], t))[:C]
                keep[order, e] = True
            fm = A(d["outputs"]["final_map"]).astype(bool)
            line += (f"; C={C}, kept map equal={bool((fm == keep).all())}, dropped={int(om.sum() - fm.sum())}"
                     f", routed counts={A(d['outputs']['routed_counts']).astype(int).tolist()}"
                     f", kept counts={A(d['outputs']['kept_counts']).astype(int).tolist()}")
        print(line)

    print("\n== micro-batch LBL: oracle vs SPEC (q normalised for sigmoid, Routed counts) ==")
    for path in sorted(glob.glob(os.path.join(FIX, "mc_lbl_*.json"))):
        d = json.load(open(path))
        z = A(d["inputs"]["logits"])
        k, alpha = d["args"]["topk"], d["args"]["moe_aux_loss_coeff"]
        valid = np.ones(z.shape[0]) if d["inputs"]["valid"] is None else A(d["inputs"]["valid"])
        p = softmax(z) if d["args"]["score_function"] == "softmax" else sigmoid(z)
        q = p if d["args"]["score_function"] == "softmax" else p / (p.sum(-1, keepdims=True) + 1e-20)
        counts = (to_map(topk_idx(q, k), z.shape[0]) * valid[:, None]).sum(0)
        nv = valid.sum()
        val = d["outputs"]["loss"]["value"]
        if nv == 0:
            print(f"{d['name']}: oracle loss={val} (SPEC: 0 with zero gradient)")
            continue
        ref = spec_lbl(q * valid[:, None], counts, k, nv, alpha)
        # SPEC gradient
        g_q = valid[:, None] * alpha * E * counts[None, :] / (k * nv * nv)
        if d["args"]["score_function"] == "softmax":
            g_z = p * (g_q - (g_q * p).sum(-1, keepdims=True))
        else:
            ssum = p.sum(-1, keepdims=True) + 1e-20
            g_p = (g_q - (g_q * p).sum(-1, keepdims=True) / ssum) / ssum
            g_z = g_p * p * (1 - p)
        gz_o = A(d["grads"]["d_loss_d_logits"])
        line = (f"{d['name']}: oracle={val!r} SPEC={ref!r} rel={abs(val - ref) / abs(ref):.2e}; "
                f"grad rel={rel(gz_o, g_z):.2e}; counts={A(d['outputs']['tokens_per_expert']).astype(int).tolist()}")
        if "dispatch_kept_counts" in d["outputs"]:
            line += f"; router kept counts on same logits={A(d['outputs']['dispatch_kept_counts']).astype(int).tolist()}"
            kc = A(d["outputs"]["dispatch_kept_counts"])
            line += f"; SPEC counts=Dispatched would give {spec_lbl(q, kc, k, nv, alpha)!r}"
        print(line)

    print("\n== seq LBL (sequence-major) ==")
    for path in sorted(glob.glob(os.path.join(FIX, "mc_seq_lbl_*.json"))):
        d = json.load(open(path))
        S, B, k, alpha = d["args"]["seq_length"], d["args"]["bsz"], d["args"]["topk"], d["args"]["seq_aux_loss_coeff"]
        z = A(d["inputs"]["logits"])  # [S, B, E]
        valid = np.ones((S, B)) if d["inputs"]["valid_sb"] is None else A(d["inputs"]["valid_sb"])
        tot = 0.0
        for b in range(B):
            zb, vb = z[:, b, :], valid[:, b]
            p = softmax(zb) if d["args"]["score_function"] == "softmax" else sigmoid(zb)
            q = p if d["args"]["score_function"] == "softmax" else p / (p.sum(-1, keepdims=True) + 1e-20)
            c = (to_map(topk_idx(q, k), S) * vb[:, None]).sum(0)
            tot += spec_lbl(q * vb[:, None], c, k, vb.sum(), alpha)
        ref = tot / B
        val = d["outputs"]["loss"]["value"]
        print(f"{d['name']}: oracle={val!r} SPEC per-sequence mean={ref!r} rel={abs(val - ref) / abs(ref):.2e}; "
              f"oracle total_num_tokens={d['outputs']['total_num_tokens']}, valid per seq={valid.sum(0).astype(int).tolist()}")
    b1 = load("mc_seq_lbl_softmax_b1")
    z = A(b1["inputs"]["logits"]).reshape(-1, E)
    x = torch.tensor(z)
    rm, sc = moe_utils.compute_routing_scores_for_aux_loss(x, 2, "softmax")
    mb = moe_utils.switch_load_balancing_loss_func(sc, rm.sum(0), z.shape[0], 2, E, 0.37).item()
    print(f"seq LBL B=1 {b1['outputs']['loss']['value']!r} vs micro-batch LBL on the same logits {mb!r}")

    print("\n== z-loss ==")
    for path in sorted(glob.glob(os.path.join(FIX, "mc_zloss*.json"))):
        d = json.load(open(path))
        z = A(d["inputs"]["logits"])
        beta = d["args"]["z_loss_coeff"]
        valid = np.ones(z.shape[0]) if d["inputs"]["valid"] is None else A(d["inputs"]["valid"])
        m = z.max(-1)
        lse = m + np.log(np.exp(z - m[:, None]).sum(-1))
        nv = valid.sum()
        ref = 0.0 if nv == 0 else beta * float((valid * lse ** 2).sum() / nv)
        g = np.zeros_like(z) if nv == 0 else valid[:, None] * beta * 2 / nv * lse[:, None] * softmax(z)
        val = d["outputs"]["loss"]["value"]
        r = abs(val - ref) / abs(ref) if ref else abs(val)
        print(f"{d['name']}: oracle={val!r} SPEC={ref!r} rel={r:.2e} grad maxabs diff={np.abs(A(d['grads']['d_loss_d_logits']) - g).max():.2e}")

    print("\n== expert bias ==")
    for path in sorted(glob.glob(os.path.join(FIX, "mc_expert_bias*.json"))):
        d = json.load(open(path))
        c = A(d["inputs"]["tokens_per_expert"])
        b = A(d["inputs"]["expert_bias"])
        u = d["args"]["expert_bias_update_rate"]
        ref = b + u * np.sign(c.mean() - c)
        print(f"{d['name']}: counts={c.astype(int).tolist()} max abs diff vs SPEC (f64)={np.abs(A(d['outputs']['updated_expert_bias']) - ref).max():.2e} (oracle is float32)")

    print("\n== HF load_balancing_loss_func vs SPEC HuggingFace normalisation (f_e = c_e/N_v, alpha = 1) ==")
    for path in sorted(glob.glob(os.path.join(FIX, "hf_lbl_*.json"))):
        d = json.load(open(path))
        L, B, S, k = d["args"]["num_layers"], d["args"]["batch_size"], d["args"]["seq_len"], d["args"]["top_k"]
        zs = [A(d["inputs"][f"gate_logits_{l}"]) for l in range(L)]
        mask = np.ones(B * S) if d["inputs"]["attention_mask"] is None else A(d["inputs"]["attention_mask"]).reshape(-1)
        val = d["outputs"]["loss"]["value"]
        if mask.sum() == 0:
            print(f"{d['name']}: oracle loss={val} (SPEC: 0)")
            continue
        # merged over layers (what HF computes) and per-layer mean (alternative)
        c_all = np.zeros(E); s_all = np.zeros(E); per = []
        for z in zs:
            p = softmax(z)
            c = (to_map(topk_idx(p, k), z.shape[0]) * mask[:, None]).sum(0)
            sm = (p * mask[:, None]).sum(0)
            c_all += c; s_all += sm
            per.append(E * float(np.sum((c / mask.sum()) * (sm / mask.sum()))))
        nv = mask.sum() * L
        merged = E * float(np.sum((c_all / nv) * (s_all / nv)))
        gmax = max(np.abs(A(d["grads"][f"d_loss_d_gate_logits_{l}"])[mask == 0]).max() if (mask == 0).any() else 0.0 for l in range(L))
        print(f"{d['name']}: oracle={val!r} SPEC(HF norm, layers merged)={merged!r} rel={abs(val - merged) / merged:.2e}"
              + (f"; mean of per-layer LBLs={np.mean(per)!r}" if L > 1 else "")
              + f"; Megatron norm (/k) would be {merged / k!r}; max |grad| on masked rows={gmax:.1e}")

    print("\n== probes ==")
    # group_topk > topk: Megatron's topk // group_topk = 0
    z = torch.tensor(np.random.default_rng(7).normal(size=(6, E)))
    try:
        pr, rm = moe_utils.topk_routing_with_score_function(z, 1, use_pre_softmax=True, num_groups=4, group_topk=2)
        idx = rm.int().argmax(-1).tolist()
        ref = spec_select(softmax(z.numpy()), 1, None, 4, 2)[:, 0].tolist()
        plain = topk_idx(softmax(z.numpy()), 1)[:, 0].tolist()
        print(f"topk=1, num_groups=4, group_topk=2: Megatron experts={idx}; SPEC (m=max(1,k/G_top)=1)={ref}; plain top-1={plain}")
    except Exception as ex:  # noqa: BLE001
        print(f"topk=1, num_groups=4, group_topk=2: Megatron raises {type(ex).__name__}: {ex}")

    # position drop policy: topk over a 0/1 map with ties
    rng = np.random.default_rng(11)
    z = torch.tensor(rng.normal(size=(64, E)))
    pr, rm = moe_utils.topk_routing_with_score_function(z, 2, use_pre_softmax=True)
    C = moe_utils.get_capacity(64 * 2, E, 0.5)
    first = torch.zeros_like(rm)
    for e in range(E):
        t = torch.nonzero(rm[:, e])[:, 0][:C]
        first[t, e] = True
    results = {}
    for threads in (1, 4):
        torch.set_num_threads(threads)
        for rep in range(3):
            _, fm = moe_utils.apply_router_token_dropping(pr, rm, 2, 0.5, drop_policy="position")
            results[(threads, rep)] = fm.clone()
    torch.set_num_threads(1)
    base = results[(1, 0)]
    for e in range(2):
        print(f"  position policy expert {e}: routed tokens {torch.nonzero(rm[:, e])[:, 0].tolist()} kept {torch.nonzero(base[:, e])[:, 0].tolist()}")
    print(f"position policy, N=64, k=2, cf=0.5 (C={C}): equals first-C-in-token-order={bool((base == first).all())}; "
          f"kept differs from first-C in {int((base != first).sum())} entries; "
          f"identical across 3 repeats x threads(1,4)={all(bool((v == base).all()) for v in results.values())}")
    # with no_drop_needed but ties: which zero entries topk picks is irrelevant (map is ANDed)

    # expert-bias accumulation with a padding mask in TopKRouter._apply_expert_bias
    rm = torch.zeros(16, E, dtype=torch.bool)
    pm = torch.zeros(16, dtype=torch.bool)
    try:
        _ = rm & (~pm)
        print("TopKRouter._apply_expert_bias: routing_map [16,8] & ~padding_mask [16] broadcasts")
    except Exception as ex:  # noqa: BLE001
        print(f"TopKRouter._apply_expert_bias: routing_map [N=16,E=8] & ~padding_mask [16] raises {type(ex).__name__}: {str(ex).splitlines()[0]}")
    rm = torch.ones(8, E, dtype=torch.bool)
    pm = torch.zeros(8, dtype=torch.bool); pm[0] = True  # token 0 is padding
    got = (rm & (~pm)).sum(0).tolist()
    print(f"  with N == E = 8, token 0 padding, every token routed everywhere: counts {got} (masks expert 0's column, not token 0's row; intended [7]*8)")

    # sigmoid gate eps: 1e-20 vs smallest normal, for very negative logits (distinct values)
    z = torch.tensor([[-29.0, -30.0, -31.0, -32.0, -33.0, -34.0, -35.0, -36.0]], dtype=torch.float64)
    pr, rm = moe_utils.topk_routing_with_score_function(z, 2, score_function="sigmoid")
    p = sigmoid(z.numpy())
    pk = p[:, :2]
    w = pk / (pk.sum(-1, keepdims=True) + np.finfo(float).tiny)
    print(f"sigmoid gates at logits -29,-30: Megatron {pr.numpy()[0, :2].tolist()} vs SPEC {w[0].tolist()} "
          f"(rel err {rel(pr.numpy()[0, :2], w[0]):.1e}; the eps alone contributes 1e-20/sum = {1e-20 / pk.sum():.1e} relative, "
          f"the same order as the float32 sigmoid rounding, so the two are not separated here)")

    # ties in torch.topk on CPU
    t = torch.topk(torch.zeros(1, E, dtype=torch.float64), 2, dim=1).indices[0].tolist()
    t2 = torch.topk(torch.tensor([[0.0, 1, 1, 1, 1, 0, 0, 1]]), 2, dim=1).indices[0].tolist()
    pr, rm = moe_utils.topk_routing_with_score_function(torch.zeros(1, E, dtype=torch.float64), 2, use_pre_softmax=True)
    print(f"torch.topk ties (CPU, torch {torch.__version__}): all-equal row of 8 -> indices {t}; "
          f"[0,1,1,1,1,0,0,1] -> {t2} (SPEC: lower index first: [0, 1] and [1, 2]); "
          f"Megatron router on all-zero logits picks experts {torch.nonzero(rm[0])[:, 0].tolist()}")

    # float32 internal precision for f64 logits
    d = load("mc_router_softmax_pre_topk")
    print(f"f64 logits: Megatron softmax gates carry float32 precision: e.g. routing_probs dtype="
          f"{d['outputs']['routing_probs']['dtype']}, see 'gates max rel err' above (~1e-8 instead of 1e-16)")


if __name__ == "__main__":
    main()
