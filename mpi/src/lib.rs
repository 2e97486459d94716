//! # simbal-mpi
//!
//! Data-parallel simbal over MPI (rsmpi 0.8): the per-expert routing statistics of every
//! rank's shard summed into those of the global batch, in **one collective call per step**,
//! so that a global-batch LBL ([`simbal_core::LblLevel::GlobalBatch`]) and the aux-loss-free
//! bias update ([`simbal_core::update_bias`]) see the global batch on every rank. SimBal
//! itself needs no communication: it depends on the router weight only, which data
//! parallelism keeps identical on every rank.
//!
//! [`StatsAllReduce`] owns a packed send and receive buffer of `3E + 2` `f64`s (counts, routed
//! counts, score sums, tokens, dropped assignments) and sums it with one
//! `MPI_Allreduce(MPI_SUM, MPI_DOUBLE)`. The integer fields travel as `f64`: a sum of
//! non-negative integers in `f64` is exact while the total stays below `2^53`, and every
//! partial sum of non-negative terms is at most the total, so a total below `2^53` proves the
//! whole reduction was exact. Should a total reach `2^53` (about `9e15` assignments in one
//! step), every rank sees it (the same total on every rank) and all of them sum the integer
//! fields again as `u64` in a second call, so the counts are always exact. This is one
//! built-in collective, needs neither a user-defined MPI operation (rsmpi's needs libffi and
//! an `unsafe impl` of its `Equivalence` trait for a record type) nor two calls.
//!
//! [`SumAllReduce`] sums an `f64` buffer (the gradients) over the ranks without allocating.
//!
//! With the `nccl` feature, [`nccl::NcclStatsAllReduce`] does the same all-reduce through NCCL
//! on a CUDA stream (cudarc 0.19's `nccl` module, loaded at run time), its `ncclUniqueId`
//! bootstrapped over the MPI communicator; `NCCL.md` says what it needs and what it cannot do.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

use core::fmt;
use mpi::collective::SystemOperation;
use mpi::traits::{Communicator, CommunicatorCollectives};
use simbal_core::RoutingStats;

#[cfg(feature = "nccl")]
pub mod nccl;

/// The integer fields of a total at or above this bound may have been rounded in `f64`.
const EXACT_LIMIT: f64 = 9_007_199_254_740_992.0; // 2^53

/// What the all-reducers refuse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MpiStatsError {
    /// The statistics (or one of their per-expert vectors) cover another number of experts
    /// than the reducer was made for.
    ExpertMismatch {
        /// Experts the reducer was made for.
        expected: usize,
        /// Length of the offending vector.
        got: usize,
        /// Which vector it was (`"counts"`, `"routed_counts"`, `"score_sums"`).
        field: &'static str,
    },
    /// A buffer handed to [`SumAllReduce::sum`] has another length than the reducer's.
    LengthMismatch {
        /// Length the reducer was made for.
        expected: usize,
        /// Length given.
        got: usize,
    },
}

impl fmt::Display for MpiStatsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MpiStatsError::ExpertMismatch {
                expected,
                got,
                field,
            } => write!(
                f,
                "routing statistics mismatch: {field} has {got} entries, the all-reducer was made for {expected} experts"
            ),
            MpiStatsError::LengthMismatch { expected, got } => write!(
                f,
                "all-reduce buffer of {got} values, the reducer was made for {expected}"
            ),
        }
    }
}

impl std::error::Error for MpiStatsError {}

