//! The statistics' SPEC invariant: merged shard statistics equal the whole batch's (a monoid).

use crate::harness::gen::{self, LossSet};
use crate::harness::util::*;
use proptest::prelude::*;
use simbal_core::memory::view;
use simbal_core::{Backend, LoadMetrics, Rng, Router, RouterConfig, RoutingStats, Scalar};

/// Statistics merged over shards equal those of the whole batch (counts, tokens, dropped
/// exactly; score sums to tolerance); the empty statistics are the identity; merging is
/// order-independent for counts.
pub fn merged_stats<B: Backend>(make: &dyn Fn() -> Option<B>) {
    const NAME: &str = "stats::invariants::merged_stats";
    if acquire(make, NAME).is_none() {
        return;
    }
    let tol = B::Elem::CONFORMANCE_TOL;
    let lim = gen::Limits { n: 12, d: 4, e: 6 };
    let strategy = (gen::case(lim, LossSet::NoSimBal), any::<u64>());
    run_prop(NAME, 32, strategy, |(case, cut_seed)| {
        let cfg = RouterConfig {
            capacity: None, // capacity depends on N: shards would drop differently
            ..case.cfg
        };
        let data = case.data();
        let (n, d, e) = (case.n, case.d, case.e);
        let stats_of = |rows: std::ops::Range<usize>| -> Result<RoutingStats, TestCaseError> {
            let b = fresh(make);
            let x = up(&b, &data.x[rows.start * d..rows.end * d]).ctx("upload")?;
            let r = up(&b, &data.r).ctx("upload")?;
            let bias = up_opt(&b, data.bias.as_deref()).ctx("upload")?;
            let mut router = Router::new(b, cfg).ctx("Router::new")?;
            let pass = router
                .forward(view::<B>(&x), view::<B>(&r), opt_view::<B>(&bias))
                .ctx("forward")?;
            pass.stats().ctx("stats")
        };
        let whole = stats_of(0..n)?;
        let mut rng = Rng::new(cut_seed);
        let mut cuts = vec![0, n];
        for _ in 0..rng.below(4) {
            if n > 1 {
                cuts.push(1 + rng.below(n - 1));
            }
        }
        cuts.sort_unstable();
        cuts.dedup();
        let mut merged = RoutingStats::empty(e);
        let mut shards = Vec::new();
        for w in cuts.windows(2) {
            let s = stats_of(w[0]..w[1])?;
            merged.merge(&s).ctx("merge")?;
            shards.push(s);
        }
        let mut reversed = RoutingStats::empty(e);
        for s in shards.iter().rev() {
            reversed.merge(s).ctx("merge")?;
        }
        same("merged counts", &merged.counts, &whole.counts)?;
        same(
            "merged counts (reverse order)",
            &reversed.counts,
            &whole.counts,
        )?;
        same(
            "merged tokens, dropped",
            &[merged.tokens, merged.dropped],
            &[whole.tokens, whole.dropped],
        )?;
        close(
            "merged score sums",
            &merged.score_sums,
            &whole.score_sums,
            tol,
        )?;
        ensure(
            LoadMetrics::from_counts(&merged.counts) == LoadMetrics::from_counts(&whole.counts),
            || "load metrics of merged statistics differ".into(),
        )?;
        let mut id = RoutingStats::empty(e);
        id.merge(&whole).ctx("merge")?;
        ensure(id == whole, || {
            "empty statistics are not the identity".into()
        })
    });
}
