//! The language model: a decoder-only transformer whose feed-forward blocks are simbal-routed
//! Mixture-of-Experts layers ([`simbal_burn::moe::MoeLayer`]), written with burn modules.
//!
//! Pre-norm blocks, `x + attn(ln(x))` then `x + moe(ln(x))`, learned positions, a byte
//! vocabulary, an untied read-out. Everything but the routers is burn's own (its autodiff, its
//! modules); the routers' forward and backward are simbal's, one graph node per layer.

use crate::error::{ReproError, Result};
use burn::module::Module;
use burn::nn::attention::MultiHeadAttentionConfig;
use burn::nn::attention::{generate_autoregressive_mask, MhaInput, MultiHeadAttention};
use burn::nn::{Embedding, EmbeddingConfig, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::activation::log_softmax;
use burn::tensor::{Bool, Int, Tensor};
use serde::Serialize;
use simbal_burn::moe::{MoeLayer, MoeLayerConfig, RouterInit};
use simbal_burn::{RouterOutput, SimbalBackend};
use simbal_core::{BiasUpdateConfig, LossConfig};

/// Sizes of the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct LmShape {
    /// Vocabulary (256 for bytes).
    pub vocab: usize,
    /// Context length `T` (positions).
    pub seq_len: usize,
    /// Residual width `D`.
    pub d_model: usize,
    /// Attention heads (dividing `D`).
    pub heads: usize,
    /// Transformer blocks, each with an MoE feed-forward.
    pub layers: usize,
    /// Experts per MoE layer `E`.
    pub experts: usize,
    /// Experts per token `k`.
    pub k: usize,
    /// Hidden width of each expert MLP.
    pub expert_hidden: usize,
}

impl LmShape {
    /// Checks the sizes.
    ///
    /// # Errors
    /// [`ReproError::Config`] for a zero size, `heads` not dividing `d_model`, or `k > experts`.
    pub fn validate(&self) -> Result<()> {
        let sizes = [
            ("vocab", self.vocab),
            ("seq_len", self.seq_len),
            ("d_model", self.d_model),
            ("heads", self.heads),
            ("layers", self.layers),
            ("experts", self.experts),
            ("k", self.k),
            ("expert_hidden", self.expert_hidden),
        ];
        crate::error::check_sizes("model ", &sizes)?;
        if self.d_model % self.heads != 0 {
            return Err(ReproError::Config(format!(
                "d_model {} is not a multiple of heads {}",
                self.d_model, self.heads
            )));
        }
        if self.k > self.experts {
            return Err(ReproError::Config(format!(
                "top-{} routing needs at least {} experts, got {}",
                self.k, self.k, self.experts
            )));
        }
        Ok(())
    }

    /// Parameters: all, and those one token uses (its `k` experts instead of all `E`).
    ///
    /// ```
    /// let (total, active) = simbal_repro::lm::run::SHAPE.parameters();
    /// assert_eq!((total, active), (641_408, 175_488));
    /// ```
    pub fn parameters(&self) -> (usize, usize) {
        let (d, h, e) = (self.d_model, self.expert_hidden, self.experts);
        let expert = d * h + h + h * d + d;
        let attn = 4 * (d * d + d);
        let norms = 2 * 2 * d;
        let per_layer_shared = attn + norms + d * e;
        let outer = self.vocab * d + self.seq_len * d + 2 * d + d * self.vocab + self.vocab;
        let total = outer + self.layers * (per_layer_shared + e * expert);
        let active = outer + self.layers * (per_layer_shared + self.k * expert);
        (total, active)
    }

    /// Multiply-adds of one token's forward pass (the GEMMs; attention over a full context).
    pub fn forward_macs_per_token(&self) -> usize {
        let (d, h, t) = (self.d_model, self.expert_hidden, self.seq_len);
        let attn = 4 * d * d + 2 * t * d;
        let moe = d * self.experts + self.k * 2 * d * h;
        self.layers * (attn + moe) + d * self.vocab
    }
}

