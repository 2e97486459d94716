//! The model: an MoE layer (router through simbal, experts as [`Mlp`]s) between an input stage
//! (identity for the synthetic task, byte embeddings for text) and a loss head (MSE, or a
//! next-byte softmax). Forward and backward are written out; nothing is differentiated
//! automatically.

use crate::adam::Param;
use crate::linalg::{dot, gemm_nn, gemm_nt, gemm_tn};
use crate::mlp::{Mlp, MlpCache};
use crate::task::Batch;
use simbal_core::shape::check_len;
use simbal_core::{
    orthogonalize, update_bias, Backend, BiasUpdateConfig, LossConfig, LossValues, Result, Rng,
    Router, RouterConfig, RoutingStats, Scalar, SimbalError, WeightLayout,
};

/// Vocabulary of the byte-level language model.
pub const VOCAB: usize = 256;

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

/// A router on a backend plus the device buffers it reads (tokens, weight, bias, gate gradient)
/// and host copies of what it produces.
pub struct RouterRunner<B: Backend> {
    router: Router<B>,
    x: B::Buf,
    r: B::Buf,
    bias: B::Buf,
    dw: B::Buf,
    host: Vec<B::Elem>,
    stats: RoutingStats,
}

fn sized<B: Backend>(b: &B, buf: &mut B::Buf, len: usize) -> Result<()> {
    if b.len(buf) != len {
        *buf = b.zeros(len)?;
    }
    Ok(())
}

fn sized_idx<B: Backend>(b: &B, buf: &B::IdxBuf, host: &mut Vec<u32>) -> Result<()> {
    host.resize(b.idx_len(buf), 0);
    b.idx_download(buf, host)
}

impl<B: Backend> RouterRunner<B> {
    /// A router for `cfg` on `backend`.
    pub fn new(backend: B, cfg: RouterConfig) -> Result<Self> {
        let x = backend.zeros(0)?;
        let r = backend.zeros(0)?;
        let bias = backend.zeros(0)?;
        let dw = backend.zeros(0)?;
        Ok(Self {
            router: Router::new(backend, cfg)?,
            x,
            r,
            bias,
            dw,
            host: Vec::new(),
            stats: RoutingStats::default(),
        })
    }

    /// The backend's name.
    pub fn backend_name(&self) -> String {
        self.router.backend().name()
    }

    /// Load metrics of the last forward pass (statistics kept in the runner: no allocation
    /// once sized).
    pub fn load_metrics(&mut self) -> Result<simbal_core::LoadMetrics> {
        self.router.stats_into(&mut self.stats)?;
        Ok(simbal_core::LoadMetrics::from_counts(&self.stats.counts))
    }

    /// The router.
    pub fn router(&mut self) -> &mut Router<B> {
        &mut self.router
    }
}

/// Everything one forward pass of the MoE layer keeps for its backward pass.
#[derive(Debug, Clone, Default)]
pub struct MoeState<T> {
    /// Tokens.
    pub n: usize,
    /// Chosen experts, `n x k`, best first.
    pub idx: Vec<u32>,
    /// Gates, `n x k`.
    pub gates: Vec<T>,
    /// Dropped flags, `n x k`.
    pub dropped: Vec<u32>,
    order: Vec<u32>,
    offsets: Vec<u32>,
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
    cfg: MoeConfig,
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

