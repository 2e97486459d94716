//! Top-k expert selection (with selection bias and group limits) and gate values, per token row.
//!
//! Selection is scratch-free: the j-th pick is the best candidate strictly below the (j-1)-th in
//! the total order "higher score first, then lower index", so ties always go to the lower index
//! and every backend can reproduce the indices exactly.

use crate::config::{RouterConfig, MAX_GROUPS};
use crate::scalar::Scalar;

/// Selection key: NaN sorts below every number so it is never preferred.
#[inline]
fn key<T: Scalar>(x: T) -> T {
    if x.is_nan() {
        T::neg_infinity()
    } else {
        x
    }
}

/// Whether candidate `(sa, a)` ranks strictly before `(sb, b)`.
#[inline]
fn before<T: Scalar>(sa: T, a: usize, sb: T, b: usize) -> bool {
    sa > sb || (sa == sb && a < b)
}

/// Selection score of expert `e`: `p_e + b_e`.
#[inline]
fn sel<T: Scalar>(p: &[T], bias: Option<&[T]>, e: usize) -> T {
    key(match bias {
        Some(b) => p[e] + b[e],
        None => p[e],
    })
}

/// Index of the best candidate in `range` (by [`before`]) that ranks strictly after `prev`,
/// among those `allowed` admits. `None` when none is left.
#[inline]
fn next_best<T: Scalar>(
    range: core::ops::Range<usize>,
    score: impl Fn(usize) -> T,
    allowed: impl Fn(usize) -> bool,
    prev: Option<(T, usize)>,
) -> Option<(T, usize)> {
    let mut best: Option<(T, usize)> = None;
    for c in range {
        if !allowed(c) {
            continue;
        }
        let s = score(c);
        if let Some((ps, pi)) = prev {
            if !before(ps, pi, s, c) {
                continue;
            }
        }
        match best {
            Some((bs, bi)) if !before(s, c, bs, bi) => {}
            _ => best = Some((s, c)),
        }
    }
    best
}

/// Score of a group: the sum of its top `m` selection scores.
fn group_score<T: Scalar>(p: &[T], bias: Option<&[T]>, start: usize, len: usize, m: usize) -> T {
    let mut total = T::zero();
    let mut prev = None;
    for _ in 0..m {
        match next_best(start..start + len, |e| sel(p, bias, e), |_| true, prev) {
            Some(found) => {
                total = total + found.0;
                prev = Some(found);
            }
            None => break,
        }
    }
    total
}

/// Chooses the experts of one token: writes `idx` (length k, best first) from scores `p` (length
/// E) and the optional selection bias, honouring the configured group limit.
pub fn select_row<T: Scalar>(cfg: &RouterConfig, p: &[T], bias: Option<&[T]>, idx: &mut [u32]) {
    let e = cfg.experts;
    // Groups admitted to the top-k, as a bitmask (all admitted without a group limit).
    let mut admitted = [0u64; MAX_GROUPS / 64];
    let group_len = match cfg.groups {
        Some(g) if g.top_groups < g.groups => {
            let len = e / g.groups;
            let m = (cfg.k / g.top_groups).clamp(1, len);
            let mut scores = [T::zero(); MAX_GROUPS];
            for (gi, s) in scores.iter_mut().enumerate().take(g.groups) {
                *s = group_score(p, bias, gi * len, len, m);
            }
            let mut prev = None;
            for _ in 0..g.top_groups {
                if let Some(found) = next_best(0..g.groups, |gi| scores[gi], |_| true, prev) {
                    admitted[found.1 / 64] |= 1 << (found.1 % 64);
                    prev = Some(found);
                }
            }
            Some(len)
        }
        _ => None,
    };
    let allowed = |c: usize| match group_len {
        Some(len) => {
            let gi = c / len;
            admitted[gi / 64] & (1 << (gi % 64)) != 0
        }
        None => true,
    };
    let mut prev = None;
    for slot in idx.iter_mut() {
        // `validate` guarantees at least k admitted experts, so a pick always exists.
        let found = next_best(0..e, |c| sel(p, bias, c), allowed, prev).unwrap_or((T::zero(), 0));
        *slot = found.1 as u32;
        prev = Some(found);
    }
}

/// The plain top-k of the scores alone (no bias, no groups): the assignments the LBL counts
/// under [`crate::config::LblCounts::Routed`]. Writes `idx` (length k, best first).
pub fn plain_topk_row<T: Scalar>(p: &[T], idx: &mut [u32]) {
    let mut prev = None;
    for slot in idx.iter_mut() {
        let found = next_best(0..p.len(), |c| key(p[c]), |_| true, prev).unwrap_or((T::zero(), 0));
        *slot = found.1 as u32;
        prev = Some(found);
    }
}

/// Denominator guard for renormalisation: keeps all-zero sigmoid scores at zero gates.
#[inline]
pub fn renorm_eps<T: Scalar>() -> T {
    T::min_positive_value()
}

/// Writes the gates of one token from its scores and chosen experts:
/// `w_j = s p_{i_j}`, or `s p_{i_j} / (sum_l p_{i_l} + eps)` when renormalising.
#[inline]
pub fn gates_row<T: Scalar>(cfg: &RouterConfig, p: &[T], idx: &[u32], gates: &mut [T]) {
    let s = T::of(cfg.scale);
    if cfg.renormalize {
        let mut sum = T::zero();
        for &i in idx {
            sum = sum + p[i as usize];
        }
        // `s * (p / denom)`, not `p * (s / denom)`: the ratio is at most 1, so an underflowed
        // sum (saturated sigmoid rows) gives zero gates instead of `0 * inf = NaN` for large `s`.
        let denom = sum + renorm_eps();
        for (w, &i) in gates.iter_mut().zip(idx) {
            *w = s * (p[i as usize] / denom);
        }
    } else {
        for (w, &i) in gates.iter_mut().zip(idx) {
            *w = s * p[i as usize];
        }
    }
}
