#!/usr/bin/env python3
"""Write oracle fixtures for simbal's conformance suite.

Runs the field's own router / load-balancing code (Megatron-Core's MoE utilities and HF
transformers' `load_balancing_loss_func`) on seeded inputs and writes one JSON file per case to
conformance/oracles/fixtures/. Deterministic for its seeds: CPU only, one thread, float64 inputs.

Regenerate:
    bash conformance/oracles/setup.sh && conformance/oracles/.venv/bin/python conformance/oracles/make_fixtures.py

JSON conventions (see README.md):
  * every array is {"shape": [...], "dtype": "<torch dtype of the oracle's tensor>", "data": [flat,
    row-major]}; booleans are written as 0/1; values are exact (float32 results are widened to
    float64 exactly, Python's shortest round-trip repr);
  * non-finite numbers are written as the strings "nan", "inf", "-inf" (strict JSON has none);
  * gradients are d(output)/d(logits) by torch autograd through the oracle's own code.
"""

import importlib.metadata as md
import json
import math
import os
import sys
import tempfile
import warnings

warnings.filterwarnings("ignore")

import numpy as np
import torch

torch.set_num_threads(1)
torch.manual_seed(0)

from megatron.core import parallel_state  # noqa: E402
from megatron.core.transformer.moe import moe_utils  # noqa: E402
from transformers.models.mixtral import modeling_mixtral  # noqa: E402
from transformers.models.qwen2_moe import modeling_qwen2_moe  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "fixtures")

VERSIONS = {
    "megatron-core": md.version("megatron-core"),
    "torch": torch.__version__,
    "transformers": md.version("transformers"),
    "numpy": np.__version__,
}
MC = "megatron.core.transformer.moe.moe_utils"
MC_ROUTER = "megatron.core.transformer.moe.router.TopKRouter.routing"

E = 8
K = 2


# ----------------------------------------------------------------------------- helpers

def num(x):
    x = float(x)
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return x


def arr(t):
    if isinstance(t, np.ndarray):
        t = torch.from_numpy(t)
    t = t.detach().cpu()
    dtype = str(t.dtype).replace("torch.", "")
    if t.dtype == torch.bool:
        data = [int(v) for v in t.reshape(-1).tolist()]
    elif t.dtype.is_floating_point:
        data = [num(v) for v in t.to(torch.float64).reshape(-1).tolist()]
    else:
        data = [int(v) for v in t.reshape(-1).tolist()]
    return {"shape": list(t.shape), "dtype": dtype, "data": data}


def scalar(t):
    t = t.detach().cpu()
    return {"dtype": str(t.dtype).replace("torch.", ""), "value": num(t.to(torch.float64).item())}


def rng_for(seed):
    return np.random.default_rng(seed)


def logits_np(seed, n, e=E, scale=1.5):
    return rng_for(seed).normal(0.0, scale, size=(n, e))


def leaf(x):
    return torch.tensor(x, dtype=torch.float64, requires_grad=True)


def grad(out, x):
    (g,) = torch.autograd.grad(out, x, retain_graph=True, allow_unused=False)
    return g


FILES = []


def write(name, obj):
    obj = {"name": name, "versions": VERSIONS, **obj}
    path = os.path.join(OUT, name + ".json")
    text = json.dumps(obj, indent=1, allow_nan=False) + "\n"
    with open(path, "w") as f:
        f.write(text)
    FILES.append((name, len(text)))


# ----------------------------------------------------------------------------- router

