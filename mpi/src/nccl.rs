//! The statistics all-reduce on NVIDIA GPUs through NCCL (feature `nccl`).
//!
//! [`NcclStatsAllReduce`] owns one packed device buffer of `3E + 2` `f64`s (the layout of
//! [`crate::StatsAllReduce`]: counts, routed counts, tokens, dropped, score sums), allocated
//! once on a cudarc [`CudaStream`], and sums it over the ranks with **one `ncclAllReduce`
//! (`ncclFloat64`, `ncclSum`) per step** on that stream. The counts are exact by the same
//! argument as over MPI: every partial sum of non-negative integers is at most the total, so a
//! total below `2^53` proves the reduction exact; past it (every rank sees the same totals)
//! all ranks sum the `2E + 2` integer fields again as `ncclUint64`.
//!
//! The NCCL communicator is made with `ncclCommInitRank` from an `ncclUniqueId` that rank 0 of
//! an MPI communicator creates and broadcasts ([`nccl_id_over_mpi`]), so the NCCL ranks are
//! the MPI ranks and the job may span nodes (one process per GPU).
//!
//! The bindings are cudarc 0.19's `nccl` module ([`cudarc::nccl::Comm`]), built with
//! `dynamic-loading`: nothing is linked at build time, `libcuda` and `libnccl` are opened at
//! the first call. cudarc panics when a library or one of its symbols is missing; the
//! functions here catch that panic and return [`NcclStatsError::Unavailable`] instead (the
//! default panic hook still prints its message, and a `panic = "abort"` profile aborts).
//!
//! What this module cannot do in safe code: all-reduce a buffer that cubecl (simbal-cubecl,
//! burn's CUDA backend) owns. cubecl-cuda 0.10 hands out the raw device pointer of a handle
//! (`ComputeClient::get_resource(handle)?.resource().ptr`, a `u64`) but not its stream, and
//! turning a raw pointer into a cudarc buffer is `unsafe` (`CudaStream::upgrade_device_ptr`).
//! See `NCCL.md`.

use crate::{check_experts, int_fields, int_fields_mut, pack, MpiStatsError, EXACT_LIMIT};
use core::ffi::c_char;
use core::fmt;
use cudarc::driver::{CudaSlice, CudaStream};
use cudarc::nccl::{result as nccl_result, Comm, Id, ReduceOp};
use mpi::collective::SystemOperation;
use mpi::traits::{Communicator, CommunicatorCollectives, Root};
use simbal_core::RoutingStats;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

/// The cudarc these types come from (0.19, with `driver` and `nccl`), for making the stream.
pub use cudarc;

/// What the NCCL all-reducer refuses or meets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NcclStatsError {
    /// The statistics did not match the reducer's expert count (nothing was sent).
    Stats(MpiStatsError),
    /// A CUDA or NCCL library, or a symbol of it, could not be loaded at run time (cudarc's
    /// dynamic loading panicked; its message is kept).
    Unavailable {
        /// The call that needed it.
        call: &'static str,
        /// cudarc's panic message (the library names it searched for).
        message: String,
    },
    /// An NCCL call returned an error.
    Nccl {
        /// The NCCL function.
        call: &'static str,
        /// Its `ncclResult_t`.
        code: String,
    },
    /// A CUDA driver call (allocation, copy, synchronisation) returned an error.
    Cuda {
        /// What was being done.
        call: &'static str,
        /// The driver's error.
        message: String,
    },
    /// Another rank failed a step of the bootstrap, so this one stopped too (no communicator
    /// was made).
    PeerFailed {
        /// The step.
        call: &'static str,
    },
}

impl fmt::Display for NcclStatsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NcclStatsError::Stats(e) => e.fmt(f),
            NcclStatsError::Unavailable { call, message } => {
                write!(f, "{call}: CUDA/NCCL not loadable: {message}")
            }
            NcclStatsError::Nccl { call, code } => write!(f, "{call} failed: {code}"),
            NcclStatsError::Cuda { call, message } => write!(f, "{call} failed: {message}"),
            NcclStatsError::PeerFailed { call } => {
                write!(f, "{call} failed on another rank")
            }
        }
    }
}