/// How each MoE layer's router is set up: the balancing method's losses, bias update and
/// initialisation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RouterSetup {
    /// The auxiliary losses (per layer; the model sums them).
    pub losses: LossConfig,
    /// The aux-loss-free bias update, if the method uses one.
    pub bias_update: Option<BiasUpdateConfig>,
    /// Orthogonal router initialisation (else `N(0, 1/D)`: the same column norm, as
    /// OLMoE's `N(0, 0.02^2)` at `D = 2048`).
    pub orthogonal: bool,
    /// Seed of the orthogonal initialisation (layer `l` uses `seed + l`).
    pub seed: u64,
}

/// One transformer block: causal self-attention and an MoE feed-forward, pre-norm.
#[derive(Module, Debug)]
pub struct Block<B: SimbalBackend> {
    /// Norm before attention.
    pub norm_attn: LayerNorm<B>,
    /// Causal multi-head self-attention.
    pub attn: MultiHeadAttention<B>,
    /// Norm before the MoE layer.
    pub norm_moe: LayerNorm<B>,
    /// The MoE feed-forward.
    pub moe: MoeLayer<B>,
}

/// The whole model.
#[derive(Module, Debug)]
pub struct MoeLm<B: SimbalBackend> {
    /// Byte embeddings.
    pub embed: Embedding<B>,
    /// Learned position embeddings.
    pub pos: Embedding<B>,
    /// The blocks.
    pub blocks: Vec<Block<B>>,
    /// Final norm.
    pub norm_out: LayerNorm<B>,
    /// Read-out to byte logits.
    pub head: Linear<B>,
}

/// One MoE layer's view of a forward pass.
#[derive(Debug, Clone)]
pub struct LayerTrace<B: SimbalBackend> {
    /// The router's outputs (indices, counts, gates, losses).
    pub router: RouterOutput<B>,
    /// The MoE layer's input (`N x D`, after its norm), kept when asked for (PES).
    pub input: Option<Tensor<B, 2>>,
}

/// What [`MoeLm::forward`] returns.
#[derive(Debug, Clone)]
pub struct LmOutput<B: SimbalBackend> {
    /// Next-byte logits, `N x vocab`, `N = batch x T` row-major (sequence by sequence).
    pub logits: Tensor<B, 2>,
    /// The layers' auxiliary losses, summed (shape `[1]`).
    pub aux: Tensor<B, 1>,
    /// Per MoE layer.
    pub layers: Vec<LayerTrace<B>>,
}

