//! The LBL's kernels on their own (see [`crate::harness::kernel`]): the per-group reductions and
//! the loss value with its gradient coefficients.

use super::bufs::{Bufs, Shape};
use crate::harness::gen;
use crate::harness::kernel::{call, kernel_check, three, Zeros, R};
use crate::harness::util::*;
use proptest::prelude::*;
use proptest::sample::select;
use simbal_core::lbl::reference::LblScales;
use simbal_core::{Backend, LblConfig, LblLevel, LblNormalization, Rng, Scalar};

fn gcs_run<C: Backend>(c: &C, n: usize, cols: usize, gl: usize, a: &[f64]) -> R<Vec<f64>> {
    let mut b = Bufs::new(
        Shape {
            cols,
            ..Shape::of(n, 1, 1, gl)
        },
        &Zeros(c),
    )?;
    b.a = up(c, a)?;
    call!(c, group_column_sums(b.group_sums()))?;
    down(c, &b.col_sums)
}

fn gc_run<C: Backend>(
    c: &C,
    (n, k, e, gl): (usize, usize, usize, usize),
    idx: &[u32],
    dropped: &[u32],
) -> R<Vec<u32>> {
    let mut b = Bufs::new(Shape::of(n, e, k, gl), &Zeros(c))?;
    (b.idx, b.dropped) = (c.idx_upload(idx)?, c.idx_upload(dropped)?);
    b.counts = c.idx_upload(&vec![9; (n / gl) * e])?;
    call!(c, group_counts(b.group_counts()))?;
    down_idx(c, &b.counts)
}

/// `group_column_sums` and `group_counts` over every divisor of `N` as the group length.
pub fn group_reductions<B: Backend>(make: &dyn Fn() -> Option<B>) {
    const NAME: &str = "lbl::kernels::group_reductions";
    let strategy = gen::shape(gen::Limits { n: 12, d: 1, e: 7 })
        .prop_flat_map(|s| (Just(s), select(gen::divisors(s.0)), any::<u64>()));
    kernel_check(make, NAME, strategy, |b, tol, ((n, _, e, k), gl, seed)| {
        let mut rng = Rng::new(seed);
        let a = rounded::<B::Elem>(&gen::normal(&mut rng, n * e, 1.0));
        let (got, want, want64) = three!(b, gcs_run(n, e, gl, &a));
        vs_refs(&want, &want64, |tag, w| {
            close(&format!("group_column_sums vs {tag}"), &got, w, tol)
        })?;
        let idx: Vec<u32> = (0..n * k).map(|_| rng.below(e) as u32).collect();
        let dropped: Vec<u32> = (0..n * k).map(|_| u32::from(rng.below(4) == 0)).collect();
        let (got, want, want64) = three!(b, gc_run((n, k, e, gl), &idx, &dropped));
        vs_refs(&want, &want64, |tag, w| {
            same(&format!("group_counts vs {tag}"), &got, w)
        })
    });
}

fn lbl_run<C: Backend>(
    c: &C,
    cfg: &LblConfig,
    e: usize,
    s: &LblScales,
    counts: &[u32],
    sums: &[f64],
) -> R<(f64, Vec<f64>)> {
    let mut b = Bufs::new(Shape::of(s.groups, e, s.k, 1), &Zeros(c))?;
    (b.counts, b.sums) = (c.idx_upload(counts)?, up(c, sums)?);
    b.coef = up(c, &vec![f64::NAN; counts.len()])?;
    let value = call!(c, lbl_coefficients(b.coefficients(cfg, *s)))?;
    Ok((value.to_f64_lossy(), down(c, &b.coef)?))
}

/// `lbl_coefficients`: random kept counts (`0..=k T_f` per group and expert) and score sums
/// (`[0, T_p)`) of 1 to 4 groups, both normalisations; the count and score token numbers equal
/// (micro-batch, sequence) or not (global-batch style).
pub fn coefficients<B: Backend>(make: &dyn Fn() -> Option<B>) {
    const NAME: &str = "lbl::kernels::coefficients";
    let strategy = (
        (1..=4usize, 1..=8usize, 1..=8usize),
        1..=12usize,
        prop::option::of(1..=64usize),
        prop_oneof![
            Just(LblNormalization::Switch),
            Just(LblNormalization::HuggingFace)
        ],
        select(vec![0.01, 0.5, 1.0]),
        any::<u64>(),
    );
    kernel_check(make, NAME, strategy, |b, tol, case| {
        let ((groups, e, k), tokens, count_tokens, normalization, alpha, seed) = case;
        let k = k.min(e);
        let tf = count_tokens.unwrap_or(tokens);
        let s = LblScales {
            k,
            count_tokens: tf as f64,
            score_tokens: tokens as f64,
            groups,
        };
        let cfg = LblConfig {
            alpha,
            level: LblLevel::MicroBatch,
            normalization,
        };
        let mut rng = Rng::new(seed);
        let counts: Vec<u32> = (0..groups * e)
            .map(|_| rng.below(k * tf + 1) as u32)
            .collect();
        let sums: Vec<f64> = (0..groups * e)
            .map(|_| rng.uniform() * tokens as f64)
            .collect();
        let sums = rounded::<B::Elem>(&sums);
        let (got, want, want64) = three!(b, lbl_run(&cfg, e, &s, &counts, &sums));
        vs_refs(&want, &want64, |tag, w| {
            close1(&format!("LBL value vs {tag}"), got.0, w.0, tol)?;
            close(&format!("LBL coefficients vs {tag}"), &got.1, &w.1, tol)
        })
    });
}
