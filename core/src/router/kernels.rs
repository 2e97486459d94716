//! The router's kernel family: the arguments of [`crate::Backend::route`],
//! [`crate::Backend::dispatch`] and [`crate::Backend::router_backward`], their precondition
//! functions, and the host-staged defaults that run the reference rows of
//! [`super::reference`].

use super::reference;
use crate::checked::Checked;
use crate::config::{RouterConfig, Selection};
use crate::error::{Result, SimbalError};
use crate::gemm::Gemm;
use crate::memory::Memory;
use crate::shape::check_len;
use crate::stage::{stage_elems_in, stage_idx_in, stage_out, Elems, Idxs};
use crate::tokens::{with_host_groups, Groups};

/// Where the logits of a [`Route`] come from.
pub enum Logits<'a, M: Memory + ?Sized> {
    /// They are already in [`Route::z`].
    Given,
    /// Computed first: `z = gemm(x, r)`, i.e. `X R` (`gemm = Gemm::new(n, E, D)`) or `X W^T`
    /// (the same with `.tb()`).
    Tokens {
        /// The logits GEMM (`m = n`, `n = E`).
        gemm: Gemm,
        /// Tokens `X` (`n x D`).
        x: &'a M::View,
        /// Router weight, stored as `gemm` says.
        r: &'a M::View,
    },
}

/// The reductions a [`Route`] also returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RouteRequest {
    /// `max |Z|` (NaN if any logit is NaN): the router's validation of `X` and `R`.
    pub max_abs_z: bool,
}

/// What [`crate::Backend::route`] returns besides its buffers: each field `Some` when asked.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct RouteSums<T> {
    /// `max |Z|`.
    pub max_abs_z: Option<T>,
}

/// Arguments of [`crate::Backend::route`]: the logits (computed or given), then for each row
/// the scores `p`, the top-k indices `idx` (best first) and the gates.
pub struct Route<'a, M: Memory + ?Sized> {
    /// Routing configuration.
    pub cfg: &'a RouterConfig,
    /// Tokens `n`.
    pub n: usize,
    /// Where the logits come from.
    pub logits: Logits<'a, M>,
    /// Selection bias (`E`), added to the scores for the top-k only.
    pub bias: Option<&'a M::View>,
    /// Logits `n x E` (written by [`Logits::Tokens`], read otherwise).
    pub z: &'a mut M::View,
    /// Scores `n x E`.
    pub p: &'a mut M::View,
    /// Expert indices `n x k`.
    pub idx: &'a mut M::IdxView,
    /// Gates `n x k`.
    pub gates: &'a mut M::View,
    /// The plain top-k of the scores alone (`n x k`, no bias, no groups: the LBL's routed
    /// assignments), when the selection differs from it.
    pub plain: Option<&'a mut M::IdxView>,
    /// Reductions to return.
    pub request: RouteRequest,
}

impl<'a, M: Memory + ?Sized> Route<'a, M> {
    /// The precondition function of [`crate::Backend::route`].
    ///
    /// # Errors
    /// The configuration's own errors ([`RouterConfig::validate`]);
    /// [`SimbalError::LengthMismatch`] unless `z` and `p` hold `n x E`, `idx` and `gates`
    /// `n x k` (and `plain`), `bias` `E`, and for [`Logits::Tokens`] the GEMM has `m = n`,
    /// `n = E` and `x`, `r` fit it; [`SimbalError::Unsupported`] for a selection bias with
    /// Sinkhorn selection.
    pub fn check(self, m: &M) -> Result<Checked<Self>> {
        let cfg = self.cfg;
        cfg.validate()?;
        let (ne, nk) = (
            self.n.saturating_mul(cfg.experts),
            self.n.saturating_mul(cfg.k),
        );
        check_len("logits", ne, m.len(self.z))?;
        check_len("scores", ne, m.len(self.p))?;
        check_len("indices", nk, m.idx_len(self.idx))?;
        check_len("gates", nk, m.len(self.gates))?;
        if let Some(pl) = self.plain.as_deref() {
            check_len("plain top-k indices", nk, m.idx_len(pl))?;
        }
        if let Some(b) = self.bias {
            check_len("selection bias", cfg.experts, m.len(b))?;
            if cfg.selection != Selection::TopK {
                return Err(SimbalError::Unsupported {
                    what: "a selection bias with Sinkhorn selection",
                });
            }
        }
        if let Logits::Tokens { gemm, x, r } = &self.logits {
            check_len("logits GEMM rows", self.n, gemm.m)?;
            check_len("logits GEMM columns", cfg.experts, gemm.n)?;
            let (la, lb, _) = gemm.lens();
            check_len("tokens X", la, m.len(x))?;
            check_len("router weight", lb, m.len(r))?;
        }
        Ok(Checked::new(self))
    }
}

