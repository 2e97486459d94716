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
