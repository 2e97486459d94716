//! Statistics and metrics on arbitrary input (see [`crate::harness::fuzz`]): the metrics
//! functions and `orthogonal_init`, merging statistics, and the kernels.

use crate::harness::fuzz::*;
use crate::harness::util::*;
use proptest::prelude::*;
use simbal_core::memory::{idx_view, view};
use simbal_core::metrics::{softmax_rows, Entropy};
use simbal_core::stats::CollectStats;
use simbal_core::{
    orthogonal_init, orthogonality_error, pes, routing_entropy, seu, Backend, LoadMetrics,
    RoutingStats, Scalar, WeightLayout,
};

/// The metrics functions and `orthogonal_init` on arbitrary input.
pub fn metrics<B: Backend>(make: &dyn Fn() -> Option<B>) {
    const NAME: &str = "stats::fuzz::metrics";
    if acquire(make, NAME).is_none() {
        return;
    }
    let strategy = (
        (dim(), dim(), dim(), dim()),
        prop_oneof![Just(WeightLayout::DxE), Just(WeightLayout::ExD)],
        prop::collection::vec(prop_oneof![4 => 0..30u64, 1 => Just(u64::MAX)], 0..=6),
        any::<u64>(),
        pool(),
    );
    run_prop(NAME, CASES, strategy, |input| {
        let ((n, e, k, d), layout, counts, seed, pool) = &input;
        let (n, e, k, d) = (*n, *e, *k, *d);
        let f = Filler::new(pool);
        let p = to_elems::<B::Elem>(&f.vals(mul(n, e)));
        let pf = to_f64(&p);
        if let Ok(h) = guard("routing_entropy", &input, || routing_entropy(n, e, &p))? {
            if all_finite(&pf) {
                must_be_finite("routing_entropy", &input, &[h.to_f64_lossy()])?;
            }
        }
        let idx = f.idx(mul(n, k), e);
        let dropped = f.idx(mul(n, k), 1);
        let seq_len = f.len(Some(n.max(1)));
        if let Ok(v) = guard("seu", &input, || {
            seu(n, k, e, seq_len, &idx, Some(&dropped))
        })? {
            must_be_finite("seu", &input, &[v])?;
        }
        guard("seu without flags", &input, || {
            seu(n, k, e, seq_len, &idx, None)
        })?
        .ok();
        let outs = to_elems::<B::Elem>(&f.vals(mul(e, n).and_then(|x| mul(x, d))));
        if let Ok(v) = guard("pes", &input, || pes(e, n, d, &outs))? {
            if all_finite(&to_f64(&outs)) {
                must_be_finite("pes", &input, &[v.to_f64_lossy()])?;
            }
        }
        let r = to_elems::<B::Elem>(&f.vals(mul(d, e)));
        if let Ok((a, m)) = guard("orthogonality_error", &input, || {
            orthogonality_error(*layout, d, e, &r)
        })? {
            if all_finite(&to_f64(&r)) {
                must_be_finite(
                    "orthogonality_error",
                    &input,
                    &[a.to_f64_lossy(), m.to_f64_lossy()],
                )?;
            }
        }
        let z = to_elems::<B::Elem>(&f.vals(mul(n, e)));
        let mut out = vec![B::Elem::of(0.0); f.len(mul(n, e))];
        if guard("softmax_rows", &input, || softmax_rows(e, &z, &mut out))?.is_ok()
            && all_finite(&to_f64(&z))
        {
            must_be_finite("softmax_rows", &input, &to_f64(&out))?;
        }
        let m = guard("LoadMetrics::from_counts", &input, || {
            LoadMetrics::from_counts(counts)
        })?;
        must_be_finite("LoadMetrics", &input, &[m.max_vio, m.cv, m.load_entropy])?;
        must_be_finite("LoadMetrics fractions", &input, &m.fractions)?;
        // orthogonal_init allocates D x E: only shapes that are small or overflow.
        if mul(d, e).is_none_or(|x| x <= MAX_LEN) {
            if let Ok(w) = guard("orthogonal_init", &input, || {
                orthogonal_init::<B::Elem>(*layout, d, e, *seed)
            })? {
                must_be_finite("orthogonal_init", &input, &to_f64(&w))?;
            }
        }
        Ok(())
    });
}

/// `RoutingStats::merge` and `clear` on arbitrary statistics: counts add saturating.
pub fn merge<B: Backend>(make: &dyn Fn() -> Option<B>) {
    const NAME: &str = "stats::fuzz::merge";
    if acquire(make, NAME).is_none() {
        return;
    }
    run_prop(NAME, CASES, (stats(), stats()), |input| {
        let (s1, s2) = &input;
        let mut a = s1.clone();
        if guard("RoutingStats::merge", &input, || a.merge(s2))?.is_ok() {
            let want: Vec<u64> = s1
                .counts
                .iter()
                .zip(&s2.counts)
                .map(|(x, y)| x.saturating_add(*y))
                .collect();
            same("merged counts (saturating)", &a.counts, &want)?;
        }
        guard("RoutingStats::clear", &input, || a.clear())?;
        Ok(())
    });
}

/// `routing_stats` and `routing_entropy` on arbitrary shapes, lengths and values, through their
/// precondition functions.
pub fn kernels<B: Backend>(make: &dyn Fn() -> Option<B>) {
    const NAME: &str = "stats::fuzz::kernels";
    let Some(b) = acquire(make, NAME) else { return };
    run_prop(NAME, CASES, ((dims(), dim()), pool()), |input| {
        let (((n, _, e), k), pool) = &input;
        let (n, e, k) = (*n, *e, *k);
        let f = Filler::new(pool);
        let p = up(&b, &f.vals(mul(n, e))).ctx("upload")?;
        let counts = b.idx_upload(&f.idx(Some(e), 3)).ctx("idx_upload")?;
        guard("routing_entropy (kernel)", &input, || {
            Entropy {
                n,
                e,
                p: view::<B>(&p),
            }
            .check(&b)
            .and_then(|a| b.routing_entropy(a))
        })?
        .ok();
        // routing_stats into statistics of any size (kept counts of any length: `E` from them).
        let mut st = RoutingStats::empty(f.len(Some(e)).min(8));
        guard("routing_stats", &input, || {
            CollectStats {
                n,
                k,
                p: view::<B>(&p),
                counts: idx_view::<B>(&counts),
                out: &mut st,
            }
            .check(&b)
            .and_then(|a| b.routing_stats(a))
        })?
        .ok();
        Ok(())
    });
}
