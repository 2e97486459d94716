//! The buffers of the statistics' and metrics' kernels and their arguments, for the kernel,
//! error and fuzz checks alike (see [`crate::harness::kernel`]).

use crate::harness::kernel::{Fill, R};
use simbal_core::memory::{idx_view, view};
use simbal_core::metrics::Entropy;
use simbal_core::stats::CollectStats;
use simbal_core::tokens::Groups;
use simbal_core::{Backend, RoutingStats};

/// Buffers of `routing_entropy` and `routing_stats`, and the statistics the latter writes.
pub(crate) struct Bufs<B: Backend> {
    /// Tokens.
    pub n: usize,
    /// Experts.
    pub e: usize,
    /// Experts per token.
    pub k: usize,
    /// Scores, `n x E`.
    pub p: B::Buf,
    /// Kept counts of every token, `E`.
    pub counts: B::IdxBuf,
    /// Expert indices, dropped flags and the plain top-k, `n x k` each.
    pub idx: B::IdxBuf,
    /// Dropped flags.
    pub dropped: B::IdxBuf,
    /// The plain top-k, passed when `has_plain`.
    pub plain: B::IdxBuf,
    /// Whether the plain top-k differs from `idx`.
    pub has_plain: bool,
    /// Per-token group ids (`MASKED`: masked), used when `masked`.
    pub ids: B::IdxBuf,
    /// Whether the tokens are masked through `ids`.
    pub masked: bool,
    /// Normalise score rows for the sums.
    pub normalize: bool,
    /// What `routing_stats` writes (of no experts beforehand, unless a check sets it).
    pub out: RoutingStats,
}

impl<B: Backend> Bufs<B> {
    /// Every buffer for `n` tokens, `k` of `e` experts each, from `fill`, in the order of the
    /// fields.
    pub fn new(n: usize, e: usize, k: usize, fill: &dyn Fill<B>) -> R<Self> {
        Ok(Self {
            n,
            e,
            k,
            p: fill.vals(n.checked_mul(e))?,
            counts: fill.idx(Some(e), 3)?,
            idx: fill.idx(n.checked_mul(k), e)?,
            dropped: fill.idx(n.checked_mul(k), 2)?,
            plain: fill.idx(n.checked_mul(k), e)?,
            has_plain: false,
            ids: fill.idx(Some(n), 1)?,
            masked: false,
            normalize: false,
            out: RoutingStats::default(),
        })
    }

    /// The tokens' groups: all valid, or masked through `ids`.
    fn groups(&self) -> Groups<'_, B> {
        if self.masked {
            Groups::Ids {
                ids: idx_view::<B>(&self.ids),
                count: 1,
            }
        } else {
            Groups::whole(self.n)
        }
    }

    /// `routing_entropy` of the scores.
    pub fn entropy(&self) -> Entropy<'_, B> {
        Entropy {
            n: self.n,
            groups: self.groups(),
            e: self.e,
            p: view::<B>(&self.p),
        }
    }

    /// `routing_stats` of the scores and kept counts into `out`.
    pub fn collect(&mut self) -> CollectStats<'_, B> {
        let groups = if self.masked {
            Groups::Ids {
                ids: idx_view::<B>(&self.ids),
                count: 1,
            }
        } else {
            Groups::whole(self.n)
        };
        CollectStats {
            n: self.n,
            k: self.k,
            p: view::<B>(&self.p),
            normalize: self.normalize,
            idx: idx_view::<B>(&self.idx),
            dropped: idx_view::<B>(&self.dropped),
            counts: idx_view::<B>(&self.counts),
            plain: self.has_plain.then(|| idx_view::<B>(&self.plain)),
            groups,
            out: &mut self.out,
        }
    }
}
