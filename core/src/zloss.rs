//! Router z-loss `beta (1/N_v) sum_{valid t} lse(Z_t)^2`; `dZ_t = beta (2/N_v) lse(Z_t)
//! softmax(Z_t)` for a valid token is added inside the router backward row kernel. Here: the
//! reference sums and the arguments of [`crate::Backend::lse_sq_sum`].

use crate::checked::Checked;
use crate::config::ScoreFn;
use crate::error::Result;
use crate::memory::Memory;
use crate::router::score::{logsumexp_row, row_max};
use crate::scalar::Scalar;
use crate::shape::check_len;
use crate::stage::stage_elems_in;
use crate::tokens::{with_host_groups, Groups, HostGroups};

/// Arguments of [`crate::Backend::lse_sq_sum`]: `sum_{valid t} lse(z_t)^2` over `n x E`
/// logits.
pub struct LseSqSum<'a, M: Memory + ?Sized> {
    /// Tokens `n`.
    pub n: usize,
    /// Which tokens count (the groups themselves do not matter here).
    pub groups: Groups<'a, M>,
    /// Experts `E`.
    pub e: usize,
    /// Logits `n x E`.
    pub z: &'a M::View,
    /// The scores the router computed from these logits under `.0`, when there are any: a
    /// backend may take `lse` from them (for softmax the largest logit `m` has `p = 1 / sum`, so
    /// `lse = m - ln(max p)`) instead of summing `E` exponentials per row.
    pub scores: Option<(ScoreFn, &'a M::View)>,
}

impl<'a, M: Memory + ?Sized> LseSqSum<'a, M> {
    /// The precondition function of [`crate::Backend::lse_sq_sum`].
    ///
    /// # Errors
    /// [`crate::SimbalError::LengthMismatch`] unless `z` (and the scores) hold `n x E`; the
    /// groups' errors.
    pub fn check(self, m: &M) -> Result<Checked<Self>> {
        self.groups.check(m, self.n)?;
        let ne = self.n.saturating_mul(self.e);
        check_len("logits", ne, m.len(self.z))?;
        if let Some((_, p)) = self.scores {
            check_len("scores", ne, m.len(p))?;
        }
        Ok(Checked::new(self))
    }
}

/// The host-staged default of [`crate::Backend::lse_sq_sum`] (from the logits alone).
///
/// # Errors
/// Transfer failures of a device backend.
pub fn lse_sq_sum_staged<M: Memory + ?Sized>(
    m: &M,
    a: Checked<LseSqSum<'_, M>>,
) -> Result<M::Elem> {
    let a = a.into_inner();
    let z = stage_elems_in(m, a.z)?;
    with_host_groups(m, &a.groups, |g| lse_sq_sum_valid(a.e, g, &z))
}

/// `sum_t lse(Z_t)^2` over a block of rows of width `e`.
pub fn lse_sq_sum<T: Scalar>(e: usize, z: &[T]) -> T {
    let mut s = T::zero();
    for row in z.chunks_exact(e.max(1)) {
        let l = logsumexp_row(row);
        s = s + l * l;
    }
    s
}

/// `sum_{valid t} lse(Z_t)^2` over rows of width `e`.
pub fn lse_sq_sum_valid<T: Scalar>(e: usize, groups: HostGroups<'_>, z: &[T]) -> T {
    let mut s = T::zero();
    for (t, row) in z.chunks_exact(e.max(1)).enumerate() {
        if groups.group_of(t).is_some() {
            let l = logsumexp_row(row);
            s = s + l * l;
        }
    }
    s
}

/// `sum_t lse(z_t)^2` from the logits and their softmax `p`: `lse = max z - ln(max p)` per row
/// (the identity [`LseSqSum::scores`] allows; no exponentials).
pub fn lse_sq_sum_from_softmax<T: Scalar>(e: usize, z: &[T], p: &[T]) -> T {
    let mut s = T::zero();
    for (zr, pr) in z.chunks_exact(e.max(1)).zip(p.chunks_exact(e.max(1))) {
        let l = row_max(zr) - row_max(pr).ln();
        s = s + l * l;
    }
    s
}

/// The gradient coefficient `beta * 2 / N_v` the backward row kernel takes (0 for no valid
/// token: the loss is then 0 with zero gradient).
pub fn z_coef<T: Scalar>(beta: f64, valid: usize) -> T {
    if valid == 0 {
        T::zero()
    } else {
        T::of(beta * 2.0 / valid as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::score::softmax_row;

    #[test]
    fn lse_from_softmax_matches_the_direct_sum() {
        let e = 7;
        for scale in [0.1, 3.0, 300.0] {
            let z: alloc::vec::Vec<f64> = (0..4 * e)
                .map(|i| scale * (((i * 7919) % 31) as f64 - 15.0) / 15.0)
                .collect();
            let mut p = alloc::vec![0.0; z.len()];
            for (zr, pr) in z.chunks(e).zip(p.chunks_mut(e)) {
                softmax_row(zr, pr);
            }
            let (direct, scored) = (lse_sq_sum(e, &z), lse_sq_sum_from_softmax(e, &z, &p));
            assert!(
                (direct - scored).abs() <= 1e-12 * direct.abs().max(1.0),
                "{direct} vs {scored}"
            );
        }
    }
}
