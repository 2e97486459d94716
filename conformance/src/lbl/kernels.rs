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

fn gcs_run<C: Backend>(c: &C, shape: Shape, ids: &[u32], a: &[f64]) -> R<Vec<f64>> {
    let mut b = Bufs::new(shape, &Zeros(c))?;
    b.a = up(c, a)?;
    b.ids = c.idx_upload(ids)?;
    call!(c, group_column_sums(b.group_sums()))?;
    down(c, &b.col_sums)
}

fn gc_run<C: Backend>(
    c: &C,
    shape: Shape,
    ids: &[u32],
    idx: &[u32],
    dropped: &[u32],
) -> R<Vec<u32>> {
    let mut b = Bufs::new(shape, &Zeros(c))?;
    (b.idx, b.dropped) = (c.idx_upload(idx)?, c.idx_upload(dropped)?);
    b.ids = c.idx_upload(ids)?;
    b.counts = c.idx_upload(&vec![9; shape.groups() * shape.e])?;
    call!(c, group_counts(b.group_counts()))?;
    down_idx(c, &b.counts)
}

/// `group_column_sums` and `group_counts` over every divisor of `N` as the group length, and
/// over per-token group ids with masked tokens; sums of raw and per-row normalised rows
/// (positive rows, as scores are), counts of kept or of all assignments.
pub fn group_reductions<B: Backend>(make: &dyn Fn() -> Option<B>) {
    const NAME: &str = "lbl::kernels::group_reductions";
    let strategy = gen::shape(gen::Limits { n: 12, d: 1, e: 7 }).prop_flat_map(|s| {
        (
            Just(s),
            select(gen::divisors(s.0)),
            prop::option::of(1..=4usize),
            any::<bool>(),
            any::<bool>(),
            any::<u64>(),
        )
    });
    kernel_check(make, NAME, strategy, |b, tol, case| {
        let ((n, _, e, k), gl, id_groups, normalize, all_assignments, seed) = case;
        let mut rng = Rng::new(seed);
        let shape = Shape {
            id_groups,
            normalize,
            all_assignments,
            ..Shape::of(n, e, k, gl)
        };
        let ids: Vec<u32> = (0..n)
            .map(|_| match id_groups {
                Some(g) if rng.below(4) != 0 => rng.below(g) as u32,
                Some(_) => simbal_core::tokens::MASKED,
                None => 0,
            })
            .collect();
        let a: Vec<f64> = gen::normal(&mut rng, n * e, 1.0)
            .iter()
            .map(|v| v.abs())
            .collect();
        let a = rounded::<B::Elem>(&a);
        let (got, want, want64) = three!(b, gcs_run(shape, &ids, &a));
        vs_refs(&want, &want64, |tag, w| {
            close(&format!("group_column_sums vs {tag}"), &got, w, tol)
        })?;
        let idx: Vec<u32> = (0..n * k).map(|_| rng.below(e) as u32).collect();
        let dropped: Vec<u32> = (0..n * k).map(|_| u32::from(rng.below(4) == 0)).collect();
        let (got, want, want64) = three!(b, gc_run(shape, &ids, &idx, &dropped));
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
    tokens: (usize, Option<&[u32]>),
    counts: &[u32],
    sums: &[f64],
) -> R<(f64, Vec<f64>)> {
    let shape = Shape {
        id_groups: tokens.1.map(|_| s.groups),
        ..Shape::of(s.groups * tokens.0, e, s.k, tokens.0)
    };
    let mut b = Bufs::new(shape, &Zeros(c))?;
    if let Some(t) = tokens.1 {
        b.tokens = c.idx_upload(t)?;
    }
    (b.counts, b.sums) = (c.idx_upload(counts)?, up(c, sums)?);
    b.coef = up(c, &vec![f64::NAN; counts.len()])?;
    let value = call!(c, lbl_coefficients(b.coefficients(cfg, *s)))?;
    Ok((c.read_value(&value)?.to_f64_lossy(), down(c, &b.coef)?))
}

/// `lbl_coefficients`: random counts (`0..=k T` per group and expert) and score sums
/// (`[0, T)`) of 1 to 4 groups of `T` tokens each, or of per-group valid tokens (some 0:
/// skipped groups), both normalisations, a shard factor.
pub fn coefficients<B: Backend>(make: &dyn Fn() -> Option<B>) {
    const NAME: &str = "lbl::kernels::coefficients";
    let strategy = (
        (1..=4usize, 1..=8usize, 1..=8usize),
        1..=12usize,
        any::<bool>(),
        prop_oneof![
            Just(LblNormalization::Switch),
            Just(LblNormalization::HuggingFace)
        ],
        select(vec![0.01, 0.5, 1.0]),
        any::<u64>(),
    );
    kernel_check(make, NAME, strategy, |b, tol, case| {
        let ((groups, e, k), tokens, per_group, normalization, alpha, seed) = case;
        let k = k.min(e);
        let mut rng = Rng::new(seed);
        let s = LblScales {
            k,
            groups,
            factor: [1.0, 3.0][rng.below(2)],
        };
        let cfg = LblConfig {
            alpha,
            level: LblLevel::MicroBatch,
            normalization,
            ..LblConfig::default()
        };
        let valid: Vec<u32> = (0..groups).map(|_| rng.below(tokens + 1) as u32).collect();
        let per = |g: usize| if per_group { valid[g] as usize } else { tokens };
        let counts: Vec<u32> = (0..groups * e)
            .map(|i| rng.below(k * per(i / e) + 1) as u32)
            .collect();
        let sums: Vec<f64> = (0..groups * e)
            .map(|i| rng.uniform() * per(i / e) as f64)
            .collect();
        let sums = rounded::<B::Elem>(&sums);
        let t = (tokens, per_group.then_some(&valid[..]));
        let (got, want, want64) = three!(b, lbl_run(&cfg, e, &s, t, &counts, &sums));
        vs_refs(&want, &want64, |tag, w| {
            close1(&format!("LBL value vs {tag}"), got.0, w.0, tol)?;
            close(&format!("LBL coefficients vs {tag}"), &got.1, &w.1, tol)
        })
    });
}