/// Scores, selection and gates of the logits in `z` on the host (the default of the row part
/// of [`crate::Backend::route`]); Sinkhorn selection over the whole batch
/// ([`super::sinkhorn`]). Backends route Sinkhorn selection here.
///
/// # Errors
/// Transfer failures of a device backend.
pub fn route_rows_staged<M: Memory + ?Sized>(m: &M, a: &mut Route<'_, M>) -> Result<()> {
    let z = stage_elems_in(m, a.z)?;
    let bias = match a.bias {
        Some(b) => Some(stage_elems_in(m, b)?),
        None => None,
    };
    let mut p = stage_out::<_, Elems>(m, a.p, false)?;
    let mut idx = stage_out::<_, Idxs>(m, a.idx, false)?;
    let mut gates = stage_out::<_, Elems>(m, a.gates, false)?;
    let mut plain = match a.plain.as_deref_mut() {
        Some(pl) => Some(stage_out::<_, Idxs>(m, pl, false)?),
        None => None,
    };
    let plain_out = plain.as_mut().map(|pl| pl.slice());
    let (p_out, idx_out, gates_out) = (p.slice(), idx.slice(), gates.slice());
    match a.cfg.selection {
        Selection::TopK => {
            let b = bias.as_deref();
            reference::route_rows(a.cfg, &z, b, p_out, idx_out, gates_out, plain_out);
        }
        Selection::Sinkhorn { tol, max_iters } => {
            let limits = (tol, max_iters);
            let cfg = a.cfg;
            super::sinkhorn::route_sinkhorn(cfg, limits, &z, p_out, idx_out, gates_out, plain_out);
        }
    }
    p.finish(m)?;
    idx.finish(m)?;
    if let Some(pl) = plain {
        pl.finish(m)?;
    }
    gates.finish(m)
}

/// Arguments of [`crate::Backend::dispatch`]: capacity dropping and the dispatch plan (see
/// [`reference::dispatch`]).
pub struct Dispatch<'a, M: Memory + ?Sized> {
    /// Routing configuration.
    pub cfg: &'a RouterConfig,
    /// Tokens `n`.
    pub n: usize,
    /// Expert indices `n x k`, each below `E`.
    pub idx: &'a M::IdxView,
    /// Gates `n x k`; dropped assignments' gates are set to 0.
    pub gates: &'a mut M::View,
    /// Dropped flags `n x k` (1 = dropped).
    pub dropped: &'a mut M::IdxView,
    /// Kept assignments per expert (`E`).
    pub counts: &'a mut M::IdxView,
    /// Kept assignment ids grouped by expert (`n x k`; the first `offsets[E]` are meaningful).
    pub order: &'a mut M::IdxView,
    /// Per-expert offsets into `order` (`E + 1`).
    pub offsets: &'a mut M::IdxView,
}

impl<'a, M: Memory + ?Sized> Dispatch<'a, M> {
    /// The precondition function of [`crate::Backend::dispatch`].
    ///
    /// # Errors
    /// The configuration's own errors; [`SimbalError::LengthMismatch`] unless `idx`, `gates`,
    /// `dropped` and `order` hold `n x k`, `counts` `E` and `offsets` `E + 1`;
    /// [`SimbalError::Backend`] when an index is not below `E`.
    pub fn check(self, m: &M) -> Result<Checked<Self>> {
        scan_indices(m, self.check_lengths(m)?, |s| (s.idx, s.cfg.experts))
    }

