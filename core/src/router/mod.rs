//! The router: top-k routing with gates, capacity and the dispatch plan, and its backward with
//! the auxiliary losses. Its reference rows are in [`mod@reference`] (scores in [`score`], selection
//! and gates in [`select`]), its kernel family in [`kernels`], what a pass returns in
//! [`routing`]; here is [`Router`], the object users call every training step.
//!
//! A forward call returns a [`Pass`] that derefs to the [`Routing`] (indices, gates, scores,
//! counts, dropped flags, dispatch plan) and remembers `X` and `R`, so its backward takes only
//! the gate gradient and returns the loss values with `dX`, `dR` and `dZ`.

pub(crate) mod batch;
pub mod kernels;
mod pass;
mod queued;
pub mod reference;
pub mod routing;
pub mod score;
pub mod select;
mod settle;
pub mod sinkhorn;
mod values;
mod workspace;

use crate::backend::Backend;
use crate::config::{RouterConfig, ScoreFn, WeightLayout};
use crate::error::{Result, SimbalError};
use crate::gemm::Gemm;
use crate::memory::{idx_view_mut, view, view_mut, Memory};
use crate::metrics::LoadMetrics;
use crate::scalar::Scalar;
use crate::shape::{check_dims, check_len};
use crate::stats::RoutingStats;
pub use batch::Batch;
use kernels::{Logits, Route, RouteRequest, RouteSums};
use pass::{dispatch, routing_entropy, stats_into};
pub use pass::{LogitsPass, Pass, Routed};
pub use queued::QueuedBackward;
pub use routing::{Gradients, LogitGradients, LossValues, Routing, Shape};
use workspace::{prepare, Workspace};

/// A router on backend `B`: the configuration and a reusable workspace, allocated on the first
/// call of a shape and reused by every later call of that shape (a training step allocates
/// nothing).
///
/// ```
/// use simbal_core::{LossConfig, Reference, Router, RouterConfig, orthogonal_init, WeightLayout};
/// let (n, d, e, k) = (8, 16, 4, 2);
/// let x: Vec<f64> = (0..n * d).map(|i| ((i * 37 % 11) as f64 - 5.0) / 5.0).collect();
/// let r = orthogonal_init(WeightLayout::DxE, d, e, 1)?;
/// let mut router = Router::new(Reference::<f64>::new(), RouterConfig::new(e, k))?;
/// let mut pass = router.forward(&x, &r, None)?;
/// assert_eq!(pass.indices().len(), n * k); // the routing, as slices on a host backend
/// let dw = vec![1.0; n * k];
/// let grads = pass.backward(&dw, &LossConfig::simbal(), None)?;
/// assert!(grads.losses.simbal < 1e-10); // orthogonal init: SimBal starts at 0
/// assert_eq!((grads.dx.len(), grads.dr.len()), (n * d, d * e));
/// # Ok::<(), simbal_core::SimbalError>(())
/// ```
pub struct Router<B: Backend> {
    backend: B,
    cfg: RouterConfig,
    ws: Option<Workspace<B>>,
}

impl<B: Backend> Router<B> {
    /// A router with a validated configuration; buffers come with the first call.
    ///
    /// # Errors
    /// The configuration's errors ([`RouterConfig::validate`]), and
    /// [`SimbalError::InvalidCoefficient`] for a gate scale that is not finite in `B::Elem`.
    pub fn new(backend: B, cfg: RouterConfig) -> Result<Self> {
        validate_for::<B::Elem>(&cfg)?;
        Ok(Self {
            backend,
            cfg,
            ws: None,
        })
    }

    /// The backend.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// The configuration.
    pub fn config(&self) -> &RouterConfig {
        &self.cfg
    }

    /// Replaces the configuration; the workspace is kept when the shape allows, the last
    /// routing is forgotten.
    ///
    /// # Errors
    /// As [`Router::new`].
    pub fn set_config(&mut self, cfg: RouterConfig) -> Result<()> {
        validate_for::<B::Elem>(&cfg)?;
        if cfg.experts != self.cfg.experts || cfg.k != self.cfg.k || cfg.layout != self.cfg.layout {
            self.ws = None;
        }
        self.forget_routing();
        self.cfg = cfg;
        Ok(())
    }

