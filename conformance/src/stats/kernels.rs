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

/// The routing a statistics kernel reads: indices, dropped flags, the plain top-k (when apart)
/// and the token ids (when masked).
struct Assigned {
    idx: Vec<u32>,
    dropped: Vec<u32>,
    plain: Option<Vec<u32>>,
    ids: Option<Vec<u32>>,
}

/// `routing_stats` into statistics `out` (of `e_out` experts beforehand, holding garbage).
fn stats_run<C: Backend>(
    c: &C,
    (n, k, normalize): (usize, usize, bool),
    p: &[f64],
    a: &Assigned,
    e: usize,
    e_out: usize,
) -> R<RoutingStats> {
    let mut b = Bufs::new(n, e, k, &Zeros(c))?;
    let mut counts = vec![0u32; e];
    for (&i, &d) in a.idx.iter().zip(&a.dropped) {
        if d == 0 {
            counts[i as usize] += 1;
        }
    }
    (b.p, b.counts) = (up(c, p)?, c.idx_upload(&counts)?);
    (b.idx, b.dropped) = (c.idx_upload(&a.idx)?, c.idx_upload(&a.dropped)?);
    if let Some(pl) = &a.plain {
        (b.plain, b.has_plain) = (c.idx_upload(pl)?, true);
    }
    if let Some(ids) = &a.ids {
        (b.ids, b.masked) = (c.idx_upload(ids)?, true);
    }
    b.normalize = normalize;
    b.out = RoutingStats {
        counts: vec![7; e_out],
        routed_counts: vec![5; e_out],
        score_sums: vec![-3.5; e_out],
        tokens: 11,
        dropped: 13,
    };
    call!(c, routing_stats(b.collect()))?;
    Ok(b.out)
}

/// `routing_stats`: kept and routed counts, tokens and dropped assignments exactly, score sums
/// (softmax and sigmoid scores, raw or normalised) to tolerance, with and without a mask,
/// dropped assignments and a plain top-k apart; statistics of another size or holding old
/// values are overwritten, not accumulated.
pub fn routing_stats<B: Backend>(make: &dyn Fn() -> Option<B>) {
    const NAME: &str = "stats::kernels::routing_stats";
    let strategy = (
        gen::shape(gen::Limits { n: 12, d: 1, e: 8 }),
        any::<bool>(),
        select(vec![0usize, 1, 3]),
        (any::<bool>(), any::<bool>(), any::<bool>(), any::<bool>()),
        any::<u64>(),
    );
    kernel_check(make, NAME, strategy, |b, tol, case| {
        let ((n, _, e, k), softmax, e_out, (normalize, drops, plain, masked), seed) = case;
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
        let mut draw = |len: usize, bound: usize| -> Vec<u32> {
            (0..len).map(|_| rng.below(bound) as u32).collect()
        };
        let a = Assigned {
            idx: draw(n * k, e),
            dropped: if drops {
                draw(n * k, 2)
            } else {
                vec![0; n * k]
            },
            plain: plain.then(|| draw(n * k, e)),
            ids: masked.then(|| {
                draw(n, 3)
                    .into_iter()
                    .map(|v| {
                        if v == 0 {
                            simbal_core::tokens::MASKED
                        } else {
                            0
                        }
                    })
                    .collect()
            }),
        };
        let e_out = if e_out == 1 { e } else { e_out };
        let (got, want, want64) = three!(b, stats_run((n, k, normalize), &p, &a, e, e_out));
        vs_refs(&want, &want64, |tag, w| {
            same(&format!("stats counts vs {tag}"), &got.counts, &w.counts)?;
            same(
                &format!("stats routed counts vs {tag}"),
                &got.routed_counts,
                &w.routed_counts,
            )?;
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

fn entropy_run<C: Backend>(c: &C, n: usize, e: usize, p: &[f64], ids: Option<&[u32]>) -> R<f64> {
    let mut b = Bufs::new(n, e, 1, &Zeros(c))?;
    b.p = up(c, p)?;
    if let Some(ids) = ids {
        (b.ids, b.masked) = (c.idx_upload(ids)?, true);
    }
    Ok(call!(c, routing_entropy(b.entropy()))?.to_f64_lossy())
}

/// `routing_entropy` on softmax and sigmoid scores, with and without a mask.
pub fn routing_entropy<B: Backend>(make: &dyn Fn() -> Option<B>) {
    const NAME: &str = "stats::kernels::routing_entropy";
    let strategy = (
        1..=8usize,
        1..=8usize,
        any::<bool>(),
        any::<bool>(),
        any::<u64>(),
    );
    kernel_check(
        make,
        NAME,
        strategy,
        |b, tol, (n, e, softmax, masked, seed)| {
            let mut rng = Rng::new(seed);
            let z = gen::normal(&mut rng, n * e, 2.0);
            let ids: Option<Vec<u32>> = masked.then(|| {
                (0..n)
                    .map(|_| {
                        if rng.below(3) == 0 {
                            simbal_core::tokens::MASKED
                        } else {
                            0
                        }
                    })
                    .collect()
            });
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
            let (got, want, want64) = three!(b, entropy_run(n, e, &p, ids.as_deref()));
            vs_refs(&want, &want64, |tag, w| {
                close1(&format!("routing_entropy vs {tag}"), got, *w, tol)
            })
        },
    );
}
