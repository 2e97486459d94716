//! The [`Backend`] trait: the kernels of simbal on top of a backend's [`Memory`].
//!
//! One GEMM is required; every other kernel has a default built from the GEMM and the
//! reference rows of each op (run on the host: zero-copy for host memory, staged through
//! transfers otherwise), so a new backend works at once and overrides only what it makes faster.
//! The kernels, by family, with the op module that holds their math:
//!
//! | family | kernels | arguments, checks, reference |
//! |---|---|---|
//! | GEMM | [`Backend::gemm`] | [`crate::gemm`] |
//! | router | [`Backend::route`], [`Backend::dispatch`], [`Backend::router_backward`] | [`crate::router::kernels`] |
//! | LBL | [`Backend::group_column_sums`], [`Backend::group_counts`], [`Backend::lbl_coefficients`] | [`crate::lbl::kernels`] |
//! | z-loss | [`Backend::lse_sq_sum`] | [`crate::zloss`] |
//! | SimBal | [`Backend::simbal_residual`], [`Backend::normalize_columns`], [`Backend::scale_free_project`] | [`crate::simbal::kernels`] |
//! | statistics, metrics | [`Backend::routing_stats`], [`Backend::routing_entropy`] | [`crate::stats`], [`crate::metrics`] |
//! | token mask, sequences | [`Backend::token_groups`] | [`crate::tokens`] |
//! | validation | [`Backend::max_abs`], [`Backend::check_finite`] | [`crate::validate`] |
//!
//! Scalar results (loss values, `max |.|`) come back as the memory's [`Memory::Value`]: plain
//! elements for host memory, device-resident values for a GPU, which the router reads all at
//! once at the end of a step ([`Memory::read_values`]).
//!
//! Each kernel takes its arguments as [`Checked`]: core has run the arguments' precondition
//! function (`Args::check`, its `# Errors` list the checks) before the backend sees them, so a
//! backend relies on the lengths and restates no check. Users call a kernel as
//! `backend.route(Route { .. }.check(&backend)?)`.

use crate::checked::Checked;
use crate::error::Result;
use crate::gemm::GemmArgs;
use crate::lbl::kernels::{self as lbl, GroupCounts, GroupSums, LblCoefficients};
use crate::memory::Memory;
use crate::metrics::{self, Entropy};
use crate::router::kernels::{
    self as router, BackwardSums, Dispatch, Logits, Route, RouteSums, RouterBackward,
};
use crate::simbal::kernels::{self as simbal, NormalizeColumns, ScaleFreeProject, SimbalResidual};
use crate::stage::stage_elems_in;
use crate::stats::{self, CollectStats};
use crate::tokens::{self, TokenGroupIds};
use crate::zloss::{self, LseSqSum};

