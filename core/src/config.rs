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
    /// Element-wise `sqrt(softplus(z))` (Megatron-Core's `sqrtsoftplus`).
    SqrtSoftplus,
}

impl ScoreFn {
    /// Whether a token's scores already sum to 1 (softmax); the element-wise scores do not, and
    /// the LBL normalises them per token by default ([`LblScores`]).
    pub fn is_distribution(self) -> bool {
        matches!(self, ScoreFn::Softmax)
    }
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

/// Expert capacity `C = max(min, ceil(factor * N * k / E))` (DeepSpeed's and Megatron's
/// `min_capacity`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Capacity {
    /// Capacity factor; finite and `> 0`.
    pub factor: f64,
    /// Which assignments are kept.
    pub policy: DropPolicy,
    /// Smallest capacity of an expert (default 0: none).
    pub min: usize,
}

impl Capacity {
    /// The capacity `C` of each expert for `n` tokens, `e` experts and `k` experts per token.
    ///
    /// ```
    /// use simbal_core::{Capacity, DropPolicy};
    /// let c = Capacity { factor: 1.0, policy: DropPolicy::Probs, min: 0 };
    /// assert_eq!(c.per_expert(10, 4, 2), 5);
    /// assert_eq!(Capacity { min: 8, ..c }.per_expert(10, 4, 2), 8);
    /// ```
    pub fn per_expert(&self, n: usize, e: usize, k: usize) -> usize {
        let c = num_traits::Float::ceil(self.factor * (n as f64) * (k as f64) / (e as f64));
        let c = if c >= usize::MAX as f64 {
            usize::MAX
        } else {
            c as usize
        };
        c.max(self.min)
    }
}

/// How the experts of a token are selected.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum Selection {
    /// The top-k of the scores plus the selection bias (with the group limit, if any).
    #[default]
    TopK,
    /// Megatron-Core's `sinkhorn` router type (BASE layers' balanced assignment): the top-k of
    /// the Sinkhorn-balanced `exp(Z)` over the whole batch, the gates from the usual scores.
    /// Deterministic; no selection bias, no group limit.
    Sinkhorn {
        /// Stop when the mean change of the expert scaling is at most this (Megatron: 1e-4).
        tol: f64,
        /// Iteration cap (at least 1).
        max_iters: usize,
    },
}

