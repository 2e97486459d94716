//! [`Pass::loss_values`]: the configured losses' values of a routing without their gradients.

use super::pass::{Pass, Routed};
use super::routing::{LossValues, Shape};
use super::settle::{settle_step, BackwardValues};
use super::workspace::Workspace;
use crate::backend::Backend;
use crate::config::LossConfig;
use crate::error::Result;
use crate::lbl::lbl_for_pass;
use crate::memory::view;
use crate::simbal::simbal_loss_value;
use crate::stats::RoutingStats;
use crate::zloss::LseSqSum;

impl<B: Backend> Pass<'_, B> {
    /// The configured losses' values for this routing, without their gradients: what
    /// [`Pass::backward`] would report, for a framework that needs the values at the forward
    /// (a loss tensor of an autodiff graph) or for logging an evaluation batch. Costs the
    /// losses' own reductions (`O(N E)`, SimBal's `R^T R`), no GEMM over `X`.
    ///
    /// ```
    /// use simbal_core::{LossConfig, Reference, Router, RouterConfig, orthogonal_init, WeightLayout};
    /// let (n, d, e) = (8, 8, 4);
    /// let x: Vec<f64> = (0..n * d).map(|i| ((i * 37 % 11) as f64 - 5.0) / 5.0).collect();
    /// let r = orthogonal_init(WeightLayout::DxE, d, e, 1)?;
    /// let mut router = Router::new(Reference::<f64>::new(), RouterConfig::new(e, 2))?;
    /// let mut pass = router.forward(&x, &r, None)?;
    /// let values = pass.loss_values(&LossConfig::switch(), None)?;
    /// let grads = pass.backward(&vec![0.0; n * 2], &LossConfig::switch(), None)?;
    /// assert_eq!(values, grads.losses);
    /// # Ok::<(), simbal_core::SimbalError>(())
    /// ```
    ///
    /// # Errors
    /// As [`Pass::backward`], less the gate gradient's.
    pub fn loss_values(
        &mut self,
        losses: &LossConfig,
        global: Option<&RoutingStats>,
    ) -> Result<LossValues<B::Elem>> {
        let Routed {
            backend: b,
            cfg,
            ws,
        } = &mut self.routed;
        let (b, cfg, ws) = (*b, *cfg, &mut **ws);
        let Shape { n, e, .. } = ws.routing.shape;
        losses.validate(n)?;
        let mut queued = BackwardValues::default();
        let layout = losses.lbl_layout();
        let Workspace {
            routing,
            tokens,
            lbl,
            simbal,
            ..
        } = ws;
        let lg = tokens.groups_for(b, layout)?;
        if let Some(lc) = losses.lbl {
            queued.lbl = Some(lbl_for_pass(b, cfg, &lc, routing, &lg, global, lbl)?);
        }
        if let Some(zc) = losses.z_loss {
            let sum = b.lse_sq_sum(
                LseSqSum {
                    n,
                    groups: lg.groups,
                    e,
                    z: view::<B>(&routing.z),
                    scores: Some((cfg.score, view::<B>(&routing.p))),
                }
                .check(b)?,
            )?;
            queued.lse = Some((sum, zc.beta, lg.valid));
        }
        if let Some(sc) = losses.simbal {
            queued.simbal = Some(simbal_loss_value(b, &sc, self.r, None, simbal)?);
        }
        // One read: the forward's pending checks and the values.
        let inputs = Some((self.x, self.r));
        Ok(settle_step(b, cfg, ws, &queued, inputs, None)?.losses)
    }
}