/// Sums [`RoutingStats`] over the ranks of a communicator in one collective call per step,
/// through a packed buffer it owns (no allocation per call).
///
/// Every rank of the communicator must call [`StatsAllReduce::all_reduce`] with a reducer of
/// the same expert count, as for any MPI collective.
///
/// ```no_run
/// use mpi::traits::Communicator;
/// use simbal_core::{Reference, Router, RouterConfig, RoutingStats};
/// use simbal_mpi::StatsAllReduce;
///
/// let universe = mpi::initialize().expect("MPI initialised once");
/// let world = universe.world();
/// let (d, e) = (4, 8);
/// let r = simbal_core::orthogonal_init(simbal_core::WeightLayout::DxE, d, e, 0)?;
/// // This rank's shard of the global batch (here: 16 tokens that depend on the rank).
/// let x: Vec<f64> = (0..16 * d).map(|i| ((i * 31 + world.rank() as usize) % 17) as f64 - 8.0).collect();
/// let mut router = Router::new(Reference::<f64>::new(), RouterConfig::new(e, 2))?;
/// let mut reducer = StatsAllReduce::new(e);
/// let mut stats = RoutingStats::empty(e);
/// let pass = router.forward(&x, &r, None)?;
/// pass.stats_into(&mut stats)?;
/// reducer.all_reduce(&world, &mut stats)?; // now the global batch's statistics
/// assert_eq!(stats.tokens, 16 * world.size() as u64);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct StatsAllReduce {
    experts: usize,
    send: Vec<f64>,
    recv: Vec<f64>,
    send_u64: Vec<u64>,
    recv_u64: Vec<u64>,
    fallbacks: u64,
}

impl StatsAllReduce {
    /// A reducer for statistics of `experts` experts; its buffers (`3E + 2` values each way,
    /// plus `2E + 2` integers for the exact fallback) are allocated here, once.
    pub fn new(experts: usize) -> Self {
        let len = 3 * experts + 2;
        Self {
            experts,
            send: vec![0.0; len],
            recv: vec![0.0; len],
            send_u64: vec![0; 2 * experts + 2],
            recv_u64: vec![0; 2 * experts + 2],
            fallbacks: 0,
        }
    }

    /// Experts covered.
    pub fn experts(&self) -> usize {
        self.experts
    }

    /// Bytes each rank contributes to the one collective of a step: `8 (3E + 2)`.
    pub fn bytes_per_call(&self) -> usize {
        8 * self.send.len()
    }

    /// How many calls so far needed the second, integer collective (a total at or above
    /// `2^53`); 0 in any realistic training run.
    pub fn fallbacks(&self) -> u64 {
        self.fallbacks
    }

    /// Replaces `stats` (this rank's statistics) by their sum over every rank of `comm`:
    /// counts, routed counts, tokens and dropped assignments exactly, score sums in `f64`
    /// (to the rounding of the reduction, which MPI may order differently from a serial
    /// [`RoutingStats::merge`]). Collective: every rank of `comm` must call it.
    ///
    /// # Errors
    /// [`MpiStatsError::ExpertMismatch`] when `stats.counts`, `stats.routed_counts` or
    /// `stats.score_sums` has not one entry per expert of this reducer; `stats` is then left
    /// as it was and no communication took place (the other ranks' call then waits for this
    /// rank, so treat the error as fatal for the job).
    pub fn all_reduce<C: Communicator>(
        &mut self,
        comm: &C,
        stats: &mut RoutingStats,
    ) -> Result<(), MpiStatsError> {
        let e = self.experts;
        check_experts(e, stats)?;
        pack(stats, &mut self.send);
        comm.all_reduce_into(&self.send[..], &mut self.recv[..], SystemOperation::sum());
        let (ints, scores) = self.recv.split_at(2 * e + 2);
        if ints.iter().all(|&v| v < EXACT_LIMIT) {
            // Exact: every partial sum of the integers was below 2^53.
            for (&o, v) in ints.iter().zip(int_fields_mut(stats)) {
                *v = o as u64;
            }
        } else {
            // The same total on every rank, so every rank takes this branch together.
            self.fallbacks += 1;
            for (s, v) in self.send_u64.iter_mut().zip(int_fields(stats)) {
                *s = v;
            }
            comm.all_reduce_into(
                &self.send_u64[..],
                &mut self.recv_u64[..],
                SystemOperation::sum(),
            );
            for (o, v) in self.recv_u64.iter().zip(int_fields_mut(stats)) {
                *v = *o;
            }
        }
        stats.score_sums.copy_from_slice(scores);
        Ok(())
    }
}

/// `Ok` when every per-expert vector of `stats` has `e` entries.
fn check_experts(e: usize, stats: &RoutingStats) -> Result<(), MpiStatsError> {
    for (field, len) in [
        ("counts", stats.counts.len()),
        ("routed_counts", stats.routed_counts.len()),
        ("score_sums", stats.score_sums.len()),
    ] {
        if len != e {
            return Err(MpiStatsError::ExpertMismatch {
                expected: e,
                got: len,
                field,
            });
        }
    }
    Ok(())
}

