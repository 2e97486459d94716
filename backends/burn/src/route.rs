//! The router forward and backward on a burn backend's primitives, through its engine: what
//! [`crate::SimbalBackend::simbal_route`] runs by default and what the autodiff node's backward
//! runs.

use std::borrow::{Borrow, BorrowMut};
use std::sync::{Arc, Mutex, MutexGuard};

use burn::tensor::ops::{BoolTensor, FloatTensor, IntTensor};
use burn::tensor::{Tensor, TensorData, TensorMetadata, TensorPrimitive};
use simbal_core::memory::{idx_view, view};
use simbal_core::router::Shape;
use simbal_core::shape::check_len;
use simbal_core::{
    simbal_loss, Batch, LossConfig, LossValues, Memory, Result, Router, RouterConfig, RoutingStats,
    Scalar, SimbalError, SimbalWorkspace,
};

use crate::backend::{IdxBufOf, SimbalBackend, Spare, ViewOf};
use crate::convert::float_host;

/// What a router keeps between calls: simbal's router on the engine, a count of its forwards
/// (a backward checks it still holds its own forward's routing) and the error of the last
/// backward, which burn's graph has no way to return.
pub struct RouterCell<E: simbal_core::Backend> {
    pub(crate) router: Router<E>,
    pub(crate) generation: u64,
    pub(crate) error: Option<SimbalError>,
    pub(crate) spare: Spare,
    /// SimBal's buffers, for the value and gradient computed at the forward.
    pub(crate) simbal: Option<SimbalWorkspace<E>>,
}

/// A router shared by the module that calls it and the graph nodes its forwards made.
pub struct SharedRouter<E: simbal_core::Backend>(Arc<Mutex<RouterCell<E>>>);

impl<E: simbal_core::Backend> Clone for SharedRouter<E> {
    fn clone(&self) -> Self {
        Self(Arc::clone(&self.0))
    }
}

impl<E: simbal_core::Backend> core::fmt::Debug for SharedRouter<E> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("SharedRouter")
    }
}

impl<E: simbal_core::Backend> SharedRouter<E> {
    /// A router on `engine`.
    ///
    /// # Errors
    /// As [`Router::new`].
    pub fn new(engine: E, cfg: RouterConfig) -> Result<Self> {
        Ok(Self(Arc::new(Mutex::new(RouterCell {
            router: Router::new(engine, cfg)?,
            generation: 0,
            error: None,
            spare: Spare::default(),
            simbal: None,
        }))))
    }

    /// The router, locked.
    ///
    /// # Errors
    /// [`SimbalError::Backend`] when a thread panicked while holding it.
    pub(crate) fn lock(&self) -> Result<MutexGuard<'_, RouterCell<E>>> {
        self.0.lock().map_err(|_| SimbalError::Backend {
            message: "simbal-burn: the router's lock was poisoned by a panic".into(),
        })
    }

    /// Keeps a backward's error for [`crate::MoeRouter::take_error`].
    pub(crate) fn record(&self, e: SimbalError) {
        if let Ok(mut cell) = self.0.lock() {
            cell.error.get_or_insert(e);
        }
    }
}

/// The tensors of one router call, as a backend's primitives.
#[derive(Clone, Debug)]
pub struct RouteInputs<B: SimbalBackend> {
    /// Tokens `X` (`N x D`).
    pub x: FloatTensor<B>,
    /// Router weight `R` (`D x E`, or `E x D` for [`simbal_core::WeightLayout::ExD`]).
    pub r: FloatTensor<B>,
    /// Selection bias (`E`).
    pub bias: Option<FloatTensor<B>>,
    /// Token mask (`N`, `true` = valid).
    pub mask: Option<BoolTensor<B>>,
    /// Packed-sequence offsets (`S + 1`).
    pub offsets: Option<IntTensor<B>>,
}