def router_case(name, seed, n, *, k=K, score_function="softmax", use_pre_softmax=False,
                num_groups=None, group_topk=None, scaling_factor=None, expert_bias=None,
                capacity_factor=None, drop_policy="probs", note=None):
    z = logits_np(seed, n)
    upstream = rng_for(seed + 1000).normal(size=(n, E))
    x = leaf(z)
    bias_t = None if expert_bias is None else torch.tensor(expert_bias, dtype=torch.float32)
    args = dict(topk=k, use_pre_softmax=use_pre_softmax, num_groups=num_groups,
                group_topk=group_topk, scaling_factor=scaling_factor,
                score_function=score_function, fused=False, router_replay=None)
    probs, rmap = moe_utils.topk_routing_with_score_function(x, expert_bias=bias_t, **args)
    outputs = {"routing_probs": arr(probs), "routing_map": arr(rmap)}
    calls = [{"function": MC + ".topk_routing_with_score_function",
              "args": {**args, "expert_bias": None if bias_t is None else arr(bias_t)}}]
    final = probs
    if capacity_factor is not None:
        cap = moe_utils.get_capacity(num_tokens=n * k, num_experts=E, capacity_factor=capacity_factor)
        fprobs, fmap = moe_utils.apply_router_token_dropping(
            probs, rmap, router_topk=k, capacity_factor=capacity_factor,
            drop_policy=drop_policy, pad_to_capacity=False)
        calls.append({"function": MC + ".apply_router_token_dropping",
                      "args": {"router_topk": k, "capacity_factor": capacity_factor,
                               "drop_policy": drop_policy, "pad_to_capacity": False},
                      "expert_capacity": cap,
                      "capacity_formula": "get_capacity(num_tokens=N*k, num_experts=E, capacity_factor) = ceil(N*k/E*cf), no min_capacity (TopKRouter passes none); no dropping at all when capacity > N"})
        outputs["final_probs"] = arr(fprobs)
        outputs["final_map"] = arr(fmap)
        outputs["kept_counts"] = arr(fmap.sum(dim=0))
        final = fprobs
    outputs["routed_counts"] = arr(rmap.sum(dim=0))
    vjp_out = (final * torch.tensor(upstream)).sum()
    write(name, {
        "kind": "router",
        "oracle": calls[-1]["function"] if capacity_factor is None else calls[0]["function"] + " + apply_router_token_dropping",
        "calls": calls,
        "inputs": {"logits": arr(x), "seed": seed, "num_tokens": n, "num_experts": E,
                   "vjp_upstream": arr(torch.tensor(upstream))},
        "outputs": outputs,
        "grads": {"d_sum(final_probs*vjp_upstream)_d_logits": arr(grad(vjp_out, x))},
        "notes": note or "",
    })


# ----------------------------------------------------------------------------- LBL (micro-batch)

def sinkhorn_case(name, seed, n, *, k=K, note=None):
    """Megatron's `sinkhorn` router type (TopKRouter.sinkhorn_load_balancing, training mode):
    indices = top-k of moe_utils.sinkhorn(logits.float()); scores = sigmoid(logits) for k = 1,
    softmax(logits, float32) otherwise, gathered at the indices (no renormalisation)."""
    z = logits_np(seed, n, scale=2.0)
    x = torch.tensor(z, dtype=torch.float64)
    with torch.no_grad():
        balanced = moe_utils.sinkhorn(x.to(torch.float32))
        _, idx = torch.topk(balanced, k=k, dim=1)
    probs = torch.sigmoid(x) if k == 1 else torch.softmax(x, dim=-1, dtype=torch.float32).type_as(x)
    rmap = torch.zeros_like(probs).int().scatter(1, idx, 1).bool()
    write(name, {
        "kind": "router_sinkhorn",
        "oracle": MC + ".sinkhorn + TopKRouter.sinkhorn_load_balancing",
        "calls": [{"function": MC + ".sinkhorn", "args": {"tol": 0.0001}}],
        "inputs": {"logits": arr(x), "seed": seed, "num_tokens": n, "num_experts": E, "topk": k},
        "outputs": {"balanced": arr(balanced), "routing_map": arr(rmap),
                    "scores": arr(probs * rmap), "routed_counts": arr(rmap.sum(dim=0))},
        "notes": note or "",
    })


