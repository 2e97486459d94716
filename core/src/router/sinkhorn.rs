//! Sinkhorn selection (Megatron-Core's `sinkhorn` router type, BASE layers): the experts of each
//! token are the top-k of the Sinkhorn-balanced cost `exp(Z)` over the whole batch; the gates
//! come from the usual scores at those experts. It balances the assignment without a loss; it
//! carries no gradient of its own (the indices are discrete, the gates' gradient is the usual
//! one).
//!
//! Megatron iterates `d0 = 1/N / (C d1)`, `d1 = 1/E / (d0^T C)` from `d0 = d1 = 1` until the
//! mean change of `d1` is at most `tol`, with `eps = 1e-8` in both denominators, and selects the
//! top-k of `d1_e C_te d0_t`. Here `C_te = exp(z_te - max_e z_te)`: a per-token scaling, which
//! `d0_t` absorbs, so the selection is Megatron's for moderate logits and stays finite for
//! logits of any magnitude (Megatron's `exp(z)` overflows past `z = 88` in float32). Ties go to
//! the lower index as everywhere in simbal.

use super::score::score_row;
use super::select::{gates_row, plain_topk_row};
use crate::config::RouterConfig;
use crate::scalar::Scalar;
use alloc::vec;

/// The denominators' guard of Megatron's `sinkhorn` (`eps = 1e-8`).
const EPS: f64 = 1e-8;

/// The Sinkhorn-balanced selection scores `out[t, e] = d1_e C_te d0_t` of the logits `z`
/// (`n x e`), and the number of iterations run.
pub fn sinkhorn_scores<T: Scalar>(
    e: usize,
    z: &[T],
    tol: f64,
    max_iters: usize,
    out: &mut [T],
) -> usize {
    let n = z.len() / e.max(1);
    if n == 0 || e == 0 {
        return 0;
    }
    // The cost, row-scaled (see the module docs), in f64 for the iteration.
    let mut c = vec![0.0f64; n * e];
    for (zr, cr) in z.chunks_exact(e).zip(c.chunks_exact_mut(e)) {
        let m = zr
            .iter()
            .map(|v| v.to_f64_lossy())
            .fold(f64::NEG_INFINITY, f64::max);
        for (ci, &zi) in cr.iter_mut().zip(zr) {
            *ci = num_traits::Float::exp(zi.to_f64_lossy() - m);
        }
    }
    let (mut d0, mut d1) = (vec![1.0f64; n], vec![1.0f64; e]);
    let mut iters = 0;
    while iters < max_iters {
        iters += 1;
        for (t, d) in d0.iter_mut().enumerate() {
            let s: f64 = c[t * e..(t + 1) * e]
                .iter()
                .zip(&d1)
                .map(|(a, b)| a * b)
                .sum();
            *d = 1.0 / n as f64 / (s + EPS);
        }
        let mut change = 0.0;
        for (x, d) in d1.iter_mut().enumerate() {
            let s: f64 = (0..n).map(|t| d0[t] * c[t * e + x]).sum();
            let new = 1.0 / e as f64 / (s + EPS);
            change += num_traits::Float::abs(new - *d);
            *d = new;
        }
        if change / e as f64 <= tol {
            break;
        }
    }
    for (t, row) in out.chunks_exact_mut(e).enumerate() {
        for (x, o) in row.iter_mut().enumerate() {
            *o = T::of(d1[x] * c[t * e + x] * d0[t]);
        }
    }
    iters
}

