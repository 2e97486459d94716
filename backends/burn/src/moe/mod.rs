//! [`MoeLayer`]: a Mixture-of-Experts layer as a burn [`Module`], routed by simbal.
//!
//! The layer holds the router weight `R` (a trainable [`Param`]), `E` expert MLPs and a
//! [`MoeRouter`]; its forward routes the tokens through simbal (one graph node on `Autodiff`
//! whose backward is simbal's analytic gradient), gathers each expert's tokens from the dispatch
//! plan, runs the expert, scales its outputs by the gates and adds them back:
//! `y_t = sum_j gate_tj expert_{idx_tj}(x_t)`. Switching the balancing method is the
//! [`MoeLayerConfig::with_losses`] line (or [`MoeLayerConfig::with_bias_update`] for
//! aux-loss-free balancing).

mod slot;

pub use slot::RouterSlot;

use burn::module::{Module, Param, ParamId};
use burn::nn::{Linear, LinearConfig};
use burn::tensor::backend::Backend;
use burn::tensor::{activation, Bool, Distribution, IndexingUpdateOp, Int, Tensor, TensorData};
use simbal_core::router::Shape;
use simbal_core::{BiasUpdateConfig, LossConfig, Result, RouterConfig, SimbalError, WeightLayout};

use crate::convert::backend_err;
use crate::{AuxLosses, MoeRouter, RouterOutput, SimbalBackend, TensorBatch};

/// The experts' hidden activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Activation {
    /// GELU (the default).
    #[default]
    Gelu,
    /// ReLU.
    Relu,
}

/// How the router weight `R` is initialised.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RouterInit {
    /// SimBal-style orthogonal initialisation ([`simbal_core::orthogonal_init`]) from a seed
    /// (the default, seed 0).
    Orthogonal {
        /// The seed of simbal's generator.
        seed: u64,
    },
    /// Normal entries `N(0, std^2)` from burn's generator (seed it with `B::seed`).
    Normal {
        /// Standard deviation.
        std: f64,
    },
}

impl Default for RouterInit {
    fn default() -> Self {
        Self::Orthogonal { seed: 0 }
    }
}

/// The configuration of a [`MoeLayer`]: widths, experts, routing, losses and initialisation.
///
/// ```
/// use simbal_burn::moe::MoeLayerConfig;
/// use simbal_core::LossConfig;
/// let cfg = MoeLayerConfig::new(16, 32, 4, 2).with_losses(LossConfig::switch());
/// assert_eq!(cfg.router.experts, 4);
/// assert!(cfg.validate().is_ok());
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MoeLayerConfig {
    /// Token width `D` (the layer's input and output width).
    pub d_model: usize,
    /// Hidden width of each expert MLP.
    pub d_hidden: usize,
    /// Number of experts `E` (must equal `router.experts`).
    pub experts: usize,
    /// Experts per token `k` (must equal `router.k`).
    pub k: usize,
    /// The routing configuration.
    pub router: RouterConfig,
    /// The auxiliary losses each forward returns (the balancing method).
    pub losses: LossConfig,
    /// How `R` is initialised.
    pub router_init: RouterInit,
    /// The experts' activation.
    pub activation: Activation,
    /// Aux-loss-free balancing: a selection bias updated by [`MoeLayer::update_bias`].
    pub bias_update: Option<BiasUpdateConfig>,
}

impl MoeLayerConfig {
    /// `experts` GELU experts of hidden width `d_hidden` on tokens of width `d_model`, softmax
    /// top-`k` routing ([`RouterConfig::new`]), SimBal loss, orthogonal `R`, no bias.
    pub fn new(d_model: usize, d_hidden: usize, experts: usize, k: usize) -> Self {
        Self {
            d_model,
            d_hidden,
            experts,
            k,
            router: RouterConfig::new(experts, k),
            losses: LossConfig::simbal(),
            router_init: RouterInit::default(),
            activation: Activation::default(),
            bias_update: None,
        }
    }
    /// Replaces the routing configuration (its `experts` and `k` become the layer's).
    pub fn with_router(mut self, router: RouterConfig) -> Self {
        self.experts = router.experts;
        self.k = router.k;
        self.router = router;
        self
    }
    /// Replaces the auxiliary losses: the line that switches the balancing method.
    pub fn with_losses(mut self, losses: LossConfig) -> Self {
        self.losses = losses;
        self
    }
    /// Replaces the router weight's initialisation.
    pub fn with_router_init(mut self, init: RouterInit) -> Self {
        self.router_init = init;
        self
    }
    /// Replaces the experts' activation.
    pub fn with_activation(mut self, activation: Activation) -> Self {
        self.activation = activation;
        self
    }
    /// Turns on aux-loss-free balancing with a zero-initialised selection bias.
    pub fn with_bias_update(mut self, cfg: BiasUpdateConfig) -> Self {
        self.bias_update = Some(cfg);
        self
    }

