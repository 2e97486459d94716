//! Configuration of the router and of each loss. Defaults follow the paper (arXiv 2506.14038):
//! softmax scores, SimBal L1 with coefficient 0.1.

use crate::error::{Result, SimbalError};

/// Row-wise score function applied to the logits `Z = X R`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ScoreFn {
    /// Softmax over all experts (max-subtracted).
    #[default]
    Softmax,
    /// Element-wise logistic sigmoid (DeepSeek-V3 style).
    Sigmoid,
}

/// Memory layout of the router weight.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WeightLayout {
    /// `D x E`, row-major: one column per expert (`Z = X R`).
    #[default]
    DxE,
    /// `E x D`, row-major: PyTorch's `nn.Linear(D, E).weight` (`Z = X W^T`).
    ExD,
}

/// DeepSeek-V3 style group-limited selection: experts form `groups` equal groups; a group's score
/// is the sum of its top `max(1, k / top_groups)` selection scores; only the best `top_groups`
/// groups compete in the top-k.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupLimit {
    /// Number of equal groups; must divide `E`.
    pub groups: usize,
    /// Groups kept per token; `1 <= top_groups <= groups`.
    pub top_groups: usize,
}

/// The most expert groups group-limited selection supports (its per-row state lives on the stack).
pub const MAX_GROUPS: usize = 256;

/// Which assignments an over-full expert keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DropPolicy {
    /// Keep the `C` assignments with the largest gates (ties: lower token index).
    #[default]
    Probs,
    /// Keep the first `C` assignments in token order.
    Position,
}

/// Expert capacity `C = ceil(factor * N * k / E)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Capacity {
    /// Capacity factor; finite and `> 0`.
    pub factor: f64,
    /// Which assignments are kept.
    pub policy: DropPolicy,
}

impl Capacity {
    /// The capacity `C` of each expert for `n` tokens, `e` experts and `k` experts per token.
    pub fn per_expert(&self, n: usize, e: usize, k: usize) -> usize {
        let c = num_traits::Float::ceil(self.factor * (n as f64) * (k as f64) / (e as f64));
        if c >= usize::MAX as f64 {
            usize::MAX
        } else {
            c as usize
        }
    }
}

/// How tokens are routed: everything the forward pass needs besides the data.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RouterConfig {
    /// Number of experts `E`.
    pub experts: usize,
    /// Experts per token `k`, `1 <= k <= E`.
    pub k: usize,
    /// Score function.
    pub score: ScoreFn,
    /// Renormalise the chosen scores to sum to `scale`.
    pub renormalize: bool,
    /// Gate scaling factor `s` (default 1).
    pub scale: f64,
    /// Group-limited selection, if any.
    pub groups: Option<GroupLimit>,
    /// Expert capacity and drop policy, if any.
    pub capacity: Option<Capacity>,
    /// Layout of the router weight.
    pub layout: WeightLayout,
    /// Check inputs for non-finite values (on by default; turn off for speed).
    pub check_finite: bool,
}

impl RouterConfig {
    /// Softmax top-k routing over `experts` experts with renormalised gates, no capacity, `D x E`.
    pub fn new(experts: usize, k: usize) -> Self {
        Self {
            experts,
            k,
            score: ScoreFn::Softmax,
            renormalize: true,
            scale: 1.0,
            groups: None,
            capacity: None,
            layout: WeightLayout::DxE,
            check_finite: true,
        }
    }

    /// Sets the score function.
    pub fn with_score(mut self, score: ScoreFn) -> Self {
        self.score = score;
        self
    }
    /// Turns gate renormalisation on or off.
    pub fn with_renormalize(mut self, on: bool) -> Self {
        self.renormalize = on;
        self
    }
    /// Sets the gate scale `s`.
    pub fn with_scale(mut self, scale: f64) -> Self {
        self.scale = scale;
        self
    }
    /// Enables group-limited selection.
    pub fn with_groups(mut self, groups: usize, top_groups: usize) -> Self {
        self.groups = Some(GroupLimit { groups, top_groups });
        self
    }
    /// Enables expert capacity.
    pub fn with_capacity(mut self, factor: f64, policy: DropPolicy) -> Self {
        self.capacity = Some(Capacity { factor, policy });
        self
    }
    /// Sets the router weight layout.
    pub fn with_layout(mut self, layout: WeightLayout) -> Self {
        self.layout = layout;
        self
    }
    /// Turns the non-finite input check on or off.
    pub fn with_check_finite(mut self, on: bool) -> Self {
        self.check_finite = on;
        self
    }

