//! The forward row kernel with a one-pass top-k (any element type; `f32` without a group limit
//! takes the packed-key kernel of [`crate::route_f32`] instead).
//!
//! Core's `select_row` finds the j-th pick with a full pass over the experts (`k` passes, `O(kE)`
//! per token). Without a group limit the same indices come out of one pass that keeps the best `k`
//! candidates sorted: experts are visited in increasing index and a candidate enters only when it
//! ranks strictly before the current k-th, so ties keep the lower index exactly as core's total
//! order ("higher score first, then lower index"; NaN ranks as `-inf`) demands. The group-limited
//! case and very large `k` use core's kernel unchanged.

use crate::FaerElem;
use simbal_core::config::{RouterConfig, ScoreFn};
use simbal_core::router::score::score_row;
use simbal_core::router::select::{gates_row, plain_topk_row, select_row};
use simbal_core::Scalar;

/// Largest `k` the one-pass top-k keeps on the stack; larger `k` uses core's `select_row`.
const MAX_FAST_K: usize = 64;

/// One token of a forward block: logits, scores, indices, gates.
pub(crate) type Row<'a, T> = (&'a [T], &'a mut [T], &'a mut [u32], &'a mut [T]);

/// One block of the forward rows (lengths checked by core): the logits in; the scores, top-k
/// indices and gates out.
#[doc(hidden)]
pub struct ForwardRows<'a, T> {
    /// Routing configuration.
    pub cfg: &'a RouterConfig,
    /// Logits, `rows x E`.
    pub z: &'a [T],
    /// Selection bias (`E`).
    pub bias: Option<&'a [T]>,
    /// Scores, `rows x E`.
    pub p: &'a mut [T],
    /// Expert indices, `rows x k`.
    pub idx: &'a mut [u32],
    /// Gates, `rows x k`.
    pub gates: &'a mut [T],
    /// The plain top-k of the scores alone (`rows x k`: no bias, no groups), when asked.
    pub plain: Option<&'a mut [u32]>,
}

impl<'a, T> ForwardRows<'a, T> {
    /// The block's tokens, one [`Row`] each.
    #[inline(always)]
    pub(crate) fn rows(self) -> impl Iterator<Item = Row<'a, T>> {
        let (e, k) = (self.cfg.experts, self.cfg.k);
        self.z
            .chunks_exact(e)
            .zip(self.p.chunks_exact_mut(e))
            .zip(self.idx.chunks_exact_mut(k))
            .zip(self.gates.chunks_exact_mut(k))
            .map(|(((z, p), i), w)| (z, p, i, w))
    }
}

/// Whether `cfg` routes without an effective group limit (then [`top_k_row`] applies).
#[inline]
fn ungrouped(cfg: &RouterConfig) -> bool {
    match cfg.groups {
        Some(g) => g.top_groups >= g.groups,
        None => true,
    }
}

/// Forward rows of a block for any element type (same contract and results as
/// `simbal_core::router::reference::route_rows`), with the insertion top-k of [`top_k_row`]
/// for the selection and the plain top-k.
pub(crate) fn route_rows<T: FaerElem>(mut x: ForwardRows<'_, T>) {
    let (cfg, bias) = (x.cfg, x.bias);
    let k = cfg.k;
    let small_k = k <= MAX_FAST_K;
    let fast = ungrouped(cfg) && small_k;
    let softmax = cfg.score == ScoreFn::Softmax;
    if softmax {
        T::softmax_rows(cfg.experts, x.z, x.p);
    }
    let mut plain = x.plain.take();
    for (r, (zr, pr, ir, wr)) in x.rows().enumerate() {
        if !softmax {
            score_row(cfg.score, zr, pr);
        }
        if fast {
            top_k_row(pr, bias, ir);
        } else {
            select_row(cfg, pr, bias, ir);
        }
        gates_row(cfg, pr, ir, wr);
        if let Some(pl) = plain.as_deref_mut() {
            let pl = &mut pl[r * k..(r + 1) * k];
            if small_k {
                top_k_row(pr, None, pl);
            } else {
                plain_topk_row(pr, pl);
            }
        }
    }
}

/// Whether the packed-key top-k of [`crate::route_f32`] applies: no effective group limit, and
/// `E` small enough for its on-stack keys.
#[inline]
pub(crate) fn packed_top_k_applies(cfg: &RouterConfig) -> bool {
    ungrouped(cfg) && cfg.experts <= crate::route_f32::MAX_PACKED_E
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

/// Puts expert `c` with key `s` at slot `j` of the sorted `vals` and `idx`, then moves it up past
/// every strictly smaller key (an equal key stays before it: ties keep the lower index).
#[inline(always)]
fn insert<T: Scalar>(vals: &mut [T], idx: &mut [u32], mut j: usize, s: T, c: usize) {
    while j > 0 && s > vals[j - 1] {
        vals[j] = vals[j - 1];
        idx[j] = idx[j - 1];
        j -= 1;
    }
    vals[j] = s;
    idx[j] = c as u32;
}

/// Writes the `idx.len() <= MAX_FAST_K` best experts of one row, best first, ties to the lower
/// index. `p` must have at least `idx.len()` entries.
#[inline]
pub(crate) fn top_k_row<T: Scalar>(p: &[T], bias: Option<&[T]>, idx: &mut [u32]) {
    let k = idx.len();
    let mut vals = [T::zero(); MAX_FAST_K];
    let vals = &mut vals[..k];
    // Fill with the first k experts, kept sorted.
    for c in 0..k {
        insert(vals, idx, c, key(p, bias, c), c);
    }
    let Some(&last) = vals.last() else {
        return;
    };
    // A later expert enters only ahead of the k-th, which it replaces.
    let mut worst = last;
    for c in k..p.len() {
        let s = key(p, bias, c);
        if s > worst {
            insert(vals, idx, k - 1, s, c);
            worst = vals[k - 1];
        }
    }
}