def lbl_case(name, seed, n, *, k=K, score_function="softmax", coeff=0.37, valid=None,
             router_kwargs=None, note=None):
    """Reproduces TopKRouter.routing's aux-loss path: compute_routing_scores_for_aux_loss ->
    get_tokens_per_expert_and_token_count (tp_cp group of size 1) -> switch_load_balancing_loss_func."""
    z = logits_np(seed, n)
    x = leaf(z)
    padding_mask = None  # Megatron's router convention: True = padding
    if valid is not None:
        padding_mask = ~torch.tensor(valid, dtype=torch.bool)
    rmap_aux, scores_aux = moe_utils.compute_routing_scores_for_aux_loss(
        x, k, score_function, fused=False, padding_mask=padding_mask)
    tokens_per_expert = rmap_aux.sum(dim=0)
    if padding_mask is not None:
        total = tokens_per_expert.sum() / k   # with_padding_mask=True branch
    else:
        total = rmap_aux.shape[0]             # local_num_tokens * tp_cp size (1)
    loss = moe_utils.switch_load_balancing_loss_func(
        probs=scores_aux, tokens_per_expert=tokens_per_expert, total_num_tokens=total,
        topk=k, num_experts=E, moe_aux_loss_coeff=coeff, fused=False)
    outputs = {"loss": scalar(loss), "scores_for_aux_loss": arr(scores_aux),
               "routing_map_for_aux_loss": arr(rmap_aux), "tokens_per_expert": arr(tokens_per_expert),
               "total_num_tokens": num(total) if not torch.is_tensor(total) else num(total.item())}
    extra = {}
    if router_kwargs is not None:
        # the dispatching router on the same logits, to show the LBL's counts are not the kept ones
        rk = dict(router_kwargs)
        cf = rk.pop("capacity_factor", None)
        b = rk.pop("expert_bias", None)
        bt = None if b is None else torch.tensor(b, dtype=torch.float32)
        probs, rmap = moe_utils.topk_routing_with_score_function(
            x.detach(), k, score_function=score_function, expert_bias=bt, **rk)
        if cf is not None:
            probs, rmap = moe_utils.apply_router_token_dropping(probs, rmap, router_topk=k,
                                                                capacity_factor=cf, drop_policy="probs")
        extra = {"dispatch_router_args": {**rk, "capacity_factor": cf,
                                          "expert_bias": None if bt is None else arr(bt),
                                          "drop_policy": "probs"},
                 "dispatch_final_map": arr(rmap), "dispatch_kept_counts": arr(rmap.sum(dim=0))}
    write(name, {
        "kind": "lbl",
        "oracle": MC + ".switch_load_balancing_loss_func",
        "composition": MC_ROUTER + " aux_loss path: compute_routing_scores_for_aux_loss(logits, topk, score_function, padding_mask) -> tokens_per_expert = routing_map.sum(0); total_num_tokens = N (no mask) or tokens_per_expert.sum()/topk (mask) -> switch_load_balancing_loss_func(probs=scores, tokens_per_expert, total_num_tokens, topk, num_experts, coeff)",
        "args": {"topk": k, "num_experts": E, "moe_aux_loss_coeff": coeff,
                 "score_function": score_function, "fused": False},
        "inputs": {"logits": arr(x), "seed": seed, "num_tokens": n,
                   "valid": None if valid is None else arr(torch.tensor(valid, dtype=torch.bool)),
                   "megatron_padding_mask": None if padding_mask is None else arr(padding_mask)},
        "outputs": {**outputs, **extra},
        "grads": {"d_loss_d_logits": arr(grad(loss, x))},
        "notes": note or "",
    })


# ----------------------------------------------------------------------------- seq aux loss

