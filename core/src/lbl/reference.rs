//! Switch / GShard load-balancing loss at micro-batch, sequence and global-batch level.
//!
//! Per group of tokens (the batch, a sequence) with `N_b` valid tokens: `f_e = c_e / (k N_b)`,
//! `P̄_e = S_e / N_b` with `S_e = sum_{valid t} q_te`, `L = alpha E sum_e f_e P̄_e`, averaged over
//! the `B'` groups that have a valid token (an empty group is skipped); the counts carry no
//! gradient, so `dL/dq_te = alpha E c_e / (k N_b^2 B')` for every valid token `t` of group `b`.
//! Global-batch: one group, `c` and `N` from the merged statistics of the whole global batch,
//! `S_e` the shard's own, times the shard factor. HuggingFace multiplies by `k`.

use crate::config::{LblConfig, LblNormalization};
use crate::router::score::lbl_norm_inv;
use crate::scalar::Scalar;
use crate::tokens::HostGroups;

/// Constants of one LBL evaluation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LblScales {
    /// Experts per token `k`.
    pub k: usize,
    /// Number of groups (`B`).
    pub groups: usize,
    /// Factor on the value and the coefficients (the global-batch shard factor; 1 otherwise).
    pub factor: f64,
}

/// Overall constant `alpha E` (times `k` under the HuggingFace normalisation).
fn alpha_e(cfg: &LblConfig, e: usize, k: usize) -> f64 {
    let base = cfg.alpha * e as f64;
    match cfg.normalization {
        LblNormalization::Switch => base,
        LblNormalization::HuggingFace => base * k as f64,
    }
}

/// LBL value from per-group counts `counts(b * E + e)`, valid tokens `tokens(b)` and score sums
/// `score_sums` (`B x E`), writing the per-group gradient coefficient `dL/dq_te` into `coef`
/// (`B x E`; 0 for a group with no valid token). No valid token at all: 0 and zero
/// coefficients.
pub fn lbl_value_and_coef<T: Scalar>(
    cfg: &LblConfig,
    e: usize,
    s: &LblScales,
    tokens: impl Fn(usize) -> f64,
    counts: impl Fn(usize) -> f64,
    score_sums: &[T],
    coef: &mut [T],
) -> T {
    let ae = alpha_e(cfg, e, s.k) * s.factor;
    let live = (0..s.groups).filter(|&b| tokens(b) > 0.0).count();
    let mut loss = T::zero();
    for b in 0..s.groups {
        let nb = tokens(b);
        let scale = if nb > 0.0 {
            ae / (s.k as f64 * nb * nb * live as f64)
        } else {
            0.0
        };
        let row = b * e..(b + 1) * e;
        for ((be, co), &sum) in row
            .clone()
            .zip(&mut coef[row.clone()])
            .zip(&score_sums[row])
        {
            let c = T::of(counts(be) * scale);
            *co = c;
            loss = loss + c * sum;
        }
    }
    // sum_e coef_e S_e = alpha E / B' sum_e f_e P̄_e: the coefficients already hold the scaling.
    loss
}

/// `out[b, c] = sum_{valid t in group b} a[t, c]` (each row `a_t` normalised to
/// `a_t / (sum a_t + 1e-20)` first when `normalize`) for rows of width `cols`.
pub fn group_column_sums<T: Scalar>(
    cols: usize,
    groups: HostGroups<'_>,
    normalize: bool,
    a: &[T],
    out: &mut [T],
) {
    out.iter_mut().for_each(|v| *v = T::zero());
    for (t, row) in a.chunks_exact(cols.max(1)).enumerate() {
        let Some(b) = groups.group_of(t) else {
            continue;
        };
        let inv = if normalize {
            lbl_norm_inv(row)
        } else {
            T::one()
        };
        let o = &mut out[b * cols..(b + 1) * cols];
        for (ov, &x) in o.iter_mut().zip(row) {
            *ov = *ov + if normalize { x * inv } else { x };
        }
    }
}

/// `out[b, e]` = assignments of the valid tokens of group `b` to expert `e`: every assignment,
/// or with `dropped` only the kept ones.
pub fn group_counts(
    k: usize,
    e: usize,
    groups: HostGroups<'_>,
    idx: &[u32],
    dropped: Option<&[u32]>,
    out: &mut [u32],
) {
    out.iter_mut().for_each(|v| *v = 0);
    for (a, &i) in idx.iter().enumerate() {
        let Some(b) = groups.group_of(a / k.max(1)) else {
            continue;
        };
        if dropped.is_none_or(|d| d[a] == 0) && (i as usize) < e {
            out[b * e + i as usize] += 1;
        }
    }
}