impl Selection {
    /// Sinkhorn selection with Megatron's tolerance 1e-4 and a cap of 100 iterations.
    pub fn sinkhorn() -> Self {
        Selection::Sinkhorn {
            tol: 1e-4,
            max_iters: 100,
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
    /// How experts are selected.
    pub selection: Selection,
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
            selection: Selection::TopK,
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
        self.capacity = Some(Capacity {
            factor,
            policy,
            min: 0,
        });
        self
    }
    /// Sets the smallest capacity of an expert (with capacity on; no effect otherwise).
    pub fn with_min_capacity(mut self, min: usize) -> Self {
        if let Some(c) = self.capacity.as_mut() {
            c.min = min;
        }
        self
    }
    /// Sets the selection (top-k or Sinkhorn).
    pub fn with_selection(mut self, selection: Selection) -> Self {
        self.selection = selection;
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
    /// that is not finite and positive; for Sinkhorn selection,
    /// [`SimbalError::InvalidCoefficient`] for a negative or non-finite tolerance or a zero
    /// iteration cap and [`SimbalError::Unsupported`] with a group limit.
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
        if let Selection::Sinkhorn { tol, max_iters } = self.selection {
            if !(tol.is_finite() && tol >= 0.0) {
                return Err(SimbalError::InvalidCoefficient {
                    what: "Sinkhorn tolerance",
                    value: tol,
                });
            }
            if max_iters == 0 {
                return Err(SimbalError::InvalidCoefficient {
                    what: "Sinkhorn iteration cap",
                    value: 0.0,
                });
            }
            if self.groups.is_some() {
                return Err(SimbalError::Unsupported {
                    what: "Sinkhorn selection with a group limit",
                });
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

/// How the `N` tokens of a batch form sequences (for sequence-level LBL and SEU).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeqLayout {
    /// `[B, S]`: sequences of `seq_len` contiguous tokens (`seq_len` divides `N`).
    BatchMajor {
        /// Tokens per sequence.
        seq_len: usize,
    },
    /// `[S, B]` (Megatron's layout): token `t` belongs to sequence `t % batch` (`batch`
    /// divides `N`).
    SequenceMajor {
        /// Sequences `B`.
        batch: usize,
    },
    /// Packed variable-length sequences: the offsets `0 = o_0 < ... < o_B = N` (cu_seqlens)
    /// come with the batch ([`crate::Batch::offsets`]).
    Packed,
}

impl SeqLayout {
    /// Checks the layout against `n` tokens (packed offsets are checked with the batch).
    ///
    /// # Errors
    /// [`SimbalError::SequenceLength`] when `seq_len` or `batch` is 0 or does not divide `n`.
    pub fn validate(&self, n: usize) -> Result<()> {
        match *self {
            SeqLayout::BatchMajor { seq_len } => check_seq_len(seq_len, n),
            SeqLayout::SequenceMajor { batch } => check_seq_len(batch, n),
            SeqLayout::Packed => Ok(()),
        }
    }
}

/// At which level the load-balancing loss counts tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LblLevel {
    /// Over the whole micro-batch.
    #[default]
    MicroBatch,
    /// Per sequence, averaged over the sequences that have a valid token.
    Sequence(SeqLayout),
    /// The LBL of the whole global batch (every micro-batch of every rank), from merged
    /// statistics: a shard's value and gradient sum, over shards, to the global batch's.
    GlobalBatch,
}

impl LblLevel {
    /// Sequence level over contiguous sequences of `seq_len` tokens (batch-major).
    pub fn sequences(seq_len: usize) -> Self {
        LblLevel::Sequence(SeqLayout::BatchMajor { seq_len })
    }
}

/// Which scores the LBL averages (`P̄_e`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LblScores {
    /// Each token's scores normalised to sum to 1 (`q = p / (sum p + 1e-20)`) for sigmoid and
    /// sqrt-softplus, as Megatron-Core, TransformerEngine and DeepSeek-V3; softmax scores as
    /// they are.
    #[default]
    Normalized,
    /// The raw scores `p` (then LBL is `alpha E mean_e(P̄_e)` at balance, not `alpha`).
    Raw,
}

/// Which assignments the LBL counts (`c_e`, no gradient).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LblCounts {
    /// The plain top-k of the scores: no selection bias, no groups, before capacity (Megatron,
    /// GShard, HF).
    #[default]
    Routed,
    /// The assignments kept after bias, groups and capacity.
    Dispatched,
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
    /// Which scores are averaged.
    pub scores: LblScores,
    /// Which assignments are counted.
    pub counts: LblCounts,
    /// Global-batch level: each shard's contribution is multiplied by this factor (1 when the
    /// framework sums gradients over shards; `R M` when it averages them over `R` ranks and
    /// `M` micro-batches). Finite and positive.
    pub shard_factor: f64,
}

impl Default for LblConfig {
    fn default() -> Self {
        Self {
            alpha: 0.01,
            level: LblLevel::MicroBatch,
            normalization: LblNormalization::Switch,
            scores: LblScores::Normalized,
            counts: LblCounts::Routed,
            shard_factor: 1.0,
        }
    }
}

impl LblConfig {
    /// Whether the loss normalises each token's scores under `score`.
    pub fn normalizes(&self, score: ScoreFn) -> bool {
        self.scores == LblScores::Normalized && !score.is_distribution()
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
    /// `beta`, or a shard factor that is not finite and positive;
    /// [`SimbalError::SequenceLength`] for a sequence layout that does not divide `n`.
    pub fn validate(&self, n: usize) -> Result<()> {
        if let Some(s) = self.simbal {
            check_coefficient("SimBal lambda", s.lambda)?;
        }
        if let Some(l) = self.lbl {
            check_coefficient("LBL alpha", l.alpha)?;
            if !(l.shard_factor.is_finite() && l.shard_factor > 0.0) {
                return Err(SimbalError::InvalidCoefficient {
                    what: "LBL shard factor",
                    value: l.shard_factor,
                });
            }
            if let LblLevel::Sequence(layout) = l.level {
                layout.validate(n)?;
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
