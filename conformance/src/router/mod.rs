//! The router ([`simbal_core::Router`], its passes and its kernel family): routing and its
//! backward against finite differences ([`fd`]) and the references ([`agree`]), `route`,
//! `dispatch` and `router_backward` on their own ([`kernels`]), the SPEC's routing invariants
//! ([`invariants`]), its errors ([`errors`]) and arbitrary input ([`fuzz`]).

pub mod agree;
pub(crate) mod bufs;
pub mod errors;
pub mod fd;
pub mod fuzz;
pub mod invariants;
pub mod kernels;

crate::__conformance_op! {
    /// The router's tests, as a module `router` of `#[test]`s on the backend `$make` builds (see
    /// [`crate::conformance_suite!`]).
    conformance_router, router {
        fd_objective => fd::router_objective,
        fd_logits_objective => fd::logits_objective,
        agree_forward => agree::forward,
        agree_backward => agree::backward,
        agree_logits_path => agree::logits_path,
        kernel_route_given => kernels::route_given,
        kernel_route_tokens => kernels::route_tokens,
        kernel_dispatch => kernels::dispatch,
        kernel_router_backward => kernels::router_backward,
        kernel_router_backward_sums => kernels::router_backward_sums,
        invariant_score_and_gate_normalisation => invariants::score_and_gate_normalisation,
        invariant_dropped_get_no_gradient => invariants::dropped_get_no_gradient,
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
        error_no_forward => errors::no_forward,
        error_unsupported => errors::unsupported,
        error_backend => errors::backend_error,
        error_token_mask_and_offsets => errors::token_mask_and_offsets,
        fuzz_router => fuzz::router,
        fuzz_kernels => fuzz::kernels,
    }
}
