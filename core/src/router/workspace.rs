//! The router's reusable workspace: every buffer of its passes, allocated for a shape on the
//! first call of that shape, and the checks the forward and backward share.

use super::batch::TokenState;
use super::routing::{LossValues, Routing, Shape};
use super::settle::ForwardChecks;
use crate::backend::Backend;
use crate::config::{RouterConfig, WeightLayout};
use crate::error::{Result, SimbalError};
use crate::lbl::LblScratch;
use crate::scalar::Scalar;
use crate::shape::product;
use crate::simbal::SimbalWorkspace;

/// Every buffer of a router's forward and backward passes.
pub(crate) struct Workspace<B: Backend> {
    pub(crate) routing: Routing<B>,
    /// Whether `routing` holds a completed forward pass.
    pub(crate) routed: bool,
    /// The pass's token mask, sequence offsets and their group ids.
    pub(crate) tokens: TokenState<B>,
    pub(crate) dz: B::Buf,
    pub(crate) dx: B::Buf,
    pub(crate) dr: B::Buf,
    pub(crate) lbl: LblScratch<B>,
    pub(crate) simbal: SimbalWorkspace<B>,
    /// The forward's checks not looked at yet (see [`super::settle`]).
    pub(crate) checks: ForwardChecks<B::Value>,
    /// A copy of the checked selection bias, to locate a non-finite entry when the check is
    /// looked at after the forward.
    pub(crate) checked_bias: B::Buf,
}

impl<B: Backend> Workspace<B> {
    fn new(b: &B, layout: WeightLayout, shape: Shape) -> Result<Self> {
        let Shape { n, d, e, .. } = shape;
        Ok(Self {
            routing: Routing::new(b, shape)?,
            routed: false,
            tokens: TokenState::new(n),
            dz: b.zeros(product("logits", n, e)?)?,
            dx: b.zeros(product("tokens X", n, d)?)?,
            dr: b.zeros(product("router weight", d, e)?)?,
            lbl: LblScratch::new(b, e)?,
            simbal: SimbalWorkspace::new(b, layout, d.max(1), e)?,
            checks: ForwardChecks::default(),
            checked_bias: b.zeros(e)?,
        })
    }
}

/// The workspace for `shape` (reallocated only when the shape changed), with no routing in it.
pub(crate) fn prepare<'w, B: Backend>(
    b: &B,
    cfg: &RouterConfig,
    slot: &'w mut Option<Workspace<B>>,
    shape: Shape,
) -> Result<&'w mut Workspace<B>> {
    if !slot.as_ref().is_some_and(|w| w.routing.shape == shape) {
        *slot = None; // free the old buffers before allocating the new ones
        *slot = Some(Workspace::new(b, cfg.layout, shape)?);
    }
    let ws = slot.as_mut().ok_or(SimbalError::NoForward)?;
    ws.routed = false;
    ws.checks = ForwardChecks::default();
    Ok(ws)
}

/// Columns of the weight as stored (for error positions).
pub(crate) fn weight_cols(layout: WeightLayout, d: usize, e: usize) -> usize {
    match layout {
        WeightLayout::DxE => e,
        WeightLayout::ExD => d,
    }
}

/// A non-finite loss value never leaks: it becomes [`SimbalError::Overflow`].
pub(crate) fn finite_loss<T: Scalar>(v: &LossValues<T>) -> Result<()> {
    for (what, x) in [
        ("SimBal value", v.simbal),
        ("LBL value", v.lbl),
        ("z-loss value", v.z_loss),
        ("total loss", v.total),
    ] {
        if !num_traits::Float::is_finite(x) {
            return Err(SimbalError::Overflow { what });
        }
    }
    Ok(())
}