    /// Checks the widths and that `experts`, `k` agree with the routing configuration.
    ///
    /// # Errors
    /// [`SimbalError::ZeroDim`] for a zero width; [`SimbalError::LengthMismatch`] when
    /// `experts` or `k` differ from `router`'s; the routing configuration's errors
    /// ([`RouterConfig::validate`]); [`SimbalError::InvalidCoefficient`] for a bias rate that
    /// is not finite and non-negative.
    pub fn validate(&self) -> Result<()> {
        if self.d_model == 0 || self.d_hidden == 0 {
            return Err(SimbalError::ZeroDim {
                what: "MoE layer width (d_model or d_hidden)",
            });
        }
        for (what, expected, got) in [
            (
                "MoE layer experts vs router experts",
                self.experts,
                self.router.experts,
            ),
            ("MoE layer k vs router k", self.k, self.router.k),
        ] {
            if expected != got {
                return Err(SimbalError::LengthMismatch {
                    what,
                    expected,
                    got,
                });
            }
        }
        self.router.validate()?;
        if let Some(b) = self.bias_update {
            if !(b.rate.is_finite() && b.rate >= 0.0) {
                return Err(SimbalError::InvalidCoefficient {
                    what: "bias update rate",
                    value: b.rate,
                });
            }
        }
        Ok(())
    }

    /// A new layer on `device`.
    ///
    /// ```
    /// use burn::backend::NdArray;
    /// use simbal_burn::moe::MoeLayerConfig;
    /// let layer = MoeLayerConfig::new(8, 16, 4, 2).init::<NdArray<f32>>(&Default::default())?;
    /// assert_eq!(layer.router_weight.dims(), [8, 4]);
    /// assert_eq!(layer.experts.len(), 4);
    /// # Ok::<(), simbal_core::SimbalError>(())
    /// ```
    ///
    /// # Errors
    /// As [`MoeLayerConfig::validate`]; [`simbal_core::orthogonal_init`]'s; the router's
    /// ([`MoeRouter::new`]).
    pub fn init<B: SimbalBackend>(&self, device: &B::Device) -> Result<MoeLayer<B>> {
        self.validate()?;
        let (d, e) = (self.d_model, self.experts);
        let shape = match self.router.layout {
            WeightLayout::DxE => [d, e],
            WeightLayout::ExD => [e, d],
        };
        let r = match self.router_init {
            RouterInit::Orthogonal { seed } => {
                let host: Vec<f64> = simbal_core::orthogonal_init(self.router.layout, d, e, seed)?;
                let data = TensorData::new(host, shape).convert::<B::FloatElem>();
                Tensor::<B, 2>::from_data(data, device)
            }
            RouterInit::Normal { std } => {
                if !(std.is_finite() && std >= 0.0) {
                    return Err(SimbalError::InvalidCoefficient {
                        what: "router init std",
                        value: std,
                    });
                }
                Tensor::random(shape, Distribution::Normal(0.0, std), device)
            }
        };
        let experts = (0..e)
            .map(|_| Expert {
                fc1: LinearConfig::new(d, self.d_hidden).init(device),
                fc2: LinearConfig::new(self.d_hidden, d).init(device),
                activation: self.activation,
            })
            .collect();
        let bias = self
            .bias_update
            .map(|_| Param::initialized(ParamId::new(), Tensor::zeros([e], device)));
        Ok(MoeLayer {
            router_weight: Param::from_tensor(r),
            experts,
            bias,
            router: RouterSlot::new(self.router, device),
            losses: self.losses,
            bias_update: self.bias_update,
            d_model: d,
        })
    }
}

/// One expert: `fc2(act(fc1(x)))`.
#[derive(Module, Debug)]
pub struct Expert<B: Backend> {
    /// `D -> hidden`.
    pub fc1: Linear<B>,
    /// `hidden -> D`.
    pub fc2: Linear<B>,
    /// The hidden activation.
    pub activation: Activation,
}

impl<B: Backend> Expert<B> {
    /// The expert on `x` (`c x D`).
    pub fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        let h = self.fc1.forward(x);
        let h = match self.activation {
            Activation::Gelu => activation::gelu(h),
            Activation::Relu => activation::relu(h),
        };
        self.fc2.forward(h)
    }
}

/// What [`MoeLayer::forward`] returns.
#[derive(Debug, Clone)]
pub struct MoeOutput<B: SimbalBackend> {
    /// The combined output `y_t = sum_j gate_tj expert_{idx_tj}(x_t)` (`N x D`; 0 for masked
    /// tokens).
    pub y: Tensor<B, 2>,
    /// The auxiliary losses (add [`AuxLosses::total`] to the objective).
    pub losses: AuxLosses<B>,
    /// The router's output (indices, gates, counts, loss values, ...) for metrics.
    pub router: RouterOutput<B>,
}