    /// [`Dispatch::check`] without the index scan, for indices the same backend's `route` wrote.
    pub(crate) fn check_lengths(self, m: &M) -> Result<Checked<Self>> {
        let cfg = self.cfg;
        cfg.validate()?;
        let nk = self.n.saturating_mul(cfg.k);
        check_len("indices", nk, m.idx_len(self.idx))?;
        check_len("gates", nk, m.len(self.gates))?;
        check_len("dropped flags", nk, m.idx_len(self.dropped))?;
        check_len("counts", cfg.experts, m.idx_len(self.counts))?;
        check_len("dispatch order", nk, m.idx_len(self.order))?;
        check_len(
            "dispatch offsets",
            cfg.experts.saturating_add(1),
            m.idx_len(self.offsets),
        )?;
        Ok(Checked::new(self))
    }
}

/// The host-staged default of [`crate::Backend::dispatch`].
///
/// # Errors
/// Transfer failures of a device backend.
pub fn dispatch_staged<M: Memory + ?Sized>(m: &M, a: Checked<Dispatch<'_, M>>) -> Result<()> {
    let a = a.into_inner();
    let idx = stage_idx_in(m, a.idx)?;
    let mut gates = stage_out::<_, Elems>(m, a.gates, true)?;
    let mut dropped = stage_out::<_, Idxs>(m, a.dropped, false)?;
    let mut counts = stage_out::<_, Idxs>(m, a.counts, false)?;
    let mut order = stage_out::<_, Idxs>(m, a.order, false)?;
    let mut offsets = stage_out::<_, Idxs>(m, a.offsets, false)?;
    reference::dispatch(
        a.cfg,
        a.n,
        &idx,
        gates.slice(),
        dropped.slice(),
        counts.slice(),
        order.slice(),
        offsets.slice(),
    );
    gates.finish(m)?;
    dropped.finish(m)?;
    counts.finish(m)?;
    order.finish(m)?;
    offsets.finish(m)
}

/// Coefficients of the LBL's dense gradient, `dL/dq_te = coef[b(t), e]` for a valid token `t`
/// of group `b(t)` ([`RouterBackward::groups`]; one group for micro-batch and global-batch
/// levels).
pub struct LblCoef<'a, M: Memory + ?Sized> {
    /// `groups x E` coefficients.
    pub coef: &'a M::View,
    /// The loss's scores are each token's scores normalised to sum 1 (`q = p / (sum p +
    /// 1e-20)`), so the gradient goes through the normalisation.
    pub normalize: bool,
}

/// The reductions [`crate::Backend::router_backward`] also returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BackwardRequest {
    /// `sum_t lse(z_t)^2` (the z-loss before its scale).
    pub lse_sq_sum: bool,
    /// `max |dz|` (NaN if any is NaN): the router's validation of `dz`.
    pub max_abs_dz: bool,
}

/// What [`crate::Backend::router_backward`] returns besides `dz`: each field `Some` when asked.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct BackwardSums<T> {
    /// `sum_t lse(z_t)^2`.
    pub lse_sq_sum: Option<T>,
    /// `max |dz|`.
    pub max_abs_dz: Option<T>,
}

/// Arguments of [`crate::Backend::router_backward`]: `dz` from the gate gradient and the dense
/// loss terms (see [`reference::router_backward_rows`]).
pub struct RouterBackward<'a, M: Memory + ?Sized> {
    /// Routing configuration.
    pub cfg: &'a RouterConfig,
    /// Tokens `n`.
    pub n: usize,
    /// Logits `n x E`.
    pub z: &'a M::View,
    /// Scores `n x E`.
    pub p: &'a M::View,
    /// Expert indices `n x k`, each below `E`.
    pub idx: &'a M::IdxView,
    /// Gates `n x k`.
    pub gates: &'a M::View,
    /// Dropped flags `n x k`.
    pub dropped: &'a M::IdxView,
    /// Gate gradient `n x k`.
    pub dw: &'a M::View,
    /// The tokens' groups (the LBL coefficient row of each) and mask (a masked token gets no
    /// loss gradient).
    pub groups: Groups<'a, M>,
    /// LBL coefficients, when LBL is on.
    pub lbl: Option<LblCoef<'a, M>>,
    /// z-loss coefficient `beta * 2 / N_v` (0 without z-loss).
    pub z_coef: M::Elem,
    /// Logit gradient `n x E` (written).
    pub dz: &'a mut M::View,
    /// Reductions to return.
    pub request: BackwardRequest,
}

