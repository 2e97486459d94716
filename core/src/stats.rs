//! Mergeable routing statistics: a monoid under [`RoutingStats::merge`], so shards' statistics
//! combine with any all-reduce into those of the whole global batch.

use crate::checked::Checked;
use crate::error::{Result, SimbalError};
use crate::memory::Memory;
use crate::router::score::lbl_norm_inv;
use crate::scalar::Scalar;
use crate::shape::check_len;
use crate::stage::{stage_elems_in, stage_idx_in};
use crate::tokens::{with_host_groups, Groups, HostGroups};
use alloc::vec;
use alloc::vec::Vec;

/// Per-expert counts and score sums of the valid tokens of some set of tokens.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RoutingStats {
    /// Kept assignments per expert (after bias, groups and capacity): what the bias update and
    /// the load metrics use, and the LBL under [`crate::config::LblCounts::Dispatched`].
    pub counts: Vec<u64>,
    /// The plain top-k of the scores per expert (no bias, no groups, before capacity): the
    /// LBL's counts under [`crate::config::LblCounts::Routed`] (the default).
    pub routed_counts: Vec<u64>,
    /// Sum over tokens of each expert's LBL score `q_te` (softmax scores as they are, the
    /// element-wise ones normalised per token), accumulated in `f64`.
    pub score_sums: Vec<f64>,
    /// Valid tokens seen.
    pub tokens: u64,
    /// Assignments of valid tokens dropped by the capacity limit.
    pub dropped: u64,
}

impl RoutingStats {
    /// The identity element for `experts` experts.
    pub fn empty(experts: usize) -> Self {
        Self {
            counts: vec![0; experts],
            routed_counts: vec![0; experts],
            score_sums: vec![0.0; experts],
            tokens: 0,
            dropped: 0,
        }
    }

