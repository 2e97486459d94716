//! # simbal-conformance
//!
//! The conformance suite every simbal backend instantiates: one generic check per property of
//! SPEC.md, expanded into `#[test]`s per backend and element type by [`conformance_suite!`]
//! (cubecl's pattern).
//!
//! ```ignore
//! // backends/faer/tests/conformance.rs
//! simbal_conformance::conformance_suite!(faer_f64, || Some(simbal_faer::Faer::<f64>::new()));
//! simbal_conformance::conformance_suite!(faer_f32, || Some(simbal_faer::Faer::<f32>::new()));
//! ```
//!
//! `$make` is anything callable as `Fn() -> Option<B>`; `None` means the backend is unavailable
//! on this machine (a GPU backend without an adapter): each test then prints a note and passes,
//! unless the environment variable `CI` is set, where it panics. It is called at least once per
//! test, and once per router a check builds, so keep it cheap (clone a shared client).
//!
//! The checks, by module:
//! - [`fd`]: analytic gradients against central finite differences (f64: `h = 1e-6`, FD
//!   tolerance 1e-6; f32 backends get a coarse check), kinks rejected;
//! - [`agree`]: ops against `Reference<B::Elem>` (and `Reference<f64>`) at the SPEC tolerance;
//! - [`kernels`]: every `Backend` kernel on its own, same comparison;
//! - [`invariants`]: SPEC invariants on the backend;
//! - [`errors`]: every `SimbalError` variant from a real call;
//! - [`fuzz`]: arbitrary input to every public entry point: `Err` or a finite result, never a
//!   panic.
//!
//! Environment: `PROPTEST_CASES` overrides each property's case count;
//! `SIMBAL_CONFORMANCE_SEED` (a `u64`) varies the otherwise fixed random stream.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod agree;
pub mod errors;
pub mod fd;
pub mod fuzz;
pub mod gen;
pub mod invariants;
pub mod kernels;
pub mod run;
pub mod util;

/// Expands to a module `$name` of `#[test]`s, one per conformance check, on the backend that
/// `$make` (an expression callable as `Fn() -> Option<B>`) builds.
#[macro_export]
macro_rules! conformance_suite {
    ($name:ident, $make:expr) => {
        #[allow(non_snake_case)]
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            $crate::__conformance_tests! { $make;
                fd_router_objective => fd::router_objective,
                fd_logits_objective => fd::logits_objective,
                fd_simbal_loss => fd::simbal_loss,
                agree_forward => agree::forward,
                agree_backward => agree::backward,
                agree_logits_path => agree::logits_path,
                agree_stats_and_metrics => agree::stats_and_metrics,
                agree_simbal => agree::simbal,
                kernel_gemm => kernels::gemm,
                kernel_route_rows => kernels::route_rows,
                kernel_dispatch => kernels::dispatch,
                kernel_router_backward_rows => kernels::router_backward_rows,
                kernel_router_backward_rows_and_sums => kernels::router_backward_rows_and_sums,
                kernel_logits_and_route_rows => kernels::logits_and_route_rows,
                kernel_group_reductions => kernels::group_reductions,
                kernel_lbl_coefficients => kernels::lbl_coefficients,
                kernel_lse_sq_sum => kernels::lse_sq_sum,
                kernel_simbal_residual => kernels::simbal_residual,
                kernel_column_normalisation => kernels::column_normalisation,
                kernel_routing_entropy => kernels::routing_entropy,
                kernel_check_finite => kernels::check_finite,
                invariant_simbal_zero_at_orthogonality => invariants::simbal_zero_at_orthogonality,
                invariant_lbl_alpha_at_balance => invariants::lbl_alpha_at_balance,
                invariant_lbl_levels_agree => invariants::lbl_levels_agree,
                invariant_merged_stats => invariants::merged_stats,
                invariant_score_and_gate_normalisation => invariants::score_and_gate_normalisation,
                invariant_dropped_get_no_gradient => invariants::dropped_get_no_gradient,
                invariant_bias_update_balances => invariants::bias_update_balances,
                invariant_huge_logits_stay_finite => invariants::huge_logits_stay_finite,
                invariant_ties => invariants::ties,
                error_zero_dim => errors::zero_dim,
                error_k_zero => errors::k_zero,
                error_k_too_large => errors::k_too_large,
                error_length_mismatch => errors::length_mismatch,
                error_groups_do_not_divide => errors::groups_do_not_divide,
                error_too_many_groups => errors::too_many_groups,
                error_invalid_top_groups => errors::invalid_top_groups,
                error_group_selection_too_small => errors::group_selection_too_small,
                error_invalid_capacity_factor => errors::invalid_capacity_factor,
                error_invalid_coefficient => errors::invalid_coefficient,
                error_sequence_length => errors::sequence_length,
                error_non_finite => errors::non_finite,
                error_overflow => errors::overflow,
                error_missing_global_stats => errors::missing_global_stats,
                error_stats_mismatch => errors::stats_mismatch,
                error_no_forward => errors::no_forward,
                error_unsupported => errors::unsupported,
                error_backend => errors::backend_error,
                fuzz_router => fuzz::router,
                fuzz_losses_and_stats => fuzz::losses_and_stats,
                fuzz_metrics => fuzz::metrics,
                fuzz_kernels => fuzz::kernels,
            }
        }
    };
}

/// Implementation detail of [`conformance_suite!`]: one `#[test]` per `name => check`.
#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_tests {
    ($make:expr; $($test:ident => $($check:ident)::+),* $(,)?) => {
        $(
            #[test]
            fn $test() {
                let make = $make;
                $crate::$($check)::+(&make);
            }
        )*
    };
}
