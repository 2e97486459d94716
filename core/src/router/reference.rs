//! The router: forward (scores, selection, gates, capacity, dispatch plan) and backward
//! (gate gradient to `dZ`), on host slices. Every backend's result is checked against these.

use super::score::{
    lbl_norm_backward_row, lbl_norm_inv, logsumexp_row, score_backward_row, score_row,
    sqrt_softplus_slope_over_p,
};
use super::select::{gates_row, plain_topk_row, renorm_eps, select_row};
use crate::config::{DropPolicy, RouterConfig, ScoreFn};
use crate::scalar::Scalar;

/// Forward row kernel over a block of rows: from logits `z` (`rows x E`) writes scores `p`,
/// indices `idx` and gates `gates` (`rows x k`), and, when given, the plain top-k of the scores
/// alone into `plain` (`rows x k`; the LBL's routed assignments). Rows are independent, so a
/// backend may split the block anywhere.
pub fn route_rows<T: Scalar>(
    cfg: &RouterConfig,
    z: &[T],
    bias: Option<&[T]>,
    p: &mut [T],
    idx: &mut [u32],
    gates: &mut [T],
    mut plain: Option<&mut [u32]>,
) {
    let (e, k) = (cfg.experts, cfg.k);
    for (r, (((zr, pr), ir), wr)) in z
        .chunks_exact(e)
        .zip(p.chunks_exact_mut(e))
        .zip(idx.chunks_exact_mut(k))
        .zip(gates.chunks_exact_mut(k))
        .enumerate()
    {
        score_row(cfg.score, zr, pr);
        select_row(cfg, pr, bias, ir);
        gates_row(cfg, pr, ir, wr);
        if let Some(pl) = plain.as_deref_mut() {
            plain_topk_row(pr, &mut pl[r * k..(r + 1) * k]);
        }
    }
}

/// Total order for capacity dropping under [`DropPolicy::Probs`]: larger gate first, then lower
/// assignment id (= lower token index). NaN gates rank last.
#[inline]
fn gate_order<T: Scalar>(gates: &[T], a: u32, b: u32) -> core::cmp::Ordering {
    let ka = gates[a as usize];
    let kb = gates[b as usize];
    let ka = if ka.is_nan() { T::neg_infinity() } else { ka };
    let kb = if kb.is_nan() { T::neg_infinity() } else { kb };
    kb.partial_cmp(&ka)
        .unwrap_or(core::cmp::Ordering::Equal)
        .then(a.cmp(&b))
}

/// Counting sort of the assignments `t * k + j` with `keep` by expert, stable in token order.
/// Writes `offsets` (`E + 1`) and `order`; uses `counts` (`E`) as cursors and leaves it holding
/// the kept count of each expert.
fn sort_by_expert(
    e: usize,
    idx: &[u32],
    keep: impl Fn(usize) -> bool,
    counts: &mut [u32],
    order: &mut [u32],
    offsets: &mut [u32],
) {
    counts.iter_mut().for_each(|c| *c = 0);
    for (a, &i) in idx.iter().enumerate() {
        if keep(a) {
            counts[i as usize] += 1;
        }
    }
    offsets[0] = 0;
    for x in 0..e {
        offsets[x + 1] = offsets[x] + counts[x];
    }
    counts.copy_from_slice(&offsets[..e]);
    for (a, &i) in idx.iter().enumerate() {
        if keep(a) {
            let c = &mut counts[i as usize];
            order[*c as usize] = a as u32;
            *c += 1;
        }
    }
    for x in 0..e {
        counts[x] = offsets[x + 1] - offsets[x];
    }
}

/// Applies the capacity limit (if configured) and builds the dispatch plan.
///
/// Inputs: `idx` and `gates` (`N x k`) from [`route_rows`]. Outputs: `dropped` flags (`N x k`, 1
/// for a dropped assignment, whose gate is set to 0), `counts` (`E`, kept assignments),
/// `offsets` (`E + 1`) and `order` (`N x k`; the first `offsets[E]` entries are the kept
/// assignment ids `t * k + j`, grouped by expert, in token order within each expert).
pub fn dispatch<T: Scalar>(
    cfg: &RouterConfig,
    n: usize,
    idx: &[u32],
    gates: &mut [T],
    dropped: &mut [u32],
    counts: &mut [u32],
    order: &mut [u32],
    offsets: &mut [u32],
) {
    let (e, k) = (cfg.experts, cfg.k);
    dropped.iter_mut().for_each(|d| *d = 0);
    sort_by_expert(e, idx, |_| true, counts, order, offsets);
    let Some(cap) = cfg.capacity else {
        return;
    };
    let c = cap.per_expert(n, e, k);
    let mut any = false;
    for x in 0..e {
        let seg = &mut order[offsets[x] as usize..offsets[x + 1] as usize];
        if seg.len() <= c {
            continue;
        }
        any = true;
        if cap.policy == DropPolicy::Probs {
            seg.sort_unstable_by(|&a, &b| gate_order(gates, a, b));
        }
        for &a in &seg[c..] {
            dropped[a as usize] = 1;
            gates[a as usize] = T::zero();
        }
    }
    if any {
        sort_by_expert(e, idx, |a| dropped[a] == 0, counts, order, offsets);
    }
}

