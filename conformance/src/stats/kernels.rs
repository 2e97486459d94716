//! The statistics and metrics kernels on their own (see [`crate::harness::kernel`]):
//! `routing_stats` (counts exactly, score sums at the SPEC tolerance) and `routing_entropy`.

use super::bufs::Bufs;
use crate::harness::gen;
use crate::harness::kernel::{call, kernel_check, three, Zeros, R};
use crate::harness::util::*;
use proptest::prelude::*;
use proptest::sample::select;
use simbal_core::router::score::score_row;
use simbal_core::{Backend, Rng, RoutingStats, Scalar, ScoreFn};

/// `routing_stats` into statistics `out` (of `e_out` experts beforehand, holding garbage).
fn stats_run<C: Backend>(
    c: &C,
    (n, k): (usize, usize),
    p: &[f64],
    counts: &[u32],
    e_out: usize,
) -> R<RoutingStats> {
    let mut b = Bufs::new(n, counts.len(), k, &Zeros(c))?;
    (b.p, b.counts) = (up(c, p)?, c.idx_upload(counts)?);
    b.out = RoutingStats {
        counts: vec![7; e_out],
        score_sums: vec![-3.5; e_out],
        tokens: 11,
        dropped: 13,
    };
    call!(c, routing_stats(b.collect()))?;
    Ok(b.out)
}

/// `routing_stats`: counts, tokens and dropped assignments exactly, score sums (softmax and
/// sigmoid scores) to tolerance; statistics of another size or holding old values are
/// overwritten, not accumulated.
pub fn routing_stats<B: Backend>(make: &dyn Fn() -> Option<B>) {
    const NAME: &str = "stats::kernels::routing_stats";
    let strategy = (
        gen::shape(gen::Limits { n: 12, d: 1, e: 8 }),
        any::<bool>(),
        select(vec![0usize, 1, 3]),
        any::<u64>(),
    );
    kernel_check(make, NAME, strategy, |b, tol, case| {
        let ((n, _, e, k), softmax, e_out, seed) = case;
        let mut rng = Rng::new(seed);
        let z = gen::normal(&mut rng, n * e, 2.0);
        let score = if softmax {
            ScoreFn::Softmax
        } else {
            ScoreFn::Sigmoid
        };
        let mut p = vec![0.0; n * e];
        for (zr, pr) in z.chunks(e).zip(p.chunks_mut(e)) {
            score_row(score, zr, pr);
        }
        let p = rounded::<B::Elem>(&p);
        // Kept counts of at most n k assignments in all.
        let mut counts = vec![0u32; e];
        for _ in 0..rng.below(n * k + 1) {
            counts[rng.below(e)] += 1;
        }
        let e_out = if e_out == 1 { e } else { e_out };
        let (got, want, want64) = three!(b, stats_run((n, k), &p, &counts, e_out));
        vs_refs(&want, &want64, |tag, w| {
            same(&format!("stats counts vs {tag}"), &got.counts, &w.counts)?;
            same(
                &format!("stats tokens, dropped vs {tag}"),
                &[got.tokens, got.dropped],
                &[w.tokens, w.dropped],
            )?;
            close(
                &format!("stats score sums vs {tag}"),
                &got.score_sums,
                &w.score_sums,
                tol,
            )
        })
    });
}

fn entropy_run<C: Backend>(c: &C, n: usize, e: usize, p: &[f64]) -> R<f64> {
    let mut b = Bufs::new(n, e, 1, &Zeros(c))?;
    b.p = up(c, p)?;
    Ok(call!(c, routing_entropy(b.entropy()))?.to_f64_lossy())
}

/// `routing_entropy` on softmax and sigmoid scores.
pub fn routing_entropy<B: Backend>(make: &dyn Fn() -> Option<B>) {
    const NAME: &str = "stats::kernels::routing_entropy";
    let strategy = (1..=8usize, 1..=8usize, any::<bool>(), any::<u64>());
    kernel_check(make, NAME, strategy, |b, tol, (n, e, softmax, seed)| {
        let z = gen::normal(&mut Rng::new(seed), n * e, 2.0);
        let mut p = vec![0.0; n * e];
        let score = if softmax {
            ScoreFn::Softmax
        } else {
            ScoreFn::Sigmoid
        };
        for (zr, pr) in z.chunks(e).zip(p.chunks_mut(e)) {
            score_row(score, zr, pr);
        }
        let p = rounded::<B::Elem>(&p);
        let (got, want, want64) = three!(b, entropy_run(n, e, &p));
        vs_refs(&want, &want64, |tag, w| {
            close1(&format!("routing_entropy vs {tag}"), got, *w, tol)
        })
    });
}