impl std::error::Error for NcclStatsError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            NcclStatsError::Stats(e) => Some(e),
            _ => None,
        }
    }
}

impl From<MpiStatsError> for NcclStatsError {
    fn from(e: MpiStatsError) -> Self {
        NcclStatsError::Stats(e)
    }
}

/// Runs `f`, mapping its error with `err` and a panic (cudarc's dynamic loader) to
/// [`NcclStatsError::Unavailable`].
fn guard<T, E>(
    call: &'static str,
    err: impl FnOnce(E) -> NcclStatsError,
    f: impl FnOnce() -> Result<T, E>,
) -> Result<T, NcclStatsError> {
    // Unwind safety: a panic here comes from cudarc's loader before any state of ours or of
    // the buffers passed in was changed (its `OnceLock` stays empty).
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(err(e)),
        Err(payload) => {
            let message = if let Some(s) = payload.downcast_ref::<String>() {
                s.clone()
            } else if let Some(s) = payload.downcast_ref::<&str>() {
                (*s).to_string()
            } else {
                "panic while loading".to_string()
            };
            Err(NcclStatsError::Unavailable { call, message })
        }
    }
}

fn nccl_err(call: &'static str) -> impl FnOnce(nccl_result::NcclError) -> NcclStatsError {
    // `NcclError`'s Debug prints only "NcclError"; its field is the `ncclResult_t`.
    move |e| NcclStatsError::Nccl {
        call,
        code: format!("{:?}", e.0),
    }
}

fn cuda_err<E: fmt::Debug>(call: &'static str) -> impl FnOnce(E) -> NcclStatsError {
    move |e| NcclStatsError::Cuda {
        call,
        message: format!("{e:?}"),
    }
}

/// `Ok` on every rank when `ok` holds on every rank of `comm` (one `MPI_Allreduce(MIN)`);
/// otherwise this rank's own error, or [`NcclStatsError::PeerFailed`] on the ranks that
/// succeeded. Collective.
fn agree<C: Communicator>(
    comm: &C,
    call: &'static str,
    local: Result<(), NcclStatsError>,
) -> Result<(), NcclStatsError> {
    let mine: i32 = i32::from(local.is_ok());
    let mut all = 0i32;
    comm.all_reduce_into(&mine, &mut all, SystemOperation::min());
    local?;
    if all == 1 {
        Ok(())
    } else {
        Err(NcclStatsError::PeerFailed { call })
    }
}

/// Makes an `ncclUniqueId` on rank 0 of `comm` and broadcasts it to every rank (one
/// `MPI_Bcast` of 129 bytes: a success flag and the id's 128). Collective: every rank of
/// `comm` must call it; all of them get the same id, or all an error.
///
/// ```no_run
/// let universe = mpi::initialize().expect("MPI initialised once");
/// let world = universe.world();
/// let id = simbal_mpi::nccl::nccl_id_over_mpi(&world)?;
/// # let _ = id;
/// # Ok::<(), simbal_mpi::nccl::NcclStatsError>(())
/// ```
///
/// # Errors
/// On rank 0, [`NcclStatsError::Unavailable`] when libnccl cannot be loaded or
/// [`NcclStatsError::Nccl`] when `ncclGetUniqueId` fails; on the other ranks then
/// [`NcclStatsError::PeerFailed`].
pub fn nccl_id_over_mpi<C: Communicator>(comm: &C) -> Result<Id, NcclStatsError> {
    let mut buf = [0u8; 129];
    let mut local = Ok(());
    if comm.rank() == 0 {
        match guard("ncclGetUniqueId", nccl_err("ncclGetUniqueId"), Id::new) {
            Ok(id) => {
                buf[0] = 1;
                for (b, c) in buf[1..].iter_mut().zip(id.internal()) {
                    *b = c.to_ne_bytes()[0];
                }
            }
            Err(e) => local = Err(e),
        }
    }
    comm.process_at_rank(0).broadcast_into(&mut buf[..]);
    local?;
    if buf[0] != 1 {
        return Err(NcclStatsError::PeerFailed {
            call: "ncclGetUniqueId",
        });
    }
    let mut internal: [c_char; 128] = [0; 128];
    for (c, b) in internal.iter_mut().zip(&buf[1..]) {
        *c = c_char::from_ne_bytes([*b]);
    }
    Ok(Id::uninit(internal))
}

