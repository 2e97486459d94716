//! Routing statistics and metrics ([`simbal_core::stats`], [`simbal_core::metrics`]): a
//! router's statistics, load metrics and entropy against the references ([`agree`]), the
//! `routing_stats` and `routing_entropy` kernels ([`kernels`]), merged statistics
//! ([`invariants`]), errors ([`errors`]) and arbitrary input ([`fuzz`]).

pub mod agree;
mod bufs;
pub mod errors;
pub mod fuzz;
pub mod invariants;
pub mod kernels;

crate::__conformance_op! {
    /// The statistics' and metrics' tests, as a module `stats` of `#[test]`s on the backend `$make`
    /// builds (see [`crate::conformance_suite!`]).
    conformance_stats, stats {
        agree_stats_and_metrics => agree::stats_and_metrics,
        kernel_routing_stats => kernels::routing_stats,
        kernel_routing_entropy => kernels::routing_entropy,
        invariant_merged_stats => invariants::merged_stats,
        error_stats_mismatch => errors::stats_mismatch,
        error_length_mismatch => errors::length_mismatch,
        fuzz_metrics => fuzz::metrics,
        fuzz_merge => fuzz::merge,
        fuzz_kernels => fuzz::kernels,
    }
}
