//! Megatron-Core's `sinkhorn` router type (`moe_utils.sinkhorn` then the top-k, scores from
//! `sigmoid` for k = 1 and `softmax` otherwise) against simbal's `Selection::Sinkhorn`.

use super::fixture::{each, near, ok, tol};
use super::SINKHORN;
use crate::harness::run::read_forward;
use crate::harness::util::*;
use simbal_core::memory::view;
use simbal_core::{Backend, Router, RouterConfig, ScoreFn, Selection};

/// Per token the chosen set equals `routing_map`'s row, each gate equals the dense `scores` at
/// its expert, the per-expert counts equal `routed_counts`. simbal iterates in f64 on row-scaled
/// costs, Megatron in float32 on `exp(Z)`; the fixtures' logits keep the balanced scores'
/// top-k away from ties, so the selections agree exactly.
pub fn router_sinkhorn<B: Backend>(make: &dyn Fn() -> Option<B>) {
    each(make, "oracles::router_sinkhorn", SINKHORN, |io, f| {
        let (n, e, k) = (
            f.usize("/inputs/num_tokens"),
            f.usize("/inputs/num_experts"),
            f.usize("/inputs/topk"),
        );
        let score = if k == 1 {
            ScoreFn::Sigmoid
        } else {
            ScoreFn::Softmax
        };
        // Megatron has no cap: a large one, the same tolerance.
        let cfg = RouterConfig::new(e, k)
            .with_score(score)
            .with_renormalize(false)
            .with_selection(Selection::Sinkhorn {
                tol: 1e-4,
                max_iters: 100_000,
            });
        let z = rounded::<B::Elem>(&f.data("/inputs/logits"));
        let zb = ok("upload", up(io, &z));
        let mut router = ok("Router::new", Router::new(fresh(make), cfg));
        let pass = ok(
            "forward_logits",
            router.forward_logits(view::<B>(&zb), None),
        );
        let fw = ok("download", read_forward(io, &pass));
        let map = f.data("/outputs/routing_map");
        let scores = f.data("/outputs/scores");
        let mut gates = Vec::new();
        let mut want_gates = Vec::new();
        for t in 0..n {
            let mut got: Vec<u32> = fw.idx[t * k..(t + 1) * k].to_vec();
            got.sort_unstable();
            let want: Vec<u32> = (0..e as u32)
                .filter(|&c| map[t * e + c as usize] != 0.0)
                .collect();
            assert_eq!(got, want, "{}: token {t}: experts", f.name);
            for j in 0..k {
                let i = fw.idx[t * k + j] as usize;
                gates.push(fw.gates[t * k + j]);
                want_gates.push(scores[t * e + i]);
            }
        }
        near(
            &format!("{}: gates", f.name),
            &gates,
            &want_gates,
            tol::<B>(),
        );
        let counts: Vec<u32> = f
            .data("/outputs/routed_counts")
            .iter()
            .map(|&c| c as u32)
            .collect();
        assert_eq!(fw.counts, counts, "{}: counts", f.name);
    });
}