/// Sums [`RoutingStats`] over the ranks of an MPI communicator with one `ncclAllReduce` per
/// step on a CUDA stream, through a packed device buffer it owns (allocated once).
///
/// Every rank of the communicator makes one, with the same expert count, on the stream of its
/// own GPU (one GPU per rank), and every rank calls [`NcclStatsAllReduce::all_reduce`] (or
/// [`NcclStatsAllReduce::all_reduce_device`]) in the same order, as for any collective.
///
/// ```no_run
/// use simbal_core::RoutingStats;
/// use simbal_mpi::nccl::{cudarc::driver::CudaContext, NcclStatsAllReduce};
///
/// let universe = mpi::initialize().expect("MPI initialised once");
/// let world = universe.world();
/// let e = 64;
/// // One GPU per rank: the node-local rank picks the device.
/// let ordinal = 0;
/// let stream = CudaContext::new(ordinal)?.new_stream()?;
/// let mut reducer = NcclStatsAllReduce::new(&world, stream, e)?;
/// let mut stats = RoutingStats::empty(e); // this rank's shard, from `Pass::stats_into`
/// reducer.all_reduce(&mut stats)?; // now the global batch's statistics
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct NcclStatsAllReduce {
    experts: usize,
    comm: Comm,
    stream: Arc<CudaStream>,
    /// `3E + 2` `f64`: counts, routed counts, tokens, dropped, score sums.
    packed: CudaSlice<f64>,
    /// `2E + 2` `u64`: the integer fields, for the exact fallback.
    ints: CudaSlice<u64>,
    host: Vec<f64>,
    host_ints: Vec<u64>,
    nccl_version: i32,
    fallbacks: u64,
}

impl NcclStatsAllReduce {
    /// A reducer for statistics of `experts` experts over the ranks of `comm`: allocates its
    /// device buffers on `stream`, checks that NCCL loads on every rank, bootstraps the
    /// `ncclUniqueId` over `comm` ([`nccl_id_over_mpi`]) and makes the NCCL communicator
    /// (`ncclCommInitRank`, NCCL rank = MPI rank) on `stream`. Collective over `comm`.
    ///
    /// # Errors
    /// [`NcclStatsError::Cuda`] when an allocation fails, [`NcclStatsError::Unavailable`]
    /// when libnccl cannot be loaded, [`NcclStatsError::Nccl`] when `ncclGetUniqueId` or
    /// `ncclCommInitRank` fails, [`NcclStatsError::PeerFailed`] when another rank failed one
    /// of the steps before the communicator. Every rank fails together up to
    /// `ncclCommInitRank`; a rank whose `ncclCommInitRank` fails leaves the others waiting in
    /// theirs (NCCL's own timeout), so treat that error as fatal for the job.
    pub fn new<C: Communicator>(
        comm: &C,
        stream: Arc<CudaStream>,
        experts: usize,
    ) -> Result<Self, NcclStatsError> {
        let len = 3 * experts + 2;
        let local = (|| {
            let packed = guard(
                "cuMemAlloc",
                cuda_err("allocating the packed buffer"),
                || stream.alloc_zeros::<f64>(len),
            )?;
            let ints = guard(
                "cuMemAlloc",
                cuda_err("allocating the integer buffer"),
                || stream.alloc_zeros::<u64>(2 * experts + 2),
            )?;
            let version = guard(
                "ncclGetVersion",
                nccl_err("ncclGetVersion"),
                nccl_result::get_nccl_version,
            )?;
            Ok((packed, ints, version))
        })();
        let (status, parts) = match local {
            Ok(p) => (Ok(()), Some(p)),
            Err(e) => (Err(e), None),
        };
        agree(comm, "allocation or loading NCCL", status)?;
        let id = nccl_id_over_mpi(comm)?;
        let (packed, ints, nccl_version) = parts.ok_or(NcclStatsError::PeerFailed {
            call: "allocation or loading NCCL",
        })?;
        // MPI ranks and sizes are non-negative `i32`s, so these conversions cannot fail.
        let rank = usize::try_from(comm.rank()).unwrap_or_default();
        let size = usize::try_from(comm.size()).unwrap_or(1);
        // NCCL takes the device from the thread's current context, and cudarc's `from_rank`
        // does not make the stream's context current: do it here.
        guard(
            "cuCtxSetCurrent",
            cuda_err("making the stream's context current"),
            || stream.context().bind_to_thread(),
        )?;
        let nccl = guard("ncclCommInitRank", nccl_err("ncclCommInitRank"), || {
            Comm::from_rank(stream.clone(), rank, size, id)
        })?;
        Ok(Self {
            experts,
            comm: nccl,
            stream,
            packed,
            ints,
            host: vec![0.0; len],
            host_ints: vec![0; 2 * experts + 2],
            nccl_version,
            fallbacks: 0,
        })
    }

