//! The router's checks, read with the step's scalar results in one transfer.
//!
//! With `check_finite` on, the forward's checks are `max |.|` values on the backend's side
//! ([`crate::Memory::Value`]). For memory whose values are plain elements they are looked at
//! before the forward returns; on a device ([`crate::Memory::values_wait`]) they stay pending
//! in the workspace and are read by the pass's first read (its backward, together with the
//! loss values, or its statistics), so that a training step waits for the device once. Only
//! when a value is not finite do further reads locate it (the error path may wait as it needs).

use crate::backend::Backend;
use crate::config::RouterConfig;
use crate::error::{Result, SimbalError};
use crate::memory::{view, Memory};
use crate::scalar::Scalar;

use super::routing::LossValues;
use super::workspace::{finite_loss, weight_cols, Workspace};

/// The forward's checks not looked at yet: each the `max |.|` of what it checks.
pub(crate) struct ForwardChecks<V> {
    /// The selection bias (a copy of it is in the workspace, to locate a bad entry).
    pub(crate) bias: Option<V>,
    /// Given logits (copied into the routing's `Z`).
    pub(crate) logits: Option<V>,
    /// `Z = X R`: non-finite for any non-finite `X` or `R`, or an overflow.
    pub(crate) z: Option<V>,
    /// The gates (unbounded scores without renormalisation).
    pub(crate) gates: Option<V>,
}

impl<V> Default for ForwardChecks<V> {
    fn default() -> Self {
        Self {
            bias: None,
            logits: None,
            z: None,
            gates: None,
        }
    }
}

impl<V> ForwardChecks<V> {
    /// The checks in reading order.
    pub(crate) fn values(&self) -> [Option<&V>; 4] {
        [&self.bias, &self.logits, &self.z, &self.gates].map(Option::as_ref)
    }
}

/// Reads the present values among `vals` in one transfer (nothing when none is present).
pub(crate) fn read_some<M: Memory + ?Sized, const K: usize>(
    m: &M,
    vals: [Option<&M::Value>; K],
) -> Result<[Option<M::Elem>; K]> {
    let Some(first) = vals.iter().flatten().next().copied() else {
        return Ok([None; K]);
    };
    // Absent values read the first one again: one fixed-size transfer, no allocation.
    let refs: [&M::Value; K] = vals.map(|v| v.unwrap_or(first));
    let mut out = [<M::Elem as num_traits::Zero>::zero(); K];
    m.read_values(&refs, &mut out)?;
    Ok(core::array::from_fn(|i| vals[i].map(|_| out[i])))
}

fn bad<T: num_traits::Float>(v: Option<T>) -> bool {
    v.is_some_and(|m| !m.is_finite())
}

/// Where the forward's checks are and what locates a failed one: the workspace's bias copy
/// and `Z`, and `X`, `R` when the caller still has them.
pub(crate) struct CheckSites<'a, B: Backend> {
    pub(crate) checks: &'a ForwardChecks<B::Value>,
    pub(crate) bias: &'a B::View,
    pub(crate) z: &'a B::View,
    pub(crate) d: usize,
    pub(crate) inputs: Option<(&'a B::View, &'a B::View)>,
}

impl<B: Backend> Workspace<B> {
    /// The sites of this workspace's pending checks.
    pub(crate) fn check_sites<'a>(
        &'a self,
        inputs: Option<(&'a B::View, &'a B::View)>,
    ) -> CheckSites<'a, B> {
        CheckSites {
            checks: &self.checks,
            bias: view::<B>(&self.checked_bias),
            z: view::<B>(&self.routing.z),
            d: self.routing.shape.d,
            inputs,
        }
    }
}

/// The error of the forward's checks read as `read` (in [`ForwardChecks::values`] order), if
/// one failed: located in the bias copy, the given logits, or `X` then `R` when the caller
/// still has them, else reported as an overflow of `Z`.
fn forward_error<B: Backend>(
    b: &B,
    cfg: &RouterConfig,
    at: &CheckSites<'_, B>,
    [bias, logits, z, gates]: [Option<B::Elem>; 4],
) -> Result<()> {
    let e = cfg.experts;
    if bad(bias) {
        b.check_finite("selection bias", e, at.bias)?;
    }
    if bad(logits) {
        b.check_finite("logits", e, at.z)?;
    }
    if bad(z) {
        // Any non-finite X or R reaches Z; only now pay for the scans that locate it.
        if let Some((x, r)) = at.inputs {
            b.check_finite("tokens X", at.d, x)?;
            b.check_finite("router weight", weight_cols(cfg.layout, at.d, e), r)?;
        }
        return Err(SimbalError::Overflow {
            what: "logits Z = X R",
        });
    }
    if bad(gates) {
        return Err(SimbalError::Overflow { what: "gates" });
    }
    // A check that a value failed but no scan could place (the bias copy or logits changed).
    if bad(bias) || bad(logits) {
        return Err(SimbalError::Overflow {
            what: "router inputs",
        });
    }
    Ok(())
}