/// Backward row kernel over a block of rows: writes `dz` (`rows x E`) from the gate gradient `dw`
/// (`rows x k`) and the dense loss terms.
///
/// - Gate part: dropped slots' `dw` count as 0; with renormalisation
///   `dp_{i_j} += (s dw_j - sum_l dw_l w_l) / (sum_l p_{i_l} + eps)`, otherwise `dp_{i_j} += s dw_j`.
/// - The LBL's `dL/dq` row (`E`, its sequence's coefficients, see [`crate::lbl`]) is added to
///   every `dp_e`, through the per-token normalisation `q = p / (sum p + 1e-20)` when
///   `lbl_normalize`.
/// - Score backward, then the z-loss term `z_coef * lse(z_t) * softmax(z_t)` with
///   `z_coef = beta * 2 / N_v`.
///
/// `lbl_coef(r)` gives the coefficient row for block row `r` (`None`: no LBL term, as for a
/// masked token); `valid(r)` whether row `r` is a valid token (a masked one gets no z-loss term).
#[allow(clippy::too_many_arguments)]
pub fn router_backward_rows<'c, T: Scalar>(
    cfg: &RouterConfig,
    z: &[T],
    p: &[T],
    idx: &[u32],
    gates: &[T],
    dropped: &[u32],
    dw: &[T],
    lbl_coef: impl Fn(usize) -> Option<&'c [T]>,
    lbl_normalize: bool,
    z_coef: T,
    valid: impl Fn(usize) -> bool,
    dz: &mut [T],
) {
    let (e, k) = (cfg.experts, cfg.k);
    let s = T::of(cfg.scale);
    for (r, dzr) in dz.chunks_exact_mut(e).enumerate() {
        let zr = &z[r * e..(r + 1) * e];
        let pr = &p[r * e..(r + 1) * e];
        let ir = &idx[r * k..(r + 1) * k];
        let wr = &gates[r * k..(r + 1) * k];
        let dr = &dropped[r * k..(r + 1) * k];
        let gr = &dw[r * k..(r + 1) * k];
        match lbl_coef(r) {
            Some(c) => {
                dzr.copy_from_slice(c);
                if lbl_normalize {
                    lbl_norm_backward_row(pr, lbl_norm_inv(pr), dzr);
                }
            }
            None => dzr.iter_mut().for_each(|v| *v = T::zero()),
        }
        let kept_dw = |j: usize| if dr[j] == 0 { gr[j] } else { T::zero() };
        if !cfg.renormalize {
            for j in 0..k {
                let i = ir[j] as usize;
                dzr[i] = dzr[i] + s * kept_dw(j);
            }
        }
        score_backward_row(cfg.score, pr, dzr);
        if cfg.renormalize {
            // The gate term `g_{i_j} = a_j / denom` (`a_j = s dw_j - sum_l dw_l w_l`) goes
            // through the score backward analytically, with `q_i = p_i / denom <= 1`: `denom`
            // may underflow (saturated sigmoid rows), and `a_j / denom` would then overflow
            // into `inf * 0 = NaN`. Softmax: `dz_c += [c = i_j] a_j q_c - p_c sum_j a_j q_{i_j}`;
            // sigmoid: `dz_{i_j} += a_j q_{i_j} (1 - p_{i_j})`; sqrt-softplus:
            // `dz_{i_j} += a_j q_{i_j} sigmoid(z) / (2 p^2)`.
            let mut sum = T::zero();
            let mut dot = T::zero();
            for j in 0..k {
                sum = sum + pr[ir[j] as usize];
                dot = dot + kept_dw(j) * wr[j];
            }
            let inv = T::one() / (sum + renorm_eps());
            let a = |j: usize| s * kept_dw(j) - dot;
            match cfg.score {
                ScoreFn::Softmax => {
                    let mut m = T::zero();
                    for j in 0..k {
                        m = m + a(j) * (pr[ir[j] as usize] * inv);
                    }
                    for (d, &pc) in dzr.iter_mut().zip(pr) {
                        *d = *d - pc * m;
                    }
                    for j in 0..k {
                        let i = ir[j] as usize;
                        dzr[i] = dzr[i] + a(j) * (pr[i] * inv);
                    }
                }
                ScoreFn::Sigmoid => {
                    for j in 0..k {
                        let i = ir[j] as usize;
                        dzr[i] = dzr[i] + a(j) * (pr[i] * inv) * (T::one() - pr[i]);
                    }
                }
                ScoreFn::SqrtSoftplus => {
                    for j in 0..k {
                        let i = ir[j] as usize;
                        dzr[i] = dzr[i] + a(j) * (pr[i] * inv) * sqrt_softplus_slope_over_p(pr[i]);
                    }
                }
            }
        }
        if z_coef != T::zero() && valid(r) {
            add_z_loss_row(cfg.score, zr, pr, z_coef, dzr);
        }
    }
}

/// Adds `z_coef * lse(z) * softmax(z)` to `dz` (reusing `p` when it already is the softmax).
#[inline]
fn add_z_loss_row<T: Scalar>(score: ScoreFn, z: &[T], p: &[T], z_coef: T, dz: &mut [T]) {
    let lse = logsumexp_row(z);
    let c = z_coef * lse;
    match score {
        ScoreFn::Softmax => {
            for (d, &pi) in dz.iter_mut().zip(p) {
                *d = *d + c * pi;
            }
        }
        ScoreFn::Sigmoid | ScoreFn::SqrtSoftplus => {
            let m = super::score::row_max(z);
            let mut sum = T::zero();
            for &zi in z {
                sum = sum + (zi - m).exp();
            }
            for (d, &zi) in dz.iter_mut().zip(z) {
                *d = *d + c * ((zi - m).exp() / sum);
            }
        }
    }
}