    /// Experts covered.
    pub fn experts(&self) -> usize {
        self.experts
    }

    /// This rank in the NCCL communicator (its MPI rank).
    pub fn rank(&self) -> usize {
        self.comm.rank()
    }

    /// Ranks in the NCCL communicator.
    pub fn world_size(&self) -> usize {
        self.comm.world_size()
    }

    /// The NCCL version loaded (`ncclGetVersion`, e.g. 22703 for 2.27.3).
    pub fn nccl_version(&self) -> i32 {
        self.nccl_version
    }

    /// The stream the buffers live on and the all-reduce runs on.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// Bytes each rank contributes to the one collective of a step: `8 (3E + 2)`.
    pub fn bytes_per_call(&self) -> usize {
        8 * self.host.len()
    }

    /// How many calls so far needed the second, `ncclUint64` collective (a total at or above
    /// `2^53`).
    pub fn fallbacks(&self) -> u64 {
        self.fallbacks
    }

    /// The packed device buffer (`3E + 2` `f64`s: counts, routed counts, tokens, dropped,
    /// score sums), for a caller that writes this rank's statistics there on the device and
    /// calls [`NcclStatsAllReduce::all_reduce_device`]. Work on it must be ordered with
    /// [`NcclStatsAllReduce::stream`] (cudarc does so for its own copies and kernels).
    pub fn packed_mut(&mut self) -> &mut CudaSlice<f64> {
        &mut self.packed
    }

    /// Sums the packed device buffer over the ranks in place: one `ncclAllReduce(ncclFloat64,
    /// ncclSum)` enqueued on [`NcclStatsAllReduce::stream`]; returns without waiting for it.
    /// The integer fields of the sum are exact when each of them is below `2^53` (check it on
    /// the result; [`NcclStatsAllReduce::all_reduce`] does, and falls back to `ncclUint64`).
    /// Collective.
    ///
    /// # Errors
    /// [`NcclStatsError::Nccl`] when NCCL refuses the call (the other ranks then wait: fatal).
    pub fn all_reduce_device(&mut self) -> Result<(), NcclStatsError> {
        let (comm, packed) = (&self.comm, &mut self.packed);
        guard("ncclAllReduce", nccl_err("ncclAllReduce"), || {
            comm.all_reduce_in_place(packed, &ReduceOp::Sum)
        })
        .map(drop)
    }

