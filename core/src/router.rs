//! The ops users call each training step, composed from the [`Backend`] layers: [`Router`]
//! (forward, backward, a whole step, statistics, metrics) and the free functions
//! [`simbal_loss`] and [`update_bias`].

use crate::backend::{lbl_group_len, Backend, LblCoef};
use crate::config::{
    BiasUpdateConfig, LblLevel, LossConfig, RouterConfig, SimBalConfig, SimBalNorm, WeightLayout,
};
use crate::error::{Result, SimbalError};
use crate::metrics::LoadMetrics;
use crate::ops::gemm::Gemm;
use crate::ops::lbl::{lbl_value_and_coef, LblScales};
use crate::scalar::Scalar;
use crate::shape::{check_dims, check_len};
use crate::stats::RoutingStats;
use crate::workspace::{Shape, SimbalWorkspace, Workspace};
use alloc::vec;
use alloc::vec::Vec;

/// Loss values of one backward pass (each 0 when not configured).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct LossValues<T> {
    /// SimBal (already multiplied by its `lambda`).
    pub simbal: T,
    /// Load-balancing loss (already multiplied by its `alpha`).
    pub lbl: T,
    /// Router z-loss (already multiplied by its `beta`).
    pub z_loss: T,
    /// Sum of the three: the auxiliary objective whose gradient was added.
    pub total: T,
}

/// A router on backend `B`: owns the configuration and a reusable [`Workspace`].
///
/// ```
/// use simbal_core::{Backend, LossConfig, Reference, Router, RouterConfig, orthogonal_init, WeightLayout};
/// let (n, d, e, k) = (8, 16, 4, 2);
/// let be = Reference::<f64>::new();
/// let x: Vec<f64> = (0..n * d).map(|i| ((i * 37 % 11) as f64 - 5.0) / 5.0).collect();
/// let r = orthogonal_init(WeightLayout::DxE, d, e, 1)?;
/// let mut router = Router::new(be, RouterConfig::new(e, k))?;
/// router.forward(&x, &r, None, n, d)?;
/// let dw = vec![1.0; n * k];
/// let losses = router.backward(&x, &r, &dw, &LossConfig::simbal(), None)?;
/// assert!(losses.simbal < 1e-10); // orthogonal init: SimBal starts at 0
/// assert_eq!(router.indices()?.len(), n * k);
/// # Ok::<(), simbal_core::SimbalError>(())
/// ```
pub struct Router<B: Backend> {
    backend: B,
    cfg: RouterConfig,
    ws: Option<Workspace<B>>,
    forwarded: bool,
}

