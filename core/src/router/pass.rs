//! The passes a [`super::Router`] forward returns ([`Pass`], [`LogitsPass`]) and their
//! backward: the gate gradient and the dense losses to `dZ` through the router's backward
//! kernel, then `dX` and `dR` through two GEMMs and SimBal.

use super::kernels::Dispatch;
use super::queued::{backward_dz, finish_backward, QueuedBackward};
use super::routing::{Gradients, LogitGradients, LossValues, Routing, Shape};
use super::settle::{settle_forward, settle_step, BackwardValues};
use super::workspace::Workspace;
use crate::backend::Backend;
use crate::config::{LossConfig, RouterConfig, WeightLayout};
use crate::error::{Result, SimbalError};
use crate::gemm::{Gemm, GemmArgs};
use crate::memory::{idx_view, idx_view_mut, view, view_mut};
use crate::metrics::Entropy;
use crate::shape::check_len;
use crate::simbal::simbal_loss_value;
use crate::stats::{CollectStats, RoutingStats};
use core::ops::Deref;

/// What every pass has: the routing of a forward (it derefs to its [`Routing`]), the backend
/// its buffers live on, and the statistics and metrics of that routing.
pub struct Routed<'a, B: Backend> {
    pub(super) backend: &'a B,
    pub(super) cfg: &'a RouterConfig,
    pub(super) ws: &'a mut Workspace<B>,
}

impl<B: Backend> Deref for Routed<'_, B> {
    type Target = Routing<B>;
    fn deref(&self) -> &Routing<B> {
        &self.ws.routing
    }
}

impl<'a, B: Backend> Routed<'a, B> {
    /// The router's backend (for reading the pass's buffers on a device backend).
    pub fn backend(&self) -> &'a B {
        self.backend
    }

    /// Valid tokens of this pass (`N` without a mask).
    pub fn valid_tokens(&self) -> usize {
        self.ws.tokens.valid()
    }

    /// This pass's token mask (a copy of the batch's), if it had one.
    pub fn mask(&self) -> Option<&B::IdxView> {
        self.ws.tokens.mask()
    }

    /// Statistics of this pass's valid tokens into `out` (see [`super::Router::stats_into`]).
    ///
    /// # Errors
    /// Backend failures.
    pub fn stats_into(&self, out: &mut RoutingStats) -> Result<()> {
        settle_forward(self.backend, self.cfg, &self.ws.check_sites(None))?;
        stats_into(self.backend, self.cfg, self.ws, out)
    }

    /// Statistics of this pass.
    ///
    /// # Errors
    /// Backend failures.
    pub fn stats(&self) -> Result<RoutingStats> {
        let mut s = RoutingStats::default();
        self.stats_into(&mut s)?;
        Ok(s)
    }

    /// Reads and looks at the forward's pending checks; on an input error the router keeps no
    /// routing. Once looked at, they are not read again.
    fn settle(&mut self, inputs: Option<(&B::View, &B::View)>) -> Result<()> {
        self.ws.settle_checks(self.backend, self.cfg, inputs)
    }

    /// Mean routing entropy of this pass's scores (nats).
    ///
    /// # Errors
    /// Backend failures.
    pub fn routing_entropy(&self) -> Result<B::Elem> {
        settle_forward(self.backend, self.cfg, &self.ws.check_sites(None))?;
        routing_entropy(self.backend, self.ws)
    }
}

/// A pass derefs to the [`Routed`] it holds (and so to its [`Routing`]).
macro_rules! derefs_to_routed {
    ($pass:ident) => {
        impl<'a, B: Backend> Deref for $pass<'a, B> {
            type Target = Routed<'a, B>;
            fn deref(&self) -> &Routed<'a, B> {
                &self.routed
            }
        }
    };
}

/// A forward pass from tokens: derefs to [`Routed`] (and so to its [`Routing`]);
/// [`Pass::backward`] runs the backward of the same `X` and `R`.
pub struct Pass<'a, B: Backend> {
    pub(super) routed: Routed<'a, B>,
    pub(super) x: &'a B::View,
    pub(super) r: &'a B::View,
}

derefs_to_routed!(Pass);

