//! The element types the faer backend computes in ([`FaerElem`]: `f32` and `f64`) and the row
//! kernels each picks: `f64` runs core's reference rows (with the one-pass top-k of
//! [`crate::route_generic`]); `f32` a vectorised `exp` ([`crate::exp_f32`]), a packed-key top-k
//! ([`crate::route_f32`]) and, for softmax scores with renormalised gates, the fused backward
//! sweep of [`crate::backward_f32`].

use crate::backward::{self, BackwardRows};
use crate::route_generic::{self, ForwardRows};
use crate::{backward_f32, exp_f32, route_f32};
use simbal_core::config::ScoreFn;
use simbal_core::router::score::{logsumexp_row, softmax_row};
use simbal_core::{zloss, Scalar};

/// Element types the faer backend computes in: `f32` and `f64` (sealed).
///
/// The methods are the backend's row kernels over one block of rows of width `E >= 1` (the
/// lengths checked by core); each default is core's reference math, and `f32` overrides them
/// with vectorised kernels of the same results to the SPEC's tolerance.
pub trait FaerElem:
    Scalar + faer::traits::RealField + faer::traits::Conjugate<Canonical = Self> + sealed::Sealed
{
    /// Softmax of every row of width `e` of `z` into `p` (core's `softmax_row` per row).
    #[doc(hidden)]
    fn softmax_rows(e: usize, z: &[Self], p: &mut [Self]) {
        for (zr, pr) in z.chunks_exact(e).zip(p.chunks_exact_mut(e)) {
            softmax_row(zr, pr);
        }
    }

    /// Forward rows of a block (scores, top-k, gates), as core's `route_rows`.
    #[doc(hidden)]
    fn route_rows(rows: ForwardRows<'_, Self>) {
        route_generic::route_rows(rows)
    }

    /// Backward rows of a block into `dz`, as core's `router_backward_rows`; returns the rows'
    /// `sum lse(z_t)^2` when `rows.lse_sq` (else 0).
    #[doc(hidden)]
    fn backward_rows(rows: &BackwardRows<'_, Self>, dz: &mut [Self]) -> Self {
        backward::rows_generic(rows, dz)
    }

    /// `sum_t lse(z_t)^2` over the rows of `z` given their softmax `p` (core's
    /// `lse_sq_sum_from_softmax`).
    #[doc(hidden)]
    fn lse_sq_sum_softmax(e: usize, z: &[Self], p: &[Self]) -> Self {
        zloss::lse_sq_sum_from_softmax(e, z, p)
    }

    /// `sum_t lse(z_t)^2` over the rows of `z`, added in row order (core's `lse_sq_sum`).
    #[doc(hidden)]
    fn lse_sq_sum(e: usize, z: &[Self]) -> Self {
        zloss::lse_sq_sum(e, z)
    }

    /// Calls `f(row, lse(row))` for every row of width `e` of `z`, in order (core's
    /// `logsumexp_row`).
    #[doc(hidden)]
    fn lse_rows(e: usize, z: &[Self], mut f: impl FnMut(usize, Self)) {
        for (i, zr) in z.chunks_exact(e).enumerate() {
            f(i, logsumexp_row(zr));
        }
    }
}

impl FaerElem for f32 {
    fn softmax_rows(e: usize, z: &[f32], p: &mut [f32]) {
        exp_f32::softmax_rows(e, z, p);
    }

    fn route_rows(rows: ForwardRows<'_, f32>) {
        if route_generic::packed_top_k_applies(rows.cfg) {
            route_f32::route_rows(rows)
        } else {
            route_generic::route_rows(rows)
        }
    }

    fn backward_rows(rows: &BackwardRows<'_, f32>, dz: &mut [f32]) -> f32 {
        if rows.cfg.score == ScoreFn::Softmax && rows.cfg.renormalize && !rows.normalize {
            backward_f32::backward_rows(rows, dz)
        } else {
            backward::rows_generic(rows, dz)
        }
    }

    fn lse_sq_sum_softmax(e: usize, z: &[f32], p: &[f32]) -> f32 {
        let mut s = 0.0f32;
        exp_f32::lse_rows_from_softmax(e, z, p, |_, l| s += l * l);
        s
    }

    fn lse_sq_sum(e: usize, z: &[f32]) -> f32 {
        let mut s = 0.0f32;
        exp_f32::lse_rows(e, z, |_, l| s += l * l);
        s
    }

    fn lse_rows(e: usize, z: &[f32], f: impl FnMut(usize, f32)) {
        exp_f32::lse_rows(e, z, f);
    }
}

impl FaerElem for f64 {}

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for f64 {}
}