/// Reads and looks at the forward's pending checks (nothing to read when none is pending),
/// leaving them pending: for the reads through a shared borrow.
pub(crate) fn settle_forward<B: Backend>(
    b: &B,
    cfg: &RouterConfig,
    at: &CheckSites<'_, B>,
) -> Result<()> {
    let read = read_some(b, at.checks.values())?;
    forward_error(b, cfg, at, read)
}

impl<B: Backend> Workspace<B> {
    /// Looks at the forward's checks as `read`: on an input error the router keeps no routing
    /// (as after a failed forward); otherwise they are done with and not read again.
    fn accept_checks(
        &mut self,
        b: &B,
        cfg: &RouterConfig,
        read: [Option<B::Elem>; 4],
        inputs: Option<(&B::View, &B::View)>,
    ) -> Result<()> {
        if let Err(err) = forward_error(b, cfg, &self.check_sites(inputs), read) {
            self.routed = false;
            return Err(err);
        }
        self.checks = ForwardChecks::default();
        Ok(())
    }

    /// Reads and looks at the forward's pending checks (see [`Workspace::accept_checks`]).
    pub(crate) fn settle_checks(
        &mut self,
        b: &B,
        cfg: &RouterConfig,
        inputs: Option<(&B::View, &B::View)>,
    ) -> Result<()> {
        let read = read_some(b, self.checks.values())?;
        self.accept_checks(b, cfg, read, inputs)
    }
}

/// What a backward queued on the backend's side, read with the forward's pending checks.
pub(crate) struct BackwardValues<V> {
    /// `max |dW|` (the gate gradient's check).
    pub(crate) dw: Option<V>,
    /// The LBL value.
    pub(crate) lbl: Option<V>,
    /// `sum_t lse(z_t)^2`, the z-loss's `beta` and the valid tokens it is a mean over.
    pub(crate) lse: Option<(V, f64, usize)>,
    /// `max |dZ|`.
    pub(crate) dz: Option<V>,
    /// The SimBal value.
    pub(crate) simbal: Option<V>,
    /// `max |R|` and `max |dR|`: the checks of the weight gradient.
    pub(crate) r: Option<V>,
    pub(crate) dr: Option<V>,
}

impl<V> Default for BackwardValues<V> {
    fn default() -> Self {
        Self {
            dw: None,
            lbl: None,
            lse: None,
            dz: None,
            simbal: None,
            r: None,
            dr: None,
        }
    }
}

/// A backward's values as read: the loss values, and `max |dZ|`, `max |R|`, `max |dR|`.
pub(crate) struct BackwardRead<T> {
    pub(crate) losses: LossValues<T>,
    pub(crate) max_dz: Option<T>,
    pub(crate) max_r: Option<T>,
    pub(crate) max_dr: Option<T>,
}

/// The step's one read: the forward's pending checks and the backward's values `v` in one
/// transfer, looked at in order: the forward's inputs (see [`Workspace::accept_checks`]), the
/// gate gradient `dw` (`N x k`, scanned to locate a non-finite entry; `None`: no gate
/// gradient), `dZ`, the loss values. The caller looks at the weight-gradient checks, whose
/// buffers it holds.
pub(crate) fn settle_step<B: Backend>(
    b: &B,
    cfg: &RouterConfig,
    ws: &mut Workspace<B>,
    v: &BackwardValues<B::Value>,
    inputs: Option<(&B::View, &B::View)>,
    dw: Option<&B::View>,
) -> Result<BackwardRead<B::Elem>> {
    let [f0, f1, f2, f3] = ws.checks.values();
    let lse = v.lse.as_ref().map(|(s, _, _)| s);
    let [bias, logits, z, gates, max_dw, lbl, lse_sum, max_dz, simbal, max_r, max_dr] = read_some(
        b,
        [
            f0,
            f1,
            f2,
            f3,
            v.dw.as_ref(),
            v.lbl.as_ref(),
            lse,
            v.dz.as_ref(),
            v.simbal.as_ref(),
            v.r.as_ref(),
            v.dr.as_ref(),
        ],
    )?;
    ws.accept_checks(b, cfg, [bias, logits, z, gates], inputs)?;
    if bad(max_dw) {
        if let Some(dw) = dw {
            b.check_finite("gate gradient", cfg.k, dw)?;
        }
        return Err(SimbalError::Overflow {
            what: "gate gradient",
        });
    }
    // Finite inputs can still overflow here (a large scale times a large dW); report it
    // instead of handing back an inf/NaN dZ.
    if bad(max_dz) {
        return Err(SimbalError::Overflow {
            what: "logit gradient dZ",
        });
    }
    let zero = <B::Elem as num_traits::Zero>::zero();
    let mut losses = LossValues {
        lbl: lbl.unwrap_or(zero),
        simbal: simbal.unwrap_or(zero),
        ..LossValues::default()
    };
    if let (Some(sum), Some(&(_, beta, valid))) = (lse_sum, v.lse.as_ref()) {
        if valid > 0 {
            losses.z_loss = B::Elem::of(beta) * sum / B::Elem::of_usize(valid);
        }
    }
    losses.total = losses.simbal + losses.lbl + losses.z_loss;
    finite_loss(&losses)?;
    Ok(BackwardRead {
        losses,
        max_dz,
        max_r,
        max_dr,
    })
}