    /// Replaces `stats` (this rank's statistics, on the host as `Pass::stats_into` leaves
    /// them) by their sum over every rank: packs them, copies them to the device buffer, runs
    /// one `ncclAllReduce`, copies the sum back and waits for the stream. Counts, routed
    /// counts, tokens and dropped assignments come out exact (a second, `ncclUint64`
    /// collective on every rank when a total reaches `2^53`), score sums to the rounding of
    /// NCCL's reduction order. Collective.
    ///
    /// # Errors
    /// [`NcclStatsError::Stats`] when `stats` has not one entry per expert in each vector
    /// (nothing sent, `stats` unchanged); [`NcclStatsError::Cuda`] or
    /// [`NcclStatsError::Nccl`] when a copy or the collective fails (`stats` unchanged; the
    /// other ranks may then wait in their collective, so treat it as fatal for the job).
    pub fn all_reduce(&mut self, stats: &mut RoutingStats) -> Result<(), NcclStatsError> {
        let e = self.experts;
        check_experts(e, stats)?;
        pack(stats, &mut self.host);
        let stream = &self.stream;
        let (host, packed) = (&self.host, &mut self.packed);
        guard(
            "cuMemcpyHtoDAsync",
            cuda_err("copying to the device"),
            || stream.memcpy_htod(&host[..], packed),
        )?;
        self.all_reduce_device()?;
        self.download()?;
        let ints_exact = self.host[..2 * e + 2].iter().all(|&v| v < EXACT_LIMIT);
        if !ints_exact {
            // The same totals on every rank, so every rank takes this branch together.
            self.fallbacks += 1;
            for (h, v) in self.host_ints.iter_mut().zip(int_fields(stats)) {
                *h = v;
            }
            let stream = &self.stream;
            let (host_ints, ints, comm) = (&mut self.host_ints, &mut self.ints, &self.comm);
            guard(
                "cuMemcpyHtoDAsync",
                cuda_err("copying to the device"),
                || stream.memcpy_htod(&host_ints[..], ints),
            )?;
            guard("ncclAllReduce", nccl_err("ncclAllReduce"), || {
                comm.all_reduce_in_place(ints, &ReduceOp::Sum)
            })?;
            guard("cuMemcpyDtoHAsync", cuda_err("copying to the host"), || {
                stream.memcpy_dtoh(ints, &mut host_ints[..])
            })?;
            guard(
                "cuStreamSynchronize",
                cuda_err("waiting for the stream"),
                || stream.synchronize(),
            )?;
            for (o, v) in self.host_ints.iter().zip(int_fields_mut(stats)) {
                *v = *o;
            }
        } else {
            for (&o, v) in self.host[..2 * e + 2].iter().zip(int_fields_mut(stats)) {
                *v = o as u64;
            }
        }
        stats.score_sums.copy_from_slice(&self.host[2 * e + 2..]);
        Ok(())
    }

    /// Copies the packed device buffer into `self.host` and waits for the stream.
    fn download(&mut self) -> Result<(), NcclStatsError> {
        let stream = &self.stream;
        let (host, packed) = (&mut self.host, &self.packed);
        guard("cuMemcpyDtoHAsync", cuda_err("copying to the host"), || {
            stream.memcpy_dtoh(packed, &mut host[..])
        })?;
        guard(
            "cuStreamSynchronize",
            cuda_err("waiting for the stream"),
            || stream.synchronize(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guard_turns_a_loader_panic_into_an_error() {
        let r: Result<(), NcclStatsError> = guard("ncclGetVersion", nccl_err("x"), || {
            panic!("Unable to dynamically load the \"nccl\" shared library")
        });
        match r {
            Err(NcclStatsError::Unavailable { call, message }) => {
                assert_eq!(call, "ncclGetVersion");
                assert!(message.contains("nccl"));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn nccl_is_loaded_at_run_time() {
        // On a machine without libnccl (this workspace's CI), the first NCCL call is an
        // error, not a link failure or an abort; with NCCL installed it returns a version.
        match guard(
            "ncclGetVersion",
            nccl_err("ncclGetVersion"),
            nccl_result::get_nccl_version,
        ) {
            Ok(v) => assert!(v > 0),
            Err(e) => assert!(
                matches!(e, NcclStatsError::Unavailable { .. }),
                "unexpected {e}"
            ),
        }
    }

    #[test]
    fn error_messages() {
        let e = NcclStatsError::from(MpiStatsError::LengthMismatch {
            expected: 2,
            got: 1,
        });
        assert!(e.to_string().contains("reducer was made for 2"));
        let e = NcclStatsError::PeerFailed {
            call: "ncclGetUniqueId",
        };
        assert_eq!(e.to_string(), "ncclGetUniqueId failed on another rank");
    }
}
