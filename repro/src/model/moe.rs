//! The MoE layer: the router through simbal on the layer's own host slices, the experts as
//! [`Mlp`]s on the tokens the dispatch plan gives each, and the gate-weighted combine.

use super::HostBackend;
use crate::adam::Param;
use crate::linalg::{add_into, dot};
use crate::mlp::{Mlp, MlpCache};
use simbal_core::shape::check_len;
use simbal_core::{
    orthogonalize, LossConfig, LossValues, Result, Rng, Router, RouterConfig, RoutingStats, Scalar,
    SimbalError, WeightLayout,
};

/// Shapes of the MoE layer.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct MoeConfig {
    /// Input width `D` (router and experts).
    pub d_in: usize,
    /// Hidden width of each expert.
    pub hidden: usize,
    /// Output width of each expert.
    pub d_out: usize,
    /// Experts `E`.
    pub experts: usize,
    /// Experts per token `k`.
    pub k: usize,
    /// Capacity factor (`None`: no capacity limit).
    pub capacity_factor: Option<f64>,
}

impl MoeConfig {
    /// The router configuration: softmax, top-k, renormalised gates, optional capacity.
    pub fn router(&self) -> RouterConfig {
        let cfg = RouterConfig::new(self.experts, self.k);
        match self.capacity_factor {
            Some(f) => cfg.with_capacity(f, simbal_core::DropPolicy::Probs),
            None => cfg,
        }
    }
}

/// What one forward pass of the MoE layer keeps for its backward pass besides the routing,
/// which stays in the router.
#[derive(Debug, Clone, Default)]
pub struct MoeState<T> {
    /// Expert outputs per assignment, `n x k x d_out` (0 for dropped assignments).
    pub outs: Vec<T>,
    /// Layer output `y_t = sum_j w_tj expert_{i_tj}(x_t)`, `n x d_out`.
    pub y: Vec<T>,
    caches: Vec<MlpCache<T>>,
    gather_in: Vec<T>,
    gather_out: Vec<T>,
    dw: Vec<T>,
}

/// The MoE layer: router weight (`D x E`), selection bias, experts.
#[derive(Debug, Clone)]
pub struct MoeLayer<T> {
    pub(super) cfg: MoeConfig,
    /// Router weight `R`, `D x E`.
    pub router: Param<T>,
    /// Aux-loss-free selection bias `b` (`E`; zero unless a bias method updates it).
    pub bias: Vec<T>,
    /// Whether the selection bias is applied.
    pub use_bias: bool,
    /// The experts.
    pub experts: Vec<Mlp<T>>,
}