    /// Router forward from tokens: `Z = X R` (or `X W^T` for [`WeightLayout::ExD`]), scores,
    /// top-k with the optional selection `bias` (`E`), gates, capacity and the dispatch plan.
    /// `N` and `D` come from the lengths: `r` holds `D x E`, `x` holds `N x D`. Every token is
    /// valid; [`Router::forward_batch`] takes a token mask and sequence offsets.
    ///
    /// # Errors
    /// [`SimbalError::LengthMismatch`] when `r` is not a multiple of `E` or `x` not a multiple of
    /// `D`, or `bias` has not `E` entries; [`SimbalError::ZeroDim`] for no token;
    /// [`SimbalError::NonFinite`] (with its position) for a non-finite `X`, `R` or bias when the
    /// configuration checks values, and [`SimbalError::Overflow`] when finite inputs overflow
    /// the logits; backend failures. On a device backend ([`Memory::values_wait`]) the value
    /// checks are read with the step's loss values instead, so that a step waits for the device
    /// once: those two errors then come from the pass's first read ([`Pass::backward`],
    /// [`Pass::stats`], or [`Pass::check`] on demand).
    pub fn forward<'a>(
        &'a mut self,
        x: &'a B::View,
        r: &'a B::View,
        bias: Option<&B::View>,
    ) -> Result<Pass<'a, B>> {
        self.forward_batch(x, r, Batch::with_bias(bias))
    }

    /// [`Router::forward`] with what the batch carries besides `X`: selection bias, token mask
    /// (masked tokens are routed and dispatched but count in no statistic or loss) and
    /// packed-sequence offsets.
    ///
    /// # Errors
    /// As [`Router::forward`]; [`SimbalError::InvalidMask`] for a mask entry other than 0 or
    /// 1, [`SimbalError::InvalidOffsets`] for offsets that do not start at 0, increase strictly
    /// and end at `N`, [`SimbalError::LengthMismatch`] for a mask without `N` entries.
    pub fn forward_batch<'a>(
        &'a mut self,
        x: &'a B::View,
        r: &'a B::View,
        batch: Batch<'_, B>,
    ) -> Result<Pass<'a, B>> {
        self.forget_routing();
        let shape = self.token_shape(x, r)?;
        let (b, cfg) = (&self.backend, &self.cfg);
        let ws = prepare(b, cfg, &mut self.ws, shape)?;
        let bias = batch.bias;
        check_bias(b, cfg, ws, bias)?;
        ws.tokens.load(b, &batch)?;
        let gemm = match cfg.layout {
            WeightLayout::DxE => Gemm::new(shape.n, shape.e, shape.d),
            WeightLayout::ExD => Gemm::new(shape.n, shape.e, shape.d).tb(),
        };
        let request = RouteRequest {
            max_abs_z: cfg.check_finite,
        };
        let logits = Logits::Tokens { gemm, x, r };
        let sums = route_rows(b, cfg, &mut ws.routing, logits, bias, request)?;
        ws.checks.z = sums.max_abs_z;
        let routed = dispatched(b, cfg, ws, Some((x, r)))?;
        Ok(Pass { routed, x, r })
    }

    /// Router forward from precomputed logits `z` (`N x E`, `N` from its length); the pass's
    /// backward then gives `dZ`.
    ///
    /// # Errors
    /// [`SimbalError::LengthMismatch`] when `z` is not a multiple of `E` or `bias` has not `E`
    /// entries; [`SimbalError::ZeroDim`] for no token; [`SimbalError::NonFinite`] for a
    /// non-finite logit or bias when the configuration checks values; backend failures.
    pub fn forward_logits(
        &mut self,
        z: &B::View,
        bias: Option<&B::View>,
    ) -> Result<LogitsPass<'_, B>> {
        self.forward_logits_batch(z, Batch::with_bias(bias))
    }

    /// [`Router::forward_logits`] with a token mask and sequence offsets (see [`Batch`]).
    ///
    /// # Errors
    /// As [`Router::forward_logits`] and [`Router::forward_batch`].
    pub fn forward_logits_batch(
        &mut self,
        z: &B::View,
        batch: Batch<'_, B>,
    ) -> Result<LogitsPass<'_, B>> {
        self.forget_routing();
        let bias = batch.bias;
        let e = self.cfg.experts;
        let n = rows_of(&self.backend, "logits", z, e)?;
        check_dims(n, 1, e)?;
        let shape = Shape {
            n,
            d: 0,
            e,
            k: self.cfg.k,
        };
        let (b, cfg) = (&self.backend, &self.cfg);
        let ws = prepare(b, cfg, &mut self.ws, shape)?;
        check_bias(b, cfg, ws, bias)?;
        ws.tokens.load(b, &batch)?;
        b.copy(z, view_mut::<B>(&mut ws.routing.z))?;
        if cfg.check_finite {
            ws.checks.logits = Some(b.max_abs(view::<B>(&ws.routing.z))?);
        }
        let request = RouteRequest::default();
        route_rows(b, cfg, &mut ws.routing, Logits::Given, bias, request)?;
        Ok(LogitsPass {
            routed: dispatched(b, cfg, ws, None)?,
        })
    }

    /// The routing of the last forward pass.
    ///
    /// # Errors
    /// [`SimbalError::NoForward`] before any forward pass (or after [`Router::set_config`]).
    pub fn routing(&self) -> Result<&Routing<B>> {
        match &self.ws {
            Some(ws) if ws.routed => Ok(&ws.routing),
            _ => Err(SimbalError::NoForward),
        }
    }

    /// The pass of the last forward from tokens, for a backward that runs apart from its
    /// forward (the forward's [`Pass`] is gone): `x` and `r` must be the forward's.
    ///
    /// # Errors
    /// [`SimbalError::NoForward`] without a forward from tokens of this shape;
    /// [`SimbalError::LengthMismatch`] when `x` or `r` do not have the forward's lengths.
    pub fn resume<'a>(&'a mut self, x: &'a B::View, r: &'a B::View) -> Result<Pass<'a, B>> {
        let shape = self.token_shape(x, r)?;
        let (b, cfg) = (&self.backend, &self.cfg);
        match self.ws.as_mut() {
            Some(ws) if ws.routed && ws.routing.shape == shape => Ok(Pass {
                routed: Routed {
                    backend: b,
                    cfg,
                    ws,
                },
                x,
                r,
            }),
            _ => Err(SimbalError::NoForward),
        }
    }

    /// Statistics of the last forward pass, written into `out` (resized to `E`; no
    /// allocation once it has that size).
    ///
    /// # Errors
    /// [`SimbalError::NoForward`] before any forward pass; backend failures.
    pub fn stats_into(&self, out: &mut RoutingStats) -> Result<()> {
        let ws = self.completed()?;
        settle::settle_forward(&self.backend, &self.cfg, &ws.check_sites(None))?;
        stats_into(&self.backend, &self.cfg, ws, out)
    }

    /// Statistics of the last forward pass.
    ///
    /// # Errors
    /// As [`Router::stats_into`].
    pub fn stats(&self) -> Result<RoutingStats> {
        let mut s = RoutingStats::default();
        self.stats_into(&mut s)?;
        Ok(s)
    }

    /// Load metrics of the last forward pass.
    ///
    /// # Errors
    /// As [`Router::stats_into`].
    pub fn load_metrics(&self) -> Result<LoadMetrics> {
        Ok(LoadMetrics::from_counts(&self.stats()?.counts))
    }

    /// Mean routing entropy of the last forward pass's scores (nats).
    ///
    /// # Errors
    /// As [`Router::stats_into`].
    pub fn routing_entropy(&self) -> Result<B::Elem> {
        let ws = self.completed()?;
        settle::settle_forward(&self.backend, &self.cfg, &ws.check_sites(None))?;
        routing_entropy(&self.backend, ws)
    }

    /// The workspace of the last completed forward pass.
    fn completed(&self) -> Result<&Workspace<B>> {
        match &self.ws {
            Some(ws) if ws.routed => Ok(ws),
            _ => Err(SimbalError::NoForward),
        }
    }

    /// A forward that fails leaves no routing behind (not even the previous one).
    fn forget_routing(&mut self) {
        if let Some(ws) = self.ws.as_mut() {
            ws.routed = false;
        }
    }

    /// `N x D` from the lengths of `x` and `r`.
    fn token_shape(&self, x: &B::View, r: &B::View) -> Result<Shape> {
        let (b, e) = (&self.backend, self.cfg.experts);
        let d = rows_of(b, "router weight", r, e)?;
        check_dims(1, d, e)?;
        let n = rows_of(b, "tokens X", x, d)?;
        check_dims(n, d, e)?;
        Ok(Shape {
            n,
            d,
            e,
            k: self.cfg.k,
        })
    }
}