/// A Mixture-of-Experts layer routed by simbal: router weight `R` (`D x E`, or `E x D` for
/// [`WeightLayout::ExD`]), `E` expert MLPs, top-`k` routing through a [`MoeRouter`], and an
/// optional non-trainable selection bias for aux-loss-free balancing.
///
/// ```
/// use burn::backend::{Autodiff, NdArray};
/// use burn::tensor::{Distribution, Tensor};
/// use simbal_burn::moe::MoeLayerConfig;
/// use simbal_core::LossConfig;
/// type B = Autodiff<NdArray<f32>>;
/// let device = Default::default();
/// let layer = MoeLayerConfig::new(8, 16, 4, 2)
///     .with_losses(LossConfig::simbal()) // the balancing method
///     .init::<B>(&device)?;
/// let x = Tensor::<B, 2>::random([32, 8], Distribution::Normal(0.0, 1.0), &device);
/// let out = layer.forward(x)?;
/// let loss = out.y.powi_scalar(2).mean() + out.losses.total();
/// let grads = loss.backward();
/// assert!(layer.router_weight.grad(&grads).is_some());
/// assert!(layer.router()?.take_error()?.is_none());
/// # Ok::<(), simbal_core::SimbalError>(())
/// ```
#[derive(Module, Debug)]
pub struct MoeLayer<B: SimbalBackend> {
    /// The router weight `R`.
    pub router_weight: Param<Tensor<B, 2>>,
    /// The experts.
    pub experts: Vec<Expert<B>>,
    /// The selection bias (`E`, no gradient), when aux-loss-free balancing is on.
    pub bias: Option<Param<Tensor<B, 1>>>,
    router: RouterSlot<B>,
    losses: LossConfig,
    bias_update: Option<BiasUpdateConfig>,
    d_model: usize,
}

impl<B: SimbalBackend> MoeLayer<B> {
    /// The layer's router (statistics, load metrics, backward errors).
    ///
    /// # Errors
    /// The error that building the router gave ([`MoeRouter::new`]).
    pub fn router(&self) -> Result<&MoeRouter<B>> {
        self.router.get()
    }

    /// The auxiliary losses each forward computes.
    pub fn losses(&self) -> LossConfig {
        self.losses
    }

    /// Replaces the auxiliary losses (the balancing method) of later forwards.
    pub fn set_losses(&mut self, losses: LossConfig) {
        self.losses = losses;
    }

    /// The layer on `x` (`N x D`), every token valid.
    ///
    /// # Errors
    /// As [`MoeLayer::forward_masked`].
    pub fn forward(&self, x: Tensor<B, 2>) -> Result<MoeOutput<B>> {
        self.forward_masked(x, None)
    }

    /// The layer on `x` (`N x D`) with an optional token mask (`N`, `true` = valid): masked
    /// tokens count in no loss or statistic and their output rows are 0.
    ///
    /// ```
    /// use burn::backend::NdArray;
    /// use burn::tensor::{Bool, Distribution, Tensor};
    /// use simbal_burn::moe::MoeLayerConfig;
    /// type B = NdArray<f32>;
    /// let device = Default::default();
    /// let layer = MoeLayerConfig::new(8, 16, 4, 2).init::<B>(&device)?;
    /// let x = Tensor::<B, 2>::random([4, 8], Distribution::Normal(0.0, 1.0), &device);
    /// let mask = Tensor::<B, 1, Bool>::from_bool([true, true, true, false].into(), &device);
    /// let out = layer.forward_masked(x, Some(mask))?;
    /// assert_eq!(out.router.valid_tokens, 3);
    /// assert_eq!(out.y.slice(3..4).abs().sum().into_scalar(), 0.0);
    /// # Ok::<(), simbal_core::SimbalError>(())
    /// ```
    ///
    /// # Errors
    /// [`SimbalError::LengthMismatch`] when `x`'s width is not `D`; the router's
    /// ([`MoeRouter::forward_batch`]: a mask of the wrong length, non-finite inputs, ...);
    /// [`SimbalError::Backend`] when the dispatch plan cannot be read or is inconsistent.
    pub fn forward_masked(
        &self,
        x: Tensor<B, 2>,
        mask: Option<Tensor<B, 1, Bool>>,
    ) -> Result<MoeOutput<B>> {
        let [_, d] = x.dims();
        if d != self.d_model {
            return Err(SimbalError::LengthMismatch {
                what: "MoE layer input width",
                expected: self.d_model,
                got: d,
            });
        }
        let mut batch = TensorBatch::new();
        if let Some(b) = &self.bias {
            batch = batch.bias(b.val());
        }
        if let Some(m) = &mask {
            batch = batch.mask(m.clone());
        }
        let out = self.router.get()?.forward_batch(
            x.clone(),
            self.router_weight.val(),
            batch,
            &self.losses,
            None,
        )?;
        let mut y = self.combine(x, &out)?;
        if let Some(m) = mask {
            let padding = m.bool_not().unsqueeze_dim::<2>(1).expand(y.dims());
            y = y.mask_fill(padding, 0.0);
        }
        Ok(MoeOutput {
            y,
            losses: out.losses.clone(),
            router: out,
        })
    }

