//! The LBL's SPEC invariants: `alpha` at perfect balance at every level, and the levels agreeing
//! where they must.

use crate::harness::gen::{self, LossSet};
use crate::harness::run;
use crate::harness::util::*;
use proptest::prelude::*;
use simbal_core::memory::view;
use simbal_core::{
    Backend, LblConfig, LblLevel, LblNormalization, LossConfig, Router, RouterConfig, RoutingStats,
    Scalar,
};

/// A perfectly balanced routing on the logits path: `N = m E` tokens, token `t` prefers experts
/// `t, t+1, ..., t+k-1 (mod E)` with distinct logits; every expert gets `m k` assignments and
/// (softmax, by the cyclic symmetry) mean score `1/E`.
fn balanced_logits(e: usize, k: usize, m: usize) -> Vec<f64> {
    let n = m * e;
    let mut z = vec![0.0; n * e];
    for t in 0..n {
        for j in 0..k {
            z[t * e + (t + j) % e] = 3.0 - 0.5 * j as f64;
        }
    }
    z
}

/// LBL equals `alpha` at perfect balance (`k alpha` under HuggingFace), at micro-batch,
/// sequence (each sequence balanced) and global-batch (merged statistics balanced) level.
pub fn alpha_at_balance<B: Backend>(make: &dyn Fn() -> Option<B>) {
    const NAME: &str = "lbl::invariants::alpha_at_balance";
    if acquire(make, NAME).is_none() {
        return;
    }
    let tol = B::Elem::CONFORMANCE_TOL;
    for &(e, k) in &[(1, 1), (2, 1), (4, 2), (5, 3), (6, 6)] {
        for renorm in [true, false] {
            let m = 2;
            let n = m * e;
            let cfg = RouterConfig::new(e, k).with_renormalize(renorm);
            let io = fresh(make);
            let z = up(&io, &balanced_logits(e, k, m)).expect("upload");
            let dw = up(&io, &vec![0.0; n * k]).expect("upload");
            let mut router = Router::new(fresh(make), cfg).expect("Router::new");
            let mut pass = router
                .forward_logits(view::<B>(&z), None)
                .expect("forward_logits");
            let counts = down_idx(&io, pass.counts()).unwrap();
            assert!(
                counts.iter().all(|&c| c as usize == m * k),
                "{NAME}: the designed routing is not balanced: {counts:?}"
            );
            let mut own = RoutingStats::default();
            pass.stats_into(&mut own).expect("stats");
            for normalization in [LblNormalization::Switch, LblNormalization::HuggingFace] {
                for level in [
                    LblLevel::MicroBatch,
                    LblLevel::sequences(e),
                    LblLevel::sequences(n),
                    LblLevel::GlobalBatch,
                ] {
                    let alpha = 0.37;
                    let lc = LblConfig {
                        alpha,
                        level,
                        normalization,
                        ..LblConfig::default()
                    };
                    let v = pass
                        .backward(view::<B>(&dw), &LossConfig::none().with_lbl(lc), Some(&own))
                        .unwrap_or_else(|err| panic!("{NAME}: {lc:?}: {err:?}"))
                        .losses;
                    let want = match normalization {
                        LblNormalization::Switch => alpha,
                        LblNormalization::HuggingFace => alpha * k as f64,
                    };
                    let got = v.lbl.to_f64_lossy();
                    assert!(
                        (got - want).abs() <= tol * want.max(1.0),
                        "{NAME}: E={e} k={k} renorm={renorm} {lc:?}: LBL {got}, want {want}"
                    );
                    assert_eq!(v.total, v.lbl, "{NAME}: total must equal the only loss");
                }
            }
        }
    }
}

/// Sequence-level LBL with one sequence (`seq_len = N`) equals micro-batch LBL, and global-batch
/// LBL from the batch's own statistics equals micro-batch LBL (values and `dZ`).
pub fn levels_agree<B: Backend>(make: &dyn Fn() -> Option<B>) {
    const NAME: &str = "lbl::invariants::levels_agree";
    if acquire(make, NAME).is_none() {
        return;
    }
    let tol = B::Elem::CONFORMANCE_TOL;
    run_prop(NAME, 32, gen::case(gen::SMALL, LossSet::NoSimBal), |case| {
        run::with_pass(make, case.cfg, &case.data(), |io, inp, mut pass| {
            let own = pass.stats().ctx("stats")?;
            // The case's scores, counts and normalisation; the shard factor 1 (own statistics).
            let base = LblConfig {
                shard_factor: 1.0,
                ..case.losses.lbl.unwrap_or_default()
            };
            let mut run_level = |level| -> Result<(f64, Vec<f64>), TestCaseError> {
                let lc = LblConfig {
                    alpha: 0.3,
                    level,
                    ..base
                };
                let g = pass
                    .backward(inp.dw(), &LossConfig::none().with_lbl(lc), Some(&own))
                    .ctx("backward")?;
                Ok((g.losses.lbl.to_f64_lossy(), down(io, g.dz).ctx("dz")?))
            };
            let micro = run_level(LblLevel::MicroBatch)?;
            let seq = run_level(LblLevel::sequences(case.n))?;
            close1("sequence (B = 1) vs micro-batch LBL", seq.0, micro.0, tol)?;
            close("sequence (B = 1) vs micro-batch dZ", &seq.1, &micro.1, tol)?;
            if own.tokens == 0 {
                // Every token masked: merged statistics of no token are an error (SPEC).
                let lc = LossConfig::none().with_lbl(LblConfig {
                    level: LblLevel::GlobalBatch,
                    ..base
                });
                return match pass.backward(inp.dw(), &lc, Some(&own)) {
                    Err(simbal_core::SimbalError::MissingGlobalStats) => Ok(()),
                    other => Err(TestCaseError::fail(format!(
                        "global-batch LBL over no valid token: {:?}",
                        other.map(|g| g.losses)
                    ))),
                };
            }
            let global = run_level(LblLevel::GlobalBatch)?;
            close1(
                "global (own stats) vs micro-batch LBL",
                global.0,
                micro.0,
                tol,
            )?;
            close(
                "global (own stats) vs micro-batch dZ",
                &global.1,
                &micro.1,
                tol,
            )
        })
    });
}