impl<B: SimbalBackend> MoeLm<B> {
    /// A fresh model; burn's generator (seed it first with `B::seed`) draws every weight but the
    /// orthogonal routers.
    ///
    /// # Errors
    /// As [`LmShape::validate`]; the MoE layers' ([`MoeLayerConfig::init`]).
    pub fn new(shape: &LmShape, router: &RouterSetup, device: &B::Device) -> Result<Self> {
        shape.validate()?;
        let d = shape.d_model;
        let blocks = (0..shape.layers)
            .map(|l| {
                let init = if router.orthogonal {
                    RouterInit::Orthogonal {
                        seed: router.seed.wrapping_add(l as u64),
                    }
                } else {
                    RouterInit::Normal {
                        std: 1.0 / (d as f64).sqrt(),
                    }
                };
                let mut cfg = MoeLayerConfig::new(d, shape.expert_hidden, shape.experts, shape.k)
                    .with_losses(router.losses)
                    .with_router_init(init)
                    .with_activation(simbal_burn::moe::Activation::Relu);
                if let Some(bu) = router.bias_update {
                    cfg = cfg.with_bias_update(bu);
                }
                Ok(Block {
                    norm_attn: LayerNormConfig::new(d).init(device),
                    attn: MultiHeadAttentionConfig::new(d, shape.heads)
                        .with_dropout(0.0)
                        .init(device),
                    norm_moe: LayerNormConfig::new(d).init(device),
                    moe: cfg.init(device)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            embed: EmbeddingConfig::new(shape.vocab, d).init(device),
            pos: EmbeddingConfig::new(shape.seq_len, d).init(device),
            blocks,
            norm_out: LayerNormConfig::new(d).init(device),
            head: LinearConfig::new(d, shape.vocab).init(device),
        })
    }

    /// The model on `tokens` (`batch x T`, `T` at most the model's context): logits, the summed
    /// auxiliary losses and each layer's routing; `keep_inputs` also keeps each MoE layer's input.
    ///
    /// # Errors
    /// [`ReproError::Config`] when `T` exceeds the context; the MoE layers' errors.
    pub fn forward(&self, tokens: Tensor<B, 2, Int>, keep_inputs: bool) -> Result<LmOutput<B>> {
        let [batch, t] = tokens.dims();
        let context = self.pos.weight.dims()[0];
        if t > context || t == 0 {
            return Err(ReproError::Config(format!(
                "sequence length {t} outside 1..={context}"
            )));
        }
        let device = tokens.device();
        let positions = Tensor::<B, 1, Int>::arange(0..t as i64, &device)
            .unsqueeze_dim::<2>(0)
            .expand([batch, t]);
        let mut x = self.embed.forward(tokens) + self.pos.forward(positions);
        let d = x.dims()[2];
        let causal: Tensor<B, 3, Bool> = generate_autoregressive_mask(batch, t, &device);
        let mut aux: Option<Tensor<B, 1>> = None;
        let mut layers = Vec::with_capacity(self.blocks.len());
        for block in &self.blocks {
            let h = block.norm_attn.forward(x.clone());
            let a = block
                .attn
                .forward(MhaInput::self_attn(h).mask_attn(causal.clone()))
                .context;
            x = x + a;
            let h = block.norm_moe.forward(x.clone()).reshape([batch * t, d]);
            let out = block.moe.forward(h.clone())?;
            let total = out.losses.total();
            aux = Some(match aux {
                Some(s) => s + total,
                None => total,
            });
            x = x + out.y.reshape([batch, t, d]);
            layers.push(LayerTrace {
                router: out.router,
                input: keep_inputs.then_some(h),
            });
        }
        let logits = self
            .head
            .forward(self.norm_out.forward(x))
            .reshape([batch * t, self.head.weight.dims()[1]]);
        let aux = aux.unwrap_or_else(|| Tensor::zeros([1], &device));
        Ok(LmOutput {
            logits,
            aux,
            layers,
        })
    }

    /// Applies every layer's aux-loss-free bias update from its last forward (no-op without one).
    ///
    /// # Errors
    /// As [`MoeLayer::update_bias`].
    pub fn update_biases(&mut self) -> Result<()> {
        for b in &mut self.blocks {
            b.moe.update_bias()?;
        }
        Ok(())
    }
}

/// Mean next-token cross-entropy in nats of `logits` (`N x V`) against `targets` (`N`).
pub fn cross_entropy<B: SimbalBackend>(
    logits: Tensor<B, 2>,
    targets: Tensor<B, 1, Int>,
) -> Tensor<B, 1> {
    let logp = log_softmax(logits, 1);
    logp.gather(1, targets.unsqueeze_dim::<2>(1)).mean().neg()
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::NdArray;

    #[test]
    fn the_parameter_count_is_burns() {
        let shape = crate::lm::run::SHAPE;
        let setup = RouterSetup {
            losses: LossConfig::none(),
            bias_update: None,
            orthogonal: false,
            seed: 0,
        };
        let model = MoeLm::<NdArray<f32>>::new(&shape, &setup, &Default::default()).unwrap();
        assert_eq!(model.num_params(), shape.parameters().0);
        let (total, active) = shape.parameters();
        assert!(active < total);
    }

    #[test]
    fn a_sequence_longer_than_the_context_is_an_error() {
        let mut shape = crate::lm::run::SHAPE;
        shape.seq_len = 4;
        shape.layers = 1;
        let setup = RouterSetup {
            losses: LossConfig::none(),
            bias_update: None,
            orthogonal: true,
            seed: 0,
        };
        let device = Default::default();
        let model = MoeLm::<NdArray<f32>>::new(&shape, &setup, &device).unwrap();
        let tokens = Tensor::<NdArray<f32>, 2, Int>::zeros([1, 5], &device);
        assert!(matches!(
            model.forward(tokens, false),
            Err(ReproError::Config(_))
        ));
        let tokens = Tensor::<NdArray<f32>, 2, Int>::zeros([2, 4], &device);
        let out = model.forward(tokens, true).unwrap();
        assert_eq!(out.logits.dims(), [8, 256]);
        assert_eq!(out.layers.len(), 1);
        assert!(out.layers[0].input.is_some());
        let mut bad = shape;
        bad.k = 17;
        assert!(bad.validate().is_err());
    }
}