impl<B: Backend> Pass<'_, B> {
    /// Looks at the forward's input checks now. A backend whose values are host elements has
    /// done so in the forward already (this is then free); on a device
    /// ([`crate::Memory::values_wait`]) the checks wait for the pass's first read, which
    /// [`Pass::backward`] makes together with the loss values (one wait for the whole step),
    /// so call this to have a forward-only pass checked before reading its routing directly.
    ///
    /// # Errors
    /// The forward's check errors: [`SimbalError::NonFinite`] (with its position) for a
    /// non-finite `X`, `R` or bias, [`SimbalError::Overflow`] for logits or gates that
    /// overflow (the router then keeps no routing, as after a failed forward); backend
    /// failures.
    pub fn check(&mut self) -> Result<()> {
        let inputs = Some((self.x, self.r));
        self.routed.settle(inputs)
    }

    /// Statistics of this pass's valid tokens into `out`, after the forward's checks (as
    /// [`Pass::check`], without forgetting the routing on an error).
    ///
    /// # Errors
    /// As [`Pass::check`]; backend failures.
    pub fn stats_into(&self, out: &mut RoutingStats) -> Result<()> {
        let at = self.routed.ws.check_sites(Some((self.x, self.r)));
        settle_forward(self.routed.backend, self.routed.cfg, &at)?;
        stats_into(self.routed.backend, self.routed.cfg, self.routed.ws, out)
    }

    /// Statistics of this pass, after [`Pass::check`].
    ///
    /// # Errors
    /// As [`Pass::check`]; backend failures.
    pub fn stats(&self) -> Result<RoutingStats> {
        let mut s = RoutingStats::default();
        self.stats_into(&mut s)?;
        Ok(s)
    }

    /// Backward from the gate gradient `dw` (`N x k`) and the configured losses: returns the
    /// loss values and `dZ`, `dX`, `dR` (SimBal's gradient included). `global` carries the
    /// merged statistics a global-batch LBL needs. May be called again (another `dw`).
    ///
    /// # Errors
    /// [`SimbalError::LengthMismatch`] unless `dw` holds `N x k`; the loss configuration's
    /// errors ([`LossConfig::validate`]); [`SimbalError::MissingGlobalStats`] and
    /// [`SimbalError::StatsMismatch`] for a global-batch LBL without fitting statistics;
    /// [`SimbalError::NonFinite`] for a non-finite `dw` and [`SimbalError::Overflow`] for a
    /// value or gradient that overflows, when the configuration checks values; backend
    /// failures.
    pub fn backward(
        &mut self,
        dw: &B::View,
        losses: &LossConfig,
        global: Option<&RoutingStats>,
    ) -> Result<Gradients<'_, B>> {
        let values = self.backward_to(dw, losses, global, None)?;
        let ws = &*self.routed.ws;
        Ok(Gradients {
            losses: values,
            dz: view::<B>(&ws.dz),
            dx: view::<B>(&ws.dx),
            dr: view::<B>(&ws.dr),
        })
    }

    /// [`Pass::backward`] writing `dX` (`N x D`) and `dR` (the weight's layout) into the
    /// caller's buffers instead of the router's workspace (`dZ` stays there): for a framework
    /// that hands the gradients out as its own tensors without a copy. Returns the loss values.
    ///
    /// ```
    /// use simbal_core::{LossConfig, Reference, Router, RouterConfig, orthogonal_init, WeightLayout};
    /// let (n, d, e) = (8, 8, 4);
    /// let x: Vec<f64> = (0..n * d).map(|i| ((i * 37 % 11) as f64 - 5.0) / 5.0).collect();
    /// let r = orthogonal_init(WeightLayout::DxE, d, e, 1)?;
    /// let mut router = Router::new(Reference::<f64>::new(), RouterConfig::new(e, 2))?;
    /// let mut pass = router.forward(&x, &r, None)?;
    /// let (mut dx, mut dr) = (vec![0.0; n * d], vec![0.0; d * e]);
    /// let dw = vec![0.5; n * 2];
    /// pass.backward_into(&dw, &LossConfig::switch(), None, &mut dx, &mut dr)?;
    /// let grads = pass.backward(&dw, &LossConfig::switch(), None)?;
    /// assert_eq!((grads.dx, grads.dr), (&dx[..], &dr[..]));
    /// # Ok::<(), simbal_core::SimbalError>(())
    /// ```
    ///
    /// # Errors
    /// As [`Pass::backward`]; [`SimbalError::LengthMismatch`] unless `dx` holds `N x D` and
    /// `dr` holds `D x E`.
    pub fn backward_into(
        &mut self,
        dw: &B::View,
        losses: &LossConfig,
        global: Option<&RoutingStats>,
        dx: &mut B::View,
        dr: &mut B::View,
    ) -> Result<LossValues<B::Elem>> {
        let b = self.routed.backend;
        let Shape { n, d, e, .. } = self.routed.ws.routing.shape;
        check_len("input gradient dX", n * d, b.len(dx))?;
        check_len("router gradient dR", d * e, b.len(dr))?;
        self.backward_to(dw, losses, global, Some((dx, dr)))
    }

    /// [`Pass::backward`] without waiting for the device: `dZ`, `dX` and `dR` are queued into
    /// the router's workspace, and the loss values and checks stay on the backend's side until
    /// [`QueuedBackward::finish`] reads them (one wait), so a framework can keep them there or
    /// read them later. On host memory this is [`Pass::backward`] in two steps.
    ///
    /// ```
    /// use simbal_core::{LossConfig, Memory, Reference, Router, RouterConfig, orthogonal_init, WeightLayout};
    /// let (n, d, e) = (8, 8, 4);
    /// let x: Vec<f64> = (0..n * d).map(|i| ((i * 37 % 11) as f64 - 5.0) / 5.0).collect();
    /// let r = orthogonal_init(WeightLayout::DxE, d, e, 1)?;
    /// let mut router = Router::new(Reference::<f64>::new(), RouterConfig::new(e, 2))?;
    /// let dw = vec![0.5; n * 2];
    /// let mut pass = router.forward(&x, &r, None)?;
    /// let queued = pass.backward_queued(&dw, &LossConfig::switch(), None)?;
    /// // On host memory a value is the element; on a GPU a device buffer, not read yet.
    /// assert!(*queued.lbl_value().expect("the LBL is configured") > 0.0);
    /// let dr = queued.dr().to_vec();
    /// let losses = queued.finish()?; // the one read, and the checks
    /// let grads = pass.backward(&dw, &LossConfig::switch(), None)?;
    /// assert_eq!((losses, &dr[..]), (grads.losses, grads.dr));
    /// # Ok::<(), simbal_core::SimbalError>(())
    /// ```
    ///
    /// # Errors
    /// As [`Pass::backward`] for what is known before the read (lengths, the configuration,
    /// missing global statistics); the value checks' errors come from
    /// [`QueuedBackward::finish`].
    pub fn backward_queued<'s>(
        &'s mut self,
        dw: &'s B::View,
        losses: &LossConfig,
        global: Option<&RoutingStats>,
    ) -> Result<QueuedBackward<'s, B>> {
        let queued = self.queue(dw, losses, global, None)?;
        let Routed { backend, cfg, ws } = &mut self.routed;
        Ok(QueuedBackward {
            backend: *backend,
            cfg,
            ws: &mut **ws,
            x: self.x,
            r: self.r,
            dw,
            queued,
        })
    }

    /// The backward into `out` (`dX`, `dR`), or into the workspace for `None`.
    fn backward_to(
        &mut self,
        dw: &B::View,
        losses: &LossConfig,
        global: Option<&RoutingStats>,
        mut out: Option<(&mut B::View, &mut B::View)>,
    ) -> Result<LossValues<B::Elem>> {
        let reborrow = out.as_mut().map(|(dx, dr)| (&mut **dx, &mut **dr));
        let queued = self.queue(dw, losses, global, reborrow)?;
        let Routed { backend, cfg, ws } = &mut self.routed;
        let dx = out.as_ref().map(|(dx, _)| &**dx);
        finish_backward(*backend, cfg, ws, &queued, (self.x, self.r), dw, dx)
    }

    /// Everything of the backward up to the read: `dZ`, then `dR`, `dX` into `out` (or the
    /// workspace) and SimBal; returns the queued values and checks.
    fn queue(
        &mut self,
        dw: &B::View,
        losses: &LossConfig,
        global: Option<&RoutingStats>,
        out: Option<(&mut B::View, &mut B::View)>,
    ) -> Result<BackwardValues<B::Value>> {
        let Routed {
            backend: b,
            cfg,
            ws,
        } = &mut self.routed;
        let (b, cfg, ws) = (*b, *cfg, &mut **ws);
        let Shape { n, d, e, .. } = ws.routing.shape;
        let (x, r) = (self.x, self.r);
        let mut queued = backward_dz(b, cfg, ws, dw, losses, global)?;
        let Workspace {
            dz,
            dx: ws_dx,
            dr: ws_dr,
            simbal,
            ..
        } = ws;
        let (dx, dr) = match out {
            Some(out) => out,
            None => (view_mut::<B>(ws_dx), view_mut::<B>(ws_dr)),
        };
        // dR = X^T dZ (stored as R is), then dX = dZ R^T: X is read while the forward may
        // have left it in cache, before writing dX evicts it.
        let (dr_g, dr_ab, dx_g) = match cfg.layout {
            WeightLayout::DxE => (Gemm::new(d, e, n).ta(), true, Gemm::new(n, d, e).tb()),
            WeightLayout::ExD => (Gemm::new(e, d, n).ta(), false, Gemm::new(n, d, e)),
        };
        let dz = view::<B>(dz);
        let (a, bb) = if dr_ab { (x, dz) } else { (dz, x) };
        b.gemm(
            GemmArgs {
                gemm: dr_g,
                a,
                b: bb,
                c: &mut *dr,
            }
            .check(b)?,
        )?;
        b.gemm(
            GemmArgs {
                gemm: dx_g,
                a: dz,
                b: r,
                c: &mut *dx,
            }
            .check(b)?,
        )?;
        if let Some(sc) = losses.simbal {
            queued.simbal = Some(simbal_loss_value(b, &sc, r, Some(&mut *dr), simbal)?);
        }
        if cfg.check_finite {
            queued.r = Some(b.max_abs(r)?);
            queued.dr = Some(b.max_abs(dr)?);
        }
        Ok(queued)
    }
}