def seq_lbl_case(name, seed, s, b, *, k=K, score_function="softmax", coeff=0.37, valid_sb=None,
                 note=None):
    """Reproduces TopKRouter._apply_seq_aux_loss: logits [S, B, E] (sequence-major, Megatron's
    layout) flattened to [S*B, E]; scores reshaped to [S, B*E]; counts over the B*E columns."""
    z = logits_np(seed, s * b).reshape(s, b, E)
    x = leaf(z)
    flat = x.view(-1, E)
    padding_mask = None
    if valid_sb is not None:
        padding_mask = ~torch.tensor(valid_sb, dtype=torch.bool).reshape(-1)
    rmap_aux, scores_aux = moe_utils.compute_routing_scores_for_aux_loss(
        flat, k, score_function, fused=False, padding_mask=padding_mask)
    scores2 = scores_aux.reshape(s, -1)
    rmap2 = rmap_aux.reshape(s, -1)
    tpe = rmap2.sum(dim=0)
    if padding_mask is not None:
        total = tpe.sum() / (k * b)     # get_tokens_per_expert_and_token_count(topk=topk*bsz)
    else:
        total = rmap2.shape[0]
    loss = moe_utils.switch_load_balancing_loss_func(
        probs=scores2, tokens_per_expert=tpe, total_num_tokens=total, topk=k, num_experts=E,
        moe_aux_loss_coeff=coeff, fused=False) / b
    write(name, {
        "kind": "seq_lbl",
        "oracle": "megatron.core.transformer.moe.router.TopKRouter._apply_seq_aux_loss (via " + MC + ".switch_load_balancing_loss_func)",
        "composition": "scores=compute_routing_scores_for_aux_loss(logits.view(-1,E)); scores.reshape(S, B*E); tokens_per_expert = map.reshape(S,B*E).sum(0); total_num_tokens = S (no mask) or tokens_per_expert.sum()/(topk*B) (mask); loss = switch_load_balancing_loss_func(..., topk, num_experts=E, coeff) / B",
        "args": {"topk": k, "num_experts": E, "seq_aux_loss_coeff": coeff,
                 "score_function": score_function, "seq_length": s, "bsz": b,
                 "layout": "sequence-major [S, B, E]: row t = s*B + b of the flattened logits"},
        "inputs": {"logits": arr(x), "seed": seed,
                   "valid_sb": None if valid_sb is None else arr(torch.tensor(valid_sb, dtype=torch.bool))},
        "outputs": {"loss": scalar(loss), "tokens_per_expert_per_seq": arr(tpe.reshape(b, E)),
                    "total_num_tokens": num(total) if not torch.is_tensor(total) else num(total.item())},
        "grads": {"d_loss_d_logits": arr(grad(loss, x))},
        "notes": note or "",
    })


# ----------------------------------------------------------------------------- z-loss

def zloss_case(name, seed, n, *, coeff=0.013, valid=None, scale=1.5, note=None):
    z = logits_np(seed, n, scale=scale)
    x = leaf(z)
    pm = None if valid is None else ~torch.tensor(valid, dtype=torch.bool)  # True = padding
    loss = moe_utils.z_loss_func(x, coeff, padding_mask=pm)
    write(name, {
        "kind": "z_loss",
        "oracle": MC + ".z_loss_func",
        "args": {"z_loss_coeff": coeff},
        "inputs": {"logits": arr(x), "seed": seed,
                   "valid": None if valid is None else arr(torch.tensor(valid, dtype=torch.bool)),
                   "megatron_padding_mask": None if pm is None else arr(pm)},
        "outputs": {"loss": scalar(loss)},
        "grads": {"d_loss_d_logits": arr(grad(loss, x))},
        "notes": note or "",
    })


# ----------------------------------------------------------------------------- expert bias

_DIST = False


def init_single_rank():
    global _DIST
    if _DIST:
        return
    import torch.distributed as dist
    fd, path = tempfile.mkstemp(prefix="simbal_oracle_store_")
    os.close(fd)
    os.unlink(path)
    dist.init_process_group("gloo", store=dist.FileStore(path, 1), rank=0, world_size=1)
    # get_updated_expert_bias all-reduces over parallel_state's TP x DP x CP group; with one rank
    # that group is the world group.
    parallel_state.get_tensor_and_data_parallel_group = lambda with_context_parallel=False: dist.group.WORLD
    _DIST = True


