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

mod losses;
pub use losses::*;

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