/// A forward pass from logits: derefs to [`Routed`] (and so to its [`Routing`]);
/// [`LogitsPass::backward`] gives `dZ`.
pub struct LogitsPass<'a, B: Backend> {
    pub(super) routed: Routed<'a, B>,
}

derefs_to_routed!(LogitsPass);

impl<B: Backend> LogitsPass<'_, B> {
    /// Looks at the forward's input checks now (see [`Pass::check`]).
    ///
    /// # Errors
    /// [`SimbalError::NonFinite`] (with its position) for a non-finite logit or bias; backend
    /// failures.
    pub fn check(&mut self) -> Result<()> {
        self.routed.settle(None)
    }

    /// Backward to `dZ` from the gate gradient `dw` (`N x k`) and the configured losses. SimBal
    /// needs the weight, so it is refused here: call [`simbal_loss`] on the weight instead.
    ///
    /// # Errors
    /// [`SimbalError::Unsupported`] with SimBal configured; otherwise as [`Pass::backward`].
    pub fn backward(
        &mut self,
        dw: &B::View,
        losses: &LossConfig,
        global: Option<&RoutingStats>,
    ) -> Result<LogitGradients<'_, B>> {
        if losses.simbal.is_some() {
            return Err(SimbalError::Unsupported {
                what:
                    "SimBal in a backward from logits (it needs the router weight; use simbal_loss)",
            });
        }
        let Routed { backend, cfg, ws } = &mut self.routed;
        let queued = backward_dz(*backend, cfg, ws, dw, losses, global)?;
        let got = settle_step(*backend, cfg, ws, &queued, None, Some(dw))?;
        Ok(LogitGradients {
            losses: got.losses,
            dz: view::<B>(&ws.dz),
        })
    }
}