    /// Forward pass on `x` (`n x D`): routes through `rr`, runs each expert on its tokens and
    /// combines the outputs with the gates into `st.y`.
    pub fn forward<B: Backend<Elem = T>>(
        &self,
        rr: &mut RouterRunner<B>,
        x: &[T],
        n: usize,
        st: &mut MoeState<T>,
    ) -> Result<()> {
        let MoeConfig {
            d_in: d,
            d_out,
            experts: e,
            k,
            ..
        } = self.cfg;
        check_len("layer input", n * d, x.len())?;
        {
            let b = rr.router.backend();
            sized(b, &mut rr.x, n * d)?;
            b.write(&mut rr.x, x)?;
            sized(b, &mut rr.r, d * e)?;
            b.write(&mut rr.r, &self.router.w)?;
            sized(b, &mut rr.bias, e)?;
            b.write(&mut rr.bias, &self.bias)?;
        }
        let bias = self.use_bias.then_some(&rr.bias);
        rr.router.forward(&rr.x, &rr.r, bias, n, d)?;
        let b = rr.router.backend();
        sized_idx(b, rr.router.indices()?, &mut st.idx)?;
        sized_idx(b, rr.router.dropped()?, &mut st.dropped)?;
        sized_idx(b, rr.router.dispatch_order()?, &mut st.order)?;
        sized_idx(b, rr.router.dispatch_offsets()?, &mut st.offsets)?;
        st.gates.resize(n * k, T::zero());
        b.download(rr.router.gates()?, &mut st.gates)?;
        st.n = n;
        st.outs.clear();
        st.outs.resize(n * k * d_out, T::zero());
        st.caches.resize_with(e, MlpCache::default);
        for ex in 0..e {
            let (lo, hi) = (st.offsets[ex] as usize, st.offsets[ex + 1] as usize);
            let ids = &st.order[lo..hi];
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
        for t in 0..n {
            let yt = &mut st.y[t * d_out..(t + 1) * d_out];
            for j in 0..k {
                let a = t * k + j;
                let g = st.gates[a];
                for (yv, &o) in yt.iter_mut().zip(&st.outs[a * d_out..(a + 1) * d_out]) {
                    *yv = *yv + g * o;
                }
            }
        }
        Ok(())
    }

    /// Backward pass from `dy` (`n x d_out`): adds expert and router gradients (the router's
    /// through simbal with the auxiliary `losses`) and, when asked, writes the input gradient
    /// into `dx` (`n x D`). Returns the auxiliary loss values.
    pub fn backward<B: Backend<Elem = T>>(
        &mut self,
        rr: &mut RouterRunner<B>,
        st: &mut MoeState<T>,
        dy: &[T],
        losses: &LossConfig,
        mut dx: Option<&mut [T]>,
    ) -> Result<LossValues<T>> {
        let MoeConfig {
            d_in: d,
            d_out,
            experts: e,
            k,
            ..
        } = self.cfg;
        let n = st.n;
        check_len("layer output gradient", n * d_out, dy.len())?;
        if let Some(dx) = dx.as_deref_mut() {
            check_len("layer input gradient", n * d, dx.len())?;
            dx.iter_mut().for_each(|v| *v = T::zero());
        }
        // Combine helper (SPEC): dW_tj = <dy_t, expert_{i_tj}(x_t)>.
        st.dw.resize(n * k, T::zero());
        for a in 0..n * k {
            let t = a / k;
            st.dw[a] = dot(
                &dy[t * d_out..(t + 1) * d_out],
                &st.outs[a * d_out..(a + 1) * d_out],
            );
        }
        for ex in 0..e {
            let (lo, hi) = (st.offsets[ex] as usize, st.offsets[ex + 1] as usize);
            let m = hi - lo;
            st.gather_out.clear();
            for &a in &st.order[lo..hi] {
                let a = a as usize;
                let (t, g) = (a / k, st.gates[a]);
                st.gather_out
                    .extend(dy[t * d_out..(t + 1) * d_out].iter().map(|&v| g * v));
            }
            match dx.as_deref_mut() {
                Some(dx) => {
                    st.gather_in.resize(m * d, T::zero());
                    self.experts[ex].backward(
                        &mut st.caches[ex],
                        &st.gather_out,
                        Some(&mut st.gather_in),
                    )?;
                    for (&a, row) in st.order[lo..hi].iter().zip(st.gather_in.chunks_exact(d)) {
                        let t = a as usize / k;
                        for (o, &v) in dx[t * d..(t + 1) * d].iter_mut().zip(row) {
                            *o = *o + v;
                        }
                    }
                }
                None => self.experts[ex].backward(&mut st.caches[ex], &st.gather_out, None)?,
            }
        }
        {
            let b = rr.router.backend();
            sized(b, &mut rr.dw, n * k)?;
            b.write(&mut rr.dw, &st.dw)?;
        }
        let values = rr.router.backward(&rr.x, &rr.r, &rr.dw, losses, None)?;
        let b = rr.router.backend();
        rr.host.resize(d * e, T::zero());
        b.download(rr.router.dr()?, &mut rr.host)?;
        for (g, &v) in self.router.g.iter_mut().zip(&rr.host) {
            *g = *g + v;
        }
        if let Some(dx) = dx {
            rr.host.resize(n * d, T::zero());
            b.download(rr.router.dx()?, &mut rr.host)?;
            for (g, &v) in dx.iter_mut().zip(&rr.host) {
                *g = *g + v;
            }
        }
        Ok(values)
    }

    /// Aux-loss-free bias update from the statistics of the last forward pass through `rr`.
    pub fn update_bias<B: Backend<Elem = T>>(
        &mut self,
        rr: &mut RouterRunner<B>,
        cfg: &BiasUpdateConfig,
    ) -> Result<()> {
        rr.router.stats_into(&mut rr.stats)?;
        let b = rr.router.backend();
        sized(b, &mut rr.bias, self.cfg.experts)?;
        b.write(&mut rr.bias, &self.bias)?;
        update_bias(b, cfg, &rr.stats, &mut rr.bias)?;
        b.download(&rr.bias, &mut self.bias)
    }

    /// Every expert on every one of the `n` tokens of `x`: `E x n x d_out`, expert-major (the
    /// input of PES).
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

/// The byte-level language model's input stage and head.
#[derive(Debug, Clone)]
pub struct ByteLmHead<T> {
    /// Bytes of context.
    pub context: usize,
    /// Embedding width per byte.
    pub d_emb: usize,
    /// Embedding table, `256 x d_emb`.
    pub embed: Param<T>,
    /// Output weight, `d_out x 256`.
    pub w_out: Param<T>,
    /// Output bias, `256`.
    pub b_out: Param<T>,
}

/// Which input stage and loss head the model has.
#[derive(Debug, Clone)]
pub enum Head<T> {
    /// Identity input, mean squared error on the layer output.
    Regression,
    /// Byte embeddings in (`context` of them concatenated), a linear next-byte softmax out.
    ByteLm(Box<ByteLmHead<T>>),
}

/// What one forward pass of the whole model keeps.
#[derive(Debug, Clone, Default)]
pub struct ModelState<T> {
    /// The MoE layer's state.
    pub moe: MoeState<T>,
    /// The layer input, `n x D`.
    pub x: Vec<T>,
    logits: Vec<T>,
    dy: Vec<T>,
    dx: Vec<T>,
}

/// Input stage, MoE layer and head.
#[derive(Debug, Clone)]
pub struct Model<T> {
    /// The MoE layer.
    pub moe: MoeLayer<T>,
    /// Input stage and loss head.
    pub head: Head<T>,
}

impl<T: Scalar> Model<T> {
    /// A regression model (synthetic task).
    pub fn regression(moe: MoeLayer<T>) -> Self {
        Self {
            moe,
            head: Head::Regression,
        }
    }

    /// A byte-level language model: `moe.d_in` must be `context * d_emb`.
    pub fn byte_lm(moe: MoeLayer<T>, context: usize, seed: u64) -> Result<Self> {
        let (d, d_out) = (moe.cfg.d_in, moe.cfg.d_out);
        if context == 0 || d % context != 0 {
            return Err(SimbalError::Unsupported {
                what: "byte LM: the model width must be a whole multiple of the context",
            });
        }
        let d_emb = d / context;
        let mut rng = Rng::new(seed);
        let mut embed = vec![T::zero(); VOCAB * d_emb];
        rng.fill_normal(1.0, &mut embed);
        let mut w_out = vec![T::zero(); d_out * VOCAB];
        rng.fill_normal(1.0 / (d_out as f64).sqrt(), &mut w_out);
        Ok(Self {
            moe,
            head: Head::ByteLm(Box::new(ByteLmHead {
                context,
                d_emb,
                embed: Param::new(embed),
                w_out: Param::new(w_out),
                b_out: Param::new(vec![T::zero(); VOCAB]),
            })),
        })
    }

    /// Builds the layer input of `batch` into `x`.
    pub fn input(&self, batch: &Batch<T>, x: &mut Vec<T>) -> Result<()> {
        let n = batch.tokens();
        x.clear();
        match &self.head {
            Head::Regression => {
                check_len("batch features", n * self.moe.cfg.d_in, batch.x.len())?;
                x.extend_from_slice(&batch.x);
            }
            Head::ByteLm(h) => {
                check_len("batch contexts", n * h.context, batch.ctx.len())?;
                let de = h.d_emb;
                for &c in &batch.ctx {
                    let c = c as usize;
                    x.extend_from_slice(&h.embed.w[c * de..(c + 1) * de]);
                }
            }
        }
        Ok(())
    }

    /// Task loss of the layer output `y` on `batch`; with `dy` given, writes `dL/dy` into it and
    /// adds the head's parameter gradients (when `grads`).
    fn head_loss(
        &mut self,
        batch: &Batch<T>,
        y: &[T],
        logits: &mut Vec<T>,
        dy: Option<&mut Vec<T>>,
    ) -> Result<f64> {
        let n = batch.tokens();
        let d_out = self.moe.cfg.d_out;
        match &mut self.head {
            Head::Regression => {
                check_len("batch targets", n * d_out, batch.y.len())?;
                let scale = 1.0 / (n * d_out) as f64;
                let mut loss = 0.0;
                for (&a, &b) in y.iter().zip(&batch.y) {
                    let r = (a - b).to_f64_lossy();
                    loss += r * r;
                }
                if let Some(dy) = dy {
                    dy.clear();
                    let s = T::of(2.0 * scale);
                    dy.extend(y.iter().zip(&batch.y).map(|(&a, &b)| s * (a - b)));
                }
                Ok(loss * scale)
            }
            Head::ByteLm(h) => {
                let ByteLmHead { w_out, b_out, .. } = &mut **h;
                check_len("batch next bytes", n, batch.next.len())?;
                logits.resize(n * VOCAB, T::zero());
                for row in logits.chunks_exact_mut(VOCAB) {
                    row.copy_from_slice(&b_out.w);
                }
                gemm_nn(VOCAB, d_out, y, &w_out.w, logits, true);
                let mut loss = 0.0;
                let inv_n = T::of(1.0 / n as f64);
                for (row, &tgt) in logits.chunks_exact_mut(VOCAB).zip(&batch.next) {
                    let max = row.iter().fold(T::neg_infinity(), |m, &v| m.max(v));
                    let mut sum = T::zero();
                    for v in row.iter_mut() {
                        *v = (*v - max).exp();
                        sum = sum + *v;
                    }
                    let p_t = row[tgt as usize] / sum;
                    loss -= p_t.to_f64_lossy().max(1e-300).ln();
                    // row becomes dL/dlogits = (softmax - onehot) / n
                    for v in row.iter_mut() {
                        *v = *v / sum * inv_n;
                    }
                    row[tgt as usize] = row[tgt as usize] - inv_n;
                }
                if let Some(dy) = dy {
                    gemm_tn(d_out, VOCAB, y, logits, &mut w_out.g, true);
                    for row in logits.chunks_exact(VOCAB) {
                        for (g, &v) in b_out.g.iter_mut().zip(row) {
                            *g = *g + v;
                        }
                    }
                    dy.resize(n * d_out, T::zero());
                    gemm_nt(d_out, VOCAB, logits, &w_out.w, dy, false);
                }
                Ok(loss / n as f64)
            }
        }
    }

    /// Forward pass and task loss (no gradients).
    pub fn evaluate<B: Backend<Elem = T>>(
        &mut self,
        rr: &mut RouterRunner<B>,
        batch: &Batch<T>,
        st: &mut ModelState<T>,
    ) -> Result<f64> {
        self.input(batch, &mut st.x)?;
        let n = batch.tokens();
        self.moe.forward(rr, &st.x, n, &mut st.moe)?;
        let y = std::mem::take(&mut st.moe.y);
        let loss = self.head_loss(batch, &y, &mut st.logits, None);
        st.moe.y = y;
        loss
    }

    /// Forward and backward pass: adds every gradient (call [`Model::zero_grad`] first) and
    /// returns the task loss and the auxiliary loss values.
    pub fn train_step<B: Backend<Elem = T>>(
        &mut self,
        rr: &mut RouterRunner<B>,
        batch: &Batch<T>,
        st: &mut ModelState<T>,
        losses: &LossConfig,
    ) -> Result<(f64, LossValues<T>)> {
        self.input(batch, &mut st.x)?;
        let n = batch.tokens();
        self.moe.forward(rr, &st.x, n, &mut st.moe)?;
        let y = std::mem::take(&mut st.moe.y);
        let mut dy = std::mem::take(&mut st.dy);
        let loss = self.head_loss(batch, &y, &mut st.logits, Some(&mut dy));
        st.moe.y = y;
        let loss = loss?;
        let aux = match &mut self.head {
            Head::Regression => self.moe.backward(rr, &mut st.moe, &dy, losses, None)?,
            Head::ByteLm(h) => {
                let ByteLmHead { d_emb, embed, .. } = &mut **h;
                st.dx.resize(n * self.moe.cfg.d_in, T::zero());
                let aux = self
                    .moe
                    .backward(rr, &mut st.moe, &dy, losses, Some(&mut st.dx))?;
                for (&c, g) in batch.ctx.iter().zip(st.dx.chunks_exact(*d_emb)) {
                    let c = c as usize;
                    for (e, &v) in embed.g[c * *d_emb..(c + 1) * *d_emb].iter_mut().zip(g) {
                        *e = *e + v;
                    }
                }
                aux
            }
        };
        st.dy = dy;
        Ok((loss, aux))
    }

    /// Every parameter, for the optimiser.
    pub fn params_mut(&mut self) -> Vec<&mut Param<T>> {
        let mut v = self.moe.params_mut();
        if let Head::ByteLm(h) = &mut self.head {
            let ByteLmHead {
                embed,
                w_out,
                b_out,
                ..
            } = &mut **h;
            v.push(embed);
            v.push(w_out);
            v.push(b_out);
        }
        v
    }

    /// Sets every gradient to zero.
    pub fn zero_grad(&mut self) {
        for p in self.params_mut() {
            p.zero_grad();
        }
    }
}