    /// Checks the configuration on its own (shapes are checked per call).
    ///
    /// # Errors
    /// [`SimbalError::ZeroDim`] for no expert; [`SimbalError::KZero`], [`SimbalError::KTooLarge`]
    /// for `k` outside `1..=E`; [`SimbalError::InvalidCoefficient`] for a non-finite scale;
    /// [`SimbalError::GroupsDoNotDivide`], [`SimbalError::TooManyGroups`],
    /// [`SimbalError::InvalidTopGroups`], [`SimbalError::GroupSelectionTooSmall`] for a group
    /// limit that does not fit; [`SimbalError::InvalidCapacityFactor`] for a capacity factor
    /// that is not finite and positive.
    pub fn validate(&self) -> Result<()> {
        let e = self.experts;
        if e == 0 {
            return Err(SimbalError::ZeroDim { what: "E" });
        }
        if self.k == 0 {
            return Err(SimbalError::KZero);
        }
        if self.k > e {
            return Err(SimbalError::KTooLarge {
                k: self.k,
                experts: e,
            });
        }
        if !self.scale.is_finite() {
            return Err(SimbalError::InvalidCoefficient {
                what: "scale",
                value: self.scale,
            });
        }
        if let Some(g) = self.groups {
            if g.groups == 0 || e % g.groups != 0 {
                return Err(SimbalError::GroupsDoNotDivide {
                    groups: g.groups,
                    experts: e,
                });
            }
            if g.groups > MAX_GROUPS {
                return Err(SimbalError::TooManyGroups {
                    groups: g.groups,
                    max: MAX_GROUPS,
                });
            }
            if g.top_groups == 0 || g.top_groups > g.groups {
                return Err(SimbalError::InvalidTopGroups {
                    top_groups: g.top_groups,
                    groups: g.groups,
                });
            }
            let available = g.top_groups * (e / g.groups);
            if available < self.k {
                return Err(SimbalError::GroupSelectionTooSmall {
                    k: self.k,
                    available,
                });
            }
        }
        if let Some(c) = self.capacity {
            if !(c.factor.is_finite() && c.factor > 0.0) {
                return Err(SimbalError::InvalidCapacityFactor { value: c.factor });
            }
        }
        Ok(())
    }
}

/// Which norm of `G = R^T R - I` SimBal penalises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SimBalNorm {
    /// `lambda * sum |G_ab|`: the paper's loss.
    #[default]
    L1,
    /// `lambda * sum G_ab^2`.
    FrobeniusSq,
    /// Columns of `R` normalised to unit length first, then `lambda * mean G_ab^2`.
    ScaleFree,
}

/// SimBal, the similarity-preserving router loss.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SimBalConfig {
    /// Coefficient `lambda` (paper: 0.1).
    pub lambda: f64,
    /// Norm of `R^T R - I`.
    pub norm: SimBalNorm,
}

impl Default for SimBalConfig {
    fn default() -> Self {
        Self {
            lambda: 0.1,
            norm: SimBalNorm::L1,
        }
    }
}

/// At which level the load-balancing loss counts tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LblLevel {
    /// Over the whole micro-batch.
    #[default]
    MicroBatch,
    /// Per sequence of `seq_len` tokens, averaged over the sequences.
    Sequence {
        /// Tokens per sequence; must divide `N`.
        seq_len: usize,
    },
    /// `f_e` from statistics merged across micro-batches or ranks, `P̄_e` local.
    GlobalBatch,
}

/// Constant factor convention of the LBL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LblNormalization {
    /// Switch / GShard: equals `alpha` at perfect balance.
    #[default]
    Switch,
    /// HuggingFace transformers: `k` times the Switch value.
    HuggingFace,
}

