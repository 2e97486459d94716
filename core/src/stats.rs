//! Mergeable routing statistics: a monoid under [`RoutingStats::merge`], so shards' statistics
//! combine with any all-reduce into those of the whole global batch.

use crate::error::{Result, SimbalError};
use alloc::vec;
use alloc::vec::Vec;

/// Per-expert counts and score sums of some set of tokens.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RoutingStats {
    /// Kept assignments per expert.
    pub counts: Vec<u64>,
    /// Sum over tokens of each expert's score `p_te`, accumulated in `f64`.
    pub score_sums: Vec<f64>,
    /// Tokens seen.
    pub tokens: u64,
    /// Assignments dropped by the capacity limit.
    pub dropped: u64,
}

impl RoutingStats {
    /// The identity element for `experts` experts.
    pub fn empty(experts: usize) -> Self {
        Self {
            counts: vec![0; experts],
            score_sums: vec![0.0; experts],
            tokens: 0,
            dropped: 0,
        }
    }

    /// Number of experts covered.
    pub fn experts(&self) -> usize {
        self.counts.len()
    }

    /// Adds `other` into `self`: counts exactly, score sums to rounding.
    ///
    /// ```
    /// use simbal_core::RoutingStats;
    /// let mut a = RoutingStats { counts: vec![1, 2], score_sums: vec![0.5, 1.5], tokens: 2, dropped: 0 };
    /// let b = RoutingStats { counts: vec![3, 0], score_sums: vec![1.0, 0.0], tokens: 1, dropped: 1 };
    /// a.merge(&b)?;
    /// assert_eq!(a.counts, vec![4, 2]);
    /// assert_eq!(a.tokens, 3);
    /// # Ok::<(), simbal_core::SimbalError>(())
    /// ```
    pub fn merge(&mut self, other: &RoutingStats) -> Result<()> {
        if other.counts.len() != self.counts.len() || other.score_sums.len() != self.counts.len() {
            return Err(SimbalError::StatsMismatch {
                expected: self.counts.len(),
                got: other.counts.len(),
            });
        }
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a = a.saturating_add(*b);
        }
        for (a, b) in self.score_sums.iter_mut().zip(&other.score_sums) {
            *a += *b;
        }
        self.tokens = self.tokens.saturating_add(other.tokens);
        self.dropped = self.dropped.saturating_add(other.dropped);
        Ok(())
    }

    /// Resets to the identity, keeping the allocation.
    pub fn clear(&mut self) {
        self.counts.iter_mut().for_each(|c| *c = 0);
        self.score_sums.iter_mut().for_each(|s| *s = 0.0);
        self.tokens = 0;
        self.dropped = 0;
    }
}