/// The backend's `route` into the workspace's routing buffers.
fn route_rows<B: Backend>(
    b: &B,
    cfg: &RouterConfig,
    routing: &mut Routing<B>,
    logits: Logits<'_, B>,
    bias: Option<&B::View>,
    request: RouteRequest,
) -> Result<RouteSums<B::Value>> {
    // The LBL counts the plain top-k of the scores; only a bias, groups or Sinkhorn selection
    // make it differ.
    routing.has_plain =
        bias.is_some() || cfg.groups.is_some() || cfg.selection != crate::config::Selection::TopK;
    b.route(
        Route {
            cfg,
            n: routing.shape.n,
            logits,
            bias,
            z: view_mut::<B>(&mut routing.z),
            p: view_mut::<B>(&mut routing.p),
            idx: idx_view_mut::<B>(&mut routing.idx),
            gates: view_mut::<B>(&mut routing.gates),
            plain: if routing.has_plain {
                Some(idx_view_mut::<B>(&mut routing.plain))
            } else {
                None
            },
            request,
        }
        .check(b)?,
    )
}

/// Capacity and the dispatch plan of the routed workspace; the forward is complete. The
/// forward's checks are looked at here when that waits for nothing (host values), with the
/// forward's `inputs` to locate a non-finite one; otherwise they stay pending (see [`settle`]).
fn dispatched<'a, B: Backend>(
    b: &'a B,
    cfg: &'a RouterConfig,
    ws: &'a mut Workspace<B>,
    inputs: Option<(&B::View, &B::View)>,
) -> Result<Routed<'a, B>> {
    if cfg.check_finite && cfg.score == ScoreFn::SqrtSoftplus && !cfg.renormalize {
        // Unbounded scores times the scale can overflow the gates; renormalised gates and the
        // bounded score functions cannot.
        ws.checks.gates = Some(b.max_abs(view::<B>(&ws.routing.gates))?);
    }
    if !b.values_wait() {
        ws.settle_checks(b, cfg, inputs)?;
    }
    dispatch(b, cfg, &mut ws.routing)?;
    ws.routed = true;
    Ok(Routed {
        backend: b,
        cfg,
        ws,
    })
}

