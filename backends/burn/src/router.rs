//! [`MoeRouter`]: simbal's router on burn tensors, what burn users call every step.

use std::borrow::{Borrow, BorrowMut};
use std::sync::Arc;

use burn::tensor::{Bool, Int, Tensor, TensorPrimitive};
use simbal_core::router::Shape;
use simbal_core::{
    BiasUpdateConfig, LoadMetrics, LossConfig, LossValues, Memory, Result, RouterConfig,
    RoutingStats, SimbalError,
};

use crate::backend::SimbalBackend;
use crate::route::{RouteInputs, SharedRouter};

/// What a batch carries besides `X`: selection bias (`E`), token mask (`N`, `true` = valid) and
/// packed-sequence offsets (`S + 1`). Build with [`TensorBatch::new`] and its setters.
#[derive(Debug, Clone)]
pub struct TensorBatch<B: SimbalBackend> {
    bias: Option<Tensor<B, 1>>,
    mask: Option<Tensor<B, 1, Bool>>,
    offsets: Option<Tensor<B, 1, Int>>,
}

impl<B: SimbalBackend> Default for TensorBatch<B> {
    fn default() -> Self {
        Self {
            bias: None,
            mask: None,
            offsets: None,
        }
    }
}

impl<B: SimbalBackend> TensorBatch<B> {
    /// A batch of valid tokens without bias.
    pub fn new() -> Self {
        Self::default()
    }
    /// The selection bias (aux-loss-free balancing); it takes no gradient.
    pub fn bias(mut self, bias: Tensor<B, 1>) -> Self {
        self.bias = Some(bias);
        self
    }
    /// The token mask: `false` marks padding, which is routed but counts in no loss or statistic.
    pub fn mask(mut self, mask: Tensor<B, 1, Bool>) -> Self {
        self.mask = Some(mask);
        self
    }
    /// Packed-sequence offsets for [`simbal_core::SeqLayout::Packed`].
    pub fn offsets(mut self, offsets: Tensor<B, 1, Int>) -> Self {
        self.offsets = Some(offsets);
        self
    }
}

/// The auxiliary losses of one forward, each already times its coefficient (0 when not
/// configured). Each is a 1-element tensor; on `Autodiff` each is part of the graph: add the
/// ones to train with to the objective (or [`AuxLosses::total`]); one left out sends no gradient.
#[derive(Debug, Clone)]
pub struct AuxLosses<B: SimbalBackend> {
    /// SimBal, `lambda ||R^T R - I||_1` (or its configured variant).
    pub simbal: Tensor<B, 1>,
    /// The load-balancing loss, `alpha E sum_e f_e P_e` at its level.
    pub lbl: Tensor<B, 1>,
    /// Router z-loss, `beta mean lse(z)^2`.
    pub z_loss: Tensor<B, 1>,
}

impl<B: SimbalBackend> AuxLosses<B> {
    /// The sum of the three.
    pub fn total(&self) -> Tensor<B, 1> {
        self.simbal.clone() + self.lbl.clone() + self.z_loss.clone()
    }
}

/// The dispatch plan: kept assignment ids `t k + j` grouped by expert, in token order within each
/// expert (`order[offsets[e]..offsets[e + 1]]` are expert `e`'s).
#[derive(Debug, Clone)]
pub struct DispatchPlan<B: SimbalBackend> {
    /// Assignment ids (`N k`; the first `offsets[E]` entries are the plan).
    pub order: Tensor<B, 1, Int>,
    /// Per-expert offsets into `order` (`E + 1`).
    pub offsets: Tensor<B, 1, Int>,
}

/// What a router forward returns: the routing as tensors (Megatron's `probs, routing_map` and
/// more), the loss tensors, and their values on the host.
#[derive(Debug, Clone)]
pub struct RouterOutput<B: SimbalBackend> {
    /// Gates (`N x k`; 0 for dropped assignments). On `Autodiff`, their gradient flows through
    /// simbal's router backward into `X` and `R`.
    pub gates: Tensor<B, 2>,
    /// The auxiliary losses as tensors.
    pub losses: AuxLosses<B>,
    /// The same values on the host (read at the forward: no extra synchronisation to log them).
    pub values: LossValues<f64>,
    /// Expert indices (`N x k`, best first).
    pub indices: Tensor<B, 2, Int>,
    /// The plain top-k of the scores (`N x k`: no bias, no groups), which the LBL counts.
    pub plain_indices: Tensor<B, 2, Int>,
    /// Scores `P` (`N x E`), outside the graph (the gates carry the gradient).
    pub scores: Tensor<B, 2>,
    /// Dropped by the capacity limit (`N x k`).
    pub dropped: Tensor<B, 2, Bool>,
    /// Kept assignments per expert (`E`, masked tokens included: they are dispatched).
    pub counts: Tensor<B, 1, Int>,
    /// The dispatch plan.
    pub dispatch: DispatchPlan<B>,
    /// `N`, `D`, `E`, `k`.
    pub shape: Shape,
    /// Tokens the mask left valid.
    pub valid_tokens: usize,
}

