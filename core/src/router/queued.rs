//! A backward whose loss values and checks are still on the backend's side
//! ([`super::Pass::backward_queued`]): the backward's first half to `dZ` ([`backward_dz`]),
//! and the step's one read that finishes every backward ([`finish_backward`]).

use super::kernels::{BackwardRequest, LblCoef, RouterBackward};
use super::routing::{LossValues, Shape};
use super::settle::{settle_step, BackwardValues};
use super::workspace::Workspace;
use crate::backend::Backend;
use crate::config::{LossConfig, RouterConfig};
use crate::error::{Result, SimbalError};
use crate::lbl::lbl_for_pass;
use crate::memory::{idx_view, view, view_mut};
use crate::scalar::Scalar;
use crate::shape::check_len;
use crate::stats::RoutingStats;

/// A backward whose loss values and checks are still on the backend's side (see
/// [`super::Pass::backward_queued`]); its gradients are in the router's workspace.
pub struct QueuedBackward<'a, B: Backend> {
    pub(super) backend: &'a B,
    pub(super) cfg: &'a RouterConfig,
    pub(super) ws: &'a mut Workspace<B>,
    pub(super) x: &'a B::View,
    pub(super) r: &'a B::View,
    pub(super) dw: &'a B::View,
    pub(super) queued: BackwardValues<B::Value>,
}

impl<B: Backend> QueuedBackward<'_, B> {
    /// `dL/dZ` (`N x E`), as queued.
    pub fn dz(&self) -> &B::View {
        view::<B>(&self.ws.dz)
    }
    /// `dL/dX` (`N x D`), as queued.
    pub fn dx(&self) -> &B::View {
        view::<B>(&self.ws.dx)
    }
    /// `dL/dR` in the weight's layout (SimBal's gradient included), as queued.
    pub fn dr(&self) -> &B::View {
        view::<B>(&self.ws.dr)
    }
    /// The LBL value, unread (when configured).
    pub fn lbl_value(&self) -> Option<&B::Value> {
        self.queued.lbl.as_ref()
    }
    /// The SimBal value, unread (when configured).
    pub fn simbal_value(&self) -> Option<&B::Value> {
        self.queued.simbal.as_ref()
    }
    /// `sum_t lse(z_t)^2` over the valid tokens, unread (when the z-loss is configured): the
    /// z-loss is `beta` times it over the valid tokens.
    pub fn lse_sq_sum(&self) -> Option<&B::Value> {
        self.queued.lse.as_ref().map(|(v, _, _)| v)
    }
    /// Reads the values and the checks in one transfer (the forward's pending checks among
    /// them) and looks at them: the loss values, as [`super::Pass::backward`] returns them.
    ///
    /// # Errors
    /// The value checks' errors of [`super::Pass::backward`] (and of the forward, whose checks a
    /// device reads here); backend failures.
    pub fn finish(self) -> Result<LossValues<B::Elem>> {
        finish_backward(
            self.backend,
            self.cfg,
            self.ws,
            &self.queued,
            (self.x, self.r),
            self.dw,
            None,
        )
    }
}

/// The step's one read (the forward's pending checks, the loss values, the checks) and what
/// it says; `dx` is where `dX` went (`None`: the workspace).
pub(super) fn finish_backward<B: Backend>(
    b: &B,
    cfg: &RouterConfig,
    ws: &mut Workspace<B>,
    queued: &BackwardValues<B::Value>,
    (x, r): (&B::View, &B::View),
    dw: &B::View,
    dx: Option<&B::View>,
) -> Result<LossValues<B::Elem>> {
    let Shape { d, e, .. } = ws.routing.shape;
    let got = settle_step(b, cfg, ws, queued, Some((x, r)), Some(dw))?;
    // |dX| <= 2E max|dZ| max|R|: when that bound is finite, dX is finite and its N x D scan
    // (a second read) is skipped.
    if let (Some(max_dz), Some(max_r)) = (got.max_dz, got.max_r) {
        let bound = B::Elem::of_usize(2 * e) * max_dz * max_r;
        if !num_traits::Float::is_finite(bound) {
            let dx = dx.unwrap_or(view::<B>(&ws.dx));
            b.check_finite("input gradient dX", d, dx)
                .map_err(|_| SimbalError::Overflow {
                    what: "input gradient dX",
                })?;
        }
    }
    if got.max_dr.is_some_and(|m| !num_traits::Float::is_finite(m)) {
        return Err(SimbalError::Overflow {
            what: "router gradient dR",
        });
    }
    Ok(got.losses)
}

/// `dZ` into the workspace from the gate gradient and the dense loss terms; returns the LBL
/// and z-loss values and the checks, left on the backend's side (see [`BackwardValues`]).
pub(super) fn backward_dz<B: Backend>(
    b: &B,
    cfg: &RouterConfig,
    ws: &mut Workspace<B>,
    dw: &B::View,
    losses: &LossConfig,
    global: Option<&RoutingStats>,
) -> Result<BackwardValues<B::Value>> {
    let Shape { n, k, .. } = ws.routing.shape;
    losses.validate(n)?;
    check_len("gate gradient", n * k, b.len(dw))?;
    let mut values = BackwardValues::default();
    if cfg.check_finite {
        values.dw = Some(b.max_abs(dw)?);
    }
    let layout = losses.lbl_layout();
    let Workspace {
        routing,
        tokens,
        lbl,
        dz,
        ..
    } = ws;
    let lg = tokens.groups_for(b, layout)?;
    let mut lbl_normalize = false;
    if let Some(lc) = losses.lbl {
        values.lbl = Some(lbl_for_pass(b, cfg, &lc, routing, &lg, global, lbl)?);
        lbl_normalize = lc.normalizes(cfg.score);
    }
    let valid = lg.valid;
    let z_coef = match losses.z_loss {
        Some(zc) => crate::zloss::z_coef(zc.beta, valid),
        None => <B::Elem as num_traits::Zero>::zero(),
    };
    let sums = b.router_backward(
        RouterBackward {
            cfg,
            n,
            z: view::<B>(&routing.z),
            p: view::<B>(&routing.p),
            idx: idx_view::<B>(&routing.idx),
            gates: view::<B>(&routing.gates),
            dropped: idx_view::<B>(&routing.dropped),
            dw,
            groups: lg.groups,
            lbl: losses.lbl.map(|_| LblCoef {
                coef: view::<B>(&lbl.coef),
                normalize: lbl_normalize,
            }),
            z_coef,
            dz: view_mut::<B>(dz),
            request: BackwardRequest {
                lse_sq_sum: losses.z_loss.is_some(),
                max_abs_dz: cfg.check_finite,
            },
        }
        // The indices are this backend's own `route` output.
        .check_lengths(b)?,
    )?;
    if let (Some(zc), Some(sum)) = (losses.z_loss, sums.lse_sq_sum) {
        values.lse = Some((sum, zc.beta, valid));
    }
    values.dz = sums.max_abs_dz;
    Ok(values)
}