def bias_case(name, counts, bias, rate, note=None):
    init_single_rank()
    tpe = torch.tensor(counts, dtype=torch.float32)
    b = torch.tensor(bias, dtype=torch.float32)
    tpe_in = tpe.clone()
    out = moe_utils.get_updated_expert_bias(tpe, b, rate)
    write(name, {
        "kind": "expert_bias",
        "oracle": MC + ".get_updated_expert_bias",
        "args": {"expert_bias_update_rate": rate},
        "inputs": {"tokens_per_expert": arr(tpe_in), "expert_bias": arr(b)},
        "outputs": {"updated_expert_bias": arr(out)},
        "grads": {},
        "notes": (note or "") + " all_reduce ran on a single-rank gloo group (identity).",
    })


# ----------------------------------------------------------------------------- HF

HF_FUNCS = {
    "mixtral": ("transformers.models.mixtral.modeling_mixtral.load_balancing_loss_func",
                modeling_mixtral.load_balancing_loss_func),
    "qwen2_moe": ("transformers.models.qwen2_moe.modeling_qwen2_moe.load_balancing_loss_func",
                  modeling_qwen2_moe.load_balancing_loss_func),
}


def hf_case(name, seed, b, s, *, layers=1, k=K, mask=None, which="mixtral", note=None):
    fname, fn = HF_FUNCS[which]
    xs = [leaf(logits_np(seed + 17 * l, b * s)) for l in range(layers)]
    am = None if mask is None else torch.tensor(mask, dtype=torch.int64).reshape(b, s)
    loss = fn(tuple(xs), num_experts=E, top_k=k, attention_mask=am)
    grads = {}
    for l, x in enumerate(xs):
        grads[f"d_loss_d_gate_logits_{l}"] = arr(grad(loss, x))
    write(name, {
        "kind": "hf_lbl",
        "oracle": fname,
        "args": {"num_experts": E, "top_k": k, "num_layers": layers, "batch_size": b, "seq_len": s,
                 "layout": "batch-major: row t = b*S + s of each layer's [B*S, E] gate logits",
                 "coefficient": "none inside the function (the model multiplies by router_aux_loss_coef)"},
        "inputs": {**{f"gate_logits_{l}": arr(x) for l, x in enumerate(xs)}, "seed": seed,
                   "attention_mask": None if am is None else arr(am)},
        "outputs": {"loss": scalar(loss)},
        "grads": grads,
        "notes": note or "",
    })


# ----------------------------------------------------------------------------- main