/// simbal's router on burn tensors of backend `B`: one per MoE layer, cheap to clone (clones
/// share the router). Its forward returns the routing and the auxiliary loss tensors; on
/// `Autodiff<_>` backends `loss.backward()` then runs simbal's analytic backward.
///
/// ```
/// use burn::backend::{Autodiff, NdArray};
/// use burn::tensor::{Distribution, Tensor};
/// use simbal_burn::MoeRouter;
/// use simbal_core::{LossConfig, RouterConfig};
/// type B = Autodiff<NdArray<f32>>;
/// let device = Default::default();
/// let (n, d, e, k) = (16, 8, 4, 2);
/// let x = Tensor::<B, 2>::random([n, d], Distribution::Normal(0.0, 1.0), &device).require_grad();
/// let r = Tensor::<B, 2>::random([d, e], Distribution::Normal(0.0, 0.3), &device).require_grad();
/// let router = MoeRouter::<B>::new(RouterConfig::new(e, k), &device)?;
/// let out = router.forward(x.clone(), r.clone(), &LossConfig::simbal().with_lbl(Default::default()))?;
/// let task = out.gates.clone().powi_scalar(2).sum(); // stands for the experts' output loss
/// let grads = (task + out.losses.total()).backward();
/// assert_eq!(r.grad(&grads).unwrap().dims(), [d, e]);
/// assert!(router.take_error()?.is_none());
/// # Ok::<(), simbal_core::SimbalError>(())
/// ```
pub struct MoeRouter<B: SimbalBackend> {
    shared: SharedRouter<B::Engine>,
    device: B::Device,
}

// By hand: a derive would ask `B::Engine: Debug`, which the trait does not require.
impl<B: SimbalBackend> core::fmt::Debug for MoeRouter<B> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("MoeRouter")
            .field("device", &self.device)
            .finish_non_exhaustive()
    }
}

impl<B: SimbalBackend> Clone for MoeRouter<B> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
            device: self.device.clone(),
        }
    }
}

impl<B: SimbalBackend> MoeRouter<B> {
    /// A router for tensors on `device`.
    ///
    /// # Errors
    /// The configuration's errors ([`simbal_core::Router::new`]); the engine's
    /// ([`SimbalBackend::engine`]).
    pub fn new(cfg: RouterConfig, device: &B::Device) -> Result<Self> {
        Ok(Self {
            shared: SharedRouter::new(B::engine(device)?, cfg)?,
            device: device.clone(),
        })
    }

    /// The router's configuration.
    ///
    /// # Errors
    /// [`SimbalError::Backend`] when the router's lock was poisoned.
    pub fn config(&self) -> Result<RouterConfig> {
        Ok(*self.shared.lock()?.router.config())
    }

    /// Router forward of `x` (`N x D`) with weight `r` (`D x E`, or `E x D` for
    /// [`simbal_core::WeightLayout::ExD`]) and every token valid; the configured `losses`' values
    /// come back as tensors.
    ///
    /// # Errors
    /// As [`MoeRouter::forward_batch`].
    pub fn forward(
        &self,
        x: Tensor<B, 2>,
        r: Tensor<B, 2>,
        losses: &LossConfig,
    ) -> Result<RouterOutput<B>> {
        self.forward_batch(x, r, TensorBatch::new(), losses, None)
    }