/// What a router forward computed, as a backend's primitives.
#[derive(Debug)]
pub struct RouteOutputs<B: SimbalBackend> {
    /// The gates (`N k`) followed by the three loss values (SimBal, LBL, z-loss, each times its
    /// coefficient): one tensor, so that on `Autodiff` one graph node carries them all.
    pub packed: FloatTensor<B>,
    /// Scores `P` (`N x E`).
    pub scores: FloatTensor<B>,
    /// Expert indices (`N x k`).
    pub indices: IntTensor<B>,
    /// The plain top-k of the scores (`N x k`).
    pub plain_indices: IntTensor<B>,
    /// Dropped flags, 0 or 1 (`N x k`).
    pub dropped: IntTensor<B>,
    /// Kept assignments per expert (`E`).
    pub counts: IntTensor<B>,
    /// Dispatch plan: kept assignment ids `t k + j` by expert (`N k`; the first
    /// `dispatch_offsets[E]` entries are the plan).
    pub dispatch_order: IntTensor<B>,
    /// Dispatch plan: per-expert offsets (`E + 1`).
    pub dispatch_offsets: IntTensor<B>,
    /// The loss values on the host.
    pub values: LossValues<f64>,
    /// The routed shape.
    pub shape: Shape,
    /// Valid (unmasked) tokens.
    pub valid_tokens: usize,
    /// Which forward of its router this is.
    pub generation: u64,
    /// SimBal's gradient (times its `lambda`, the weight's layout), computed with its value
    /// when a backward will follow.
    pub simbal_grad: Option<FloatTensor<B>>,
}

/// Shapes of `X` and `R` as the router reads them.
fn check_shapes(cfg: &RouterConfig, x: &[usize], r: &[usize]) -> Result<()> {
    let rank = |what, dims: &[usize]| {
        if dims.len() == 2 {
            Ok(())
        } else {
            Err(SimbalError::LengthMismatch {
                what,
                expected: 2,
                got: dims.len(),
            })
        }
    };
    rank("rank of X", x)?;
    rank("rank of R", r)?;
    let (d, e) = match cfg.layout {
        simbal_core::WeightLayout::DxE => (r[0], r[1]),
        simbal_core::WeightLayout::ExD => (r[1], r[0]),
    };
    check_len("experts in R", cfg.experts, e)?;
    check_len("columns of X (the width D of R)", d, x[1])
}

/// What a batch carries besides `X`, lent to the engine.
struct Extras<'a, B: SimbalBackend> {
    bias: Option<B::Lent<'a>>,
    mask: Option<IdxBufOf<B>>,
    offsets: Option<IdxBufOf<B>>,
}

impl<'a, B: SimbalBackend> Extras<'a, B> {
    fn lend(engine: &B::Engine, inputs: &'a RouteInputs<B>) -> Result<Self> {
        Ok(Self {
            bias: inputs
                .bias
                .as_ref()
                .map(|b| B::lend(engine, b))
                .transpose()?,
            mask: inputs
                .mask
                .clone()
                .map(|m| B::mask_in(engine, m))
                .transpose()?,
            offsets: inputs
                .offsets
                .clone()
                .map(|o| B::idx_in(engine, o))
                .transpose()?,
        })
    }

    fn batch(&self) -> Batch<'_, B::Engine> {
        let mut batch = Batch::with_bias(self.bias.as_ref().map(Borrow::borrow));
        if let Some(m) = &self.mask {
            batch = batch.mask(idx_view::<B::Engine>(m));
        }
        if let Some(o) = &self.offsets {
            batch = batch.offsets(idx_view::<B::Engine>(o));
        }
        batch
    }
}

