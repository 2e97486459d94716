//! The forward row kernel with a one-pass top-k (any element type; `f32` without a group limit
//! takes the packed-key kernel of [`crate::fastroute`] instead).
//!
//! Core's `select_row` finds the j-th pick with a full pass over the experts (`k` passes, `O(kE)`
//! per token). Without a group limit the same indices come out of one pass that keeps the best `k`
//! candidates sorted: experts are visited in increasing index and a candidate enters only when it
//! ranks strictly before the current k-th, so ties keep the lower index exactly as core's total
//! order ("higher score first, then lower index"; NaN ranks as `-inf`) demands. The group-limited
//! case and very large `k` use core's kernel unchanged.

use crate::FaerElem;
use simbal_core::config::{RouterConfig, ScoreFn};
use simbal_core::ops::score::score_row;
use simbal_core::ops::select::{gates_row, select_row};
use simbal_core::Scalar;

/// Largest `k` the one-pass top-k keeps on the stack; larger `k` uses core's `select_row`.
const MAX_FAST_K: usize = 64;

/// Whether `cfg` routes without an effective group limit (then [`top_k_row`] applies).
#[inline]
fn ungrouped(cfg: &RouterConfig) -> bool {
    match cfg.groups {
        Some(g) => g.top_groups >= g.groups,
        None => true,
    }
}

/// Forward rows of a block for any element type (same contract and results as
/// `simbal_core::ops::router::route_rows`), with the insertion top-k of [`top_k_row`].
pub(crate) fn route_rows_generic<T: FaerElem>(
    cfg: &RouterConfig,
    z: &[T],
    bias: Option<&[T]>,
    p: &mut [T],
    idx: &mut [u32],
    gates: &mut [T],
) {
    let (e, k) = (cfg.experts, cfg.k);
    let fast = ungrouped(cfg) && k <= MAX_FAST_K;
    let softmax = cfg.score == ScoreFn::Softmax;
    if softmax {
        T::softmax_rows(e, z, p);
    }
    for (((zr, pr), ir), wr) in z
        .chunks_exact(e)
        .zip(p.chunks_exact_mut(e))
        .zip(idx.chunks_exact_mut(k))
        .zip(gates.chunks_exact_mut(k))
    {
        if !softmax {
            score_row(cfg.score, zr, pr);
        }
        if fast {
            top_k_row(pr, bias, ir);
        } else {
            select_row(cfg, pr, bias, ir);
        }
        gates_row(cfg, pr, ir, wr);
    }
}

/// Whether the packed-key top-k of [`crate::fastroute`] applies: no effective group limit, and
/// `E` small enough for its on-stack keys.
#[inline]
pub(crate) fn packed_top_k_applies(cfg: &RouterConfig) -> bool {
    ungrouped(cfg) && cfg.experts <= crate::fastroute::MAX_PACKED_E
}

/// Selection key of expert `c`: `p_c + b_c`, NaN as `-inf`.
#[inline(always)]
fn key<T: Scalar>(p: &[T], bias: Option<&[T]>, c: usize) -> T {
    let s = match bias {
        Some(b) => p[c] + b[c],
        None => p[c],
    };
    if s.is_nan() {
        T::neg_infinity()
    } else {
        s
    }
}

/// Writes the `idx.len() <= MAX_FAST_K` best experts of one row, best first, ties to the lower
/// index. `p` must have at least `idx.len()` entries.
#[inline]
pub(crate) fn top_k_row<T: Scalar>(p: &[T], bias: Option<&[T]>, idx: &mut [u32]) {
    let k = idx.len();
    let mut vals = [T::zero(); MAX_FAST_K];
    let vals = &mut vals[..k];
    // Fill with the first k experts, kept sorted (a later equal key goes after).
    for c in 0..k {
        let s = key(p, bias, c);
        let mut j = c;
        while j > 0 && s > vals[j - 1] {
            vals[j] = vals[j - 1];
            idx[j] = idx[j - 1];
            j -= 1;
        }
        vals[j] = s;
        idx[j] = c as u32;
    }
    if k == 0 {
        return;
    }
    let mut worst = vals[k - 1];
    for c in k..p.len() {
        let s = key(p, bias, c);
        if s > worst {
            let mut j = k - 1;
            while j > 0 && s > vals[j - 1] {
                vals[j] = vals[j - 1];
                idx[j] = idx[j - 1];
                j -= 1;
            }
            vals[j] = s;
            idx[j] = c as u32;
            worst = vals[k - 1];
        }
    }
}
