//! Configuration of each loss (SimBal, LBL with its levels and sequence layouts, z-loss, the
//! bias update) and of a training step's losses.

use super::{check_coefficient, check_seq_len, ScoreFn};
use crate::error::{Result, SimbalError};

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
    /// The sequence layout a sequence-level LBL groups tokens by (`None` at other levels or
    /// without an LBL).
    pub fn lbl_layout(&self) -> Option<SeqLayout> {
        match self.lbl.map(|l| l.level) {
            Some(LblLevel::Sequence(layout)) => Some(layout),
            _ => None,
        }
    }
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
