//! A router's statistics, load metrics and routing entropy against the references (see
//! [`crate::harness::compare`]).

use crate::harness::compare::{data_in, on, reject_near_tie, CASES};
use crate::harness::gen::{self, LossSet};
use crate::harness::run::{self, Forward, Inputs};
use crate::harness::util::*;
use simbal_core::{Backend, Reference, Router, Scalar};

/// Forward from tokens, then the router's statistics, load metrics and routing entropy.
fn forward_and_stats<B: Backend>(
    io: &B,
    r: &mut Router<B>,
    i: &Inputs<B>,
) -> simbal_core::Result<(Forward, run::StatsOf)> {
    r.forward_batch(i.x(), i.r(), i.batch())?;
    Ok((run::read_forward(io, r.routing()?)?, run::stats(r)?))
}

/// `Router::stats` (counts, tokens and dropped exactly, score sums to tolerance),
/// `Router::load_metrics` and `Router::routing_entropy`.
pub fn stats_and_metrics<B: Backend>(make: &dyn Fn() -> Option<B>) {
    const NAME: &str = "stats::agree::stats_and_metrics";
    if acquire(make, NAME).is_none() {
        return;
    }
    let tol = B::Elem::CONFORMANCE_TOL;
    run_prop(NAME, CASES, gen::case(gen::SMALL, LossSet::All), |case| {
        let data = data_in::<B::Elem>(&case);
        let (f64_fwd, f64_stats) = on(Reference::<f64>::new, &case, &data, &forward_and_stats)?;
        reject_near_tie(&case, &data, &f64_fwd, tol)?;
        let (_, want) = on(Reference::<B::Elem>::new, &case, &data, &forward_and_stats)?;
        let (_, got) = on(|| fresh(make), &case, &data, &forward_and_stats)?;
        for (tag, want) in [("reference", &want), ("f64 reference", &f64_stats)] {
            same(
                &format!("stats counts vs {tag}"),
                &got.0.counts,
                &want.0.counts,
            )?;
            same(
                &format!("stats routed counts vs {tag}"),
                &got.0.routed_counts,
                &want.0.routed_counts,
            )?;
            same(
                &format!("stats tokens, dropped vs {tag}"),
                &[got.0.tokens, got.0.dropped],
                &[want.0.tokens, want.0.dropped],
            )?;
            close(
                &format!("stats score sums vs {tag}"),
                &got.0.score_sums,
                &want.0.score_sums,
                tol,
            )?;
            ensure(got.1 == want.1, || {
                format!(
                    "load metrics differ from the {tag}: {:?} vs {:?}",
                    got.1, want.1
                )
            })?;
            close1(&format!("routing entropy vs {tag}"), got.2, want.2, tol)?;
        }
        Ok(())
    });
}
