//! Mergeable routing statistics: a monoid under [`RoutingStats::merge`], so shards' statistics
//! combine with any all-reduce into those of the whole global batch.

use crate::checked::Checked;
use crate::error::{Result, SimbalError};
use crate::memory::Memory;
use crate::scalar::Scalar;
use crate::shape::check_len;
use crate::stage::{stage_elems_in, stage_idx_in};
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
    ///
    /// # Errors
    /// [`SimbalError::StatsMismatch`] when the two cover different numbers of experts.
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

/// Arguments of [`crate::Backend::routing_stats`]: the statistics of one forward pass, from its
/// scores and kept counts, into a host [`RoutingStats`].
pub struct CollectStats<'a, M: Memory + ?Sized> {
    /// Tokens `n`.
    pub n: usize,
    /// Experts per token `k`.
    pub k: usize,
    /// Scores `n x E`.
    pub p: &'a M::View,
    /// Kept assignments per expert (`E`).
    pub counts: &'a M::IdxView,
    /// The statistics (resized to `E` when it has another size; no allocation once it has).
    pub out: &'a mut RoutingStats,
}

impl<'a, M: Memory + ?Sized> CollectStats<'a, M> {
    /// The precondition function of [`crate::Backend::routing_stats`]; sizes `out` for `E`
    /// experts (`E` = the length of `counts`).
    ///
    /// # Errors
    /// [`SimbalError::LengthMismatch`] unless `p` holds `n x E`.
    pub fn check(self, m: &M) -> Result<Checked<Self>> {
        let e = m.idx_len(self.counts);
        check_len("scores", self.n.saturating_mul(e), m.len(self.p))?;
        if self.out.counts.len() != e || self.out.score_sums.len() != e {
            *self.out = RoutingStats::empty(e);
        }
        Ok(Checked::new(self))
    }
}

/// The host-staged default of [`crate::Backend::routing_stats`]: score sums accumulated in
/// `f64`.
///
/// # Errors
/// Transfer failures of a device backend.
pub fn routing_stats_staged<M: Memory + ?Sized>(
    m: &M,
    a: Checked<CollectStats<'_, M>>,
) -> Result<()> {
    let a = a.into_inner();
    let p = stage_elems_in(m, a.p)?;
    let counts = stage_idx_in(m, a.counts)?;
    let out = a.out;
    let e = counts.len();
    out.score_sums.iter_mut().for_each(|s| *s = 0.0);
    for row in p.chunks_exact(e.max(1)) {
        for (s, &v) in out.score_sums.iter_mut().zip(row) {
            *s += v.to_f64_lossy();
        }
    }
    fill_counts(out, a.n, a.k, &counts);
    Ok(())
}

/// Writes kept counts, tokens and dropped assignments of a pass of `n` tokens with `k` experts
/// each into `out` (sized for `counts.len()` experts).
pub fn fill_counts(out: &mut RoutingStats, n: usize, k: usize, counts: &[u32]) {
    for (o, &c) in out.counts.iter_mut().zip(counts) {
        *o = u64::from(c);
    }
    out.tokens = n as u64;
    let kept: u64 = out.counts.iter().sum();
    out.dropped = ((n as u64).saturating_mul(k as u64)).saturating_sub(kept);
}
