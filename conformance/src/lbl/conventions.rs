//! The field's conventions as properties (SPEC "Token mask", "Global-batch"): a masked batch
//! equals the batch of its valid tokens, and the global-batch LBL of shards sums to the LBL of
//! the whole batch (with the running estimate of gradient accumulation as its formula says).

use crate::harness::gen::{self, Case, Data, LossSet};
use crate::harness::run::{self, Backward};
use crate::harness::util::*;
use proptest::prelude::*;
use simbal_core::{
    Backend, LblConfig, LblLevel, LossConfig, RoutingStats, Scalar, SeqLayout, ZLossConfig,
};

/// Tolerance of the exactness properties: 1e-12 in `f64` (the bound), the SPEC's
/// otherwise.
fn exact_tol<T: Scalar>() -> f64 {
    if T::CONFORMANCE_TOL <= 1e-10 {
        1e-12
    } else {
        T::CONFORMANCE_TOL
    }
}

/// The rows of `v` (width `w`) at `rows`.
fn pick(v: &[f64], w: usize, rows: &[usize]) -> Vec<f64> {
    rows.iter()
        .flat_map(|&t| v[t * w..(t + 1) * w].to_vec())
        .collect()
}

/// One forward and backward of `case` on `data`; the pass's statistics with it.
fn run_case<B: Backend>(
    make: &dyn Fn() -> Option<B>,
    case: &Case,
    data: &Data,
    global: Option<&RoutingStats>,
) -> Result<(Backward, RoutingStats), TestCaseError> {
    run::with_pass(make, case.cfg, data, |io, inp, mut pass| {
        let stats = pass.stats().ctx("stats")?;
        let g = pass
            .backward(inp.dw(), &case.losses, global)
            .ctx("backward")?;
        Ok((run::read_backward(io, &g).ctx("read")?, stats))
    })
}

