//! The model: an MoE layer ([`MoeLayer`]: the router through simbal, experts as
//! [`crate::mlp::Mlp`]s) between an input stage (identity for the synthetic task, byte
//! embeddings for text) and a loss head (MSE, or a next-byte softmax). Forward and backward are
//! written out; nothing is differentiated automatically.

mod moe;

pub use moe::{MoeConfig, MoeLayer, MoeState};

use crate::adam::Param;
use crate::linalg::{add_into, add_rows, gemm_nn, gemm_nt, gemm_tn};
use crate::task::Batch;
use simbal_core::shape::check_len;
use simbal_core::{
    Backend, LossConfig, LossValues, Result, Rng, Router, RoutingStats, Scalar, SimbalError,
};

/// Vocabulary of the byte-level language model.
pub const VOCAB: usize = 256;

/// A simbal backend on host memory (faer, the reference): the model hands its router slices of
/// its own parameters and reads the routing and the gradients as slices.
pub trait HostBackend<T>: Backend<Elem = T, View = [T], IdxView = [u32]> {}

impl<T, B: Backend<Elem = T, View = [T], IdxView = [u32]>> HostBackend<T> for B {}

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
                    add_rows(&mut b_out.g, logits);
                    dy.resize(n * d_out, T::zero());
                    gemm_nt(d_out, VOCAB, logits, &w_out.w, dy, false);
                }
                Ok(loss / n as f64)
            }
        }
    }

    /// Forward pass and task loss (no gradients); the routing stays in `router`.
    ///
    /// # Errors
    /// A batch of the wrong shape; the router's errors.
    pub fn evaluate<B: HostBackend<T>>(
        &mut self,
        router: &mut Router<B>,
        batch: &Batch<T>,
        st: &mut ModelState<T>,
    ) -> Result<f64> {
        self.input(batch, &mut st.x)?;
        self.moe.forward(router, &st.x, &mut st.moe)?;
        self.head_loss(batch, &st.moe.y, &mut st.logits, None)
    }

    /// Forward and backward pass: adds every gradient (call [`Model::zero_grad`] first) and
    /// returns the task loss and the auxiliary loss values. [`Model::forward_train`] and
    /// [`Model::backward_train`] in one call, on this batch alone.
    ///
    /// # Errors
    /// A batch of the wrong shape; the router's errors.
    pub fn train_step<B: HostBackend<T>>(
        &mut self,
        router: &mut Router<B>,
        batch: &Batch<T>,
        st: &mut ModelState<T>,
        losses: &LossConfig,
    ) -> Result<(f64, LossValues<T>)> {
        let loss = self.forward_train(router, batch, st)?;
        let aux = self.backward_train(router, batch, st, losses, None)?;
        Ok((loss, aux))
    }

    /// The forward half of a training step: the forward pass, the task loss (returned, a mean
    /// over this batch's tokens) and its gradient at the layer output. The routing stays in
    /// `router`, so its statistics can be read (and, in data-parallel training, summed over the
    /// ranks) before [`Model::backward_train`].
    ///
    /// # Errors
    /// A batch of the wrong shape; the router's errors.
    pub fn forward_train<B: HostBackend<T>>(
        &mut self,
        router: &mut Router<B>,
        batch: &Batch<T>,
        st: &mut ModelState<T>,
    ) -> Result<f64> {
        self.input(batch, &mut st.x)?;
        self.moe.forward(router, &st.x, &mut st.moe)?;
        self.head_loss(batch, &st.moe.y, &mut st.logits, Some(&mut st.dy))
    }

    /// The backward half of a training step after [`Model::forward_train`] on the same batch:
    /// adds every gradient (call [`Model::zero_grad`] first) and returns the auxiliary loss
    /// values. `global`: the global batch's statistics for a global-batch LBL (this batch is a
    /// shard of it), `None` otherwise.
    ///
    /// # Errors
    /// [`SimbalError::NoForward`] without the forward half; the router's errors.
    pub fn backward_train<B: HostBackend<T>>(
        &mut self,
        router: &mut Router<B>,
        batch: &Batch<T>,
        st: &mut ModelState<T>,
        losses: &LossConfig,
        global: Option<&RoutingStats>,
    ) -> Result<LossValues<T>> {
        let (x, moe, dy) = (&st.x, &mut st.moe, &st.dy);
        Ok(match &mut self.head {
            Head::Regression => self
                .moe
                .backward(router, x, moe, dy, losses, global, None)?,
            Head::ByteLm(h) => {
                let ByteLmHead { d_emb, embed, .. } = &mut **h;
                st.dx.resize(x.len(), T::zero());
                let aux =
                    self.moe
                        .backward(router, x, moe, dy, losses, global, Some(&mut st.dx))?;
                for (&c, g) in batch.ctx.iter().zip(st.dx.chunks_exact(*d_emb)) {
                    let c = c as usize;
                    add_into(&mut embed.g[c * *d_emb..(c + 1) * *d_emb], g);
                }
                aux
            }
        })
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
