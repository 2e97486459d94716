//! Statistics and metrics on arbitrary input (see [`crate::harness::fuzz`]): the metrics
//! functions and `orthogonal_init`, merging statistics, and the kernels.

use super::bufs::Bufs;
use crate::harness::fuzz::*;
use crate::harness::kernel::call;
use crate::harness::util::*;
use proptest::prelude::*;
use simbal_core::metrics::softmax_rows;
use simbal_core::{
    orthogonal_init, orthogonality_error, pes, routing_entropy, seu, Backend, LoadMetrics,
    RoutingStats, Scalar, WeightLayout,
};

/// The metrics functions and `orthogonal_init` on arbitrary input.
pub fn metrics<B: Backend>(make: &dyn Fn() -> Option<B>) {
    const NAME: &str = "stats::fuzz::metrics";
    let strategy = (
        (
            (dim(), dim(), dim(), dim()),
            prop_oneof![Just(WeightLayout::DxE), Just(WeightLayout::ExD)],
            prop::collection::vec(prop_oneof![4 => 0..30u64, 1 => Just(u64::MAX)], 0..=6),
            any::<u64>(),
        ),
        pool(),
    );
    fuzz_check(make, NAME, strategy, |cx, input| {
        let ((n, e, k, d), layout, counts, seed) = input;
        let (n, e, k, d, f) = (*n, *e, *k, *d, &cx.f);
        let p = to_elems::<B::Elem>(&f.vals(mul(n, e)));
        let pf = to_f64(&p);
        if let Ok(h) = cx.guard("routing_entropy", || routing_entropy(n, e, &p))? {
            if all_finite(&pf) {
                cx.finite("routing_entropy", &[h.to_f64_lossy()])?;
            }
        }
        let idx = f.idx(mul(n, k), e);
        let dropped = f.idx(mul(n, k), 1);
        let seq_len = f.len(Some(n.max(1)));
        if let Ok(v) = cx.guard("seu", || seu(n, k, e, seq_len, &idx, Some(&dropped)))? {
            cx.finite("seu", &[v])?;
        }
        cx.guard("seu without flags", || seu(n, k, e, seq_len, &idx, None))?
            .ok();
        let outs = to_elems::<B::Elem>(&f.vals(mul(e, n).and_then(|x| mul(x, d))));
        if let Ok(v) = cx.guard("pes", || pes(e, n, d, &outs))? {
            if all_finite(&to_f64(&outs)) {
                cx.finite("pes", &[v.to_f64_lossy()])?;
            }
        }
        let r = to_elems::<B::Elem>(&f.vals(mul(d, e)));
        if let Ok((a, m)) = cx.guard("orthogonality_error", || {
            orthogonality_error(*layout, d, e, &r)
        })? {
            if all_finite(&to_f64(&r)) {
                let v = [a.to_f64_lossy(), m.to_f64_lossy()];
                cx.finite("orthogonality_error", &v)?;
            }
        }
        let z = to_elems::<B::Elem>(&f.vals(mul(n, e)));
        let mut out = vec![B::Elem::of(0.0); f.len(mul(n, e))];
        if cx
            .guard("softmax_rows", || softmax_rows(e, &z, &mut out))?
            .is_ok()
            && all_finite(&to_f64(&z))
        {
            cx.finite("softmax_rows", &to_f64(&out))?;
        }
        let m = cx.guard("LoadMetrics::from_counts", || {
            LoadMetrics::from_counts(counts)
        })?;
        cx.finite("LoadMetrics", &[m.max_vio, m.cv, m.load_entropy])?;
        cx.finite("LoadMetrics fractions", &m.fractions)?;
        // orthogonal_init allocates D x E: only shapes that are small or overflow.
        if mul(d, e).is_none_or(|x| x <= MAX_LEN) {
            if let Ok(w) = cx.guard("orthogonal_init", || {
                orthogonal_init::<B::Elem>(*layout, d, e, *seed)
            })? {
                cx.finite("orthogonal_init", &to_f64(&w))?;
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
    fuzz_check(make, NAME, ((dims(), dim()), pool()), |cx, input| {
        let ((n, _, e), k) = input;
        let b = cx.b;
        let mut bufs = Bufs::new(*n, *e, *k, cx).ctx("upload")?;
        cx.guard("routing_entropy (kernel)", || {
            call!(b, routing_entropy(bufs.entropy()))
        })?
        .ok();
        // routing_stats into statistics of any size (kept counts of any length: `E` from them).
        bufs.out = RoutingStats::empty(cx.f.len(Some(*e)).min(8));
        cx.guard("routing_stats", || call!(b, routing_stats(bufs.collect())))?
            .ok();
        Ok(())
    });
}