/// The default router forward: routing, loss values and the dispatch plan as primitives;
/// SimBal's gradient too when a `backward` will follow.
pub(crate) fn route_with_engine<B: SimbalBackend>(
    router: &SharedRouter<B::Engine>,
    inputs: &RouteInputs<B>,
    losses: &LossConfig,
    global: Option<&RoutingStats>,
    backward: bool,
) -> Result<RouteOutputs<B>> {
    let mut cell = router.lock()?;
    let engine = cell.router.backend().clone();
    check_shapes(
        cell.router.config(),
        &inputs.x.shape().to_vec(),
        &inputs.r.shape().to_vec(),
    )?;
    let device = B::float_device(&inputs.x);
    let x = B::lend(&engine, &inputs.x)?;
    let r = B::lend(&engine, &inputs.r)?;
    let extras = Extras::lend(&engine, inputs)?;
    cell.generation += 1;
    let generation = cell.generation;
    let RouterCell {
        router,
        spare,
        simbal,
        ..
    } = &mut *cell;
    let layout = router.config().layout;
    let mut pass = router.forward_batch(x.borrow(), r.borrow(), extras.batch())?;
    let rest = LossConfig {
        simbal: None,
        ..*losses
    };
    let mut v = pass.loss_values(&rest, global)?;
    let shape = pass.shape();
    let Shape { n, d, e, k } = shape;
    // SimBal's value (and, for a backward, its gradient) once, here: it needs only `R`, and the
    // backward adds the gradient times the SimBal tensor's upstream gradient.
    let mut simbal_grad = None;
    if let Some(sc) = losses.simbal {
        let ws = match simbal {
            Some(ws) if ws.fits(layout, d, e) => ws,
            _ => simbal.insert(SimbalWorkspace::new(&engine, layout, d, e)?),
        };
        if backward {
            let mut grad = engine.zeros(d * e)?;
            v.simbal = simbal_loss(&engine, &sc, r.borrow(), Some(grad.borrow_mut()), ws)?;
            let rs = inputs.r.shape().to_vec();
            simbal_grad = Some(B::grad_out(&engine, grad, &rs, &device, spare)?);
        } else {
            v.simbal = simbal_loss(&engine, &sc, r.borrow(), None, ws)?;
        }
    }
    let gates = B::float_out(&engine, pass.gates(), &[n * k], &device)?;
    let vals = [v.simbal, v.lbl, v.z_loss].map(Scalar::to_f64_lossy);
    let vals_t = B::float_from_data(
        TensorData::new(vals.to_vec(), [3]).convert::<B::FloatElem>(),
        &device,
    );
    let packed = B::float_cat(vec![gates, vals_t], 0);
    Ok(RouteOutputs {
        packed,
        scores: B::float_out(&engine, pass.scores(), &[n, e], &device)?,
        indices: B::int_out(&engine, pass.indices(), &[n, k], &device)?,
        plain_indices: B::int_out(&engine, pass.plain_indices(), &[n, k], &device)?,
        dropped: B::int_out(&engine, pass.dropped(), &[n, k], &device)?,
        counts: B::int_out(&engine, pass.counts(), &[e], &device)?,
        dispatch_order: B::int_out(&engine, pass.dispatch_order(), &[n * k], &device)?,
        dispatch_offsets: B::int_out(&engine, pass.dispatch_offsets(), &[e + 1], &device)?,
        values: LossValues {
            simbal: vals[0],
            lbl: vals[1],
            z_loss: vals[2],
            total: vals.iter().sum(),
        },
        shape,
        valid_tokens: pass.valid_tokens(),
        generation,
        simbal_grad,
    })
}

/// The LBL and z-loss configuration whose gradient is `g` times each configured loss's (`g`:
/// the LBL and z-loss tensors' upstream gradients): the terms with `g > 0`, and apart the terms
/// with `g < 0` at `|g|` (subtracted), since coefficients are non-negative. A term with `g = 0`
/// (its tensor unused) is left out. SimBal is not here: its gradient comes from the forward.
fn scaled_losses(losses: &LossConfig, g_lbl: f64, g_z: f64) -> (LossConfig, Option<LossConfig>) {
    let part = |sign: f64| {
        let w = |g: f64| (g * sign > 0.0).then_some(g * sign);
        LossConfig {
            simbal: None,
            lbl: losses.lbl.and_then(|mut c| {
                c.alpha *= w(g_lbl)?;
                Some(c)
            }),
            z_loss: losses.z_loss.and_then(|mut c| {
                c.beta *= w(g_z)?;
                Some(c)
            }),
        }
    };
    let neg = part(-1.0);
    let any_neg = neg.lbl.is_some() || neg.z_loss.is_some();
    (part(1.0), any_neg.then_some(neg))
}

/// What a backward needs of its forward.
#[derive(Clone)]
pub(crate) struct BackwardState<B: SimbalBackend> {
    pub router: SharedRouter<B::Engine>,
    pub inputs: RouteInputs<B>,
    pub losses: LossConfig,
    pub global: Option<Arc<RoutingStats>>,
    pub generation: u64,
    pub nk: usize,
    pub simbal_grad: Option<FloatTensor<B>>,
}