    /// [`MoeRouter::forward`] with bias, mask and offsets, and the merged statistics a
    /// global-batch LBL needs (`global`).
    ///
    /// # Errors
    /// [`SimbalError::LengthMismatch`] for shapes that do not fit the configuration; the
    /// router's errors ([`simbal_core::Router::forward_batch`]) and the losses'
    /// ([`simbal_core::Pass::loss_values`]); transfer failures.
    pub fn forward_batch(
        &self,
        x: Tensor<B, 2>,
        r: Tensor<B, 2>,
        batch: TensorBatch<B>,
        losses: &LossConfig,
        global: Option<&RoutingStats>,
    ) -> Result<RouterOutput<B>> {
        let inputs = RouteInputs::<B> {
            x: x.into_primitive().tensor(),
            r: r.into_primitive().tensor(),
            bias: batch.bias.map(|b| b.into_primitive().tensor()),
            mask: batch.mask.map(Tensor::into_primitive),
            offsets: batch.offsets.map(Tensor::into_primitive),
        };
        let global = global.map(|g| Arc::new(g.clone()));
        // Without autodiff no backward follows: SimBal's value alone.
        let out = B::simbal_route(
            &self.shared,
            inputs,
            losses,
            global,
            B::ad_enabled(&self.device),
        )?;
        let Shape { n, k, .. } = out.shape;
        let packed = Tensor::<B, 1>::from_primitive(TensorPrimitive::Float(out.packed));
        let nk = n * k;
        let dropped = Tensor::<B, 2, Int>::from_primitive(out.dropped).equal_elem(1);
        Ok(RouterOutput {
            gates: packed.clone().slice(0..nk).reshape([n, k]),
            losses: AuxLosses {
                simbal: packed.clone().slice(nk..nk + 1),
                lbl: packed.clone().slice(nk + 1..nk + 2),
                z_loss: packed.slice(nk + 2..nk + 3),
            },
            values: out.values,
            indices: Tensor::from_primitive(out.indices),
            plain_indices: Tensor::from_primitive(out.plain_indices),
            scores: Tensor::from_primitive(TensorPrimitive::Float(out.scores)),
            dropped,
            counts: Tensor::from_primitive(out.counts),
            dispatch: DispatchPlan {
                order: Tensor::from_primitive(out.dispatch_order),
                offsets: Tensor::from_primitive(out.dispatch_offsets),
            },
            shape: out.shape,
            valid_tokens: out.valid_tokens,
        })
    }

    /// The statistics of the last forward (counts, score sums, tokens, dropped; valid tokens
    /// only): what a bias update and the load metrics read, mergeable across micro-batches and
    /// ranks.
    ///
    /// # Errors
    /// [`SimbalError::NoForward`] before a forward; backend failures.
    pub fn stats(&self) -> Result<RoutingStats> {
        self.shared.lock()?.router.stats()
    }

    /// Load metrics (MaxVio, entropy, dead experts, ...) of the last forward.
    ///
    /// # Errors
    /// As [`MoeRouter::stats`].
    pub fn load_metrics(&self) -> Result<LoadMetrics> {
        self.shared.lock()?.router.load_metrics()
    }

    /// The aux-loss-free bias update (DeepSeek-V3): `bias + rate sign(mean load - load_e)` from
    /// `stats` (merged ones for a global update), as a new tensor.
    ///
    /// # Errors
    /// As [`simbal_core::update_bias`]; transfer failures.
    pub fn update_bias(
        &self,
        bias: Tensor<B, 1>,
        cfg: &BiasUpdateConfig,
        stats: &RoutingStats,
    ) -> Result<Tensor<B, 1>> {
        let engine = self.shared.lock()?.router.backend().clone();
        let prim = bias.into_primitive().tensor();
        // The update writes in place: into a copy, since the caller's tensor may be shared.
        let lent = B::lend(&engine, &prim)?;
        let len = engine.len(lent.borrow());
        let mut buf = engine.zeros(len)?;
        engine.copy(lent.borrow(), buf.borrow_mut())?;
        simbal_core::update_bias(&engine, cfg, stats, buf.borrow_mut())?;
        let out = B::float_out(&engine, buf.borrow(), &[len], &self.device)?;
        Ok(Tensor::from_primitive(TensorPrimitive::Float(out)))
    }

    /// The error of the last failed backward, if any (burn's `backward()` returns nothing; a
    /// failed router backward registers NaN gradients and keeps its error here). Taking it
    /// clears it.
    ///
    /// # Errors
    /// [`SimbalError::Backend`] when the router's lock was poisoned.
    pub fn take_error(&self) -> Result<Option<SimbalError>> {
        Ok(self.shared.lock()?.error.take())
    }
}