/// Switch / GShard load-balancing loss.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LblConfig {
    /// Coefficient `alpha` (usual: 0.01).
    pub alpha: f64,
    /// Counting level.
    pub level: LblLevel,
    /// Constant factor convention.
    pub normalization: LblNormalization,
}

impl Default for LblConfig {
    fn default() -> Self {
        Self {
            alpha: 0.01,
            level: LblLevel::MicroBatch,
            normalization: LblNormalization::Switch,
        }
    }
}

/// Router z-loss `beta * mean_t lse(Z_t)^2`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ZLossConfig {
    /// Coefficient `beta` (usual: 1e-3).
    pub beta: f64,
}

impl Default for ZLossConfig {
    fn default() -> Self {
        Self { beta: 1e-3 }
    }
}

/// Aux-loss-free bias balancing (no gradient): `b_e += rate * sign(mean(c) - c_e)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BiasUpdateConfig {
    /// Update rate `u` (default 1e-3).
    pub rate: f64,
    /// Subtract the mean update so the biases keep a zero mean.
    pub centred: bool,
}

impl Default for BiasUpdateConfig {
    fn default() -> Self {
        Self {
            rate: 1e-3,
            centred: false,
        }
    }
}

/// The losses of a training step; each is optional. The default is the paper's: SimBal alone.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LossConfig {
    /// SimBal on the router weight.
    pub simbal: Option<SimBalConfig>,
    /// Load-balancing loss.
    pub lbl: Option<LblConfig>,
    /// Router z-loss.
    pub z_loss: Option<ZLossConfig>,
}

impl Default for LossConfig {
    fn default() -> Self {
        Self {
            simbal: Some(SimBalConfig::default()),
            lbl: None,
            z_loss: None,
        }
    }
}

impl LossConfig {
    /// No auxiliary loss at all.
    pub fn none() -> Self {
        Self {
            simbal: None,
            lbl: None,
            z_loss: None,
        }
    }
    /// SimBal with the paper's defaults.
    pub fn simbal() -> Self {
        Self::default()
    }
    /// The Switch Transformer's LBL with `alpha = 0.01`.
    pub fn switch() -> Self {
        Self {
            simbal: None,
            lbl: Some(LblConfig::default()),
            z_loss: None,
        }
    }
    /// Adds or replaces SimBal.
    pub fn with_simbal(mut self, c: SimBalConfig) -> Self {
        self.simbal = Some(c);
        self
    }
    /// Adds or replaces the LBL.
    pub fn with_lbl(mut self, c: LblConfig) -> Self {
        self.lbl = Some(c);
        self
    }
    /// Adds or replaces the z-loss.
    pub fn with_z_loss(mut self, c: ZLossConfig) -> Self {
        self.z_loss = Some(c);
        self
    }

    /// Checks every coefficient and level against the batch size `n`.
    ///
    /// # Errors
    /// [`SimbalError::InvalidCoefficient`] for a negative or non-finite `lambda`, `alpha` or
    /// `beta`; [`SimbalError::SequenceLength`] for a sequence length that does not divide `n`.
    pub fn validate(&self, n: usize) -> Result<()> {
        if let Some(s) = self.simbal {
            check_coefficient("SimBal lambda", s.lambda)?;
        }
        if let Some(l) = self.lbl {
            check_coefficient("LBL alpha", l.alpha)?;
            if let LblLevel::Sequence { seq_len } = l.level {
                check_seq_len(seq_len, n)?;
            }
        }
        if let Some(z) = self.z_loss {
            check_coefficient("z-loss beta", z.beta)?;
        }
        Ok(())
    }
}

/// A coefficient must be finite and non-negative.
pub(crate) fn check_coefficient(what: &'static str, value: f64) -> Result<()> {
    if value.is_finite() && value >= 0.0 {
        Ok(())
    } else {
        Err(SimbalError::InvalidCoefficient { what, value })
    }
}

/// `seq_len` must be at least 1 and divide `n`.
pub(crate) fn check_seq_len(seq_len: usize, n: usize) -> Result<()> {
    if seq_len == 0 || n % seq_len != 0 {
        Err(SimbalError::SequenceLength { seq_len, tokens: n })
    } else {
        Ok(())
    }
}
