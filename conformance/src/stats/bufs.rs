//! The buffers of the statistics' and metrics' kernels and their arguments, for the kernel,
//! error and fuzz checks alike (see [`crate::harness::kernel`]).

use crate::harness::kernel::{Fill, R};
use simbal_core::memory::{idx_view, view};
use simbal_core::metrics::Entropy;
use simbal_core::stats::CollectStats;
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
    /// Kept counts, `E`.
    pub counts: B::IdxBuf,
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
            out: RoutingStats::default(),
        })
    }

    /// `routing_entropy` of the scores.
    pub fn entropy(&self) -> Entropy<'_, B> {
        Entropy {
            n: self.n,
            e: self.e,
            p: view::<B>(&self.p),
        }
    }

    /// `routing_stats` of the scores and kept counts into `out`.
    pub fn collect(&mut self) -> CollectStats<'_, B> {
        CollectStats {
            n: self.n,
            k: self.k,
            p: view::<B>(&self.p),
            counts: idx_view::<B>(&self.counts),
            out: &mut self.out,
        }
    }
}