/// The selection bias has `E` entries; when the config checks inputs, its `max |.|` joins the
/// forward's checks (with a copy of the bias to locate a non-finite entry).
fn check_bias<B: Backend>(
    b: &B,
    cfg: &RouterConfig,
    ws: &mut Workspace<B>,
    bias: Option<&B::View>,
) -> Result<()> {
    if let Some(bias) = bias {
        check_len("selection bias", cfg.experts, b.len(bias))?;
        if cfg.check_finite {
            ws.checks.bias = Some(b.max_abs(bias)?);
            b.copy(bias, view_mut::<B>(&mut ws.checked_bias))?;
        }
    }
    Ok(())
}

/// Rows of a buffer of `cols` columns; its length must be a multiple of `cols`.
fn rows_of<M: Memory>(m: &M, what: &'static str, buf: &M::View, cols: usize) -> Result<usize> {
    let len = m.len(buf);
    if cols == 0 || len % cols != 0 {
        return Err(SimbalError::LengthMismatch {
            what,
            expected: (len / cols.max(1) + 1) * cols.max(1),
            got: len,
        });
    }
    Ok(len / cols)
}

/// [`RouterConfig::validate`], and the gate scale must be finite in the element type (a scale
/// of 1e300 is finite in `f64` but would make every `f32` gate infinite).
fn validate_for<T: Scalar>(cfg: &RouterConfig) -> Result<()> {
    cfg.validate()?;
    if !num_traits::Float::is_finite(T::of(cfg.scale)) {
        return Err(SimbalError::InvalidCoefficient {
            what: "scale",
            value: cfg.scale,
        });
    }
    Ok(())
}