impl<'a, M: Memory + ?Sized> RouterBackward<'a, M> {
    /// The precondition function of [`crate::Backend::router_backward`].
    ///
    /// # Errors
    /// The configuration's own errors; [`SimbalError::LengthMismatch`] unless `z`, `p` and
    /// `dz` hold `n x E`, `idx`, `gates`, `dropped` and `dw` `n x k`, and the LBL coefficients
    /// `groups x E`; the groups' errors ([`Groups::check`]); [`SimbalError::Backend`] when an
    /// index is not below `E`.
    pub fn check(self, m: &M) -> Result<Checked<Self>> {
        scan_indices(m, self.check_lengths(m)?, |s| (s.idx, s.cfg.experts))
    }

    /// [`RouterBackward::check`] without the index scan, for indices the same backend's `route`
    /// wrote.
    pub(crate) fn check_lengths(self, m: &M) -> Result<Checked<Self>> {
        let cfg = self.cfg;
        cfg.validate()?;
        let e = cfg.experts;
        let (ne, nk) = (self.n.saturating_mul(e), self.n.saturating_mul(cfg.k));
        check_len("logits", ne, m.len(self.z))?;
        check_len("scores", ne, m.len(self.p))?;
        check_len("indices", nk, m.idx_len(self.idx))?;
        check_len("gates", nk, m.len(self.gates))?;
        check_len("dropped flags", nk, m.idx_len(self.dropped))?;
        check_len("gate gradient", nk, m.len(self.dw))?;
        check_len("logit gradient", ne, m.len(self.dz))?;
        self.groups.check(m, self.n)?;
        if let Some(l) = &self.lbl {
            let g = self.groups.count(self.n);
            check_len("LBL coefficients", g.saturating_mul(e), m.len(l.coef))?;
        }
        Ok(Checked::new(self))
    }
}

/// The row part of [`crate::Backend::router_backward`] on the host: writes `dz`, computes no
/// reduction.
///
/// # Errors
/// Transfer failures of a device backend.
pub fn router_backward_rows_staged<M: Memory + ?Sized>(
    m: &M,
    a: &mut RouterBackward<'_, M>,
) -> Result<()> {
    let e = a.cfg.experts;
    let lbl = match &a.lbl {
        Some(l) => Some(stage_elems_in(m, l.coef)?),
        None => None,
    };
    let normalize = a.lbl.as_ref().is_some_and(|l| l.normalize);
    let idx = stage_idx_in(m, a.idx)?;
    let z = stage_elems_in(m, a.z)?;
    let p = stage_elems_in(m, a.p)?;
    let gates = stage_elems_in(m, a.gates)?;
    let dropped = stage_idx_in(m, a.dropped)?;
    let dw = stage_elems_in(m, a.dw)?;
    let mut dz = stage_out::<_, Elems>(m, a.dz, false)?;
    with_host_groups(m, &a.groups, |g| {
        let coef_row = |r: usize| {
            let b = g.group_of(r)?;
            lbl.as_ref().map(|c| &c[b * e..(b + 1) * e])
        };
        reference::router_backward_rows(
            a.cfg,
            &z,
            &p,
            &idx,
            &gates,
            &dropped,
            &dw,
            coef_row,
            normalize,
            a.z_coef,
            |r| g.group_of(r).is_some(),
            dz.slice(),
        )
    })?;
    dz.finish(m)
}

/// Arguments whose lengths passed, once their expert indices (as `of` names them, with `E`)
/// are all below `E` too.
fn scan_indices<M: Memory + ?Sized, A>(
    m: &M,
    s: Checked<A>,
    of: impl FnOnce(&A) -> (&M::IdxView, usize),
) -> Result<Checked<A>> {
    let (idx, e) = of(&s);
    expert_indices(m, idx, e)?;
    Ok(s)
}

/// Every expert index must be below `e`; a bad index buffer is a backend error.
fn expert_indices<M: Memory + ?Sized>(m: &M, idx: &M::IdxView, e: usize) -> Result<()> {
    let bound = u32::try_from(e).unwrap_or(u32::MAX);
    if m.idx_all_below(idx, bound)? {
        Ok(())
    } else {
        Err(SimbalError::Backend {
            message: alloc::string::String::from("an expert index is out of range"),
        })
    }
}