/// Forward rows of a whole batch under Sinkhorn selection (`tol`, `max_iters`): scores `p`,
/// indices `idx` (the top-k of the balanced scores), gates from `p` at them, and the plain
/// top-k of `p` into `plain` when given.
#[allow(clippy::too_many_arguments)]
pub fn route_sinkhorn<T: Scalar>(
    cfg: &RouterConfig,
    (tol, max_iters): (f64, usize),
    z: &[T],
    p: &mut [T],
    idx: &mut [u32],
    gates: &mut [T],
    mut plain: Option<&mut [u32]>,
) {
    let (e, k) = (cfg.experts, cfg.k);
    let mut balanced = vec![T::zero(); z.len()];
    sinkhorn_scores(e, z, tol, max_iters, &mut balanced);
    for (t, (ir, wr)) in idx
        .chunks_exact_mut(k)
        .zip(gates.chunks_exact_mut(k))
        .enumerate()
    {
        let (zr, pr) = (&z[t * e..(t + 1) * e], &mut p[t * e..(t + 1) * e]);
        score_row(cfg.score, zr, pr);
        if let Some(pl) = plain.as_deref_mut() {
            plain_topk_row(pr, &mut pl[t * k..(t + 1) * k]);
        }
        plain_topk_row(&balanced[t * e..(t + 1) * e], ir);
        gates_row(cfg, pr, ir, wr);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{RouterConfig, Selection};

    #[test]
    fn refuses_what_it_does_not_define() {
        use crate::error::SimbalError;
        use crate::{Reference, Router};
        let bad_tol = Selection::Sinkhorn {
            tol: -1.0,
            max_iters: 5,
        };
        let no_iters = Selection::Sinkhorn {
            tol: 1e-4,
            max_iters: 0,
        };
        for sel in [bad_tol, no_iters] {
            let cfg = RouterConfig::new(4, 1).with_selection(sel);
            assert!(matches!(
                cfg.validate(),
                Err(SimbalError::InvalidCoefficient { .. })
            ));
        }
        let grouped = RouterConfig::new(4, 1)
            .with_groups(2, 1)
            .with_selection(Selection::sinkhorn());
        assert!(matches!(
            grouped.validate(),
            Err(SimbalError::Unsupported { .. })
        ));
        let cfg = RouterConfig::new(2, 1).with_selection(Selection::sinkhorn());
        let mut router = Router::new(Reference::<f64>::new(), cfg).expect("router");
        let (x, r, bias) = (vec![0.5; 2], vec![1.0, -1.0], vec![0.0; 2]);
        assert!(matches!(
            router.forward(&x[..], &r[..], Some(&bias[..])).map(|_| ()),
            Err(SimbalError::Unsupported { .. })
        ));
        assert!(router.forward(&x[..], &r[..], None).is_ok());
    }

    /// Skewed logits: every token prefers expert 0; Sinkhorn spreads them.
    #[test]
    fn balances_a_skewed_batch_and_is_deterministic() {
        let (n, e) = (16, 4);
        let z: alloc::vec::Vec<f64> = (0..n * e)
            .map(|i| {
                if i % e == 0 {
                    3.0
                } else {
                    (i % 7) as f64 * 0.1
                }
            })
            .collect();
        let mut out = vec![0.0; n * e];
        // (The eps guards pin the scale of `d1` only slowly: the change per iteration levels off
        // near 4e-7 here, so a tolerance far below Megatron's 1e-4 would hit the cap.)
        let iters = sinkhorn_scores(e, &z, 1e-6, 10_000, &mut out);
        assert!(iters > 1 && iters < 10_000, "{iters}");
        for x in 0..e {
            let col: f64 = (0..n).map(|t| out[t * e + x]).sum();
            assert!((col - 1.0 / e as f64).abs() < 1e-5, "column {x}: {col}");
        }
        let cfg = RouterConfig::new(e, 1).with_selection(Selection::sinkhorn());
        let (mut p, mut idx, mut g) = (vec![0.0; n * e], vec![0u32; n], vec![0.0; n]);
        route_sinkhorn(&cfg, (1e-4, 100), &z, &mut p, &mut idx, &mut g, None);
        let mut counts = [0usize; 4];
        idx.iter().for_each(|&i| counts[i as usize] += 1);
        assert!(counts.iter().all(|&c| c >= 2), "{counts:?}");
        let (mut idx2, mut g2) = (vec![0u32; n], vec![0.0; n]);
        route_sinkhorn(&cfg, (1e-4, 100), &z, &mut p, &mut idx2, &mut g2, None);
        assert_eq!(idx, idx2);
        // k = 1, renormalised: every gate is 1 (the usual scores at the chosen expert).
        assert!(g.iter().all(|&w| (w - 1.0).abs() < 1e-12));
        // Logits of any magnitude stay finite.
        let big: alloc::vec::Vec<f64> = z.iter().map(|v| v * 1e30).collect();
        sinkhorn_scores(e, &big, 1e-4, 100, &mut out);
        assert!(out.iter().all(|v| v.is_finite()));
    }
}