/// A masked batch equals its compacted valid tokens: LBL (micro-batch, or per batch-major
/// sequence, whose compacted form is packed) and z-loss values, `dZ` and `dX` of the valid
/// tokens, `dR` and the statistics (counts exactly); masked tokens with a zero gate gradient
/// get exactly zero gradient, and moving their inputs changes no loss value and no `dR`. No
/// capacity (masked tokens still take capacity, by the SPEC).
pub fn masked_equals_compacted<B: Backend>(make: &dyn Fn() -> Option<B>) {
    const NAME: &str = "lbl::conventions::masked_equals_compacted";
    if acquire(make, NAME).is_none() {
        return;
    }
    let tol = B::Elem::CONFORMANCE_TOL;
    let strategy = (gen::case(gen::SMALL, LossSet::All), any::<bool>());
    run_prop(NAME, 48, strategy, |(case, per_sequence)| {
        let mut case = Case { mask: true, ..case };
        // Capacity and Sinkhorn selection couple the tokens (masked ones included, by the SPEC).
        case.cfg.capacity = None;
        case.cfg.selection = simbal_core::Selection::TopK;
        let seq_len = if per_sequence {
            let d = gen::divisors(case.n);
            d[(case.seed as usize) % d.len()]
        } else {
            case.n
        };
        let lbl = LblConfig {
            level: if per_sequence {
                LblLevel::sequences(seq_len)
            } else {
                LblLevel::MicroBatch
            },
            ..case.losses.lbl.unwrap_or_default()
        };
        case.losses = LossConfig {
            lbl: Some(lbl),
            z_loss: Some(ZLossConfig { beta: 0.1 }),
            ..case.losses
        };
        let mut data = case.data();
        let mask = data.mask.clone().unwrap_or_default();
        let valid: Vec<usize> = (0..case.n).filter(|&t| mask[t] == 1).collect();
        prop_assume!(!valid.is_empty());
        let (n, d, e, k) = (case.n, case.d, case.e, case.k);
        for t in (0..n).filter(|&t| mask[t] == 0) {
            data.dw[t * k..(t + 1) * k]
                .iter_mut()
                .for_each(|v| *v = 0.0);
        }
        let data = Data {
            x: rounded::<B::Elem>(&data.x),
            r: rounded::<B::Elem>(&data.r),
            dw: rounded::<B::Elem>(&data.dw),
            ..data
        };
        // The compacted batch: valid tokens only; its sequences are the non-empty ones, packed.
        let mut offsets = vec![0u32];
        for s in 0..n / seq_len {
            let c = valid.iter().filter(|&&t| t / seq_len == s).count() as u32;
            if c > 0 {
                offsets.push(offsets.last().copied().unwrap_or(0) + c);
            }
        }
        let nv = valid.len();
        let compact_case = Case {
            n: nv,
            mask: false,
            losses: LossConfig {
                lbl: Some(LblConfig {
                    level: if per_sequence {
                        LblLevel::Sequence(SeqLayout::Packed)
                    } else {
                        LblLevel::MicroBatch
                    },
                    ..lbl
                }),
                ..case.losses
            },
            ..case.clone()
        };
        let compact = Data {
            x: pick(&data.x, d, &valid),
            z: pick(&data.z, e, &valid),
            dw: pick(&data.dw, k, &valid),
            mask: None,
            offsets: per_sequence.then_some(offsets),
            ..data.clone()
        };
        let (masked, ms) = run_case(make, &case, &data, None)?;
        let (want, ws) = run_case(make, &compact_case, &compact, None)?;
        // Changing a masked token's input changes no loss and no valid token's gradient.
        let mut moved = data.clone();
        for t in (0..n).filter(|&t| mask[t] == 0) {
            moved.x[t * d..(t + 1) * d]
                .iter_mut()
                .for_each(|v| *v = -3.0 * *v + 0.5);
        }
        let moved = Data {
            x: rounded::<B::Elem>(&moved.x),
            ..moved
        };
        let (other, _) = run_case(make, &case, &moved, None)?;
        for (i, name) in ["SimBal", "LBL", "z-loss", "total"].iter().enumerate() {
            close1(
                &format!("{name} value, masked inputs moved"),
                other.losses[i],
                masked.losses[i],
                tol,
            )?;
        }
        close("dR, masked inputs moved", &other.dr, &masked.dr, tol)?;
        let names = ["SimBal", "LBL", "z-loss", "total"];
        for (i, name) in names.iter().enumerate() {
            close1(
                &format!("{name} value"),
                masked.losses[i],
                want.losses[i],
                tol,
            )?;
        }
        close(
            "dZ of the valid tokens",
            &pick(&masked.dz, e, &valid),
            &want.dz,
            tol,
        )?;
        close(
            "dX of the valid tokens",
            &pick(&masked.dx, d, &valid),
            &want.dx,
            tol,
        )?;
        close("dR", &masked.dr, &want.dr, tol)?;
        for t in (0..n).filter(|&t| mask[t] == 0) {
            let zero = |v: &[f64], w: usize| v[t * w..(t + 1) * w].iter().all(|&x| x == 0.0);
            ensure(zero(&masked.dz, e) && zero(&masked.dx, d), || {
                format!("masked token {t} got a gradient")
            })?;
        }
        same("kept counts", &ms.counts, &ws.counts)?;
        same("routed counts", &ms.routed_counts, &ws.routed_counts)?;
        same(
            "valid tokens",
            &[ms.tokens, ms.dropped],
            &[ws.tokens, ws.dropped],
        )?;
        close("score sums", &ms.score_sums, &ws.score_sums, tol)
    });
}