/// Capacity and the dispatch plan of routed buffers.
pub(super) fn dispatch<B: Backend>(
    b: &B,
    cfg: &RouterConfig,
    routing: &mut Routing<B>,
) -> Result<()> {
    b.dispatch(
        Dispatch {
            cfg,
            n: routing.shape.n,
            idx: idx_view::<B>(&routing.idx),
            gates: view_mut::<B>(&mut routing.gates),
            dropped: idx_view_mut::<B>(&mut routing.dropped),
            counts: idx_view_mut::<B>(&mut routing.counts),
            order: idx_view_mut::<B>(&mut routing.order),
            offsets: idx_view_mut::<B>(&mut routing.offsets),
        }
        // The indices are this backend's own `route` output.
        .check_lengths(b)?,
    )
}

pub(super) fn stats_into<B: Backend>(
    b: &B,
    cfg: &RouterConfig,
    ws: &Workspace<B>,
    out: &mut RoutingStats,
) -> Result<()> {
    let routing = &ws.routing;
    b.routing_stats(
        CollectStats {
            n: routing.shape.n,
            k: routing.shape.k,
            p: routing.scores(),
            normalize: !cfg.score.is_distribution(),
            idx: routing.indices(),
            dropped: routing.dropped(),
            counts: routing.counts(),
            plain: routing.plain_if_apart(),
            groups: ws.tokens.whole(),
            out,
        }
        .check(b)?,
    )
}

pub(super) fn routing_entropy<B: Backend>(b: &B, ws: &Workspace<B>) -> Result<B::Elem> {
    let routing = &ws.routing;
    b.routing_entropy(
        Entropy {
            n: routing.shape.n,
            groups: ws.tokens.whole(),
            e: routing.shape.e,
            p: routing.scores(),
        }
        .check(b)?,
    )
}
