//! SimBal ([`simbal_core::simbal_loss`] and its kernel family): the loss against finite
//! differences ([`fd`]) and the references ([`agree`]), its kernels on their own ([`kernels`]),
//! its zero at orthogonality ([`invariants`]), its errors ([`errors`]) and arbitrary input
//! ([`fuzz`]).

pub mod agree;
mod bufs;
pub mod errors;
pub mod fd;
pub mod fuzz;
pub mod invariants;
pub mod kernels;

crate::__conformance_op! {
    /// SimBal's tests, as a module `simbal` of `#[test]`s on the backend `$make` builds (see
    /// [`crate::conformance_suite!`]).
    conformance_simbal, simbal {
        fd_loss => fd::loss,
        agree_loss => agree::loss,
        kernel_residual => kernels::residual,
        kernel_column_normalisation => kernels::column_normalisation,
        invariant_zero_at_orthogonality => invariants::zero_at_orthogonality,
        error_length_mismatch => errors::length_mismatch,
        error_overflow => errors::overflow,
        error_invalid_coefficient => errors::invalid_coefficient,
        fuzz_loss => fuzz::loss,
        fuzz_kernels => fuzz::kernels,
    }
}
