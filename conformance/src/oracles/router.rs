//! Megatron-Core's router (`topk_routing_with_score_function`, `apply_router_token_dropping`)
//! against simbal's `forward_logits` and its backward.

use super::fixture::{data_of, each, near, num, ok, tol, Fx};
use super::ROUTER;
use crate::harness::run::{read_forward, read_logit_backward};
use crate::harness::util::*;
use simbal_core::memory::view;
use simbal_core::{Backend, LossConfig, Router, RouterConfig, ScoreFn};

/// simbal's configuration for a Megatron router fixture, and its selection bias.
fn router_config(f: &Fx) -> (RouterConfig, Option<Vec<f64>>) {
    let a = "/calls/0/args";
    let k = f.usize(&format!("{a}/topk"));
    let e = f.usize("/inputs/num_experts");
    let mut cfg = RouterConfig::new(e, k);
    match f.str(&format!("{a}/score_function")) {
        "softmax" => {
            let pre = f.at(&format!("{a}/use_pre_softmax")).as_bool() == Some(true);
            cfg = cfg.with_score(ScoreFn::Softmax).with_renormalize(!pre);
        }
        // Megatron renormalises sigmoid gates only for topk > 1.
        "sigmoid" => cfg = cfg.with_score(ScoreFn::Sigmoid).with_renormalize(k > 1),
        s => panic!("fixture {}: score function {s} not mapped", f.name),
    }
    if let Some(s) = f.opt(&format!("{a}/scaling_factor")) {
        cfg = cfg.with_scale(num(f.name, s));
    }
    if let Some(g) = f.opt(&format!("{a}/num_groups")) {
        let top = f.usize(&format!("{a}/group_topk"));
        cfg = cfg.with_groups(g.as_u64().expect("num_groups") as usize, top);
    }
    if let Some(c) = f.opt("/calls/1/args") {
        assert_eq!(c["drop_policy"].as_str(), Some("probs"), "{}", f.name);
        assert_eq!(c["pad_to_capacity"].as_bool(), Some(false), "{}", f.name);
        let factor = num(f.name, &c["capacity_factor"]);
        cfg = cfg.with_capacity(factor, simbal_core::DropPolicy::Probs);
        assert_eq!(
            cfg.capacity
                .unwrap()
                .per_expert(f.usize("/inputs/num_tokens"), e, k),
            f.usize("/calls/1/expert_capacity"),
            "{}: capacity",
            f.name
        );
    }
    let bias = f
        .opt(&format!("{a}/expert_bias"))
        .map(|b| data_of(f.name, b));
    (cfg, bias)
}

/// The experts of row `t` of a dense 0/1 map.
fn row_set(map: &[f64], e: usize, t: usize) -> Vec<u32> {
    (0..e)
        .filter(|&c| map[t * e + c] != 0.0)
        .map(|c| c as u32)
        .collect()
}

/// Megatron's `topk_routing_with_score_function` (and `apply_router_token_dropping` with the
/// `probs` policy): routing and kept sets, gates, counts and the gate VJP.
pub fn router_maps<B: Backend>(make: &dyn Fn() -> Option<B>) {
    each(make, "oracles::router_maps", ROUTER, |io, f| {
        let t = tol::<B>();
        let name = f.name;
        let (cfg, bias) = router_config(&f);
        let (n, e, k) = (f.usize("/inputs/num_tokens"), cfg.experts, cfg.k);
        assert_eq!(f.shape("/inputs/logits"), [n, e], "{name}");
        let z = ok("upload", up(io, &f.data("/inputs/logits")));
        let bias_buf = ok("upload", up_opt(io, bias.as_deref()));
        let mut router = ok("Router::new", Router::new(fresh(make), cfg));
        let mut pass = ok(
            "forward_logits",
            router.forward_logits(view::<B>(&z), opt_view::<B>(&bias_buf)),
        );
        let fwd = ok("download", read_forward(io, &pass));
        let map = f.data("/outputs/routing_map");
        let capped = f.opt("/outputs/final_map").is_some();
        let (fmap, fprobs, counts) = if capped {
            (
                f.data("/outputs/final_map"),
                f.data("/outputs/final_probs"),
                f.data("/outputs/kept_counts"),
            )
        } else {
            (
                map.clone(),
                f.data("/outputs/routing_probs"),
                f.data("/outputs/routed_counts"),
            )
        };
        let mut want_gates = vec![0.0; n * k];
        let mut dw = vec![0.0; n * k];
        let up_vjp = f.data("/inputs/vjp_upstream");
        for tok in 0..n {
            let row = &fwd.idx[tok * k..(tok + 1) * k];
            let mut got: Vec<u32> = row.to_vec();
            got.sort_unstable();
            assert_eq!(
                got,
                row_set(&map, e, tok),
                "{name}: token {tok}: routed set"
            );
            let mut kept: Vec<u32> = (0..k)
                .filter(|&j| fwd.dropped[tok * k + j] == 0)
                .map(|j| row[j])
                .collect();
            kept.sort_unstable();
            assert_eq!(
                kept,
                row_set(&fmap, e, tok),
                "{name}: token {tok}: kept set"
            );
            for (j, &c) in row.iter().enumerate() {
                want_gates[tok * k + j] = fprobs[tok * e + c as usize];
                dw[tok * k + j] = up_vjp[tok * e + c as usize];
            }
            // Off the map, the oracle's dense probabilities are zero.
            for c in 0..e {
                if fmap[tok * e + c] == 0.0 {
                    assert_eq!(fprobs[tok * e + c], 0.0, "{name}: dense probs off the map");
                }
            }
        }
        let counts: Vec<u32> = counts.iter().map(|&c| c as u32).collect();
        assert_eq!(fwd.counts, counts, "{name}: counts");
        near(&format!("{name}: gates"), &fwd.gates, &want_gates, t);
        let dw = ok("upload", up(io, &dw));
        let g = ok(
            "backward",
            pass.backward(view::<B>(&dw), &LossConfig::none(), None),
        );
        let back = ok("download", read_logit_backward(io, &g));
        let want = f.data("/grads/d_sum(final_probs*vjp_upstream)_d_logits");
        near(&format!("{name}: dZ of the gate VJP"), &back.dz, &want, t);
    });
}