/// Global-batch LBL is exact: one batch split into 3 ranks x 2 micro-batches, each shard's
/// backward with the merged statistics of all six; the shards' values sum to the whole batch's
/// micro-batch LBL, their `dR` sum to its `dR`, their `dX` rows are its rows (with a token
/// mask); with the shard factor `R M = 6` the values average to it. Then the running estimate:
/// a shard's value with the statistics merged so far is `alpha E sum_e f_e S_e / N` with `f`
/// and `N` from those statistics and `S` its own score sums.
pub fn global_batch_is_exact<B: Backend>(make: &dyn Fn() -> Option<B>) {
    const NAME: &str = "lbl::conventions::global_batch_is_exact";
    if acquire(make, NAME).is_none() {
        return;
    }
    let tol = exact_tol::<B::Elem>();
    let strategy = (
        gen::case(gen::Limits { n: 1, d: 4, e: 6 }, LossSet::NoSimBal),
        1..=3usize,
        any::<bool>(),
    );
    run_prop(NAME, 32, strategy, |(case, per_shard, masked)| {
        let shards = 6;
        let n = shards * per_shard;
        let mut case = Case {
            n,
            mask: masked,
            ..case
        };
        // Capacity and Sinkhorn selection depend on the micro-batch, not only on the token.
        case.cfg.capacity = None;
        case.cfg.selection = simbal_core::Selection::TopK;
        let lbl = LblConfig {
            shard_factor: 1.0,
            ..case.losses.lbl.unwrap_or_default()
        };
        let whole = Case {
            losses: LossConfig::none().with_lbl(LblConfig {
                level: LblLevel::MicroBatch,
                ..lbl
            }),
            ..case.clone()
        };
        let data = case.data();
        let data = Data {
            x: rounded::<B::Elem>(&data.x),
            r: rounded::<B::Elem>(&data.r),
            dw: vec![0.0; n * case.k],
            ..data
        };
        let (full, full_stats) = run_case(make, &whole, &data, None)?;
        prop_assume!(full_stats.tokens > 0);
        let (d, e) = (case.d, case.e);
        let shard_data = |s: usize| {
            let rows: Vec<usize> = (s * per_shard..(s + 1) * per_shard).collect();
            Data {
                x: pick(&data.x, d, &rows),
                z: pick(&data.z, e, &rows),
                dw: vec![0.0; per_shard * case.k],
                mask: data
                    .mask
                    .as_ref()
                    .map(|m| rows.iter().map(|&t| m[t]).collect()),
                offsets: None,
                ..data.clone()
            }
        };
        let shard_case = |level, factor| Case {
            n: per_shard,
            losses: LossConfig::none().with_lbl(LblConfig {
                level,
                shard_factor: factor,
                ..lbl
            }),
            ..case.clone()
        };
        // Shard `s` with the LBL `level` and `shard_factor`, the all-reduced statistics `global`.
        let run_shard = |s: usize, level, factor, global: Option<&RoutingStats>| {
            run_case(make, &shard_case(level, factor), &shard_data(s), global)
        };
        // Forward every shard first: the statistics all-reduced after the forward.
        let mut merged = RoutingStats::empty(e);
        let mut own = Vec::new();
        for s in 0..shards {
            let (_, st) = run_shard(s, LblLevel::MicroBatch, 1.0, None)?;
            merged.merge(&st).ctx("merge")?;
            own.push(st);
        }
        same("merged counts", &merged.counts, &full_stats.counts)?;
        same(
            "merged routed counts",
            &merged.routed_counts,
            &full_stats.routed_counts,
        )?;
        let (mut value, mut averaged) = (0.0, 0.0);
        let mut dr = vec![0.0; full.dr.len()];
        let mut dx = Vec::new();
        for s in 0..shards {
            let (g, _) = run_shard(s, LblLevel::GlobalBatch, 1.0, Some(&merged))?;
            value += g.losses[1];
            dr.iter_mut().zip(&g.dr).for_each(|(a, b)| *a += b);
            dx.extend(g.dx);
            let (avg, _) = run_shard(s, LblLevel::GlobalBatch, shards as f64, Some(&merged))?;
            averaged += avg.losses[1] / shards as f64;
        }
        close1("sum of the shards' LBL", value, full.losses[1], tol)?;
        close1(
            "mean of the shards' LBL x R M",
            averaged,
            full.losses[1],
            tol,
        )?;
        close("sum of the shards' dR", &dr, &full.dr, tol)?;
        close("the shards' dX rows", &dx, &full.dx, tol)?;
        // The running estimate: statistics merged up to and including this micro-batch.
        let mut so_far = RoutingStats::empty(e);
        for (s, st) in own.iter().enumerate() {
            so_far.merge(st).ctx("merge")?;
            if so_far.tokens == 0 {
                continue;
            }
            let (g, _) = run_shard(s, LblLevel::GlobalBatch, 1.0, Some(&so_far))?;
            let (nt, k) = (so_far.tokens as f64, case.k as f64);
            let hf = lbl.normalization == simbal_core::LblNormalization::HuggingFace;
            let counts = so_far.lbl_counts(lbl.counts);
            let want: f64 = (0..e)
                .map(|x| {
                    let f = counts[x] as f64 / (k * nt) * if hf { k } else { 1.0 };
                    lbl.alpha * e as f64 * f * st.score_sums[x] / nt
                })
                .sum();
            // The formula's score sums are the shard's own LBL scores (its statistics).
            let raw =
                lbl.scores == simbal_core::LblScores::Raw && !case.cfg.score.is_distribution();
            if !raw {
                close1(
                    &format!("running estimate after micro-batch {s}"),
                    g.losses[1],
                    want,
                    B::Elem::CONFORMANCE_TOL,
                )?;
            }
        }
        Ok(())
    });
}