    /// `sum_j gate_tj expert_{idx_tj}(x_t)` from the dispatch plan: each expert's assignments
    /// gathered, run, scaled by their gates and added back at their tokens.
    fn combine(&self, x: Tensor<B, 2>, out: &RouterOutput<B>) -> Result<Tensor<B, 2>> {
        let Shape { n, k, .. } = out.shape;
        let offsets = read_offsets(out.dispatch.offsets.clone(), self.experts.len(), n * k)?;
        let gates = out.gates.clone().reshape([n * k]);
        let mut tokens_all = Vec::with_capacity(self.experts.len());
        let mut outputs = Vec::with_capacity(self.experts.len());
        for (e, expert) in self.experts.iter().enumerate() {
            let (lo, hi) = (offsets[e], offsets[e + 1]);
            if lo == hi {
                continue;
            }
            let ids: Tensor<B, 1, Int> = out.dispatch.order.clone().slice(lo..hi);
            let tokens = ids.clone().div_scalar(k as i64);
            let g = gates.clone().select(0, ids).unsqueeze_dim::<2>(1);
            let h = expert.forward(x.clone().select(0, tokens.clone())) * g;
            tokens_all.push(tokens);
            outputs.push(h);
        }
        // In `x`'s dtype, not the device default (which `NdArray<f32>` and `<f64>` share).
        let y = x.zeros_like();
        if outputs.is_empty() {
            return Ok(y);
        }
        Ok(y.select_assign(
            0,
            Tensor::cat(tokens_all, 0),
            Tensor::cat(outputs, 0),
            IndexingUpdateOp::Add,
        ))
    }

    /// Aux-loss-free balancing: moves the selection bias by `rate sign(mean load - load_e)` from
    /// the last forward's statistics ([`MoeRouter::update_bias`]); call it once per step, after
    /// the forward. Does nothing when the layer has no bias.
    ///
    /// ```
    /// use burn::backend::NdArray;
    /// use burn::tensor::{Distribution, Tensor};
    /// use simbal_burn::moe::MoeLayerConfig;
    /// use simbal_core::{BiasUpdateConfig, LossConfig};
    /// type B = NdArray<f32>;
    /// let device = Default::default();
    /// let mut layer = MoeLayerConfig::new(8, 16, 4, 1)
    ///     .with_losses(LossConfig::none())
    ///     .with_bias_update(BiasUpdateConfig::default())
    ///     .init::<B>(&device)?;
    /// let x = Tensor::<B, 2>::random([32, 8], Distribution::Normal(0.0, 1.0), &device);
    /// layer.forward(x)?;
    /// layer.update_bias()?;
    /// assert_eq!(layer.bias.as_ref().map(|b| b.dims()), Some([4]));
    /// # Ok::<(), simbal_core::SimbalError>(())
    /// ```
    ///
    /// # Errors
    /// [`SimbalError::NoForward`] before a forward; [`MoeRouter::update_bias`]'s.
    pub fn update_bias(&mut self) -> Result<()> {
        let (Some(cfg), Some(bias)) = (self.bias_update, &self.bias) else {
            return Ok(());
        };
        let router = self.router.get()?;
        let stats = router.stats()?;
        let next = router.update_bias(bias.val(), &cfg, &stats)?;
        self.bias = Some(Param::initialized(bias.id, next));
        Ok(())
    }
}

/// The dispatch plan's per-expert offsets, checked to be a non-decreasing run in `0..=nk`.
fn read_offsets<B: SimbalBackend>(t: Tensor<B, 1, Int>, e: usize, nk: usize) -> Result<Vec<usize>> {
    let v = t
        .try_into_data()
        .map_err(|err| backend_err("reading the dispatch offsets", err))?
        .convert::<i64>()
        .into_vec::<i64>()
        .map_err(|err| backend_err("dispatch offsets data", err))?;
    let off: Vec<usize> = v
        .into_iter()
        .map(|o| usize::try_from(o).unwrap_or(usize::MAX))
        .collect();
    let ok = off.len() == e + 1
        && off.windows(2).all(|w| w[0] <= w[1])
        && off.last().is_some_and(|&last| last <= nk);
    if ok {
        Ok(off)
    } else {
        Err(SimbalError::Backend {
            message: format!("simbal-burn: inconsistent dispatch offsets {off:?} for {e} experts and {nk} assignments"),
        })
    }
}