/// A compute backend for simbal. See the module docs for the kernel families.
pub trait Backend: Memory {
    /// `C = alpha op(A) op(B) + beta C` (see [`crate::Gemm`]).
    ///
    /// # Errors
    /// Backend failures.
    fn gemm(&self, a: Checked<GemmArgs<'_, Self>>) -> Result<()>;

    /// The router's forward rows: the logits (a GEMM for [`Logits::Tokens`]), then per row the
    /// scores, the top-k with the optional selection bias, and the gates; `max |Z|` when asked.
    /// A backend may fuse the GEMM and the rows (faer routes each block of rows right after
    /// computing its logits, while they are in cache); the default makes separate calls.
    ///
    /// # Errors
    /// Backend failures.
    fn route(&self, a: Checked<Route<'_, Self>>) -> Result<RouteSums<Self::Value>> {
        route_staged(self, a)
    }

    /// Capacity dropping and the dispatch plan.
    ///
    /// # Errors
    /// Backend failures.
    fn dispatch(&self, a: Checked<Dispatch<'_, Self>>) -> Result<()> {
        router::dispatch_staged(self, a)
    }

    /// The router's backward rows: `dz` from the gate gradient, the LBL coefficients and the
    /// z-loss, with the reductions the request asks for from the same rows. A backend may
    /// compute them in one sweep; the default makes separate calls.
    ///
    /// # Errors
    /// Backend failures.
    fn router_backward(
        &self,
        a: Checked<RouterBackward<'_, Self>>,
    ) -> Result<BackwardSums<Self::Value>> {
        let mut a = a.into_inner();
        router::router_backward_rows_staged(self, &mut a)?;
        let lse_sq_sum = if a.request.lse_sq_sum {
            Some(self.lse_sq_sum(Checked::new(LseSqSum {
                n: a.n,
                groups: a.groups,
                e: a.cfg.experts,
                z: a.z,
                scores: Some((a.cfg.score, a.p)),
            }))?)
        } else {
            None
        };
        let max_abs_dz = if a.request.max_abs_dz {
            Some(self.max_abs(a.dz)?)
        } else {
            None
        };
        Ok(BackwardSums {
            lse_sq_sum,
            max_abs_dz,
        })
    }

    /// Per-group column sums (the LBL's score sums per group).
    ///
    /// # Errors
    /// Backend failures.
    fn group_column_sums(&self, a: Checked<GroupSums<'_, Self>>) -> Result<()> {
        lbl::group_column_sums_staged(self, a)
    }

    /// Per-group kept counts per expert.
    ///
    /// # Errors
    /// Backend failures.
    fn group_counts(&self, a: Checked<GroupCounts<'_, Self>>) -> Result<()> {
        lbl::group_counts_staged(self, a)
    }

    /// The LBL value and its gradient coefficients from per-group counts and score sums.
    ///
    /// # Errors
    /// Backend failures.
    fn lbl_coefficients(&self, a: Checked<LblCoefficients<'_, Self>>) -> Result<Self::Value> {
        self.value(lbl::lbl_coefficients_staged(self, a)?)
    }

    /// `sum_t lse(z_t)^2` (the z-loss before its scale). The default sums exponentials and
    /// ignores the scores.
    ///
    /// # Errors
    /// Backend failures.
    fn lse_sq_sum(&self, a: Checked<LseSqSum<'_, Self>>) -> Result<Self::Value> {
        self.value(zloss::lse_sq_sum_staged(self, a)?)
    }

    /// SimBal's element-wise pass on the Gram matrix, in place; returns the loss value.
    ///
    /// # Errors
    /// Backend failures.
    fn simbal_residual(&self, a: Checked<SimbalResidual<'_, Self>>) -> Result<Self::Value> {
        self.value(simbal::simbal_residual_staged(self, a)?)
    }

    /// Column norms and the column-normalised weight (ScaleFree SimBal).
    ///
    /// # Errors
    /// Backend failures.
    fn normalize_columns(&self, a: Checked<NormalizeColumns<'_, Self>>) -> Result<()> {
        simbal::normalize_columns_staged(self, a)
    }

    /// Adds the gradient through the column normalisation to the router gradient.
    ///
    /// # Errors
    /// Backend failures.
    fn scale_free_project(&self, a: Checked<ScaleFreeProject<'_, Self>>) -> Result<()> {
        simbal::scale_free_project_staged(self, a)
    }

    /// The statistics of a forward pass into a host [`crate::RoutingStats`].
    ///
    /// # Errors
    /// Backend failures.
    fn routing_stats(&self, a: Checked<CollectStats<'_, Self>>) -> Result<()> {
        stats::routing_stats_staged(self, a)
    }

    /// Mean per-token routing entropy of the scores (nats).
    ///
    /// # Errors
    /// Backend failures; [`crate::SimbalError::Overflow`] for a non-finite result.
    fn routing_entropy(&self, a: Checked<Entropy<'_, Self>>) -> Result<Self::Elem> {
        metrics::routing_entropy_staged(self, a)
    }

    /// Per-token group ids (masked tokens [`crate::tokens::MASKED`]) and the valid tokens of
    /// each group, from the token mask and the sequence layout.
    ///
    /// # Errors
    /// Backend failures.
    fn token_groups(&self, a: Checked<TokenGroupIds<'_, Self>>) -> Result<()> {
        tokens::token_groups_staged(self, a)
    }

    /// Largest absolute value of the buffer; NaN when it holds a NaN (0 for an empty buffer).
    /// The validation fast path: one small reduction instead of a scan of every large buffer.
    ///
    /// # Errors
    /// Backend failures.
    fn max_abs(&self, buf: &Self::View) -> Result<Self::Value> {
        let x = stage_elems_in(self, buf)?;
        self.value(crate::validate::max_abs(&x))
    }

    /// Reports the first non-finite value of a `? x cols` buffer with its position.
    ///
    /// # Errors
    /// [`crate::SimbalError::NonFinite`] with the row and column of the first non-finite value;
    /// backend failures.
    fn check_finite(&self, what: &'static str, cols: usize, buf: &Self::View) -> Result<()> {
        let x = stage_elems_in(self, buf)?;
        crate::shape::check_finite(what, cols, &x)
    }
}

/// The default of [`Backend::route`]: the logits GEMM through the backend's own GEMM, `max |Z|`
/// when asked, and the rows staged on the host ([`router::route_rows_staged`]). A backend that
/// overrides `route` calls it for what its own kernel does not cover (Sinkhorn selection).
///
/// # Errors
/// Backend failures.
pub fn route_staged<B: Backend + ?Sized>(
    b: &B,
    a: Checked<Route<'_, B>>,
) -> Result<RouteSums<B::Value>> {
    let mut a = a.into_inner();
    if let Logits::Tokens { gemm, x, r } = a.logits {
        b.gemm(Checked::new(GemmArgs {
            gemm,
            a: x,
            b: r,
            c: &mut *a.z,
        }))?;
    }
    let max_abs_z = if a.request.max_abs_z {
        Some(b.max_abs(a.z)?)
    } else {
        None
    };
    router::route_rows_staged(b, &mut a)?;
    Ok(RouteSums { max_abs_z })
}