impl<B: Backend> Router<B> {
    /// A router with a validated configuration; buffers come with the first call.
    pub fn new(backend: B, cfg: RouterConfig) -> Result<Self> {
        validate_for::<B::Elem>(&cfg)?;
        Ok(Self {
            backend,
            cfg,
            ws: None,
            forwarded: false,
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

    /// Replaces the configuration (validated); the workspace is kept when the shape allows.
    pub fn set_config(&mut self, cfg: RouterConfig) -> Result<()> {
        validate_for::<B::Elem>(&cfg)?;
        if cfg.experts != self.cfg.experts || cfg.k != self.cfg.k {
            self.ws = None;
        }
        self.cfg = cfg;
        self.forwarded = false;
        Ok(())
    }

    fn prepare(&mut self, shape: Shape) -> Result<()> {
        let fits = self.ws.as_ref().is_some_and(|w| w.shape == shape);
        if !fits {
            self.ws = Some(Workspace::new(&self.backend, shape)?);
        }
        Ok(())
    }

    fn ws(&self) -> Result<&Workspace<B>> {
        match (&self.ws, self.forwarded) {
            (Some(w), true) => Ok(w),
            _ => Err(SimbalError::NoForward),
        }
    }

    /// Router forward from tokens: `Z = X R` (or `X W^T` for [`WeightLayout::ExD`]), scores,
    /// top-k with the optional selection `bias`, gates, capacity and the dispatch plan.
    /// `x` is `n x d`, `r` is `d x E` (or `E x d`), `bias` is `E`.
    pub fn forward(
        &mut self,
        x: &B::Buf,
        r: &B::Buf,
        bias: Option<&B::Buf>,
        n: usize,
        d: usize,
    ) -> Result<()> {
        self.forwarded = false;
        let (e, k) = (self.cfg.experts, self.cfg.k);
        check_dims(n, d, e)?;
        let b = &self.backend;
        check_len(
            "tokens X",
            crate::shape::product("tokens X", n, d)?,
            b.len(x),
        )?;
        check_len(
            "router weight",
            crate::shape::product("router weight", d, e)?,
            b.len(r),
        )?;
        self.prepare(Shape { n, d, e, k })?;
        self.check_bias(bias)?;
        let b = &self.backend;
        let cfg = &self.cfg;
        let ws = self.ws.as_mut().ok_or(SimbalError::NoForward)?;
        let g = match cfg.layout {
            WeightLayout::DxE => Gemm::new(n, e, d),
            WeightLayout::ExD => Gemm::new(n, e, d).tb(),
        };
        let max_z = b.logits_and_route_rows(
            cfg,
            &g,
            x,
            r,
            bias,
            &mut ws.z,
            &mut ws.p,
            &mut ws.idx,
            &mut ws.gates,
            cfg.check_finite,
        )?;
        if max_z.is_some_and(|m| !num_traits::Float::is_finite(m)) {
            // Any non-finite X or R reaches Z; only now pay for the scans that locate it.
            b.check_finite("tokens X", d, x)?;
            b.check_finite("router weight", weight_cols(cfg.layout, d, e), r)?;
            return Err(SimbalError::Overflow {
                what: "logits Z = X R",
            });
        }
        self.dispatch_current()
    }

    /// Router forward from precomputed logits `z` (`n x E`); [`Router::backward_logits`] then
    /// gives `dZ`.
    pub fn forward_logits(&mut self, z: &B::Buf, bias: Option<&B::Buf>, n: usize) -> Result<()> {
        self.forwarded = false;
        let (e, k) = (self.cfg.experts, self.cfg.k);
        check_dims(n, 1, e)?;
        let b = &self.backend;
        check_len("logits", crate::shape::product("logits", n, e)?, b.len(z))?;
        if self.cfg.check_finite {
            b.check_finite("logits", e, z)?;
        }
        self.prepare(Shape { n, d: 0, e, k })?;
        let ws = self.ws.as_mut().ok_or(SimbalError::NoForward)?;
        // Copy through the host only for device backends; host backends copy slices.
        match (self.backend.host(z), self.backend.host_mut(&mut ws.z)) {
            (Some(src), Some(dst)) => dst.copy_from_slice(src),
            _ => {
                let mut tmp = vec![<B::Elem as num_traits::Zero>::zero(); n * e];
                self.backend.download(z, &mut tmp)?;
                self.backend.write(&mut ws.z, &tmp)?;
            }
        }
        self.route_current(bias)
    }

    /// The selection bias has `E` entries, finite when the config checks inputs.
    fn check_bias(&self, bias: Option<&B::Buf>) -> Result<()> {
        if let Some(bias) = bias {
            let (b, e) = (&self.backend, self.cfg.experts);
            check_len("selection bias", e, b.len(bias))?;
            if self.cfg.check_finite {
                b.check_finite("selection bias", e, bias)?;
            }
        }
        Ok(())
    }

    /// Routes the logits in the workspace (scores, top-k, gates), then dispatches.
    fn route_current(&mut self, bias: Option<&B::Buf>) -> Result<()> {
        self.check_bias(bias)?;
        let b = &self.backend;
        let ws = self.ws.as_mut().ok_or(SimbalError::NoForward)?;
        let n = ws.shape.n;
        b.route_rows(
            &self.cfg,
            n,
            &ws.z,
            bias,
            &mut ws.p,
            &mut ws.idx,
            &mut ws.gates,
        )?;
        self.dispatch_current()
    }

    /// Capacity and the dispatch plan of the routed workspace; marks the forward done.
    fn dispatch_current(&mut self) -> Result<()> {
        let b = &self.backend;
        let cfg = &self.cfg;
        let ws = self.ws.as_mut().ok_or(SimbalError::NoForward)?;
        let n = ws.shape.n;
        b.dispatch(
            cfg,
            n,
            &ws.idx,
            &mut ws.gates,
            &mut ws.dropped,
            &mut ws.counts,
            &mut ws.order,
            &mut ws.offsets,
        )?;
        self.forwarded = true;
        Ok(())
    }

    /// Backward from the gate gradient `dw` (`n x k`) and the configured losses: fills `dZ`, `dX`
    /// and `dR` (SimBal's gradient included) and returns the loss values. `global` carries the
    /// merged statistics global-batch LBL needs.
    pub fn backward(
        &mut self,
        x: &B::Buf,
        r: &B::Buf,
        dw: &B::Buf,
        losses: &LossConfig,
        global: Option<&RoutingStats>,
    ) -> Result<LossValues<B::Elem>> {
        let shape = self.ws()?.shape;
        let Shape { n, d, e, .. } = shape;
        if d == 0 {
            return Err(SimbalError::NoForward);
        }
        let b = &self.backend;
        check_len("tokens X", n * d, b.len(x))?;
        check_len("router weight", d * e, b.len(r))?;
        let (mut values, max_dz) = self.backward_dz(dw, losses, global)?;
        let b = &self.backend;
        let layout = self.cfg.layout;
        let ws = self.ws.as_mut().ok_or(SimbalError::NoForward)?;
        // dR = X^T dZ (stored as R is), then dX = dZ R^T: X is read while the forward may
        // have left it in cache, before writing dX evicts it.
        match layout {
            WeightLayout::DxE => {
                b.gemm(&Gemm::new(d, e, n).ta(), x, &ws.dz, &mut ws.dr)?;
                b.gemm(&Gemm::new(n, d, e).tb(), &ws.dz, r, &mut ws.dx)?;
            }
            WeightLayout::ExD => {
                b.gemm(&Gemm::new(e, d, n).ta(), &ws.dz, x, &mut ws.dr)?;
                b.gemm(&Gemm::new(n, d, e), &ws.dz, r, &mut ws.dx)?;
            }
        }
        if let Some(sc) = losses.simbal {
            values.simbal = simbal_loss(b, &sc, layout, d, e, r, Some(&mut ws.dr), &mut ws.simbal)?;
            values.total = values.simbal + values.lbl + values.z_loss;
        }
        finite_loss(&values)?;
        if self.cfg.check_finite {
            // |dX| <= E max|dZ| max|R|: when that bound is finite with margin, dX is finite
            // and its N x D scan is skipped.
            let max_dz = match max_dz {
                Some(m) => m,
                None => b.max_abs(&ws.dz)?,
            };
            let bound = B::Elem::of_usize(2 * e) * max_dz * b.max_abs(r)?;
            if !num_traits::Float::is_finite(bound) {
                b.check_finite("input gradient dX", d, &ws.dx)
                    .map_err(|_| SimbalError::Overflow {
                        what: "input gradient dX",
                    })?;
            }
            b.check_finite("router gradient dR", weight_cols(layout, d, e), &ws.dr)
                .map_err(|_| SimbalError::Overflow {
                    what: "router gradient dR",
                })?;
        }
        Ok(values)
    }

    /// Backward for a router driven by [`Router::forward_logits`]: fills `dZ` only. SimBal needs
    /// the weight, so it is refused here: call [`simbal_loss`] on the weight instead.
    pub fn backward_logits(
        &mut self,
        dw: &B::Buf,
        losses: &LossConfig,
        global: Option<&RoutingStats>,
    ) -> Result<LossValues<B::Elem>> {
        if losses.simbal.is_some() {
            return Err(SimbalError::Unsupported {
                what: "SimBal in backward_logits (it needs the router weight; use simbal_loss)",
            });
        }
        let (values, _) = self.backward_dz(dw, losses, global)?;
        finite_loss(&values)?;
        Ok(values)
    }

    /// Gate gradient and dense loss terms to `dZ`; returns LBL and z-loss values, and `max |dZ|`
    /// when the config checks values.
    fn backward_dz(
        &mut self,
        dw: &B::Buf,
        losses: &LossConfig,
        global: Option<&RoutingStats>,
    ) -> Result<BackwardDz<B::Elem>> {
        let shape = self.ws()?.shape;
        let Shape { n, e, k, .. } = shape;
        losses.validate(n)?;
        let b = &self.backend;
        let cfg = &self.cfg;
        check_len("gate gradient", n * k, b.len(dw))?;
        if cfg.check_finite {
            b.check_finite("gate gradient", k, dw)?;
        }
        let ws = self.ws.as_mut().ok_or(SimbalError::NoForward)?;
        let mut values = LossValues::default();
        let mut lbl_group = None;
        if let Some(lc) = losses.lbl {
            let group_len = lbl_group_len(&lc, n);
            let groups = n / group_len;
            ws.ensure_groups(b, groups)?;
            b.group_column_sums(n, e, group_len, &ws.p, &mut ws.group_sums)?;
            match lc.level {
                LblLevel::GlobalBatch => {
                    // The merged counts live on the host (they came through an all-reduce).
                    let g = global.ok_or(SimbalError::MissingGlobalStats)?;
                    if g.counts.len() != e {
                        return Err(SimbalError::StatsMismatch {
                            expected: e,
                            got: g.counts.len(),
                        });
                    }
                    if g.tokens == 0 {
                        return Err(SimbalError::MissingGlobalStats);
                    }
                    let scales = LblScales {
                        k,
                        count_tokens: g.tokens as f64,
                        score_tokens: n as f64,
                        groups: 1,
                    };
                    b.download(&ws.group_sums, &mut ws.host_sums)?;
                    values.lbl = lbl_value_and_coef(
                        &lc,
                        e,
                        &scales,
                        |be| g.counts[be] as f64,
                        &ws.host_sums,
                        &mut ws.host_coef,
                    );
                    b.write(&mut ws.lbl_coef, &ws.host_coef)?;
                }
                _ => {
                    // Local counts: everything stays on the backend's side.
                    b.group_counts(
                        n,
                        k,
                        e,
                        group_len,
                        &ws.idx,
                        &ws.dropped,
                        &mut ws.group_counts,
                    )?;
                    let scales = LblScales {
                        k,
                        count_tokens: group_len as f64,
                        score_tokens: group_len as f64,
                        groups,
                    };
                    values.lbl = b.lbl_coefficients(
                        &lc,
                        e,
                        &scales,
                        &ws.group_counts,
                        &ws.group_sums,
                        &mut ws.lbl_coef,
                    )?;
                }
            }
            lbl_group = Some(group_len);
        }
        let z_coef = match losses.z_loss {
            Some(zc) => crate::ops::zloss::z_coef(zc.beta, n),
            None => <B::Elem as num_traits::Zero>::zero(),
        };
        let lbl = lbl_group.map(|group_len| LblCoef {
            coef: &ws.lbl_coef,
            group_len,
        });
        let sums = b.router_backward_rows_and_sums(
            cfg,
            n,
            &ws.z,
            &ws.p,
            &ws.idx,
            &ws.gates,
            &ws.dropped,
            dw,
            lbl,
            z_coef,
            &mut ws.dz,
            losses.z_loss.is_some(),
            cfg.check_finite,
        )?;
        if let (Some(zc), Some(sum)) = (losses.z_loss, sums.lse_sq_sum) {
            values.z_loss = B::Elem::of(zc.beta) * sum / B::Elem::of_usize(n);
        }
        // Finite inputs can still overflow here (a large scale times a large dW); report it
        // instead of handing back an inf/NaN dZ (backward_logits returns right after).
        if sums
            .max_abs_dz
            .is_some_and(|m| !num_traits::Float::is_finite(m))
        {
            return Err(SimbalError::Overflow {
                what: "logit gradient dZ",
            });
        }
        values.total = values.simbal + values.lbl + values.z_loss;
        Ok((values, sums.max_abs_dz))
    }

    /// A whole training step in one call, for when the gate gradient is known up front:
    /// [`Router::forward`] then [`Router::backward`].
    pub fn step(
        &mut self,
        x: &B::Buf,
        r: &B::Buf,
        bias: Option<&B::Buf>,
        dw: &B::Buf,
        losses: &LossConfig,
        global: Option<&RoutingStats>,
        n: usize,
        d: usize,
    ) -> Result<LossValues<B::Elem>> {
        self.forward(x, r, bias, n, d)?;
        self.backward(x, r, dw, losses, global)
    }

    /// Expert indices (`N x k`, best first) of the last forward pass.
    pub fn indices(&self) -> Result<&B::IdxBuf> {
        Ok(&self.ws()?.idx)
    }
    /// Gates (`N x k`; 0 for dropped assignments).
    pub fn gates(&self) -> Result<&B::Buf> {
        Ok(&self.ws()?.gates)
    }
    /// Scores `P` (`N x E`).
    pub fn scores(&self) -> Result<&B::Buf> {
        Ok(&self.ws()?.p)
    }
    /// Logits `Z` (`N x E`).
    pub fn logits(&self) -> Result<&B::Buf> {
        Ok(&self.ws()?.z)
    }
    /// Dropped flags (`N x k`, 1 = dropped by the capacity limit).
    pub fn dropped(&self) -> Result<&B::IdxBuf> {
        Ok(&self.ws()?.dropped)
    }
    /// Kept assignments per expert (`E`).
    pub fn counts(&self) -> Result<&B::IdxBuf> {
        Ok(&self.ws()?.counts)
    }
    /// Dispatch plan: kept assignment ids `t * k + j` grouped by expert (first `offsets[E]`
    /// entries of an `N x k` buffer).
    pub fn dispatch_order(&self) -> Result<&B::IdxBuf> {
        Ok(&self.ws()?.order)
    }
    /// Dispatch plan: per-expert offsets into [`Router::dispatch_order`] (`E + 1`).
    pub fn dispatch_offsets(&self) -> Result<&B::IdxBuf> {
        Ok(&self.ws()?.offsets)
    }
    /// `dL/dZ` of the last backward pass (`N x E`).
    pub fn dz(&self) -> Result<&B::Buf> {
        Ok(&self.ws()?.dz)
    }
    /// `dL/dX` of the last backward pass (`N x D`).
    pub fn dx(&self) -> Result<&B::Buf> {
        Ok(&self.ws()?.dx)
    }
    /// `dL/dR` of the last backward pass, in the weight's layout.
    pub fn dr(&self) -> Result<&B::Buf> {
        Ok(&self.ws()?.dr)
    }

    /// Statistics of the last forward pass, written into `out` (resized to `E`; no allocation
    /// once it has that size).
    pub fn stats_into(&mut self, out: &mut RoutingStats) -> Result<()> {
        let shape = self.ws()?.shape;
        let Shape { n, e, k, .. } = shape;
        let b = &self.backend;
        let ws = self.ws.as_mut().ok_or(SimbalError::NoForward)?;
        if out.counts.len() != e {
            *out = RoutingStats::empty(e);
        }
        b.group_column_sums(n, e, n, &ws.p, &mut ws.stat_sums)?;
        b.download(&ws.stat_sums, &mut ws.host_stat_sums)?;
        b.idx_download(&ws.counts, &mut ws.host_stat_counts)?;
        for (o, &c) in out.counts.iter_mut().zip(&ws.host_stat_counts) {
            *o = c as u64;
        }
        for (o, &s) in out.score_sums.iter_mut().zip(&ws.host_stat_sums) {
            *o = s.to_f64_lossy();
        }
        out.tokens = n as u64;
        let kept: u64 = out.counts.iter().sum();
        out.dropped = (n * k) as u64 - kept;
        Ok(())
    }

    /// Statistics of the last forward pass.
    pub fn stats(&mut self) -> Result<RoutingStats> {
        let mut s = RoutingStats::default();
        self.stats_into(&mut s)?;
        Ok(s)
    }

    /// Load metrics of the last forward pass.
    pub fn load_metrics(&mut self) -> Result<LoadMetrics> {
        Ok(LoadMetrics::from_counts(&self.stats()?.counts))
    }

    /// Mean routing entropy of the last forward pass's scores.
    pub fn routing_entropy(&self) -> Result<B::Elem> {
        let ws = self.ws()?;
        self.backend.routing_entropy(ws.shape.n, ws.shape.e, &ws.p)
    }
}

/// [`RouterConfig::validate`], and the gate scale must be finite in the element type (a scale
/// of 1e300 is finite in `f64` but would make every `f32` gate infinite).
/// LBL and z-loss values from `Router::backward_dz`, and `max |dZ|` when it was checked.
type BackwardDz<T> = (LossValues<T>, Option<T>);

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

/// Columns of the weight as stored (for error positions).
fn weight_cols(layout: WeightLayout, d: usize, e: usize) -> usize {
    match layout {
        WeightLayout::DxE => e,
        WeightLayout::ExD => d,
    }
}

/// A non-finite loss value never leaks: it becomes [`SimbalError::Overflow`].
fn finite_loss<T: Scalar>(v: &LossValues<T>) -> Result<()> {
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

/// SimBal on the router weight `r` (`D x E` or `E x D` per `layout`): returns the loss and, when
/// `grad` is given, adds `dL/dR` into it. Composed from two GEMMs around the element-wise pass.
///
/// ```
/// use simbal_core::{simbal_loss, Reference, SimBalConfig, SimbalWorkspace, WeightLayout};
/// let be = Reference::<f64>::new();
/// let r = vec![1.0, 0.0, 0.0, 2.0]; // 2 x 2, columns of length 1 and 2
/// let mut grad = vec![0.0; 4];
/// let mut ws = SimbalWorkspace::new(&be, 2, 2)?;
/// let l = simbal_loss(&be, &SimBalConfig::default(), WeightLayout::DxE, 2, 2, &r, Some(&mut grad), &mut ws)?;
/// assert!((l - 0.1 * 3.0).abs() < 1e-12); // |1-1| + |4-1| = 3
/// assert_eq!(grad, vec![0.0, 0.0, 0.0, 0.4]); // 2 * 0.1 * R sign(G)
/// # Ok::<(), simbal_core::SimbalError>(())
/// ```
pub fn simbal_loss<B: Backend>(
    b: &B,
    cfg: &SimBalConfig,
    layout: WeightLayout,
    d: usize,
    e: usize,
    r: &B::Buf,
    grad: Option<&mut B::Buf>,
    ws: &mut SimbalWorkspace<B>,
) -> Result<B::Elem> {
    check_dims(1, d, e)?;
    crate::config::check_coefficient("SimBal lambda", cfg.lambda)?;
    check_len(
        "router weight",
        crate::shape::product("router weight", d, e)?,
        b.len(r),
    )?;
    if let Some(g) = grad.as_deref() {
        check_len("router gradient", d * e, b.len(g))?;
    }
    ws.ensure(b, d, e)?;
    let scale_free = cfg.norm == SimBalNorm::ScaleFree;
    if scale_free {
        b.normalize_columns(layout, d, e, r, &mut ws.norms, &mut ws.rn)?;
    }
    let w = if scale_free { &ws.rn } else { r };
    let gram_g = match layout {
        WeightLayout::DxE => Gemm::new(e, e, d).ta(),
        WeightLayout::ExD => Gemm::new(e, e, d).tb(),
    };
    b.gemm(&gram_g, w, w, &mut ws.gram)?;
    let loss = b.simbal_residual(cfg, e, &mut ws.gram)?;
    if let Some(grad) = grad {
        // dL/dW = W M (D x E) or M W (E x D); M is symmetric.
        let (prod, a_is_w) = match layout {
            WeightLayout::DxE => (Gemm::new(d, e, e), true),
            WeightLayout::ExD => (Gemm::new(e, d, e), false),
        };
        if scale_free {
            let (a, bb) = if a_is_w {
                (&ws.rn, &ws.gram)
            } else {
                (&ws.gram, &ws.rn)
            };
            b.gemm(&prod, a, bb, &mut ws.drn)?;
            b.scale_free_project(layout, d, e, &ws.rn, &ws.norms, &ws.drn, grad)?;
        } else {
            let (a, bb) = if a_is_w { (r, &ws.gram) } else { (&ws.gram, r) };
            b.gemm(&prod.beta(1.0), a, bb, grad)?;
        }
    }
    if !num_traits::Float::is_finite(loss) {
        return Err(SimbalError::Overflow {
            what: "SimBal value",
        });
    }
    Ok(loss)
}

/// Aux-loss-free bias update on the backend's bias buffer (`E`) from (merged) statistics.
pub fn update_bias<B: Backend>(
    b: &B,
    cfg: &BiasUpdateConfig,
    stats: &RoutingStats,
    bias: &mut B::Buf,
) -> Result<()> {
    crate::config::check_coefficient("bias update rate", cfg.rate)?;
    let e = stats.counts.len();
    if e == 0 {
        return Err(SimbalError::ZeroDim { what: "E" });
    }
    check_len("selection bias", e, b.len(bias))?;
    let mut host: Vec<B::Elem> = vec![<B::Elem as num_traits::Zero>::zero(); e];
    b.download(bias, &mut host)?;
    crate::ops::bias::update_bias_from_counts(cfg, &stats.counts, &mut host);
    b.write(bias, &host)
}
