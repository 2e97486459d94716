//! The load-balancing loss (LBL, its kernel family in [`simbal_core::lbl`]): its kernels on
//! their own ([`kernels`]), the SPEC's invariants ([`invariants`]: `alpha` at balance, levels
//! agreeing; [`conventions`]: a mask equals compaction, global-batch LBL is exact), its errors ([`errors`]) and its kernels on arbitrary input ([`fuzz`]). Its
//! gradient is checked through the router's finite differences and agreement checks, which draw
//! every LBL level.

mod bufs;
pub mod conventions;
pub mod errors;
pub mod fuzz;
pub mod invariants;
pub mod kernels;

crate::__conformance_op! {
    /// The LBL's tests, as a module `lbl` of `#[test]`s on the backend `$make` builds (see
    /// [`crate::conformance_suite!`]).
    conformance_lbl, lbl {
        kernel_group_reductions => kernels::group_reductions,
        kernel_coefficients => kernels::coefficients,
        invariant_alpha_at_balance => invariants::alpha_at_balance,
        invariant_levels_agree => invariants::levels_agree,
        invariant_masked_equals_compacted => conventions::masked_equals_compacted,
        invariant_global_batch_is_exact => conventions::global_batch_is_exact,
        error_sequence_length => errors::sequence_length,
        error_missing_global_stats => errors::missing_global_stats,
        error_invalid_coefficient => errors::invalid_coefficient,
        error_length_mismatch => errors::length_mismatch,
        fuzz_kernels => fuzz::kernels,
    }
}