def main():
    os.makedirs(OUT, exist_ok=True)
    for f in os.listdir(OUT):
        if f.endswith(".json"):
            os.unlink(os.path.join(OUT, f))

    # router forward (+ VJP)
    router_case("mc_router_softmax_post_topk", 101, 16, score_function="softmax", use_pre_softmax=False,
                note="use_pre_softmax=False: top-k on raw logits, softmax over the k chosen logits (= renormalised softmax gates, no eps). Softmax computed in float32 then cast back to float64.")
    router_case("mc_router_softmax_pre_topk", 102, 16, score_function="softmax", use_pre_softmax=True,
                note="use_pre_softmax=True: softmax over E (float32), top-k, gates = raw probabilities (no renormalisation).")
    router_case("mc_router_softmax_pre_topk_scaled", 103, 12, score_function="softmax", use_pre_softmax=True,
                scaling_factor=2.5)
    router_case("mc_router_sigmoid", 104, 16, score_function="sigmoid",
                note="sigmoid scores (computed as sigmoid(logits.float()), float32), top-k, gates renormalised: p/(sum_k p + 1e-20) since topk > 1.")
    router_case("mc_router_sigmoid_bias_scaled", 105, 20, score_function="sigmoid",
                expert_bias=[0.3, -0.2, 0.0, 0.15, -0.4, 0.05, 0.25, -0.1], scaling_factor=2.5,
                note="selection on sigmoid(z)+bias; gates from unbiased sigmoid scores, renormalised, times scaling_factor. expert_bias is float32 as in TopKRouter.")
    router_case("mc_router_sigmoid_k1", 106, 12, k=1, score_function="sigmoid",
                note="topk=1: Megatron does NOT renormalise sigmoid gates (probs = scores).")
    router_case("mc_router_softmax_pre_grouped", 107, 16, score_function="softmax", use_pre_softmax=True,
                num_groups=4, group_topk=2,
                note="group score = sum of top (topk // group_topk) = top-1 softmax score in each group of 2 experts.")
    router_case("mc_router_softmax_post_grouped", 108, 16, score_function="softmax", use_pre_softmax=False,
                num_groups=4, group_topk=2,
                note="post-softmax: group selection and top-k are on the raw LOGITS; gates softmax over the k chosen logits.")
    router_case("mc_router_sigmoid_bias_grouped", 109, 16, score_function="sigmoid",
                expert_bias=[0.3, -0.2, 0.0, 0.15, -0.4, 0.05, 0.25, -0.1], num_groups=4, group_topk=2,
                note="group scores are computed on sigmoid(z)+bias (scores_for_routing).")
    router_case("mc_router_softmax_pre_capacity_probs", 110, 24, score_function="softmax", use_pre_softmax=True,
                capacity_factor=1.0, drop_policy="probs",
                note="capacity C = ceil(24*2/8*1.0) = 6; policy 'probs' keeps each expert's C largest gates (torch.topk over dim 0, sorted=False).")
    router_case("mc_router_sigmoid_bias_capacity_probs", 111, 24, score_function="sigmoid",
                expert_bias=[0.3, -0.2, 0.0, 0.15, -0.4, 0.05, 0.25, -0.1], scaling_factor=2.5,
                capacity_factor=0.75, drop_policy="probs",
                note="capacity C = ceil(24*2/8*0.75) = 5; 'probs' ranks by the final gates (renormalised, scaled).")
    router_case("mc_router_softmax_post_capacity_probs", 112, 20, score_function="softmax", use_pre_softmax=False,
                capacity_factor=0.8, drop_policy="probs",
                note="capacity C = ceil(20*2/8*0.8) = 4.")

    # Sinkhorn router type
    sinkhorn_case("mc_router_sinkhorn", 113, 32, k=2,
                  note="skewed by nothing: seeded logits; sinkhorn in float32, no iteration cap (loops until mean |d1 change| <= 1e-4).")
    sinkhorn_case("mc_router_sinkhorn_k1", 114, 24, k=1,
                  note="topk = 1: scores are sigmoid(logits).")

    # micro-batch LBL
    lbl_case("mc_lbl_softmax", 201, 16, score_function="softmax")
    lbl_case("mc_lbl_sigmoid", 202, 16, score_function="sigmoid",
             note="scores_for_aux_loss = sigmoid(z)/(sum_e sigmoid(z) + 1e-20) in float64 (not float32), top-k on those.")
    lbl_case("mc_lbl_softmax_masked", 203, 16, score_function="softmax",
             valid=[1] * 5 + [0] * 2 + [1] * 6 + [0] * 3,
             note="padding: scores and routing map zeroed for padding tokens; total_num_tokens = kept assignments / topk = N_v.")
    lbl_case("mc_lbl_sigmoid_masked", 204, 16, score_function="sigmoid",
             valid=[0, 1, 1, 1, 0, 1, 1, 1, 1, 1, 1, 0, 1, 1, 1, 1])
    lbl_case("mc_lbl_softmax_all_masked", 205, 12, score_function="softmax", valid=[0] * 12,
             note="no valid token: Megatron's aux loss has no clamp: 0 * coeff/(0) -> nan loss and nan gradient.")
    lbl_case("mc_lbl_sigmoid_vs_dispatch_counts", 206, 24, score_function="sigmoid",
             router_kwargs=dict(num_groups=4, group_topk=2, scaling_factor=2.5, capacity_factor=0.75,
                                expert_bias=[0.6, -0.5, 0.0, 0.3, -0.8, 0.1, 0.5, -0.2]),
             note="the LBL's counts are the plain top-k of the (normalised) scores: no bias, no groups, before capacity; dispatch_kept_counts shows the router's kept counts on the same logits.")

    # seq aux loss (sequence-major)
    seq_lbl_case("mc_seq_lbl_softmax", 301, 8, 2, score_function="softmax")
    seq_lbl_case("mc_seq_lbl_sigmoid", 302, 10, 2, score_function="sigmoid")
    seq_lbl_case("mc_seq_lbl_softmax_b1", 303, 12, 1, score_function="softmax",
                 note="B = 1: equals the micro-batch LBL on the same logits.")
    vm = np.ones((8, 2), dtype=bool)
    vm[6:, 0] = False  # sequence 0 has 6 valid tokens, sequence 1 has 8
    seq_lbl_case("mc_seq_lbl_softmax_masked_uneven", 304, 8, 2, score_function="softmax", valid_sb=vm.tolist(),
                 note="uneven valid counts per sequence (6 and 8): Megatron uses one total_num_tokens = (6+8)/2 = 7 for both sequences.")

    # z-loss
    zloss_case("mc_zloss", 401, 16)
    zloss_case("mc_zloss_large_logits", 402, 12, scale=30.0)
    zloss_case("mc_zloss_masked", 403, 16, valid=[1] * 10 + [0] * 6,
               note="Megatron's z_loss_func padding_mask: True = padding (the opposite of switch_load_balancing_loss_func's own padding_mask argument).")
    zloss_case("mc_zloss_all_masked", 404, 8, valid=[0] * 8, note="clamp(num_valid, min=1): loss 0, gradient 0.")

    # expert bias
    rng = rng_for(501)
    bias_case("mc_expert_bias_update", rng.integers(0, 12, size=E).tolist(),
              rng.normal(0, 0.01, size=E).tolist(), 1e-3)
    bias_case("mc_expert_bias_update_ties", [4, 6, 6, 2, 8, 6, 10, 6], [0.0] * E, 1e-3,
              note="mean = 6: experts at the mean get sign(0) = 0.")

    # HF
    hf_case("hf_lbl_mixtral_1layer", 601, 2, 8, which="mixtral")
    hf_case("hf_lbl_mixtral_2layers", 602, 2, 6, layers=2, which="mixtral")
    hf_case("hf_lbl_mixtral_masked", 603, 2, 8, which="mixtral",
            mask=[[1] * 8, [1] * 5 + [0] * 3])
    hf_case("hf_lbl_mixtral_masked_2layers", 604, 2, 6, layers=2, which="mixtral",
            mask=[[0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])
    hf_case("hf_lbl_mixtral_all_masked", 605, 2, 6, which="mixtral", mask=[[0] * 6, [0] * 6],
            note="no valid token: 0/0 -> nan loss (SPEC returns 0).")
    hf_case("hf_lbl_mixtral_k1", 606, 1, 12, k=1, which="mixtral")
    hf_case("hf_lbl_qwen2_moe_masked", 607, 2, 8, which="qwen2_moe",
            mask=[[1] * 8, [1] * 5 + [0] * 3], note="same inputs as hf_lbl_mixtral_masked except the seed.")

    for name, size in FILES:
        print(f"{size:8d}  {name}.json")
    print(f"{len(FILES)} fixtures, versions {VERSIONS}")
    if max(s for _, s in FILES) > 200_000:
        print("WARNING: a fixture exceeds 200 KB", file=sys.stderr)


if __name__ == "__main__":
    main()