impl<B: SimbalBackend> core::fmt::Debug for BackwardState<B> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("BackwardState")
            .field("losses", &self.losses)
            .field("generation", &self.generation)
            .field("nk", &self.nk)
            .finish_non_exhaustive()
    }
}

/// `dX` and `dR` from the packed output's gradient `grad` (`N k` gate gradients, then the
/// three loss tensors' gradients): simbal's router backward, after routing `X` again when the
/// router has routed another batch since.
pub(crate) fn backward_with_engine<B: SimbalBackend>(
    st: &BackwardState<B>,
    grad: FloatTensor<B>,
) -> Result<(FloatTensor<B>, FloatTensor<B>)> {
    let nk = st.nk;
    let grad = Tensor::<B, 1>::from_primitive(TensorPrimitive::Float(grad));
    let g = float_host::<B, f64>(grad.clone().slice(nk..nk + 3).into_primitive().tensor())?;
    let dw = grad.slice(0..nk).into_primitive().tensor();
    // SimBal's gradient came with the forward; the rest is simbal's router backward.
    let (pos, neg) = scaled_losses(&st.losses, g[1], g[2]);
    let mut cell = st.router.lock()?;
    let engine = cell.router.backend().clone();
    let device = B::float_device(&st.inputs.x);
    let (xs, rs) = (st.inputs.x.shape().to_vec(), st.inputs.r.shape().to_vec());
    let x = B::lend(&engine, &st.inputs.x)?;
    let r = B::lend(&engine, &st.inputs.r)?;
    if cell.generation != st.generation {
        // The router routed another batch since: route this one again (the same inputs give
        // the same routing), then it is the router's latest forward.
        let extras = Extras::lend(&engine, &st.inputs)?;
        cell.generation += 1;
        cell.router
            .forward_batch(x.borrow(), r.borrow(), extras.batch())?;
    }
    let dw = B::lend(&engine, &dw)?;
    let global = st.global.as_deref();
    let RouterCell { router, spare, .. } = &mut *cell;
    let mut pass = router.resume(x.borrow(), r.borrow())?;
    let (lx, lr) = (xs.iter().product(), rs.iter().product());
    let mut grads = |dw: &ViewOf<B>, losses: &LossConfig, spare: &mut Spare| {
        let mut dx = B::grad_buf(&engine, lx, spare)?;
        let mut dr = B::grad_buf(&engine, lr, spare)?;
        pass.backward_into(dw, losses, global, dx.borrow_mut(), dr.borrow_mut())?;
        Ok::<_, SimbalError>((
            B::grad_out(&engine, dx, &xs, &device, spare)?,
            B::grad_out(&engine, dr, &rs, &device, spare)?,
        ))
    };
    let (mut dx, mut dr) = grads(dw.borrow(), &pos, spare)?;
    if let Some(neg) = neg {
        let zeros = engine.zeros(nk)?;
        let (nx, nr) = grads(view::<B::Engine>(&zeros), &neg, spare)?;
        dx = B::float_sub(dx, nx);
        dr = B::float_sub(dr, nr);
    }
    if let (Some(sg), true) = (&st.simbal_grad, g[0] != 0.0) {
        let sg = Tensor::<B, 2>::from_primitive(TensorPrimitive::Float(sg.clone()));
        let d = Tensor::<B, 2>::from_primitive(TensorPrimitive::Float(dr)) + sg.mul_scalar(g[0]);
        dr = d.into_primitive().tensor();
    }
    Ok((dx, dr))
}

/// A float tensor of `shape` filled with NaN: the gradient a failed backward registers, so that
/// the failure shows in the parameters as well as in [`crate::MoeRouter::take_error`].
pub(crate) fn nan_like<B: SimbalBackend>(t: &FloatTensor<B>) -> FloatTensor<B> {
    let shape = t.shape();
    let len = shape.num_elements();
    let data = TensorData::new(vec![f64::NAN; len], shape).convert::<B::FloatElem>();
    B::float_from_data(data, &B::float_device(t))
}