/// The integer fields in packing order: counts, routed counts, tokens, dropped.
fn int_fields(s: &RoutingStats) -> impl Iterator<Item = u64> + '_ {
    s.counts
        .iter()
        .chain(&s.routed_counts)
        .copied()
        .chain([s.tokens, s.dropped])
}

/// The integer fields, mutably, in packing order.
fn int_fields_mut(s: &mut RoutingStats) -> impl Iterator<Item = &mut u64> + '_ {
    s.counts
        .iter_mut()
        .chain(s.routed_counts.iter_mut())
        .chain([&mut s.tokens, &mut s.dropped])
}

/// Packs `s` into `buf` (`3E + 2`): counts, routed counts, tokens, dropped, score sums. A
/// value at or above `2^53` may round here; the total then reaches `2^53` too and the
/// reducer falls back to its integer collective.
fn pack(s: &RoutingStats, buf: &mut [f64]) {
    let e = s.counts.len();
    let (ints, scores) = buf.split_at_mut(2 * e + 2);
    for (b, v) in ints.iter_mut().zip(int_fields(s)) {
        *b = v as f64;
    }
    scores.copy_from_slice(&s.score_sums);
}

/// Sums an `f64` buffer of a fixed length (a model's packed gradients, loss values) over the
/// ranks of a communicator in place, through a receive buffer it owns.
///
/// ```no_run
/// use simbal_mpi::SumAllReduce;
/// let universe = mpi::initialize().expect("MPI initialised once");
/// let world = universe.world();
/// let mut grads = vec![1.0f64; 10];
/// let mut sum = SumAllReduce::new(grads.len());
/// sum.sum(&world, &mut grads)?;
/// # Ok::<(), simbal_mpi::MpiStatsError>(())
/// ```
#[derive(Debug, Clone)]
pub struct SumAllReduce {
    recv: Vec<f64>,
}

impl SumAllReduce {
    /// A reducer for buffers of `len` values.
    pub fn new(len: usize) -> Self {
        Self {
            recv: vec![0.0; len],
        }
    }

    /// Replaces `data` by its element-wise sum over every rank of `comm` (one
    /// `MPI_Allreduce`). Collective: every rank of `comm` must call it.
    ///
    /// # Errors
    /// [`MpiStatsError::LengthMismatch`] unless `data` has the reducer's length (nothing is
    /// sent then).
    pub fn sum<C: Communicator>(
        &mut self,
        comm: &C,
        data: &mut [f64],
    ) -> Result<(), MpiStatsError> {
        if data.len() != self.recv.len() {
            return Err(MpiStatsError::LengthMismatch {
                expected: self.recv.len(),
                got: data.len(),
            });
        }
        comm.all_reduce_into(&data[..], &mut self.recv[..], SystemOperation::sum());
        data.copy_from_slice(&self.recv);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats() -> RoutingStats {
        RoutingStats {
            counts: vec![1, 2, 3],
            routed_counts: vec![4, 5, 6],
            score_sums: vec![0.5, 1.5, 2.5],
            tokens: 7,
            dropped: 8,
        }
    }

    #[test]
    fn packing_order() {
        let s = stats();
        let mut buf = vec![0.0; 11];
        pack(&s, &mut buf);
        assert_eq!(buf, [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 0.5, 1.5, 2.5]);
        let mut t = RoutingStats::empty(3);
        for (o, v) in int_fields(&s).zip(int_fields_mut(&mut t)) {
            *v = o;
        }
        assert_eq!(
            (t.counts, t.routed_counts, t.tokens, t.dropped),
            (s.counts, s.routed_counts, 7, 8)
        );
    }

    #[test]
    fn sizes() {
        let r = StatsAllReduce::new(64);
        assert_eq!(r.experts(), 64);
        assert_eq!(r.bytes_per_call(), 8 * (3 * 64 + 2));
    }

    #[test]
    fn error_messages() {
        let e = MpiStatsError::ExpertMismatch {
            expected: 4,
            got: 3,
            field: "counts",
        };
        assert!(e.to_string().contains("counts has 3 entries"));
    }
}