    /// The LBL's counts under `kind`.
    pub fn lbl_counts(&self, kind: crate::config::LblCounts) -> &[u64] {
        match kind {
            crate::config::LblCounts::Routed => &self.routed_counts,
            crate::config::LblCounts::Dispatched => &self.counts,
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
    /// let mut a = RoutingStats { counts: vec![1, 2], routed_counts: vec![1, 3],
    ///     score_sums: vec![0.5, 1.5], tokens: 2, dropped: 1 };
    /// let b = RoutingStats { counts: vec![3, 0], routed_counts: vec![3, 0],
    ///     score_sums: vec![1.0, 0.0], tokens: 3, dropped: 0 };
    /// a.merge(&b)?;
    /// assert_eq!(a.counts, vec![4, 2]);
    /// assert_eq!(a.tokens, 5);
    /// # Ok::<(), simbal_core::SimbalError>(())
    /// ```
    ///
    /// # Errors
    /// [`SimbalError::StatsMismatch`] when the two cover different numbers of experts.
    pub fn merge(&mut self, other: &RoutingStats) -> Result<()> {
        let e = self.counts.len();
        if other.counts.len() != e
            || other.score_sums.len() != e
            || other.routed_counts.len() != e
            || self.routed_counts.len() != e
            || self.score_sums.len() != e
        {
            return Err(SimbalError::StatsMismatch {
                expected: self.counts.len(),
                got: other.counts.len(),
            });
        }
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a = a.saturating_add(*b);
        }
        for (a, b) in self.routed_counts.iter_mut().zip(&other.routed_counts) {
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
        self.routed_counts.iter_mut().for_each(|c| *c = 0);
        self.score_sums.iter_mut().for_each(|s| *s = 0.0);
        self.tokens = 0;
        self.dropped = 0;
    }
}

/// Arguments of [`crate::Backend::routing_stats`]: the statistics of the valid tokens of one
/// forward pass into a host [`RoutingStats`].
pub struct CollectStats<'a, M: Memory + ?Sized> {
    /// Tokens `n`.
    pub n: usize,
    /// Experts per token `k`.
    pub k: usize,
    /// Scores `n x E`.
    pub p: &'a M::View,
    /// Normalise each token's scores to sum 1 for the score sums (element-wise scores).
    pub normalize: bool,
    /// Expert indices `n x k`.
    pub idx: &'a M::IdxView,
    /// Dropped flags `n x k`.
    pub dropped: &'a M::IdxView,
    /// Kept assignments per expert of every token (`E`): the counts when every token is
    /// valid.
    pub counts: &'a M::IdxView,
    /// The plain top-k (`n x k`) when the selection differs from it (bias or groups); `None`:
    /// the plain top-k is `idx`.
    pub plain: Option<&'a M::IdxView>,
    /// Which tokens count.
    pub groups: Groups<'a, M>,
    /// The statistics (resized to `E` when it has another size; no allocation once it has).
    pub out: &'a mut RoutingStats,
}

impl<'a, M: Memory + ?Sized> CollectStats<'a, M> {
    /// The precondition function of [`crate::Backend::routing_stats`]; sizes `out` for `E`
    /// experts (`E` = the length of `counts`).
    ///
    /// # Errors
    /// [`SimbalError::LengthMismatch`] unless `p` holds `n x E` and `idx`, `dropped` (and
    /// `plain`) `n x k`; the groups' errors.
    pub fn check(self, m: &M) -> Result<Checked<Self>> {
        let e = m.idx_len(self.counts);
        check_len("scores", self.n.saturating_mul(e), m.len(self.p))?;
        let nk = self.n.saturating_mul(self.k);
        check_len("indices", nk, m.idx_len(self.idx))?;
        check_len("dropped flags", nk, m.idx_len(self.dropped))?;
        if let Some(pl) = self.plain {
            check_len("plain top-k indices", nk, m.idx_len(pl))?;
        }
        self.groups.check(m, self.n)?;
        let o = &*self.out;
        if o.counts.len() != e || o.score_sums.len() != e || o.routed_counts.len() != e {
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
    let idx = stage_idx_in(m, a.idx)?;
    let dropped = stage_idx_in(m, a.dropped)?;
    let plain = match a.plain {
        Some(pl) => Some(stage_idx_in(m, pl)?),
        None => None,
    };
    let (k, normalize, out) = (a.k, a.normalize, a.out);
    with_host_groups(m, &a.groups, |g| {
        stats_of(k, g, normalize, &p, &idx, &dropped, plain.as_deref(), out)
    })
}

/// The statistics of the valid tokens on the host, into `out` (sized for `E` experts).
#[allow(clippy::too_many_arguments)]
pub fn stats_of<T: Scalar>(
    k: usize,
    groups: HostGroups<'_>,
    normalize: bool,
    p: &[T],
    idx: &[u32],
    dropped: &[u32],
    plain: Option<&[u32]>,
    out: &mut RoutingStats,
) {
    let e = out.counts.len();
    out.clear();
    let plain = plain.unwrap_or(idx);
    for (t, row) in p.chunks_exact(e.max(1)).enumerate() {
        if groups.group_of(t).is_none() {
            continue;
        }
        out.tokens += 1;
        let inv = if normalize {
            lbl_norm_inv(row).to_f64_lossy()
        } else {
            1.0
        };
        for (s, &v) in out.score_sums.iter_mut().zip(row) {
            *s += v.to_f64_lossy() * inv;
        }
        for a in t * k..(t + 1) * k {
            if (plain[a] as usize) < e {
                out.routed_counts[plain[a] as usize] += 1;
            }
            if dropped[a] != 0 {
                out.dropped += 1;
            } else if (idx[a] as usize) < e {
                out.counts[idx[a] as usize] += 1;
            }
        }
    }
}

/// The counts part of the statistics of a pass of `n` tokens, all valid, with `k` experts each
/// and no plain top-k apart from the selection, from the kept counts alone: writes kept
/// counts, tokens and dropped assignments into `out` (sized for `counts.len()` experts) and,
/// when nothing was dropped, the routed counts (equal to the kept ones). Returns whether it
/// could (`false`: something was dropped, and the routed counts need the indices, as
/// [`stats_of`] counts them).
pub fn fill_counts(out: &mut RoutingStats, n: usize, k: usize, counts: &[u32]) -> bool {
    for (o, &c) in out.counts.iter_mut().zip(counts) {
        *o = u64::from(c);
    }
    out.tokens = n as u64;
    let kept: u64 = out.counts.iter().sum();
    out.dropped = ((n as u64).saturating_mul(k as u64)).saturating_sub(kept);
    if out.dropped == 0 {
        out.routed_counts.copy_from_slice(&out.counts);
    }
    out.dropped == 0
}