impl<T: Scalar> MoeLayer<T> {
    /// Router from a Gaussian draw of `router_seed` (orthogonalised when `orthogonal`, else scaled
    /// by `1/sqrt(D)` so columns have about unit norm either way); experts from `expert_seed`.
    ///
    /// # Errors
    /// The router configuration's errors; [`SimbalError::ZeroDim`] for `D = 0`.
    pub fn new(
        cfg: MoeConfig,
        router_seed: u64,
        expert_seed: u64,
        orthogonal: bool,
    ) -> Result<Self> {
        cfg.router().validate()?;
        let (d, e) = (cfg.d_in, cfg.experts);
        if d == 0 {
            return Err(SimbalError::ZeroDim { what: "D" });
        }
        let mut r = vec![T::zero(); d * e];
        Rng::new(router_seed).fill_normal(1.0, &mut r);
        if orthogonal {
            orthogonalize(WeightLayout::DxE, d, e, &mut r)?;
        } else {
            let s = T::of(1.0 / (d as f64).sqrt());
            r.iter_mut().for_each(|v| *v = *v * s);
        }
        let mut rng = Rng::new(expert_seed);
        let experts = (0..e)
            .map(|_| Mlp::new(d, cfg.hidden, cfg.d_out, &mut rng))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            cfg,
            router: Param::new(r),
            bias: vec![T::zero(); e],
            use_bias: false,
            experts,
        })
    }

    /// The shapes.
    pub fn config(&self) -> &MoeConfig {
        &self.cfg
    }

    /// Forward pass on `x` (`n x D`): routes through `router` (its routing stays there for
    /// [`MoeLayer::backward`]), runs each expert on its tokens and combines the outputs with the
    /// gates into `st.y`.
    ///
    /// # Errors
    /// The router's errors (a length of `x` that is not a multiple of `D` among them).
    pub fn forward<B: HostBackend<T>>(
        &self,
        router: &mut Router<B>,
        x: &[T],
        st: &mut MoeState<T>,
    ) -> Result<()> {
        let MoeConfig {
            d_in: d,
            d_out,
            experts: e,
            k,
            ..
        } = self.cfg;
        let bias = self.use_bias.then_some(&self.bias[..]);
        let pass = router.forward(x, &self.router.w, bias)?;
        let n = pass.tokens();
        let (order, offsets, gates) =
            (pass.dispatch_order(), pass.dispatch_offsets(), pass.gates());
        st.outs.clear();
        st.outs.resize(n * k * d_out, T::zero());
        st.caches.resize_with(e, MlpCache::default);
        for ex in 0..e {
            let ids = &order[offsets[ex] as usize..offsets[ex + 1] as usize];
            let m = ids.len();
            st.gather_in.clear();
            for &a in ids {
                let t = a as usize / k;
                st.gather_in.extend_from_slice(&x[t * d..(t + 1) * d]);
            }
            st.gather_out.resize(m * d_out, T::zero());
            self.experts[ex].forward(m, &st.gather_in, &mut st.caches[ex], &mut st.gather_out)?;
            for (&a, row) in ids.iter().zip(st.gather_out.chunks_exact(d_out)) {
                let a = a as usize;
                st.outs[a * d_out..(a + 1) * d_out].copy_from_slice(row);
            }
        }
        st.y.clear();
        st.y.resize(n * d_out, T::zero());
        for (yt, (outs, g)) in
            st.y.chunks_exact_mut(d_out)
                .zip(st.outs.chunks_exact(k * d_out).zip(gates.chunks_exact(k)))
        {
            for (o, &g) in outs.chunks_exact(d_out).zip(g) {
                for (yv, &o) in yt.iter_mut().zip(o) {
                    *yv = *yv + g * o;
                }
            }
        }
        Ok(())
    }

    /// Backward pass of the last [`MoeLayer::forward`] through `router` on the same `x`, from
    /// `dy` (`n x d_out`): adds expert and router gradients (the router's through simbal with
    /// the auxiliary `losses`) and, when asked, writes the input gradient into `dx` (`n x D`).
    /// `global` is the global batch's statistics for a global-batch LBL (data parallelism: this
    /// batch is one shard of it), `None` otherwise. Returns the auxiliary loss values.
    ///
    /// # Errors
    /// [`SimbalError::NoForward`] without a forward pass on `x`; [`SimbalError::LengthMismatch`]
    /// for a `dy` or `dx` of the wrong length; the router's errors.
    pub fn backward<B: HostBackend<T>>(
        &mut self,
        router: &mut Router<B>,
        x: &[T],
        st: &mut MoeState<T>,
        dy: &[T],
        losses: &LossConfig,
        global: Option<&RoutingStats>,
        mut dx: Option<&mut [T]>,
    ) -> Result<LossValues<T>> {
        let MoeConfig {
            d_in: d,
            d_out,
            experts: e,
            k,
            ..
        } = self.cfg;
        let routing = router.routing()?;
        let n = routing.tokens();
        check_len("layer output gradient", n * d_out, dy.len())?;
        check_len("expert outputs", n * k * d_out, st.outs.len())?;
        if let Some(dx) = dx.as_deref_mut() {
            check_len("layer input gradient", n * d, dx.len())?;
            dx.iter_mut().for_each(|v| *v = T::zero());
        }
        // Combine helper (SPEC): dW_tj = <dy_t, expert_{i_tj}(x_t)>.
        st.dw.clear();
        st.dw.extend(
            st.outs
                .chunks_exact(d_out)
                .enumerate()
                .map(|(a, o)| dot(&dy[a / k * d_out..(a / k + 1) * d_out], o)),
        );
        let (order, offsets, gates) = (
            routing.dispatch_order(),
            routing.dispatch_offsets(),
            routing.gates(),
        );
        for ex in 0..e {
            let ids = &order[offsets[ex] as usize..offsets[ex + 1] as usize];
            st.gather_out.clear();
            for &a in ids {
                let (t, g) = (a as usize / k, gates[a as usize]);
                st.gather_out
                    .extend(dy[t * d_out..(t + 1) * d_out].iter().map(|&v| g * v));
            }
            let (expert, cache) = (&mut self.experts[ex], &mut st.caches[ex]);
            match dx.as_deref_mut() {
                Some(dx) => {
                    st.gather_in.resize(ids.len() * d, T::zero());
                    expert.backward(cache, &st.gather_out, Some(&mut st.gather_in))?;
                    for (&a, row) in ids.iter().zip(st.gather_in.chunks_exact(d)) {
                        let t = a as usize / k;
                        add_into(&mut dx[t * d..(t + 1) * d], row);
                    }
                }
                None => expert.backward(cache, &st.gather_out, None)?,
            }
        }
        // The forward's pass is gone (the experts ran in between): resume it for the backward.
        let mut pass = router.resume(x, &self.router.w)?;
        let grads = pass.backward(&st.dw, losses, global)?;
        add_into(&mut self.router.g, grads.dr);
        if let Some(dx) = dx {
            add_into(dx, grads.dx);
        }
        Ok(grads.losses)
    }

    /// Every expert on every one of the `n` tokens of `x`: `E x n x d_out`, expert-major (the
    /// input of PES).
    ///
    /// # Errors
    /// [`SimbalError::LengthMismatch`] unless `x` holds `n x D`.
    pub fn all_expert_outputs(&self, x: &[T], n: usize) -> Result<Vec<T>> {
        check_len("layer input", n * self.cfg.d_in, x.len())?;
        let d_out = self.cfg.d_out;
        let mut out = vec![T::zero(); self.cfg.experts * n * d_out];
        let mut cache = MlpCache::default();
        for (ex, chunk) in self.experts.iter().zip(out.chunks_exact_mut(n * d_out)) {
            ex.forward(n, x, &mut cache, chunk)?;
        }
        Ok(out)
    }

    /// Every parameter, for the optimiser.
    pub fn params_mut(&mut self) -> Vec<&mut Param<T>> {
        let mut v = vec![&mut self.router];
        for ex in &mut self.experts {
            v.extend(ex.params_mut());
        }
        v
    }
}
