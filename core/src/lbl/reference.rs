//! Switch / GShard load-balancing loss at micro-batch, sequence and global-batch level.
//!
//! Per group of tokens (the batch, a sequence): `f_e = c_e / (k T_f)`, `P̄_e = S_e / T_p` with
//! `S_e = sum_t p_te`, `L = alpha E sum_e f_e P̄_e`, averaged over the `B` groups; the counts carry
//! no gradient, so `dL/dp_te = alpha E c_e / (k T_f T_p B)` for every token `t` of the group.
//! Micro-batch: `B = 1`, `T_f = T_p = N`. Sequence: `T_f = T_p = T`, `B = N / T`. Global-batch:
//! `B = 1`, `c` and `T_f` from merged statistics, `T_p = N` local. HuggingFace multiplies by `k`.

use crate::config::{LblConfig, LblNormalization};
use crate::scalar::Scalar;

/// Token normalisers of one LBL evaluation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LblScales {
    /// Experts per token `k`.
    pub k: usize,
    /// Tokens behind the counts (`T_f`).
    pub count_tokens: f64,
    /// Tokens behind the score sums (`T_p`).
    pub score_tokens: f64,
    /// Number of groups averaged over (`B`).
    pub groups: usize,
}

/// Overall constant `alpha E` (times `k` under the HuggingFace normalisation).
fn alpha_e(cfg: &LblConfig, e: usize, k: usize) -> f64 {
    let base = cfg.alpha * e as f64;
    match cfg.normalization {
        LblNormalization::Switch => base,
        LblNormalization::HuggingFace => base * k as f64,
    }
}

/// LBL value from per-group counts `counts(b, e)` and score sums `score_sums` (`B x E`), writing
/// the per-group gradient coefficient `dL/dp_te` into `coef` (`B x E`).
pub fn lbl_value_and_coef<T: Scalar>(
    cfg: &LblConfig,
    e: usize,
    s: &LblScales,
    counts: impl Fn(usize) -> f64,
    score_sums: &[T],
    coef: &mut [T],
) -> T {
    let ae = alpha_e(cfg, e, s.k);
    let c_scale = ae / (s.k as f64 * s.count_tokens * s.score_tokens * s.groups as f64);
    let mut loss = T::zero();
    for (be, (co, &sum)) in coef.iter_mut().zip(score_sums).enumerate() {
        let c = T::of(counts(be) * c_scale);
        *co = c;
        loss = loss + c * sum;
    }
    // sum_e coef_e S_e = alpha E / B sum_e f_e P̄_e: the coefficients already hold the scaling.
    loss
}

/// `out[b, c] = sum_{t in group b} a[t, c]` for groups of `group_len` rows of width `cols`.
pub fn group_column_sums<T: Scalar>(cols: usize, group_len: usize, a: &[T], out: &mut [T]) {
    out.iter_mut().for_each(|v| *v = T::zero());
    let rows_per = group_len.max(1);
    for (r, row) in a.chunks_exact(cols.max(1)).enumerate() {
        let b = r / rows_per;
        let o = &mut out[b * cols..(b + 1) * cols];
        for (ov, &x) in o.iter_mut().zip(row) {
            *ov = *ov + x;
        }
    }
}

/// `out[b, e]` = kept assignments of group `b` (of `group_len` tokens) to expert `e`.
pub fn group_counts(
    k: usize,
    e: usize,
    group_len: usize,
    idx: &[u32],
    dropped: &[u32],
    out: &mut [u32],
) {
    out.iter_mut().for_each(|v| *v = 0);
    let per = group_len.saturating_mul(k).max(1);
    for (a, (&i, &d)) in idx.iter().zip(dropped).enumerate() {
        if d == 0 && (i as usize) < e {
            out[(a / per) * e + i as usize] += 1;
        }
    }
}
